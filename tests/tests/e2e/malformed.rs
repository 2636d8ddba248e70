//! Malformed frames are counted by reason, exactly, while a live flow through the
//! same gateway is still captured byte for byte.
//!
//! The client injects, through a raw `AF_PACKET` socket on its veth, frames that
//! the capture parser must reject (one shape per
//! [`Malformed`](connmirror_common::Malformed) reason, from
//! [`connmirror_common::frame::malformed`]) in the middle of a bidirectional
//! stream through the gateway.
//!
//! The frames are addressed to the gateway itself (its MAC and its client-side
//! address), so each is seen by exactly one capture hook, XDP ingress on `gw-c`,
//! and must be counted exactly once. Frames addressed *through* the gateway would
//! not be: the gateway's IP layer drops the ones with a broken IP header, but
//! forwards those whose IP header is sound (a cut or inconsistent TCP header, a
//! long IPv6 extension chain), and the mirror's TC egress program on `gw-s`
//! counts them a second time. Measured here: `truncated_l4`,
//! `tcp_data_offset_short`, `tcp_data_offset_past_end` (and `ipv6_ext_chain` for
//! IPv6) came out at twice the frames sent, every other reason at exactly once;
//! with `--egress none` all matched.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use connmirror_common::Malformed;
use connmirror_common::frame::{self, TcpFrame};
use connmirror_tests::inject::{FrameInjector, link_mac};
use connmirror_tests::live::{Bounds, LiveStream};
use connmirror_tests::mirror::FlowStatus;
use connmirror_tests::topology::{CLIENT_IF, GATEWAY_CLIENT_IF};
use connmirror_tests::{Family, Mirror, MirrorCommand, Topology, require_root};

const PORT: u16 = 7000;
/// The legitimate flow runs until each side has read at least this much.
const STREAM_BYTES: u64 = 20_000_000;
/// The injection starts once each side has read this much.
const STARTED_BYTES: u64 = 1_000_000;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(120);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Source port of the injected frames, unused by the live flow (an ephemeral
/// port is at least 32768).
const INJECT_PORT: u16 = 4999;

/// Frames injected for the reason at index `i` of [`Malformed::ALL`]: a distinct
/// count per reason, so a frame counted under the wrong reason shows.
fn frames_for(i: usize) -> u64 {
    i as u64 + 3
}

fn malformed_frames_are_counted_by_reason_and_a_live_flow_stays_byte_exact_in(family: Family) {
    require_root();
    let topo = Topology::new();
    let service = topo.service(family, PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .ingress("xdp")
            .service(service),
    );

    let base = TcpFrame {
        src_mac: link_mac(&topo.client, CLIENT_IF),
        dst_mac: link_mac(&topo.gateway, GATEWAY_CLIENT_IF),
        ..TcpFrame::new(
            SocketAddr::new(topo.client_addr(family), INJECT_PORT),
            SocketAddr::new(gateway_client_addr(family), PORT),
        )
    };
    let injector = FrameInjector::open(&topo.client, CLIENT_IF);

    let stream = LiveStream::start(
        &topo.client,
        &topo.server,
        service,
        Bounds {
            duration: TRAFFIC_TIMEOUT,
            max_bytes_each_way: u64::MAX,
        },
    )
    .expect("start the live flow");
    wait_for_progress(&stream, STARTED_BYTES);

    let mut sent = BTreeMap::new();
    let mut refused = 0;
    for (i, &reason) in Malformed::ALL.iter().enumerate() {
        let bytes = frame::malformed(reason, &base);
        for _ in 0..frames_for(i) {
            refused += injector.send_until_accepted(&bytes, SEND_TIMEOUT);
            *sent.entry(reason.name()).or_insert(0u64) += 1;
        }
    }
    assert!(
        !stream.is_finished(),
        "the live flow ended before the injection did: {:?}",
        stream.progress()
    );
    println!(
        "{family:?}: injected {sent:?} ({refused} sends refused and retried) at {:?}",
        stream.progress()
    );
    wait_for_progress(&stream, STREAM_BYTES);
    let x = stream.stop(TRAFFIC_TIMEOUT).expect("finish the live flow");
    let (report, _dir) = mirror.stop();

    let counted: BTreeMap<&str, u64> = Malformed::ALL
        .iter()
        .map(|&m| (m.name(), report.malformed(m)))
        .collect();
    assert_eq!(
        counted, sent,
        "malformed counters (report: {:?})",
        report.counters
    );

    assert_eq!(x.server.received, x.client.sent);
    assert_eq!(x.client.received, x.server.sent);
    assert_eq!(report.flows.len(), 1, "flows: {:#?}", report.flows);
    let flow = &report.flows[0];
    assert_eq!(
        (flow.server, flow.client),
        (service, x.client.addr),
        "{flow:#?}"
    );
    flow.assert_byte_exact(&x);
    assert!(flow.handshake, "{flow:#?}");
    assert!(!flow.rst, "{flow:#?}");
    assert_eq!(flow.status, FlowStatus::Complete, "{flow:#?}");
}

/// The gateway's address on the client link (see the diagram in
/// [`connmirror_tests::topology`]).
fn gateway_client_addr(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1)),
    }
}

/// Waits until each side of `stream` has read at least `bytes`.
fn wait_for_progress(stream: &LiveStream, bytes: u64) {
    let deadline = Instant::now() + TRAFFIC_TIMEOUT;
    loop {
        let p = stream.progress();
        if p.c2s_received >= bytes && p.s2c_received >= bytes {
            return;
        }
        assert!(
            !stream.is_finished(),
            "the live flow ended before {bytes} bytes each way: {p:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the live flow did not reach {bytes} bytes each way within {TRAFFIC_TIMEOUT:?}: {p:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn malformed_frames_are_counted_by_reason_and_a_live_flow_stays_byte_exact() {
    malformed_frames_are_counted_by_reason_and_a_live_flow_stays_byte_exact_in(Family::V4);
}

#[test]
fn malformed_frames_are_counted_by_reason_and_a_live_flow_stays_byte_exact_v6() {
    malformed_frames_are_counted_by_reason_and_a_live_flow_stays_byte_exact_in(Family::V6);
}
