//! Many verifying clients of an echo server, streaming both ways at once.
//!
//! Failover tests need proof that a connection survived: no error, no reset, no
//! reconnect on the same socket, and every byte exact in both directions. Each
//! client connection here writes a deterministic pseudo-random stream
//! ([`SplitMix64`] from [`echo_seed`] of its index, the same byte order as
//! [`crate::traffic::stream_bytes`]) at a bounded rate, while its reader compares
//! every echoed byte with what was sent at that offset.
//!
//! The connections run on a two-worker tokio runtime (one task per direction per
//! connection, non-blocking sockets under epoll), so a thousand of them cost two
//! threads, and a writer stuck on a full window never stops its reader.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use connmirror::sys::sockopt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::netns::Netns;
use crate::traffic::SplitMix64;

/// Base of the per-connection seeds, see [`echo_seed`].
pub const ECHO_SEED: u64 = 0x6563_686f_5f73_6565; // "echo_see"

/// How often writers top up to their rate.
const TICK: Duration = Duration::from_millis(10);
/// Size of each read.
const READ_CHUNK: usize = 64 << 10;
/// How often [`EchoClients::wait_progress`] looks.
const POLL: Duration = Duration::from_millis(10);
/// How many lagging connections an error names before summing up.
const NAMED: usize = 10;

/// The seed of connection `index`'s stream.
pub fn echo_seed(index: usize) -> u64 {
    SplitMix64::new(ECHO_SEED ^ index as u64).next_u64()
}

/// How [`EchoClients`] streams.
#[derive(Clone, Copy, Debug)]
pub struct EchoOptions {
    /// Most bytes per second each connection writes.
    pub rate: u64,
    /// Largest single write, in bytes.
    pub chunk: usize,
    /// `TCP_MAXSEG` set on each socket before it connects.
    pub mss: Option<u32>,
    /// How long each connect may take.
    pub connect_timeout: Duration,
}

impl Default for EchoOptions {
    /// 64 KiB/s per connection in writes of up to 4 KiB, the route's MSS.
    fn default() -> EchoOptions {
        EchoOptions {
            rate: 64 << 10,
            chunk: 4 << 10,
            mss: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What one connection did, from [`EchoClients::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoResult {
    /// Bytes written.
    pub sent: u64,
    /// Bytes read back and found equal to what was written at their offset.
    pub verified: u64,
    /// SHA-256 of the bytes written.
    pub sent_sha256: [u8; 32],
    /// SHA-256 of the bytes read back (verified or not).
    pub received_sha256: [u8; 32],
    /// The first thing that went wrong: an I/O error, an early EOF, a mismatch
    /// (offset, expected and got), or not finishing in time.
    pub error: Option<String>,
    /// The connection's local address.
    pub local: SocketAddr,
}

/// Asserts that every connection in `results` ended cleanly, sent something,
/// and got back exactly what it sent (every byte verified, equal sha256).
pub fn assert_exact(results: &[EchoResult]) {
    for r in results {
        assert_eq!(r.error, None, "connection {}; all: {results:#?}", r.local);
        assert!(r.sent > 0, "connection {} sent nothing", r.local);
        assert_eq!(r.verified, r.sent, "connection {}", r.local);
        assert_eq!(r.received_sha256, r.sent_sha256, "connection {}", r.local);
    }
}

/// `n` streaming connections to one echo server; see the module docs.
pub struct EchoClients {
    runtime: Runtime,
    stop: watch::Sender<bool>,
    conns: Vec<Conn>,
}

struct Conn {
    local: SocketAddr,
    progress: Arc<Progress>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

/// One connection's counters, shared by its tasks and the test thread.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    verified: AtomicU64,
    sent_hash: Mutex<Sha256>,
    received_hash: Mutex<Sha256>,
    error: Mutex<Option<String>>,
}

impl Progress {
    /// Records `error` unless an earlier one is already recorded.
    fn fail(&self, error: String) {
        lock(&self.error).get_or_insert(error);
    }

    fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EchoClients {
    /// Opens `n` connections from inside `ns` to `server` and starts streaming on
    /// each. Timestamps, if a test wants them off, are the caller's sysctl.
    ///
    /// Panics naming the connection if a socket cannot be made or a connect fails
    /// or takes longer than `opts.connect_timeout`.
    pub fn start(ns: &Netns, server: SocketAddr, n: usize, opts: EchoOptions) -> EchoClients {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("echo-clients")
            .enable_all()
            .build()
            .expect("build the echo clients' runtime");
        // A socket stays in the namespace it was created in; connecting it can
        // happen anywhere.
        let sockets: Vec<TcpSocket> =
            ns.run(|| (0..n).map(|i| new_socket(i, server, opts.mss)).collect());
        let (stop, _) = watch::channel(false);
        // All connect first, then all stream: connections already streaming
        // would compete with the handshakes still to come.
        let conns = runtime.block_on(async {
            let mut streams = Vec::with_capacity(n);
            for (index, socket) in sockets.into_iter().enumerate() {
                streams.push(connect(index, socket, server, opts.connect_timeout).await);
            }
            streams
                .into_iter()
                .enumerate()
                .map(|(index, stream)| Conn::spawn(index, stream, opts, stop.subscribe()))
                .collect()
        });
        EchoClients {
            runtime,
            stop,
            conns,
        }
    }

    /// How many connections there are.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Each connection's local address, in connection order.
    pub fn locals(&self) -> Vec<SocketAddr> {
        self.conns.iter().map(|c| c.local).collect()
    }

    /// Total echoed bytes verified so far, over all connections.
    pub fn verified(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.progress.verified.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until every connection has verified at least `bytes` more than now.
    ///
    /// Fails at once when a connection records an error, or after `timeout`
    /// naming the connections that lag and how far they got.
    pub fn wait_progress(&self, bytes: u64, timeout: Duration) -> Result<(), String> {
        let Self { conns, .. } = self;
        let targets: Vec<u64> = conns
            .iter()
            .map(|c| c.progress.verified.load(Ordering::Relaxed) + bytes)
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let lagging: Vec<String> = conns
                .iter()
                .zip(&targets)
                .enumerate()
                .filter_map(|(i, (c, &target))| c.lag(i, target))
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            let failed = conns.iter().any(|c| c.progress.error().is_some());
            if failed || Instant::now() >= deadline {
                return Err(summarize(&lagging, conns.len(), timeout));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `event` (a failure), then watches the clients for `window` and
    /// returns the longest stretch in it with no new verified byte (polling
    /// every 0.2 ms): the outage as the clients lived it. Bytes already in
    /// flight when `event` ran arrive first and do not end the stretch that
    /// matters, so a window is watched rather than a byte count. `Err` if no
    /// byte came in the window's last half (the stream never came back).
    pub fn outage_after(&self, event: impl FnOnce(), window: Duration) -> Result<Duration, String> {
        let mut progress = (self.verified(), Instant::now());
        event();
        let start = Instant::now();
        let mut outage = Duration::ZERO;
        while start.elapsed() < window {
            let verified = self.verified();
            if verified != progress.0 {
                outage = outage.max(progress.1.elapsed());
                progress = (verified, Instant::now());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if progress.1.elapsed() > window / 2 {
            return Err(format!(
                "no byte verified in the last {:?} of the {window:?} after the failure",
                progress.1.elapsed()
            ));
        }
        Ok(outage)
    }

    /// Stops writing, waits until every byte written has been echoed back and
    /// verified (or `timeout`), closes every connection and returns what each did,
    /// in connection order.
    pub fn finish(self, timeout: Duration) -> Vec<EchoResult> {
        let Self {
            runtime,
            stop,
            conns,
        } = self;
        let _ = stop.send(true);
        let deadline = tokio::time::Instant::now() + timeout;
        let results = runtime.block_on(async {
            let mut results = Vec::with_capacity(conns.len());
            for conn in conns {
                results.push(conn.finish(deadline, timeout).await);
            }
            results
        });
        // Dropping the runtime drops every task still running, and with them the
        // sockets.
        drop(runtime);
        results
    }
}

/// A socket of `server`'s family, with `TCP_MAXSEG` set if asked.
fn new_socket(index: usize, server: SocketAddr, mss: Option<u32>) -> TcpSocket {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap_or_else(|e| panic!("echo client {index}: socket(): {e}"));
    if let Some(mss) = mss {
        sockopt::set(socket.as_fd(), &sockopt::TCP_MAXSEG, &(mss as i32))
            .unwrap_or_else(|e| panic!("echo client {index}: setsockopt(TCP_MAXSEG, {mss}): {e}"));
    }
    socket
}

async fn connect(
    index: usize,
    socket: TcpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> TcpStream {
    match tokio::time::timeout(timeout, socket.connect(server)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => panic!("echo client {index}: connect to {server}: {e}"),
        Err(_) => panic!("echo client {index}: connect to {server} took over {timeout:?}"),
    }
}

impl Conn {
    fn spawn(
        index: usize,
        stream: TcpStream,
        opts: EchoOptions,
        stop: watch::Receiver<bool>,
    ) -> Conn {
        let local = stream
            .local_addr()
            .unwrap_or_else(|e| panic!("echo client {index}: getsockname: {e}"));
        let progress = Arc::new(Progress::default());
        let (target_tx, target_rx) = watch::channel(None);
        let (read, write) = stream.into_split();
        let seed = echo_seed(index);
        let writer = tokio::spawn(write_stream(
            write,
            Pattern::new(seed),
            opts,
            Arc::clone(&progress),
            stop,
            target_tx,
        ));
        let reader = tokio::spawn(verify_stream(
            read,
            Pattern::new(seed),
            Arc::clone(&progress),
            target_rx,
        ));
        Conn {
            local,
            progress,
            writer,
            reader,
        }
    }

    /// `#index local: verified +X of +Y needed`, or `None` if at `target`.
    fn lag(&self, index: usize, target: u64) -> Option<String> {
        let verified = self.progress.verified.load(Ordering::Relaxed);
        if verified >= target {
            return None;
        }
        let error = self
            .progress
            .error()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        Some(format!(
            "#{index} {}: verified {verified} of {target}{error}",
            self.local
        ))
    }

    async fn finish(self, deadline: tokio::time::Instant, timeout: Duration) -> EchoResult {
        let Conn {
            local,
            progress,
            writer,
            reader,
        } = self;
        for task in [writer, reader] {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => progress.fail(format!("echo task failed: {e}")),
                Err(_) => abort.abort(),
            }
        }
        let sent = progress.sent.load(Ordering::Relaxed);
        let verified = progress.verified.load(Ordering::Relaxed);
        if verified != sent {
            progress.fail(format!(
                "finish: {verified} of {sent} bytes sent were echoed and verified within {timeout:?}"
            ));
        }
        EchoResult {
            sent,
            verified,
            sent_sha256: lock(&progress.sent_hash).clone().finalize().into(),
            received_sha256: lock(&progress.received_hash).clone().finalize().into(),
            error: progress.error(),
            local,
        }
    }
}

fn summarize(lagging: &[String], total: usize, timeout: Duration) -> String {
    let mut msg = format!(
        "{} of {total} echo connections did not progress within {timeout:?}: {}",
        lagging.len(),
        lagging[..lagging.len().min(NAMED)].join("; ")
    );
    if lagging.len() > NAMED {
        msg.push_str(&format!("; and {} more", lagging.len() - NAMED));
    }
    msg
}

/// Writes the pattern at up to `opts.rate` bytes/s until `stop`, then tells the
/// reader how much it wrote (`target`).
async fn write_stream(
    mut socket: OwnedWriteHalf,
    mut pattern: Pattern,
    opts: EchoOptions,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
    target: watch::Sender<Option<u64>>,
) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0u8; opts.chunk];
    let mut sent = 0u64;
    'stream: while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let allowed = (opts.rate as f64 * start.elapsed().as_secs_f64()) as u64;
        while sent < allowed && !*stop.borrow() {
            let len = (allowed - sent).min(opts.chunk as u64) as usize;
            pattern.fill(&mut buf[..len]);
            if let Err(e) = write_exact(&mut socket, &buf[..len], &progress).await {
                let sent = progress.sent.load(Ordering::Relaxed);
                progress.fail(format!("write after {sent} bytes: {e}"));
                break 'stream;
            }
            sent += len as u64;
        }
    }
    // An exact count even after an error: the reader stops once it has it all.
    let _ = target.send(Some(progress.sent.load(Ordering::Relaxed)));
}

/// Writes all of `bytes`, counting and hashing each part as the kernel takes it.
async fn write_exact(
    socket: &mut OwnedWriteHalf,
    mut bytes: &[u8],
    progress: &Progress,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = socket.write(bytes).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        lock(&progress.sent_hash).update(&bytes[..n]);
        progress.sent.fetch_add(n as u64, Ordering::Relaxed);
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Reads and checks the echo until it has verified `target` bytes, or fails.
async fn verify_stream(
    mut socket: OwnedReadHalf,
    mut pattern: Pattern,
    progress: Arc<Progress>,
    mut target: watch::Receiver<Option<u64>>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut want = vec![0u8; READ_CHUNK];
    let mut verified = 0u64;
    loop {
        if target.borrow().is_some_and(|t| verified >= t) {
            return;
        }
        // Once the count is known, stop watching it: the writer drops its end
        // right after sending it, and a closed channel is not a reason to stop.
        let counting = target.borrow().is_none();
        let read = tokio::select! {
            read = socket.read(&mut buf) => read,
            changed = target.changed(), if counting => match changed {
                Ok(()) => continue,
                // The writer is gone without a count: torn down, nothing to wait for.
                Err(_) => return,
            },
        };
        let sent = progress.sent.load(Ordering::Relaxed);
        let n = match read {
            // The writer may have finished (and the server echoed its FIN)
            // between the check above and this read.
            Ok(0) if target.borrow().is_some_and(|t| verified >= t) => return,
            Ok(0) => {
                progress.fail(format!("EOF after {verified} bytes verified ({sent} sent)"));
                return;
            }
            Ok(n) => n,
            Err(e) => {
                progress.fail(format!(
                    "read after {verified} bytes verified ({sent} sent): {e}"
                ));
                return;
            }
        };
        let got = &buf[..n];
        lock(&progress.received_hash).update(got);
        pattern.fill(&mut want[..n]);
        let want = &want[..n];
        // Slice equality is one memcmp; find the offset only on a mismatch.
        if let Some(i) = (got != want)
            .then(|| got.iter().zip(want).position(|(g, w)| g != w))
            .flatten()
        {
            progress.fail(format!(
                "mismatch at offset {}: expected {:#04x}, got {:#04x}",
                verified + i as u64,
                want[i],
                got[i]
            ));
            return;
        }
        verified += n as u64;
        progress.verified.store(verified, Ordering::Relaxed);
    }
}

/// A [`SplitMix64`] stream read byte by byte: the output words in little-endian
/// order, as [`crate::traffic::stream_bytes`] lays them out.
struct Pattern {
    rng: SplitMix64,
    word: [u8; 8],
    /// Bytes of `word` already handed out.
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            rng: SplitMix64::new(seed),
            word: [0; 8],
            used: 8,
        }
    }

    /// Fills `out` with the stream's next `out.len()` bytes.
    fn fill(&mut self, out: &mut [u8]) {
        // Finish the current word, then whole words, then start a new one.
        let head = (8 - self.used).min(out.len());
        out[..head].copy_from_slice(&self.word[self.used..self.used + head]);
        self.used += head;
        let mut words = out[head..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.rng.next_u64().to_le_bytes();
            tail.copy_from_slice(&self.word[..tail.len()]);
            self.used = tail.len();
        }
    }
}
