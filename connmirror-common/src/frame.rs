//! Ethernet frames carrying one TCP segment, built byte by byte for tests
//! (feature `std`).
//!
//! [`TcpFrame`] lays out Ethernet, any 802.1Q / 802.1ad tags, IPv4 (with
//! options) or IPv6 (with extension headers), and TCP (with options), and fills
//! in every length and checksum the way a kernel would: the IPv4 header
//! checksum ([RFC 791](https://www.rfc-editor.org/rfc/rfc791) §3.1, computed as in
//! [RFC 1071](https://www.rfc-editor.org/rfc/rfc1071)) and the TCP checksum over
//! the pseudo-header ([RFC 9293 §3.1](https://www.rfc-editor.org/rfc/rfc9293#section-3.1)
//! for IPv4, [RFC 8200 §8.1](https://www.rfc-editor.org/rfc/rfc8200#section-8.1)
//! for IPv6). The frames are good enough to inject through an `AF_PACKET` socket
//! into a veth, where the kernel stack accepts them.
//!
//! [`malformed`] builds one frame per [`Malformed`] reason, each of which the
//! [`parse`](crate::parse) module must reject with exactly that reason.
//!
//! ```
//! use connmirror_common::{frame::TcpFrame, parse::{parse, Parsed}};
//!
//! let mut frame = TcpFrame::new("192.0.2.1:40000".parse().unwrap(), "192.0.2.2:80".parse().unwrap());
//! frame.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
//! let bytes = frame.build();
//! let Ok(Parsed::Tcp(seg)) = parse(&bytes[..]) else { panic!("not TCP") };
//! assert_eq!(seg.payload_len, 18);
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    vec,
    vec::Vec,
};

use crate::{
    Malformed,
    parse::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, IPPROTO_TCP, MAX_IPV6_EXT, TCP_HLEN},
    record::tcp_flags,
};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// Most option bytes an IPv4 or TCP header can hold (a 4-bit length in words).
const MAX_HEADER_OPTIONS: usize = 40;

/// One TCP segment in an Ethernet frame, field by field.
///
/// `src` and `dst` should be of the same family; if they are not, `src` decides
/// and `dst` is converted (an IPv4 address becomes IPv4-mapped IPv6, an IPv6
/// address its embedded IPv4 address or `0.0.0.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpFrame {
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// VLAN tags as (TPID 0x8100 or 0x88a8, TCI), outermost first.
    pub vlans: Vec<(u16, u16)>,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// TCP flags byte (see [`tcp_flags`]).
    pub flags: u8,
    /// Raw TCP window.
    pub window: u16,
    /// IPv4 options, padded with zeros (EOL) to a multiple of 4, at most 40 bytes.
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers to insert, by next-header value (e.g. 0, 43, 60), each
    /// 8 bytes long; ignored for IPv4.
    pub ipv6_ext: Vec<u8>,
    /// TCP options, padded with zeros (EOL) to a multiple of 4, at most 40 bytes.
    pub tcp_options: Vec<u8>,
    /// TCP payload.
    pub payload: Vec<u8>,
}

/// The addresses of a frame, in the family it is built in.
#[derive(Clone, Copy)]
enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl TcpFrame {
    /// A bare ACK from `src` to `dst`: locally administered MACs, no tags, no
    /// options, no payload, sequence and acknowledgment numbers 1, window 65535.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            src,
            dst,
            seq: 1,
            ack: 1,
            flags: tcp_flags::ACK,
            window: 65535,
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// The frame's bytes, with every length and checksum filled in and no
    /// Ethernet padding. IP length fields are 16 bits: keep the payload under 64 KiB.
    pub fn build(&self) -> Vec<u8> {
        match self.addrs() {
            Addrs::V4(src, dst) => {
                let tcp = self.tcp(&pseudo_v4(src, dst, self.tcp_len()));
                let mut frame = self.ethernet(ETHERTYPE_IPV4);
                frame.extend(self.ipv4(src, dst, tcp.len()));
                frame.extend(tcp);
                frame
            }
            Addrs::V6(src, dst) => {
                let tcp = self.tcp(&pseudo_v6(src, dst, self.tcp_len(), IPPROTO_TCP));
                let mut frame = self.ethernet(ETHERTYPE_IPV6);
                frame.extend(self.ipv6(src, dst, tcp.len()));
                frame.extend(tcp);
                frame
            }
        }
    }

    /// [`build`](Self::build), then zero-padded to at least `min_len` bytes the way
    /// a NIC pads short frames to 60: the padding is not part of the IP packet.
    pub fn build_padded(&self, min_len: usize) -> Vec<u8> {
        let mut frame = self.build();
        if frame.len() < min_len {
            frame.resize(min_len, 0);
        }
        frame
    }

    /// Offset of the IP header in the built frame.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    /// Offset of the TCP header in the built frame.
    pub fn l4_offset(&self) -> usize {
        self.l3_offset()
            + match self.addrs() {
                Addrs::V4(..) => IPV4_HLEN + padded(&self.ipv4_options).len(),
                Addrs::V6(..) => IPV6_HLEN + 8 * self.ipv6_ext.len(),
            }
    }

    fn addrs(&self) -> Addrs {
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Addrs::V4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => Addrs::V6(s, d),
            (IpAddr::V4(s), IpAddr::V6(d)) => {
                Addrs::V4(s, d.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED))
            }
            (IpAddr::V6(s), IpAddr::V4(d)) => Addrs::V6(s, d.to_ipv6_mapped()),
        }
    }

    fn ethernet(&self, ethertype: u16) -> Vec<u8> {
        let mut frame = Vec::with_capacity(1514);
        frame.extend(self.dst_mac);
        frame.extend(self.src_mac);
        for &(tpid, tci) in &self.vlans {
            frame.extend(tpid.to_be_bytes());
            frame.extend(tci.to_be_bytes());
        }
        frame.extend(ethertype.to_be_bytes());
        frame
    }

    fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr, l4_len: usize) -> Vec<u8> {
        let options = padded(&self.ipv4_options);
        let hlen = IPV4_HLEN + options.len();
        let mut h = Vec::with_capacity(hlen);
        h.push(0x40 | (hlen / 4) as u8);
        h.push(0); // DSCP / ECN
        h.extend(((hlen + l4_len) as u16).to_be_bytes());
        h.extend([0, 0, 0x40, 0]); // identification, flags: DF, fragment offset 0
        h.extend([64, IPPROTO_TCP, 0, 0]); // TTL, protocol, checksum (below)
        h.extend(src.octets());
        h.extend(dst.octets());
        h.extend(options);
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr, l4_len: usize) -> Vec<u8> {
        let ext_len = 8 * self.ipv6_ext.len();
        let mut h = Vec::with_capacity(IPV6_HLEN + ext_len);
        h.extend([0x60, 0, 0, 0]); // version, traffic class, flow label
        h.extend(((ext_len + l4_len) as u16).to_be_bytes());
        h.push(self.ipv6_ext.first().copied().unwrap_or(IPPROTO_TCP));
        h.push(64); // hop limit
        h.extend(src.octets());
        h.extend(dst.octets());
        let mut kinds = self.ipv6_ext.iter().peekable();
        while let Some(&kind) = kinds.next() {
            let next = kinds.peek().map_or(IPPROTO_TCP, |&&k| k);
            h.extend(ipv6_ext_header(kind, next));
        }
        h
    }

    fn tcp_len(&self) -> usize {
        TCP_HLEN + padded(&self.tcp_options).len() + self.payload.len()
    }

    /// The TCP header and payload, checksummed over `pseudo`.
    fn tcp(&self, pseudo: &[u8]) -> Vec<u8> {
        let options = padded(&self.tcp_options);
        let hlen = TCP_HLEN + options.len();
        let mut t = Vec::with_capacity(hlen + self.payload.len());
        t.extend(self.src.port().to_be_bytes());
        t.extend(self.dst.port().to_be_bytes());
        t.extend(self.seq.to_be_bytes());
        t.extend(self.ack.to_be_bytes());
        t.extend([((hlen / 4) as u8) << 4, self.flags]);
        t.extend(self.window.to_be_bytes());
        t.extend([0, 0, 0, 0]); // checksum (below), urgent pointer
        t.extend(options);
        t.extend(&self.payload);
        let sum = checksum(&[pseudo, &t]);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        t
    }
}

/// An 8-byte IPv6 extension header of type `kind` followed by `next`: hop-by-hop
/// and destination options carry one PadN option; the others are zero (a routing
/// header with no segments left, an atomic fragment, an empty AH, ...).
fn ipv6_ext_header(kind: u8, next: u8) -> [u8; 8] {
    // The length byte is 0 for every type: (0 + 1) * 8 bytes, or for AH (51)
    // (0 + 2) * 4 bytes.
    match kind {
        0 | 60 => [next, 0, 1, 4, 0, 0, 0, 0],
        _ => [next, 0, 0, 0, 0, 0, 0, 0],
    }
}

/// `options`, cut to 40 bytes and zero-padded to a multiple of 4.
fn padded(options: &[u8]) -> Vec<u8> {
    let options = &options[..options.len().min(MAX_HEADER_OPTIONS)];
    let mut out = options.to_vec();
    out.resize(options.len().next_multiple_of(4), 0);
    out
}

fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend([0, IPPROTO_TCP]);
    p.extend((tcp_len as u16).to_be_bytes());
    p
}

/// The IPv6 pseudo-header (RFC 8200 §8.1) of an upper-layer message of `len`
/// bytes and protocol `next_header`, for its checksum.
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, len: usize, next_header: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend((len as u32).to_be_bytes());
    p.extend([0, 0, 0, next_header]);
    p
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`; every part
/// but the last must have an even length.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = pair[0];
            let lo = pair.get(1).copied().unwrap_or(0);
            sum += u64::from(u16::from_be_bytes([hi, lo]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame that the parser must reject with `reason`, built from `base` (src/dst/macs).
///
/// Only `base`'s MAC addresses, addresses and ports are used: no tags, options
/// or payload. Reasons that only exist in one family ([`Malformed::Ipv4Ihl`],
/// [`Malformed::Ipv6ExtChain`]) convert the addresses to that family. Every
/// frame has a correct IPv4 header checksum, so the named defect is the only
/// one; each is between 14 and 1514 bytes long.
pub fn malformed(reason: Malformed, base: &TcpFrame) -> Vec<u8> {
    let v6 = matches!(base.addrs(), Addrs::V6(..));
    let plain = plain_family(base, v6);
    let l3 = plain.l3_offset();
    let l4 = plain.l4_offset();
    match reason {
        Malformed::TruncatedL2 => {
            // An 802.1Q tag cut after its TCI: 16 bytes.
            let mut frame = plain.ethernet(ETHERTYPE_VLAN);
            frame.extend([0x00, 0x64]);
            frame
        }
        Malformed::TruncatedL3 => {
            let mut frame = plain.build();
            frame.truncate(l3 + 10);
            frame
        }
        Malformed::Ipv4Ihl => {
            let v4 = plain_family(base, false);
            let mut frame = v4.build();
            frame[l3] = 0x44;
            fix_ipv4_checksum(&mut frame, l3);
            frame
        }
        Malformed::IpLength => {
            let mut frame = plain.build();
            add_to_ip_length(&mut frame, l3, v6, 1);
            frame
        }
        Malformed::Ipv6ExtChain => {
            let mut v6 = plain_family(base, true);
            v6.ipv6_ext = vec![60; MAX_IPV6_EXT + 1];
            v6.build()
        }
        Malformed::TruncatedL4 => {
            // The IP packet ends 10 bytes into the TCP header.
            let mut frame = plain.build();
            let cut = (TCP_HLEN - 10) as i32;
            add_to_ip_length(&mut frame, l3, v6, -cut);
            frame.truncate(l4 + 10);
            frame
        }
        Malformed::TcpDataOffsetShort => {
            let mut frame = plain.build();
            frame[l4 + 12] = 4 << 4;
            frame
        }
        Malformed::TcpDataOffsetPastEnd => {
            // 60 header bytes claimed, 20 present (no options, no payload).
            let mut frame = plain.build();
            frame[l4 + 12] = 15 << 4;
            frame
        }
        Malformed::IpVersion => {
            // The EtherType says one version, the header the other.
            let mut frame = plain.build();
            frame[l3] = if v6 { 0x45 } else { 0x65 };
            frame
        }
    }
}

/// `base`'s MACs and endpoints, converted to IPv6 (`v6`) or IPv4.
fn plain_family(base: &TcpFrame, v6: bool) -> TcpFrame {
    let convert = |addr: SocketAddr| -> SocketAddr {
        let ip = match (addr.ip(), v6) {
            (IpAddr::V4(ip), true) => IpAddr::V6(ip.to_ipv6_mapped()),
            (IpAddr::V6(ip), false) => IpAddr::V4(ip.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            (ip, _) => ip,
        };
        SocketAddr::new(ip, addr.port())
    };
    TcpFrame {
        src_mac: base.src_mac,
        dst_mac: base.dst_mac,
        seq: base.seq,
        ack: base.ack,
        flags: base.flags,
        window: base.window,
        ..TcpFrame::new(convert(base.src), convert(base.dst))
    }
}

/// Adds `delta` to the IPv4 total length or IPv6 payload length at `l3`.
fn add_to_ip_length(frame: &mut [u8], l3: usize, v6: bool, delta: i32) {
    let at = if v6 { l3 + 4 } else { l3 + 2 };
    let len = i32::from(u16::from_be_bytes([frame[at], frame[at + 1]]));
    frame[at..at + 2].copy_from_slice(&((len + delta) as u16).to_be_bytes());
    if !v6 {
        fix_ipv4_checksum(frame, l3);
    }
}

/// Recomputes the checksum of the fixed 20-byte IPv4 header at `l3`.
fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    frame[l3 + 10..l3 + 12].fill(0);
    let sum = checksum(&[&frame[l3..l3 + IPV4_HLEN]]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A bare IPv4 ACK, shared with the parser's tests.
    pub(crate) fn v4() -> TcpFrame {
        TcpFrame::new(
            "198.18.0.1:40312".parse().unwrap(),
            "198.18.1.2:7000".parse().unwrap(),
        )
    }

    /// A bare IPv6 ACK, shared with the parser's tests.
    pub(crate) fn v6() -> TcpFrame {
        TcpFrame::new(
            "[2001:db8::1]:40312".parse().unwrap(),
            "[2001:db8::2]:7000".parse().unwrap(),
        )
    }

    /// The TCP segment and its pseudo-header checksum verify (sum to zero).
    fn tcp_checksum_verifies(frame: &TcpFrame, bytes: &[u8]) -> bool {
        let l4 = frame.l4_offset();
        let tcp = &bytes[l4..];
        let pseudo = match frame.addrs() {
            Addrs::V4(s, d) => pseudo_v4(s, d, tcp.len()),
            Addrs::V6(s, d) => pseudo_v6(s, d, tcp.len(), IPPROTO_TCP),
        };
        checksum(&[&pseudo, tcp]) == 0
    }

    #[test]
    fn ipv4_header_checksum_verifies_with_options() {
        let mut frame = v4();
        frame.ipv4_options = vec![0x94, 0x04, 0, 0, 1]; // router alert, NOP
        let bytes = frame.build();

        assert_eq!(bytes[14], 0x47);
        assert_eq!(checksum(&[&bytes[14..14 + 28]]), 0);
        assert_eq!(frame.l4_offset(), 14 + 28);
    }

    #[test]
    fn tcp_checksum_verifies_over_the_ipv4_pseudo_header() {
        let mut frame = v4();
        frame.tcp_options = vec![2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2];
        frame.payload = b"odd-length payload!".to_vec();
        let bytes = frame.build();

        assert!(tcp_checksum_verifies(&frame, &bytes));
        assert_eq!(bytes[frame.l4_offset() + 12] >> 4, 8);
    }

    #[test]
    fn tcp_checksum_verifies_over_the_ipv6_pseudo_header_with_extensions() {
        let mut frame = v6();
        frame.ipv6_ext = vec![0, 43, 60];
        frame.payload = b"abc".to_vec();
        let bytes = frame.build();

        assert_eq!(bytes[14 + 6], 0);
        assert_eq!(&bytes[54..56], &[43, 0]);
        assert_eq!(&bytes[62..64], &[60, 0]);
        assert_eq!(&bytes[70..72], &[IPPROTO_TCP, 0]);
        assert_eq!(u16::from_be_bytes([bytes[18], bytes[19]]), 24 + 20 + 3);
        assert!(tcp_checksum_verifies(&frame, &bytes));
    }

    #[test]
    fn known_ipv4_frame_has_the_checksums_tcpdump_accepts() {
        // `tcpdump -vv` on this frame: no "bad cksum" for IP, "cksum 0xf154 (correct)".
        let mut frame = v4();
        frame.seq = 0x0102_0304;
        frame.ack = 0x0506_0708;
        frame.flags = tcp_flags::ACK | tcp_flags::PSH;
        frame.payload = b"hi".to_vec();
        let bytes = frame.build();

        assert_eq!(bytes.len(), 56);
        assert_eq!(&bytes[14 + 10..14 + 12], &[0xad, 0xa6]);
        assert_eq!(&bytes[34 + 16..34 + 18], &[0xf1, 0x54]);
    }

    #[test]
    fn known_ipv6_frame_has_the_checksum_tcpdump_accepts() {
        // `tcpdump -vv`: "vlan 5 ... HBH (padn) DSTOPT (padn) ... cksum 0xa910 (correct)".
        let mut frame = v6();
        frame.vlans = vec![(0x8100, 5)];
        frame.ipv6_ext = vec![0, 60];
        frame.payload = b"xyz".to_vec();
        let bytes = frame.build();

        assert_eq!(bytes.len(), 97);
        let l4 = frame.l4_offset();
        assert_eq!(l4, 18 + 40 + 16);
        assert_eq!(&bytes[l4 + 16..l4 + 18], &[0xa9, 0x10]);
    }

    #[test]
    fn vlan_tags_are_written_outermost_first() {
        let mut frame = v4();
        frame.vlans = vec![(0x88a8, 100), (0x8100, 200)];
        let bytes = frame.build();

        assert_eq!(
            &bytes[12..22],
            &[0x88, 0xa8, 0, 100, 0x81, 0x00, 0, 200, 0x08, 0x00]
        );
        assert_eq!(frame.l3_offset(), 22);
    }

    #[test]
    fn options_longer_than_40_bytes_are_cut_and_short_ones_padded() {
        assert_eq!(padded(&[1; 41]).len(), 40);
        assert_eq!(padded(&[1, 1, 1, 3, 3]), vec![1, 1, 1, 3, 3, 0, 0, 0]);
        assert!(padded(&[]).is_empty());
    }

    #[test]
    fn build_padded_pads_short_frames_only() {
        let frame = v4();
        assert_eq!(frame.build().len(), 54);
        assert_eq!(frame.build_padded(60).len(), 60);
        assert_eq!(frame.build_padded(10).len(), 54);
    }

    #[test]
    fn malformed_frames_fit_an_af_packet_injection() {
        for base in [v4(), v6()] {
            for reason in Malformed::ALL {
                let len = malformed(reason, &base).len();
                assert!((14..=1514).contains(&len), "{reason:?}: {len} bytes");
            }
        }
    }
}
