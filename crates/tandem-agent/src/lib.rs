//! The tandem agent: the daemon on each node.
//!
//! The decisions are not made here: `tandem-core`'s pure state machine
//! decides, and the agent only does what it is told — sends heartbeats,
//! binds or releases the VIP, starts or stops the service — and feeds back
//! what it observes. That keeps every HA rule testable without sockets.
//!
//! # Layout
//! - [`supervisor`]: runs the service with the VIP's sockets, restarts it
//!   with backoff, stops it with SIGTERM then SIGKILL, never lets it
//!   outlive the agent.
//! - [`vip`]: the VIP's listening sockets in `bind` mode.

pub mod supervisor;
pub mod vip;
