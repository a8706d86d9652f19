//! Wire messages between nodes and their signed binary encoding.
//!
//! ```text
//!  Node ──Output::Send{message}──► agent ──Codec::seal──► bytes ──UDP, every link──►
//!  ──► agent ──Codec::open──► Envelope ──Input::Received──► Node
//!                    └─ Err(e) ──Input::Rejected{reason: e.reject_reason()}──► Node (counted)
//! ```
//!
//! # Format (protocol versions 2 and 3, all integers big-endian)
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `TNDM` |
//! | 1 | protocol version (2 or 3) |
//! | 1 | kind: 1 heartbeat, 2 holdoff, 3 goodbye, 4 takeover, 5 handover, 6 command |
//! | 1 + n | cluster id (length, UTF-8) |
//! | 1 + n | sender node name (length, UTF-8) |
//! | 8 | sender boot epoch (must grow at every start of the sender) |
//! | 8 | sequence number (grows with every datagram of one epoch) |
//! | 2 | body length |
//! | n | body (per kind, below) |
//! | 32 | HMAC-SHA256 over every byte before it, keyed with the cluster key |
//!
//! Bodies (v2): heartbeat = priority u8, configured role u8, effective role
//! u8, flags u8 (bit 0 healthy, bits 1-2 preempt state), group count u8 then
//! (group id u8, role u8) each, version string (u8 length + UTF-8);
//! holdoff = milliseconds u32; goodbye = empty; takeover = group u8;
//! handover = group u8, cause u8, target name (u8 length + UTF-8);
//! command = id u32, command tag u8, then its arguments.
//!
//! Protocol version 3 is version 2 with one addition at the end of the
//! heartbeat: the fencing epochs, a count u8 then (group id u8, epoch u64)
//! each. A v2 heartbeat decodes with none; a heartbeat that carries epochs
//! cannot be encoded in v2 (a v2 node could not honour them).
//!
//! # Protocol version 1 (the previous one, still decoded and encoded)
//!
//! Same header. Only kinds 1-3. Heartbeat body = priority u8, configured
//! role u8, effective role u8, healthy u8 (no groups, no preempt state, no
//! version string: a v1 node only knew active-passive); holdoff body =
//! whole seconds u16. Decoding a v1 heartbeat yields group 0 in the node's
//! role, preempt state `Disabled` and an empty version.
//!
//! A node decodes both versions and encodes each datagram in the version the
//! destination last spoke to it ([`Codec::seal_for`]), so a cluster keeps
//! working while an upgrade runs with mixed versions.
//!
//! # Replay protection
//!
//! [`Codec::open`] runs every authenticated datagram through the sender's
//! [`ReplayGuard`] (module `replay`): each `(epoch, seq)` is accepted once,
//! the two newest epochs of a peer stay live, and a new epoch more than
//! [`MAX_EPOCH_AHEAD`] ahead of the receiver's wall clock is refused, so one
//! datagram with a far-future epoch cannot lock the real sender out.
//!
//! # Why hand-written
//!
//! The format is small and fixed; a length-checked reader (`Reader`) keeps the
//! crate free of serialization dependencies and makes "never panic on any
//! input" easy to see (and is tested with proptest).

mod replay;

pub use crate::protocol::{OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use replay::{MAX_EPOCH_AHEAD, REPLAY_WINDOW, ReplayGuard, ReplayVerdict};

use crate::config::{ConfiguredRole, GroupId, MAX_NAME_LEN};
use crate::error::Error;
use crate::role::{Command, EffectiveRole, HandoverCause, PreemptState};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Duration;

const MAGIC: &[u8; 4] = b"TNDM";
const MAC_LEN: usize = 32;
/// The shortest possible datagram: magic, version, kind, two empty strings
/// (their length bytes), epoch, seq, body length, empty body, MAC.
const MIN_LEN: usize = 4 + 1 + 1 + 1 + 1 + 8 + 8 + 2 + MAC_LEN;

/// A node's periodic "I am alive, and this is my state".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// The sender's election priority.
    pub priority: u8,
    /// The sender's configured role.
    pub configured_role: ConfiguredRole,
    /// The sender's effective role as a whole.
    pub role: EffectiveRole,
    /// The sender's effective role in each failover group.
    pub groups: Vec<(GroupId, EffectiveRole)>,
    /// Whether the sender's local monitor reports its service healthy.
    pub healthy: bool,
    /// Whether the sender would preempt.
    pub preempt: PreemptState,
    /// The sender's software version string.
    pub version: String,
    /// The fencing epoch of each group the sender holds the store's leader
    /// key for (`coordination = "etcd"`; empty with peers). A receiver
    /// that knows a higher epoch for a group does not count the sender as
    /// its active (v3 only).
    pub fencing: Vec<(GroupId, u64)>,
}

impl Heartbeat {
    /// The sender's role in `group`, if it reported one.
    pub fn group_role(&self, group: GroupId) -> Option<EffectiveRole> {
        self.groups
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, r)| *r)
    }
}

/// A message between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Message {
    /// Periodic liveness and state.
    Heartbeat(Heartbeat),
    /// "I am about to reboot: do not take over from me for this long."
    Holdoff {
        /// How long (the receiver caps it at its `holdoff_max`).
        duration: Duration,
    },
    /// "I am leaving now" (clean shutdown): take over at once.
    Goodbye,
    /// "I have taken `group` over by request; if you hold it, release it."
    /// (v2 only.)
    Takeover {
        /// The group taken over.
        group: GroupId,
    },
    /// "I hold `group`; take it over, then I release it" — a planned,
    /// make-before-break switchover. (v2 only.)
    Handover {
        /// The group.
        group: GroupId,
        /// The node asked to take it.
        to: String,
        /// Why.
        cause: HandoverCause,
    },
    /// An operator command forwarded for execution on the receiver. (v2 only.)
    ///
    /// It goes out once per link, so the receiver runs each `id` of a sender
    /// run once.
    Command {
        /// Numbers the sender's forwarded commands within its boot epoch.
        id: u32,
        /// The command.
        command: Command,
    },
}

/// A decoded, authenticated message with the header fields the node uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// The protocol version the sender used.
    pub version: u8,
    /// The sender's node name (authenticated by the MAC).
    pub sender: String,
    /// The sender's boot epoch.
    pub epoch: u64,
    /// The datagram's sequence number within the epoch.
    pub seq: u64,
    /// The message.
    pub message: Message,
}

/// Why a datagram was dropped; the node counts each (see
/// [`crate::Input::Rejected`]) and status shows the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectReason {
    /// MAC mismatch: key mismatch?
    BadMac,
    /// Another cluster's datagram.
    ForeignCluster,
    /// Replayed, from an old epoch, or from an epoch implausibly far ahead
    /// of this node's clock (see [`ReplayVerdict`]).
    Replay,
    /// Protocol version not spoken here.
    UnsupportedVersion,
    /// Not a well-formed message.
    Malformed,
    /// Authenticated, but the sender is not a configured peer.
    UnknownPeer,
}

impl Error {
    /// The counter a decoding error goes under; `None` for errors that are
    /// not about a received datagram.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            Error::BadMac { .. } => Some(RejectReason::BadMac),
            Error::ForeignCluster { .. } => Some(RejectReason::ForeignCluster),
            Error::Replay { .. } => Some(RejectReason::Replay),
            Error::UnsupportedVersion(_) => Some(RejectReason::UnsupportedVersion),
            Error::Malformed(_) => Some(RejectReason::Malformed),
            Error::NotEncodable { .. } | Error::InvalidConfig(_) => None,
        }
    }
}

// ---------------------------------------------------------------- encoding

fn configured_to_u8(r: ConfiguredRole) -> u8 {
    match r {
        ConfiguredRole::Primary => 1,
        ConfiguredRole::Secondary => 2,
        ConfiguredRole::ConfigOnly => 3,
        ConfiguredRole::Off => 4,
    }
}

fn configured_from_u8(b: u8) -> Result<ConfiguredRole, Error> {
    Ok(match b {
        1 => ConfiguredRole::Primary,
        2 => ConfiguredRole::Secondary,
        3 => ConfiguredRole::ConfigOnly,
        4 => ConfiguredRole::Off,
        _ => return Err(Error::Malformed("unknown configured role")),
    })
}

fn role_to_u8(r: EffectiveRole) -> u8 {
    match r {
        EffectiveRole::Active => 1,
        EffectiveRole::Standby => 2,
        EffectiveRole::HeldOff => 3,
        EffectiveRole::Failed => 4,
        EffectiveRole::Off => 5,
        EffectiveRole::Syncing => 6,
        EffectiveRole::Disconnected => 7,
    }
}

fn role_from_u8(b: u8) -> Result<EffectiveRole, Error> {
    Ok(match b {
        1 => EffectiveRole::Active,
        2 => EffectiveRole::Standby,
        3 => EffectiveRole::HeldOff,
        4 => EffectiveRole::Failed,
        5 => EffectiveRole::Off,
        6 => EffectiveRole::Syncing,
        7 => EffectiveRole::Disconnected,
        _ => return Err(Error::Malformed("unknown effective role")),
    })
}

fn preempt_to_bits(p: PreemptState) -> u8 {
    match p {
        PreemptState::Disabled => 0,
        PreemptState::Delaying => 1,
        PreemptState::Ready => 2,
    }
}

fn preempt_from_bits(b: u8) -> Result<PreemptState, Error> {
    Ok(match b {
        0 => PreemptState::Disabled,
        1 => PreemptState::Delaying,
        2 => PreemptState::Ready,
        _ => return Err(Error::Malformed("unknown preempt state")),
    })
}

fn cause_to_u8(c: HandoverCause) -> u8 {
    match c {
        HandoverCause::Operator => 1,
        HandoverCause::Preemption => 2,
        HandoverCause::Restore => 3,
    }
}

fn cause_from_u8(b: u8) -> Result<HandoverCause, Error> {
    Ok(match b {
        1 => HandoverCause::Operator,
        2 => HandoverCause::Preemption,
        3 => HandoverCause::Restore,
        _ => return Err(Error::Malformed("unknown handover cause")),
    })
}

fn put_str(buf: &mut Vec<u8>, s: &str) -> Result<(), Error> {
    if s.len() > MAX_NAME_LEN {
        return Err(Error::Malformed(
            "name or version string longer than 64 bytes",
        ));
    }
    // Length fits in a u8: checked just above.
    buf.push(s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

fn duration_ms_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn encode_command(buf: &mut Vec<u8>, c: &Command) {
    match c {
        Command::FailoverActive => buf.push(1),
        Command::FailoverStandby => buf.push(2),
        Command::FailoverGroup { group, active } => {
            buf.extend_from_slice(&[3, group.0, u8::from(*active)]);
        }
        Command::HaRestore => buf.push(4),
        Command::HaRestart => buf.push(5),
        Command::HaPreempt(on) => buf.extend_from_slice(&[6, u8::from(*on)]),
        Command::HaHoldoff(d) => {
            buf.push(7);
            buf.extend_from_slice(&duration_ms_u32(*d).to_be_bytes());
        }
    }
}

fn kind_of(m: &Message) -> u8 {
    match m {
        Message::Heartbeat(_) => 1,
        Message::Holdoff { .. } => 2,
        Message::Goodbye => 3,
        Message::Takeover { .. } => 4,
        Message::Handover { .. } => 5,
        Message::Command { .. } => 6,
    }
}

fn encode_body(version: u8, m: &Message) -> Result<Vec<u8>, Error> {
    let mut b = Vec::with_capacity(32);
    let v1 = version == 1;
    let not_in_this_version = |what| Error::NotEncodable { version, what };
    match m {
        Message::Heartbeat(h) if v1 => {
            if h.groups.len() > 1 {
                return Err(not_in_this_version("more than one failover group"));
            }
            b.extend_from_slice(&[
                h.priority,
                configured_to_u8(h.configured_role),
                role_to_u8(h.role),
                u8::from(h.healthy),
            ]);
        }
        Message::Heartbeat(h) => {
            let flags = u8::from(h.healthy) | (preempt_to_bits(h.preempt) << 1);
            b.extend_from_slice(&[
                h.priority,
                configured_to_u8(h.configured_role),
                role_to_u8(h.role),
                flags,
            ]);
            let n = u8::try_from(h.groups.len())
                .map_err(|_| Error::Malformed("more than 255 failover groups"))?;
            b.push(n);
            for (g, r) in &h.groups {
                b.extend_from_slice(&[g.0, role_to_u8(*r)]);
            }
            put_str(&mut b, &h.version)?;
            if version >= 3 {
                let n = u8::try_from(h.fencing.len())
                    .map_err(|_| Error::Malformed("more than 255 fencing epochs"))?;
                b.push(n);
                for (g, epoch) in &h.fencing {
                    b.push(g.0);
                    b.extend_from_slice(&epoch.to_be_bytes());
                }
            } else if !h.fencing.is_empty() {
                return Err(not_in_this_version("fencing epochs (protocol 3 and later)"));
            }
        }
        Message::Holdoff { duration } if v1 => {
            let secs = duration.as_millis().div_ceil(1000);
            b.extend_from_slice(&u16::try_from(secs).unwrap_or(u16::MAX).to_be_bytes());
        }
        Message::Holdoff { duration } => {
            b.extend_from_slice(&duration_ms_u32(*duration).to_be_bytes());
        }
        Message::Goodbye => {}
        _ if v1 => {
            return Err(not_in_this_version(
                "takeover, handover and forwarded commands",
            ));
        }
        Message::Takeover { group } => b.push(group.0),
        Message::Handover { group, to, cause } => {
            b.extend_from_slice(&[group.0, cause_to_u8(*cause)]);
            put_str(&mut b, to)?;
        }
        Message::Command { id, command } => {
            b.extend_from_slice(&id.to_be_bytes());
            encode_command(&mut b, command);
        }
    }
    Ok(b)
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length (longer ones are hashed first), so
        // `new_from_slice` never fails; no input can reach this arm.
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// Header fields of an outgoing datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Protocol version to encode in (1 or 2).
    pub version: u8,
    /// The cluster id.
    pub cluster: &'a str,
    /// This node's name.
    pub sender: &'a str,
    /// This node's boot epoch.
    pub epoch: u64,
    /// This datagram's sequence number.
    pub seq: u64,
}

/// Encodes and signs one datagram. Stateless; [`Codec`] numbers datagrams
/// for you.
pub fn encode(key: &[u8], header: &Header<'_>, message: &Message) -> Result<Vec<u8>, Error> {
    if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&header.version) {
        return Err(Error::UnsupportedVersion(header.version));
    }
    let body = encode_body(header.version, message)?;
    let body_len =
        u16::try_from(body.len()).map_err(|_| Error::Malformed("body longer than 65535 bytes"))?;
    let mut out = Vec::with_capacity(64 + body.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(header.version);
    out.push(kind_of(message));
    put_str(&mut out, header.cluster)?;
    put_str(&mut out, header.sender)?;
    out.extend_from_slice(&header.epoch.to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&body);
    let mut m = mac(key);
    m.update(&out);
    out.extend_from_slice(&m.finalize().into_bytes());
    Ok(out)
}

// ---------------------------------------------------------------- decoding

/// A cursor over untrusted bytes: every read is length-checked and returns
/// `Malformed` instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.bytes.len() < n {
            return Err(Error::Malformed("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::Malformed("bad boolean")),
        }
    }
    /// A length-prefixed string field, borrowed and not yet UTF-8 checked.
    fn str_bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::from(self.u8()?);
        if n > MAX_NAME_LEN {
            return Err(Error::Malformed("string longer than 64 bytes"));
        }
        self.take(n)
    }
    fn str(&mut self) -> Result<String, Error> {
        utf8(self.str_bytes()?).map(str::to_owned)
    }
    fn end(&self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed("trailing bytes"))
        }
    }
}

fn utf8(b: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(b).map_err(|_| Error::Malformed("string is not UTF-8"))
}

fn decode_command(r: &mut Reader<'_>) -> Result<Command, Error> {
    Ok(match r.u8()? {
        1 => Command::FailoverActive,
        2 => Command::FailoverStandby,
        3 => Command::FailoverGroup {
            group: GroupId(r.u8()?),
            active: r.bool()?,
        },
        4 => Command::HaRestore,
        5 => Command::HaRestart,
        6 => Command::HaPreempt(r.bool()?),
        7 => Command::HaHoldoff(Duration::from_millis(u64::from(r.u32()?))),
        _ => return Err(Error::Malformed("unknown command")),
    })
}

fn decode_body(version: u8, kind: u8, body: &[u8]) -> Result<Message, Error> {
    let mut r = Reader { bytes: body };
    let v1 = version == 1;
    let m = match kind {
        1 if v1 => {
            let priority = r.u8()?;
            let configured_role = configured_from_u8(r.u8()?)?;
            let role = role_from_u8(r.u8()?)?;
            let healthy = r.bool()?;
            Message::Heartbeat(Heartbeat {
                priority,
                configured_role,
                role,
                groups: vec![(GroupId(0), role)],
                healthy,
                preempt: PreemptState::Disabled,
                version: String::new(),
                fencing: Vec::new(),
            })
        }
        1 => {
            let priority = r.u8()?;
            let configured_role = configured_from_u8(r.u8()?)?;
            let role = role_from_u8(r.u8()?)?;
            let flags = r.u8()?;
            if flags & !0b111 != 0 {
                return Err(Error::Malformed("unknown heartbeat flags"));
            }
            let n = r.u8()?;
            let mut groups = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                groups.push((GroupId(r.u8()?), role_from_u8(r.u8()?)?));
            }
            let healthy = flags & 1 == 1;
            let preempt = preempt_from_bits((flags >> 1) & 0b11)?;
            let version_string = r.str()?;
            let mut fencing = Vec::new();
            if version >= 3 {
                for _ in 0..r.u8()? {
                    fencing.push((GroupId(r.u8()?), r.u64()?));
                }
            }
            Message::Heartbeat(Heartbeat {
                priority,
                configured_role,
                role,
                groups,
                healthy,
                preempt,
                version: version_string,
                fencing,
            })
        }
        2 if v1 => Message::Holdoff {
            duration: Duration::from_secs(u64::from(r.u16()?)),
        },
        2 => Message::Holdoff {
            duration: Duration::from_millis(u64::from(r.u32()?)),
        },
        3 => Message::Goodbye,
        4 if !v1 => Message::Takeover {
            group: GroupId(r.u8()?),
        },
        5 if !v1 => {
            let group = GroupId(r.u8()?);
            let cause = cause_from_u8(r.u8()?)?;
            Message::Handover {
                group,
                to: r.str()?,
                cause,
            }
        }
        6 if !v1 => Message::Command {
            id: r.u32()?,
            command: decode_command(&mut r)?,
        },
        _ => return Err(Error::Malformed("unknown message kind")),
    };
    r.end()?;
    Ok(m)
}

/// Decodes and authenticates one datagram (no replay check: see
/// [`ReplayGuard`] and [`Codec::open`]).
///
/// Checks, in order: length, framing, protocol version, cluster id, MAC,
/// body. Everything before the MAC is a few byte comparisons and allocates
/// nothing, so junk, other protocols and other clusters' datagrams are
/// dropped without paying for an HMAC (the one costly step). The cluster id
/// is compared before the MAC also to tell "another cluster" apart from
/// "wrong key" in the error; either way the datagram is dropped. Never
/// panics, whatever the bytes.
pub fn decode(key: &[u8], cluster: &str, bytes: &[u8]) -> Result<Envelope, Error> {
    if bytes.len() < MIN_LEN {
        return Err(Error::Malformed("too short"));
    }
    let mut r = Reader { bytes };
    if r.take(4)? != MAGIC {
        return Err(Error::Malformed("not a tandem message (bad magic)"));
    }
    let version = r.u8()?;
    if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion(version));
    }
    let kind = r.u8()?;
    let found_cluster = r.str_bytes()?;
    let sender = utf8(r.str_bytes()?)?;
    let epoch = r.u64()?;
    let seq = r.u64()?;
    let body_len = usize::from(r.u16()?);
    let body = r.take(body_len)?;
    let tag = r.take(MAC_LEN)?;
    r.end()?;
    if found_cluster != cluster.as_bytes() {
        return Err(Error::ForeignCluster {
            found: utf8(found_cluster)?.to_owned(),
            expected: cluster.to_owned(),
        });
    }
    let signed = &bytes[..bytes.len() - MAC_LEN];
    let mut m = mac(key);
    m.update(signed);
    if m.verify_slice(tag).is_err() {
        return Err(Error::BadMac {
            claimed_sender: sender.to_owned(),
        });
    }
    let message = decode_body(version, kind, body)?;
    Ok(Envelope {
        version,
        sender: sender.to_owned(),
        epoch,
        seq,
        message,
    })
}

// ---------------------------------------------------------------- codec

/// One node's encoder/decoder: cluster key and id, its own epoch and
/// sequence counter, a [`ReplayGuard`] per peer and the protocol version each
/// peer last used.
///
/// The agent keeps one `Codec` next to its [`crate::Node`]. Seal one
/// datagram per link (each gets its own sequence number).
#[derive(Debug, Clone)]
pub struct Codec {
    key: Vec<u8>,
    cluster: String,
    name: String,
    epoch: u64,
    next_seq: u64,
    guards: BTreeMap<String, ReplayGuard>,
    peer_versions: BTreeMap<String, u8>,
}

impl Codec {
    /// A codec for node `name` of `cluster`. `epoch` must be larger at every
    /// start of the agent, or peers reject its datagrams as replays, and not
    /// more than [`MAX_EPOCH_AHEAD`] ahead of the peers' wall clocks in Unix
    /// milliseconds, or they reject it as from the future: the agent uses
    /// `max(wall-clock ms at start, last epoch + 1)`.
    pub fn new(key: &[u8], cluster: &str, name: &str, epoch: u64) -> Self {
        Codec {
            key: key.to_vec(),
            cluster: cluster.to_owned(),
            name: name.to_owned(),
            epoch,
            next_seq: 1,
            guards: BTreeMap::new(),
            peer_versions: BTreeMap::new(),
        }
    }

    /// This node's boot epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seals `message` in protocol `version`, with the next sequence number.
    pub fn seal(&mut self, message: &Message, version: u8) -> Result<Vec<u8>, Error> {
        let header = Header {
            version,
            cluster: &self.cluster,
            sender: &self.name,
            epoch: self.epoch,
            seq: self.next_seq,
        };
        let bytes = encode(&self.key, &header, message)?;
        self.next_seq += 1;
        Ok(bytes)
    }

    /// The protocol version to use towards `peer`: the version it last
    /// spoke to us, or ours if it has not spoken yet.
    pub fn version_for(&self, peer: &str) -> u8 {
        self.peer_versions
            .get(peer)
            .copied()
            .unwrap_or(PROTOCOL_VERSION)
    }

    /// Seals `message` for `peer` in the version it speaks.
    ///
    /// Fails with [`Error::NotEncodable`] when a version-1 peer cannot take
    /// the message (takeover, handover, forwarded command, several groups):
    /// the agent skips that datagram and logs it. Planned switchovers with a
    /// v1 peer therefore fall back to its own v1 behaviour (crash-style
    /// takeover); upgrade the standby first, as every seed does.
    pub fn seal_for(&mut self, peer: &str, message: &Message) -> Result<Vec<u8>, Error> {
        let v = self.version_for(peer);
        self.seal(message, v)
    }

    /// Decodes, authenticates and replay-checks a datagram. On success the
    /// sender's replay window and protocol version are updated.
    ///
    /// `now_unix_ms` is this node's wall clock in milliseconds since the Unix
    /// epoch (not the monotonic [`crate::Millis`]): a sender's new epoch more
    /// than [`MAX_EPOCH_AHEAD`] ahead of it is refused as a replay
    /// ([`ReplayVerdict::FutureEpoch`]), so that one datagram with a
    /// far-future epoch cannot lock the sender's real epoch out.
    pub fn open(&mut self, bytes: &[u8], now_unix_ms: u64) -> Result<Envelope, Error> {
        let env = decode(&self.key, &self.cluster, bytes)?;
        self.admit(env, now_unix_ms)
    }

    /// The replay check of [`Codec::open`] for an envelope [`decode`]
    /// already authenticated with this codec's key (the agent authenticates
    /// in each link's receive task, so a flood never reaches its loop).
    pub fn admit(&mut self, env: Envelope, now_unix_ms: u64) -> Result<Envelope, Error> {
        // Only an authenticated sender gets a guard: junk cannot grow the map.
        let guard = self.guards.entry(env.sender.clone()).or_default();
        if guard.check(env.epoch, env.seq, now_unix_ms).is_err() {
            return Err(Error::Replay {
                sender: env.sender,
                epoch: env.epoch,
                seq: env.seq,
            });
        }
        self.peer_versions.insert(env.sender.clone(), env.version);
        Ok(env)
    }
}
