//! End-to-end capture: the mirror in the gateway dumps every byte of a tracked
//! connection, in both directions, exactly; its ring-full policies behave as
//! documented; untracked traffic leaves no trace.
//!
//! Run through `sudo -E cargo xtask test` (root, and `CONNMIRROR_BIN`).

use std::time::Duration;

use connmirror_common::Counter;
use connmirror_tests::mirror::{FlowStatus, tiny_ring_mirror};
use connmirror_tests::{
    Exchange, Family, Mirror, MirrorCommand, Report, Topology, WorkDir, bidirectional,
    require_root_and_bin,
};

const SERVICE_PORT: u16 = 7000;
const OTHER_PORT: u16 = 7001;
const LARGE_STREAM: u64 = 200_000_000;
const TINY_RING_STREAM: u64 = 20_000_000;
const UNTRACKED_STREAM: u64 = 1_000_000;
/// Without the mirror 200 MB each way takes 1.5–2 s here; backpressure on a
/// 64 KiB ring can cost far more (TCP backs off on every drop).
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(600);

/// 200 MB each way through a mirror attached with `hooks` (the attach flags; the
/// interfaces and service are added here): one complete flow whose two dumps hash
/// to exactly what each side sent. The three callers cover every program and
/// mode between them: native XDP with TC egress (each segment captured twice), TC
/// ingress alone, and generic XDP on one link with TC on the other, chosen per
/// interface.
fn large_streams_dump_byte_exact(topo: &Topology, family: Family, hooks: &[&str]) {
    let service = topo.service(family, SERVICE_PORT);
    let command = hooks
        .iter()
        .fold(MirrorCommand::new(), |command, arg| command.arg(arg))
        .service(service);
    let mirror = Mirror::start(&topo.gateway, &command);

    let x = bidirectional(topo, service, LARGE_STREAM, TRAFFIC_TIMEOUT);
    let (report, _dumps) = mirror.stop();

    println!(
        "{family:?} vlan={:?}: {LARGE_STREAM} bytes each way through the mirror in {:.2?}",
        topo.vlan(),
        x.elapsed
    );
    assert_eq!(x.server.received, x.client.sent);
    assert_eq!(x.client.received, x.server.sent);
    assert_eq!(report.flows.len(), 1, "flows: {:#?}", report.flows);
    let flow = &report.flows[0];
    assert_eq!(flow.server, service);
    assert_eq!(flow.client, x.client.addr);
    assert_eq!(flow.status, FlowStatus::Complete, "{flow:#?}");
    assert!(flow.handshake);
    assert!(!flow.rst);
    assert_eq!(flow.kernel_gaps, 0);
    assert_eq!(x.client.sent_bytes, LARGE_STREAM);
    assert_eq!(x.server.sent_bytes, LARGE_STREAM);
    flow.assert_byte_exact(&x);
    // A 16 MiB ring rarely fills here, but a busy 2-core host can starve the
    // reader; every full-ring event must then be a backpressure drop (which the
    // byte-exact dumps above prove harmless), never a gap.
    report.assert_drop_policy_held();
    assert_eq!(report.userspace.decode_errors, 0);
    assert_eq!(report.userspace.records, report.counter(Counter::Records));
    assert_eq!(report.malformed_total(), 0, "{:?}", report.malformed);
}

#[test]
fn bidirectional_200mb_streams_dump_byte_exact_v4() {
    require_root_and_bin();
    let topo = Topology::new();
    large_streams_dump_byte_exact(
        &topo,
        Family::V4,
        &[
            "--iface",
            "gw-c",
            "--iface",
            "gw-s",
            "--ingress",
            "xdp-native",
            "--egress",
            "tc",
        ],
    );
}

#[test]
fn bidirectional_200mb_streams_dump_byte_exact_v6() {
    require_root_and_bin();
    let topo = Topology::new();
    large_streams_dump_byte_exact(
        &topo,
        Family::V6,
        &[
            "--iface",
            "gw-c",
            "--iface",
            "gw-s",
            "--ingress",
            "tc",
            "--egress",
            "none",
        ],
    );
}

#[test]
fn bidirectional_200mb_streams_dump_byte_exact_vlan_v4() {
    require_root_and_bin();
    let topo = Topology::with_vlan(100);
    // XDP runs before the fixture's TCX tag-popping program, so it sees the tag.
    large_streams_dump_byte_exact(
        &topo,
        Family::V4,
        &["--iface", "gw-c:xdp-generic", "--iface", "gw-s:tc"],
    );
}

/// Streams [`TINY_RING_STREAM`] bytes each way through a mirror with a 64 KiB ring
/// (the minimum) and `policy`, with segmentation offloads off so every skb is one
/// MTU-sized segment and fits. Checks what holds under either policy (the peers
/// got exactly what was sent, one flow, the ring filled) and returns the report.
fn tiny_ring_run(policy: &str) -> (Exchange, Report, WorkDir) {
    let (topo, service, mirror) = tiny_ring_mirror(SERVICE_PORT, policy);

    let x = bidirectional(&topo, service, TINY_RING_STREAM, TRAFFIC_TIMEOUT);
    let (report, dumps) = mirror.stop();

    println!(
        "{policy} policy, 64K ring: {TINY_RING_STREAM} bytes each way in {:.2?}",
        x.elapsed
    );
    assert_eq!(x.server.received, x.client.sent);
    assert_eq!(x.client.received, x.server.sent);
    assert_eq!(report.flows.len(), 1, "flows: {:#?}", report.flows);
    assert_eq!(report.flows[0].client, x.client.addr);
    assert!(
        report.counter(Counter::RingFull) > 0,
        "{:?}",
        report.counters
    );
    (x, report, dumps)
}

#[test]
fn tiny_ring_drop_policy_stays_byte_exact() {
    require_root_and_bin();

    let (x, report, _dumps) = tiny_ring_run("drop");

    let flow = &report.flows[0];
    assert_eq!(flow.status, FlowStatus::Complete, "{flow:#?}");
    assert_eq!(flow.kernel_gaps, 0);
    flow.assert_byte_exact(&x);
    report.assert_drop_policy_held();
}

#[test]
fn tiny_ring_pass_policy_reports_gapped_flow() {
    require_root_and_bin();

    // The pass policy never touches the traffic itself: the run checks the peers.
    let (_x, report, _dumps) = tiny_ring_run("pass");

    let flow = &report.flows[0];
    assert_eq!(flow.status, FlowStatus::Gapped, "{flow:#?}");
    assert!(flow.kernel_gaps > 0, "{flow:#?}");
    assert_eq!(
        report.counter(Counter::GapsMarked),
        report.counter(Counter::RingFull),
        "{:?}",
        report.counters
    );
    assert_eq!(report.counter(Counter::BackpressureDrops), 0);
}

#[test]
fn untracked_port_produces_no_records() {
    require_root_and_bin();
    let topo = Topology::new();
    let tracked = topo.service(Family::V4, SERVICE_PORT);
    let untracked = topo.service(Family::V4, OTHER_PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(tracked),
    );

    let x = bidirectional(&topo, untracked, UNTRACKED_STREAM, TRAFFIC_TIMEOUT);
    let (report, _dumps) = mirror.stop();

    assert_eq!(x.server.received, x.client.sent);
    assert_eq!(x.client.received, x.server.sent);
    assert!(
        report.counter(Counter::PacketsSeen) > 0,
        "{:?}",
        report.counters
    );
    assert_eq!(report.counter(Counter::PacketsTracked), 0);
    assert_eq!(report.counter(Counter::Records), 0);
    assert_eq!(report.counter(Counter::BytesCaptured), 0);
    assert_eq!(report.userspace.records, 0);
    assert_eq!(report.flows.len(), 0, "flows: {:#?}", report.flows);
}
