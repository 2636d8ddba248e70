//! The Prometheus endpoint: every scrape passes `promtool check metrics`, and
//! the counters move by exactly what the test caused: the bytes it sent per
//! interface and direction, the malformed frames it injected, the takeover it
//! ran and the connections it restored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use connmirror_common::Malformed;
use connmirror_common::frame::{self, TcpFrame};
use connmirror_tests::echo::{EchoClients, EchoOptions, assert_exact};
use connmirror_tests::failover::{echo_primary, handoff_app, manual_failover, standby_command};
use connmirror_tests::inject::{FrameInjector, link_mac};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, get, scrape, scrape_settled};
use connmirror_tests::mirror::MirrorExit;
use connmirror_tests::topology::{CLIENT_IF, GATEWAY_CLIENT_IF, GATEWAY_SERVER_IF};
use connmirror_tests::workdir::WorkDir;
use connmirror_tests::{Family, Mirror, MirrorCommand, Topology, require_root};

const PORT: u16 = 7000;
/// How long the metrics may take to settle.
const SETTLE: Duration = Duration::from_secs(20);
/// Client → server payload bytes.
const C2S: usize = 300_000;
/// Server → client payload bytes.
const S2C: usize = 5_000;
/// Malformed frames injected.
const INJECTED: u64 = 7;
/// Source port of the injected frames (not the live flow's).
const INJECT_PORT: u16 = 4999;

fn captured(iface: &str, direction: &str) -> String {
    format!("connmirror_captured_bytes_total{{iface=\"{iface}\",direction=\"{direction}\"}}")
}

fn inject_malformed(topo: &Topology, family: Family) {
    let gateway = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        Family::V6 => unreachable!("IPv4 only"),
    };
    let base = TcpFrame {
        src_mac: link_mac(&topo.client, CLIENT_IF),
        dst_mac: link_mac(&topo.gateway, GATEWAY_CLIENT_IF),
        ..TcpFrame::new(
            SocketAddr::new(topo.client_addr(family), INJECT_PORT),
            SocketAddr::new(gateway, PORT),
        )
    };
    let injector = FrameInjector::open(&topo.client, CLIENT_IF);
    let bytes = frame::malformed(Malformed::TruncatedL4, &base);
    for _ in 0..INJECTED {
        injector.send_until_accepted(&bytes, Duration::from_secs(10));
    }
}

#[test]
fn capture_counters_move_by_exactly_the_bytes_and_frames_sent() {
    require_root();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let journal = WorkDir::new("metrics-journal");
    let journal_dir = journal.path().join("journal");
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service)
            .egress("tc")
            .without_dumps()
            .arg("--journal")
            .arg(journal_dir.to_str().expect("utf-8 path")),
    );
    let before = scrape(&topo.gateway, DEFAULT_ENDPOINT);

    let (client, server) = connmirror_tests::traffic::exchange_once(&topo, service, C2S, S2C);
    inject_malformed(&topo, Family::V4);
    let truncated = "connmirror_malformed_packets_total{reason=\"truncated_l4\"}";
    let after = scrape_settled(&topo.gateway, SETTLE, |now| {
        now.delta(&before, &captured(GATEWAY_CLIENT_IF, "egress")) == S2C as u64
            && now.delta(&before, &captured(GATEWAY_SERVER_IF, "egress")) == C2S as u64
            && now.delta(&before, truncated) == INJECTED
    });

    let (c2s, s2c) = (C2S as u64, S2C as u64);
    assert_eq!(
        after.delta(&before, &captured(GATEWAY_CLIENT_IF, "ingress")),
        c2s
    );
    assert_eq!(
        after.delta(&before, &captured(GATEWAY_SERVER_IF, "egress")),
        c2s
    );
    assert_eq!(
        after.delta(&before, &captured(GATEWAY_SERVER_IF, "ingress")),
        s2c
    );
    assert_eq!(
        after.delta(&before, &captured(GATEWAY_CLIENT_IF, "egress")),
        s2c
    );
    assert_eq!(
        after.delta(&before, "connmirror_ebpf_captured_bytes_total"),
        2 * (c2s + s2c),
        "each byte is captured once entering and once leaving the gateway"
    );
    assert_eq!(
        after.sum("connmirror_captured_packets_total"),
        after.count("connmirror_ebpf_packets_tracked_total"),
        "every tracked segment was applied once"
    );
    assert_eq!(after.delta(&before, truncated), INJECTED);
    assert_eq!(
        after.sum("connmirror_malformed_packets_total")
            - before.sum("connmirror_malformed_packets_total"),
        INJECTED
    );
    assert_eq!(after.get("connmirror_flows{readiness=\"ready\"}"), 1.0);
    assert_eq!(after.count("connmirror_ring_decode_errors_total"), 0);
    assert_eq!(after.count("connmirror_ebpf_ring_full_total"), 0);
    let journaled = after.delta(&before, "connmirror_journal_written_bytes_total");
    assert!(journaled >= c2s + s2c, "journal wrote {journaled} bytes");
    assert!(after.count("connmirror_journal_fsync_seconds_count") >= 1);

    let (status, body) = get(&topo.gateway, DEFAULT_ENDPOINT, "/");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 404 Not Found", "not found: try /metrics\n")
    );
    drop((client, server));
    let (report, _dir) = mirror.stop();
    assert_eq!(report.malformed(Malformed::TruncatedL4), INJECTED);
}

#[test]
fn a_taken_metrics_port_is_a_clear_error_and_off_serves_nothing() {
    require_root();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    // TC only (TCX takes several programs per hook), so that the second
    // mirror's capture attaches and the metrics port is what it trips on.
    let command = MirrorCommand::new()
        .ifaces(topo.gateway_ifaces())
        .service(service)
        .ingress("tc")
        .without_dumps();
    let first = Mirror::start(&topo.gateway, &command);
    let dir = WorkDir::new("metrics-second");
    let second = MirrorExit::run(
        &topo.gateway,
        &[],
        &command,
        dir.path(),
        Duration::from_secs(30),
    );
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    assert_eq!(
        second.error_lines(),
        vec![
            "error: binding the metrics endpoint 127.0.0.1:9464 (choose another with \
             --metrics IP:PORT, or --metrics off): Address already in use (os error 98)"
        ]
    );
    first.stop();

    let off = Mirror::start(&topo.gateway, &command.clone().arg("--metrics").arg("off"));
    let refused = topo.gateway.run(|| {
        TcpStream::connect_timeout(&DEFAULT_ENDPOINT.parse().unwrap(), Duration::from_secs(2))
            .map(drop)
            .map_err(|e| e.kind())
    });
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    off.stop();
}

#[test]
fn takeover_counters_count_the_failover_and_every_restored_connection() {
    require_root();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let mut primary = echo_primary(&topo, service);
    let standby = Mirror::start(
        &topo.gateway,
        &standby_command(&topo, &format!("{service}=full")).without_dumps(),
    );
    let _app = handoff_app(&topo, &standby, service);
    let clients = EchoClients::start(&topo.client, service, 2, EchoOptions::default());
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect("streams flow before the failover");
    let before = scrape(&topo.gateway, DEFAULT_ENDPOINT);

    let report = manual_failover(&topo, &mut primary, &standby);
    clients
        .wait_progress(64 << 10, Duration::from_secs(60))
        .expect("streams continue after the takeover");
    let after = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let results = clients.finish(Duration::from_secs(60));

    assert_eq!(before.get("connmirror_flows{readiness=\"ready\"}"), 2.0);
    let failovers = |trigger: &str| format!("connmirror_failovers_total{{trigger=\"{trigger}\"}}");
    assert_eq!(after.delta(&before, &failovers("manual")), 1);
    assert_eq!(after.delta(&before, &failovers("heartbeats-missed")), 0);
    assert_eq!(report.restored, 2, "{report:#?}");
    assert_eq!(
        after.delta(&before, "connmirror_restored_connections_total"),
        2
    );
    assert_eq!(
        after.delta(&before, "connmirror_handed_off_connections_total"),
        2
    );
    assert_eq!(
        after.delta(&before, "connmirror_reset_connections_total"),
        0
    );
    assert_eq!(
        after.delta(&before, "connmirror_divergent_replays_total"),
        0
    );
    assert_eq!(
        after.sum("connmirror_unrecoverable_flows_total"),
        0,
        "{}",
        after.text
    );
    assert_eq!(after.delta(&before, "connmirror_restore_seconds_count"), 1);
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"restore") && names.contains(&"leave-repair"),
        "{names:?}"
    );
    assert_eq!(
        after.get("connmirror_restore_seconds_sum"),
        report.restore_seconds(),
        "the histogram holds the reported restore and leave-repair steps"
    );
    assert_eq!(after.get("connmirror_epoch"), report.epoch as f64);
    assert_exact(&results);
    standby.stop();
}
