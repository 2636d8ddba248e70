//! The receiving end against messages sent by hand over a real socketpair,
//! with real TCP sockets (loopback connections) as the passed descriptors.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::Application;
use crate::wire::{FlowMeta, Recorded, encode_bundle_head, send_message};

const PATH: &str = "/test/handoff.sock";
const TIMEOUT: Duration = Duration::from_secs(5);

/// An application speaking `version` and the daemon's end of its socket.
fn registered(version: u16) -> (Application, UnixStream) {
    let (app, daemon) = UnixStream::pair().expect("socketpair");
    (
        Application::registered(Path::new(PATH), app, version),
        daemon,
    )
}

/// `n` loopback connections: (the ends to pass, the clients' ends).
fn connections(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            (server, client)
        })
        .unzip()
}

/// Deterministic bytes: `len` of them, depending on `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7)) as u8)
        .collect()
}

/// Flow `id` of `server`, with `c2s` and `s2c` recorded bytes.
fn flow(id: u64, server: &TcpStream, c2s: usize, s2c: usize) -> (FlowMeta, Vec<u8>, Vec<u8>) {
    let range = |len: usize| Recorded {
        start: 5,
        end: 5 + len as u64,
        acked: 5,
    };
    let meta = FlowMeta {
        id,
        service: server.local_addr().unwrap(),
        server: server.local_addr().unwrap(),
        client: server.peer_addr().unwrap(),
        c2s: range(c2s),
        s2c: range(s2c),
    };
    (meta, bytes(id, c2s), bytes(!id, s2c))
}

type Flow = (FlowMeta, Vec<u8>, Vec<u8>);

/// Sends `head`, then each flow's bytes, with `fds` in `SCM_RIGHTS`.
fn send(daemon: &UnixStream, head: &[u8], flows: &[Flow], fds: &[BorrowedFd<'_>]) {
    let mut parts: Vec<IoSlice<'_>> = std::iter::once(head)
        .chain(flows.iter().flat_map(|(_, c2s, s2c)| [&c2s[..], &s2c[..]]))
        .map(IoSlice::new)
        .collect();
    send_message(daemon.as_fd(), &mut parts, fds).expect("send the message");
}

/// Sends `flows` as one version-2 bundle carrying `fds`.
fn send_bundle(daemon: &UnixStream, flows: &[Flow], fds: &[BorrowedFd<'_>]) {
    let head = encode_bundle_head(flows.iter().map(|(meta, ..)| meta));
    send(daemon, &head, flows, fds);
}

fn fds_of(streams: &[TcpStream]) -> Vec<BorrowedFd<'_>> {
    streams.iter().map(AsFd::as_fd).collect()
}

/// The received socket and `client` are the two ends of one connection.
fn assert_connected(received: &mut TcpStream, client: &mut TcpStream, id: u64) {
    let word = id.to_be_bytes();
    received.write_all(&word).unwrap();
    let mut got = [0u8; 8];
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(
        got, word,
        "flow {id}: the application's bytes reach the client"
    );
    client.write_all(&word).unwrap();
    received.set_read_timeout(Some(TIMEOUT)).unwrap();
    received.read_exact(&mut got).unwrap();
    assert_eq!(
        got, word,
        "flow {id}: the client's bytes reach the application"
    );
}

/// Every server end is closed everywhere (the test's own copies are dropped
/// before): each client reads end of stream, not a timeout.
fn assert_all_closed(clients: Vec<TcpStream>) {
    for (i, mut client) in clients.into_iter().enumerate() {
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf);
        assert!(
            matches!(read, Ok(0)),
            "connection {i}: a received descriptor stayed open ({read:?})"
        );
    }
}

fn receive_error(app: &mut Application) -> String {
    app.next().expect_err("a malformed message").to_string()
}

fn malformed(reason: &str) -> String {
    format!("malformed handoff message from the daemon at {PATH}: {reason}")
}

#[test]
fn a_bundle_of_several_sockets_round_trips_and_next_returns_them_in_order() {
    let (mut app, daemon) = registered(2);
    let (servers, mut clients) = connections(7);
    // Byte counts from none to more than a socket buffer, and a second bundle
    // whose descriptors must come with it, not with the first.
    let sizes = [(0, 0), (3, 0), (0, 9), (300_001, 17), (1, 1)];
    let first: Vec<Flow> = (servers[..5].iter().zip(sizes).enumerate())
        .map(|(i, (s, (c2s, s2c)))| flow(i as u64 + 1, s, c2s, s2c))
        .collect();
    let second: Vec<Flow> = (servers[5..].iter().enumerate())
        .map(|(i, s)| flow(i as u64 + 6, s, 2, 2))
        .collect();
    let sender = std::thread::spawn(move || {
        send_bundle(&daemon, &first, &fds_of(&servers[..5]));
        send_bundle(&daemon, &second, &fds_of(&servers[5..]));
        (daemon, first.into_iter().chain(second).collect::<Vec<_>>())
    });
    let mut got: Vec<_> = (0..5).map(|_| app.next().unwrap().unwrap()).collect();
    got.extend(app.next_bundle().unwrap().expect("the second bundle"));
    let (daemon, sent) = sender.join().unwrap();

    assert_eq!(got.len(), 7);
    for (i, (handoff, (meta, c2s, s2c))) in got.iter_mut().zip(&sent).enumerate() {
        assert_eq!(&handoff.meta, meta);
        assert_eq!((&handoff.c2s, &handoff.s2c), (c2s, s2c), "flow {}", meta.id);
        assert_eq!(handoff.stream.peer_addr().unwrap(), meta.client);
        assert_connected(&mut handoff.stream, &mut clients[i], meta.id);
    }
    assert_eq!(got[3].c2s.len(), 300_001);
    drop(daemon);
    assert!(app.next().unwrap().is_none(), "end of stream");
}

#[test]
fn a_bundle_of_253_sockets_arrives_whole() {
    let (mut app, daemon) = registered(2);
    let (servers, mut clients) = connections(253);
    let flows: Vec<Flow> = (servers.iter().enumerate())
        .map(|(i, s)| flow(i as u64 + 1, s, 1, 0))
        .collect();
    send_bundle(&daemon, &flows, &fds_of(&servers));
    drop(servers);
    let mut got = app.next_bundle().unwrap().expect("a bundle");
    assert_eq!(got.len(), 253);
    for (i, handoff) in got.iter_mut().enumerate() {
        assert_eq!(handoff.meta.id, i as u64 + 1);
        assert_connected(&mut handoff.stream, &mut clients[i], i as u64 + 1);
    }
}

#[test]
fn version_1_receives_one_message_per_connection() {
    let (mut app, daemon) = registered(1);
    let (servers, mut clients) = connections(2);
    let flows = [
        flow(41, &servers[0], 70_000, 3),
        flow(42, &servers[1], 0, 5),
    ];
    for (flow, server) in flows.iter().zip(&servers) {
        let head = flow.0.encode_header();
        send(
            &daemon,
            &head,
            std::slice::from_ref(flow),
            &[server.as_fd()],
        );
    }
    drop(daemon);
    for (i, (meta, c2s, s2c)) in flows.iter().enumerate() {
        let mut got = app.next().unwrap().expect("a handoff");
        assert_eq!((&got.meta, &got.c2s, &got.s2c), (meta, c2s, s2c));
        assert_connected(&mut got.stream, &mut clients[i], meta.id);
    }
    assert!(app.next().unwrap().is_none());
}

#[test]
fn fewer_descriptors_than_headers_is_refused_and_all_are_closed() {
    let (mut app, daemon) = registered(2);
    let (servers, clients) = connections(3);
    let flows: Vec<Flow> = (servers.iter().enumerate())
        .map(|(i, s)| flow(i as u64 + 1, s, 4, 4))
        .collect();
    send_bundle(&daemon, &flows, &fds_of(&servers[..2]));
    drop(servers);
    assert_eq!(
        receive_error(&mut app),
        malformed("a bundle of 3 flows (the first 1) came with 2 descriptors, expected 3")
    );
    assert_all_closed(clients);
}

#[test]
fn more_descriptors_than_headers_is_refused_and_all_are_closed() {
    let (mut app, daemon) = registered(2);
    let (servers, clients) = connections(3);
    let flows: Vec<Flow> = (servers[..2].iter().enumerate())
        .map(|(i, s)| flow(i as u64 + 7, s, 0, 1))
        .collect();
    send_bundle(&daemon, &flows, &fds_of(&servers));
    drop(servers);
    assert_eq!(
        receive_error(&mut app),
        malformed("a bundle of 2 flows (the first 7) came with 3 descriptors, expected 2")
    );
    assert_all_closed(clients);
}

#[test]
fn two_descriptors_with_one_version_1_message_are_refused() {
    let (mut app, daemon) = registered(1);
    let (servers, clients) = connections(2);
    let one = flow(9, &servers[0], 1, 1);
    let head = one.0.encode_header();
    send(&daemon, &head, &[one], &fds_of(&servers));
    drop(servers);
    assert_eq!(
        receive_error(&mut app),
        malformed("flow 9 came with 2 descriptors, expected exactly one")
    );
    assert_all_closed(clients);
}

#[test]
fn a_descriptor_that_is_not_tcp_is_refused_and_all_are_closed() {
    let (mut app, daemon) = registered(2);
    let (servers, clients) = connections(2);
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let flows: Vec<Flow> = (servers.iter().enumerate())
        .map(|(i, s)| flow(i as u64 + 1, s, 2, 2))
        .chain([flow(3, &servers[0], 0, 0)])
        .collect();
    let fds = [servers[0].as_fd(), servers[1].as_fd(), udp.as_fd()];
    send_bundle(&daemon, &flows, &fds);
    drop(servers);
    assert_eq!(
        receive_error(&mut app),
        malformed(
            "the descriptor of flow 3 is not a TCP socket (SO_TYPE Datagram, SO_PROTOCOL 17)"
        )
    );
    assert_all_closed(clients);
}

#[test]
fn a_bundle_cut_short_is_refused_and_all_are_closed() {
    let (mut app, daemon) = registered(2);
    let (servers, clients) = connections(2);
    let flows: Vec<Flow> = (servers.iter().enumerate())
        .map(|(i, s)| flow(i as u64 + 1, s, 10, 10))
        .collect();
    // The head and the first flow's bytes, then only 3 of the second's c2s.
    let mut head = encode_bundle_head(flows.iter().map(|(meta, ..)| meta));
    head.extend_from_slice(&flows[0].1);
    head.extend_from_slice(&flows[0].2);
    head.extend_from_slice(&flows[1].1[..3]);
    send(&daemon, &head, &[], &fds_of(&servers));
    drop((daemon, servers));
    assert_eq!(
        receive_error(&mut app),
        malformed("the daemon closed the connection after 3 of 10 bytes of the c2s")
    );
    assert_all_closed(clients);
}

#[test]
fn a_bundle_of_no_connection_is_refused() {
    let (mut app, daemon) = registered(2);
    let (servers, clients) = connections(1);
    send(&daemon, &0u32.to_be_bytes(), &[], &fds_of(&servers));
    drop(servers);
    assert_eq!(
        receive_error(&mut app),
        malformed("bundle announces 0 connections, expected 1 to 253")
    );
    assert_all_closed(clients);
}
