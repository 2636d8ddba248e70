//! Sequence numbers that wrap past 2^32 in the middle of a captured stream.
//!
//! TCP sequence numbers are 32 bits and wrap (RFC 9293 §3.4); the mirror maps them
//! onto 64-bit stream offsets. The kernel's random ISNs would make a wrap within
//! a few megabytes a rare accident, so both ends of the connection are built with
//! `TCP_REPAIR` ([`connmirror_tests::repair`]) at chosen sequence numbers just below
//! 2^32. No handshake crosses the gateway: the mirror sees the flow first
//! mid-stream, with its first data segment.

use std::net::SocketAddr;
use std::time::Duration;

use connmirror_tests::mirror::FlowStatus;
use connmirror_tests::repair::{WRAP_CLIENT_SEQ, WRAP_SERVER_SEQ, wrapping_pair};
use connmirror_tests::traffic::exchange;
use connmirror_tests::{Family, Mirror, MirrorCommand, Topology, require_root};

const PORT: u16 = 7000;
/// The client's port (the namespaces are fresh: nothing else uses it).
const CLIENT_PORT: u16 = 41000;
const STREAM_BYTES: u64 = 8_000_000;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(120);

// Both directions cross 2^32 within the bytes sent.
const _: () = assert!(WRAP_CLIENT_SEQ as u64 + STREAM_BYTES > 1 << 32);
const _: () = assert!(WRAP_SERVER_SEQ as u64 + STREAM_BYTES > 1 << 32);

fn sequence_numbers_wrapping_past_2_32_reassemble_exactly_in(family: Family) {
    require_root();
    let topo = Topology::new();
    let service = topo.service(family, PORT);
    let client = SocketAddr::new(topo.client_addr(family), CLIENT_PORT);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service),
    );

    let (client_stream, server_stream) = wrapping_pair(&topo, client, service);
    let x = exchange(client_stream, server_stream, STREAM_BYTES, TRAFFIC_TIMEOUT);
    let (report, _dir) = mirror.stop();

    assert_eq!(x.client.sent_bytes, STREAM_BYTES);
    assert_eq!(x.server.sent_bytes, STREAM_BYTES);
    assert_eq!(
        x.server.received, x.client.sent,
        "client → server at the server"
    );
    assert_eq!(
        x.client.received, x.server.sent,
        "server → client at the client"
    );
    assert_eq!(x.client.addr, client);
    assert_eq!(x.server.addr, service);

    assert_eq!(report.flows.len(), 1, "flows: {:#?}", report.flows);
    let flow = &report.flows[0];
    assert_eq!((flow.server, flow.client), (service, client), "{flow:#?}");
    assert!(!flow.handshake, "no SYN crossed the gateway: {flow:#?}");
    assert!(!flow.rst, "{flow:#?}");
    assert_eq!(x.client.sent_bytes, STREAM_BYTES);
    assert_eq!(x.server.sent_bytes, STREAM_BYTES);
    flow.assert_byte_exact(&x);
    assert_eq!(flow.status, FlowStatus::Complete, "{flow:#?}");
    assert_eq!(flow.kernel_gaps, 0, "{flow:#?}");
}

#[test]
fn sequence_numbers_wrapping_past_2_32_reassemble_exactly() {
    sequence_numbers_wrapping_past_2_32_reassemble_exactly_in(Family::V4);
}

#[test]
fn sequence_numbers_wrapping_past_2_32_reassemble_exactly_v6() {
    sequence_numbers_wrapping_past_2_32_reassemble_exactly_in(Family::V6);
}
