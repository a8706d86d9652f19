//! Keepalive pings on an idle sync connection (`keepalive`): liveness must
//! keep arriving over the authenticated channel when no mail flows, since
//! an open socket proves nothing (see [`crate::liveness`]).
//!
//! "Idle" is measured from the standby's last answer, whatever it was
//! answering: under load the commits themselves prove it alive and no ping
//! is sent.

use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::Shared;
use super::peer::{answer, net_error};
use crate::frame::{Message, write_frame};
use crate::tls::Channel;
use crate::{Error, Result};

/// Completes when `peer` has been silent for `keepalive`; never without
/// one.
pub(super) async fn idle(shared: &Shared, peer: &str) {
    let Some(every) = shared.config.keepalive else {
        return std::future::pending().await;
    };
    let since = shared
        .liveness
        .last_answer(peer)
        .unwrap_or_else(Instant::now);
    tokio::time::sleep_until((since + every).into()).await;
}

/// Sends a ping and waits (≤ `io_timeout`) for its pong; the answer is
/// reported as liveness like any other.
pub(super) async fn ping(shared: &Shared, channel: &mut Channel, seq: &mut u64) -> Result<()> {
    *seq += 1;
    let net = net_error(channel.peer.clone());
    write_frame(&mut channel.stream, &Message::Ping { seq: *seq }, b"")
        .await
        .map_err(&net)?;
    channel.stream.flush().await.map_err(&net)?;
    match answer(shared, channel).await? {
        Message::Pong { seq: answered } if answered == *seq => Ok(()),
        other => Err(Error::Protocol {
            peer: channel.peer.clone(),
            reason: format!("expected the answer to ping {seq}, got {other:?}"),
        }),
    }
}
