//! Ethernet / 802.1Q / 802.1ad / IPv4 / IPv6 / TCP parsing, shared by the kernel
//! programs and userspace.
//!
//! The parser never touches packet memory directly: it asks a [`Packet`] for
//! fixed-size loads at an offset. In the kernel that is `bpf_xdp_load_bytes` or
//! `bpf_skb_load_bytes`, which check bounds themselves and also reach the
//! non-linear part of a multi-buffer XDP frame or a GSO skb; in userspace it is a
//! slice. Every loop is bounded by a constant so the verifier can follow it.

use crate::{
    counter::Malformed,
    map::{FAMILY_V4, FAMILY_V6},
    record::MAX_OPTIONS,
};

/// Most VLAN tags (802.1Q / 802.1ad) walked before the EtherType.
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers walked before TCP.
pub const MAX_IPV6_EXT: usize = 8;

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// TPID of an 802.1Q tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// TPID of an 802.1ad (QinQ) service tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;

/// Bytes of a frame, readable at any offset in fixed-size pieces.
pub trait Packet {
    /// Total length of the frame, including any non-linear part.
    fn len(&self) -> usize;

    /// Whether the frame has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `N` bytes at `offset`, or `None` when they are not all inside the frame.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Packet for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// What a frame turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A well-formed TCP segment.
    Tcp(Segment),
    /// Not TCP over IP (ARP, UDP, ICMP, unknown EtherType, ...).
    NotTcp,
    /// An IPv4 or IPv6 fragment: no TCP header can be read from it.
    Fragment,
}

/// The fields of a TCP segment that capture needs, with offsets into the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// TCP flags byte.
    pub flags: u8,
    /// Source address (IPv4 in the first 4 bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first 4 bytes).
    pub dst_addr: [u8; 16],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Raw window.
    pub window: u16,
    /// Offset of the TCP options in the frame.
    pub options_offset: usize,
    /// Length of the TCP options (a multiple of 4, at most 40).
    pub options_len: usize,
    /// Offset of the payload in the frame.
    pub payload_offset: usize,
    /// Length of the payload (bounded by the IP length, not the frame: Ethernet
    /// padding is not payload).
    pub payload_len: usize,
}

/// Parses one Ethernet frame.
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(pkt: &P) -> Result<Parsed, Malformed> {
    let (ethertype, l3) = parse_l2(pkt)?;
    let ip = match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(pkt, l3)?,
        ETHERTYPE_IPV6 => parse_ipv6(pkt, l3)?,
        _ => return Ok(Parsed::NotTcp),
    };
    parse_l4(pkt, ip)
}

/// Parses one IP packet with no link-layer header, as netfilter hooks and
/// NFQUEUE see it (on-host `--sync`): the version nibble says which IP.
#[inline(always)]
pub fn parse_ip<P: Packet + ?Sized>(pkt: &P) -> Result<Parsed, Malformed> {
    let [first]: [u8; 1] = pkt.load(0).ok_or(Malformed::TruncatedL3)?;
    let ip = match first >> 4 {
        4 => parse_ipv4(pkt, 0)?,
        6 => parse_ipv6(pkt, 0)?,
        _ => return Err(Malformed::IpVersion),
    };
    parse_l4(pkt, ip)
}

/// The TCP segment of a parsed network layer, if it carries one.
#[inline(always)]
fn parse_l4<P: Packet + ?Sized>(pkt: &P, ip: L3) -> Result<Parsed, Malformed> {
    match ip {
        L3::Tcp(ip) => parse_tcp(pkt, &ip).map(Parsed::Tcp),
        L3::NotTcp => Ok(Parsed::NotTcp),
        L3::Fragment => Ok(Parsed::Fragment),
    }
}

/// Copies a segment's TCP options into `out`, four bytes at a time (the option
/// block is always a multiple of four), and returns how many bytes were copied.
#[inline(always)]
pub fn copy_options<P: Packet + ?Sized>(
    pkt: &P,
    seg: &Segment,
    out: &mut [u8; MAX_OPTIONS],
) -> usize {
    let mut copied = 0;
    for word in 0..MAX_OPTIONS / 4 {
        let at = word * 4;
        if at >= seg.options_len {
            break;
        }
        let Some(bytes) = pkt.load::<4>(seg.options_offset + at) else {
            break;
        };
        if let Some(dst) = out.get_mut(at..at + 4) {
            dst.copy_from_slice(&bytes);
            copied = at + 4;
        }
    }
    copied
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn parse_l2<P: Packet + ?Sized>(pkt: &P) -> Result<(u16, usize), Malformed> {
    let eth: [u8; ETH_HLEN] = pkt.load(0).ok_or(Malformed::TruncatedL2)?;
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        let tag: [u8; 4] = pkt.load(off).ok_or(Malformed::TruncatedL2)?;
        ethertype = be16([tag[2], tag[3]]);
        off += 4;
    }
    Ok((ethertype, off))
}

/// The network-layer result: where TCP starts and where the IP packet ends.
enum L3 {
    Tcp(Ip),
    NotTcp,
    Fragment,
}

struct Ip {
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    l4: usize,
    end: usize,
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(pkt: &P, off: usize) -> Result<L3, Malformed> {
    let h: [u8; 20] = pkt.load(off).ok_or(Malformed::TruncatedL3)?;
    if h[0] >> 4 != 4 {
        return Err(Malformed::IpVersion);
    }
    let ihl = (h[0] & 0x0f) as usize;
    if ihl < 5 {
        return Err(Malformed::Ipv4Ihl);
    }
    let total = be16([h[2], h[3]]) as usize;
    if total < ihl * 4 || off + total > pkt.len() {
        return Err(Malformed::IpLength);
    }
    if be16([h[6], h[7]]) & 0x3fff != 0 {
        return Ok(L3::Fragment);
    }
    if h[9] != IPPROTO_TCP {
        return Ok(L3::NotTcp);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&h[12..16]);
    dst[..4].copy_from_slice(&h[16..20]);
    Ok(L3::Tcp(Ip {
        family: FAMILY_V4,
        src,
        dst,
        l4: off + ihl * 4,
        end: off + total,
    }))
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(pkt: &P, off: usize) -> Result<L3, Malformed> {
    let h: [u8; 40] = pkt.load(off).ok_or(Malformed::TruncatedL3)?;
    if h[0] >> 4 != 6 {
        return Err(Malformed::IpVersion);
    }
    let end = off + 40 + be16([h[4], h[5]]) as usize;
    if end > pkt.len() {
        return Err(Malformed::IpLength);
    }
    let mut next = h[6];
    let mut l4 = off + 40;
    let mut walked = 0;
    loop {
        match next {
            IPPROTO_TCP => break,
            44 => return Ok(L3::Fragment),
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
            0 | 43 | 60 | 135 | 139 | 140 | 51 => {
                if walked == MAX_IPV6_EXT {
                    return Err(Malformed::Ipv6ExtChain);
                }
                let e: [u8; 2] = pkt.load(l4).ok_or(Malformed::Ipv6ExtChain)?;
                // AH counts its length in 4-byte words minus 2, the rest in 8-byte
                // words minus 1.
                let len = if next == 51 {
                    (e[1] as usize + 2) * 4
                } else {
                    (e[1] as usize + 1) * 8
                };
                next = e[0];
                l4 += len;
                if l4 > end {
                    return Err(Malformed::Ipv6ExtChain);
                }
                walked += 1;
            }
            _ => return Ok(L3::NotTcp),
        }
    }
    Ok(L3::Tcp(Ip {
        family: FAMILY_V6,
        src: h[8..24].try_into().unwrap_or([0; 16]),
        dst: h[24..40].try_into().unwrap_or([0; 16]),
        l4,
        end,
    }))
}

#[inline(always)]
fn parse_tcp<P: Packet + ?Sized>(pkt: &P, ip: &Ip) -> Result<Segment, Malformed> {
    if ip.l4 + TCP_HLEN > ip.end {
        return Err(Malformed::TruncatedL4);
    }
    let t: [u8; TCP_HLEN] = pkt.load(ip.l4).ok_or(Malformed::TruncatedL4)?;
    let doff = (t[12] >> 4) as usize * 4;
    if doff < TCP_HLEN {
        return Err(Malformed::TcpDataOffsetShort);
    }
    if ip.l4 + doff > ip.end {
        return Err(Malformed::TcpDataOffsetPastEnd);
    }
    Ok(Segment {
        family: ip.family,
        flags: t[13],
        src_addr: ip.src,
        dst_addr: ip.dst,
        src_port: be16([t[0], t[1]]),
        dst_port: be16([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        window: be16([t[14], t[15]]),
        options_offset: ip.l4 + TCP_HLEN,
        options_len: doff - TCP_HLEN,
        payload_offset: ip.l4 + doff,
        payload_len: ip.end - (ip.l4 + doff),
    })
}

#[cfg(test)]
mod tests;
