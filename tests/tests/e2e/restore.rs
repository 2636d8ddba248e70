//! `connmirror::repair::restore`: the server end of a live connection, dumped and cut the
//! way a failover finds it, is rebuilt with `TCP_REPAIR` and the client's own
//! socket carries on.
//!
//! Every test runs in fresh namespaces ([`Topology`]: client ↔ gateway ↔ server)
//! and needs root.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::thread;
use std::time::{Duration, Instant};

use connmirror::repair::restore::{
    QueueMode, RepairedSocket, RestoreOptions, RestorePlan, RestoreWindow, WindowScale, build_all,
    leave_all,
};
use connmirror_tests::repair::{build_in, cut, tcp_info};
use connmirror_tests::traffic::{exchange, stream_bytes};
use connmirror_tests::{Digest, Family, Netns, Topology, require_root};

const PORT: u16 = 7000;
/// Bytes each side sends (and the other checks) before the cut.
const PROLOGUE_BYTES: usize = 100_000;
/// Server → client bytes written while the client is unreachable: still in the
/// server's send queue, unacknowledged, when it is cut.
const UNACKED_BYTES: usize = 50_000;
/// Bytes each way after the restore.
const AFTER_BYTES: u64 = 1_000_000;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Seeds of the data sent before the cut (distinct from the exchange's).
const PROLOGUE_C2S_SEED: u64 = 0x7072_6f6c_6f67_7565;
const PROLOGUE_S2C_SEED: u64 = 0x6575_676f_6c6f_7270;
const UNACKED_SEED: u64 = 0x756e_6163_6b65_6421;
/// With timestamps on, every segment carries 12 bytes of options
/// (`TCPOLEN_TSTAMP_ALIGNED`), which `tcpi_snd_mss` leaves out.
const TIMESTAMP_OPTION: u32 = 12;

/// A second address of the server: the service address, which a failover removes
/// while it rebuilds sockets and adds back before they leave repair mode.
fn service_ip(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 3)),
    }
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Adds (`"add"`) or removes (`"del"`) the service address on the server.
fn service_address(topo: &Topology, family: Family, verb: &str) {
    let addr = host_prefix(service_ip(family));
    let mut args = vec!["addr", verb, &addr, "dev", "eth0"];
    if family == Family::V6 && verb == "add" {
        args.push("nodad");
    }
    topo.server.ip(args);
}

/// A gateway blackhole route to the client: whatever the server sends it is
/// dropped silently (no ICMP error reaches the server).
fn blackhole(topo: &Topology, family: Family, verb: &str) {
    let dest = host_prefix(topo.client_addr(family));
    topo.gateway.ip(["route", verb, "blackhole", &dest]);
}

/// A connection opened the ordinary way: (client stream, server stream).
fn connect(topo: &Topology, service: SocketAddr) -> (TcpStream, TcpStream) {
    let listener = topo
        .server
        .run(|| TcpListener::bind(service))
        .unwrap_or_else(|e| panic!("bind {service}: {e}"));
    let client = topo
        .client
        .run(|| TcpStream::connect_timeout(&service, TIMEOUT))
        .unwrap_or_else(|e| panic!("connect to {service}: {e}"));
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_read_timeout(Some(TIMEOUT)).expect("set_read_timeout");
        s.set_write_timeout(Some(TIMEOUT))
            .expect("set_write_timeout");
    }
    (client, server)
}

/// Writes `data` on `from` and reads exactly as many bytes on `to`, on two
/// threads (so a large `data` never deadlocks on full buffers).
fn transfer(mut from: &TcpStream, mut to: &TcpStream, data: &[u8]) -> Vec<u8> {
    thread::scope(|s| {
        s.spawn(move || from.write_all(data).expect("write"));
        let mut got = vec![0u8; data.len()];
        to.read_exact(&mut got).expect("read_exact");
        got
    })
}

/// Some traffic each way, so the state the cut dumps is not the handshake's.
fn prologue(client: &TcpStream, server: &TcpStream) {
    let up = stream_bytes(PROLOGUE_C2S_SEED, PROLOGUE_BYTES);
    let down = stream_bytes(PROLOGUE_S2C_SEED, PROLOGUE_BYTES);
    assert_eq!(Digest::of(&transfer(client, server, &up)), Digest::of(&up));
    assert_eq!(
        Digest::of(&transfer(server, client, &down)),
        Digest::of(&down)
    );
}

/// The whole failover of one live connection: cut the server end with bytes
/// still unacknowledged, rebuild it while the service address is gone, add the
/// address back, leave repair; the client's socket must receive exactly the
/// missing bytes and then carry 1 MB each way.
fn restored_socket_continues_a_live_connection(family: Family, queue: QueueMode) {
    require_root();
    let topo = Topology::new();
    service_address(&topo, family, "add");
    let service = SocketAddr::new(service_ip(family), PORT);
    let (client, server) = connect(&topo, service);
    prologue(&client, &server);
    let original = tcp_info(&server);

    blackhole(&topo, family, "add");
    let unacked = stream_bytes(UNACKED_SEED, UNACKED_BYTES);
    (&server)
        .write_all(&unacked)
        .expect("write while the client is unreachable");
    thread::sleep(Duration::from_millis(100));
    let plan = cut(server, queue);
    service_address(&topo, family, "del");
    blackhole(&topo, family, "del");

    assert_eq!(plan.send_queue.len(), UNACKED_BYTES, "dumped send queue");
    assert_eq!(Digest::of(&plan.send_queue), Digest::of(&unacked));
    let mss = match family {
        Family::V4 => 1460,
        Family::V6 => 1440,
    };
    assert_eq!(plan.options.mss, mss, "{plan:?}");
    assert!(
        plan.options.sack && plan.options.timestamps,
        "{:?}",
        plan.options
    );
    assert!(plan.options.window_scale.is_some(), "{:?}", plan.options);

    let repaired = build_in(&topo.server, &plan);
    service_address(&topo, family, "add");
    let start = Instant::now();
    let restored = repaired.leave_repair().unwrap_or_else(|e| panic!("{e}"));
    // Read before any data is acknowledged, while it is still `tcp_connect_init()`'s.
    let restored_mss = tcp_info(&restored).tcpi_snd_mss;

    let mut missing = vec![0u8; UNACKED_BYTES];
    (&client)
        .read_exact(&mut missing)
        .expect("client reads the unacknowledged bytes");
    eprintln!(
        "{family:?} {queue:?}: the client had the {UNACKED_BYTES} unacknowledged bytes {:?} after leaving repair",
        start.elapsed()
    );
    assert_eq!(Digest::of(&missing), Digest::of(&unacked));
    assert_eq!(restored_mss, original.tcpi_snd_mss);
    assert_eq!(restored_mss, u32::from(mss) - TIMESTAMP_OPTION);

    let x = exchange(client, restored, AFTER_BYTES, TIMEOUT);
    assert_eq!(
        (x.client.sent_bytes, x.server.sent_bytes),
        (AFTER_BYTES, AFTER_BYTES)
    );
    assert_eq!(
        x.server.received, x.client.sent,
        "client → server after the restore"
    );
    assert_eq!(
        x.client.received, x.server.sent,
        "server → client after the restore"
    );
    assert_eq!(
        (x.server.addr, x.client.addr.ip()),
        (service, topo.client_addr(family))
    );
}

#[test]
fn restored_socket_continues_a_live_connection_v4() {
    restored_socket_continues_a_live_connection(Family::V4, QueueMode::Sent);
}

#[test]
fn restored_socket_continues_a_live_connection_v6() {
    restored_socket_continues_a_live_connection(Family::V6, QueueMode::Sent);
}

#[test]
fn restored_socket_continues_a_live_connection_with_unsent_queue_v4() {
    restored_socket_continues_a_live_connection(Family::V4, QueueMode::Unsent);
}

#[test]
fn restored_socket_continues_a_live_connection_with_unsent_queue_v6() {
    restored_socket_continues_a_live_connection(Family::V6, QueueMode::Unsent);
}

/// The client advertises MSS 600 (its route's `advmss`); the restored socket
/// sends 600-byte segments, as the original did, and not the 536 / 1220 of a
/// socket whose MSS was given only through `TCP_REPAIR_OPTIONS`.
fn restored_socket_sends_segments_of_the_clients_mss(family: Family) {
    const CLIENT_MSS: u16 = 600;
    require_root();
    let topo = Topology::new();
    let (route, via) = match family {
        Family::V4 => ("198.18.1.0/24", "198.18.0.1"),
        Family::V6 => ("fd00:0:0:2::/64", "fd00:0:0:1::1"),
    };
    topo.client.ip([
        "route",
        "change",
        route,
        "via",
        via,
        "advmss",
        &CLIENT_MSS.to_string(),
    ]);
    let service = topo.service(family, PORT);
    let (client, server) = connect(&topo, service);
    prologue(&client, &server);
    let original = tcp_info(&server).tcpi_snd_mss;
    let plan = cut(server, QueueMode::Sent);
    assert_eq!(plan.options.mss, CLIENT_MSS);

    let restored = build_in(&topo.server, &plan)
        .leave_repair()
        .unwrap_or_else(|e| panic!("{e}"));
    // Before any data: `mss_cache` comes from `tcp_connect_init()` alone (without
    // `TCP_MAXSEG` before `connect()` it was 524 here, and 1208 on IPv6).
    let expected = u32::from(CLIENT_MSS) - TIMESTAMP_OPTION;
    assert_eq!(tcp_info(&restored).tcpi_snd_mss, expected);
    let down = stream_bytes(PROLOGUE_S2C_SEED, AFTER_BYTES as usize);
    assert_eq!(
        Digest::of(&transfer(&restored, &client, &down)),
        Digest::of(&down)
    );

    assert_eq!(original, expected);
    assert_eq!(tcp_info(&restored).tcpi_snd_mss, expected);
    // What the client measured from the restored socket's segments
    // (`tcp_measure_rcv_mss()`: payload or GSO size of each segment received).
    assert_eq!(tcp_info(&client).tcpi_rcv_mss, expected);
}

#[test]
fn restored_socket_sends_segments_of_the_clients_mss_v4() {
    restored_socket_sends_segments_of_the_clients_mss(Family::V4);
}

#[test]
fn restored_socket_sends_segments_of_the_clients_mss_v6() {
    restored_socket_sends_segments_of_the_clients_mss(Family::V6);
}

/// `Tcp:` counters of the namespace (`/proc/thread-self/net/snmp`, read from a
/// thread inside it), e.g. `OutSegs`, `OutRsts`.
fn tcp_counter(ns: &Netns, name: &str) -> u64 {
    let snmp = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .expect("read /proc/thread-self/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().expect("Tcp: names"),
        tcp.next().expect("Tcp: values"),
    );
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no Tcp counter {name}"));
    values
        .split_whitespace()
        .nth(i)
        .expect("value")
        .parse()
        .expect("number")
}

#[test]
fn reset_sends_one_rst_the_client_accepts() {
    require_root();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let (mut client, server) = connect(&topo, service);
    prologue(&client, &server);
    let plan = cut(server, QueueMode::Sent);
    let rsts = tcp_counter(&topo.server, "OutRsts");

    build_in(&topo.server, &plan)
        .reset()
        .unwrap_or_else(|e| panic!("{e}"));

    let err = client
        .read(&mut [0u8; 16])
        .expect_err("the client's read fails");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(tcp_counter(&topo.server, "OutRsts") - rsts, 1);
}

/// A plan for a flow that never existed: `client` in the client namespace has no
/// socket; nothing is sent as long as the socket stays in repair mode.
fn synthetic_plan(server: SocketAddr, client: SocketAddr, seq: u32) -> RestorePlan {
    RestorePlan {
        server,
        client,
        send_seq: seq,
        recv_seq: seq ^ 0x8000_0000,
        send_queue: Vec::new(),
        options: RestoreOptions {
            mss: 1460,
            window_scale: Some(WindowScale {
                send: 7,
                receive: 7,
            }),
            sack: true,
            timestamps: true,
        },
        window: RestoreWindow {
            snd_wl1: seq ^ 0x8000_0000,
            snd_wnd: 64 * 1024,
            max_window: 64 * 1024,
            rcv_wnd: 64 * 1024,
            rcv_wup: seq ^ 0x8000_0000,
        },
        timestamp: Some(1_000_000),
        queue: QueueMode::Sent,
    }
}

#[test]
fn invalid_window_is_refused_naming_the_call_and_the_flow() {
    require_root();
    let topo = Topology::new();
    let server = topo.service(Family::V4, PORT);
    let client = SocketAddr::new(topo.client_addr(Family::V4), 40312);
    let mut plan = synthetic_plan(server, client, 0xfffe_0000);
    // `rcv_wup` after `rcv_nxt`: `tcp_repair_set_window()` returns EINVAL.
    plan.window.rcv_wup = plan.recv_seq.wrapping_add(1);

    let err = topo
        .server
        .run(|| RepairedSocket::build(&plan))
        .expect_err("invalid window");
    assert_eq!(
        err.to_string(),
        "setsockopt(TCP_REPAIR_WINDOW) on 198.18.1.2:7000 ↔ 198.18.0.2:40312: Invalid argument (os error 22)"
    );
    assert_eq!(err.call, "setsockopt(TCP_REPAIR_WINDOW)");
}

#[test]
fn a_dump_with_unread_client_bytes_is_refused_naming_them() {
    require_root();
    let topo = Topology::new();
    service_address(&topo, Family::V4, "add");
    let service = topo.service(Family::V4, PORT);
    let (mut client, server) = connect(&topo, service);
    client.write_all(&[7u8; 100]).expect("write");
    let deadline = Instant::now() + TIMEOUT;
    let mut peeked = [0u8; 100];
    while server.peek(&mut peeked).expect("peek") < 100 {
        assert!(Instant::now() < deadline, "the 100 bytes never arrived");
        thread::sleep(Duration::from_millis(5));
    }
    let client_end = client.local_addr().expect("local_addr");

    let err = connmirror::repair::save::save(&server, QueueMode::Sent).expect_err("unread bytes");

    assert_eq!(
        err.to_string(),
        format!("ioctl(SIOCINQ) on {service} ↔ {client_end}: 100 received bytes are not read yet")
    );
}

#[test]
fn a_flow_restored_twice_is_refused_at_connect_v6() {
    require_root();
    let topo = Topology::new();
    let server = topo.service(Family::V6, PORT);
    let client = SocketAddr::new(topo.client_addr(Family::V6), 40312);
    let plan = synthetic_plan(server, client, 7);

    let _first = build_in(&topo.server, &plan);
    let err = topo
        .server
        .run(|| RepairedSocket::build(&plan))
        .expect_err("same 4-tuple twice");
    assert_eq!(
        err.to_string(),
        "connect on [fd00:0:0:2::2]:7000 ↔ [fd00:0:0:1::2]:40312: Cannot assign requested address (os error 99)"
    );
}

/// `SO_NETNS_COOKIE` (Linux ≥ 5.14): which network namespace a socket belongs to.
fn netns_cookie(fd: impl AsFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is valid for writing `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(SO_NETNS_COOKIE): {}",
        std::io::Error::last_os_error()
    );
    cookie
}

/// `n` flows from the client address to the server's service port, each with
/// its own client port and sequence numbers.
fn many_plans(topo: &Topology, n: u16) -> Vec<RestorePlan> {
    let server = topo.service(Family::V4, PORT);
    (0..n)
        .map(|i| {
            let client = SocketAddr::new(topo.client_addr(Family::V4), 20_000 + i);
            synthetic_plan(server, client, u32::from(i).wrapping_mul(0x9e37_79b9))
        })
        .collect()
}

#[test]
fn build_all_builds_every_socket_in_the_callers_namespace_and_sends_nothing() {
    const FLOWS: u16 = 1_000;
    require_root();
    let topo = Topology::new();
    let plans = many_plans(&topo, FLOWS);
    let sent_before = tcp_counter(&topo.server, "OutSegs");

    let (sockets, elapsed) = topo.server.run(|| {
        let start = Instant::now();
        (build_all(&plans, 2), start.elapsed())
    });
    eprintln!("build_all: {FLOWS} sockets in {elapsed:?} on 2 workers");

    let server_ns = topo
        .server
        .run(|| netns_cookie(TcpListener::bind("127.0.0.1:0").expect("bind")));
    let own_ns = netns_cookie(TcpListener::bind("127.0.0.1:0").expect("bind"));
    assert_ne!(server_ns, own_ns);
    let sockets: Vec<RepairedSocket> = sockets
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(sockets.len(), usize::from(FLOWS));
    for (socket, plan) in sockets.iter().zip(&plans) {
        assert_eq!(socket.flow(), (plan.server, plan.client));
        assert_eq!(netns_cookie(socket), server_ns, "{socket:?}");
    }
    // Closing in repair mode sends nothing (`tcp_disconnect()` with `tp->repair`).
    drop(sockets);
    assert_eq!(tcp_counter(&topo.server, "OutSegs"), sent_before);
}

/// Not a benchmark with a threshold: prints how long 10,000 sockets take to build
/// and to leave repair mode on 2 workers. Every window probe meets a client
/// namespace with no socket and is answered with a RST, which does not matter
/// here.
#[test]
fn ten_thousand_flows_build_and_leave_repair() {
    const FLOWS: u16 = 10_000;
    require_root();
    let topo = Topology::new();
    let plans = many_plans(&topo, FLOWS);

    let (built, left, build_time, leave_time) = topo.server.run(|| {
        let start = Instant::now();
        let built: Vec<_> = build_all(&plans, 2)
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let build_time = start.elapsed();
        let n = built.len();
        let start = Instant::now();
        let left = leave_all(built, 2);
        (n, left, build_time, start.elapsed())
    });
    eprintln!(
        "{FLOWS} sockets: build_all {build_time:?}, leave_all {leave_time:?}, total {:?}",
        build_time + leave_time
    );
    assert_eq!(built, usize::from(FLOWS));
    assert_eq!(
        left.iter().filter(|r| r.is_ok()).count(),
        usize::from(FLOWS)
    );
}

#[test]
fn timestamp_low_bit_is_cleared_so_the_clock_stays_in_milliseconds() {
    const TSVAL: u32 = 0x1234_5679;
    require_root();
    let topo = Topology::new();
    let client = SocketAddr::new(topo.client_addr(Family::V4), 40312);
    let mut plan = synthetic_plan(topo.service(Family::V4, PORT), client, 7);
    plan.timestamp = Some(TSVAL);

    let socket = build_in(&topo.server, &plan);
    let first = tsval(&socket);
    thread::sleep(Duration::from_millis(200));
    let second = tsval(&socket);

    assert_eq!(first & 1, 0, "{first:#x}");
    assert!((TSVAL - 1..TSVAL + 100).contains(&first), "{first:#x}");
    // Milliseconds: about 200 in 200 ms (a microsecond clock would give 200,000).
    assert!(
        (200..400).contains(&second.wrapping_sub(first)),
        "{first} → {second}"
    );
}

/// `getsockopt(TCP_TIMESTAMP)`: the socket's current TSval.
fn tsval(fd: impl AsFd) -> u32 {
    let mut value = 0u32;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: `value` is valid for writing `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_TIMESTAMP,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(TCP_TIMESTAMP): {}",
        std::io::Error::last_os_error()
    );
    value
}

/// A connection that negotiated no window scaling: the restored socket must
/// advertise its window unshifted. (Without `TCPOPT_WINDOW` 0 in
/// `TCP_REPAIR_OPTIONS` the kernel kept the shift `tcp_connect_init()` chose, and
/// the peer saw a 63-byte window instead of 64,064.)
#[test]
fn unscaled_connection_advertises_unscaled_windows() {
    const WINDOW: u32 = 60_000;
    require_root();
    let topo = Topology::new();
    let server = topo.service(Family::V4, PORT);
    let client = SocketAddr::new(topo.client_addr(Family::V4), 40312);
    let unscaled = |local, peer, send_seq: u32, recv_seq: u32| {
        let mut plan = synthetic_plan(local, peer, send_seq);
        plan.recv_seq = recv_seq;
        plan.options.window_scale = None;
        plan.window = RestoreWindow {
            snd_wl1: recv_seq,
            snd_wnd: WINDOW,
            max_window: WINDOW,
            rcv_wnd: WINDOW,
            rcv_wup: recv_seq,
        };
        plan.timestamp = None;
        plan.options.timestamps = false;
        plan
    };
    let c = build_in(&topo.client, &unscaled(client, server, 1000, 5000));
    let s = build_in(&topo.server, &unscaled(server, client, 5000, 1000));
    let s = s.leave_repair().unwrap_or_else(|e| panic!("{e}"));
    let c = c.leave_repair().unwrap_or_else(|e| panic!("{e}"));

    // One byte each way: each side's ACK carries its current window.
    assert_eq!(transfer(&c, &s, b"x"), b"x");
    assert_eq!(transfer(&s, &c, b"y"), b"y");
    thread::sleep(Duration::from_millis(50));

    let seen_by_client = tcp_info(&c).tcpi_snd_wnd;
    assert!(
        (WINDOW..=65_535).contains(&seen_by_client),
        "the client sees a {seen_by_client}-byte window"
    );
}
