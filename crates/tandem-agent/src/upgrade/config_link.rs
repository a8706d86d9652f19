//! ESA's `clusterconfig disconnect|reconnect`: a node being upgraded stops
//! taking the cluster's config, so a config change made on the new release
//! never reaches nodes still on the old one (and the other way round).
//!
//! Kept here, beside the coordinator that flips it, rather than in the
//! config sync code that only reads it: the upgrade is the reason the link
//! exists.

use std::path::{Path, PathBuf};

use crate::Error;
use crate::api::{ConfigLink, ConfigLinkAnswer};

/// The flag file whose presence disconnects this node from cluster
/// configuration (ESA's `clusterconfig disconnect`): a file, so it
/// survives restarts, and the sync receiver checks it before taking a
/// config push.
pub fn config_disconnected_flag(state_dir: &Path) -> PathBuf {
    state_dir.join("config-disconnected")
}

/// Whether this node takes part in cluster configuration (ESA's
/// `clusterconfig disconnect|reconnect`).
pub fn config_link(state_dir: &Path) -> ConfigLink {
    if config_disconnected_flag(state_dir).exists() {
        ConfigLink::Disconnected
    } else {
        ConfigLink::Connected
    }
}

/// `POST /v1/config-link`.
pub fn set_config_link(state_dir: &Path, connected: bool) -> Result<ConfigLinkAnswer, Error> {
    let flag = config_disconnected_flag(state_dir);
    let done = if connected {
        std::fs::remove_file(&flag).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
    } else {
        std::fs::write(&flag, b"disconnected for an upgrade\n")
    };
    done.map_err(Error::io(&flag))?;
    Ok(ConfigLinkAnswer {
        config_link: config_link(state_dir),
    })
}
