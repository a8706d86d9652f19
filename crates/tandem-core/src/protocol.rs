//! The protocol versions this build speaks: the one it sends by default
//! and the oldest it still decodes and can send (see [`crate::wire`] for
//! what each version looks like).
//!
//! Its own module because both the codec (`wire`) and the error type
//! (`error`, whose `UnsupportedVersion` message names the range) need the
//! numbers, and `wire` returns `error`'s type: kept in `wire`, they made
//! the two import each other. The module is private; the constants are
//! public where they always were, as `tandem_core::wire::PROTOCOL_VERSION`
//! and `tandem_core::wire::OLDEST_PROTOCOL_VERSION`.

/// The protocol version this build speaks natively and sends by default.
pub const PROTOCOL_VERSION: u8 = 3;
/// The oldest protocol version this build still decodes and can send.
pub const OLDEST_PROTOCOL_VERSION: u8 = 1;
