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

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use connmirror_handoff::{Application, DEFAULT_SOCKET, FlowMeta, Handoff};

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
    match Cli::parse().mode {
        Mode::Listen { addr } => listen(addr),
        Mode::Handoff { socket, services } => take_handoffs(&socket, &services),
    }
}

fn listen(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    say(&format!("listening {addr}"))?;
    for stream in listener.incoming() {
        let stream = stream.with_context(|| format!("accept on {addr}"))?;
        let peer = stream
            .peer_addr()
            .with_context(|| format!("peer of a connection on {addr}"))?;
        // Informational: a supervisor that stopped reading stdout (EPIPE) must
        // not stop the server.
        let _ = say(&format!("accepted {peer}"));
        spawn_echo(stream, None);
    }
    Ok(())
}

fn take_handoffs(socket: &std::path::Path, services: &[SocketAddr]) -> anyhow::Result<()> {
    let mut app = Application::connect(socket, services)?;
    say("registered")?;
    while let Some(handoff) = app.next()? {
        let FlowMeta {
            client, c2s, s2c, ..
        } = handoff.meta;
        say(&format!("resumed {client} c2s={} s2c={}", c2s.end, s2c.end))?;
        let Handoff {
            stream, meta, c2s, ..
        } = handoff;
        match unechoed(&meta, &c2s) {
            Ok(pending) => spawn_echo(stream, Some(pending.to_vec())),
            Err(e) => eprintln!("{client}: {e:#}; closing it"),
        }
    }
    say("the daemon closed the handoff socket")?;
    Ok(())
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

/// Echoes `stream` on its own thread, after writing `pending` back first.
fn spawn_echo(stream: TcpStream, pending: Option<Vec<u8>>) {
    let peer = stream
        .peer_addr()
        .map_or_else(|e| format!("(peer unknown: {e})"), |a| a.to_string());
    let name = format!("echo {peer}");
    let spawned = thread::Builder::new().name(name).spawn(move || {
        if let Err(e) = echo(stream, pending.as_deref().unwrap_or_default()) {
            eprintln!("{peer}: {e}");
        }
    });
    if let Err(e) = spawned {
        eprintln!("spawn an echo thread: {e}");
    }
}

/// Writes `pending`, then writes back everything read until EOF, then closes.
fn echo(mut stream: TcpStream, pending: &[u8]) -> io::Result<()> {
    stream.write_all(pending)?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return stream.shutdown(Shutdown::Write),
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Prints one line on stdout and flushes it, so a supervising process sees it at
/// once even through a pipe.
fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
