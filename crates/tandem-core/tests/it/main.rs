//! tandem-core's integration tests, one binary `it` (link once, run fast).

/// Seeded fault campaigns on the sim, judged by tandem-chaos (issue 17).
mod campaign;
/// Helpers shared by the modules below.
mod common;
/// Replicated data across faults: never active while behind.
mod data_sync;
/// Single-node rules, asserting the exact outputs (openraft engine-test style).
mod engine;
/// The seeds' procedures (ASA, Huawei, FortiMail) and other scenarios, run
/// through the in-memory cluster.
mod procedures;
/// Properties over random event sequences.
mod properties;
/// Quorum and fencing through a simulated etcd.
mod quorum;
/// Wire format: versions, MAC, cluster id, replay, never panicking.
mod wire;
