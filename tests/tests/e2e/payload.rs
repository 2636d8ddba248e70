//! What capture copies: a service whose retention is `restore` needs no
//! client → server payload, so none of it enters the ring. The kernel counts
//! every such byte as skipped, exactly, and copies only the server's; a
//! takeover still restores its connections, and the clients' streams go on
//! byte-exact (each echoed byte checked against what was sent).

use std::net::SocketAddr;
use std::time::Duration;

use connmirror_tests::echo::{EchoClients, EchoOptions, assert_exact};
use connmirror_tests::failover::{echo_primary, handoff_app, manual_failover, standby_command};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, scrape, scrape_settled};
use connmirror_tests::topology::{GATEWAY_CLIENT_IF, GATEWAY_SERVER_IF};
use connmirror_tests::{Family, Mirror, MirrorCommand, Topology, require_root};

const PORT: u16 = 7000;
/// Client → server payload bytes.
const C2S: usize = 300_000;
/// Server → client payload bytes.
const S2C: usize = 5_000;
/// Echo connections through the takeover.
const CONNS: usize = 4;
/// Bytes each echo connection verifies before the primary dies, and again after.
const PROGRESS: u64 = 64 << 10;

fn captured(iface: &str, direction: &str) -> String {
    format!("connmirror_captured_bytes_total{{iface=\"{iface}\",direction=\"{direction}\"}}")
}

/// `IP:PORT=restore`: the service's retention keeps no client payload.
fn restore_service(service: SocketAddr) -> String {
    format!("{service}=restore")
}

/// The mirror with XDP in and TC out on both links, asked for (the default
/// on veths is TC in and no egress): each segment is seen entering and
/// leaving the gateway, so every count below is exactly twice the bytes.
fn client_payload_is_skipped_exactly_and_never_copied(family: Family) {
    require_root();
    let topo = Topology::new();
    let service = topo.service(family, PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .ingress("xdp")
            .egress("tc")
            .arg("--service")
            .arg(&restore_service(service))
            .without_dumps(),
    );

    let (client, server) = connmirror_tests::traffic::exchange_once(&topo, service, C2S, S2C);
    let after = scrape_settled(&topo.gateway, Duration::from_secs(20), |now| {
        now.count(&captured(GATEWAY_CLIENT_IF, "egress")) == S2C as u64
    });
    drop((client, server));
    let (report, _dir) = mirror.stop();

    let (c2s, s2c) = (C2S as u64, S2C as u64);
    assert_eq!(
        after.count("connmirror_ebpf_payload_skipped_bytes_total"),
        2 * c2s,
        "every client byte is skipped once entering and once leaving the gateway"
    );
    assert_eq!(
        after.count("connmirror_ebpf_captured_bytes_total"),
        2 * s2c,
        "only the server's bytes are copied"
    );
    for (iface, direction, bytes) in [
        (GATEWAY_CLIENT_IF, "ingress", 0),
        (GATEWAY_SERVER_IF, "egress", 0),
        (GATEWAY_SERVER_IF, "ingress", s2c),
        (GATEWAY_CLIENT_IF, "egress", s2c),
    ] {
        assert_eq!(
            after.count(&captured(iface, direction)),
            bytes,
            "{iface} {direction}"
        );
    }
    assert_eq!(after.get("connmirror_flows{readiness=\"ready\"}"), 1.0);
    assert_eq!(after.count("connmirror_ring_decode_errors_total"), 0);
    assert_eq!(report.flows.len(), 1, "{:#?}", report.flows);
    let flow = &report.flows[0];
    assert_eq!((flow.c2s.delivered, flow.c2s.retained), (0, 0));
    assert_eq!(flow.s2c.delivered, s2c);
}

#[test]
fn client_payload_is_skipped_exactly_and_never_copied_v4() {
    client_payload_is_skipped_exactly_and_never_copied(Family::V4);
}

#[test]
fn client_payload_is_skipped_exactly_and_never_copied_v6() {
    client_payload_is_skipped_exactly_and_never_copied(Family::V6);
}

/// Echo clients stream through the standby (TC ingress on both links) to the
/// primary; the primary dies; the takeover restores every connection from
/// the server's bytes and the client's sequence numbers alone and hands it
/// to the echo example, and every stream goes on byte-exact.
fn a_takeover_without_client_payload_continues_every_stream_exactly(family: Family) {
    require_root();
    let topo = Topology::new();
    let service = topo.service(family, PORT);
    let mut primary = echo_primary(&topo, service);
    let standby = Mirror::start(
        &topo.gateway,
        &standby_command(&topo, &restore_service(service)).without_dumps(),
    );
    let app = handoff_app(&topo, &standby, service);
    let clients = EchoClients::start(&topo.client, service, CONNS, EchoOptions::default());
    clients
        .wait_progress(PROGRESS, Duration::from_secs(30))
        .expect("streams flow before the failover");

    let report = manual_failover(&topo, &mut primary, &standby);
    clients
        .wait_progress(PROGRESS, Duration::from_secs(60))
        .expect("every stream continues after the takeover");
    let results = clients.finish(Duration::from_secs(60));
    let metrics = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let (final_report, _dir) = standby.stop();

    assert_eq!(results.len(), CONNS);
    assert_exact(&results);
    assert_eq!(
        (report.restored, report.handed_off),
        (CONNS as u64, CONNS as u64),
        "{report:#?}"
    );
    assert_eq!(report.unrecoverable_total(), 0, "{report:#?}");
    assert_eq!(report.reset, 0);
    let resumed = app.lines();
    let resumed = resumed.iter().filter(|l| l.starts_with("resumed ")).count();
    assert_eq!(resumed, CONNS);
    assert_eq!(metrics.count(&captured(GATEWAY_CLIENT_IF, "ingress")), 0);
    assert_eq!(
        metrics.count("connmirror_ebpf_captured_bytes_total"),
        metrics.count(&captured(GATEWAY_SERVER_IF, "ingress")),
        "every byte copied is the server's"
    );
    let skipped = metrics.count("connmirror_ebpf_payload_skipped_bytes_total");
    assert!(skipped >= CONNS as u64 * PROGRESS, "skipped {skipped}");
    for flow in &final_report.flows {
        assert_eq!(flow.c2s.delivered, 0, "{flow:#?}");
    }
}

#[test]
fn a_takeover_without_client_payload_continues_every_stream_exactly_v4() {
    a_takeover_without_client_payload_continues_every_stream_exactly(Family::V4);
}

#[test]
fn a_takeover_without_client_payload_continues_every_stream_exactly_v6() {
    a_takeover_without_client_payload_continues_every_stream_exactly(Family::V6);
}
