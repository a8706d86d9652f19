//! tandem-mta: the reference payload of tandem — a small, durable SMTP relay,
//! plus the load generator and counting sink that tests, benchmarks and the
//! demo use to prove no acknowledged message is lost.
//!
//! # Layout
//!
//! - [`command`]: the pure SMTP command parser (fuzzed, property-tested).
//! - `session`: one server-side SMTP conversation, generic over what is done
//!   with a finished message.
//! - [`server`]: listening sockets, accept loops, [`ListenerControl`]
//!   (suspend with drain / resume, like Cisco ESA `suspendlistener`).
//! - [`spool`]: the durable spool (tmp → fsync → rename → fsync dir →
//!   [`CommitHook`]), the only place a `250` is earned.
//! - `delivery`: the queue that relays spooled messages to the next hop,
//!   with retries and backoff.
//! - [`client`]: a small pipelining SMTP client (delivery and load).
//! - [`relay`]: the relay wired together: [`relay::start`] → [`RelayHandle`].
//! - [`load`] / [`sink`]: the test tools, as library functions returning
//!   serde reports.
//! - [`activation`]: systemd-style socket activation (`LISTEN_FDS`).
//! - [`config`]: TOML settings; [`cli`]: `tandem mta serve|load|sink`.
//! - [`error`]: the crate's one error enum.
//!
//! # Guarantee
//!
//! A message answered `250 2.0.0 Ok: queued as ID` is in `queue/` on disk
//! (file and directory fsync'd, and the commit hook returned) and leaves it
//! only after the next hop answered `250` for it. Delivery is therefore
//! at-least-once: a crash between the next hop's `250` and the removal of the
//! file can deliver a message twice, never zero times.

#![deny(missing_docs)]

pub mod activation;
pub mod bench;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
mod delivery;
pub mod error;
pub mod load;
pub mod relay;
pub mod server;
mod session;
pub mod sink;
pub mod spool;

pub use delivery::QueueStats;
pub use error::{Error, Result};
pub use relay::{RelayHandle, RelayOptions};
pub use server::{Listen, ListenerControl, ListenerState, SuspendReport};
pub use session::{Handler, MessageContext};
pub use spool::{CommitHook, Envelope, HookFuture, NoopHook, Spool};
