//! The VIP under the driver: claiming it (bind-mode sockets handed to the
//! service, or the address itself on an interface with gratuitous ARP) and
//! the sockets a started service inherits.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tandem_core::{GroupId, Mode};

use super::Agent;
use crate::config::ModeName;
use crate::vip;
use crate::vip_ip::IpVip;

impl Agent {
    /// Binds the group's VIP addresses and, in active-active mode, gives a
    /// running service the new socket too.
    pub(super) async fn claim_vip(&mut self, group: GroupId) {
        // In ip mode the address goes on the interface first: sockets can
        // only bind to an address the host has.
        if let Some(ip) = self.ip_vip(group) {
            match ip.claim().await {
                Ok(report) => {
                    tracing::info!(group = group.0, report = ?report, "VIP address added")
                }
                Err(e) => {
                    tracing::error!(group = group.0, error = %e, "cannot add the VIP address")
                }
            }
        }
        self.bind_vip(group);
        // A service already running (another group of active-active) must
        // get the new socket too.
        if self.service_running && self.node.config().mode == Mode::ActiveActive {
            self.restart_service().await;
        }
    }

    /// Binds the group's VIP addresses. In active-passive mode every listen
    /// address belongs to the one group; in active-active, group N owns the
    /// N-th address.
    pub(super) fn bind_vip(&mut self, group: GroupId) {
        let addrs: Vec<SocketAddr> = match self.config.cluster.mode {
            ModeName::ActiveActive => self
                .config
                .vip
                .listen
                .get(usize::from(group.0))
                .copied()
                .into_iter()
                .collect(),
            _ => self.config.vip.listen.clone(),
        };
        let mut sockets = Vec::new();
        for addr in addrs {
            match vip::bind(addr) {
                Ok(fd) => sockets.push((addr, fd)),
                Err(e) => tracing::error!(%addr, error = %e, "cannot bind the VIP"),
            }
        }
        tracing::info!(group = group.0, addrs = ?sockets.iter().map(|(a, _)| a).collect::<Vec<_>>(), "VIP claimed");
        self.vip.insert(group, sockets);
    }

    /// The `ip` mode address of a group: group N has the N-th address
    /// (active-passive has one group and one address).
    pub(super) fn ip_vip(&self, group: GroupId) -> Option<&IpVip> {
        self.ip_vips.get(usize::from(group.0))
    }

    pub(super) fn vip_sockets(&self) -> Vec<Arc<OwnedFd>> {
        self.vip
            .values()
            .flatten()
            .map(|(_, fd)| fd.clone())
            .collect()
    }
}
