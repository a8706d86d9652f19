//! The VIP in `ip` mode: the active node adds the service address to a
//! network interface and announces it with gratuitous ARP; releasing
//! deletes the address.
//!
//! This is what keepalived does, and what `bind` mode (see [`crate::vip`])
//! cannot: in `bind` mode every node can already route to the address (it
//! is on loopback, or routed to each node), so only the listening socket
//! moves. When clients sit on the same Ethernet segment as the nodes, the
//! address itself must move, and the clients' ARP caches must learn the new
//! owner's MAC at once — otherwise they keep sending to the old owner until
//! they re-probe their neighbour entry (5 to 45 s with Linux defaults). A gratuitous ARP (an
//! RFC 5227 "ARP announcement") updates every neighbour that already has an
//! entry for the address; Linux overrides an existing entry on a gratuitous
//! ARP even with the default `arp_accept = 0`.
//!
//! - The address is added and deleted over rtnetlink (the `rtnetlink`
//!   crate), never by running `ip`: no fork on the failover path, and real
//!   errors instead of parsed text.
//! - The gratuitous ARP is a 42-byte Ethernet frame built here and sent on
//!   an `AF_PACKET` socket through `libc`. No crate was worth a dependency
//!   for it: a general packet crate (`pnet` and the like) is a large tree
//!   for one fixed frame, and the frame layout is pinned by a test below.
//! - Everything works in the network namespace of the calling thread, so an
//!   agent started with `ip netns exec NS` manages `NS`'s interfaces.
//!
//! IPv4 only: an IPv6 VIP needs unsolicited neighbour advertisements, which
//! are not built yet; [`IpVip::new`] refuses one rather than half-work.
//!
//! Claim is idempotent (the address already there is fine: the announcement
//! is sent again, which is what a restarted agent that finds its address
//! needs) and release is tolerant (an absent address or interface is fine),
//! because the state machine may repeat either after a restart.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle};
use tokio::task::JoinHandle;

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

/// How long one netlink exchange with the kernel may take. The kernel
/// answers in microseconds; the bound only makes sure a wedged socket
/// cannot stall the agent's loop forever.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the `ip` VIP mode.
#[derive(Debug, thiserror::Error)]
pub enum VipIpError {
    /// The VIP address (or prefix) in the configuration is not usable.
    #[error("VIP address {input:?}: {reason}")]
    InvalidAddress {
        /// What was given.
        input: String,
        /// Why it is refused.
        reason: String,
    },

    /// The interface name cannot be a Linux interface name.
    #[error(
        "VIP interface {0:?}: not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)"
    )]
    InvalidInterface(String),

    /// The interface does not exist in this network namespace.
    #[error(
        "VIP interface {0:?} does not exist in this network namespace (is the agent in the right namespace?)"
    )]
    NoSuchInterface(String),

    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Netlink(#[source] io::Error),

    /// The kernel refused a netlink request.
    #[error("cannot {what}: {source}")]
    Request {
        /// What was being done, e.g. "add 198.18.0.100/24 to eth0".
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },

    /// The kernel did not answer within [`NETLINK_TIMEOUT`].
    #[error("cannot {what}: no answer from the kernel within {NETLINK_TIMEOUT:?}")]
    Timeout {
        /// What was being done.
        what: String,
    },
}

/// How the new owner announces the address: `count` gratuitous ARPs,
/// `spacing` apart, the first at once.
///
/// More than one because a single frame can be lost (a switch port still
/// coming up, a busy bridge); the default, 3 frames 50 ms apart, is done
/// within 100 ms, well inside the failover budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarpPlan {
    /// How many frames; 0 sends none.
    pub count: u32,
    /// Time between two frames.
    pub spacing: Duration,
}

impl Default for GarpPlan {
    fn default() -> Self {
        GarpPlan {
            count: 3,
            spacing: Duration::from_millis(50),
        }
    }
}

/// What happened to the announcement on a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    /// The first gratuitous ARP was sent; `follow_ups` more are scheduled
    /// in the background (cancelled by [`IpVip::release`]).
    Sent {
        /// Frames still to come.
        follow_ups: u32,
    },
    /// The plan's `count` is 0.
    Disabled,
    /// The interface does not use ARP (loopback, `NOARP`, not Ethernet):
    /// there is nothing to announce.
    NotApplicable,
    /// The address is on the interface, but the frame could not be sent
    /// (the interface is down, for one): neighbours learn the new owner
    /// only when their entries expire. The claim itself stands.
    Failed(String),
}

/// The outcome of [`IpVip::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimReport {
    /// The interface's index in this namespace.
    pub interface_index: u32,
    /// The interface's MAC address, the one the announcement carries.
    pub mac: Option<[u8; 6]>,
    /// The address was already on the interface (nothing was added).
    pub already_present: bool,
    /// The gratuitous ARP.
    pub announce: Announce,
}

/// The outcome of [`IpVip::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseReport {
    /// The address was on the interface and has been deleted; `false` when
    /// there was nothing to do.
    pub was_present: bool,
}

/// One VIP in `ip` mode: an IPv4 address with its prefix on one interface.
///
/// Keep one value per VIP for as long as the agent runs, and claim and
/// release through it: a release then also cancels the claim's pending
/// announcements at once. (They also stop by themselves as soon as the
/// address is gone from the interface.) Dropping the value changes nothing
/// on the interface and lets pending announcements finish.
#[derive(Debug)]
pub struct IpVip {
    interface: String,
    address: Ipv4Addr,
    prefix_len: u8,
    garp: GarpPlan,
    /// The background task sending the follow-up frames of the last claim.
    /// Kept so that a release (or the next claim) stops it: a node that
    /// gave the address away must not announce it any more.
    follow_ups: Mutex<Option<JoinHandle<()>>>,
}

impl IpVip {
    /// A VIP `address/prefix_len` on `interface`, with the default
    /// announcement plan.
    pub fn new(interface: &str, address: IpAddr, prefix_len: u8) -> Result<Self, VipIpError> {
        let invalid = |reason: &str| VipIpError::InvalidAddress {
            input: format!("{address}/{prefix_len}"),
            reason: reason.to_string(),
        };
        let address = match address {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => {
                return Err(invalid(
                    "IPv6 is not supported in ip mode yet (use an IPv4 address, or bind mode)",
                ));
            }
        };
        if prefix_len > 32 {
            return Err(invalid("the prefix length must be 0 to 32"));
        }
        if address.is_unspecified()
            || address.is_multicast()
            || address.is_broadcast()
            || address.is_loopback()
        {
            // None of these can be announced with ARP; a loopback VIP wants
            // bind mode.
            return Err(invalid(
                "must be a unicast address (not 0.0.0.0, 127/8, multicast or broadcast)",
            ));
        }
        if !valid_interface_name(interface) {
            return Err(VipIpError::InvalidInterface(interface.to_string()));
        }
        Ok(IpVip {
            interface: interface.to_string(),
            address,
            prefix_len,
            garp: GarpPlan::default(),
            follow_ups: Mutex::new(None),
        })
    }

    /// Parses `"198.18.0.100/24"`; without `/N` the prefix is 32, as with
    /// `ip addr add`.
    pub fn parse(interface: &str, address: &str) -> Result<Self, VipIpError> {
        let invalid = |reason: &str| VipIpError::InvalidAddress {
            input: address.to_string(),
            reason: reason.to_string(),
        };
        let (addr, prefix) = match address.split_once('/') {
            Some((a, p)) => {
                let prefix = p
                    .parse::<u8>()
                    .map_err(|_| invalid("the prefix after '/' must be a number 0 to 32"))?;
                (a, prefix)
            }
            None => (address, 32),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| invalid("expected an IPv4 address such as 198.18.0.100/24"))?;
        IpVip::new(interface, addr, prefix)
    }

    /// Replaces the announcement plan.
    pub fn with_garp(mut self, plan: GarpPlan) -> Self {
        self.garp = plan;
        self
    }

    /// The interface name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Adds the address to the interface (fine if it is already there) and
    /// announces it: the first gratuitous ARP before returning, the others
    /// from a background task, so the caller's loop is not held up for the
    /// plan's duration. Must be called inside a tokio runtime, on a thread
    /// in the right network namespace.
    pub async fn claim(&self) -> Result<ClaimReport, VipIpError> {
        // A claim after a claim restarts the announcement, never doubles it.
        self.stop_follow_ups();
        let nl = Netlink::open()?;
        let link = self.link(&nl).await?;
        let index = link.header.index;
        let what = format!("add {self} to {}", self.interface);
        let request = nl
            .handle
            .address()
            .add(index, self.address.into(), self.prefix_len);
        let already_present = match bounded(&what, request.execute()).await? {
            Ok(()) => false,
            Err(e) if errno(&e) == Some(libc::EEXIST) => true,
            Err(source) => return Err(VipIpError::Request { what, source }),
        };
        let mac = ethernet_mac(&link);
        let announce = match mac {
            _ if self.garp.count == 0 => Announce::Disabled,
            None => Announce::NotApplicable,
            Some(mac) => self.announce(index, mac),
        };
        match &announce {
            Announce::Failed(e) => {
                tracing::warn!(vip = %self, interface = %self.interface, error = %e, "VIP claimed, but the gratuitous ARP failed");
            }
            _ => {
                tracing::info!(vip = %self, interface = %self.interface, already_present, ?announce, "VIP claimed");
            }
        }
        Ok(ClaimReport {
            interface_index: index,
            mac,
            already_present,
            announce,
        })
    }

    /// Deletes the address from the interface and stops any announcement
    /// still scheduled. An absent address, or an absent interface (which
    /// takes its addresses with it), is not an error.
    pub async fn release(&self) -> Result<ReleaseReport, VipIpError> {
        self.stop_follow_ups();
        let nl = Netlink::open()?;
        let index = match self.link(&nl).await {
            Ok(link) => link.header.index,
            Err(VipIpError::NoSuchInterface(_)) => {
                tracing::info!(vip = %self, interface = %self.interface, "VIP release: the interface is gone, and the address with it");
                return Ok(ReleaseReport { was_present: false });
            }
            Err(e) => return Err(e),
        };
        let what = format!("delete {self} from {}", self.interface);
        let request = nl.handle.address().del(self.address_message(index));
        let was_present = match bounded(&what, request.execute()).await? {
            Ok(()) => true,
            // The kernel's answer to deleting an address that is not there.
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => false,
            Err(source) => return Err(VipIpError::Request { what, source }),
        };
        tracing::info!(vip = %self, interface = %self.interface, was_present, "VIP released");
        Ok(ReleaseReport { was_present })
    }

    /// Whether the address (with this prefix) is on the interface now.
    pub async fn is_present(&self) -> Result<bool, VipIpError> {
        let nl = Netlink::open()?;
        let index = match self.link(&nl).await {
            Ok(link) => link.header.index,
            Err(VipIpError::NoSuchInterface(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        address_present(&nl, index, self.address, self.prefix_len).await
    }

    /// Looks the interface up by name.
    async fn link(&self, nl: &Netlink) -> Result<LinkMessage, VipIpError> {
        let what = format!("look up interface {}", self.interface);
        let mut links = nl
            .handle
            .link()
            .get()
            .match_name(self.interface.clone())
            .execute();
        match bounded(&what, links.try_next()).await? {
            Ok(Some(link)) => Ok(link),
            Ok(None) => Err(VipIpError::NoSuchInterface(self.interface.clone())),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {
                Err(VipIpError::NoSuchInterface(self.interface.clone()))
            }
            Err(source) => Err(VipIpError::Request { what, source }),
        }
    }

    /// The netlink message naming this address on interface `index`, for
    /// delete: the kernel deletes the address whose local address and
    /// prefix length match, the same fields the add sets.
    fn address_message(&self, index: u32) -> AddressMessage {
        AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(self.address, self.prefix_len)
            .build()
    }

    /// Sends the first frame now and schedules the rest.
    fn announce(&self, index: u32, mac: [u8; 6]) -> Announce {
        let frame = garp_frame(mac, self.address);
        // The sockets are opened here, on the caller's thread, so that they
        // belong to the caller's network namespace even if the follow-ups
        // run on another worker thread.
        let socket = match PacketSocket::open(index) {
            Ok(s) => s,
            Err(e) => return Announce::Failed(format!("cannot open an AF_PACKET socket: {e}")),
        };
        if let Err(e) = socket.send(&frame) {
            return Announce::Failed(format!("cannot send on {}: {e}", self.interface));
        }
        let follow_ups = self.garp.count.saturating_sub(1);
        if follow_ups == 0 {
            return Announce::Sent { follow_ups };
        }
        let nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                // The first frame is out; without netlink the follow-ups
                // could not check that the address is still ours.
                tracing::warn!(vip = %self, error = %e, "no follow-up gratuitous ARPs");
                return Announce::Sent { follow_ups: 0 };
            }
        };
        let (spacing, address, prefix_len) = (self.garp.spacing, self.address, self.prefix_len);
        let vip = self.to_string();
        let task = tokio::spawn(async move {
            for _ in 0..follow_ups {
                tokio::time::sleep(spacing).await;
                // A release aborts this task, but only through this
                // `IpVip`; checking the interface itself also stops the
                // announcements after a release through another value, or
                // an `ip addr del` by hand. A node must never announce an
                // address it no longer holds: that would pull the clients
                // back from the new owner.
                match address_present(&nl, index, address, prefix_len).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(%vip, error = %e, "gratuitous ARPs stopped");
                        return;
                    }
                }
                if let Err(e) = socket.send(&frame) {
                    tracing::warn!(%vip, error = %e, "gratuitous ARP failed");
                    return;
                }
            }
        });
        if let Some(old) = self.lock_follow_ups().replace(task) {
            old.abort();
        }
        Announce::Sent { follow_ups }
    }

    fn stop_follow_ups(&self) {
        if let Some(task) = self.lock_follow_ups().take() {
            task.abort();
        }
    }

    fn lock_follow_ups(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        // The guarded value is a task handle that no code path can leave
        // half-updated, so a poisoned lock is still good to use.
        self.follow_ups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Display for IpVip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// A netlink connection for one operation. Opened per call rather than
/// kept: the socket lives in the namespace of the thread that opens it,
/// and the connection task is cheap; claims are rare.
struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Netlink {
    fn open() -> Result<Self, VipIpError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(VipIpError::Netlink)?;
        let task = tokio::spawn(connection);
        Ok(Netlink { handle, task })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `address/prefix_len` is on interface `index`.
async fn address_present(
    nl: &Netlink,
    index: u32,
    address: Ipv4Addr,
    prefix_len: u8,
) -> Result<bool, VipIpError> {
    let what = format!("list the addresses of interface {index}");
    let addresses: Vec<AddressMessage> = bounded(
        &what,
        nl.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(address.into())
            .set_prefix_length_filter(prefix_len)
            .execute()
            .try_collect(),
    )
    .await?
    .map_err(|source| VipIpError::Request { what, source })?;
    Ok(!addresses.is_empty())
}

/// Runs a netlink future with [`NETLINK_TIMEOUT`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, VipIpError> {
    tokio::time::timeout(NETLINK_TIMEOUT, fut)
        .await
        .map_err(|_| VipIpError::Timeout {
            what: what.to_string(),
        })
}

/// The errno of a kernel NACK, as a positive number.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// The MAC of an ARP-capable Ethernet interface, `None` otherwise.
fn ethernet_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    if link.header.link_layer_type != LinkLayerType::Ether
        || link.header.flags.contains(LinkFlags::Noarp)
        || link.header.flags.contains(LinkFlags::Loopback)
    {
        return None;
    }
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const BROADCAST: [u8; 6] = [0xff; 6];

/// Length of an ARP frame on Ethernet: 14 bytes of header, 28 of ARP.
pub const GARP_FRAME_LEN: usize = 42;

/// A gratuitous ARP for `ip` from `mac`, as an RFC 5227 ARP announcement:
/// an ARP *request*, broadcast, with sender and target protocol address
/// both `ip` and a zero target hardware address. A request rather than a
/// reply because every host processes a broadcast request, and Linux treats
/// a request with sender IP = target IP as gratuitous and overrides its
/// existing neighbour entry (a reply also works, but only if its target MAC
/// equals its sender MAC; the request form is what keepalived and arping -U
/// send too).
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_FRAME_LEN] {
    let mut f = [0u8; GARP_FRAME_LEN];
    // Ethernet header.
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP: hardware Ethernet, protocol IPv4, 6- and 4-byte addresses.
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[28..32].copy_from_slice(&ip.octets()); // sender protocol address
    // f[32..38]: target hardware address, zero (unknown) per RFC 5227.
    f[38..42].copy_from_slice(&ip.octets()); // target protocol address
    f
}

/// A send-only `AF_PACKET` socket bound by address to one interface.
struct PacketSocket {
    fd: OwnedFd,
    index: u32,
}

impl PacketSocket {
    fn open(index: u32) -> io::Result<Self> {
        // Protocol 0: the socket receives nothing, so no queue fills up
        // while it lives; sending works all the same.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd, index })
    }

    fn send(&self, frame: &[u8; GARP_FRAME_LEN]) -> io::Result<()> {
        let ifindex = i32::try_from(self.index).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range")
        })?;
        let mut sll_addr = [0u8; 8];
        sll_addr[..6].copy_from_slice(&BROADCAST);
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_ARP.to_be(),
            sll_ifindex: ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr,
        };
        // SAFETY: the buffer and the address are valid for the lengths
        // given, and outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short send: {sent} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frame_is_an_rfc5227_announcement() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let ip = Ipv4Addr::new(198, 18, 0, 100);
        let f = garp_frame(mac, ip);
        let expected: [u8; GARP_FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
            0x02, 0, 0, 0, 0, 0x01, // source: our MAC
            0x08, 0x06, // ethertype ARP
            0x00, 0x01, // hardware type Ethernet
            0x08, 0x00, // protocol type IPv4
            6, 4, // address lengths
            0x00, 0x01, // request
            0x02, 0, 0, 0, 0, 0x01, // sender MAC
            198, 18, 0, 100, // sender IP = the VIP
            0, 0, 0, 0, 0, 0, // target MAC: unknown
            198, 18, 0, 100, // target IP = the VIP
        ];
        assert_eq!(f, expected);
    }

    #[test]
    fn parse_accepts_prefix_and_defaults_to_32() {
        let v = IpVip::parse("eth0", "198.18.0.100/24").expect("parse a vip with a prefix");
        assert_eq!(
            (v.interface(), v.address(), v.prefix_len()),
            ("eth0", Ipv4Addr::new(198, 18, 0, 100), 24)
        );
        assert_eq!(v.to_string(), "198.18.0.100/24");
        assert_eq!(
            IpVip::parse("eth0", "198.18.0.100")
                .expect("parse a vip without a prefix")
                .prefix_len(),
            32
        );
    }

    #[test]
    fn parse_refuses_what_cannot_be_announced() {
        for bad in [
            "198.18.0.100/33",
            "198.18.0.100/",
            "198.18.0/24",
            "::1/128",
            "2001:db8::1/64",
            "0.0.0.0/0",
            "127.0.0.1/8",
            "224.0.0.18/32",
            "255.255.255.255",
        ] {
            match IpVip::parse("eth0", bad) {
                Err(VipIpError::InvalidAddress { .. }) => {}
                other => panic!("{bad}: expected InvalidAddress, got {other:?}"),
            }
        }
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        for bad in ["", "a-name-of-16-chr", "eth0:1", "a/b", "a b", ".", ".."] {
            assert!(
                matches!(
                    IpVip::parse(bad, "198.18.0.100/24"),
                    Err(VipIpError::InvalidInterface(_))
                ),
                "{bad:?} accepted"
            );
        }
        assert!(IpVip::parse("veth-n1.100", "198.18.0.100/24").is_ok());
        assert!(IpVip::parse("a-name-of-15-ch", "198.18.0.100/24").is_ok());
    }

    #[test]
    fn default_plan_is_three_frames_within_100ms() {
        let p = GarpPlan::default();
        assert_eq!(p.count, 3);
        assert!(p.spacing * (p.count - 1) <= Duration::from_millis(100));
    }
}
