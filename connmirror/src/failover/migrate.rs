//! Failback by migration: the standby moves the live connections it restored,
//! and those opened to it while it owned the services, back to the returning
//! primary, with `TCP_REPAIR` on both ends.
//!
//! On the standby (`--failback migrate`), for the services the primary
//! announced itself `Recovering` for:
//!
//! 1. the services are quiesced (client segments dropped at ingress, as during
//!    a takeover), so nothing new reaches the sockets;
//! 2. [`settle`]: the applications get a moment to read what is queued and
//!    write their answers (each receive queue empty, each send queue no
//!    longer growing). The sockets are those the standby restored and those
//!    its applications accepted while it owned the services, taken from them
//!    with [`sockets::take_established`];
//! 3. each socket is saved ([`crate::repair::save`]) and stays in repair mode;
//! 4. the plans go to the primary's agent over TCP ([`send`]): one [`Transfer`]
//!    frame, answered by one [`Receipt`] frame;
//! 5. on success each saved socket is let go silently ([`let_go`]:
//!    `connect(AF_UNSPEC)` in repair mode is `tcp_disconnect()` with
//!    `tp->repair` set, which sends nothing and wakes the application with
//!    `ECONNABORTED`), the addresses are released and the services are
//!    captured again; on failure every socket leaves repair mode and stays.
//!
//! On the primary the agent (`--handoff PATH`) rebuilds each plan with
//! [`crate::repair::restore`], leaves repair mode and hands the socket to the
//! application registered on its handoff socket ([`receive`]), with empty
//! recorded ranges: the application continues exactly where the socket stands.
//!
//! # Wire format
//!
//! One TCP connection per migration, to the agent's `--bind` address and
//! `--port` (the port its heartbeats use over UDP). Each frame is `u32 length
//! BE | JSON | HMAC-SHA256 (32 bytes)` under the shared key, the MAC covering
//! the length and the JSON. A transfer carries a counter that must be above every
//! counter the agent accepted before (the wall clock in nanoseconds, like the
//! heartbeats'), so a recorded transfer cannot be replayed; the receipt echoes it.
//!
//! # Requirements and limits
//!
//! The standby keeps a duplicate of every socket it hands to an application
//! (only under `--failback migrate`), so an application's `close()` alone no
//! longer ends a connection: it must `shutdown()` first (the echo example
//! does). Settling relies on the application answering what it read within
//! [`SETTLE`]; bytes an application holds in its own memory are not moved.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::key::Key;
use crate::repair::restore::{QueueMode, RepairedSocket, RestorePlan};
use crate::repair::save;
use crate::resume::handoff::{FlowMeta, Handoff, HandoffServer, Recorded, reset_undelivered};
use crate::{
    repair::sockets,
    sys::{self, sockopt},
};

/// Largest frame accepted, in bytes.
pub const MAX_FRAME: usize = 256 << 20;
/// How long [`settle`] waits at most.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long a connection to the peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long either side waits for the other's next frame.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);
const MAC_LEN: usize = 32;

/// The connections to take, from the node that serves them to `to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The sender's node id.
    pub node_id: String,
    /// The receiver's node id: a node refuses a transfer meant for another.
    pub to: String,
    /// Must grow from transfer to transfer (see the module docs).
    pub counter: u64,
    /// The sender's epoch.
    pub epoch: u64,
    /// One plan per connection, queue mode included.
    pub plans: Vec<RestorePlan>,
}

/// Primary → standby, first frame of a planned migration: quiesce these
/// services and get ready to take their connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    /// The sender's node id.
    pub node_id: String,
    /// The receiver's node id.
    pub to: String,
    /// Must grow from migration to migration; the [`Transfer`] that follows
    /// carries the same one.
    pub counter: u64,
    /// The sender's epoch; the receiver claims the next one.
    pub epoch: u64,
    /// The services whose connections follow.
    pub services: Vec<SocketAddr>,
}

/// Standby → primary: the answer to a [`Prepare`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepared {
    /// The [`Prepare`]'s counter.
    pub counter: u64,
    /// Why the receiver will not take the connections; `None` when the
    /// services are quiesced and it waits for the [`Transfer`].
    pub refused: Option<String>,
}

/// What became of a [`Transfer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The transfer's counter.
    pub counter: u64,
    /// Connections rebuilt and handed to the application.
    pub restored: u64,
    /// One message per connection that was not.
    pub errors: Vec<String>,
    /// Why the receiver took none of them (nothing was rebuilt, so the
    /// sender keeps every connection).
    #[serde(default)]
    pub refused: Option<String>,
}

/// What a migration did (`connmirror migrate --to NODE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateReport {
    /// The node the connections went to.
    pub to: String,
    /// Where it took them: its agent's address (a failback), or the
    /// standby's heartbeat address (a planned migration from the primary).
    pub peer: SocketAddr,
    /// The services handed over.
    pub services: Vec<SocketAddr>,
    /// Connections the node rebuilt and handed to its application.
    pub moved: u64,
    /// One message per connection it could not take.
    pub errors: Vec<String>,
    /// The epoch this node held; the node `to` claims the next one.
    pub epoch: u64,
}

/// Writes `value` as one authenticated frame.
pub fn write_frame(stream: &mut impl Write, key: &Key, value: &impl Serialize) -> io::Result<()> {
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
pub fn read_frame<T: DeserializeOwned>(stream: &mut impl Read, key: &Key) -> io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(io::Error::other(format!(
            "frame of {n} bytes, over {MAX_FRAME}"
        )));
    }
    // Grown as the bytes come, not allocated up front: before the MAC is
    // checked, a length field alone must not make this allocate 256 MiB.
    let mut rest = Vec::new();
    stream
        .by_ref()
        .take((n + MAC_LEN) as u64)
        .read_to_end(&mut rest)?;
    if rest.len() != n + MAC_LEN {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed inside a frame",
        ));
    }
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
    let len = |n: Result<usize, sys::SyscallError>| n.map_or(0, |n| n as i32);
    (sockets.iter())
        .map(|s| {
            (
                len(sys::socket::unread(s.as_fd())),
                len(sys::socket::unacked(s.as_fd())),
            )
        })
        .collect()
}

/// The next migration connection on `listener`, as a blocking stream with
/// [`RECEIPT_TIMEOUT`] on reads; pending without a listener.
pub async fn accept(
    listener: Option<&tokio::net::TcpListener>,
) -> io::Result<(TcpStream, SocketAddr)> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let (stream, from) = listener.accept().await?;
    Ok((blocking(stream)?, from))
}

/// Connects to `peer` from `bind` (the host's own address: a service
/// address moves during the migration), as a blocking stream with
/// [`RECEIPT_TIMEOUT`] on reads.
pub async fn connect_from(peer: SocketAddr, bind: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = match peer {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("socket(SOCK_STREAM)")?;
    if let Some(ip) = bind {
        (socket.bind(SocketAddr::new(ip, 0))).with_context(|| format!("binding to {ip}"))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(peer))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {peer}: no answer within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to {peer}"))?;
    blocking(stream).context("setting up the migration connection")
}

/// `stream` as a blocking std stream with [`RECEIPT_TIMEOUT`] on reads.
fn blocking(stream: tokio::net::TcpStream) -> io::Result<TcpStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(RECEIPT_TIMEOUT))?;
    Ok(stream)
}

/// Connects to `peer` for a migration, with [`RECEIPT_TIMEOUT`] on reads.
fn connect(peer: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {peer}"))?;
    stream
        .set_read_timeout(Some(RECEIPT_TIMEOUT))
        .context("SO_RCVTIMEO")?;
    Ok(stream)
}

/// Failback side (the standby): connects to the agent at `agent` and
/// [`ship`]s `sockets` in `transfer`.
pub fn send(
    agent: SocketAddr,
    key: &Key,
    sockets: &[TcpStream],
    transfer: Transfer,
) -> anyhow::Result<(Receipt, Vec<RestorePlan>)> {
    let mut stream = connect(agent)?;
    ship(&mut stream, key, sockets, transfer).with_context(|| format!("migrating to {agent}"))
}

/// Settles `sockets`, saves each into `transfer` and sends it on `stream`;
/// returns the receipt and the saves. Once the receiver took them, each socket is let go
/// silently ([`let_go`]); if anything fails before that, each leaves repair
/// mode and the connection goes on here ([`resume_here`]).
pub fn ship(
    stream: &mut TcpStream,
    key: &Key,
    sockets: &[TcpStream],
    mut transfer: Transfer,
) -> anyhow::Result<(Receipt, Vec<RestorePlan>)> {
    settle(sockets);
    let outcome = (|| {
        transfer.plans = (sockets.iter())
            .map(|s| save::save(s, QueueMode::Unsent))
            .collect::<Result<_, _>>()?;
        write_frame(stream, key, &transfer).context("sending the transfer")?;
        let receipt: Receipt = read_frame(stream, key).context("reading the receipt")?;
        anyhow::ensure!(
            receipt.counter == transfer.counter,
            "the receiver answered transfer {} instead of {}",
            receipt.counter,
            transfer.counter
        );
        if let Some(reason) = &receipt.refused {
            anyhow::bail!("{reason}");
        }
        Ok((receipt, std::mem::take(&mut transfer.plans)))
    })();
    for socket in sockets {
        let done = match outcome {
            Ok(_) => let_go(socket).map_err(|e| ("letting a migrated connection go", e)),
            Err(_) => resume_here(socket)
                .map_err(|e| ("resuming a connection after a failed migration", e)),
        };
        if let Err((what, err)) = done {
            tracing::warn!(%err, "{what}");
        }
    }
    outcome
}

/// Primary side of a planned migration (`connmirror migrate --to STANDBY`
/// on the agent), on `stream` to the standby ([`connect_from`]). `quiesce`
/// drops (`true`) or lets through again (`false`) the services' client
/// segments on this host's own capture (on-host mode; inline, the standby
/// quiesces them on the path and it does nothing). Asks the standby to
/// quiesce the services of
/// `prepare`, takes the server's established connections from it
/// ([`crate::repair::sockets::take_established`]), ships them and lets them go here.
/// If the standby refuses, nothing is touched; if anything fails later, the
/// connections go on here and the standby resumes the services when the
/// channel closes.
pub fn hand_over(
    mut stream: TcpStream,
    key: &Key,
    prepare: Prepare,
    quiesce: &dyn Fn(&[SocketAddr], bool) -> anyhow::Result<()>,
) -> anyhow::Result<MigrateReport> {
    let standby = stream.peer_addr().context("getpeername")?;
    write_frame(&mut stream, key, &prepare)
        .with_context(|| format!("asking {standby} to prepare"))?;
    let prepared: Prepared =
        read_frame(&mut stream, key).with_context(|| format!("reading the answer of {standby}"))?;
    anyhow::ensure!(
        prepared.counter == prepare.counter,
        "{standby} answered migration {} instead of {}",
        prepared.counter,
        prepare.counter
    );
    if let Some(reason) = prepared.refused {
        anyhow::bail!("the standby at {standby} will not take them: {reason}");
    }
    quiesce(&prepare.services, true).context("quiescing the services here")?;
    let moved = ship_taken(&mut stream, key, &prepare);
    if moved.is_err()
        && let Err(err) = quiesce(&prepare.services, false)
    {
        tracing::warn!("capturing the services again after a failed migration: {err:#}");
    }
    let (taken_errors, receipt) = moved.with_context(|| format!("migrating to {standby}"))?;
    let mut errors = taken_errors;
    errors.extend(receipt.errors);
    Ok(MigrateReport {
        to: prepare.to,
        peer: standby,
        services: prepare.services,
        moved: receipt.restored,
        errors,
        epoch: prepare.epoch,
    })
}

/// Takes the services' established connections from the server and ships
/// them; (connections that could not be taken, receipt).
fn ship_taken(
    stream: &mut TcpStream,
    key: &Key,
    prepare: &Prepare,
) -> anyhow::Result<(Vec<String>, Receipt)> {
    let taken = sockets::take_established(&prepare.services)
        .context("finding the services' connections")?;
    let transfer = Transfer {
        node_id: prepare.node_id.clone(),
        to: prepare.to.clone(),
        counter: prepare.counter,
        epoch: prepare.epoch,
        plans: Vec::new(),
    };
    let (receipt, _) = ship(stream, key, &taken.sockets, transfer)?;
    Ok((taken.errors, receipt))
}

/// Drops a saved socket's connection without a segment: `connect(AF_UNSPEC)`
/// in repair mode (see the module docs). The descriptor still needs closing.
pub fn let_go(socket: &TcpStream) -> io::Result<()> {
    Ok(sys::socket::disconnect(socket.as_fd())?)
}

/// Takes a saved socket out of repair mode: the migration failed and the
/// connection goes on here.
pub fn resume_here(socket: &TcpStream) -> io::Result<()> {
    Ok(sockopt::set(socket.as_fd(), &sockopt::TCP_REPAIR, &0)?)
}

/// Checks a frame's addressee and counter: it must name `node_id` and carry
/// a counter above `last` (then `last` moves up to it).
pub fn check_frame(
    to: &str,
    from: &str,
    counter: u64,
    node_id: &str,
    last: &mut u64,
) -> Result<(), String> {
    if to != node_id {
        return Err(format!("this is node {node_id:?}, not {to:?}"));
    }
    if counter <= *last {
        return Err(format!(
            "replayed migration from {from}: counter {counter} is not above {}",
            *last
        ));
    }
    *last = counter;
    Ok(())
}

/// Failback side (the agent): serves one migration connection. Rebuilds
/// every plan, hands the sockets to the application on `handoff` (waiting at
/// most `wait` for one), and answers with the receipt. `last` is the highest
/// transfer counter accepted so far; the transfer must be meant for `node_id`.
pub fn receive(
    mut stream: TcpStream,
    key: &Key,
    node_id: &str,
    last: &mut u64,
    handoff: &HandoffServer,
    wait: Duration,
) -> anyhow::Result<Receipt> {
    let transfer: Transfer =
        read_frame(&mut stream, key).context("reading a migration transfer")?;
    check_frame(
        &transfer.to,
        &transfer.node_id,
        transfer.counter,
        node_id,
        last,
    )
    .map_err(anyhow::Error::msg)?;
    let mut receipt = Receipt {
        counter: transfer.counter,
        restored: 0,
        errors: Vec::new(),
        refused: None,
    };
    // Refused before anything is rebuilt, so the sender keeps every
    // connection: rebuilding one nobody takes would reset it.
    if let Some(plan) = (transfer.plans.iter()).find(|p| !handoff.wait_for(p.server, wait)) {
        let reason = format!(
            "no application registered on the handoff socket for {} within {wait:?}",
            plan.server
        );
        receipt.refused = Some(reason.clone());
        write_frame(&mut stream, key, &receipt).context("answering the migration")?;
        anyhow::bail!(reason);
    }
    let mut handoffs = Vec::new();
    for (id, plan) in transfer.plans.iter().enumerate() {
        match rebuild(plan, id as u64 + 1) {
            Ok(handoff) => handoffs.push(handoff),
            Err(err) => receipt.errors.push(format!("{err:#}")),
        }
    }
    let total = handoffs.len();
    let failures = handoff.deliver_all(handoffs, wait);
    receipt.restored += (total - failures.len()) as u64;
    let undelivered = failures.into_iter().map(|(h, e)| reset_undelivered(h, e));
    receipt.errors.extend(undelivered);
    write_frame(&mut stream, key, &receipt).context("answering the migration")?;
    Ok(receipt)
}

/// Rebuilds one connection, ready to hand to the application.
fn rebuild(plan: &RestorePlan, id: u64) -> anyhow::Result<Handoff> {
    let stream = RepairedSocket::build(plan)?.leave_repair()?;
    Ok(handoff_here(stream, id, plan.server, plan.client))
}

/// A migrated connection as an application receives it: no recorded bytes,
/// since it continues exactly where the socket stands.
pub(crate) fn handoff_here(
    stream: TcpStream,
    id: u64,
    server: SocketAddr,
    client: SocketAddr,
) -> Handoff {
    let here = Recorded {
        start: 0,
        end: 0,
        acked: 0,
    };
    Handoff {
        stream,
        meta: FlowMeta {
            id,
            service: server,
            server,
            client,
            c2s: here,
            s2c: here,
        },
        c2s: Vec::new(),
        s2c: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A connected loopback pair: (client, server).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn prepare(counter: u64) -> Prepare {
        Prepare {
            node_id: "primary".into(),
            to: "standby".into(),
            counter,
            epoch: 1,
            services: vec!["198.18.1.2:7000".parse().unwrap()],
        }
    }

    #[test]
    fn a_signed_frame_reads_back_and_a_forged_one_is_refused() {
        let key = Key::from_bytes(b"0123456789abcdef");
        let other = Key::from_bytes(b"fedcba9876543210");
        let (mut client, mut server) = pair();

        write_frame(&mut client, &key, &prepare(7)).unwrap();
        write_frame(&mut client, &other, &prepare(8)).unwrap();
        let first: Prepare = read_frame(&mut server, &key).unwrap();
        let forged = read_frame::<Prepare>(&mut server, &key).unwrap_err();

        assert_eq!((first.counter, first.to.as_str()), (7, "standby"));
        assert_eq!(
            forged.to_string(),
            "frame with a MAC that does not verify (wrong key or forged)"
        );
    }

    #[test]
    fn an_oversize_or_malformed_frame_is_refused() {
        let key = Key::from_bytes(b"0123456789abcdef");
        let (mut client, mut server) = pair();
        client
            .write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .unwrap();
        let oversize = read_frame::<Prepare>(&mut server, &key).unwrap_err();
        let (mut client, mut server) = pair();
        write_frame(
            &mut client,
            &key,
            &Receipt {
                counter: 1,
                restored: 0,
                errors: Vec::new(),
                refused: None,
            },
        )
        .unwrap();
        let malformed = read_frame::<Prepare>(&mut server, &key).unwrap_err();

        assert_eq!(
            oversize.to_string(),
            format!("frame of {} bytes, over {MAX_FRAME}", MAX_FRAME + 1)
        );
        assert_eq!(
            malformed.to_string(),
            "malformed frame: unknown field `restored`, expected one of `node_id`, `to`, \
             `counter`, `epoch`, `services` at line 1 column 23"
        );
    }

    #[test]
    fn a_frame_for_another_node_or_with_an_old_counter_is_refused() {
        let mut last = 10;

        let elsewhere = check_frame("nobody", "primary", 11, "standby", &mut last);
        let replayed = check_frame("standby", "primary", 10, "standby", &mut last);
        let fresh = check_frame("standby", "primary", 11, "standby", &mut last);
        let again = check_frame("standby", "primary", 11, "standby", &mut last);

        assert_eq!(
            elsewhere,
            Err("this is node \"standby\", not \"nobody\"".into())
        );
        assert_eq!(
            replayed,
            Err("replayed migration from primary: counter 10 is not above 10".into())
        );
        assert_eq!((fresh, last), (Ok(()), 11));
        assert_eq!(
            again,
            Err("replayed migration from primary: counter 11 is not above 11".into())
        );
    }
}
