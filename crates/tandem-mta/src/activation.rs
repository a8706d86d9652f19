//! Socket activation (the systemd protocol): serve on sockets we inherit.
//!
//! The tandem agent owns the VIP socket and hands it to the relay it starts,
//! so a restart or an upgrade of the relay never closes the port. The
//! protocol: `LISTEN_PID` is our pid, `LISTEN_FDS` = n, and the sockets are
//! file descriptors 3 .. 3+n. Variables meant for another process (a
//! different pid) are ignored, as systemd specifies.

use std::os::fd::{FromRawFd, RawFd};

use crate::error::{Error, Result};

/// First inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Which descriptors were handed to us, from the variables' values. Pure,
/// so the rules are tested without a real hand-over.
pub fn listen_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    our_pid: u32,
) -> Result<Option<std::ops::Range<RawFd>>> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| Error::Activation(format!("LISTEN_PID={pid:?} is not a pid")))?;
    if pid != our_pid {
        return Ok(None);
    }
    let n: RawFd = fds
        .trim()
        .parse()
        .map_err(|_| Error::Activation(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if !(1..=64).contains(&n) {
        return Err(Error::Activation(format!(
            "LISTEN_FDS={n}: expected 1 to 64 sockets"
        )));
    }
    Ok(Some(LISTEN_FDS_START..LISTEN_FDS_START + n))
}

/// The inherited listening sockets, or None when not socket-activated.
pub fn inherited_listeners() -> Result<Option<Vec<std::net::TcpListener>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let Some(range) = listen_fds(pid.as_deref(), fds.as_deref(), std::process::id())? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for fd in range {
        // SAFETY: the activation protocol transfers ownership of exactly
        // these descriptors to this process (LISTEN_PID matched), and
        // nothing else in the process takes them; each is wrapped once.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        // Checks it really is a socket bound to an address (ENOTSOCK otherwise).
        l.local_addr().map_err(|e| {
            Error::Activation(format!(
                "descriptor {fd} is not a listening TCP socket: {e}"
            ))
        })?;
        out.push(l);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(
            listen_fds(None, None, 7).expect("read unset variables"),
            None
        );
        assert_eq!(
            listen_fds(Some("8"), Some("1"), 7).expect("read another process's variables"),
            None
        );
        assert_eq!(
            listen_fds(Some("7"), Some("2"), 7).expect("read this process's variables"),
            Some(3..5)
        );
        assert!(listen_fds(Some("7"), Some("0"), 7).is_err());
        assert!(listen_fds(Some("x"), Some("1"), 7).is_err());
    }
}
