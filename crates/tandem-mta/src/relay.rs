//! The relay: SMTP server + durable spool + delivery queue, wired together.
//!
//! ```text
//!  client ─SMTP─► Session ─► RelayHandler::message ─► Spool::store (fsync, hook) ─► 250
//!                                                          └─► Queue::push ─► next hop
//! ```
//!
//! [`start`] returns a [`RelayHandle`]: the listener control (suspend /
//! resume), the queue counters, and `shutdown`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::delivery::{Queue, QueueStats};
use crate::error::Result;
use crate::server::{Listen, ListenerControl};
use crate::session::{Handler, MessageContext, SessionConfig};
use crate::spool::{CommitHook, Envelope, NoopHook, Spool};

/// Everything needed to start a relay.
pub struct RelayOptions {
    /// Where to listen (or the inherited sockets).
    pub listen: Listen,
    /// Spool directory (created if missing).
    pub spool: PathBuf,
    /// Next hop, `HOST:PORT`.
    pub relay_to: String,
    /// Limits, timeouts, delivery tuning.
    pub config: Config,
    /// Runs before every `250` (cluster fsync); [`NoopHook`] by default.
    pub hook: Arc<dyn CommitHook>,
}

impl RelayOptions {
    /// Options with the default configuration and no commit hook.
    pub fn new(listen: Listen, spool: impl Into<PathBuf>, relay_to: impl Into<String>) -> Self {
        RelayOptions {
            listen,
            spool: spool.into(),
            relay_to: relay_to.into(),
            config: Config::default(),
            hook: Arc::new(NoopHook),
        }
    }
}

/// A running relay.
pub struct RelayHandle {
    control: ListenerControl,
    queue: Queue,
    spool: Spool,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RelayHandle {
    /// Suspend / resume of the SMTP listener.
    pub fn listener(&self) -> &ListenerControl {
        &self.control
    }

    /// Delivery counters.
    pub fn queue_stats(&self) -> QueueStats {
        self.queue.stats()
    }

    /// The spool in use.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Stops delivery, then stops accepting and closes sessions (421).
    /// Everything acknowledged and not yet delivered stays in `queue/` for
    /// the next start. Delivery stops first: a relay told to stop has lost
    /// the service, and the new active delivers its queue from the
    /// replicated copy; a delivery attempt made while the sessions close
    /// would only send the same message twice.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.control.close().await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts a relay: recovers the spool, starts delivery, then listens.
pub async fn start(opts: RelayOptions) -> Result<RelayHandle> {
    let spool = Spool::open(&opts.spool, opts.hook)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (queue, tasks) = Queue::start(
        spool.clone(),
        opts.relay_to.clone(),
        opts.config.hostname.clone(),
        opts.config.delivery.clone(),
        shutdown_rx,
    )?;
    let handler = Arc::new(RelayHandler {
        spool: spool.clone(),
        queue: queue.clone(),
        hostname: opts.config.hostname.clone(),
    });
    let session_config = Arc::new(SessionConfig {
        hostname: opts.config.hostname.clone(),
        limits: opts.config.limits.clone(),
    });
    let control = match ListenerControl::start(
        opts.listen,
        handler,
        session_config,
        opts.config.listener.drain_timeout,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = shutdown.send(true);
            return Err(e);
        }
    };
    tracing::info!(addrs = ?control.local_addrs().await, relay_to = %opts.relay_to, "relay started");
    Ok(RelayHandle {
        control,
        queue,
        spool,
        shutdown,
        tasks,
    })
}

/// Spools each message, then queues it for delivery.
struct RelayHandler {
    spool: Spool,
    queue: Queue,
    hostname: String,
}

impl Handler for RelayHandler {
    async fn message(&self, ctx: MessageContext, envelope: Envelope, body: Vec<u8>) -> String {
        let id = self.spool.new_id();
        let mut full = received_header(&ctx, &self.hostname, &id).into_bytes();
        full.extend_from_slice(&body);
        drop(body);
        match self.spool.store(&id, &envelope, full).await {
            Ok(()) => {
                self.queue.push(id.clone());
                format!("250 2.0.0 Ok: queued as {id}")
            }
            // The cluster did not confirm the copy (strict sync with a
            // standby away, or this node no longer active): a local
            // processing error, worth retrying at once — elsewhere, maybe.
            Err(crate::Error::Hook(e)) => {
                tracing::warn!(error = %e, "message not replicated; refused");
                "451 4.3.0 Error: not replicated to the standby, try again".to_string()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool message");
                "452 4.3.1 Error: insufficient system storage".to_string()
            }
        }
    }
}

/// The trace header every relay adds (RFC 5321 §4.4).
fn received_header(ctx: &MessageContext, hostname: &str, id: &str) -> String {
    format!(
        "Received: from {} ([{}])\r\n\tby {} (tandem-mta) with ESMTP id {};\r\n\t{}\r\n",
        ctx.helo,
        ctx.peer.ip(),
        hostname,
        id,
        rfc5322_date(SystemTime::now())
    )
}

/// `Tue, 25 Nov 2026 08:39:32 +0000` (UTC; no time-zone database needed).
pub(crate) fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        day,
        MON[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn date() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_595_972);
        assert_eq!(rfc5322_date(t), "Wed, 25 Nov 2026 08:39:32 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
