//! An echo server that survives the failover of its host, through
//! [`connmirror_handoff`].
//!
//! The primary runs an ordinary echo server:
//!
//! ```text
//! cargo run -p connmirror-handoff --example echo -- listen 198.18.0.1:7000
//! ```
//!
//! It prints `listening <addr>`, then `accepted <client>` for each connection.
//!
//! The standby runs the same program registered with its connmirror daemon for the
//! service (the daemon's service must be in `handoff` mode):
//!
//! ```text
//! cargo run -p connmirror-handoff --example echo -- handoff \
//!     --socket /run/connmirror/handoff.sock --service 198.18.0.1:7000
//! ```
//!
//! It prints `registered` once the daemon accepted it. When the primary dies, the
//! daemon restores each connection and hands it over, and this program prints
//! `resumed <client> c2s=<end> s2c=<end>` for it and goes on echoing.
//!
//! Where an echo stands after a handoff: what it read is client offset `c2s.end`
//! (the next byte the restored socket yields), what it wrote is server offset
//! `s2c.end` (the restored socket's send queue already holds whatever the client
//! has not acknowledged). An echo writes back exactly what it reads, so the client
//! bytes `[s2c.end, c2s.end)` were received by the primary but not yet echoed: this
//! program writes them back first, from the recorded `c2s` bytes, then echoes as
//! usual. That needs the recording to reach back to `s2c.end`; if `c2s.start` is
//! past it, the connection cannot be resumed and is closed.
//!
//! One thread serves every connection, with `epoll(7)` (level-triggered): when a
//! connection is ready, it writes what it still owes the client, then reads once
//! more and writes that back, so it never holds more than one read. A thread per
//! connection would be shorter, but a takeover hands over thousands of connections
//! at once, and starting a thread for each takes longer than the whole takeover.
//! The daemon sends up to 253 connections per message; this program takes each
//! message whole ([`Application::next_bundle`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use connmirror_handoff::{Application, DEFAULT_SOCKET, FlowMeta, Handoff};
use nix::errno::Errno;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

#[derive(Parser)]
#[command(about = "An echo server that can resume connections handed over by connmirror")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Accept connections on ADDR and echo them (the primary).
    Listen { addr: SocketAddr },
    /// Register with the connmirror daemon and echo the connections it hands over
    /// (the standby).
    Handoff {
        /// The daemon's handoff socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// A service address to take connections of (repeatable).
        #[arg(long = "service", required = true)]
        services: Vec<SocketAddr>,
    },
}

fn main() -> anyhow::Result<()> {
    // One descriptor per connection: thousands after a takeover.
    connmirror_handoff::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    let source = match Cli::parse().mode {
        Mode::Listen { addr } => {
            let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
            listener
                .set_nonblocking(true)
                .with_context(|| format!("O_NONBLOCK on {addr}"))?;
            say(&format!("listening {addr}"))?;
            Source::Listener(listener)
        }
        Mode::Handoff { socket, services } => {
            let app = Application::connect(&socket, &services)?;
            say("registered")?;
            Source::Handoffs(app)
        }
    };
    serve(source)
}

/// Where new connections come from.
enum Source {
    /// Clients connecting (the primary).
    Listener(TcpListener),
    /// The daemon handing connections over (the standby).
    Handoffs(Application),
}

impl AsFd for Source {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::Listener(listener) => listener.as_fd(),
            Source::Handoffs(app) => app.as_fd(),
        }
    }
}

/// The epoll token of the [`Source`]; connections count from 1.
const SOURCE: u64 = 0;

/// Echoes every connection `source` brings, until the daemon closes the
/// handoff socket.
fn serve(mut source: Source) -> anyhow::Result<()> {
    let mut echoes = Echoes {
        epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?,
        echoes: HashMap::new(),
        next_token: SOURCE + 1,
        buf: vec![0u8; 64 << 10],
    };
    let readable = EpollEvent::new(EpollFlags::EPOLLIN, SOURCE);
    echoes
        .epoll
        .add(&source, readable)
        .context("epoll_ctl(ADD)")?;
    let mut events = vec![EpollEvent::empty(); 256];
    loop {
        let ready = match echoes.epoll.wait(&mut events, PollTimeout::NONE) {
            Ok(ready) => ready,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for event in &events[..ready] {
            match event.data() {
                SOURCE if !echoes.take(&mut source)? => {
                    say("the daemon closed the handoff socket")?;
                    return Ok(());
                }
                SOURCE => {}
                token => echoes.step(token),
            }
        }
    }
}

/// Every connection being echoed, by epoll token.
struct Echoes {
    epoll: Epoll,
    echoes: HashMap<u64, Echo>,
    next_token: u64,
    /// Where each read lands.
    buf: Vec<u8>,
}

impl Echoes {
    /// Takes the connections `source` has ready; false once the daemon closed
    /// the handoff socket.
    fn take(&mut self, source: &mut Source) -> anyhow::Result<bool> {
        match source {
            Source::Listener(listener) => loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        // Informational: a supervisor that stopped reading stdout
                        // (EPIPE) must not stop the server.
                        let _ = say(&format!("accepted {peer}"));
                        self.add(stream, Vec::new());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("accept"),
                }
            },
            Source::Handoffs(app) => {
                let Some(bundle) = app.next_bundle()? else {
                    return Ok(false);
                };
                let lines: String = bundle.iter().map(resumed_line).collect();
                say(lines.trim_end())?;
                for handoff in bundle {
                    self.resume(handoff);
                }
                Ok(true)
            }
        }
    }

    /// Echoes a handed-over connection, the client bytes the primary had not
    /// echoed first.
    fn resume(&mut self, handoff: Handoff) {
        let Handoff {
            stream, meta, c2s, ..
        } = handoff;
        match unechoed(&meta, &c2s) {
            Ok(pending) => self.add(stream, pending.to_vec()),
            Err(e) => eprintln!("{}: {e:#}; closing it", meta.client),
        }
    }

    /// Starts echoing `stream`, writing `pending` back first.
    fn add(&mut self, stream: TcpStream, pending: Vec<u8>) {
        let peer = stream
            .peer_addr()
            .map_or_else(|e| format!("(peer unknown: {e})"), |a| a.to_string());
        let token = self.next_token;
        self.next_token += 1;
        let interest = interest(&pending);
        let event = EpollEvent::new(interest, token);
        let added =
            (stream.set_nonblocking(true)).and_then(|()| Ok(self.epoll.add(&stream, event)?));
        match added {
            Ok(()) => {
                let echo = Echo {
                    stream,
                    pending,
                    peer,
                    interest,
                };
                self.echoes.insert(token, echo);
            }
            Err(e) => eprintln!("{peer}: {e}"),
        }
    }

    /// Moves the connection of `token` on, and forgets it once it is done.
    fn step(&mut self, token: u64) {
        let Some(echo) = self.echoes.get_mut(&token) else {
            return;
        };
        let kept = match echo.step(&mut self.buf) {
            Ok(Some(interest)) if interest == echo.interest => true,
            Ok(Some(interest)) => {
                echo.interest = interest;
                let mut event = EpollEvent::new(interest, token);
                let modified = self.epoll.modify(&echo.stream, &mut event);
                modified
                    .inspect_err(|e| eprintln!("{}: epoll_ctl(MOD): {e}", echo.peer))
                    .is_ok()
            }
            Ok(None) => false,
            Err(e) => {
                eprintln!("{}: {e}", echo.peer);
                false
            }
        };
        if !kept {
            // Deregistered explicitly: a duplicate of the socket (a standby
            // that keeps sockets for a migration) would keep it registered.
            let _ = self.epoll.delete(&echo.stream);
            self.echoes.remove(&token);
        }
    }
}

/// One connection: the bytes read and not yet written back.
struct Echo {
    stream: TcpStream,
    pending: Vec<u8>,
    peer: String,
    /// What epoll waits for: readable, or writable while bytes are pending.
    interest: EpollFlags,
}

/// What to wait for: readable when nothing is `pending`, else writable.
fn interest(pending: &[u8]) -> EpollFlags {
    match pending.is_empty() {
        true => EpollFlags::EPOLLIN,
        false => EpollFlags::EPOLLOUT,
    }
}

impl Echo {
    /// Writes what is pending; if all went, reads once and writes that back.
    /// Returns what to wait for next, or `None` once the client ended its side
    /// (this side is then shut down too).
    fn step(&mut self, buf: &mut [u8]) -> io::Result<Option<EpollFlags>> {
        self.flush()?;
        if self.pending.is_empty() {
            match self.stream.read(buf) {
                Ok(0) => return self.stream.shutdown(Shutdown::Write).map(|()| None),
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    self.flush()?;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(interest(&self.pending)))
    }

    /// Writes pending bytes until none are left or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether `e` means "try again later" (or was interrupted) rather than a failure.
fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// `resumed <client> c2s=<end> s2c=<end>`, with its newline.
fn resumed_line(handoff: &Handoff) -> String {
    let FlowMeta {
        client, c2s, s2c, ..
    } = handoff.meta;
    format!("resumed {client} c2s={} s2c={}\n", c2s.end, s2c.end)
}

/// The client bytes the primary read but had not echoed: `[s2c.end, c2s.end)`.
fn unechoed<'a>(meta: &FlowMeta, c2s: &'a [u8]) -> anyhow::Result<&'a [u8]> {
    let (read, written) = (meta.c2s, meta.s2c.end);
    if read.start > written {
        bail!(
            "the recording starts at client offset {} but the echo stands at {written}: \
             run the service with retention full",
            read.start
        );
    }
    if written > read.end {
        bail!(
            "the primary echoed {written} bytes but had read only {}",
            read.end
        );
    }
    Ok(&c2s[(written - read.start) as usize..])
}

/// Prints one line on stdout and flushes it, so a supervising process sees it at
/// once even through a pipe.
fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
