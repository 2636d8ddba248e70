//! Exact-data TCP streams in both directions at once.
//!
//! The client and the server each send `n` bytes of deterministic pseudo-random
//! data (SplitMix64, a different seed per direction) while reading everything the
//! other side sends. After its last byte each side shuts its write half down
//! (`shutdown(SHUT_WR)`), so a FIN flows each way and each reader ends at EOF.
//! Each side hashes what it sent and what it received: a capture is exact when the
//! mirror's dump of a direction has the sender's digest.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::topology::Topology;

/// Seed of the client → server data.
pub const C2S_SEED: u64 = 0x6330_7332_5f73_6565; // "c0s2_see"
/// Seed of the server → client data.
pub const S2C_SEED: u64 = 0x7332_6330_5f73_6565; // "s2c0_see"

/// Size of each `write` and `read`.
const IO_CHUNK: usize = 256 * 1024;

/// One side's view of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// This side's socket address.
    pub addr: SocketAddr,
    /// Digest of the bytes this side wrote.
    pub sent: Digest,
    /// How many bytes this side wrote.
    pub sent_bytes: u64,
    /// Digest of the bytes this side read before EOF.
    pub received: Digest,
    /// How many bytes this side read before EOF.
    pub received_bytes: u64,
}

/// The outcome of [`bidirectional`].
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    /// The connecting side.
    pub client: Peer,
    /// The accepting side.
    pub server: Peer,
    /// From the client's `connect` to both sides having read EOF.
    pub elapsed: Duration,
}

impl Exchange {
    /// Payload bytes per second, both directions together.
    pub fn throughput_bytes_per_sec(&self) -> f64 {
        (self.client.sent_bytes + self.server.sent_bytes) as f64 / self.elapsed.as_secs_f64()
    }
}

/// A SplitMix64 generator (Steele, Lea, Flood 2014): fast, and good enough to
/// make every segment's payload distinct.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next output word: each call adds γ to the state, then mixes it.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` (its length a multiple of 8) with the next output words.
    pub fn fill(&mut self, buf: &mut [u8]) {
        assert!(
            buf.len().is_multiple_of(8),
            "fill needs a multiple of 8 bytes"
        );
        for word in buf.chunks_exact_mut(8) {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
    }
}

/// The first `n` bytes of the stream seeded with `seed`, as [`bidirectional`] sends
/// them.
pub fn stream_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut buf = vec![0u8; n.div_ceil(8) * 8];
    rng.fill(&mut buf);
    buf.truncate(n);
    buf
}

/// Listens on `service` inside `topo`'s server namespace, connects from its
/// client namespace, and exchanges `bytes_each_way` bytes in both directions at
/// once (see the module docs).
///
/// Panics if the whole exchange takes longer than `timeout`, naming the side, the
/// direction and how far it got.
pub fn bidirectional(
    topo: &Topology,
    service: SocketAddr,
    bytes_each_way: u64,
    timeout: Duration,
) -> Exchange {
    let (client, server) = (&topo.client, &topo.server);
    let deadline = Instant::now() + timeout;
    let listener = server.run(|| {
        TcpListener::bind(service)
            .unwrap_or_else(|e| panic!("bind {service} in {}: {e}", server.name()))
    });
    let start = Instant::now();
    let client_stream = client.run(|| {
        TcpStream::connect_timeout(&service, remaining(deadline, "connect"))
            .unwrap_or_else(|e| panic!("connect to {service} from {}: {e}", client.name()))
    });
    let server_stream = accept(&listener, deadline);
    drop(listener);
    exchange_until(
        client_stream,
        server_stream,
        bytes_each_way,
        start,
        deadline,
    )
}

/// Sends `bytes_each_way` bytes each way over an established connection at once
/// (SplitMix64 data from [`C2S_SEED`] and [`S2C_SEED`]), shutting each write half
/// down after its last byte, and reads both sides to EOF.
///
/// [`bidirectional`] does the same over a connection it opens itself; tests that
/// build connections another way (e.g. `TCP_REPAIR`) call this. Panics if it takes
/// longer than `timeout`, naming the side and how far it got.
pub fn exchange(
    client: TcpStream,
    server: TcpStream,
    bytes_each_way: u64,
    timeout: Duration,
) -> Exchange {
    let start = Instant::now();
    exchange_until(client, server, bytes_each_way, start, start + timeout)
}

fn exchange_until(
    client_stream: TcpStream,
    server_stream: TcpStream,
    bytes_each_way: u64,
    start: Instant,
    deadline: Instant,
) -> Exchange {
    let (client, server) = thread::scope(|s| {
        let c = thread::Builder::new()
            .name("client".into())
            .spawn_scoped(s, || {
                converse("client", client_stream, C2S_SEED, bytes_each_way, deadline)
            })
            .expect("spawn client thread");
        let srv = thread::Builder::new()
            .name("server".into())
            .spawn_scoped(s, || {
                converse("server", server_stream, S2C_SEED, bytes_each_way, deadline)
            })
            .expect("spawn server thread");
        (join(c), join(srv))
    });
    Exchange {
        client,
        server,
        elapsed: start.elapsed(),
    }
}

fn accept(listener: &TcpListener, deadline: Instant) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("set listener non-blocking");
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("set stream blocking");
                return stream;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                remaining(deadline, "accept");
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept on {:?}: {e}", listener.local_addr()),
        }
    }
}

/// Sends `n` bytes from `seed` on one thread while reading to EOF on this one.
fn converse(who: &str, stream: TcpStream, seed: u64, n: u64, deadline: Instant) -> Peer {
    let addr = stream.local_addr().expect("local_addr");
    let writer = stream.try_clone().expect("clone socket");
    thread::scope(|s| {
        let sending = thread::Builder::new()
            .name(format!("{who}-send"))
            .spawn_scoped(s, move || send(who, writer, seed, n, deadline))
            .expect("spawn sender thread");
        let (received, received_bytes) = receive(who, &stream, deadline);
        let (sent, sent_bytes) = join(sending);
        Peer {
            addr,
            sent,
            sent_bytes,
            received,
            received_bytes,
        }
    })
}

fn send(who: &str, mut stream: TcpStream, seed: u64, n: u64, deadline: Instant) -> (Digest, u64) {
    let mut rng = SplitMix64::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(IO_CHUNK as u64) as usize;
        rng.fill(&mut buf);
        let chunk = &buf[..len];
        hasher.update(chunk);
        let mut off = 0;
        while off < len {
            let what = format!("{who} sending: {} of {n} bytes written", sent + off as u64);
            stream
                .set_write_timeout(Some(remaining(deadline, &what)))
                .expect("set_write_timeout");
            match stream.write(&chunk[off..]) {
                Ok(0) => panic!("{what}: the socket accepts no more data"),
                Ok(k) => off += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    remaining(deadline, &what);
                }
                Err(e) => panic!("{what}: write: {e}"),
            }
        }
        sent += len as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{who}: shutdown(Write) after {sent} bytes: {e}"));
    (hasher.into(), sent)
}

fn receive(who: &str, mut stream: &TcpStream, deadline: Instant) -> (Digest, u64) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut received = 0u64;
    loop {
        let what = format!("{who} receiving: {received} bytes read, no EOF yet");
        stream
            .set_read_timeout(Some(remaining(deadline, &what)))
            .expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (hasher.into(), received),
            Ok(k) => {
                hasher.update(&buf[..k]);
                received += k as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                remaining(deadline, &what);
            }
            Err(e) => panic!("{what}: read: {e}"),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Time left before `deadline`, at least 1 ms; panics naming `what` once it passed.
fn remaining(deadline: Instant, what: &str) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(!left.is_zero(), "traffic timed out: {what}");
    left.max(Duration::from_millis(1))
}

fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// One connection through the gateway, left open: `c2s` bytes of 0x5a from
/// the client, checked at the server, then `s2c` bytes of 0xa5 back.
pub fn exchange_once(
    topo: &Topology,
    service: SocketAddr,
    c2s: usize,
    s2c: usize,
) -> (TcpStream, TcpStream) {
    let listener = topo
        .server
        .run(|| TcpListener::bind(service).expect("bind"));
    let mut client = topo
        .client
        .run(|| TcpStream::connect_timeout(&service, Duration::from_secs(5)).expect("connect"));
    let (mut server, _) = listener.accept().expect("accept");
    for stream in [&client, &server] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    let sent = vec![0x5a; c2s];
    client.write_all(&sent).expect("client write");
    let mut got = vec![0; c2s];
    server.read_exact(&mut got).expect("server read");
    assert_eq!(got, sent);
    server.write_all(&vec![0xa5; s2c]).expect("server write");
    let mut got = vec![0; s2c];
    client.read_exact(&mut got).expect("client read");
    (client, server)
}
