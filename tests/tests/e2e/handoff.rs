//! The handoff socket (`connmirror::resume::handoff`) without `TCP_REPAIR`: real loopback
//! TCP connections stand in for restored ones. And the echo example with the
//! verifying echo clients, end to end without a failover.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use connmirror::resume::handoff::HandoffServer;
use connmirror_handoff::{Application, FlowMeta, Handoff, Recorded};
use connmirror_tests::echo::{EchoClients, EchoOptions, echo_seed};
use connmirror_tests::failover::echo_example;
use connmirror_tests::traffic::stream_bytes;
use connmirror_tests::{Digest, Netns, WorkDir, require_root};

const WAIT: Duration = Duration::from_secs(10);
const C2S_SEED: u64 = 0x1111;
const S2C_SEED: u64 = 0x2222;

/// A loopback connection: (the end handed off, the client's end).
fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (server, client)
}

/// A handoff of `server` with `c2s_len` and `s2c_len` recorded bytes.
fn handoff_of(
    id: u64,
    service: SocketAddr,
    server: TcpStream,
    c2s: Recorded,
    s2c: Recorded,
) -> Handoff {
    let meta = FlowMeta {
        id,
        service,
        server: server.local_addr().unwrap(),
        client: server.peer_addr().unwrap(),
        c2s,
        s2c,
    };
    Handoff {
        stream: server,
        c2s: stream_bytes(C2S_SEED ^ id, (c2s.end - c2s.start) as usize),
        s2c: stream_bytes(S2C_SEED ^ id, (s2c.end - s2c.start) as usize),
        meta,
    }
}

/// Registers for `service` on a thread; returns once registered.
fn register(path: &Path, service: SocketAddr) -> Application {
    register_version(path, service, connmirror_handoff::wire::VERSION)
}

/// [`register`] speaking protocol `version`.
fn register_version(path: &Path, service: SocketAddr, version: u16) -> Application {
    let path = path.to_path_buf();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(Application::connect_with_version(
            &path,
            &[service],
            version,
        ));
    });
    rx.recv_timeout(WAIT)
        .expect("Application::connect did not return in time")
        .expect("Application::connect")
}

/// Receives `n` handoffs on a thread while the caller delivers them.
fn receive(mut app: Application, n: usize) -> mpsc::Receiver<(Application, Vec<Handoff>)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let got = (0..n)
            .map(|_| {
                app.next()
                    .expect("Application::next")
                    .expect("a handoff, not end of stream")
            })
            .collect();
        let _ = tx.send((app, got));
    });
    rx
}

/// What [`receive`] got, failing rather than hanging.
fn received(rx: mpsc::Receiver<(Application, Vec<Handoff>)>) -> (Application, Vec<Handoff>) {
    rx.recv_timeout(WAIT)
        .expect("the application did not receive every handoff in time")
}

/// The received socket is the same connection as `client`'s peer: bytes go
/// through it both ways.
fn assert_same_connection(received: &mut TcpStream, client: &mut TcpStream) {
    received.write_all(b"from the application").unwrap();
    let mut buf = [0u8; 20];
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the application");
    client.write_all(b"from the client").unwrap();
    let mut buf = [0u8; 15];
    received.set_read_timeout(Some(WAIT)).unwrap();
    received.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the client");
}

fn socket_path(dir: &WorkDir) -> PathBuf {
    dir.path().join("run").join("handoff.sock")
}

#[test]
fn handoff_passes_socket_meta_and_bytes_exactly() {
    let dir = WorkDir::new("handoff");
    let path = socket_path(&dir);
    let server = HandoffServer::bind(&path).expect("bind the handoff socket");
    let file = fs::symlink_metadata(&path).unwrap();
    assert!(file.file_type().is_socket());
    assert_eq!(file.permissions().mode() & 0o7777, 0o600);
    let parent = fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o7777, 0o700);
    assert_eq!(server.path(), path);

    let service: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let app = register(&path, service);
    // Two in a row: the second descriptor must arrive with the second message,
    // after 1 MB of the first one's bytes.
    let (first, mut first_client) = loopback_pair();
    let (second, mut second_client) = loopback_pair();
    let big = Recorded {
        start: 0,
        end: 1_000_003,
        acked: 1_000_003,
    };
    let partial = Recorded {
        start: 3,
        end: 9,
        acked: 5,
    };
    let sent = [
        handoff_of(41, service, first, big, partial),
        handoff_of(
            42,
            service,
            second,
            partial,
            Recorded {
                start: 0,
                end: 0,
                acked: 0,
            },
        ),
    ];
    let expected: Vec<(FlowMeta, Vec<u8>, Vec<u8>)> = sent
        .iter()
        .map(|h| (h.meta.clone(), h.c2s.clone(), h.s2c.clone()))
        .collect();

    let receiving = receive(app, 2);
    for handoff in sent {
        server.deliver(handoff, WAIT).expect("deliver");
    }
    let (mut app, got) = received(receiving);
    let [mut got_first, mut got_second] = <[Handoff; 2]>::try_from(got).unwrap();

    for (got, (meta, c2s, s2c)) in [&got_first, &got_second].into_iter().zip(&expected) {
        assert_eq!(&got.meta, meta);
        assert_eq!(Digest::of(&got.c2s), Digest::of(c2s));
        assert_eq!(Digest::of(&got.s2c), Digest::of(s2c));
        assert_eq!(got.stream.local_addr().unwrap(), meta.server);
        assert_eq!(got.stream.peer_addr().unwrap(), meta.client);
    }
    assert_eq!(got_first.c2s.len(), 1_000_003);
    assert_eq!(got_second.c2s.len(), 6);
    assert_eq!(got_second.s2c.len(), 0);
    assert_same_connection(&mut got_first.stream, &mut first_client);
    assert_same_connection(&mut got_second.stream, &mut second_client);

    drop(server);
    assert!(app.next().expect("next after the daemon closed").is_none());
    assert!(!path.exists(), "the socket file outlived the server");
}

/// Connects, writes `hello`, and reads the daemon's whole reply.
fn forged_hello(path: &Path, hello: &[u8]) -> String {
    let mut stream = UnixStream::connect(path).expect("connect to the handoff socket");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(hello).unwrap();
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .expect("read the refusal to EOF");
    reply
}

fn hello(magic: &[u8; 4], version: u16, len: u32, body: &[u8]) -> Vec<u8> {
    let mut msg = magic.to_vec();
    msg.extend_from_slice(&version.to_be_bytes());
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

#[test]
fn forged_hellos_are_refused_with_exact_reasons_and_counted() {
    let dir = WorkDir::new("handoff-forged");
    let path = socket_path(&dir);
    let server = HandoffServer::bind(&path).expect("bind the handoff socket");
    let json = br#"{"services": ["127.0.0.1:7000"]}"#;
    let n = json.len() as u32;

    let cases: [(Vec<u8>, &str); 4] = [
        (
            hello(b"XXXX", 1, n, json),
            "wrong magic \"XXXX\", expected \"CMHO\"\n",
        ),
        (
            hello(b"CMHO", 3, n, json),
            "unsupported protocol version 3, this daemon speaks versions 1 and 2\n",
        ),
        (
            hello(b"CMHO", 1, 65537, b""),
            "hello of 65537 bytes exceeds the maximum of 65536 bytes\n",
        ),
        (
            hello(b"CMHO", 1, 14, br#"{"services": ["#),
            "malformed hello JSON: EOF while parsing a list at line 1 column 14\n",
        ),
    ];
    for (msg, want) in &cases {
        assert_eq!(forged_hello(&path, msg), *want);
    }
    assert_eq!(server.rejected(), 4);

    let service: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let app = register(&path, service);
    let (conn, mut client) = loopback_pair();
    let empty = Recorded {
        start: 0,
        end: 0,
        acked: 0,
    };
    let receiving = receive(app, 1);
    server
        .deliver(handoff_of(7, service, conn, empty, empty), WAIT)
        .expect("deliver");
    let (_app, mut got) = received(receiving);
    let mut got = got.remove(0);
    assert_eq!(got.meta.id, 7);
    assert_same_connection(&mut got.stream, &mut client);
    assert_eq!(server.rejected(), 4);
}

#[test]
fn deliver_without_application_returns_the_handoff_with_the_reason() {
    let dir = WorkDir::new("handoff-none");
    let server = HandoffServer::bind(&socket_path(&dir)).expect("bind the handoff socket");
    let service: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let (conn, mut client) = loopback_pair();
    let range = Recorded {
        start: 0,
        end: 5,
        acked: 5,
    };
    let handoff = handoff_of(9, service, conn, range, range);
    let meta = handoff.meta.clone();

    let started = Instant::now();
    let (mut back, err) = server
        .deliver(handoff, Duration::from_millis(200))
        .expect_err("no application is registered");

    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        err.to_string(),
        "no application registered for service 127.0.0.1:7000 within 200ms"
    );
    assert_eq!(back.meta, meta);
    assert_eq!(back.c2s, stream_bytes(C2S_SEED ^ 9, 5));
    assert_same_connection(&mut back.stream, &mut client);
}

/// `n` handoffs of `service` (ids from 1, a few recorded bytes each) and
/// their clients' ends.
fn handoffs(service: SocketAddr, n: u64) -> (Vec<Handoff>, Vec<TcpStream>) {
    (1..=n)
        .map(|id| {
            let (conn, client) = loopback_pair();
            let c2s = Recorded {
                start: 0,
                end: id % 7,
                acked: 0,
            };
            let s2c = Recorded {
                start: 1,
                end: 1 + id % 5,
                acked: 1,
            };
            (handoff_of(id, service, conn, c2s, s2c), client)
        })
        .unzip()
}

#[test]
fn deliver_all_bundles_600_over_a_version_1_and_a_version_2_application() {
    connmirror_handoff::raise_open_files_limit().expect("raise RLIMIT_NOFILE");
    let dir = WorkDir::new("handoff-bundles");
    let path = socket_path(&dir);
    let server = HandoffServer::bind(&path).expect("bind the handoff socket");
    let service: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let old = register_version(&path, service, 1);
    let new = register_version(&path, service, 2);
    let (sent, mut clients) = handoffs(service, 600);
    let expected: Vec<(FlowMeta, Vec<u8>, Vec<u8>)> = (sent.iter())
        .map(|h| (h.meta.clone(), h.c2s.clone(), h.s2c.clone()))
        .collect();
    // Even shares, at most 253 a message, the applications taking turns:
    // four bundles of 150.
    let (old_rx, new_rx) = (receive(old, 300), receive(new, 300));

    let failed = server.deliver_all(sent, WAIT);

    assert_eq!(failed.len(), 0, "{failed:?}");
    let (_old, mut got) = received(old_rx);
    let (_new, got_new) = received(new_rx);
    let ids = |got: &[Handoff]| got.iter().map(|h| h.meta.id).collect::<Vec<_>>();
    let old_ids: Vec<u64> = (1..=150).chain(301..=450).collect();
    let new_ids: Vec<u64> = (151..=300).chain(451..=600).collect();
    assert_eq!((ids(&got), ids(&got_new)), (old_ids, new_ids));
    got.extend(got_new);
    got.sort_by_key(|h| h.meta.id);
    for (handoff, (meta, c2s, s2c)) in got.iter_mut().zip(&expected) {
        assert_eq!(
            (&handoff.meta, &handoff.c2s, &handoff.s2c),
            (meta, c2s, s2c)
        );
        let client = &mut clients[meta.id as usize - 1];
        assert_same_connection(&mut handoff.stream, client);
    }
}

#[test]
fn a_bundle_an_application_fails_goes_to_the_next_or_comes_back_with_the_error() {
    let dir = WorkDir::new("handoff-gone");
    let path = socket_path(&dir);
    let server = HandoffServer::bind(&path).expect("bind the handoff socket");
    let service: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    // The first application exits before the takeover: its bundle goes to
    // the second.
    let gone = register(&path, service);
    let alive = register(&path, service);
    drop(gone);
    let (sent, mut clients) = handoffs(service, 5);
    let receiving = receive(alive, 5);
    assert_eq!(server.deliver_all(sent, WAIT).len(), 0);
    let (alive, mut got) = received(receiving);
    assert_eq!(
        got.iter().map(|h| h.meta.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    for (handoff, client) in got.iter_mut().zip(&mut clients) {
        assert_same_connection(&mut handoff.stream, client);
    }

    // With none left, every handoff comes back with the failed call.
    drop(alive);
    let (sent, mut clients) = handoffs(service, 3);
    let failed = server.deliver_all(sent, Duration::from_millis(100));
    assert_eq!(failed.len(), 3);
    for ((mut back, err), client) in failed.into_iter().zip(&mut clients) {
        assert_eq!(
            err.to_string(),
            format!(
                "handing flow {} to the application registered for {service}: \
                 sendmsg(SCM_RIGHTS) on {}: Broken pipe (os error 32)",
                back.meta.id,
                path.display()
            )
        );
        assert_same_connection(&mut back.stream, client);
    }
}

/// Starts `echo listen addr` in `ns` and waits for its `listening` line.
fn start_echo_server(ns: &Netns, addr: SocketAddr) -> Child {
    let mut cmd = ns.command(echo_example());
    cmd.args(["listen", &addr.to_string()]);
    start_example(cmd, &format!("listening {addr}")).0
}

#[test]
fn echo_example_echoes_20_streaming_connections_byte_exact() {
    require_root();
    let ns = Netns::new("echo");
    ns.ip(["addr", "add", "198.18.0.1/32", "dev", "lo"]);
    let service: SocketAddr = "198.18.0.1:7000".parse().unwrap();
    let mut server = start_echo_server(&ns, service);
    let opts = EchoOptions {
        rate: 256 << 10,
        ..EchoOptions::default()
    };

    let clients = EchoClients::start(&ns, service, 20, opts);
    clients
        .wait_progress(64 << 10, WAIT)
        .expect("traffic flows");
    thread::sleep(Duration::from_secs(2));
    let results = clients.finish(WAIT);

    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.error, None, "connection {i} ({})", r.local);
        assert!(
            r.sent >= 256 << 10,
            "connection {i} sent only {} bytes",
            r.sent
        );
        assert_eq!(r.verified, r.sent, "connection {i}");
        assert_eq!(r.received_sha256, r.sent_sha256, "connection {i}");
        let expected = Digest::of(&stream_bytes(echo_seed(i), r.sent as usize));
        assert_eq!(
            Digest(r.sent_sha256),
            expected,
            "connection {i} sent its own stream"
        );
        assert_eq!(r.local.ip(), service.ip());
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Spawns the echo example with `args`, stdout piped, and returns it once its
/// first line is `first_line`.
fn start_example(
    mut cmd: std::process::Command,
    first_line: &str,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the echo example");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    match rx.recv_timeout(WAIT) {
        Ok(line) if line == first_line => (child, rx),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the echo example did not print {first_line:?} first: {other:?}")
        }
    }
}

#[test]
fn echo_example_resumes_a_handed_off_connection_with_the_unechoed_bytes_first() {
    let dir = WorkDir::new("handoff-echo");
    let path = socket_path(&dir);
    let server = HandoffServer::bind(&path).expect("bind the handoff socket");
    let service: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let mut cmd = std::process::Command::new(echo_example());
    cmd.args(["handoff", "--socket"])
        .arg(&path)
        .args(["--service", &service.to_string()]);
    let (mut app, lines) = start_example(cmd, "registered");

    // The primary read client bytes [0, 10) and echoed [0, 4) of them; the
    // recording keeps client bytes from offset 2.
    let (conn, mut client) = loopback_pair();
    let c2s = Recorded {
        start: 2,
        end: 10,
        acked: 10,
    };
    let s2c = Recorded {
        start: 0,
        end: 4,
        acked: 4,
    };
    let mut handoff = handoff_of(5, service, conn, c2s, s2c);
    handoff.c2s = b"23456789".to_vec();
    handoff.s2c = b"0123".to_vec();
    let client_addr = handoff.meta.client;
    server.deliver(handoff, WAIT).expect("deliver");

    assert_eq!(
        lines.recv_timeout(WAIT).expect("a resumed line"),
        format!("resumed {client_addr} c2s=10 s2c=4")
    );
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut pending = [0u8; 6];
    client.read_exact(&mut pending).unwrap();
    assert_eq!(&pending, b"456789");
    client.write_all(b"after the handoff").unwrap();
    let mut echoed = [0u8; 17];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"after the handoff");

    drop(server);
    let status = connmirror_tests::process::wait_with_timeout(&mut app, WAIT, "echo handoff");
    assert!(status.success(), "echo handoff exited with {status}");
}

#[test]
fn daemon_refuses_an_application_of_another_user() {
    require_root();
    let dir = WorkDir::new("handoff-uid");
    // Parent and socket open to everyone, as a misconfiguration would leave
    // them: SO_PEERCRED still keeps the other user out.
    let path = dir.path().join("handoff.sock");
    let server = HandoffServer::bind(&path).expect("bind the handoff socket");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let mut cmd = std::process::Command::new(echo_example());
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    // anyhow appends a backtrace to the message when these ask for one.
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    cmd.args(["handoff", "--socket"])
        .arg(&path)
        .args(["--service", "127.0.0.1:7000"]);

    let out = connmirror_tests::process::output_with_timeout(&mut cmd, WAIT);

    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "Error: the daemon at {} refused registration: peer uid 65534 is neither root nor the daemon's uid 0\n",
            path.display()
        )
    );
    assert_eq!(server.rejected(), 1);
}
