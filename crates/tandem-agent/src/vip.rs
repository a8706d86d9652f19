//! The VIP in `bind` mode: the active node binds the service address's
//! listening sockets and hands them to the service.
//!
//! Binding in the agent, not the service, is what lets the agent decide who
//! serves: a standby holds no socket, so a connection to the VIP can only
//! reach the active node's service. Every socket has `SO_REUSEPORT`, so
//! during a planned switchover the new active's socket joins before the old
//! one closes and no connection is refused; with
//! `net.ipv4.tcp_migrate_req = 1` the kernel also moves connections still
//! queued on the closing socket to the new one (see
//! ../shared/notes/zero-downtime-handoff.md). On loopback every "node" can
//! bind the same address, which is what makes a whole cluster testable on
//! one machine.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::TcpSocket;

/// Listen backlog: deep enough that a burst during a handover waits rather
/// than being refused.
const BACKLOG: u32 = 1024;

/// Binds a listening socket on `addr` with `SO_REUSEADDR` and
/// `SO_REUSEPORT`. Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<Arc<OwnedFd>> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    let std_listener = listener.into_std()?;
    Ok(Arc::new(OwnedFd::from(std_listener)))
}

/// Tries to let the kernel migrate queued connections from a closing
/// reuseport listener to its siblings. Best effort: root only, per network
/// namespace; without it the old owner must drain its queue before closing.
pub fn enable_request_migration() -> bool {
    match std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1") {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "cannot set net.ipv4.tcp_migrate_req=1; handovers rely on draining");
            false
        }
    }
}
