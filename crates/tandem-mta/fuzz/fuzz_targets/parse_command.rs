//! Fuzz target: `parse_command` must never panic, whatever the bytes, and a
//! successful parse must only yield addresses without control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_mta::command::{Command, parse_command};

fuzz_target!(|data: &[u8]| {
    if let Ok(Command::Mail { from: addr, .. } | Command::Rcpt { to: addr, .. }) =
        parse_command(data)
    {
        assert!(!addr.bytes().any(|b| b.is_ascii_control()));
    }
});
