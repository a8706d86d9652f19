//! tandem-core's integration tests, one binary (link once, run fast).

mod common;

