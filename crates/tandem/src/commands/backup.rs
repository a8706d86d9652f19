//! `tandem backup create|list|restore`: each node's configuration and HA
//! state, archived with a timestamp by its own agent (Huawei's step 3 before
//! an upgrade).

use std::process::ExitCode;

use serde::Serialize;
use tandem_agent::api::{BackupAnswer, BackupList, RestoreAnswer, RestoreRequest};

use crate::cli::BackupCommand;
use crate::commands::cluster::clients;
use crate::commands::refusal;

/// One node's answer in the `--json` output.
#[derive(Serialize)]
struct NodeAnswer<T> {
    /// The node.
    node: String,
    /// What its agent answered.
    answer: T,
}

/// Runs one `tandem backup` subcommand on the aimed-at node(s).
pub async fn run(command: BackupCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Create { nodes } => {
            let mut answers = Vec::new();
            for (node, client) in clients(&nodes.target, nodes.all).await? {
                // A backup takes no body.
                let made: BackupAnswer = match refusal(client.post("/v1/backup", &()).await)? {
                    Ok(made) => made,
                    Err(error) => return Ok(refused(&node, &error)),
                };
                if !json {
                    println!("{node}: backup {} ({})", made.backup, made.dir.display());
                }
                answers.push(NodeAnswer { node, answer: made });
            }
            print_json(&answers, json)
        }
        BackupCommand::List { target } => {
            let mut answers = Vec::new();
            for (node, client) in clients(&target, false).await? {
                let listed: BackupList = match refusal(client.get("/v1/backups").await)? {
                    Ok(listed) => listed,
                    Err(error) => return Ok(refused(&node, &error)),
                };
                if !json {
                    for b in &listed.backups {
                        println!(
                            "{}  node {}  {}",
                            b.backup,
                            b.node.as_deref().unwrap_or("?"),
                            serde_json::to_string(&b.files)?
                        );
                    }
                }
                answers.push(NodeAnswer {
                    node,
                    answer: listed,
                });
            }
            print_json(&answers, json)
        }
        BackupCommand::Restore { id, force, target } => {
            let request = RestoreRequest { backup: id, force };
            let mut answers = Vec::new();
            for (node, client) in clients(&target, false).await? {
                let restored: RestoreAnswer =
                    match refusal(client.post("/v1/backup/restore", &request).await)? {
                        Ok(restored) => restored,
                        Err(error) => return Ok(refused(&node, &error)),
                    };
                if !json {
                    println!(
                        "{node}: restored {} (the state before was saved as backup {}); {}",
                        restored.restored, restored.previous_state_saved_as, restored.note
                    );
                }
                answers.push(NodeAnswer {
                    node,
                    answer: restored,
                });
            }
            print_json(&answers, json)
        }
    }
}

fn refused(node: &str, error: &str) -> ExitCode {
    eprintln!("tandem: {node}: {error}");
    ExitCode::from(1)
}

fn print_json<T: Serialize>(answers: &[NodeAnswer<T>], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(answers)?);
    }
    Ok(ExitCode::SUCCESS)
}
