//! What capture attaches: the attach points connmirror chooses itself
//! (`--ingress auto` and `--egress auto`, the defaults): on the gateway's veths
//! the mirror picks TC ingress (native XDP on a veth turns TSO off on its peer)
//! and no egress (ingress on both links sees every forwarded segment), says so
//! in its log and in report.json, and still captures every byte. And the
//! traced programs of `--trace-ebpf`, which log the decision for each segment.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use connmirror_common::Counter;
use connmirror_common::frame::TcpFrame;
use connmirror_tests::inject::{FrameInjector, link_mac};
use connmirror_tests::mirror::{AttachPoint, FlowStatus};
use connmirror_tests::topology::{CLIENT_IF, GATEWAY_CLIENT_IF};
use connmirror_tests::{
    Family, Mirror, MirrorCommand, Topology, bidirectional, require_root_and_bin,
};

const PORT: u16 = 7000;
const STREAM: u64 = 4_000_000;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Why `auto` picks TC on a veth.
const VETH: &str = "veth: native XDP would turn TSO off on the peer";
/// Why `auto` leaves egress off on the gateway.
const GATEWAY: &str = "ingress on every link (gw-c, gw-s) sees each forwarded segment once, and no service \
     address is local";

/// The messages of the mirror's attach-point lines (`egress ...` and
/// `IF: attach ...`), without the log prefix.
fn attach_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|line| line.split_once("connmirror::engine: ").map(|(_, m)| m))
        .filter(|message| message.starts_with("egress ") || message.contains(": attach "))
        .collect()
}

#[test]
fn with_no_attach_point_a_veth_gateway_gets_tc_ingress_and_no_egress() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service),
    );
    let x = bidirectional(&topo, service, STREAM, TIMEOUT);
    let log = mirror.stderr();
    let (report, _dumps) = mirror.stop();

    assert_eq!(
        attach_lines(&log),
        [
            format!("egress none ({GATEWAY})"),
            format!("gw-c: attach tc ({VETH})"),
            format!("gw-s: attach tc ({VETH})"),
        ],
        "{log}"
    );
    let point = |iface: &str| AttachPoint {
        iface: iface.to_owned(),
        ingress: "tc".to_owned(),
        ingress_why: VETH.to_owned(),
        egress: "none".to_owned(),
        egress_why: GATEWAY.to_owned(),
    };
    assert_eq!(report.attach, [point("gw-c"), point("gw-s")]);
    assert_eq!(report.flows.len(), 1, "{:#?}", report.flows);
    let flow = &report.flows[0];
    assert_eq!(flow.status, FlowStatus::Complete, "{flow:#?}");
    flow.assert_byte_exact(&x);
    report.assert_drop_policy_held();
    assert_eq!(report.userspace.records, report.counter(Counter::Records));
}

#[test]
fn an_attach_point_asked_for_is_kept_and_the_reason_says_so() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .iface("gw-c:xdp-generic")
            .iface("gw-s")
            .egress("tc")
            .service(service),
    );
    let log = mirror.stderr();
    let (report, _dumps) = mirror.stop();

    assert_eq!(
        attach_lines(&log),
        [
            "egress tc (asked: --egress tc)".to_owned(),
            "gw-c: attach xdp-generic (asked: --iface gw-c:xdp-generic)".to_owned(),
            format!("gw-s: attach tc ({VETH})"),
        ],
        "{log}"
    );
    let ingress: Vec<_> = report
        .attach
        .iter()
        .map(|p| (p.iface.as_str(), p.ingress.as_str(), p.egress.as_str()))
        .collect();
    assert_eq!(
        ingress,
        [("gw-c", "xdp-generic", "tc"), ("gw-s", "tc", "tc")]
    );
}

/// The messages of the traced programs' lines (target `connmirror::ebpf`).
fn trace_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|line| line.split_once("connmirror::ebpf: ").map(|(_, m)| m))
        .collect()
}

#[test]
fn trace_ebpf_logs_the_decision_for_a_tracked_and_an_untracked_segment() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service)
            .arg("--trace-ebpf"),
    );
    let ifindex = topo
        .gateway
        .run(|| connmirror::sys::interface::index(GATEWAY_CLIENT_IF))
        .expect("gw-c has an index");
    let client = topo.client_addr(Family::V4);
    let untracked = topo.service(Family::V4, PORT + 1);
    let frame = |src_port: u16, dst: SocketAddr, seq: u32, payload: &[u8]| {
        TcpFrame {
            src_mac: link_mac(&topo.client, CLIENT_IF),
            dst_mac: link_mac(&topo.gateway, GATEWAY_CLIENT_IF),
            seq,
            payload: payload.to_vec(),
            ..TcpFrame::new(SocketAddr::new(client, src_port), dst)
        }
        .build()
    };
    let injector = FrameInjector::open(&topo.client, CLIENT_IF);
    injector.send_until_accepted(&frame(40000, service, 1000, b"hello"), TIMEOUT);
    injector.send_until_accepted(&frame(40001, untracked, 2000, b"world"), TIMEOUT);

    let expected = [
        format!(
            "tc-ingress if {ifindex}: tracked service 0 client-to-server \
             198.18.0.2:40000 > 198.18.1.2:7000 seq 1000 len 5: pass"
        ),
        format!(
            "tc-ingress if {ifindex}: untracked 198.18.0.2:40001 > 198.18.1.2:7001 \
             seq 2000 len 5: pass"
        ),
    ];
    let on_gw_c = format!("tc-ingress if {ifindex}: ");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = mirror.stderr();
    while trace_lines(&log)
        .iter()
        .filter(|l| l.starts_with(&on_gw_c))
        .count()
        < 2
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
        log = mirror.stderr();
    }
    let _ = mirror.stop();

    let seen: Vec<&str> = trace_lines(&log)
        .into_iter()
        .filter(|line| line.starts_with(&on_gw_c))
        .collect();
    assert_eq!(seen, expected, "{log}");
    assert!(
        log.contains("--trace-ebpf: the traced programs log every TCP segment they see"),
        "{log}"
    );
}

#[test]
fn without_trace_ebpf_the_programs_log_nothing() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service),
    );
    let x = bidirectional(&topo, service, 100_000, TIMEOUT);
    let log = mirror.stderr();
    let (report, _dumps) = mirror.stop();
    report.flows[0].assert_byte_exact(&x);
    assert_eq!(trace_lines(&log), Vec::<&str>::new(), "{log}");
}
