//! Failure detection on the standby: it listens for the primary's
//! authenticated heartbeats ([`crate::ownership::heartbeat`]), arms itself once it has
//! the primary's ownership information, and declares the primary lost after
//! a number of missed heartbeats (docs/architecture.md, "Ownership and failure
//! detection"). Forged, replayed or malformed datagrams are dropped and
//! counted; they neither keep a dead primary alive nor trigger anything.
//!
//! Once the standby owns services it announces them, under its epoch, to the
//! primary as last heard from ([`Detector::announce`]), and the detector
//! passes on the verified messages that concern what it owns
//! ([`Detector::claim`]): a heartbeat claiming one of its services under a
//! higher epoch (the standby steps down) and a returning primary's
//! `Recovering` message (failback). After a failback it sends `Yield` instead
//! ([`Detector::hand_back`]) until the primary claims the next epoch.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
};

use prometheus_client::registry::Unit;

use crate::{
    key::Key,
    metrics::{Family, Histogram},
    ownership::heartbeat::{self, HeartbeatStats, Kind, Message, Ownership, Verifier},
};

/// How the standby reacts to a lost primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Take over at once.
    Auto,
    /// Log it; a person runs `connmirror takeover`.
    Manual,
}

/// Detector settings.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The shared key.
    pub key: Key,
    /// Our cluster id.
    pub cluster_id: String,
    /// The primary's heartbeat interval.
    pub interval: Duration,
    /// Heartbeats missed before the primary is declared lost.
    pub missed: u32,
    /// What to do then.
    pub policy: Policy,
    /// The primary agent's address, to solicit its ownership from until the
    /// first heartbeat arrives (a standby that starts or restarts arms at once).
    pub solicit: Option<SocketAddr>,
    /// Our node id, in solicitations and in the heartbeats we send as owner.
    pub node_id: String,
}

/// The running detector: yields the last ownership of each primary it
/// declares lost (under [`Policy::Auto`]).
#[derive(Debug)]
pub struct Detector {
    lost: mpsc::Receiver<Ownership>,
    claims: mpsc::Receiver<(Message, SocketAddr)>,
    shared: Arc<Mutex<Shared>>,
    owner: watch::Sender<Option<(Kind, Ownership)>>,
}

/// What the watcher task shares with the standby.
#[derive(Debug)]
struct Shared {
    stats: HeartbeatStats,
    peer: Option<Peer>,
    /// The time between consecutive valid heartbeats from the primary.
    gaps: Histogram,
    /// When the last valid heartbeat arrived.
    last_heartbeat: Option<Instant>,
    /// Where ownership messages go besides the primary last heard from:
    /// the other standbys, once this one owns services (cluster mode).
    peers: Vec<SocketAddr>,
}

/// The buckets of the heartbeat gaps, in seconds: 5 ms to 2 s, finest
/// around the usual intervals (20 to 100 ms).
const GAP_BOUNDS: [f64; 15] = [
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 2.0,
];

impl Default for Shared {
    fn default() -> Self {
        Self {
            stats: HeartbeatStats::default(),
            peer: None,
            gaps: Histogram::of(&GAP_BOUNDS, []),
            last_heartbeat: None,
            peers: Vec::new(),
        }
    }
}

/// The primary as last heard from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its ownership information, as its last valid heartbeat had it.
    pub ownership: Ownership,
    /// Where that heartbeat came from.
    pub address: SocketAddr,
    /// Milliseconds since it arrived (when the status was taken).
    pub last_heartbeat_ms: u64,
    /// Whether the detector still counts it alive.
    pub alive: bool,
}

impl Detector {
    /// Binds the UDP socket and starts listening.
    pub async fn start(config: DetectorConfig) -> std::io::Result<Detector> {
        let socket = UdpSocket::bind(config.listen).await?;
        tracing::info!(listen = %config.listen, "listening for heartbeats");
        let (tx, lost) = mpsc::channel(1);
        let (claimed, claims) = mpsc::channel(16);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (owner, owned) = watch::channel(None);
        let outbox = Outbox { lost: tx, claimed };
        tokio::spawn(listen(socket, config, outbox, shared.clone(), owned));
        Ok(Detector {
            lost,
            claims,
            shared,
            owner,
        })
    }

    /// The next lost primary's ownership; pending while there is none.
    pub async fn lost(&mut self) -> Ownership {
        match self.lost.recv().await {
            Some(ownership) => ownership,
            None => std::future::pending().await,
        }
    }

    /// From now on, send `ownership` as heartbeats to the primary last heard
    /// from, every interval: a primary that comes back learns the higher epoch
    /// and steps down.
    pub fn announce(&self, ownership: Ownership) {
        self.owner.send_replace(Some((Kind::Heartbeat, ownership)));
    }

    /// Sends the ownership messages to `peers` too (the standbys left,
    /// which then watch this node as their primary), besides the primary
    /// last heard from.
    pub fn announce_to(&self, peers: Vec<SocketAddr>) {
        self.shared.lock().expect("detector lock").peers = peers;
    }

    /// From now on, send `ownership` as `Yield` messages instead: the
    /// services are the primary's again, and it claims the next epoch.
    pub fn hand_back(&self, ownership: Ownership) {
        self.owner.send_replace(Some((Kind::Yield, ownership)));
    }

    /// Stop sending ownership messages (nothing is owned or handed back).
    pub fn withdraw(&self) {
        self.owner.send_replace(None);
    }

    /// The next lost primary or claim ([`Detector::lost`], [`Detector::claim`]),
    /// whichever comes first.
    pub async fn next(&mut self) -> Detected {
        let Self { lost, claims, .. } = self;
        tokio::select! {
            Some(ownership) = lost.recv() => Detected::Lost(ownership),
            Some((message, from)) = claims.recv() => Detected::Claim(message, from),
            else => std::future::pending().await,
        }
    }

    /// The next verified message that concerns what this node owns or hands
    /// back: a heartbeat claiming one of its services under a higher epoch,
    /// or a `Recovering` message for one of them. Pending while there is none.
    pub async fn claim(&mut self) -> (Message, SocketAddr) {
        match self.claims.recv().await {
            Some(message) => message,
            None => std::future::pending().await,
        }
    }

    /// Heartbeats received so far, by outcome.
    pub fn stats(&self) -> HeartbeatStats {
        self.shared.lock().expect("detector lock").stats
    }

    /// Whether a valid heartbeat arrived after `since`.
    pub fn heard_since(&self, since: Instant) -> bool {
        let shared = self.shared.lock().expect("detector lock");
        shared.last_heartbeat.is_some_and(|at| at > since)
    }

    /// The primary as last heard from, if ever.
    pub fn peer(&self) -> Option<Peer> {
        self.shared.lock().expect("detector lock").peer.clone()
    }

    /// `heartbeat_gap_seconds`: how long the standby waited between
    /// consecutive valid heartbeats from the primary; how late they come
    /// under load, against the interval × missed that declares it lost.
    pub fn gap_family(&self) -> Family {
        let gaps = self.shared.lock().expect("detector lock").gaps.clone();
        Family::histogram(
            "heartbeat_gap",
            "Time between consecutive valid heartbeats from the primary (the primary is declared lost after --heartbeat-interval × --missed without one).",
            Some(Unit::Seconds),
        )
        .observe(Vec::new(), gaps)
    }
}

/// What [`Detector::next`] yields.
#[derive(Debug)]
pub enum Detected {
    /// The primary was lost (policy `auto`): its last ownership.
    Lost(Ownership),
    /// A message about what this node owns or hands back, and its sender.
    Claim(Message, SocketAddr),
}

/// The primary as last heard from, while it counts as alive.
struct Heard {
    at: Instant,
    ownership: Ownership,
}

/// Where the watcher task sends what the standby must act on.
struct Outbox {
    lost: mpsc::Sender<Ownership>,
    claimed: mpsc::Sender<(Message, SocketAddr)>,
}

/// Whether `message` concerns `own` (what this node owns or hands back): a
/// heartbeat under a higher epoch, or a returning primary, for one of its
/// services.
fn concerns(message: &Message, own: &Ownership) -> bool {
    let theirs = &message.ownership;
    let shared = theirs.services.iter().any(|s| own.services.contains(s));
    shared
        && theirs.node_id != own.node_id
        && match message.kind {
            Kind::Heartbeat => theirs.epoch > own.epoch,
            Kind::Recovering => true,
            Kind::Solicit | Kind::Yield => false,
        }
}

async fn listen(
    socket: UdpSocket,
    config: DetectorConfig,
    outbox: Outbox,
    shared: Arc<Mutex<Shared>>,
    owned: watch::Receiver<Option<(Kind, Ownership)>>,
) {
    let mut counter = heartbeat::initial_counter();
    let mut verifier = Verifier::new(config.key.clone(), &config.cluster_id);
    let deadline = config.interval * config.missed;
    let mut tick = tokio::time::interval(config.interval / 2);
    let mut heard: Option<Heard> = None;
    let mut last: Option<(Instant, SocketAddr)> = None;
    let mut buf = vec![0u8; crate::ownership::heartbeat::MAX_MESSAGE + 1];
    // Before reading anything: a heartbeat already queued must not make the
    // standby skip asking (then ask again every tick until one arrives).
    if let Some(agent) = config.solicit {
        counter += 1;
        solicit(&socket, &config, counter, agent).await;
    }
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let before = heard.as_ref().map(|h| h.at);
                if let Some(message) = receive(&mut verifier, &buf[..n], from, &mut heard) {
                    record_gap(&shared, before, heard.as_ref());
                    last = Some((Instant::now(), from));
                    let concerned = matches!(owned.borrow().as_ref(), Some((_, own)) if concerns(&message, own));
                    if concerned {
                        let _ = outbox.claimed.try_send((message, from));
                    }
                }
                publish(&shared, &verifier, heard.as_ref(), last);
            }
            _ = tick.tick() => {
                publish(&shared, &verifier, heard.as_ref(), last);
                if let (None, None, Some(agent)) = (&heard, last, config.solicit) {
                    counter += 1;
                    solicit(&socket, &config, counter, agent).await;
                }
                if let Some((kind, own)) = owned.borrow().as_ref() {
                    counter += 1;
                    let datagram = heartbeat::seal(&config.key, *kind, counter, own);
                    // Non-blocking sends: fine under the lock, and no copy per tick.
                    let peers = &shared.lock().expect("detector lock").peers;
                    for to in last.map(|(_, to)| to).iter().chain(peers) {
                        let _ = socket.try_send_to(&datagram, *to);
                    }
                }
                let Some(gone) = heard.take_if(|h| h.at.elapsed() > deadline) else { continue };
                declare_lost(&config, gone.ownership, &outbox.lost).await;
            }
        }
    }
}

/// Asks the agent at `agent` for its ownership: it answers with a heartbeat
/// at once. Sent every half interval until the first heartbeat arrives.
///
/// Awaited, not `try_send_to`: a socket just bound is not yet known writable
/// to tokio, so a first `try_send_to` fails with `WouldBlock` without sending,
/// and a heartbeat arriving meanwhile then ends the asking.
async fn solicit(socket: &UdpSocket, config: &DetectorConfig, counter: u64, agent: SocketAddr) {
    let asking = Ownership {
        node_id: config.node_id.clone(),
        cluster_id: config.cluster_id.clone(),
        ..Ownership::default()
    };
    let datagram = heartbeat::seal(&config.key, Kind::Solicit, counter, &asking);
    match socket.send_to(&datagram, agent).await {
        Ok(_) => tracing::debug!(%agent, "soliciting the primary's ownership"),
        Err(err) => tracing::debug!(%agent, %err, "soliciting the primary's ownership"),
    }
}

/// Updates what the standby can read: counts and the peer.
fn publish(
    shared: &Mutex<Shared>,
    verifier: &Verifier,
    heard: Option<&Heard>,
    last: Option<(Instant, SocketAddr)>,
) {
    let mut shared = shared.lock().expect("detector lock");
    shared.stats = verifier.stats;
    if let (Some(heard), Some((at, address))) = (heard, last) {
        shared.peer = Some(Peer {
            ownership: heard.ownership.clone(),
            address,
            last_heartbeat_ms: at.elapsed().as_millis() as u64,
            alive: true,
        });
    } else if let (Some(peer), Some((at, _))) = (shared.peer.as_mut(), last) {
        peer.last_heartbeat_ms = at.elapsed().as_millis() as u64;
        peer.alive = false;
    }
}

/// Notes when the last heartbeat arrived, and counts the gap between the
/// heartbeat heard `before` and the one just heard (none when this one
/// armed the detector, or was not a heartbeat).
fn record_gap(shared: &Mutex<Shared>, before: Option<Instant>, heard: Option<&Heard>) {
    let Some(heard) = heard else {
        return;
    };
    let mut shared = shared.lock().expect("detector lock");
    shared.last_heartbeat = Some(heard.at);
    if let Some(before) = before
        && heard.at > before
    {
        let gap = heard.at.duration_since(before).as_secs_f64();
        shared.gaps.record(gap);
    }
}

/// Verifies one datagram; the message if it was a valid heartbeat (which
/// arms the detector) or a returning primary's `Recovering` message.
fn receive(
    verifier: &mut Verifier,
    datagram: &[u8],
    from: SocketAddr,
    heard: &mut Option<Heard>,
) -> Option<Message> {
    match verifier.accept(datagram) {
        Ok(message) if message.kind == Kind::Heartbeat => {
            if heard.is_none() {
                let own = &message.ownership;
                tracing::info!(node = own.node_id, epoch = own.epoch, %from, "armed: primary heard");
            }
            *heard = Some(Heard {
                at: Instant::now(),
                ownership: message.ownership.clone(),
            });
            Some(message)
        }
        Ok(message) if message.kind == Kind::Recovering => Some(message),
        Ok(_) => None,
        Err(err) => {
            let rejected = verifier.stats.rejected();
            // Rate-limited: 1, 2, 4, 8, ... so a flood cannot flood the log.
            if rejected.is_power_of_two() {
                tracing::warn!(%from, %err, rejected, "heartbeat dropped");
            }
            None
        }
    }
}

async fn declare_lost(
    config: &DetectorConfig,
    ownership: Ownership,
    lost: &mpsc::Sender<Ownership>,
) {
    tracing::warn!(
        node = ownership.node_id,
        missed = config.missed,
        "primary lost: no valid heartbeat for {:?}",
        config.interval * config.missed
    );
    if config.policy == Policy::Auto {
        let _ = lost.send(ownership).await;
    } else {
        tracing::warn!("failover policy is manual: run `connmirror takeover`");
    }
}
