//! A verifying cache client for the replay tests: one connection that
//! pipelines increments of its own key and checks that reply `n` is exactly
//! `n`: `INCR KEY` answered `:n\r\n` by Redis (its inline command protocol:
//! one command per line), or `incr KEY 1` answered `n\r\n` by memcached (its
//! text protocol, after `set KEY 0 0 1` stores 0). A fresh key counts from 1,
//! so every reply is known in advance: a lost, repeated or reordered command
//! shows up as the wrong number at an exact position. Both servers run
//! unmodified, started here in the foreground.
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

/// The server a [`Counter`] talks to, and so its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// `redis-server`.
    Redis,
    /// `memcached`.
    Memcached,
}

impl Server {
    /// The command that increments `key` by one.
    fn command(self, key: &str) -> String {
        match self {
            Server::Redis => format!("INCR {key}\r\n"),
            Server::Memcached => format!("incr {key} 1\r\n"),
        }
    }

    /// The reply to the `n`th increment of a fresh key.
    fn reply(self, n: u64) -> String {
        match self {
            Server::Redis => format!(":{n}\r\n"),
            Server::Memcached => format!("{n}\r\n"),
        }
    }

    /// What makes `key` fresh, and its answer: memcached only increments a
    /// stored value.
    fn hello(self, key: &str) -> Option<(String, &'static str)> {
        match self {
            Server::Redis => None,
            Server::Memcached => Some((format!("set {key} 0 0 1\r\n0\r\n"), "STORED\r\n")),
        }
    }

    /// Starts this server in the foreground in `ns`, listening on `addr`
    /// only, with persistence off; returns once it accepts connections.
    pub fn start(self, ns: &Netns, addr: SocketAddr) -> Program {
        match self {
            Server::Redis => server(ns, addr),
            Server::Memcached => memcached(ns, addr),
        }
    }
}

/// A running counter connection.
#[derive(Debug)]
pub struct Counter {
    key: String,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    /// The writer's sleep between batches.
    pace: Duration,
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

    /// `Ok` when nothing failed, every command was answered in order, and
    /// more than `before` were sent; else what went wrong, with `self`.
    pub fn continued(&self, before: u64) -> Result<(), String> {
        let failed = self.write_error.is_some() || self.read_error.is_some();
        let problem = if failed {
            "the connection failed"
        } else if self.replies != self.sent {
            "not every command was answered, in order"
        } else if self.sent <= before {
            "no more commands than before"
        } else {
            return Ok(());
        };
        Err(format!("{problem}: {self:?}"))
    }
}

impl Counter {
    /// Connects from inside `ns` to the Redis server at `server` and starts
    /// incrementing `key` ([`BATCH`] commands every [`PAUSE`]).
    pub fn start(ns: &Netns, server: SocketAddr, key: &str) -> Counter {
        Counter::start_with(Server::Redis, ns, server, key)
    }

    /// [`start`](Self::start) against a server of kind `kind`.
    pub fn start_with(kind: Server, ns: &Netns, server: SocketAddr, key: &str) -> Counter {
        Counter::start_paced(kind, ns, server, key, PAUSE)
    }

    /// [`start_with`](Self::start_with), writing [`BATCH`] commands every
    /// `pause` instead of every [`PAUSE`]: many connections at a bounded rate.
    pub fn start_paced(
        kind: Server,
        ns: &Netns,
        server: SocketAddr,
        key: &str,
        pause: Duration,
    ) -> Counter {
        let stream = ns.run(|| TcpStream::connect_timeout(&server, Duration::from_secs(10)));
        let mut stream = stream.unwrap_or_else(|e| panic!("connect to {kind:?} at {server}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        if let Some((hello, answer)) = kind.hello(key) {
            stream.write_all(hello.as_bytes()).expect("write the hello");
            let mut reply = vec![0u8; answer.len()];
            std::io::Read::read_exact(&mut stream, &mut reply).expect("read the hello's answer");
            assert_eq!(
                String::from_utf8_lossy(&reply),
                answer,
                "{kind:?} at {server}"
            );
        }
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
            let command = kind.command(key);
            thread::spawn(move || write_commands(stream, &command, [&stop, &paused], &sent, pause))
        };
        let reader = {
            let replies = replies.clone();
            thread::spawn(move || read_replies(stream, kind, &replies))
        };
        Counter {
            key: key.to_owned(),
            stop,
            paused,
            pace: pause,
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
        thread::sleep(self.pace * 2);
        let sent = self.sent.load(Ordering::Relaxed);
        self.wait_progress(sent - self.replies(), timeout)
    }

    /// Writes again after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// The key this connection increments.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Replies verified so far.
    pub fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }

    /// Whether the reader stopped: the connection ended, was reset, or a
    /// reply was wrong. No reply is verified after that.
    pub fn stopped(&self) -> bool {
        self.reader.is_finished()
    }

    /// Waits until `n` more replies than now arrived; `Err` names the key.
    pub fn wait_progress(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let target = self.replies() + n;
        let deadline = Instant::now() + timeout;
        while self.replies() < target {
            if Instant::now() >= deadline || self.stopped() {
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
    pause: Duration,
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
        thread::sleep(pause);
    }
    // Half-close: the server answers everything and then sees EOF.
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

fn read_replies(stream: TcpStream, kind: Server, replies: &AtomicU64) -> Result<(), Failure> {
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
        let expected = kind.reply(n);
        if line != expected {
            return Err(Failure::Other(format!(
                "reply {n} is {line:?}, expected {expected:?}"
            )));
        }
        replies.store(n, Ordering::Relaxed);
    }
}

/// `redis-server` in the foreground on `addr`, with persistence off.
pub fn server(ns: &Netns, addr: SocketAddr) -> Program {
    server_with(ns, addr, &[])
}

/// [`server`] with `extra` arguments after the others (`--maxclients 20000`).
pub fn server_with(ns: &Netns, addr: SocketAddr, extra: &[&str]) -> Program {
    let mut args = vec![
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
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
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

/// `memcached` in the foreground on `addr`, UDP off, as root (the tests'
/// user), with one worker thread; returns once it accepts connections (it
/// prints nothing when ready).
pub fn memcached(ns: &Netns, addr: SocketAddr) -> Program {
    let args = [
        "-l".to_owned(),
        addr.ip().to_string(),
        "-p".to_owned(),
        addr.port().to_string(),
        "-U".to_owned(),
        "0".to_owned(),
        "-u".to_owned(),
        "root".to_owned(),
        "-t".to_owned(),
        "1".to_owned(),
    ];
    let program = Program::spawn(ns, "memcached", args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "memcached never accepted on {addr}; stderr:\n{}",
            program.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    program
}
