//! The control API's contract: what each route takes and answers, and the
//! one client every caller uses.
//!
//! The server ([`crate::server`]) and every client (the CLI, a node
//! forwarding a command to a peer, the upgrade coordinator, config sync,
//! the relay's commit hook) share these types, so a renamed field is a
//! compile error on both ends. This module depends on no other part of the
//! agent: the modules that produce answers (firmware, backups, upgrades,
//! replication) import it, and the server imports them.
//!
//! - `api/types.rs`: status, cluster, commands, listener, request bodies.
//! - `api/types/images.rs`: images, slots, upgrades, backups, config link.
//! - `api/types/sync.rs`: data and config sync, the quarantine.
//! - `api/client.rs`: [`ApiClient`].
//!
//! `docs/api.md` lists every route with its types.

mod client;
mod types;

pub use client::{ApiClient, EPOCH_HEADER};
pub use types::*;
