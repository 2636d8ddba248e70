//! A packet watcher for one interface of a namespace: what a capture there would
//! show, reduced to what the failover tests assert on.
//!
//! [`WireWatch`] is an `AF_PACKET` / `SOCK_RAW` socket bound to the interface
//! with protocol `ETH_P_ALL` (see `packet(7)`), read on its own thread until
//! [`WireWatch::stop`]. The kernel hands it a copy of every frame the interface
//! receives (in `__netif_receive_skb_core()`, net/core/dev.c) and every frame it
//! transmits (`dev_queue_xmit_nit()`), tagged with `sll_pkttype`: `PACKET_HOST`
//! for frames addressed to this host, `PACKET_OUTGOING` for frames it sent,
//! `PACKET_BROADCAST` / `PACKET_MULTICAST` for group traffic.
//!
//! What it keeps ([`WireSeen`]): TCP resets in and out (parsed with the shared
//! [`connmirror_common::parse`] parser), gratuitous ARPs and unsolicited
//! neighbour advertisements (the frames `connmirror::net::announce` sends), a frame
//! count, and the socket's drop count (`PACKET_STATISTICS`).
//!
//! # Not losing frames
//!
//! A classic BPF socket filter (`SO_ATTACH_FILTER`, `socket(7)`) keeps every
//! other frame in the kernel: ARP, ICMPv6 and TCP segments with RST set are all
//! the socket is handed, so bulk data on a busy link cannot crowd them out. It
//! is attached just after `bind`, so a few unfiltered frames may slip in first;
//! they are counted in `frames` and otherwise ignored.
//!
//! The socket's receive buffer is raised to [`RCVBUF`] with `SO_RCVBUFFORCE`
//! (root ignores `net.core.rmem_max` that way), so a burst does not overflow it;
//! if one still does, `tp_drops` says how many frames were lost. A frame sent
//! just before [`WireWatch::stop`] may still be in the receiving CPU's backlog,
//! so `stop` keeps reading until the socket has been quiet for one receive
//! timeout ([`RCVTIMEO`]), for at most [`DRAIN_LIMIT`].

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use connmirror::net::announce::{ND_NEIGHBOR_ADVERT, ND_OPT_TARGET_LL_ADDR};
use connmirror::sys::sockopt;
use connmirror_common::map::FAMILY_V4;
use connmirror_common::parse::{ETHERTYPE_IPV6, Parsed, Segment, parse};
use connmirror_common::record::tcp_flags;

use crate::netns::Netns;

/// Receive buffer of the watching socket.
pub const RCVBUF: libc::c_int = 32 << 20;
/// Receive timeout: how often the reader looks at the stop flag, and how long
/// the socket must be quiet before a stop completes.
pub const RCVTIMEO: Duration = Duration::from_millis(50);
/// Longest a stop keeps draining a busy socket.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Largest frame read whole: a GSO/GRO skb of up to 64 KiB plus headers.
const FRAME_BUF: usize = 128 << 10;
/// EtherType of ARP.
const ETHERTYPE_ARP: u16 = 0x0806;
/// The Solicited flag of a Neighbor Advertisement (RFC 4861 §4.4).
const NA_FLAG_SOLICITED: u8 = 0x40;
/// Offset of the ICMPv6 header in an untagged frame with no extension headers.
const ICMPV6_OFFSET: usize = 14 + 40;

/// An `AF_PACKET` / `SOCK_RAW` socket bound to `iface` inside `ns`, receiving
/// `protocol` (host order; 0 for a send-only socket). Panics with the failing
/// call, namespace and interface.
pub fn packet_socket(ns: &Netns, iface: &str, protocol: u16) -> OwnedFd {
    ns.run(|| connmirror::net::announce::packet_socket(iface, protocol))
        .unwrap_or_else(|e| panic!("packet socket in {}: {e}", ns.name()))
}

/// What a [`WireWatch`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WireSeen {
    /// TCP segments with RST set addressed to this host (`PACKET_HOST`), as
    /// (source, destination).
    pub rsts_received: Vec<(SocketAddr, SocketAddr)>,
    /// TCP segments with RST set that this host sent (`PACKET_OUTGOING`), as
    /// (source, destination).
    pub rsts_sent: Vec<(SocketAddr, SocketAddr)>,
    /// Gratuitous ARPs in either direction (ARP with sender IP = target IP), as
    /// (sender IP, sender MAC).
    pub garps: Vec<(Ipv4Addr, [u8; 6])>,
    /// Unsolicited neighbour advertisements in either direction (Solicited
    /// flag clear), as (target, target link-layer address option).
    pub neighbour_adverts: Vec<(Ipv6Addr, [u8; 6])>,
    /// Every frame read (only what the socket filter lets through: ARP,
    /// ICMPv6 and TCP resets, see the module docs).
    pub frames: u64,
    /// Frames the kernel dropped because the socket's buffer was full
    /// (`tp_drops` of `PACKET_STATISTICS`).
    pub dropped: u32,
}

/// A watcher reading one interface on its own thread until stopped.
///
/// Dropping it without [`stop`](Self::stop) (a test that panicked) still ends
/// the thread, which then closes the socket.
#[derive(Debug)]
pub struct WireWatch {
    stop: StopOnDrop,
    reader: JoinHandle<WireSeen>,
    /// `NS/IF`, for messages.
    what: String,
}

impl WireWatch {
    /// Starts watching `iface` inside `ns`. Every frame that crosses the
    /// interface after this returns is seen. Panics naming the failing call.
    pub fn start(ns: &Netns, iface: &str) -> WireWatch {
        let what = format!("{}/{iface}", ns.name());
        let fd = packet_socket(ns, iface, libc::ETH_P_ALL as u16);
        set_option(&fd, SO_RCVBUFFORCE, &RCVBUF, &what);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: RCVTIMEO.as_micros() as libc::suseconds_t,
        };
        set_option(&fd, SO_RCVTIMEO, &timeout, &what);
        let program = FILTER.map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k });
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr().cast_mut(),
        };
        set_option(&fd, SO_ATTACH_FILTER, &fprog, &what);
        forget_unfiltered(&fd, &what);
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let reader = {
            let stop = Arc::clone(&stop.0);
            let what = what.clone();
            thread::Builder::new()
                .name(format!("wire-{iface}"))
                .spawn(move || read_until_stopped(&fd, &stop, &what))
                .expect("spawn wire watcher")
        };
        WireWatch { stop, reader, what }
    }

    /// Stops (after draining what is already queued, see the module docs) and
    /// returns what was seen. Panics if the reader failed.
    pub fn stop(self) -> WireSeen {
        let Self { stop, reader, what } = self;
        drop(stop);
        match reader.join() {
            Ok(seen) => seen,
            Err(payload) => {
                eprintln!("wire watcher on {what} panicked");
                std::panic::resume_unwind(payload)
            }
        }
    }
}

/// Tells the reader thread to stop when dropped.
#[derive(Debug)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The reader thread: records every frame until the stop flag is set and the
/// socket has then been quiet for one timeout (or [`DRAIN_LIMIT`] passed).
fn read_until_stopped(fd: &OwnedFd, stop: &AtomicBool, what: &str) -> WireSeen {
    let mut seen = WireSeen::default();
    let mut buf = vec![0u8; FRAME_BUF];
    let mut stop_seen_at: Option<Instant> = None;
    loop {
        if stop_seen_at.is_none() && stop.load(Ordering::Relaxed) {
            stop_seen_at = Some(Instant::now());
        }
        if stop_seen_at.is_some_and(|t| t.elapsed() >= DRAIN_LIMIT) {
            break;
        }
        match receive(fd, &mut buf) {
            Ok((len, pkttype)) => seen.record(&buf[..len], pkttype),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {
                if stop_seen_at.is_some() {
                    break;
                }
            }
            Err(e) => panic!("recvfrom(AF_PACKET) on {what}: {e}"),
        }
    }
    seen.dropped = statistics(fd, what).tp_drops;
    seen
}

/// A classic BPF socket filter (`socket(7)` SO_ATTACH_FILTER) that keeps
/// only what the watcher looks for: ARP, ICMPv6, and TCP segments with RST set
/// (IPv4 with any header length; IPv6 without extension headers). Everything
/// else stays in the kernel: with 1,000 streams crossing the link, copying
/// every data frame out would overflow the socket and hide what matters.
const FILTER: [(u16, u8, u8, u32); 16] = [
    (0x28, 0, 0, 12),      // 0: ldh [12]            EtherType
    (0x15, 12, 0, 0x0806), // 1: jeq ARP → accept
    (0x15, 0, 5, 0x0800),  // 2: jeq IPv4, else → 8
    (0x30, 0, 0, 23),      // 3: ldb [23]            IPv4 protocol
    (0x15, 0, 10, 6),      // 4: jeq TCP, else → reject
    (0xb1, 0, 0, 14),      // 5: ldxb 4*([14]&0xf)   IPv4 header length
    (0x50, 0, 0, 27),      // 6: ldb [x+27]          TCP flags
    (0x45, 6, 7, 0x04),    // 7: jset RST → accept, else → reject
    (0x15, 0, 6, 0x86dd),  // 8: jeq IPv6, else → reject
    (0x30, 0, 0, 20),      // 9: ldb [20]            next header
    (0x15, 3, 0, 58),      // 10: jeq ICMPv6 → accept
    (0x15, 0, 3, 6),       // 11: jeq TCP, else → reject
    (0x30, 0, 0, 67),      // 12: ldb [67]           TCP flags
    (0x45, 0, 1, 0x04),    // 13: jset RST → accept, else → reject
    (0x06, 0, 0, 0x40000), // 14: accept (up to 256 KiB)
    (0x06, 0, 0, 0),       // 15: reject
];

/// Drops what the socket queued before its filter was attached, and zeroes
/// its drop counter (reading `PACKET_STATISTICS` resets it, packet(7)): on a
/// busy link the unfiltered frames of those first microseconds can overflow
/// the queue, and those drops say nothing about what the watch sees.
fn forget_unfiltered(fd: &OwnedFd, what: &str) {
    let mut buf = vec![0u8; 64];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            break;
        }
    }
    statistics(fd, what);
}

/// Reads one frame (cut to `buf`'s length) and its `sll_pkttype`.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `from` are valid for the lengths passed.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&raw mut from).cast(),
            &mut from_len,
        )
    };
    let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    Ok((len, from.sll_pkttype))
}

impl WireSeen {
    /// Counts one frame and records it if it is a RST, a GARP or an NA.
    fn record(&mut self, frame: &[u8], pkttype: u8) {
        self.frames += 1;
        if let Ok(Parsed::Tcp(seg)) = parse(frame) {
            if seg.flags & tcp_flags::RST != 0 {
                let pair = socket_addrs(&seg);
                match pkttype {
                    libc::PACKET_HOST => self.rsts_received.push(pair),
                    libc::PACKET_OUTGOING => self.rsts_sent.push(pair),
                    _ => {}
                }
            }
        } else if let Some(garp) = gratuitous_arp(frame) {
            self.garps.push(garp);
        } else if let Some(na) = unsolicited_na(frame) {
            self.neighbour_adverts.push(na);
        }
    }
}

/// (source, destination) of a parsed segment.
fn socket_addrs(seg: &Segment) -> (SocketAddr, SocketAddr) {
    let ip = |bytes: [u8; 16]| -> IpAddr {
        if seg.family == FAMILY_V4 {
            Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
        } else {
            Ipv6Addr::from(bytes).into()
        }
    };
    (
        SocketAddr::new(ip(seg.src_addr), seg.src_port),
        SocketAddr::new(ip(seg.dst_addr), seg.dst_port),
    )
}

/// (sender IP, sender MAC) of an untagged Ethernet/IPv4 ARP request or reply
/// whose sender and target IP are the same (RFC 5227 §3).
fn gratuitous_arp(frame: &[u8]) -> Option<(Ipv4Addr, [u8; 6])> {
    let arp = frame.get(14..42)?;
    if ethertype(frame)? != ETHERTYPE_ARP || arp[..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let sender_mac: [u8; 6] = arp[8..14].try_into().ok()?;
    let sender_ip: [u8; 4] = arp[14..18].try_into().ok()?;
    let target_ip: [u8; 4] = arp[24..28].try_into().ok()?;
    (sender_ip == target_ip).then_some((sender_ip.into(), sender_mac))
}

/// (target, target link-layer address) of an untagged IPv6 Neighbor
/// Advertisement with no extension headers, the Solicited flag clear and a
/// target link-layer address option (RFC 4861 §4.4).
fn unsolicited_na(frame: &[u8]) -> Option<(Ipv6Addr, [u8; 6])> {
    if ethertype(frame)? != ETHERTYPE_IPV6 || *frame.get(20)? != 58 {
        return None;
    }
    let na = frame.get(ICMPV6_OFFSET..)?;
    if *na.first()? != ND_NEIGHBOR_ADVERT || na.get(4)? & NA_FLAG_SOLICITED != 0 {
        return None;
    }
    let target: [u8; 16] = na.get(8..24)?.try_into().ok()?;
    Some((target.into(), target_ll_addr(na.get(24..)?)?))
}

/// The first target link-layer address option among ND `options`.
fn target_ll_addr(mut options: &[u8]) -> Option<[u8; 6]> {
    loop {
        let (kind, len) = (*options.first()?, usize::from(*options.get(1)?) * 8);
        if len == 0 {
            return None;
        }
        if kind == ND_OPT_TARGET_LL_ADDR && len == 8 {
            return options.get(2..8)?.try_into().ok();
        }
        options = options.get(len..)?;
    }
}

/// The EtherType of an untagged frame.
fn ethertype(frame: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?))
}

/// A socket option: level, name, and the name for messages.
type Opt = (libc::c_int, libc::c_int, &'static str);
const SO_RCVBUFFORCE: Opt = (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE");
const SO_RCVTIMEO: Opt = (libc::SOL_SOCKET, libc::SO_RCVTIMEO, "SO_RCVTIMEO");
const SO_ATTACH_FILTER: Opt = (libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, "SO_ATTACH_FILTER");

/// `setsockopt(level, name, value)`; panics naming the option and `what`.
/// `T` is one of the plain-old-data types these options read (an int, a
/// `timeval`, a `sock_fprog`).
fn set_option<T>(fd: &OwnedFd, (level, name, call): Opt, value: &T, what: &str) {
    // SAFETY: the callers pass the type each option reads.
    unsafe { sockopt::set_raw(fd.as_fd(), level, name, value) }
        .unwrap_or_else(|e| panic!("setsockopt({call}) on {what}: {e}"));
}

/// `getsockopt(SOL_PACKET, PACKET_STATISTICS)`: frames queued and dropped since
/// the last call (reading resets them).
fn statistics(fd: &OwnedFd, what: &str) -> libc::tpacket_stats {
    // SAFETY: tpacket_stats is plain old data; all-zero is a valid value.
    let mut stats: libc::tpacket_stats = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `stats` is valid for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &mut len,
        )
    };
    assert!(
        rc == 0,
        "getsockopt(PACKET_STATISTICS) on {what}: {}",
        io::Error::last_os_error()
    );
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use connmirror::net::announce::frame;
    use connmirror_common::frame::TcpFrame;

    const MAC: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn announce_frames_are_recognised() {
        let mut seen = WireSeen::default();
        seen.record(
            &frame(MAC, "198.18.1.2".parse().unwrap()),
            libc::PACKET_BROADCAST,
        );
        seen.record(
            &frame(MAC, "fd00::1:2".parse().unwrap()),
            libc::PACKET_MULTICAST,
        );
        assert_eq!(
            seen,
            WireSeen {
                garps: vec![("198.18.1.2".parse().unwrap(), MAC)],
                neighbour_adverts: vec![("fd00::1:2".parse().unwrap(), MAC)],
                frames: 2,
                ..WireSeen::default()
            }
        );
    }

    #[test]
    fn rsts_are_sorted_by_direction_and_other_segments_ignored() {
        let src: SocketAddr = "198.18.1.2:7000".parse().unwrap();
        let dst: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let mut rst = TcpFrame::new(src, dst);
        rst.flags = tcp_flags::RST | tcp_flags::ACK;
        let rst = rst.build();
        let ack = TcpFrame::new(src, dst).build();
        let mut seen = WireSeen::default();
        seen.record(&rst, libc::PACKET_HOST);
        seen.record(&rst, libc::PACKET_OUTGOING);
        seen.record(&ack, libc::PACKET_HOST);
        assert_eq!(
            seen,
            WireSeen {
                rsts_received: vec![(src, dst)],
                rsts_sent: vec![(src, dst)],
                frames: 3,
                ..WireSeen::default()
            }
        );
    }

    #[test]
    fn solicited_adverts_and_plain_arp_are_not_counted() {
        let mut na = frame(MAC, "fd00::1:2".parse().unwrap());
        na[ICMPV6_OFFSET + 4] |= NA_FLAG_SOLICITED;
        let mut arp = frame(MAC, "198.18.1.2".parse().unwrap());
        arp[41] = 1; // target IP 198.18.1.1: an ordinary request
        let mut seen = WireSeen::default();
        seen.record(&na, libc::PACKET_HOST);
        seen.record(&arp, libc::PACKET_BROADCAST);
        assert_eq!(
            seen,
            WireSeen {
                frames: 2,
                ..WireSeen::default()
            }
        );
    }
}
