//! # tandem-core
//!
//! The pure heart of tandem: the HA state machine of one cluster node, and the
//! signed wire messages nodes exchange. No I/O, no clock, no threads: the
//! agent feeds inputs with an explicit time and carries out the outputs, the
//! way openraft's `Engine` and raft-rs's `RawNode` work. Every HA rule lives
//! here and is tested here without sockets or sleeps.
//!
//! ```text
//!  agent ──(now, Input)──► Node::step ──► Vec<Output> ──► agent does them
//! ```
//!
//! # Layout
//!
//! - [`node`]: [`Node`], [`Input`], [`Output`], [`Event`], [`Reason`]: the
//!   election, failover, holdoff, preemption and command rules.
//! - [`config`]: [`NodeConfig`] and the operator's words: configured role,
//!   mode, failover groups, on-failure.
//! - [`role`]: [`EffectiveRole`], [`DataState`](role::DataState), operator
//!   [`Command`]s and [`Refusal`]s.
//! - [`wire`]: [`Message`]s, their HMAC-SHA256 binary encoding (protocol
//!   version 2, and version 1 for mixed-version upgrades), [`wire::Codec`]
//!   and [`wire::ReplayGuard`].
//! - `protocol` (private): the protocol version numbers, re-exported by
//!   [`wire`]; `error` needs them too.
//! - [`status`]: the [`Status`] snapshot for `tandem status`.
//! - [`time`]: [`Millis`], the explicit monotonic time.
//! - [`sim`]: an in-memory deterministic cluster (network that drops, cuts,
//!   isolates and heals links) for tests, here and in the agent.
//! - [`error`]: the crate's one [`Error`] type.
//!
//! # Driving a node (what the agent does)
//!
//! ```text
//! let persisted = read_persisted_state();            // last Output::Persist, if any
//! let mut node  = Node::new(config, persisted, now())?;
//! let mut codec = Codec::new(key, cluster_id, name, boot_epoch); // epoch grows every start
//! loop {
//!     let input = select! {
//!         _ = sleep_until(node.next_deadline(now())) => Input::Tick,
//!         (link, bytes) = udp_recv() => match codec.open(&bytes, unix_ms()) {
//!             Ok(envelope) => Input::Received { link, envelope },
//!             Err(e) => Input::Rejected { link, reason: e.reject_reason()? },
//!         },
//!         peer = sync_connection_closed() => Input::PeerConnectionClosed { peer },
//!         (healthy, detail) = lservice() => Input::LocalMonitor { healthy, detail },
//!         command = api() => Input::Command(command),   // or Input::Forward { to, command }
//!         _ = shutdown => Input::Shutdown,
//!     };
//!     for output in node.step(now(), input) {       // in order
//!         match output {
//!             Output::Send { to, message } => for each peer in `to`, for each link:
//!                 udp_send(link, peer, codec.seal_for(peer, &message)?),  // one seal per datagram
//!             Output::ClaimVip { group } | Output::ReleaseVip { group } => vip(group, ..),
//!             Output::StartService | Output::StopService => supervisor(..),
//!             Output::Persist(state) => write_and_fsync(state),
//!             Output::Event(event) => log_and_count(event),
//!             Output::Refused { command, reason } => answer_operator(command, reason),
//!         }
//!     }
//! }
//! ```
//!
//! `now()` is a monotonic clock (milliseconds since the agent started, as
//! [`Millis`]); `unix_ms()` is the wall clock (milliseconds since the Unix
//! epoch), against which the codec refuses far-future boot epochs.
//! [`Node::status`] gives the snapshot for `tandem status`.
//!
//! # Example
//!
//! ```
//! use tandem_core::{ConfiguredRole, GroupId, Input, Millis, Node, NodeConfig, Output};
//!
//! // A primary alone: after the start-up wait (one hold time) it takes over.
//! let cfg = NodeConfig::new("a", ConfiguredRole::Primary, 200, &["b"]);
//! let mut a = Node::new(cfg, None, Millis(0)).unwrap();
//! a.step(Millis(0), Input::Tick);
//! let out = a.step(Millis(600), Input::Tick);
//! assert!(out.contains(&Output::ClaimVip { group: GroupId(0) }));
//! assert!(a.is_active(GroupId(0)));
//! ```

#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod node;
mod protocol;
pub mod role;
pub mod sim;
pub mod status;
pub mod time;
pub mod wire;

pub use config::{
    ConfiguredRole, Coordination, FailoverGroup, GroupId, LinkId, MAX_NAME_LEN, Mode, NodeConfig,
    OnFailure,
};
pub use error::Error;
pub use node::{
    Destination, Event, Input, LeaderKey, LossCause, Node, Output, PersistentState, Reason,
    StoreEvent, StoreRequest,
};
pub use role::{Command, EffectiveRole, HandoverCause, PreemptState, Refusal};
pub use status::Status;
pub use time::Millis;
pub use wire::{Codec, Envelope, Heartbeat, Message, ReplayGuard};
