//! Failback by migration: the standby moves the live connections it restored
//! back to the returning primary, with `TCP_REPAIR` on both ends.
//!
//! On the standby (`--failback migrate`), for the services the primary
//! announced itself `Recovering` for:
//!
//! 1. the services are quiesced (client segments dropped at ingress, as during
//!    a takeover), so nothing new reaches the sockets;
//! 2. [`settle`]: the handoff application gets a moment to read what is
//!    queued and write its answers (each receive queue empty, each send queue
//!    no longer growing);
//! 3. each socket is dumped ([`crate::dump`]) and stays in repair mode;
//! 4. the plans go to the primary's agent over TCP ([`send`]): one [`Batch`]
//!    frame, answered by one [`Receipt`] frame;
//! 5. on success each dumped socket is let go silently ([`let_go`]:
//!    `connect(AF_UNSPEC)` in repair mode is `tcp_disconnect()` with
//!    `tp->repair` set, which sends nothing and wakes the application with
//!    `ECONNABORTED`), the addresses are released and the services are
//!    captured again; on failure every socket leaves repair mode and stays.
//!
//! On the primary the agent (`--handoff PATH`) rebuilds each plan with
//! [`crate::restore`], leaves repair mode and hands the socket to the
//! application registered on its handoff socket ([`receive`]), with empty
//! recorded ranges: the application continues exactly where the socket stands.
//!
//! # Wire format
//!
//! One TCP connection per migration, to the agent's `--bind` address and
//! `--port` (the port its heartbeats use over UDP). Each frame is `u32 length
//! BE | JSON | HMAC-SHA256 (32 bytes)` under the shared key, the MAC covering
//! the length and the JSON. A batch carries a counter that must be above every
//! counter the agent accepted before (the wall clock in nanoseconds, like the
//! heartbeats'), so a recorded batch cannot be replayed; the receipt echoes it.
//!
//! # Requirements and limits
//!
//! The standby keeps a duplicate of every socket it hands to an application
//! (only under `--failback migrate`), so an application's `close()` alone no
//! longer ends a connection: it must `shutdown()` first (the echo example
//! does). Settling relies on the application answering what it read within
//! [`SETTLE`]; bytes an application holds in its own memory are not moved.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::handoff::{FlowMeta, Handoff, HandoffServer, Recorded};
use crate::heartbeat::Key;
use crate::restore::{RepairedSocket, RestorePlan};
use crate::sockopt;

/// Largest frame accepted, in bytes.
pub const MAX_FRAME: usize = 256 << 20;
/// How long [`settle`] waits at most.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long the standby waits for the agent's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);
const MAC_LEN: usize = 32;

/// Standby → agent: the connections to take.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The sender's node id.
    pub node_id: String,
    /// Must grow from batch to batch (see the module docs).
    pub counter: u64,
    /// The sender's epoch.
    pub epoch: u64,
    /// One plan per connection, queue mode included.
    pub plans: Vec<RestorePlan>,
}

/// Agent → standby: what became of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The batch's counter.
    pub counter: u64,
    /// Connections rebuilt and handed to the application.
    pub restored: u64,
    /// One message per connection that was not.
    pub errors: Vec<String>,
}

/// What a migration did (`connmirror migrate --to NODE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateReport {
    /// The node the connections went to.
    pub to: String,
    /// Its agent's address.
    pub agent: SocketAddr,
    /// The services handed over.
    pub services: Vec<SocketAddr>,
    /// Connections the node rebuilt and handed to its application.
    pub moved: u64,
    /// One message per connection it could not take.
    pub errors: Vec<String>,
    /// The epoch this standby held; the node claims the next one.
    pub epoch: u64,
}

/// Writes `value` as one authenticated frame.
pub fn write_frame(stream: &mut TcpStream, key: &Key, value: &impl Serialize) -> io::Result<()> {
    let json = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(|_| io::Error::other("frame too long"))?;
    let mut frame = Vec::with_capacity(4 + json.len() + MAC_LEN);
    frame.extend(len.to_be_bytes());
    frame.extend(json);
    let tag = key.sign(&frame);
    frame.extend(tag);
    stream.write_all(&frame)
}

/// Reads one authenticated frame; refuses a bad MAC or an oversize frame.
pub fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream, key: &Key) -> io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(io::Error::other(format!(
            "frame of {n} bytes, over {MAX_FRAME}"
        )));
    }
    let mut rest = vec![0u8; n + MAC_LEN];
    stream.read_exact(&mut rest)?;
    let (json, tag) = rest.split_at(n);
    let mut signed = len.to_vec();
    signed.extend(json);
    if !key.verify(&signed, tag) {
        return Err(io::Error::other(
            "frame with a MAC that does not verify (wrong key or forged)",
        ));
    }
    serde_json::from_slice(json).map_err(|e| io::Error::other(format!("malformed frame: {e}")))
}

/// Waits (at most [`SETTLE`]) until every socket's receive queue is empty and
/// its send queue stopped growing for 100 ms: the application answered
/// everything it was sent before the quiesce.
pub fn settle(sockets: &[TcpStream]) {
    let deadline = Instant::now() + SETTLE;
    let mut last = queues(sockets);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = queues(sockets);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now.iter().all(|(unread, _)| *unread == 0)
            && since.elapsed() >= Duration::from_millis(100)
        {
            return;
        }
    }
    tracing::warn!("migration: the application did not settle within {SETTLE:?}");
}

/// (unread, unsent) bytes of each socket (`SIOCINQ`, `SIOCOUTQ`).
fn queues(sockets: &[TcpStream]) -> Vec<(i32, i32)> {
    let get = |fd: i32, request| {
        let mut n: libc::c_int = 0;
        // SAFETY: both requests write one int.
        unsafe { libc::ioctl(fd, request, &raw mut n) };
        n
    };
    (sockets.iter())
        .map(|s| {
            (
                get(s.as_raw_fd(), libc::FIONREAD),
                get(s.as_raw_fd(), libc::TIOCOUTQ),
            )
        })
        .collect()
}

/// Sends `batch` to the agent at `agent` and returns its receipt.
pub fn send(agent: SocketAddr, key: &Key, batch: &Batch) -> anyhow::Result<Receipt> {
    let mut stream = TcpStream::connect_timeout(&agent, Duration::from_secs(5))
        .with_context(|| format!("connecting to the agent at {agent}"))?;
    stream
        .set_read_timeout(Some(RECEIPT_TIMEOUT))
        .context("SO_RCVTIMEO")?;
    write_frame(&mut stream, key, batch)
        .with_context(|| format!("sending the batch to {agent}"))?;
    let receipt: Receipt = read_frame(&mut stream, key)
        .with_context(|| format!("reading the receipt from {agent}"))?;
    anyhow::ensure!(
        receipt.counter == batch.counter,
        "the agent answered batch {} instead of {}",
        receipt.counter,
        batch.counter
    );
    Ok(receipt)
}

/// Drops a dumped socket's connection without a segment: `connect(AF_UNSPEC)`
/// in repair mode (see the module docs). The descriptor still needs closing.
pub fn let_go(socket: &TcpStream) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr with family AF_UNSPEC is valid.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    let len = size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr of `len` bytes.
    match unsafe { libc::connect(socket.as_raw_fd(), &raw const addr, len) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Takes a dumped socket out of repair mode: the migration failed and the
/// connection goes on here.
pub fn resume_here(socket: &TcpStream) -> io::Result<()> {
    sockopt::set_int(socket.as_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 0)
}

/// Agent side: serves one migration connection. Rebuilds every plan, hands
/// the sockets to the application on `handoff` (waiting at most `wait` for
/// one), and answers with the receipt. `last` is the highest batch counter
/// accepted so far.
pub fn receive(
    mut stream: TcpStream,
    key: &Key,
    last: &mut u64,
    handoff: &HandoffServer,
    wait: Duration,
) -> anyhow::Result<Receipt> {
    stream
        .set_read_timeout(Some(RECEIPT_TIMEOUT))
        .context("SO_RCVTIMEO")?;
    let batch: Batch = read_frame(&mut stream, key).context("reading a migration batch")?;
    anyhow::ensure!(
        batch.counter > *last,
        "replayed migration batch from {}: counter {} is not above {}",
        batch.node_id,
        batch.counter,
        *last
    );
    *last = batch.counter;
    let mut receipt = Receipt {
        counter: batch.counter,
        restored: 0,
        errors: Vec::new(),
    };
    for (id, plan) in batch.plans.iter().enumerate() {
        match adopt(plan, id as u64 + 1, handoff, wait) {
            Ok(()) => receipt.restored += 1,
            Err(err) => receipt.errors.push(format!("{err:#}")),
        }
    }
    write_frame(&mut stream, key, &receipt).context("answering the migration")?;
    Ok(receipt)
}

/// Rebuilds one connection and hands it to the application.
fn adopt(
    plan: &RestorePlan,
    id: u64,
    handoff: &HandoffServer,
    wait: Duration,
) -> anyhow::Result<()> {
    let stream = RepairedSocket::build(plan)?.leave_repair()?;
    let here = Recorded {
        start: 0,
        end: 0,
        acked: 0,
    };
    let handoff_of = Handoff {
        stream,
        meta: FlowMeta {
            id,
            service: plan.server,
            server: plan.server,
            client: plan.client,
            c2s: here,
            s2c: here,
        },
        c2s: Vec::new(),
        s2c: Vec::new(),
    };
    handoff.deliver(handoff_of, wait).map_err(|(handoff, err)| {
        crate::takeover::abort(handoff.stream);
        anyhow::anyhow!("{} ↔ {}: {err}", plan.server, plan.client)
    })
}
