//! Tests of the frame parser, over frames from [`crate::frame`].

use std::{net::SocketAddr, vec, vec::Vec};

use proptest::{collection::vec as pvec, prelude::*};

use super::*;
use crate::{
    frame::{TcpFrame, malformed},
    record::tcp_flags,
};

use crate::frame::tests::{v4, v6};

fn segment(bytes: &[u8]) -> Segment {
    match parse(bytes) {
        Ok(Parsed::Tcp(seg)) => seg,
        other => panic!("expected a TCP segment, got {other:?}"),
    }
}

fn addr16(addr: SocketAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match addr {
        SocketAddr::V4(a) => out[..4].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out = a.ip().octets(),
    }
    out
}

#[test]
fn ipv4_segment_parses_to_its_fields_and_offsets() {
    let mut frame = v4();
    frame.seq = 0xdead_beef;
    frame.ack = 0x0102_0304;
    frame.flags = tcp_flags::ACK | tcp_flags::PSH;
    frame.window = 512;
    frame.payload = b"hello".to_vec();
    let bytes = frame.build();

    assert_eq!(
        segment(&bytes),
        Segment {
            family: FAMILY_V4,
            flags: tcp_flags::ACK | tcp_flags::PSH,
            src_addr: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 40312,
            dst_port: 7000,
            seq: 0xdead_beef,
            ack: 0x0102_0304,
            window: 512,
            options_offset: 54,
            options_len: 0,
            payload_offset: 54,
            payload_len: 5,
        }
    );
}

#[test]
fn ipv6_segment_parses_to_its_fields_and_offsets() {
    let mut frame = v6();
    frame.flags = tcp_flags::SYN;
    frame.payload = b"hi".to_vec();
    let bytes = frame.build();

    let seg = segment(&bytes);

    assert_eq!(seg.family, FAMILY_V6);
    assert_eq!(seg.flags, tcp_flags::SYN);
    assert_eq!(seg.src_addr, addr16(frame.src));
    assert_eq!(seg.dst_addr, addr16(frame.dst));
    assert_eq!((seg.src_port, seg.dst_port), (40312, 7000));
    assert_eq!(seg.options_offset, 14 + 40 + 20);
    assert_eq!((seg.payload_offset, seg.payload_len), (74, 2));
}

#[test]
fn an_ip_packet_without_ethernet_parses_with_offsets_from_the_ip_header() {
    for frame in [v4(), v6()] {
        let mut frame = frame;
        frame.payload = b"hello".to_vec();
        let bytes = frame.build();
        let with_l2 = segment(&bytes);

        let Ok(Parsed::Tcp(seg)) = parse_ip(&bytes[ETH_HLEN..]) else {
            panic!("expected a TCP segment");
        };

        assert_eq!(seg.seq, with_l2.seq);
        assert_eq!(seg.src_addr, with_l2.src_addr);
        assert_eq!(seg.payload_offset, with_l2.payload_offset - ETH_HLEN);
        assert_eq!(seg.payload_len, 5);
    }
    assert_eq!(parse_ip(&[0x50u8; 40][..]), Err(Malformed::IpVersion));
    assert_eq!(parse_ip(&[][..]), Err(Malformed::TruncatedL3));
}

#[test]
fn ipv4_options_move_the_tcp_header() {
    let mut frame = v4();
    frame.ipv4_options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert, NOPs, EOL
    frame.payload = b"x".to_vec();
    let bytes = frame.build();

    let seg = segment(&bytes);

    assert_eq!(seg.options_offset, 14 + 28 + 20);
    assert_eq!((seg.payload_offset, seg.payload_len), (14 + 28 + 20, 1));
    assert_eq!(seg.seq, frame.seq);
}

#[test]
fn one_8021q_tag_is_walked() {
    let mut frame = v4();
    frame.vlans = vec![(0x8100, 42)];
    let bytes = frame.build();

    let seg = segment(&bytes);

    assert_eq!(seg.options_offset, 18 + 20 + 20);
    assert_eq!(seg.src_port, 40312);
}

#[test]
fn two_tags_8021ad_then_8021q_are_walked() {
    let mut frame = v6();
    frame.vlans = vec![(0x88a8, 100), (0x8100, 200)];
    frame.payload = b"qinq".to_vec();
    let bytes = frame.build();

    let seg = segment(&bytes);

    assert_eq!(seg.payload_offset, 22 + 40 + 20);
    assert_eq!(seg.payload_len, 4);
}

#[test]
fn a_third_tag_is_not_walked_and_the_frame_is_not_tcp() {
    let mut frame = v4();
    frame.vlans = vec![(0x88a8, 1), (0x8100, 2), (0x8100, 3)];

    assert_eq!(parse(&frame.build()[..]), Ok(Parsed::NotTcp));
}

#[test]
fn ipv6_with_eight_extension_headers_parses() {
    let mut frame = v6();
    frame.ipv6_ext = vec![0, 43, 60, 51, 135, 139, 140, 60];
    frame.payload = b"deep".to_vec();
    let bytes = frame.build();

    let seg = segment(&bytes);

    assert_eq!(seg.options_offset, 14 + 40 + 64 + 20);
    assert_eq!(seg.payload_len, 4);
}

#[test]
fn ipv6_with_nine_extension_headers_is_rejected() {
    let mut frame = v6();
    frame.ipv6_ext = vec![60; MAX_IPV6_EXT + 1];

    assert_eq!(parse(&frame.build()[..]), Err(Malformed::Ipv6ExtChain));
}

#[test]
fn ipv6_extension_header_past_the_ip_length_is_rejected() {
    let mut frame = v6();
    frame.ipv6_ext = vec![60];
    let mut bytes = frame.build();
    bytes[18..20].copy_from_slice(&4u16.to_be_bytes()); // payload length 4 < 8
    bytes.truncate(14 + 40 + 4);

    assert_eq!(parse(&bytes[..]), Err(Malformed::Ipv6ExtChain));
}

#[test]
fn tcp_options_are_copied_exactly() {
    let options = [
        2, 4, 0x05, 0xb4, // MSS 1460
        4, 2, // SACK permitted
        8, 10, 1, 2, 3, 4, 5, 6, 7, 8, // timestamps
        1, // NOP
        3, 3, 7, // window scale 7
    ];
    let mut frame = v4();
    frame.tcp_options = options.to_vec();
    frame.payload = b"after options".to_vec();
    let bytes = frame.build();
    let seg = segment(&bytes);
    let mut out = [0xaa; MAX_OPTIONS];

    let copied = copy_options(&bytes[..], &seg, &mut out);

    assert_eq!(copied, 20);
    assert_eq!(&out[..20], &options);
    assert_eq!(&out[20..], &[0xaa; MAX_OPTIONS - 20]);
    assert_eq!(seg.payload_len, 13);
}

#[test]
fn forty_bytes_of_tcp_options_are_copied_in_full() {
    let options: Vec<u8> = (1..=40).collect();
    let mut frame = v6();
    frame.tcp_options = options.clone();
    let bytes = frame.build();
    let seg = segment(&bytes);
    let mut out = [0; MAX_OPTIONS];

    assert_eq!(copy_options(&bytes[..], &seg, &mut out), 40);
    assert_eq!(&out[..], &options[..]);
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut frame = v4();
    frame.payload = b"ok".to_vec();
    let bytes = frame.build_padded(60);
    assert_eq!(bytes.len(), 60);

    assert_eq!(segment(&bytes).payload_len, 2);
}

#[test]
fn every_malformed_frame_is_rejected_with_exactly_its_reason() {
    for base in [v4(), v6()] {
        for reason in Malformed::ALL {
            let bytes = malformed(reason, &base);

            assert_eq!(
                parse(&bytes[..]),
                Err(reason),
                "{reason:?} from {}",
                base.src
            );
        }
    }
}

#[test]
fn frames_shorter_than_an_ethernet_header_are_truncated_l2() {
    assert_eq!(parse(&[0u8; 12][..]), Err(Malformed::TruncatedL2));
    assert_eq!(parse(&[0u8; 0][..]), Err(Malformed::TruncatedL2));
}

#[test]
fn ipv4_fragments_are_reported_as_fragments() {
    let frame = v4();
    let mut more_fragments = frame.build();
    more_fragments[14 + 6] = 0x20; // MF
    let mut later_fragment = frame.build();
    later_fragment[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());

    assert_eq!(parse(&more_fragments[..]), Ok(Parsed::Fragment));
    assert_eq!(parse(&later_fragment[..]), Ok(Parsed::Fragment));
}

#[test]
fn ipv4_dont_fragment_alone_is_not_a_fragment() {
    let bytes = v4().build();
    assert_eq!(bytes[14 + 6], 0x40);

    assert!(matches!(parse(&bytes[..]), Ok(Parsed::Tcp(_))));
}

#[test]
fn ipv6_fragment_header_is_reported_as_a_fragment() {
    let mut frame = v6();
    frame.ipv6_ext = vec![60, 44];

    assert_eq!(parse(&frame.build()[..]), Ok(Parsed::Fragment));
}

#[test]
fn udp_arp_and_unknown_next_headers_are_not_tcp() {
    let mut udp4 = v4().build();
    udp4[14 + 9] = 17;
    let mut udp6 = v6().build();
    udp6[14 + 6] = 17;
    let mut no_next = v6();
    no_next.ipv6_ext = vec![60];
    let mut no_next = no_next.build();
    no_next[54] = 59; // "no next header" after the destination options
    let mut arp = v4().build_padded(60);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());

    for bytes in [udp4, udp6, no_next, arp] {
        assert_eq!(parse(&bytes[..]), Ok(Parsed::NotTcp));
    }
}

/// A frame with every field random.
fn any_frame() -> impl Strategy<Value = TcpFrame> {
    let tag = (prop_oneof![Just(0x8100u16), Just(0x88a8)], any::<u16>());
    let ext = prop::sample::select(vec![0u8, 43, 51, 60, 135, 139, 140]);
    let addrs = prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(s, d)| (std::net::IpAddr::from(s), std::net::IpAddr::from(d))),
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(s, d)| (std::net::IpAddr::from(s), std::net::IpAddr::from(d))),
    ];
    (
        (
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            pvec(tag, 0..=MAX_VLAN_TAGS),
        ),
        (addrs, any::<u16>(), any::<u16>()),
        (any::<u32>(), any::<u32>(), any::<u8>(), any::<u16>()),
        (pvec(any::<u8>(), 0..=40), pvec(ext, 0..=MAX_IPV6_EXT)),
        (pvec(any::<u8>(), 0..=40), pvec(any::<u8>(), 0..1400)),
    )
        .prop_map(|(l2, ends, tcp, ip_opts, tail)| {
            let ((src, dst), sport, dport) = ends;
            let mut frame = TcpFrame::new(SocketAddr::new(src, sport), SocketAddr::new(dst, dport));
            (frame.src_mac, frame.dst_mac, frame.vlans) = l2;
            (frame.seq, frame.ack, frame.flags, frame.window) = tcp;
            (frame.ipv4_options, frame.ipv6_ext) = ip_opts;
            (frame.tcp_options, frame.payload) = tail;
            frame
        })
}

/// Random bytes, sometimes with an IP EtherType and version so parsing goes deep.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    (pvec(any::<u8>(), 0..600), 0..4u8).prop_map(|(mut bytes, kind)| {
        if bytes.len() >= 15 {
            let (ethertype, version) = match kind {
                0 => (0x0800u16, 0x40u8),
                1 => (0x86dd, 0x60),
                2 => (0x8100, 0x00),
                _ => return bytes,
            };
            bytes[12..14].copy_from_slice(&ethertype.to_be_bytes());
            bytes[14] = version | (bytes[14] & 0x0f);
        }
        bytes
    })
}

/// A valid frame with a few bytes overwritten and possibly cut short.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edits = pvec((any::<prop::sample::Index>(), any::<u8>()), 1..8);
    (
        any_frame(),
        edits,
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(frame, edits, cut, truncate)| {
            let mut bytes = frame.build();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_in_bounds(bytes in prop_oneof![noise(), mutated()]) {
        if let Ok(Parsed::Tcp(seg)) = parse(&bytes[..]) {
            prop_assert!(seg.payload_offset + seg.payload_len <= bytes.len());
            prop_assert!(seg.options_offset + seg.options_len == seg.payload_offset);
            prop_assert!(seg.options_len <= MAX_OPTIONS && seg.options_len % 4 == 0);
            let mut out = [0; MAX_OPTIONS];
            prop_assert_eq!(copy_options(&bytes[..], &seg, &mut out), seg.options_len);
        }
    }

    #[test]
    fn every_prefix_of_a_valid_frame_is_an_error_never_a_longer_payload(frame in any_frame()) {
        let bytes = frame.build();
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            let result = parse(prefix);
            prop_assert!(result.is_err(), "prefix of {} bytes gave {:?}", len, result);
            if len < 14 {
                prop_assert_eq!(result, Err(Malformed::TruncatedL2));
            }
        }
        prop_assert!(matches!(parse(&bytes[..]), Ok(Parsed::Tcp(_))));
    }

    #[test]
    fn frames_built_from_random_fields_parse_back_to_them(frame in any_frame()) {
        let bytes = frame.build();

        let seg = match parse(&bytes[..]) {
            Ok(Parsed::Tcp(seg)) => seg,
            other => return Err(TestCaseError::fail(std::format!("{other:?}"))),
        };

        let v6 = frame.src.is_ipv6();
        prop_assert_eq!(seg.family, if v6 { FAMILY_V6 } else { FAMILY_V4 });
        prop_assert_eq!(seg.src_addr, addr16(frame.src));
        prop_assert_eq!(seg.dst_addr, addr16(frame.dst));
        prop_assert_eq!((seg.src_port, seg.dst_port), (frame.src.port(), frame.dst.port()));
        prop_assert_eq!((seg.seq, seg.ack), (frame.seq, frame.ack));
        prop_assert_eq!((seg.flags, seg.window), (frame.flags, frame.window));
        prop_assert_eq!(seg.options_offset, frame.l4_offset() + 20);
        let mut options = frame.tcp_options.clone();
        options.resize(options.len().next_multiple_of(4), 0);
        let mut out = [0; MAX_OPTIONS];
        let copied = copy_options(&bytes[..], &seg, &mut out);
        prop_assert_eq!(&out[..copied], &options[..]);
        let payload = &bytes[seg.payload_offset..seg.payload_offset + seg.payload_len];
        prop_assert_eq!(payload, &frame.payload[..]);
    }
}
