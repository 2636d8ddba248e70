//! A verifying Redis client for the replay tests: one connection that
//! pipelines `INCR KEY` (Redis's inline command protocol: one command per
//! line) and checks that reply `n` is exactly `:n\r\n`. A fresh key counts
//! from 1, so every reply is known in advance: a lost, repeated or reordered
//! command shows up as the wrong number at an exact position.
//!
//! The writer and the reader run on their own threads inside the client's
//! namespace (sockets stay in the namespace they were created in).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::failover::Program;
use crate::netns::Netns;

/// Commands written per writer wakeup.
const BATCH: u64 = 20;
/// Pause between batches.
const PAUSE: Duration = Duration::from_millis(10);

/// A running counter connection.
#[derive(Debug)]
pub struct Counter {
    key: String,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    replies: Arc<AtomicU64>,
    writer: JoinHandle<Result<(), Failure>>,
    reader: JoinHandle<Result<(), Failure>>,
}

/// How the reader or the writer stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection was reset (ECONNRESET).
    Reset,
    /// Anything else, described.
    Other(String),
}

/// What [`Counter::finish`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterResult {
    /// Commands written.
    pub sent: u64,
    /// Replies read, each the expected number.
    pub replies: u64,
    /// The writer's error, if any.
    pub write_error: Option<Failure>,
    /// The reader's, if any.
    pub read_error: Option<Failure>,
}

impl CounterResult {
    /// Whether the connection was reset. The kernel reports a RST's error to
    /// one system call only (`sk_err` is cleared when read), so either the
    /// writer or the reader sees ECONNRESET, and the other a broken pipe or EOF.
    pub fn was_reset(&self) -> bool {
        [&self.write_error, &self.read_error]
            .iter()
            .any(|e| **e == Some(Failure::Reset))
    }
}

impl Counter {
    /// Connects from inside `ns` to the Redis server at `server` and starts
    /// incrementing `key` ([`BATCH`] commands every [`PAUSE`]).
    pub fn start(ns: &Netns, server: SocketAddr, key: &str) -> Counter {
        let stream = ns.run(|| TcpStream::connect_timeout(&server, Duration::from_secs(10)));
        let stream = stream.unwrap_or_else(|e| panic!("connect to redis at {server}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let replies = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stream, stop, paused, sent) = (
                stream.try_clone().expect("dup"),
                stop.clone(),
                paused.clone(),
                sent.clone(),
            );
            let command = format!("INCR {key}\r\n");
            thread::spawn(move || write_commands(stream, &command, [&stop, &paused], &sent))
        };
        let reader = {
            let replies = replies.clone();
            thread::spawn(move || read_replies(stream, &replies))
        };
        Counter {
            key: key.to_owned(),
            stop,
            paused,
            sent,
            replies,
            writer,
            reader,
        }
    }

    /// Stops writing (until [`resume`](Self::resume)) and waits (at most
    /// `timeout`) until every command written so far is answered.
    pub fn pause(&self, timeout: Duration) -> Result<(), String> {
        self.paused.store(true, Ordering::Relaxed);
        // The writer may be inside one last batch: let it finish.
        thread::sleep(PAUSE * 2);
        let sent = self.sent.load(Ordering::Relaxed);
        self.wait_progress(sent - self.replies(), timeout)
    }

    /// Writes again after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// Replies verified so far.
    pub fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }

    /// Waits until `n` more replies than now arrived; `Err` names the key.
    pub fn wait_progress(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let target = self.replies() + n;
        let deadline = Instant::now() + timeout;
        while self.replies() < target {
            if Instant::now() >= deadline || self.reader.is_finished() {
                return Err(format!(
                    "{}: {} of {target} replies within {timeout:?}",
                    self.key,
                    self.replies()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits (at most `timeout`) for the reader to stop on its own, as a reset
    /// connection's does, then reports like [`finish`](Self::finish).
    pub fn wait_failure(self, timeout: Duration) -> CounterResult {
        let deadline = Instant::now() + timeout;
        while !self.reader.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.finish(Duration::ZERO)
    }

    /// Stops writing, waits (at most `timeout`) for every reply, and reports.
    pub fn finish(self, timeout: Duration) -> CounterResult {
        let Counter {
            stop,
            sent,
            replies,
            writer,
            reader,
            ..
        } = self;
        stop.store(true, Ordering::Relaxed);
        let write_error = writer.join().expect("writer thread").err();
        let target = sent.load(Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        while replies.load(Ordering::Relaxed) < target
            && !reader.is_finished()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
        let read_error = match reader.is_finished() {
            true => reader.join().expect("reader thread").err(),
            // Still waiting: leave the thread blocked on its socket (the
            // namespace's teardown ends it).
            false => None,
        };
        CounterResult {
            sent: target,
            replies: replies.load(Ordering::Relaxed),
            write_error,
            read_error,
        }
    }
}

fn write_commands(
    mut stream: TcpStream,
    command: &str,
    [stop, paused]: [&AtomicBool; 2],
    sent: &AtomicU64,
) -> Result<(), Failure> {
    let batch = command.repeat(BATCH as usize);
    while !stop.load(Ordering::Relaxed) {
        if paused.load(Ordering::Relaxed) {
            thread::sleep(PAUSE);
            continue;
        }
        stream
            .write_all(batch.as_bytes())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionReset => Failure::Reset,
                _ => Failure::Other(format!(
                    "write after {} commands: {e}",
                    sent.load(Ordering::Relaxed)
                )),
            })?;
        sent.fetch_add(BATCH, Ordering::Relaxed);
        thread::sleep(PAUSE);
    }
    // Half-close: the server answers everything and then sees EOF.
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

fn read_replies(stream: TcpStream, replies: &AtomicU64) -> Result<(), Failure> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::Reset);
            }
            Err(e) => return Err(Failure::Other(format!("read: {e}"))),
        }
        let n = replies.load(Ordering::Relaxed) + 1;
        if line != format!(":{n}\r\n") {
            return Err(Failure::Other(format!(
                "reply {n} is {line:?}, expected \":{n}\\r\\n\""
            )));
        }
        replies.store(n, Ordering::Relaxed);
    }
}

/// `redis-server` in the foreground on `addr`, with persistence off.
pub fn server(ns: &Netns, addr: SocketAddr) -> Program {
    let args = [
        "--port".to_owned(),
        addr.port().to_string(),
        "--bind".to_owned(),
        addr.ip().to_string(),
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
        "--protected-mode".to_owned(),
        "no".to_owned(),
        "--daemonize".to_owned(),
        "no".to_owned(),
    ];
    Program::start(ns, "redis-server", args, "Ready to accept connections")
}

/// Sends one inline command to the Redis at `addr` from inside `ns`; returns
/// its reply line.
pub fn command(ns: &Netns, addr: SocketAddr, line: &str) -> String {
    ns.run(|| {
        let mut stream = TcpStream::connect(addr).expect("connect to redis");
        stream.write_all(line.as_bytes()).expect("write");
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).expect("read");
        reply
    })
}
