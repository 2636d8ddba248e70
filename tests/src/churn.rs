//! Connection churn against a real Redis: short connections at a paced rate
//! (connect, `PING`, `QUIT`: the server closes first, so the client's port is
//! free again at once), and many idle connections held open. Both spread
//! over several client addresses: one address has about 28,000 ephemeral
//! ports.
//!
//! Every socket is made by a task of a tokio runtime whose worker threads
//! were spawned inside the client's namespace, so the sockets live there.
//! Counts and time are bounded by the caller.
//!
//! A process may hold no more files than its hard limit (20,000 here, and
//! raising it takes CAP_SYS_RESOURCE), so idle connections are held by
//! several [`Holder`] processes (`connmirror-hold`), each against its own
//! Redis.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;

use crate::netns::Netns;

/// Connections a churn keeps in flight at once.
const IN_FLIGHT: u64 = 256;
/// How long one connection may take, handshake to close.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `n` more client addresses (198.18.0.10 onwards, /24) on `dev` in
/// `ns`; returns them.
pub fn add_client_addrs(ns: &Netns, dev: &str, n: u8) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            let addr = IpAddr::from([198, 18, 0, 10 + i]);
            ns.ip(["addr", "add", &format!("{addr}/24"), "dev", dev]);
            addr
        })
        .collect()
}

/// Raises this process's soft open-file limit to its hard limit; returns it.
pub fn raise_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the struct we pass.
    let rc = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit)
    };
    let error = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "setrlimit(RLIMIT_NOFILE, {limit:?}): {error}");
    limit.rlim_max
}

/// What a churn did.
#[derive(Clone, Debug)]
pub struct ChurnResult {
    /// Connections that went through whole: `+PONG`, `+OK`, then the
    /// server's close.
    pub completed: u64,
    /// Connections that failed, and the first few errors.
    pub failed: u64,
    /// The first errors seen.
    pub errors: Vec<String>,
    /// From the first connection to the last one's end.
    pub elapsed: Duration,
}

impl ChurnResult {
    /// Completed connections per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// A runtime whose worker threads live in `ns`.
pub struct Client {
    runtime: Runtime,
}

impl Client {
    /// Builds the runtime from a thread inside `ns`: its workers inherit the
    /// namespace, and so do the sockets its tasks make.
    pub fn new(ns: &Netns) -> Client {
        ns.run(Client::here)
    }

    /// Builds the runtime in this thread's namespace.
    pub fn here() -> Client {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Client { runtime }
    }

    /// Opens `total` short connections to the Redis at `server`, at most
    /// `rate` a second, from `sources` in turn, [`IN_FLIGHT`] at a time;
    /// opens none after `limit`.
    pub fn churn(
        &self,
        server: SocketAddr,
        sources: &[IpAddr],
        rate: u64,
        total: u64,
        limit: Duration,
    ) -> ChurnResult {
        let sources: Arc<Vec<IpAddr>> = Arc::new(sources.to_vec());
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let handles: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                let (sources, next) = (Arc::clone(&sources), Arc::clone(&next));
                self.runtime.spawn(async move {
                    let mut outcome = (0u64, Vec::new());
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total || start.elapsed() > limit {
                            return outcome;
                        }
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                        let source = sources[i as usize % sources.len()];
                        let run =
                            tokio::time::timeout(CONNECTION_TIMEOUT, ping_quit(source, server));
                        match run.await {
                            Ok(Ok(())) => outcome.0 += 1,
                            Ok(Err(e)) => outcome.1.push(format!("from {source}: {e}")),
                            Err(_) => outcome.1.push(format!("from {source}: timed out")),
                        }
                    }
                })
            })
            .collect();
        let mut result = ChurnResult {
            completed: 0,
            failed: 0,
            errors: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for handle in handles {
            let (completed, errors) = self.runtime.block_on(handle).expect("churn task");
            result.completed += completed;
            result.failed += errors.len() as u64;
            result
                .errors
                .extend(errors.into_iter().take(5 - result.errors.len().min(5)));
        }
        result.elapsed = start.elapsed();
        result
    }

    /// Opens `n` connections to `server` from `sources` in turn and keeps
    /// them open, idle. Panics on the first that fails.
    pub fn hold(&self, server: SocketAddr, sources: &[IpAddr], n: u64) -> Held {
        let sources: Arc<Vec<IpAddr>> = Arc::new(sources.to_vec());
        let next = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                let (sources, next) = (Arc::clone(&sources), Arc::clone(&next));
                self.runtime.spawn(async move {
                    let mut opened = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return opened;
                        }
                        let source = sources[i as usize % sources.len()];
                        let stream =
                            tokio::time::timeout(CONNECTION_TIMEOUT, connect(source, server))
                                .await
                                .unwrap_or_else(|_| {
                                    panic!("connection {i} from {source}: timed out")
                                })
                                .unwrap_or_else(|e| panic!("connection {i} from {source}: {e}"));
                        opened.push((i, stream));
                    }
                })
            })
            .collect();
        let mut streams: Vec<(u64, TcpStream)> = Vec::with_capacity(n as usize);
        for handle in handles {
            streams.extend(self.runtime.block_on(handle).expect("hold task"));
        }
        streams.sort_by_key(|(i, _)| *i);
        Held {
            streams: streams.into_iter().map(|(_, s)| s).collect(),
        }
    }

    /// `PING` on every `step`-th of `held`'s connections: each must answer
    /// `+PONG`.
    pub fn ping(&self, held: &mut Held, step: usize) -> Result<(), String> {
        for i in (0..held.streams.len()).step_by(step.max(1)) {
            let stream = &mut held.streams[i];
            let answer = self
                .runtime
                .block_on(async { tokio::time::timeout(CONNECTION_TIMEOUT, ping(stream)).await });
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("held connection {i}: {e}")),
                Err(_) => return Err(format!("held connection {i}: no answer")),
            }
        }
        Ok(())
    }
}

/// Idle connections held open ([`Client::hold`]).
pub struct Held {
    streams: Vec<TcpStream>,
}

impl Held {
    /// How many are held.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// Connects to `server` from `source` (any port).
async fn connect(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// `PING` on `stream`, which must answer `+PONG`.
async fn ping(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"PING\r\n").await?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await?;
    expect(&reply, b"+PONG\r\n")
}

/// One short connection: connect, `PING`, `QUIT`, and the server's close.
async fn ping_quit(source: IpAddr, server: SocketAddr) -> std::io::Result<()> {
    let mut stream = connect(source, server).await?;
    ping(&mut stream).await?;
    stream.write_all(b"QUIT\r\n").await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    expect(line.as_bytes(), b"+OK\r\n")?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await?;
    expect(&rest, b"")
}

fn expect(got: &[u8], want: &[u8]) -> std::io::Result<()> {
    if got == want {
        return Ok(());
    }
    let (got, want) = (String::from_utf8_lossy(got), String::from_utf8_lossy(want));
    Err(std::io::Error::other(format!(
        "got {got:?}, expected {want:?}"
    )))
}

/// A `connmirror-hold` process in a namespace: it holds idle connections to
/// one Redis and answers `ping STEP` (a `PING` on every STEP-th of them) on
/// its stdin; closing its stdin closes them all. Killed on drop.
pub struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Holder {
    /// Starts `bin` (`connmirror-hold`) in `ns` holding `n` connections to
    /// `server` from `sources` in turn, and waits until it holds them all.
    pub fn start(ns: &Netns, bin: &Path, server: SocketAddr, sources: &[IpAddr], n: u64) -> Holder {
        let mut cmd = ns.command(bin);
        cmd.arg(server.to_string()).arg(n.to_string());
        cmd.args(sources.iter().map(IpAddr::to_string));
        let what = crate::process::describe(&cmd);
        let mut child = (cmd.stdin(Stdio::piped()).stdout(Stdio::piped()))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
        let lines = crate::process::stdout_lines(&mut child);
        let holder = Holder { child, lines, what };
        holder.expect(&format!("held {n}"), HOLD_TIMEOUT);
        holder
    }

    /// A `PING` on every `step`-th connection held: each must answer.
    pub fn ping(&mut self, step: usize) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "ping {step}").unwrap_or_else(|e| panic!("`{}`: {e}", self.what));
        self.expect("pong", CONNECTION_TIMEOUT * 2);
    }

    /// Closes every connection held, and waits for the process to exit 0.
    pub fn close(mut self) {
        drop(self.child.stdin.take());
        let status = crate::process::wait_with_timeout(&mut self.child, HOLD_TIMEOUT, &self.what);
        assert!(status.success(), "`{}` exited with {status}", self.what);
    }

    /// Waits for a line starting with `wanted`; panics with what came instead.
    fn expect(&self, wanted: &str, timeout: Duration) {
        match self.lines.recv_timeout(timeout) {
            Ok(line) if line.starts_with(wanted) => {}
            other => panic!("`{}` answered {other:?}, expected {wanted:?}", self.what),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a holder may take to open its connections, or to close them.
const HOLD_TIMEOUT: Duration = Duration::from_secs(120);
