//! Telling an L2 segment that an address has moved: gratuitous ARP (IPv4) and
//! unsolicited neighbour advertisements (IPv6).
//!
//! After a takeover the clients' ARP caches and neighbour caches (and the
//! switches' forwarding tables) still point the service address at the dead
//! primary's MAC address. One broadcast frame from the standby fixes that:
//!
//! - IPv4: an ARP Announcement ([RFC 5227 §3]): an ARP request whose sender and
//!   target protocol addresses are both the service address, sent from the
//!   standby's MAC to `ff:ff:ff:ff:ff:ff`. A Linux receiver updates an existing
//!   entry for the sender address in `arp_process()` ([net/ipv4/arp.c]).
//! - IPv6: an unsolicited Neighbor Advertisement ([RFC 4861 §7.2.6]) to the
//!   all-nodes group `ff02::1`, hop limit 255, Override set and Solicited
//!   clear, with the target link-layer address option. A Linux receiver updates
//!   an existing entry in `ndisc_recv_na()` ([net/ipv6/ndisc.c]).
//!
//! The frames are built here byte for byte ([`frame`]) and sent through an
//! `AF_PACKET` / `SOCK_RAW` socket bound to the interface ([packet(7)]), so the
//! address need not be configured yet and no neighbour lookup or route is
//! involved. [`packet_socket`] is that socket; the test fixtures use it too.
//!
//! RFC 5227 §2.3 suggests two announcements two seconds apart; [`announce`] sends
//! one and leaves repetition to the caller.
//!
//! ```no_run
//! use connmirror::net::announce::announce;
//!
//! announce("eth0", "198.18.1.2".parse()?)?;
//! announce("eth0", "fd00::1:2".parse()?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Minimum kernel version
//!
//! `AF_PACKET` raw sockets and `SIOCGIFHWADDR` predate every kernel connmirror
//! supports; sending needs `CAP_NET_RAW`.
//!
//! [RFC 5227 §3]: https://www.rfc-editor.org/rfc/rfc5227#section-3
//! [RFC 4861 §7.2.6]: https://www.rfc-editor.org/rfc/rfc4861#section-7.2.6
//! [net/ipv4/arp.c]: https://github.com/torvalds/linux/blob/master/net/ipv4/arp.c
//! [net/ipv6/ndisc.c]: https://github.com/torvalds/linux/blob/master/net/ipv6/ndisc.c
//! [packet(7)]: https://man7.org/linux/man-pages/man7/packet.7.html

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd as _, OwnedFd};

use connmirror_common::frame::{checksum, pseudo_v6};
use thiserror::Error;

use crate::net::address::{AddressError, ifindex};
use crate::sys::{errno, interface, packet, socket};

/// EtherType of ARP.
const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Ethernet broadcast.
const BROADCAST: [u8; 6] = [0xff; 6];
/// The all-nodes multicast address `ff02::1`.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Ethernet address of `ff02::1`: `33:33` and the group's low 32 bits (RFC 2464 §7).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// IP protocol number of ICMPv6.
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 type of a Neighbor Advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// The Override flag of a Neighbor Advertisement (RFC 4861 §4.4).
pub const NA_FLAG_OVERRIDE: u8 = 0x20;
/// ND option type of a target link-layer address (RFC 4861 §4.6.1).
pub const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// Ethernet frames shorter than this (without FCS) are padded on the wire.
const ETH_ZLEN: usize = 60;

/// Why an announcement could not be sent.
#[derive(Debug, Error)]
pub enum AnnounceError {
    /// The interface does not exist.
    #[error(transparent)]
    Interface(#[from] AddressError),
    /// A system call failed.
    #[error("{call} on {iface}: {error}")]
    Syscall {
        /// The call, e.g. `ioctl(SIOCGIFHWADDR)`.
        call: &'static str,
        /// The interface.
        iface: String,
        /// What it returned.
        error: io::Error,
    },
    /// The interface has no Ethernet address (loopback, tunnels, ...).
    #[error("{iface} is not an Ethernet interface (ARPHRD {hw_type})")]
    NotEthernet {
        /// The interface.
        iface: String,
        /// Its `ARPHRD_*` hardware type.
        hw_type: u16,
    },
}

/// Sends one gratuitous ARP (IPv4) or one unsolicited neighbour advertisement
/// (IPv6) for `addr` on `iface`, from `iface`'s MAC address (see [`frame`]).
///
/// Fails with `ENOBUFS` if the device's queue is full; the caller may retry.
pub fn announce(iface: &str, addr: IpAddr) -> Result<(), AnnounceError> {
    let bytes = frame(mac_address(iface)?, addr);
    let socket = packet_socket(iface, 0)?;
    match socket::send(socket.as_fd(), &bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => Err(syscall_error(
            "send(AF_PACKET)",
            iface,
            io::Error::other(format!("{n} of {} bytes sent", bytes.len())),
        )),
        Err(err) => Err(syscall_error("send(AF_PACKET)", iface, err.io_error)),
    }
}

/// The frame [`announce`] sends for `addr` from `mac`.
///
/// IPv4: an ARP Announcement, padded to 60 bytes: `ff:ff:ff:ff:ff:ff` ← `mac`,
/// ARP request (Ethernet/IPv4), sender = (`mac`, `addr`), target = (zero,
/// `addr`). IPv6: 86 bytes, `33:33:00:00:00:01` ← `mac`, IPv6 `addr` →
/// `ff02::1` hop limit 255, ICMPv6 Neighbor Advertisement with only Override
/// set, target `addr`, target link-layer address option `mac`, checksummed over
/// the IPv6 pseudo-header.
pub fn frame(mac: [u8; 6], addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(addr) => garp(mac, addr),
        IpAddr::V6(addr) => unsolicited_na(mac, addr),
    }
}

/// The MAC address of `iface` in the calling thread's network namespace
/// (`ioctl(SIOCGIFHWADDR)`).
///
/// Not `/sys/class/net/IF/address`: a thread that joined a namespace with
/// `setns(2)` still sees the `/sys` mounted for its original namespace, while an
/// ioctl acts on the namespace of the socket it is issued on.
pub fn mac_address(iface: &str) -> Result<[u8; 6], AnnounceError> {
    let hw = interface::hardware_address(iface).map_err(|err| match err.raw_os_error() {
        Some(errno::ENODEV) => AddressError::NoSuchInterface {
            iface: iface.to_owned(),
        }
        .into(),
        _ => syscall_error(err.call, iface, err.io_error),
    })?;
    if hw.kind != interface::ARPHRD_ETHER {
        return Err(AnnounceError::NotEthernet {
            iface: iface.to_owned(),
            hw_type: hw.kind,
        });
    }
    Ok(hw.bytes)
}

/// An `AF_PACKET` / `SOCK_RAW` socket bound to `iface` in the calling thread's
/// network namespace ([packet(7)]).
///
/// `protocol` is the EtherType to receive in host order: 0 receives nothing
/// (a send-only socket), `ETH_P_ALL` (3) every frame in and out of `iface`. The
/// socket is created with protocol 0 and only hooked into receive by `bind`, so
/// it never sees a frame from another interface.
///
/// [packet(7)]: https://man7.org/linux/man-pages/man7/packet.7.html
pub fn packet_socket(iface: &str, protocol: u16) -> Result<OwnedFd, AnnounceError> {
    let ifindex = ifindex(iface)?;
    packet::bound_socket(ifindex, protocol).map_err(|e| syscall_error(e.call, iface, e.io_error))
}

fn syscall_error(call: &'static str, iface: &str, source: io::Error) -> AnnounceError {
    AnnounceError::Syscall {
        call,
        iface: iface.to_owned(),
        error: source,
    }
}

/// Ethernet header: `dst` ← `src`, `ethertype`.
fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_ZLEN + 32);
    frame.extend(dst);
    frame.extend(src);
    frame.extend(ethertype.to_be_bytes());
    frame
}

/// RFC 5227 §3 ARP Announcement, padded to the Ethernet minimum.
fn garp(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(BROADCAST, mac, ETHERTYPE_ARP);
    frame.extend([0, 1]); // hardware type: Ethernet
    frame.extend(0x0800u16.to_be_bytes()); // protocol type: IPv4
    frame.extend([6, 4]); // address lengths
    frame.extend([0, 1]); // operation: request
    frame.extend(mac);
    frame.extend(addr.octets());
    frame.extend([0; 6]); // target hardware address: ignored, zero (RFC 5227 §2.1.1)
    frame.extend(addr.octets());
    frame.resize(ETH_ZLEN, 0);
    frame
}

/// RFC 4861 §7.2.6 unsolicited Neighbor Advertisement to all nodes.
fn unsolicited_na(mac: [u8; 6], addr: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend([ND_NEIGHBOR_ADVERT, 0, 0, 0]); // type, code, checksum (below)
    icmp.extend([NA_FLAG_OVERRIDE, 0, 0, 0]); // R = 0, S = 0, O = 1, reserved
    icmp.extend(addr.octets());
    icmp.extend([ND_OPT_TARGET_LL_ADDR, 1]); // length in units of 8 bytes
    icmp.extend(mac);
    let pseudo = pseudo_v6(addr, ALL_NODES, icmp.len(), IPPROTO_ICMPV6);
    let sum = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut frame = ethernet(ALL_NODES_MAC, mac, ETHERTYPE_IPV6);
    frame.extend([0x60, 0, 0, 0]); // version, traffic class, flow label
    frame.extend((icmp.len() as u16).to_be_bytes());
    // Hop limit 255: receivers drop ND messages with any other (RFC 4861 §7.1.2).
    frame.extend([IPPROTO_ICMPV6, 255]);
    frame.extend(addr.octets());
    frame.extend(ALL_NODES.octets());
    frame.extend(icmp);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn garp_frame_is_an_rfc5227_announcement() {
        let bytes = frame(MAC, "198.18.1.2".parse().unwrap());
        #[rustfmt::skip]
        let expected: [u8; 60] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // source
            0x08, 0x06,                         // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet / IPv4
            0x00, 0x01,                         // request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // sender MAC
            198, 18, 1, 2,                      // sender IP
            0, 0, 0, 0, 0, 0,                   // target MAC
            198, 18, 1, 2,                      // target IP
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // padding
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn na_frame_is_an_unsolicited_override_advert() {
        let bytes = frame(MAC, "fd00::1:2".parse().unwrap());
        #[rustfmt::skip]
        let expected: [u8; 86] = [
            0x33, 0x33, 0x00, 0x00, 0x00, 0x01, // destination: ff02::1
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // source
            0x86, 0xdd,                         // IPv6
            0x60, 0, 0, 0, 0, 32, 58, 255,      // payload 32, ICMPv6, hop limit 255
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0x02, // source fd00::1:2
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // ff02::1
            136, 0, 0xdc, 0x57,                 // NA, code 0, checksum (computed with Python)
            0x20, 0, 0, 0,                      // Override only
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0x02, // target
            2, 1, 0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // target link-layer address
        ];
        assert_eq!(bytes, expected);
    }

    /// The checksum again, by the receiver's rule (RFC 1071 §1): summing the
    /// pseudo-header and the message with its checksum in place gives 0xffff.
    #[test]
    fn na_checksum_verifies_as_a_receiver_would() {
        let addr: Ipv6Addr = "fd00::1:2".parse().unwrap();
        let bytes = frame(MAC, IpAddr::V6(addr));
        let icmp = &bytes[54..];
        let mut covered = Vec::new();
        covered.extend(addr.octets());
        covered.extend(ALL_NODES.octets());
        covered.extend((icmp.len() as u32).to_be_bytes());
        covered.extend([0, 0, 0, 58]);
        covered.extend(icmp);
        let mut sum: u64 = 0;
        for word in covered.chunks_exact(4) {
            sum += u64::from(u32::from_be_bytes(word.try_into().unwrap()));
        }
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn missing_interface_is_named() {
        let err = mac_address("nope0").unwrap_err();
        assert_eq!(err.to_string(), r#"interface "nope0" does not exist"#);
        let err = announce("nope0", "198.18.1.2".parse().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), r#"interface "nope0" does not exist"#);
    }

    #[test]
    fn loopback_has_no_ethernet_address() {
        let err = mac_address("lo").unwrap_err();
        assert_eq!(
            err.to_string(),
            "lo is not an Ethernet interface (ARPHRD 772)"
        );
    }
}
