//! Support for the long-running programs built on these fixtures (`connmirror-demo`,
//! `connmirror-bench`): Ctrl-C handling, and a time-bounded stream whose progress can
//! be watched while it runs.
//!
//! # Interrupts
//! A test that panics still removes its namespaces because the guards drop during
//! unwinding. A program killed by SIGINT would not: the default action ends the
//! process without running any destructor, and the namespaces (bind mounts under
//! `/run/netns`) outlive it. [`install_interrupt_handler`] replaces that action for
//! SIGINT and SIGTERM with one that only sets a flag (an atomic store is
//! async-signal-safe, see `signal-safety(7)`); every loop in these programs polls
//! [`interrupted`] and returns, so the guards drop normally.
//!
//! # Live stream
//! [`LiveStream`] is [`crate::traffic::bidirectional`] bounded by time instead of by
//! size: both sides send deterministic data (the same SplitMix64 seeds, so a dump
//! can be checked against [`crate::traffic::stream_bytes`]) until a duration or a
//! byte cap is reached, then shut their write half down, and each side hashes what
//! it wrote and what it read. Byte counters are shared atomics, so a caller can
//! print a live progress line while the stream runs.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::netns::Netns;
use crate::traffic::{C2S_SEED, Exchange, Peer, S2C_SEED, SplitMix64};

/// Set by the SIGINT/SIGTERM handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often blocked socket calls and waits wake up to look at the stop flags.
const POLL: Duration = Duration::from_millis(50);

/// Size of each `write` and `read`.
const IO_CHUNK: usize = 256 * 1024;

/// The lock file [`crate::Topology`] holds while it exists (`HOST_LOCK` in
/// `topology.rs`, which is private there).
const HOST_LOCK: &str = "/tmp/connmirror-tests.lock";

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}
/// Runs `body` as the `main` of a program built on these fixtures (the demo,
/// the benchmarks): a panic is caught (its message is already printed), the
/// outcome becomes the exit code (0; 1 on error; 130 when SIGINT/SIGTERM
/// stopped it, printing `interrupted`), and namespaces this process left
/// behind make it fail, naming them.
pub fn main_with_cleanup(
    program: &str,
    interrupted: &str,
    body: impl FnOnce() -> Result<()>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let leftovers = namespaces_of(std::process::id());
    let code = match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) if err.is::<Interrupted>() => {
            eprintln!("\ninterrupted: {interrupted}");
            ExitCode::from(130)
        }
        Ok(Err(err)) => {
            eprintln!("\nerror: {err:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\nerror: {program} failed (the message is above)");
            ExitCode::FAILURE
        }
    };
    if !leftovers.is_empty() {
        eprintln!(
            "error: namespaces left behind: {leftovers:?}; remove them with `ip netns del NAME`"
        );
        return ExitCode::FAILURE;
    }
    code
}

/// Makes SIGINT and SIGTERM set the flag [`interrupted`] reads instead of ending
/// the process.
///
/// `SA_RESTART` keeps the fixtures' blocking calls (waitpid, reads of child pipes)
/// from failing with EINTR; the loops here wake up on their own every [`POLL`].
pub fn install_interrupt_handler() -> Result<()> {
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler only
        // performs an atomic store, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!("sigaction({name}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`install_interrupt_handler`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once a signal arrived: `interrupt_point()?` in a loop.
pub fn interrupt_point() -> Result<()> {
    if interrupted() {
        bail!(Interrupted);
    }
    Ok(())
}

/// The error every interrupted loop returns, so `main` can tell it from a failure
/// (`err.is::<Interrupted>()`).
#[derive(Clone, Copy, Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted (SIGINT/SIGTERM)")
    }
}

impl std::error::Error for Interrupted {}

/// Sleeps for `duration` in short steps; fails early once a signal arrived.
pub fn sleep(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        interrupt_point()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(POLL));
    }
}

/// Fails with a message saying how to run the program unless the effective uid is 0.
pub fn require_root(program: &str, via: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "{program} needs root: it creates network namespaces and loads eBPF programs \
             (you are uid {euid}); run it through: sudo -E {via}"
        );
    }
    Ok(())
}

/// Fails with a clear message unless `CONNMIRROR_BIN` names a file (the fixtures
/// panic instead).
pub fn require_connmirror_bin(via: &str) -> Result<()> {
    match std::env::var_os("CONNMIRROR_BIN") {
        None => bail!(
            "CONNMIRROR_BIN is not set; run this through `{via}`, which builds the daemon and sets it"
        ),
        Some(bin) if !std::path::Path::new(&bin).is_file() => bail!(
            "CONNMIRROR_BIN={} is not a file; run this through `{via}`",
            bin.to_string_lossy()
        ),
        Some(_) => Ok(()),
    }
}

/// Waits, interruptibly, until no other process holds the lock [`crate::Topology`]
/// takes, printing `waiting` once if it has to wait.
///
/// `Topology::new` itself waits up to 30 minutes without looking at any flag; this
/// check first keeps Ctrl-C responsive while another test run owns the host. The
/// lock is released again at once, so a race with another process only means
/// `Topology::new` waits as it always did.
pub fn wait_for_host(waiting: &str) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .with_context(|| format!("open {HOST_LOCK}"))?;
    let mut said = false;
    loop {
        // SAFETY: flock on an open descriptor has no memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(()); // closing `file` releases the lock
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != ErrorKind::WouldBlock {
            bail!("flock({HOST_LOCK}): {err}");
        }
        if !said {
            eprintln!("{waiting}");
            said = true;
        }
        sleep(Duration::from_millis(200))?;
    }
}

/// When a [`LiveStream`]'s senders stop on their own.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Senders stop after this long.
    pub duration: Duration,
    /// Or after this many bytes each, whichever comes first.
    pub max_bytes_each_way: u64,
}

/// Bytes moved so far, by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Client → server bytes written by the client.
    pub c2s_sent: u64,
    /// Client → server bytes read by the server.
    pub c2s_received: u64,
    /// Server → client bytes written by the server.
    pub s2c_sent: u64,
    /// Server → client bytes read by the client.
    pub s2c_received: u64,
}

#[derive(Debug, Default)]
struct Counters {
    c2s_sent: AtomicU64,
    c2s_received: AtomicU64,
    s2c_sent: AtomicU64,
    s2c_received: AtomicU64,
}

/// Flags shared by the four I/O threads.
#[derive(Debug, Default)]
struct Flags {
    /// Senders finish their current chunk, send FIN and return.
    stop: AtomicBool,
    /// Everyone returns at once, with an error.
    abort: AtomicBool,
}

impl Flags {
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst) || interrupted()
    }
}

type Side = JoinHandle<Result<(Digest, u64), String>>;

/// A bidirectional stream bounded by time; see the module docs.
///
/// Dropping it aborts the stream (its threads return within [`POLL`]).
#[derive(Debug)]
pub struct LiveStream {
    counters: Arc<Counters>,
    flags: Arc<Flags>,
    start: Instant,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
    /// client send, client receive, server send, server receive.
    threads: Option<[Side; 4]>,
}

impl LiveStream {
    /// Listens on `service` in `server`, connects from `client` and starts sending
    /// both ways.
    pub fn start(
        client: &Netns,
        server: &Netns,
        service: SocketAddr,
        bounds: Bounds,
    ) -> Result<LiveStream> {
        let listener = server
            .run(|| TcpListener::bind(service))
            .with_context(|| format!("bind {service} in {}", server.name()))?;
        let client_stream = client
            .run(|| TcpStream::connect_timeout(&service, Duration::from_secs(5)))
            .with_context(|| format!("connect to {service} from {}", client.name()))?;
        let server_stream = accept(&listener, Instant::now() + Duration::from_secs(5))?;
        drop(listener);
        let start = Instant::now();
        let client_addr = client_stream.local_addr().context("getsockname")?;
        let server_addr = server_stream.local_addr().context("getsockname")?;

        let counters = Arc::new(Counters::default());
        let flags = Arc::new(Flags::default());
        let spawn = |name: &str, f: Box<dyn FnOnce() -> Result<(Digest, u64), String> + Send>| {
            thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .with_context(|| format!("spawn {name} thread"))
        };
        let sides = |stream: TcpStream,
                     who: &'static str,
                     seed: u64,
                     sent: fn(&Counters) -> &AtomicU64,
                     received: fn(&Counters) -> &AtomicU64|
         -> Result<[Side; 2]> {
            let writer = stream.try_clone().context("dup socket")?;
            let (c, f) = (counters.clone(), flags.clone());
            let sending = spawn(
                &format!("{who}-send"),
                Box::new(move || send(who, writer, seed, bounds, start, sent(&c), &f)),
            )?;
            let (c, f) = (counters.clone(), flags.clone());
            let receiving = spawn(
                &format!("{who}-recv"),
                Box::new(move || receive(who, stream, received(&c), &f)),
            )?;
            Ok([sending, receiving])
        };
        let [cs, cr] = sides(
            client_stream,
            "client",
            C2S_SEED,
            |c| &c.c2s_sent,
            |c| &c.s2c_received,
        )?;
        let [ss, sr] = sides(
            server_stream,
            "server",
            S2C_SEED,
            |c| &c.s2c_sent,
            |c| &c.c2s_received,
        )?;
        Ok(LiveStream {
            counters,
            flags,
            start,
            client_addr,
            server_addr,
            threads: Some([cs, cr, ss, sr]),
        })
    }

    /// Bytes moved so far.
    pub fn progress(&self) -> Progress {
        let c = &self.counters;
        Progress {
            c2s_sent: c.c2s_sent.load(Ordering::Relaxed),
            c2s_received: c.c2s_received.load(Ordering::Relaxed),
            s2c_sent: c.s2c_sent.load(Ordering::Relaxed),
            s2c_received: c.s2c_received.load(Ordering::Relaxed),
        }
    }

    /// Time since the connection was established.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether both sides have sent everything and read EOF.
    pub fn is_finished(&self) -> bool {
        self.threads
            .as_ref()
            .is_none_or(|t| t.iter().all(JoinHandle::is_finished))
    }

    /// Asks both senders to stop now (before their bounds), then waits as
    /// [`LiveStream::finish`] does.
    pub fn stop(self, timeout: Duration) -> Result<Exchange> {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.finish(timeout)
    }

    /// Waits (at most `timeout`, interruptibly) for both sides to read EOF and
    /// returns what each sent and received.
    pub fn finish(mut self, timeout: Duration) -> Result<Exchange> {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() {
            if interrupted() {
                self.flags.abort.store(true, Ordering::SeqCst);
                bail!(Interrupted);
            }
            if Instant::now() >= deadline {
                self.flags.abort.store(true, Ordering::SeqCst);
                bail!(
                    "the stream did not finish within {timeout:?} of being asked to: {:?}",
                    self.progress()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        let elapsed = self.start.elapsed();
        let [cs, cr, ss, sr] = self.threads.take().expect("threads");
        let join = |h: Side| -> Result<(Digest, u64)> {
            match h.join() {
                Ok(r) => r.map_err(|e| anyhow::anyhow!(e)),
                Err(payload) => std::panic::resume_unwind(payload),
            }
        };
        let (c_sent, c_sent_bytes) = join(cs)?;
        let (c_recv, c_recv_bytes) = join(cr)?;
        let (s_sent, s_sent_bytes) = join(ss)?;
        let (s_recv, s_recv_bytes) = join(sr)?;
        Ok(Exchange {
            client: Peer {
                addr: self.client_addr,
                sent: c_sent,
                sent_bytes: c_sent_bytes,
                received: c_recv,
                received_bytes: c_recv_bytes,
            },
            server: Peer {
                addr: self.server_addr,
                sent: s_sent,
                sent_bytes: s_sent_bytes,
                received: s_recv,
                received_bytes: s_recv_bytes,
            },
            elapsed,
        })
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        if let Some(threads) = self.threads.take() {
            self.flags.abort.store(true, Ordering::SeqCst);
            for t in threads {
                let _ = t.join();
            }
        }
    }
}

fn accept(listener: &TcpListener, deadline: Instant) -> Result<TcpStream> {
    listener
        .set_nonblocking(true)
        .context("set listener non-blocking")?;
    loop {
        interrupt_point()?;
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .context("set stream blocking")?;
                return Ok(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!(
                        "accept on {:?}: no connection within 5 s",
                        listener.local_addr()
                    );
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => bail!("accept on {:?}: {e}", listener.local_addr()),
        }
    }
}

/// Writes SplitMix64 data until the bounds or the stop flag, then sends FIN.
fn send(
    who: &str,
    mut stream: TcpStream,
    seed: u64,
    bounds: Bounds,
    start: Instant,
    counter: &AtomicU64,
    flags: &Flags,
) -> Result<(Digest, u64), String> {
    stream
        .set_write_timeout(Some(POLL))
        .map_err(|e| format!("{who}: set_write_timeout: {e}"))?;
    let mut rng = SplitMix64::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut sent = 0u64;
    while sent < bounds.max_bytes_each_way
        && start.elapsed() < bounds.duration
        && !flags.stop.load(Ordering::SeqCst)
    {
        let len = (bounds.max_bytes_each_way - sent).min(IO_CHUNK as u64) as usize;
        rng.fill(&mut buf);
        let mut off = 0;
        while off < len {
            if flags.aborted() {
                return Err(format!(
                    "{who} sending: aborted after {} bytes",
                    sent + off as u64
                ));
            }
            match stream.write(&buf[off..len]) {
                Ok(0) => return Err(format!("{who} sending: the socket accepts no more data")),
                Ok(k) => {
                    hasher.update(&buf[off..off + k]);
                    off += k;
                    counter.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if is_retry(&e) => {}
                Err(e) => {
                    return Err(format!(
                        "{who} sending: write after {} bytes: {e}",
                        sent + off as u64
                    ));
                }
            }
        }
        sent += len as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("{who}: shutdown(Write) after {sent} bytes: {e}"))?;
    Ok((hasher.into(), sent))
}

/// Reads to EOF, hashing.
fn receive(
    who: &str,
    mut stream: TcpStream,
    counter: &AtomicU64,
    flags: &Flags,
) -> Result<(Digest, u64), String> {
    stream
        .set_read_timeout(Some(POLL))
        .map_err(|e| format!("{who}: set_read_timeout: {e}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut received = 0u64;
    loop {
        if flags.aborted() {
            return Err(format!("{who} receiving: aborted after {received} bytes"));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok((hasher.into(), received)),
            Ok(k) => {
                hasher.update(&buf[..k]);
                received += k as u64;
                counter.fetch_add(k as u64, Ordering::Relaxed);
            }
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(format!("{who} receiving: read after {received} bytes: {e}")),
        }
    }
}

fn is_retry(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Total size of the regular files directly in `dir` (0 if it cannot be read).
///
/// The mirror writes each stream to its dump file as it reassembles it, so this is
/// a live view of how much it has captured.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// `utime + stime` of process `pid` from `/proc/PID/stat`, in seconds.
///
/// Fields 14 and 15 of `proc_pid_stat(5)`, in clock ticks (`sysconf(_SC_CLK_TCK)`),
/// counted after the `)` that ends the command name, which may itself hold spaces.
pub fn process_cpu_seconds(pid: i32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let mut text = String::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("read {path}"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no ')' in {text:?}"))?;
    // After ")": field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} unreadable in {text:?}", index + 3))
    };
    let ticks = tick(14 - 3)? + tick(15 - 3)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) returned {hz}");
    }
    Ok(ticks as f64 / hz as f64)
}

/// Namespaces whose names this process's fixtures made (`cm-PID-...`).
pub fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("cm-{pid}-");
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}
