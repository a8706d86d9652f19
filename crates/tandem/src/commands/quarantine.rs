//! `tandem sync quarantine list|restore|drop` (issue 14): files a
//! catch-up set aside instead of deleting, because the node holding them
//! may have acknowledged them and the active never saw them.
//!
//! Each node keeps its own quarantine under its state dir; `list` asks
//! every node (through `/v1/cluster`), and `restore`/`drop` find the node
//! that holds the batch and ask its agent.

use std::process::ExitCode;

use anyhow::bail;
use serde::Serialize;
use tandem_agent::Error as AgentError;
use tandem_agent::api::{
    ApiClient, ClusterNode, ClusterReport, DroppedBatch, QuarantineSummary, RestoredBatch,
};

use crate::cli::{ApiTarget, QuarantineCommand};
use crate::commands::cluster::api_client;

/// Runs one `tandem sync quarantine` command.
pub async fn run(command: QuarantineCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        QuarantineCommand::List { target } => list(&target, json).await,
        QuarantineCommand::Restore { id, target } => {
            let (client, node) = holder(&target, &id).await?;
            let path = format!("/v1/sync/quarantine/{id}/restore");
            let restored: RestoredBatch = match client.post(&path, &()).await {
                Ok(restored) => restored,
                Err(AgentError::ApiRefused { body, .. }) => {
                    bail!("{node} could not merge {id}: {}", body.error)
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string(&restored)?);
            } else {
                println!(
                    "{id} on {node}: {} merged into the active, {} duplicates, {} conflicts (kept)",
                    restored.merged, restored.duplicates, restored.conflicts
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Drop { id, target } => {
            let (client, node) = holder(&target, &id).await?;
            let dropped: DroppedBatch =
                match client.delete(&format!("/v1/sync/quarantine/{id}")).await {
                    Ok(dropped) => dropped,
                    Err(AgentError::ApiRefused { status, body, .. }) => {
                        let status = reqwest::StatusCode::from_u16(status)
                            .map_or_else(|_| status.to_string(), |s| s.to_string());
                        bail!("{node} refused ({status}): {}", body.error)
                    }
                    Err(AgentError::ApiUnreachable { addr, source, .. }) => {
                        bail!("{node}'s agent does not answer at {addr}: {source}")
                    }
                    Err(e) => return Err(e.into()),
                };
            if json {
                println!("{}", serde_json::to_string(&dropped)?);
            } else {
                println!("{id} dropped on {node}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every node's report, through the node the target names.
async fn reports(target: &ApiTarget) -> anyhow::Result<(ApiClient, ClusterReport)> {
    let client = api_client(target)?;
    let cluster = client.cluster().await?;
    Ok((client, cluster))
}

/// One batch of one node, as `list --json` prints it.
#[derive(Debug, Serialize)]
struct NodeBatch<'a> {
    node: &'a str,
    batch: &'a QuarantineSummary,
}

/// The batches of every reachable node with `[sync]`.
fn batches(cluster: &ClusterReport) -> Vec<NodeBatch<'_>> {
    cluster
        .nodes
        .iter()
        .filter_map(ClusterNode::report)
        .filter_map(|report| Some((&report.node.node, report.sync.detail.as_ref()?)))
        .flat_map(|(node, sync)| {
            sync.quarantine
                .list
                .iter()
                .map(move |batch| NodeBatch { node, batch })
        })
        .collect()
}

async fn list(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let (_, cluster) = reports(target).await?;
    let found = batches(&cluster);
    if json {
        println!("{}", serde_json::to_string(&found)?);
    } else if found.is_empty() {
        println!("no node has quarantined files");
    } else {
        println!(
            "{:<10} {:<32} {:<10} {:>6} {:>10}",
            "NODE", "BATCH", "FROM", "FILES", "BYTES"
        );
        for NodeBatch { node, batch } in &found {
            println!(
                "{:<10} {:<32} {:<10} {:>6} {:>10}",
                node, batch.id, batch.from, batch.files, batch.bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent holding batch `id`, and its node's name.
async fn holder(target: &ApiTarget, id: &str) -> anyhow::Result<(ApiClient, String)> {
    let (client, cluster) = reports(target).await?;
    for report in cluster.nodes.iter().filter_map(ClusterNode::report) {
        let holds = report
            .sync
            .detail
            .as_ref()
            .is_some_and(|sync| sync.quarantine.list.iter().any(|b| b.id == id));
        if holds {
            return Ok((client.at(report.agent.api), report.node.node.clone()));
        }
    }
    bail!("no node holds a quarantine batch {id:?} (see `tandem sync quarantine list`)")
}
