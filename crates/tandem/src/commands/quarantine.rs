//! `tandem sync quarantine list|restore|drop` (issue 14): files a
//! catch-up set aside instead of deleting, because the node holding them
//! may have acknowledged them and the active never saw them.
//!
//! Each node keeps its own quarantine under its state dir; `list` asks
//! every node (through `/v1/cluster`), and `restore`/`drop` find the node
//! that holds the batch and ask its agent.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{ApiTarget, QuarantineCommand};
use crate::commands::cluster::ApiClient;

/// Runs one `tandem sync quarantine` command.
pub async fn run(command: QuarantineCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        QuarantineCommand::List { target } => list(&target, json).await,
        QuarantineCommand::Restore { id, target } => {
            let (client, node) = holder(&target, &id).await?;
            let answer = client
                .post(&format!("/v1/sync/quarantine/{id}/restore"), &Value::Null)
                .await?;
            if let Some(error) = answer["error"].as_str() {
                bail!("{node} could not merge {id}: {error}");
            }
            if json {
                println!("{answer}");
            } else {
                println!(
                    "{id} on {node}: {} merged into the active, {} duplicates, {} conflicts (kept)",
                    answer["merged"], answer["duplicates"], answer["conflicts"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Drop { id, target } => {
            let (client, node) = holder(&target, &id).await?;
            let response = client
                .request(
                    reqwest::Method::DELETE,
                    &format!("/v1/sync/quarantine/{id}"),
                )
                .send()
                .await
                .with_context(|| format!("{node}'s agent does not answer at {}", client.addr()))?;
            let status = response.status();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!(
                    "{node} refused ({status}): {}",
                    answer["error"].as_str().unwrap_or("")
                );
            }
            if json {
                println!("{answer}");
            } else {
                println!("{id} dropped on {node}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every reachable node's `/v1/status` report.
async fn reports(target: &ApiTarget) -> anyhow::Result<(ApiClient, Vec<Value>)> {
    let client = ApiClient::new(target)?;
    let cluster = client.get("/v1/cluster").await?;
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    Ok((client, nodes))
}

/// The batches of every node, as `(node, batch)`.
fn batches(reports: &[Value]) -> Vec<(String, Value)> {
    reports
        .iter()
        .flat_map(|report| {
            let node = report["node"]["node"].as_str().unwrap_or("?").to_string();
            report["sync"]["quarantine"]["list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |batch| (node.clone(), batch))
        })
        .collect()
}

async fn list(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let (_, reports) = reports(target).await?;
    let found = batches(&reports);
    if json {
        let list: Vec<Value> = found
            .iter()
            .map(|(node, batch)| serde_json::json!({"node": node, "batch": batch}))
            .collect();
        println!("{}", Value::Array(list));
    } else if found.is_empty() {
        println!("no node has quarantined files");
    } else {
        println!(
            "{:<10} {:<32} {:<10} {:>6} {:>10}",
            "NODE", "BATCH", "FROM", "FILES", "BYTES"
        );
        for (node, batch) in &found {
            println!(
                "{:<10} {:<32} {:<10} {:>6} {:>10}",
                node,
                batch["id"].as_str().unwrap_or("?"),
                batch["from"].as_str().unwrap_or("?"),
                batch["files"],
                batch["bytes"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent holding batch `id`, and its node's name.
async fn holder(target: &ApiTarget, id: &str) -> anyhow::Result<(ApiClient, String)> {
    let (client, reports) = reports(target).await?;
    for report in &reports {
        let holds = report["sync"]["quarantine"]["list"]
            .as_array()
            .is_some_and(|list| list.iter().any(|b| b["id"] == id));
        if !holds {
            continue;
        }
        let node = report["node"]["node"].as_str().unwrap_or("?").to_string();
        let Some(api) = report["agent"]["api"].as_str() else {
            bail!("{node} holds {id} but does not say where its API is");
        };
        return Ok((client.with_api(api), node));
    }
    bail!("no node holds a quarantine batch {id:?} (see `tandem sync quarantine list`)")
}
