//! The sync channel's wire format.
//!
//! Every frame is two big-endian `u32` lengths, a JSON header of the first
//! length and a raw body of the second:
//!
//! ```text
//! ┌────────────┬──────────┬──────────────────┬────────────────────┐
//! │ header_len │ body_len │ header (JSON)    │ body (raw bytes)   │
//! │ u32 BE     │ u32 BE   │ {"t":"put",...}  │ file data, journal │
//! └────────────┴──────────┴──────────────────┴────────────────────┘
//! ```
//!
//! Control data is JSON because it is small and debuggable, and adding a
//! field stays compatible (serde ignores unknown fields) — that matters as
//! nodes run different versions during an upgrade. File contents travel as
//! raw bytes, never escaped into JSON.
//!
//! The conversation is request / response and the dialer (the active)
//! always speaks first: [`Message::Put`] and [`Message::Delete`] are
//! buffered by the standby until [`Message::Commit`], which it answers with
//! [`Message::Ack`] once everything is durable, or [`Message::Nack`]. An
//! idle active pings ([`Message::Ping`], answered [`Message::Pong`]).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::store::ManifestEntry;

/// The largest header accepted: a manifest of a few hundred thousand files.
pub const MAX_HEADER: usize = 64 << 20;
/// The largest body accepted (one file). Mail spool files are far smaller;
/// the limit stops a broken peer from making us allocate without bound.
pub const MAX_BODY: usize = 256 << 20;

/// One frame's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    /// Server → dialer after TLS: the peer is accepted; `node` is the
    /// server's name as its certificate says.
    Welcome {
        /// The accepting node.
        node: String,
    },
    /// Server → dialer after TLS: the dialer is not one of the expected
    /// peers. The connection closes after this.
    Refused {
        /// Why.
        reason: String,
    },
    /// Write a file under the data dir; the body is its content.
    Put {
        /// Relative to the data dir, `/`-separated.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Remove a file under the data dir (absent is fine).
    Delete {
        /// Relative to the data dir.
        path: String,
    },
    /// Make every put and delete since the last commit durable, then ack.
    Commit {
        /// Request id, echoed in the answer.
        seq: u64,
        /// The sender's fencing epoch (0: none; see [`crate::fencing`]).
        #[serde(default)]
        epoch: u64,
    },
    /// Positive answer to the request `seq`.
    Ack {
        /// The request answered.
        seq: u64,
    },
    /// The request `seq` failed; nothing of a refused batch was applied
    /// if `error` is about a path.
    Nack {
        /// The request answered.
        seq: u64,
        /// What went wrong, for the log and the operator.
        error: String,
    },
    /// Ask for a manifest: of the data dir, or of the config files.
    ManifestRequest {
        /// Request id.
        seq: u64,
        /// Which files; the data dir when absent (older senders).
        #[serde(default)]
        set: ManifestSet,
    },
    /// The manifest asked for, sorted by path.
    Manifest {
        /// The request answered.
        seq: u64,
        /// One entry per file.
        entries: Vec<ManifestEntry>,
    },
    /// A catch-up (or a full resync) starts: the standby is `syncing`
    /// until [`Message::CatchUpEnd`]. Totals are for its progress display.
    CatchUpBegin {
        /// Files that will be put or deleted.
        files: u64,
        /// Bytes that will be put.
        bytes: u64,
        /// True for a full resync (every file is sent).
        full: bool,
    },
    /// The catch-up is complete; answered with an ack.
    CatchUpEnd {
        /// Request id.
        seq: u64,
    },
    /// A config file pushed from the active; the body is its content.
    Config {
        /// Request id.
        seq: u64,
        /// The file's name: the receiver installs it at the path its own
        /// config lists under that name.
        name: String,
        /// Permission bits.
        mode: u32,
    },
    /// An opaque journal record (the upgrade journal); acked once the
    /// receiving agent has persisted it.
    Journal {
        /// Request id.
        seq: u64,
    },
    /// Active → standby on an idle channel (`keepalive`): answered with
    /// [`Message::Pong`], so each end keeps hearing the other over the
    /// authenticated channel (see [`crate::liveness`]). A receiver older
    /// than this message cannot parse it and drops the connection: set
    /// `keepalive` only once every node is upgraded.
    Ping {
        /// Request id.
        seq: u64,
    },
    /// The answer to [`Message::Ping`].
    Pong {
        /// The request answered.
        seq: u64,
    },
}

/// The file sets a manifest can describe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestSet {
    /// Every file under the data dir, by relative path.
    #[default]
    Data,
    /// The node's cluster config files, by file name.
    Config,
}

/// A frame as read: its header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub message: Message,
    /// The body; empty for most messages.
    pub body: Vec<u8>,
}

/// Writes one frame. Does not flush: callers write a batch, then flush once.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    body: &[u8],
) -> std::io::Result<()> {
    let header = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    if header.len() > MAX_HEADER || body.len() > MAX_BODY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "frame too large: header {} bytes, body {} bytes (limits {MAX_HEADER}, {MAX_BODY})",
                header.len(),
                body.len()
            ),
        ));
    }
    let mut lengths = [0u8; 8];
    lengths[..4].copy_from_slice(&(header.len() as u32).to_be_bytes());
    lengths[4..].copy_from_slice(&(body.len() as u32).to_be_bytes());
    writer.write_all(&lengths).await?;
    writer.write_all(&header).await?;
    writer.write_all(body).await
}

/// Reads one frame; `None` when the stream ends cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Frame>> {
    let mut lengths = [0u8; 8];
    // A close before the first byte is the normal end of a conversation; a
    // close after it is a truncated frame.
    match reader.read(&mut lengths[..1]).await? {
        0 => return Ok(None),
        _ => reader.read_exact(&mut lengths[1..]).await?,
    };
    let header_len = u32::from_be_bytes([lengths[0], lengths[1], lengths[2], lengths[3]]) as usize;
    let body_len = u32::from_be_bytes([lengths[4], lengths[5], lengths[6], lengths[7]]) as usize;
    if header_len > MAX_HEADER || body_len > MAX_BODY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame too large: header {header_len} bytes, body {body_len} bytes"),
        ));
    }
    let mut header = vec![0u8; header_len];
    reader.read_exact(&mut header).await?;
    let message: Message = serde_json::from_slice(&header).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad frame header: {e}"),
        )
    })?;
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body).await?;
    Ok(Some(Frame { message, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let mut wire = Vec::new();
        let put = Message::Put {
            path: "queue/a".into(),
            mode: 0o640,
        };
        write_frame(&mut wire, &put, b"\0\x01binary")
            .await
            .expect("write a put frame");
        write_frame(&mut wire, &Message::Commit { seq: 7, epoch: 0 }, b"")
            .await
            .expect("write a commit frame");
        write_frame(&mut wire, &Message::Ping { seq: 8 }, b"")
            .await
            .expect("write a ping frame");
        let mut reader = &wire[..];
        let first = read_frame(&mut reader)
            .await
            .expect("read the first frame")
            .expect("get the first frame");
        assert_eq!(first.message, put);
        assert_eq!(first.body, b"\0\x01binary");
        let second = read_frame(&mut reader)
            .await
            .expect("read the second frame")
            .expect("get the second frame");
        assert_eq!(second.message, Message::Commit { seq: 7, epoch: 0 });
        let ping = read_frame(&mut reader)
            .await
            .expect("read the ping frame")
            .expect("get the ping frame");
        assert_eq!(ping.message, Message::Ping { seq: 8 });
        assert!(
            read_frame(&mut reader)
                .await
                .expect("read the end of the stream")
                .is_none()
        );
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        assert!(read_frame(&mut &huge[..]).await.is_err());

        let mut wire = Vec::new();
        write_frame(&mut wire, &Message::Commit { seq: 1, epoch: 0 }, b"")
            .await
            .expect("write a commit frame");
        wire.truncate(wire.len() - 1);
        assert!(read_frame(&mut &wire[..]).await.is_err());
    }
}
