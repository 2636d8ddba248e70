//! Flows a takeover must not restore: one whose capture has a gap, one that
//! began before the standby started (no handshake seen). Each is reset with
//! the sequence number its client expects (so the client sees ECONNRESET
//! rather than a hang), counted by reason, and never rebuilt with missing or
//! invented bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use connmirror_tests::failover::{
    echo_primary, handoff_app, kill_primary, standby_command, takeover,
};
use connmirror_tests::mirror::Mirror;
use connmirror_tests::netns::Netns;
use connmirror_tests::topology::{CLIENT_IF, Family, Topology};
use connmirror_tests::traffic::stream_bytes;
use connmirror_tests::wire::WireWatch;

const PORT: u16 = 7000;
/// What the gapped flow pushes through a 64 KiB ring under `pass`.
const BURST: usize = 32 << 20;

fn connect(ns: &Netns, service: SocketAddr) -> TcpStream {
    ns.run(|| TcpStream::connect_timeout(&service, Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("connect to {service}: {e}"))
}

/// Writes `bytes` and reads their echo back, on two threads; asserts it is exact.
fn echo_round(stream: &mut TcpStream, bytes: &[u8]) {
    let mut writer = stream.try_clone().expect("dup");
    let mut echoed = vec![0u8; bytes.len()];
    thread::scope(|s| {
        s.spawn(|| writer.write_all(bytes).expect("write"));
        stream.read_exact(&mut echoed).expect("read the echo");
    });
    assert!(echoed == bytes, "the echo differs from what was sent");
}

fn unrecoverable(family: Family) {
    connmirror_tests::require_root();
    let topo = Topology::new();
    topo.disable_segmentation_offloads();
    let service = topo.service(family, PORT);
    let mut primary = echo_primary(&topo, service);
    let mut mid_stream = connect(&topo.client, service);
    echo_round(&mut mid_stream, &stream_bytes(1, 1000));

    // A 64 KiB ring with dump files (a slow reader) under `pass`: a burst
    // overflows it, and the flow is marked gapped.
    let command = standby_command(&topo, &service.to_string())
        .ring_size("64K")
        .on_ring_full("pass");
    let standby = Mirror::start(&topo.gateway, &command);
    echo_round(&mut mid_stream, &stream_bytes(2, 100));
    let mut gapped = connect(&topo.client, service);
    echo_round(&mut gapped, &stream_bytes(3, BURST));
    // Fresh acknowledgments, captured with the ring empty again: the reset
    // needs the client's latest one.
    echo_round(&mut gapped, &stream_bytes(4, 100));
    echo_round(&mut mid_stream, &stream_bytes(5, 100));
    thread::sleep(Duration::from_millis(300));
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    kill_primary(&topo, &mut primary);
    let report = takeover(&topo.gateway, &standby.control_socket(), &[]);
    let mut outcomes = Vec::new();
    for stream in [&mut mid_stream, &mut gapped] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("SO_RCVTIMEO");
        outcomes.push(stream.read(&mut [0u8; 16]).map_err(|e| e.kind()));
    }
    thread::sleep(Duration::from_millis(200));
    let seen = watch.stop();
    let (final_report, _dir) = standby.stop();

    assert_eq!(report.restored, 0, "{report:#?}");
    let reasons: Vec<(&str, u64)> = (report.unrecoverable.iter())
        .map(|(reason, n)| (reason.as_str(), *n))
        .collect();
    assert_eq!(reasons, [("gapped", 1), ("no-handshake", 1)], "{report:#?}");
    assert_eq!(report.reset, 2);
    assert_eq!(outcomes, [Err(ErrorKind::ConnectionReset); 2]);
    let mut rsts = seen.rsts_received.clone();
    rsts.sort();
    let mut expected = vec![
        (service, mid_stream.local_addr().unwrap()),
        (service, gapped.local_addr().unwrap()),
    ];
    expected.sort();
    assert_eq!(rsts, expected, "exactly one RST to each client");
    assert!(final_report.counters["gaps_marked"] > 0);
    assert_eq!(final_report.takeovers, vec![report]);
}

#[test]
fn gapped_and_mid_stream_flows_are_reset_and_counted_v4() {
    unrecoverable(Family::V4);
}

#[test]
fn gapped_and_mid_stream_flows_are_reset_and_counted_v6() {
    unrecoverable(Family::V6);
}

/// With `--mid-stream restore`, a flow first seen mid-stream is rebuilt with
/// conservative options (MSS 536, no window scaling, no SACK) instead of being
/// reset, and its client's same socket goes on echoing exactly. Only a small
/// exchange: neither window-scale shift is known, and a bulk transfer after such
/// a restore crawls (see the `--mid-stream` help).
fn mid_stream_restored(family: Family) {
    connmirror_tests::require_root();
    let topo = Topology::new();
    let service = topo.service(family, PORT);
    let mut primary = echo_primary(&topo, service);
    let mut stream = connect(&topo.client, service);
    echo_round(&mut stream, &stream_bytes(1, 1000));
    let command = standby_command(&topo, &format!("{service}=full"))
        .without_dumps()
        .arg("--mid-stream")
        .arg("restore");
    let standby = Mirror::start(&topo.gateway, &command);
    let _app = handoff_app(&topo, &standby, service);
    echo_round(&mut stream, &stream_bytes(2, 100));
    thread::sleep(Duration::from_millis(300));

    kill_primary(&topo, &mut primary);
    let report = takeover(&topo.gateway, &standby.control_socket(), &[]);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("SO_RCVTIMEO");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("SO_SNDTIMEO");
    echo_round(&mut stream, &stream_bytes(3, 2_000));
    let (final_report, _dir) = standby.stop();

    assert_eq!((report.restored, report.handed_off), (1, 1), "{report:#?}");
    assert_eq!(report.unrecoverable_total(), 0, "{report:#?}");
    assert_eq!(final_report.takeovers, vec![report]);
}

#[test]
fn mid_stream_flow_is_restored_when_the_policy_says_so_v4() {
    mid_stream_restored(Family::V4);
}

#[test]
fn mid_stream_flow_is_restored_when_the_policy_says_so_v6() {
    mid_stream_restored(Family::V6);
}
