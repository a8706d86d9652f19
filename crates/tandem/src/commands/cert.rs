//! `tandem cert init|issue`: the cluster CA and each node's certificate for
//! the sync channel (issue 6). The CA's key belongs off the nodes; each
//! node gets only its own certificate, key and the CA certificate.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

/// `tandem cert init DIR`: a new cluster CA in DIR.
pub fn init(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let files = tandem_sync::cert::init(dir)
        .with_context(|| format!("cannot make a cluster CA in {}", dir.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"ca_cert": files.cert, "ca_key": files.key})
        );
    } else {
        println!(
            "cluster CA: {} (key {}, mode 0600: keep it off the nodes)\nnext: tandem cert issue --ca {} --node NAME -o DIR, once per node",
            files.cert.display(),
            files.key.display(),
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem cert issue --ca DIR --node NAME -o DIR`: NAME's certificate.
pub fn issue(ca: &Path, node: &str, out: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let files = tandem_sync::cert::issue(ca, node, out)
        .with_context(|| format!("cannot issue a certificate for {node:?}"))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"node": node, "cert": files.cert, "key": files.key, "ca_cert": files.ca})
        );
    } else {
        println!(
            "{node}: {} and {} (with {}); set [sync] cert_dir = {:?} on {node}",
            files.cert.display(),
            files.key.display(),
            files.ca.display(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
