//! Making a service address local on the standby: `RTM_NEWADDR` / `RTM_DELADDR`
//! over an `AF_NETLINK` / `NETLINK_ROUTE` socket.
//!
//! During takeover the standby adds the service address to one of its interfaces
//! as a host address (`/32` or `/128`), exactly what `ip address add` does, but
//! through netlink directly ([rtnetlink(7)], [`RTM_NEWADDR`]) rather than by
//! running `ip`. The kernel handles the request in `inet_rtm_newaddr()`
//! ([net/ipv4/devinet.c]) and `inet6_rtm_newaddr()` ([net/ipv6/addrconf.c]); the
//! delete in `inet_rtm_deladdr()` and `inet6_rtm_deladdr()` next to them. Once the
//! address is on an interface the kernel owns it: it installs the `local` route,
//! answers ARP / neighbour solicitations for it and delivers segments sent to it.
//!
//! The request is synchronous: a private netlink socket sends one message and
//! reads the kernel's acknowledgement (`NLMSG_ERROR` with code 0) or its error.
//! The socket belongs to the network namespace of the calling thread, so code
//! that joined a namespace with `setns(2)` adds addresses there.
//!
//! # IPv6 and duplicate-address detection
//!
//! An IPv6 address is added with `IFA_F_NODAD`. Without it the kernel first runs
//! duplicate-address detection (RFC 4862 §5.4, `addrconf_dad_begin()` in
//! net/ipv6/addrconf.c), which keeps the address `tentative` for one
//! retransmission timer (about 1 s by default). A tentative address is not usable:
//! `ipv6_chk_addr()` skips it, so `bind()` fails with `EADDRNOTAVAIL`, source
//! selection never picks it, and its `local` route is only installed when DAD
//! completes (`addrconf_dad_completed()` → `ipv6_ifa_notify(RTM_NEWADDR)`), so
//! segments to it are not delivered. During takeover that second would stall every
//! restored connection; the address is known to be ours (the old owner is fenced),
//! so there is nothing for DAD to find. Checked here (kernel 6.18, veth with DAD
//! on): without the flag, `bind()` right after the add fails with
//! `EADDRNOTAVAIL` and `ip address` shows the address `tentative`.
//!
//! ```no_run
//! use connmirror::net::address::LocalAddress;
//!
//! let local = LocalAddress::add("eth0", "198.18.1.2".parse()?)?;
//! // ... serve the address; on failback hand it back:
//! local.remove()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Minimum kernel version
//!
//! `RTM_NEWADDR` is as old as rtnetlink; the `IFA_FLAGS` attribute that carries
//! `IFA_F_NODAD` as a 32-bit value needs Linux 3.14 (the flag is also set in the
//! 8-bit `ifa_flags` header field, which every kernel reads).
//!
//! [rtnetlink(7)]: https://man7.org/linux/man-pages/man7/rtnetlink.7.html
//! [`RTM_NEWADDR`]: https://docs.kernel.org/userspace-api/netlink/intro.html
//! [net/ipv4/devinet.c]: https://github.com/torvalds/linux/blob/master/net/ipv4/devinet.c
//! [net/ipv6/addrconf.c]: https://github.com/torvalds/linux/blob/master/net/ipv6/addrconf.c

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use thiserror::Error;

use crate::sys::errno;

/// Receive buffer for netlink replies. A dump datagram is at most 32 KiB
/// (`netlink_dump()` in net/netlink/af_netlink.c caps its allocation there).
const RECV_BUF: usize = 64 << 10;

/// Why adding or removing an address failed.
#[derive(Debug, Error)]
pub enum AddressError {
    /// No interface of that name in the caller's network namespace.
    #[error("interface {iface:?} does not exist")]
    NoSuchInterface {
        /// The name asked for.
        iface: String,
    },
    /// The netlink socket could not be opened.
    #[error("socket(AF_NETLINK, NETLINK_ROUTE): {error}")]
    Socket {
        /// What `socket`, `bind` or `connect` returned.
        error: io::Error,
    },
    /// The kernel refused a request, or its reply could not be read.
    #[error("netlink {call} {addr}/{prefix} on {iface}: {error}")]
    Netlink {
        /// `RTM_NEWADDR`, `RTM_DELADDR` or `RTM_GETADDR`.
        call: &'static str,
        /// The address.
        addr: IpAddr,
        /// Its prefix length (32 or 128).
        prefix: u8,
        /// The interface.
        iface: String,
        /// The errno the kernel answered with, or what went wrong reading it.
        error: io::Error,
    },
}

/// An address this process added; [`remove`](Self::remove) deletes it again.
///
/// Dropping it leaves the address in place: after a takeover the standby keeps
/// serving the address until it hands it back.
#[derive(Debug)]
#[must_use = "an added address stays until `remove` is called"]
pub struct LocalAddress {
    iface: String,
    index: u32,
    addr: IpAddr,
    added: bool,
}

impl LocalAddress {
    /// Adds `addr` as a host address (`/32` or `/128`) on `iface` (`RTM_NEWADDR`);
    /// IPv6 with `IFA_F_NODAD`, so it is usable at once (see the module docs).
    ///
    /// If `addr` is already on `iface` (with any prefix length), nothing is
    /// changed: the result has [`added`](Self::added) `false` and its
    /// [`remove`](Self::remove) does nothing.
    pub fn add(iface: &str, addr: IpAddr) -> Result<LocalAddress, AddressError> {
        let index = ifindex(iface)?;
        let rtnl = Rtnl::open()?;
        let err = |call, source| netlink_error(call, iface, addr, source);
        let present = rtnl
            .addresses(family(addr))
            .map_err(|e| err("RTM_GETADDR", e))?
            .iter()
            .any(|msg| msg.header.index == index && local_of(msg) == Some(addr));
        let added = !present
            && match rtnl.request(
                RouteNetlinkMessage::NewAddress(message(index, addr)),
                CREATE,
            ) {
                Ok(()) => true,
                // Added by someone else between the dump and the request.
                Err(e) if e.raw_os_error() == Some(errno::EEXIST) => false,
                Err(e) => return Err(err("RTM_NEWADDR", e)),
            };
        Ok(LocalAddress {
            iface: iface.to_owned(),
            index,
            addr,
            added,
        })
    }

    /// Whether [`add`](Self::add) put the address there (`false`: it was already
    /// present).
    pub fn added(&self) -> bool {
        self.added
    }

    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Deletes the address again (`RTM_DELADDR`), if [`add`](Self::add) added it.
    pub fn remove(self) -> Result<(), AddressError> {
        let Self {
            iface,
            index,
            addr,
            added,
        } = self;
        if !added {
            return Ok(());
        }
        Rtnl::open()?
            .request(RouteNetlinkMessage::DelAddress(message(index, addr)), 0)
            .map_err(|e| netlink_error("RTM_DELADDR", &iface, addr, e))
    }
}

/// Deletes `addr` from every interface that has it, whatever its prefix
/// length (`RTM_DELADDR` of each dumped entry), and returns how many entries
/// went: a node that steps down stops serving the address.
pub fn release(addr: IpAddr) -> Result<usize, AddressError> {
    let rtnl = Rtnl::open()?;
    let err = |call, source| netlink_error(call, "any interface", addr, source);
    let found: Vec<AddressMessage> = (rtnl.addresses(family(addr)))
        .map_err(|e| err("RTM_GETADDR", e))?
        .into_iter()
        .filter(|msg| local_of(msg) == Some(addr))
        .collect();
    for msg in &found {
        (rtnl.request(RouteNetlinkMessage::DelAddress(msg.clone()), 0))
            .map_err(|e| err("RTM_DELADDR", e))?;
    }
    Ok(found.len())
}

/// Index of `iface` in the calling thread's network namespace, or
/// [`AddressError::NoSuchInterface`].
pub fn ifindex(iface: &str) -> Result<u32, AddressError> {
    let missing = || AddressError::NoSuchInterface {
        iface: iface.to_owned(),
    };
    crate::sys::interface::index(iface).ok_or_else(missing)
}

/// Flags that make `RTM_NEWADDR` create an address and fail with `EEXIST` if it
/// is already there (what `ip address add` sends).
const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;

/// The host prefix length of `addr`'s family.
pub(crate) fn host_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

pub(crate) fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn netlink_error(call: &'static str, iface: &str, addr: IpAddr, source: io::Error) -> AddressError {
    AddressError::Netlink {
        call,
        addr,
        prefix: host_prefix(addr),
        iface: iface.to_owned(),
        error: source,
    }
}

/// The `ifaddrmsg` and attributes for `addr`/host on interface `index`, as
/// `ip address add ADDR dev IF` builds them: `IFA_LOCAL` and `IFA_ADDRESS` both
/// the address, global scope.
fn message(index: u32, addr: IpAddr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr);
    msg.header.prefix_len = host_prefix(addr);
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    if addr.is_ipv6() {
        // Both places: the kernel prefers IFA_FLAGS when present (3.14+).
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    msg
}

/// The local address of a dumped address message: `IFA_LOCAL` if present (IPv4
/// always, IPv6 with a peer), else `IFA_ADDRESS`.
fn local_of(msg: &AddressMessage) -> Option<IpAddr> {
    let find = |pick: fn(&AddressAttribute) -> Option<IpAddr>| msg.attributes.iter().find_map(pick);
    find(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    })
    .or_else(|| {
        find(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// A `NETLINK_ROUTE` socket connected to the kernel.
pub(crate) struct Rtnl {
    socket: Socket,
}

impl Rtnl {
    pub(crate) fn open() -> Result<Rtnl, AddressError> {
        let socket = (|| {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        })()
        .map_err(|source| AddressError::Socket { error: source })?;
        Ok(Rtnl { socket })
    }

    /// Sends `msg` with `NLM_F_REQUEST | NLM_F_ACK | flags` and waits for the
    /// kernel's acknowledgement; its error code becomes the `io::Error`.
    pub(crate) fn request(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.receive(|_| {})
    }

    /// Every address of `family` in the namespace (`RTM_GETADDR` dump).
    fn addresses(&self, family: AddressFamily) -> io::Result<Vec<AddressMessage>> {
        let mut query = AddressMessage::default();
        query.header.family = family;
        self.send(
            RouteNetlinkMessage::GetAddress(query),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut found = Vec::new();
        self.receive(|msg| {
            if let RouteNetlinkMessage::NewAddress(addr) = msg {
                found.push(addr);
            }
        })?;
        Ok(found)
    }

    fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(())
    }

    /// Reads replies, passing each inner message to `each`, until the kernel's
    /// acknowledgement (`NLMSG_ERROR` with code 0) or the end of a dump
    /// (`NLMSG_DONE`). A non-zero `NLMSG_ERROR` code is returned as the error.
    fn receive(&self, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let len = self.socket.recv(&mut &mut buf[..], 0)?;
            let mut datagram = buf.get(..len).unwrap_or_default();
            while !datagram.is_empty() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(datagram)
                    .map_err(|e| io::Error::other(format!("undecodable reply: {e}")))?;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(inner) => each(inner),
                    _ => {}
                }
                // NLMSG_ALIGN: messages in one datagram start on 4-byte boundaries.
                let step = (msg.header.length as usize).next_multiple_of(4).max(4);
                datagram = datagram.get(step..).unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_named() {
        let err = ifindex("nope0").unwrap_err();
        assert_eq!(err.to_string(), r#"interface "nope0" does not exist"#);
        let err = LocalAddress::add("nope0", "198.18.1.2".parse().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), r#"interface "nope0" does not exist"#);
    }

    #[test]
    fn netlink_error_names_call_address_and_interface() {
        let err = netlink_error(
            "RTM_NEWADDR",
            "lo",
            "198.18.1.2".parse().unwrap(),
            io::Error::from_raw_os_error(crate::sys::errno::EPERM),
        );
        assert_eq!(
            err.to_string(),
            "netlink RTM_NEWADDR 198.18.1.2/32 on lo: Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn v6_message_asks_for_no_dad_and_host_prefix() {
        let addr: IpAddr = "fd00::1:2".parse().unwrap();
        let msg = message(7, addr);
        assert_eq!(msg.header.prefix_len, 128);
        assert_eq!(msg.header.index, 7);
        assert_eq!(msg.header.flags, AddressHeaderFlags::Nodad);
        assert_eq!(
            msg.attributes,
            [
                AddressAttribute::Local(addr),
                AddressAttribute::Address(addr),
                AddressAttribute::Flags(AddressFlags::Nodad),
            ]
        );
        assert_eq!(local_of(&msg), Some(addr));
    }

    #[test]
    fn v4_message_has_no_flags() {
        let addr: IpAddr = "198.18.1.2".parse().unwrap();
        let msg = message(1, addr);
        assert_eq!(msg.header.prefix_len, 32);
        assert_eq!(msg.header.flags, AddressHeaderFlags::empty());
        assert_eq!(
            msg.attributes,
            [
                AddressAttribute::Local(addr),
                AddressAttribute::Address(addr)
            ]
        );
    }
}
