//! `tandem agent` and `tandem config check`.

use std::path::Path;
use std::process::ExitCode;

use tandem_agent::config::AgentConfig;

/// Exit code of an invalid config: bad input.
const EXIT_INVALID: u8 = 2;

/// Validates a config file (and reads the key and token files it names).
pub fn check(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    match AgentConfig::load(file) {
        Ok(config) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "node": config.node.name, "cluster": config.cluster.name})
                );
            } else {
                println!(
                    "{}: valid (node {}, cluster {}, {} peer{})",
                    file.display(),
                    config.node.name,
                    config.cluster.name,
                    config.peers.len(),
                    if config.peers.len() == 1 { "" } else { "s" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"valid": false, "error": e.to_string()})
                );
            }
            eprintln!("tandem: invalid config: {e}");
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(file: &Path) -> anyhow::Result<ExitCode> {
    let config = match AgentConfig::load(file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tandem: invalid config: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    // The node runs its current slot's agent when the image carries one.
    match tandem_agent::firmware::agent_to_exec(&config.node.state_dir) {
        Ok(Some(agent)) => {
            let error = tandem_agent::firmware::exec_agent(&agent);
            eprintln!(
                "tandem: cannot run the slot's agent {}: {error}",
                agent.display()
            );
            return Ok(ExitCode::from(1));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot look for a slot agent; running this binary"),
    }
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent cleanly");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tandem_agent::driver::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
