//! `tandem backup create|list|restore`: each node's configuration and HA
//! state, archived with a timestamp by its own agent (Huawei's step 3 before
//! an upgrade).

use std::process::ExitCode;

use crate::cli::BackupCommand;
use crate::commands::cluster::clients;

/// Runs one `tandem backup` subcommand on the aimed-at node(s).
pub async fn run(command: BackupCommand, json: bool) -> anyhow::Result<ExitCode> {
    let (targets, path, body) = match &command {
        BackupCommand::Create { all, target } => (
            clients(target, *all).await?,
            "/v1/backup",
            Some(serde_json::json!({})),
        ),
        BackupCommand::List { target } => (clients(target, false).await?, "/v1/backups", None),
        BackupCommand::Restore { id, force, target } => (
            clients(target, false).await?,
            "/v1/backup/restore",
            Some(serde_json::json!({"backup": id, "force": force})),
        ),
    };
    let mut answers = Vec::new();
    for (node, client) in targets {
        let answer = match &body {
            Some(body) => client.post(path, body).await?,
            None => client.get(path).await?,
        };
        if let Some(error) = answer["error"].as_str() {
            eprintln!("tandem: {node}: {error}");
            return Ok(ExitCode::from(1));
        }
        if !json {
            match &command {
                BackupCommand::Create { .. } => println!(
                    "{node}: backup {} ({})",
                    answer["backup"].as_str().unwrap_or("?"),
                    answer["dir"].as_str().unwrap_or("")
                ),
                BackupCommand::List { .. } => {
                    for b in answer["backups"].as_array().into_iter().flatten() {
                        println!(
                            "{}  node {}  {}",
                            b["backup"].as_str().unwrap_or("?"),
                            b["node"].as_str().unwrap_or("?"),
                            b["files"]
                        );
                    }
                }
                BackupCommand::Restore { .. } => println!(
                    "{node}: restored {} (the state before was saved as backup {}); {}",
                    answer["restored"].as_str().unwrap_or("?"),
                    answer["previous_state_saved_as"].as_str().unwrap_or("?"),
                    answer["note"].as_str().unwrap_or("")
                ),
            }
        }
        answers.push(serde_json::json!({"node": node, "answer": answer}));
    }
    if json {
        println!("{}", serde_json::Value::Array(answers));
    }
    Ok(ExitCode::SUCCESS)
}
