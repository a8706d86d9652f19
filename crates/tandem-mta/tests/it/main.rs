//! Integration tests of tandem-mta: real sockets on 127.0.0.1, real clients.
//!
//! One test binary, one module per concern. Every wait is bounded in count
//! and time; nothing asserts on how long something took.

mod common;

// The SMTP dialogue: limits, malformed input, pipelining.
mod protocol;
// Interop with real clients and servers: smtplib, swaks, smtp-source/smtp-sink.
mod interop;
// Acknowledged means delivered: kill -9, next hop down, 4xx, disk full.
mod durability;
// Listener suspend (drain) / resume, socket activation.
mod listener;

/// Not a test when run normally: the "re-exec self" trick. A test that must
/// kill the relay with SIGKILL starts this binary again with
/// `TANDEM_MTA_CHILD_ARGS` set, and this function then runs `tandem mta …`.
#[test]
fn child_process() {
    let Ok(args) = std::env::var("TANDEM_MTA_CHILD_ARGS") else {
        return;
    };
    common::run_child(&args);
}
