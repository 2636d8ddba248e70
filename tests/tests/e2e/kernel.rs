//! The capture programs run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`):
//! parsing, classification, chunking and the ring-full policies, checked record by
//! record without any interface. Needs root (or CAP_BPF + CAP_NET_ADMIN).

use std::net::SocketAddr;

use aya::maps::{MapData, RingBuf};
use connmirror::{
    capture::{Capture, CaptureConfig},
    service::Service,
};
use connmirror_common::{
    Counter, Direction, Hook, Malformed, RecordHeader, RingFullPolicy, ServiceMode,
    frame::{TcpFrame, malformed},
    record::{
        CHUNK_SIZE, HEADER_SIZE,
        tcp_flags::{ACK, PSH},
    },
};
use connmirror_tests::require_root;

const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

fn server() -> SocketAddr {
    "198.18.1.2:7000".parse().unwrap()
}

fn client() -> SocketAddr {
    "198.18.0.2:40312".parse().unwrap()
}

fn load(ring_size: u32, on_ring_full: RingFullPolicy, service: SocketAddr) -> Capture {
    require_root();
    let mut capture = Capture::load(&CaptureConfig {
        ring_size,
        on_ring_full,
        max_flows: connmirror::capture::DEFAULT_MAX_FLOWS,
    })
    .expect("loading the capture programs");
    capture
        .track(&Service {
            id: 7,
            addr: service,
        })
        .expect("tracking the service");
    capture
}

fn records(ring: &mut RingBuf<MapData>) -> Vec<(RecordHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let (header, chunk) = RecordHeader::decode(&item).expect("a well-formed record");
        out.push((header, chunk.to_vec()));
    }
    out
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn xdp_records_a_double_tagged_segment_field_for_field() {
    let mut capture = load(1 << 20, RingFullPolicy::Drop, server());
    let mut ring = capture.take_ring().unwrap();
    let mut frame = TcpFrame::new(client(), server());
    frame.vlans = vec![(0x88a8, 100), (0x8100, 200)];
    frame.ipv4_options = vec![1, 1, 1, 1];
    frame.tcp_options = vec![2, 4, 0x05, 0xb4, 1, 3, 3, 7];
    frame.seq = 0xfffffff0;
    frame.ack = 12345;
    frame.flags = ACK | PSH;
    frame.window = 501;
    frame.payload = pattern(100);

    let verdict = capture.test_run(Hook::Xdp, &frame.build()).unwrap();

    assert_eq!(verdict, XDP_PASS);
    let records = records(&mut ring);
    assert_eq!(records.len(), 1);
    let (h, chunk) = &records[0];
    assert_eq!(chunk, &frame.payload);
    assert_eq!(h.seq, 0xfffffff0);
    assert_eq!(h.ack, 12345);
    assert_eq!(h.window, 501);
    assert_eq!(h.tcp_flags, ACK | PSH);
    assert_eq!((h.src_port, h.dst_port), (40312, 7000));
    assert_eq!(&h.src_addr[..4], &[198, 18, 0, 2]);
    assert_eq!(&h.dst_addr[..4], &[198, 18, 1, 2]);
    assert_eq!(h.direction, Direction::ClientToServer as u8);
    assert_eq!(h.hook, Hook::Xdp as u8);
    assert_eq!(h.service_id, 7);
    assert_eq!(&h.options[..h.options_len as usize], &frame.tcp_options[..]);
    assert_eq!((h.payload_len, h.chunk_offset, h.chunk_len), (100, 0, 100));
    let counters = capture.counters().unwrap();
    assert_eq!(counters.get(Counter::PacketsSeen), 1);
    assert_eq!(counters.get(Counter::PacketsTracked), 1);
    assert_eq!(counters.get(Counter::Records), 1);
    assert_eq!(counters.get(Counter::BytesCaptured), 100);
}

#[test]
fn xdp_splits_a_multi_buffer_payload_into_exact_chunks_v6() {
    let server: SocketAddr = "[fd00:0:0:2::2]:7000".parse().unwrap();
    let client: SocketAddr = "[fd00:0:0:1::2]:40312".parse().unwrap();
    let mut capture = load(1 << 20, RingFullPolicy::Drop, server);
    let mut ring = capture.take_ring().unwrap();
    let mut frame = TcpFrame::new(server, client);
    frame.ipv6_ext = vec![0, 60];
    frame.payload = pattern(10_000);

    let verdict = capture.test_run(Hook::Xdp, &frame.build()).unwrap();

    assert_eq!(verdict, XDP_PASS);
    let records = records(&mut ring);
    let chunks: Vec<_> = records
        .iter()
        .map(|(h, c)| (h.chunk_offset, h.chunk_len, h.payload_len, c.len() as u32))
        .collect();
    assert_eq!(
        chunks,
        vec![(0, 8192, 10_000, 8192), (8192, 1808, 10_000, 1808)]
    );
    let joined: Vec<u8> = records.iter().flat_map(|(_, c)| c.clone()).collect();
    assert_eq!(joined, frame.payload);
    assert!(
        records
            .iter()
            .all(|(h, _)| h.direction == Direction::ServerToClient as u8)
    );
}

#[test]
fn tc_egress_records_a_server_segment_and_passes_it_on() {
    let mut capture = load(1 << 20, RingFullPolicy::Drop, server());
    let mut ring = capture.take_ring().unwrap();
    let mut frame = TcpFrame::new(server(), client());
    frame.payload = pattern(1448);

    let verdict = capture.test_run(Hook::TcEgress, &frame.build()).unwrap();

    assert_eq!(verdict, TC_ACT_UNSPEC);
    let records = records(&mut ring);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0.hook, Hook::TcEgress as u8);
    assert_eq!(records[0].1, frame.payload);
}

#[test]
fn untracked_ports_produce_no_record() {
    let mut capture = load(1 << 20, RingFullPolicy::Drop, server());
    let mut ring = capture.take_ring().unwrap();
    let other: SocketAddr = "198.18.1.2:7001".parse().unwrap();
    let mut frame = TcpFrame::new(client(), other);
    frame.payload = pattern(10);

    let verdict = capture.test_run(Hook::Xdp, &frame.build()).unwrap();

    assert_eq!(verdict, XDP_PASS);
    assert_eq!(records(&mut ring).len(), 0);
    let counters = capture.counters().unwrap();
    assert_eq!(counters.get(Counter::PacketsSeen), 1);
    assert_eq!(counters.get(Counter::PacketsTracked), 0);
    assert_eq!(counters.get(Counter::Records), 0);
}

#[test]
fn services_added_and_removed_at_runtime_take_effect_on_the_next_packet() {
    let mut capture = load(1 << 20, RingFullPolicy::Drop, server());
    let mut ring = capture.take_ring().unwrap();
    let other = Service {
        id: 9,
        addr: "198.18.1.2:7001".parse().unwrap(),
    };
    let frame = TcpFrame::new(client(), other.addr).build();

    capture.test_run(Hook::Xdp, &frame).unwrap();
    assert_eq!(records(&mut ring).len(), 0);

    capture.track(&other).unwrap();
    capture.test_run(Hook::Xdp, &frame).unwrap();
    let seen = records(&mut ring);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.service_id, 9);

    capture.untrack(&other).unwrap();
    capture.test_run(Hook::Xdp, &frame).unwrap();
    assert_eq!(records(&mut ring).len(), 0);
    assert_eq!(capture.counters().unwrap().get(Counter::PacketsTracked), 1);
}

#[test]
fn malformed_frames_are_counted_by_reason_and_passed() {
    let mut capture = load(1 << 20, RingFullPolicy::Drop, server());
    let mut ring = capture.take_ring().unwrap();
    let base = TcpFrame::new(client(), server());

    for (i, reason) in Malformed::ALL.iter().enumerate() {
        for _ in 0..=i {
            let verdict = capture
                .test_run(Hook::Xdp, &malformed(*reason, &base))
                .unwrap();
            assert_eq!(verdict, XDP_PASS, "{reason:?} must be passed untouched");
        }
    }

    let counters = capture.counters().unwrap();
    for (i, reason) in Malformed::ALL.iter().enumerate() {
        assert_eq!(counters.malformed(*reason), i as u64 + 1, "{reason:?}");
    }
    assert_eq!(counters.get(Counter::PacketsTracked), 0);
    assert_eq!(records(&mut ring).len(), 0);
}

/// Fills a 64 KiB ring with 3000-byte segments nobody drains; returns the
/// verdicts of 40 runs (a 3 KiB record fits about 20 times).
fn overflow(capture: &mut Capture, hook: Hook) -> Vec<i32> {
    let mut frame = TcpFrame::new(client(), server());
    frame.payload = pattern(3000);
    (0..40u32)
        .map(|i| {
            frame.seq = 1 + i * 3000;
            capture.test_run(hook, &frame.build()).unwrap()
        })
        .collect()
}

#[test]
fn full_ring_drops_segments_under_the_drop_policy() {
    let mut capture = load(64 << 10, RingFullPolicy::Drop, server());
    let _ring = capture.take_ring().unwrap();

    let verdicts = overflow(&mut capture, Hook::Xdp);

    let dropped = verdicts.iter().filter(|v| **v == XDP_DROP).count() as u64;
    let passed = verdicts.iter().filter(|v| **v == XDP_PASS).count() as u64;
    assert_eq!(dropped + passed, 40);
    assert!(dropped > 0, "a 64 KiB ring cannot hold 40 records of 3 KiB");
    let counters = capture.counters().unwrap();
    assert_eq!(counters.get(Counter::RingFull), dropped);
    assert_eq!(counters.get(Counter::BackpressureDrops), dropped);
    assert_eq!(counters.get(Counter::Records), passed);
    assert_eq!(counters.get(Counter::GapsMarked), 0);
}

#[test]
fn full_ring_passes_and_marks_the_flow_gapped_under_the_pass_policy() {
    let mut capture = load(64 << 10, RingFullPolicy::Pass, server());
    let _ring = capture.take_ring().unwrap();

    let verdicts = overflow(&mut capture, Hook::TcIngress);

    assert!(verdicts.iter().all(|v| *v == TC_ACT_UNSPEC));
    assert!(!verdicts.contains(&TC_ACT_SHOT));
    let counters = capture.counters().unwrap();
    let full = counters.get(Counter::RingFull);
    assert!(full > 0);
    assert_eq!(counters.get(Counter::GapsMarked), full);
    assert_eq!(counters.get(Counter::BackpressureDrops), 0);
    assert_eq!(counters.get(Counter::Records) + full, 40);
    let gaps: Vec<u32> = capture.flow_gaps().unwrap().into_values().collect();
    assert_eq!(gaps, vec![full as u32]);
}

/// Ring bytes one record of size class `class` takes: the kernel's 8-byte
/// record header, the record header and the class, 8-byte aligned.
fn ring_record(class: usize) -> usize {
    (8 + HEADER_SIZE + class + 7) & !7
}

#[test]
fn a_segment_that_does_not_fit_whole_takes_no_room_from_the_ring() {
    const RING: usize = 64 << 10;
    let mut capture = load(RING as u32, RingFullPolicy::Drop, server());
    let mut ring = capture.take_ring().unwrap();
    let mut frame = TcpFrame::new(client(), server());
    frame.payload = pattern(3000); // the 4 KiB class
    // Leave room for one full chunk and less than one more 4 KiB record.
    let fill = (RING - ring_record(CHUNK_SIZE)) / ring_record(4096);
    let room = RING - fill * ring_record(4096);
    let big = pattern(2 * CHUNK_SIZE + 100);
    assert!(room >= ring_record(CHUNK_SIZE) && room < 2 * ring_record(CHUNK_SIZE));
    assert!(room - ring_record(CHUNK_SIZE) < ring_record(4096));

    let mut verdicts = Vec::new();
    for i in 0..fill as u32 {
        frame.seq = 1 + i * 3000;
        verdicts.push(capture.test_run(Hook::Xdp, &frame.build()).unwrap());
    }
    let mut gso = TcpFrame::new(client(), server());
    gso.seq = 1 + fill as u32 * 3000;
    gso.payload = big.clone();
    let whole = capture.test_run(Hook::Xdp, &gso.build()).unwrap();
    frame.seq = gso.seq + big.len() as u32;
    let after = capture.test_run(Hook::Xdp, &frame.build()).unwrap();

    assert!(verdicts.iter().all(|v| *v == XDP_PASS), "{verdicts:?}");
    // Three records would not fit, so none of them was written, and the next
    // segment still found the room the first of them would have taken.
    assert_eq!((whole, after), (XDP_DROP, XDP_PASS));
    let lens: Vec<u32> = records(&mut ring)
        .iter()
        .map(|(h, _)| h.payload_len)
        .collect();
    assert_eq!(lens, vec![3000; fill + 1]);
    let counters = capture.counters().unwrap();
    assert_eq!(counters.get(Counter::RingFull), 1);
    assert_eq!(counters.get(Counter::BackpressureDrops), 1);
    assert_eq!(counters.get(Counter::Records), fill as u64 + 1);
}

/// Verdicts for one client → service and one service → client segment at each hook.
fn both_ways(capture: &mut Capture) -> Vec<(Hook, i32, i32)> {
    let to_server = TcpFrame::new(client(), server()).build();
    let to_client = TcpFrame::new(server(), client()).build();
    [Hook::Xdp, Hook::TcIngress, Hook::TcEgress]
        .into_iter()
        .map(|hook| {
            let c2s = capture.test_run(hook, &to_server).unwrap();
            let s2c = capture.test_run(hook, &to_client).unwrap();
            (hook, c2s, s2c)
        })
        .collect()
}

#[test]
fn takeover_modes_drop_at_ingress_only_and_stop_capture() {
    let mut capture = load(1 << 20, RingFullPolicy::Drop, server());
    let mut ring = capture.take_ring().unwrap();
    let service = Service {
        id: 7,
        addr: server(),
    };

    capture
        .set_mode(&service, ServiceMode::QUIESCED | ServiceMode::FENCED)
        .unwrap();
    let quiesced = both_ways(&mut capture);
    capture
        .set_mode(&service, ServiceMode::FENCED | ServiceMode::OWNED)
        .unwrap();
    let owned = both_ways(&mut capture);

    assert_eq!(
        quiesced,
        vec![
            (Hook::Xdp, XDP_DROP, XDP_DROP),
            (Hook::TcIngress, TC_ACT_SHOT, TC_ACT_SHOT),
            (Hook::TcEgress, TC_ACT_UNSPEC, TC_ACT_UNSPEC),
        ]
    );
    assert_eq!(
        owned,
        vec![
            (Hook::Xdp, XDP_PASS, XDP_DROP),
            (Hook::TcIngress, TC_ACT_UNSPEC, TC_ACT_SHOT),
            (Hook::TcEgress, TC_ACT_UNSPEC, TC_ACT_UNSPEC),
        ]
    );
    assert!(
        records(&mut ring).is_empty(),
        "a taken-over service is not captured"
    );
    let counters = capture.counters().unwrap();
    assert_eq!(counters.get(Counter::QuiesceDrops), 2);
    assert_eq!(counters.get(Counter::FenceDrops), 4);
    assert_eq!(counters.get(Counter::PacketsTracked), 0);
}
