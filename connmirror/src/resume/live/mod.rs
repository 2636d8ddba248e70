//! Live replay (docs/failover.md, "Live replay"): a standby instance of an
//! unmodified, deterministic server kept in step with the primary all the
//! time, not only at failover, so that a connection's takeover costs the same
//! at any age.
//!
//! [`Live`] reads the flow records of whichever feed the standby has: its own
//! inline capture, or an on-host agent's replication. When a connection of a
//! live service opens with its handshake captured, it opens a connection of
//! its own to the instance and writes it every client → server byte as soon as
//! the byte is contiguous in the capture, in record order across connections.
//! It reads the instance's output and compares it, byte for byte, with the
//! server → client bytes captured from the primary ([`compare`]). Agreed bytes
//! are dropped at once, so what a connection holds is bounded by its lag, not
//! by its age.
//!
//! Each connection is *opening* until its instance connection is
//! established, then *protected* while the two agree. The first differing
//! byte makes it *divergent* (logged with the offset and both bytes, and
//! queued for the journal: whoever owns the flow table takes the queue with
//! [`Live::take_divergences`] and hands each to
//! [`FlowTable::mark_divergent`](crate::flow::FlowTable::mark_divergent), so
//! a task never waits on the journal); an
//! instance that is down (refuses, closes, breaks) or lags past the cap, or a connection whose
//! beginning the standby never saw, makes it *unprotected*, with that reason.
//! Either way the connection keeps running on the primary; only a takeover
//! resets it. At takeover ([`Live::take`]) nothing is replayed: the instance
//! finishes what it still owes, and its connection is handed over with the
//! output it produced past the primary's last byte.
//!
//! Uses: [`crate::flow`] (records), [`crate::metrics`]. Must not use:
//! failover or roles, which call in.

mod compare;
mod instance;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use connmirror_common::{Direction, FlowKey};

pub use compare::{Comparison, Divergence};
pub use instance::Taken;
use instance::{Handle, Input};

use crate::{
    flow::{TakeoverFlow, endpoints, record::Record},
    metrics::Family,
    resume::{Outcome, Unrecoverable, abort, splice},
};

/// Default of `--instance-lag-cap`: bytes one connection may hold (client
/// bytes not yet written plus output not yet matched) before it is unprotected.
pub const DEFAULT_LAG_CAP: usize = 4 << 20;

/// Why a live connection is not protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The instance refused the connection, closed it, or an I/O error broke it.
    InstanceDown,
    /// The instance fell further behind (or ahead) than the lag cap.
    InstanceLag,
    /// The connection was first seen mid-stream: the instance never saw its
    /// beginning (a standby started while it was open).
    MidStream,
    /// Bytes of the connection are missing from the feed.
    Gapped,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 4] = [
        Reason::InstanceDown,
        Reason::InstanceLag,
        Reason::MidStream,
        Reason::Gapped,
    ];

    /// The reason's name in status, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reason::InstanceDown => "instance-down",
            Reason::InstanceLag => "instance-lag",
            Reason::MidStream => "mid-stream",
            Reason::Gapped => "gapped",
        }
    }
}

/// Whether a live connection can be taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Its instance connection is not established yet: not protected, not
    /// failed either (the handshake's record, or the instance's accept, is
    /// still to come).
    Opening,
    /// The instance agrees with the primary so far.
    Protected,
    /// The instance produced a byte the primary did not send.
    Divergent(Divergence),
    /// The connection cannot be continued, for this reason.
    Unprotected(Reason),
}

/// Live connections of one service, by protection.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceProtection {
    /// Connections whose instance agrees with the primary so far.
    pub protected: u64,
    /// Connections whose instance connection is not established yet.
    #[serde(default)]
    pub opening: u64,
    /// Connections whose instance diverged.
    pub divergent: u64,
    /// Connections not protected, by reason.
    pub unprotected: BTreeMap<String, u64>,
    /// Bytes the instance owes or has not been written yet, summed.
    pub lag_bytes: u64,
    /// Age of the oldest captured byte the instance has not produced yet.
    pub lag_seconds: f64,
}

impl ServiceProtection {
    /// One line for `connmirror status`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} protected, {} opening, {} divergent",
            self.protected, self.opening, self.divergent
        );
        for (reason, n) in &self.unprotected {
            line += &format!(", {n} unprotected: {reason}");
        }
        line + &format!(", lag {} bytes, {:.3} s", self.lag_bytes, self.lag_seconds)
    }
}

/// Live replay for a standby's live services; cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Mutex<Inner>>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// The connections of the live services.
struct Inner {
    /// Instance address per live service.
    apps: BTreeMap<SocketAddr, SocketAddr>,
    /// Bytes one connection may hold.
    cap: usize,
    /// Connections by the feed's flow id.
    flows: HashMap<u64, Flow>,
    /// The flow id of each connection, for a takeover's lookup by key (a
    /// scan of `flows` per connection would make a takeover quadratic).
    ids: HashMap<FlowKey, u64>,
    /// Counts since start.
    totals: Arc<Totals>,
}

/// What live replay counted since it started, and the divergences not yet
/// taken for the journal.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Connections that diverged.
    divergences: AtomicU64,
    /// Connections that became unprotected, by [`Reason`] (in [`Reason::ALL`] order).
    unprotected: [AtomicU64; Reason::ALL.len()],
    /// Divergences since the last [`Live::take_divergences`], in the order found.
    diverged: Mutex<Vec<(FlowKey, Divergence)>>,
}

impl Totals {
    /// Counts the divergence of the connection `key` and queues it.
    fn divergence(&self, key: FlowKey, divergence: Divergence) {
        self.divergences.fetch_add(1, Ordering::Relaxed);
        let mut diverged = self.diverged.lock().expect("live divergences");
        diverged.push((key, divergence));
    }

    fn unprotected(&self, reason: Reason) {
        self.unprotected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One connection of a live service, as the feed knows it.
struct Flow {
    key: FlowKey,
    service: SocketAddr,
    /// Next client → server and server → client offsets the feed expects.
    next: [u64; 2],
    state: State,
}

enum State {
    /// Opened; its first update says whether the handshake was captured.
    /// Bytes that came before it wait here.
    Opening(Vec<Input>),
    /// Fed to the instance.
    Running(Handle),
    /// Not fed: it can never be protected.
    Unprotected(Reason),
}

impl Live {
    /// Live replay of the services in `apps` (service → instance address);
    /// a connection holding more than `cap` bytes is unprotected.
    pub fn new(apps: BTreeMap<SocketAddr, SocketAddr>, cap: usize) -> Live {
        Live(Arc::new(Mutex::new(Inner {
            apps,
            cap,
            flows: HashMap::new(),
            ids: HashMap::new(),
            totals: Arc::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("live replay state")
    }

    /// Feeds the records of one batch, in order. Must run inside the tokio
    /// runtime (a new connection spawns its task).
    pub fn feed(&self, records: &[Record]) {
        let mut inner = self.lock();
        for record in records {
            inner.feed(record);
        }
    }

    /// Takes the flows the table already held when live replay started
    /// (recovered from the journal by a restarted standby, `--pin`): their
    /// beginning is gone, so those of live services are `unprotected:
    /// mid-stream`, counted and shown until they close, and reset at takeover.
    pub fn recovered(&self, flows: impl IntoIterator<Item = (u64, FlowKey)>) {
        let mut inner = self.lock();
        for (id, key) in flows {
            inner.already_open(id, key);
        }
    }

    /// Hands over the instance connection of `key` at takeover, once the
    /// instance has produced every captured server byte (within `timeout`).
    /// `client_next` is the restored socket's receive offset: the instance
    /// must have been fed exactly that much.
    pub async fn take(
        &self,
        key: &FlowKey,
        client_next: u64,
        timeout: Duration,
    ) -> Result<Taken, TakeError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let shared = {
            let mut inner = self.lock();
            let id = (inner.ids.get(key).copied()).ok_or(TakeError::Failed(
                "live replay never saw the connection open".to_owned(),
            ))?;
            let flow = inner.remove(id).expect("every indexed id has its flow");
            let fed = flow.next[0];
            let handle = match flow.state {
                State::Running(handle) => handle,
                State::Unprotected(reason) => return Err(TakeError::Unprotected(reason)),
                State::Opening(_) => return Err(TakeError::of(&Protection::Opening)),
            };
            if fed != client_next {
                return Err(TakeError::Failed(format!(
                    "the instance was fed {fed} client bytes, the restored socket \
                     received {client_next}"
                )));
            }
            handle.send(Input::Take(timeout, reply));
            handle.shared
        };
        match answer.await {
            Ok(taken) => taken.map_err(TakeError::Failed),
            // The task ended before the takeover: its state says why.
            Err(_) => Err(TakeError::of(
                &shared.lock().expect("live connection state").protection,
            )),
        }
    }

    /// The divergences found since the last call, each once, in the order
    /// found: for the journal ([`FlowTable::mark_divergent`](crate::flow::FlowTable::mark_divergent)).
    /// A connection shows `divergent` in [`protection`](Self::protection) only
    /// once its divergence is queued here.
    pub fn take_divergences(&self) -> Vec<(FlowKey, Divergence)> {
        let totals = self.lock().totals.clone();
        let mut diverged = totals.diverged.lock().expect("live divergences");
        std::mem::take(&mut *diverged)
    }

    /// The protection of every live service's connections.
    pub fn protection(&self) -> BTreeMap<SocketAddr, ServiceProtection> {
        self.lock().protection()
    }

    /// Live replay's metrics.
    pub fn families(&self) -> Vec<Family> {
        let inner = self.lock();
        families(&inner.protection(), &inner.totals)
    }
}

/// Why a live connection could not be taken over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// The instance diverged from the primary before the takeover.
    #[error("divergent: {0}")]
    Divergent(Divergence),
    /// The connection was not protected.
    #[error("unprotected: {}", .0.name())]
    Unprotected(Reason),
    /// The instance did not finish in time, or its connection broke.
    #[error("{0}")]
    Failed(String),
}

impl TakeError {
    /// Why a connection whose task ended cannot be taken over.
    fn of(protection: &Protection) -> TakeError {
        match protection {
            Protection::Opening => {
                TakeError::Failed("the instance connection was still opening".into())
            }
            Protection::Protected => TakeError::Failed("the live connection's task ended".into()),
            Protection::Divergent(d) => TakeError::Divergent(*d),
            Protection::Unprotected(reason) => TakeError::Unprotected(*reason),
        }
    }
}

/// Continues the restored socket `client` of `flow` on its live instance
/// connection (spliced, after the output the instance produced past the
/// primary's last byte); resets it when live replay cannot.
pub(crate) async fn resume(
    client: std::net::TcpStream,
    flow: &TakeoverFlow,
    live: Option<Live>,
    timeout: Duration,
) -> Outcome {
    let (server, peer) = flow.endpoints();
    let what = format!("{server} ↔ {peer}");
    let taken = match live {
        Some(live) => live.take(&flow.key, flow.c2s.marks.next, timeout).await,
        None => Err(TakeError::Failed("live replay is not running".to_owned())),
    };
    match taken {
        // The instance connection may belong to another runtime (the
        // replication thread's): it moves to this one.
        Ok(Taken { conn, ahead }) => match conn.into_std().and_then(|conn| {
            conn.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(conn)
        }) {
            Ok(conn) => {
                tokio::spawn(splice(client, conn, ahead, what));
                Outcome::Live
            }
            Err(err) => {
                abort(client);
                let error = format!("{what}: moving the instance connection: {err}");
                Outcome::Failed(Unrecoverable::Unprotected, error)
            }
        },
        Err(err @ TakeError::Divergent(_)) => {
            abort(client);
            Outcome::Divergent(format!("{what}: {err}"))
        }
        Err(err) => {
            abort(client);
            Outcome::Failed(Unrecoverable::Unprotected, format!("{what}: {err}"))
        }
    }
}

impl Inner {
    /// Forgets connection `id`, and its key unless a newer id has it.
    fn remove(&mut self, id: u64) -> Option<Flow> {
        let flow = self.flows.remove(&id)?;
        if self.ids.get(&flow.key) == Some(&id) {
            self.ids.remove(&flow.key);
        }
        Some(flow)
    }

    fn feed(&mut self, record: &Record) {
        match record {
            Record::Open { id, key, .. } => self.open(*id, *key),
            Record::Data {
                id,
                dir,
                offset,
                bytes,
            } => self.data(*id, *dir, *offset, bytes),
            Record::Update {
                id, dir, snapshot, ..
            } => {
                let handshake = snapshot.marks.handshake;
                if *dir == Direction::ClientToServer {
                    self.started(*id, handshake);
                }
            }
            Record::Close { id, .. } => {
                self.remove(*id);
            }
            Record::CheckpointFlow(snapshot) => self.checkpointed(snapshot.id, snapshot.key),
            Record::OutOfOrder { .. }
            | Record::Divergent { .. }
            | Record::Quiet { .. }
            | Record::CheckpointBegin { .. }
            | Record::CheckpointEnd => {}
        }
    }

    fn open(&mut self, id: u64, key: FlowKey) {
        let (server, _) = endpoints(&key);
        if !self.apps.contains_key(&server) {
            return;
        }
        let flow = Flow {
            key,
            service: server,
            next: [0, 0],
            state: State::Opening(Vec::new()),
        };
        self.flows.insert(id, flow);
        self.ids.insert(key, id);
    }

    /// A connection open before live replay saw it: it can never be fed,
    /// so it is counted (and reset at takeover) as first seen mid-stream.
    fn already_open(&mut self, id: u64, key: FlowKey) {
        self.open(id, key);
        self.started(id, false);
    }

    /// A connection in a checkpoint. One this instance has been fed all
    /// along goes on under the checkpoint's id: a new owner's stream after a
    /// takeover starts with a checkpoint of the connections it took over,
    /// at the same offsets. Any other was open before live replay saw it: its
    /// history is not in the checkpoint, so the instance cannot be given it.
    fn checkpointed(&mut self, id: u64, key: FlowKey) {
        let Some(&known) = self.ids.get(&key) else {
            return self.already_open(id, key);
        };
        if known != id {
            let flow = self
                .flows
                .remove(&known)
                .expect("every indexed id has its flow");
            self.flows.insert(id, flow);
            self.ids.insert(key, id);
        }
    }

    /// The connection's first update: start feeding it, or not.
    fn started(&mut self, id: u64, handshake: bool) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        let State::Opening(waiting) = &mut flow.state else {
            return;
        };
        if !handshake {
            return self.set_unprotected(id, Reason::MidStream);
        }
        let waiting = std::mem::take(waiting);
        let (server, client) = endpoints(&flow.key);
        let what = format!("{server} ↔ {client}");
        let app = self.apps[&server];
        let handle = Handle::spawn(app, flow.key, what, self.cap, self.totals.clone());
        for input in waiting {
            handle.send(input);
        }
        flow.state = State::Running(handle);
    }

    fn data(&mut self, id: u64, dir: Direction, offset: u64, bytes: &[u8]) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        let side = usize::from(dir != Direction::ClientToServer);
        let next = flow.next[side];
        if offset > next {
            tracing::debug!(
                id,
                ?dir,
                offset,
                expected = next,
                "live replay: bytes missing from the feed"
            );
            return self.set_unprotected(id, Reason::Gapped);
        }
        // Bytes fed already come again in a new owner's checkpoint: only
        // what follows them is new.
        let Some(bytes) = bytes
            .get((next - offset) as usize..)
            .filter(|b| !b.is_empty())
        else {
            return;
        };
        flow.next[side] += bytes.len() as u64;
        let input = match dir {
            Direction::ClientToServer => Input::ClientBytes(bytes.to_vec()),
            _ => Input::ServerBytes(bytes.to_vec()),
        };
        match &mut flow.state {
            State::Opening(waiting) => waiting.push(input),
            State::Running(handle) => {
                handle.send(input);
            }
            State::Unprotected(_) => {}
        }
    }

    fn set_unprotected(&mut self, id: u64, reason: Reason) {
        let flow = self.flows.get_mut(&id).expect("the caller found it");
        if matches!(flow.state, State::Unprotected(_)) {
            return;
        }
        let (server, client) = endpoints(&flow.key);
        let what = format!("{server} ↔ {client}");
        tracing::warn!(
            flow = what,
            reason = reason.name(),
            "live replay: unprotected"
        );
        flow.state = State::Unprotected(reason);
        self.totals.unprotected(reason);
    }

    /// Each connection's protection now, with the totals since start updated
    /// for connections whose task changed it.
    fn protection(&self) -> BTreeMap<SocketAddr, ServiceProtection> {
        let now = Instant::now();
        let mut by_service: BTreeMap<SocketAddr, ServiceProtection> = (self.apps.keys())
            .map(|s| (*s, ServiceProtection::default()))
            .collect();
        for flow in self.flows.values() {
            let entry = by_service.entry(flow.service).or_default();
            let protection = match &flow.state {
                State::Opening(_) => Protection::Opening,
                State::Unprotected(reason) => Protection::Unprotected(*reason),
                State::Running(handle) => {
                    let shared = handle.shared.lock().expect("live connection state");
                    // Only a protected connection's instance is still fed.
                    if shared.protection == Protection::Protected {
                        entry.lag_bytes += (shared.unwritten + shared.owed) as u64;
                        if let Some(since) = shared.owed_since {
                            let age = (now - since).as_secs_f64();
                            entry.lag_seconds = entry.lag_seconds.max(age);
                        }
                    }
                    shared.protection
                }
            };
            match protection {
                Protection::Opening => entry.opening += 1,
                Protection::Protected => entry.protected += 1,
                Protection::Divergent(_) => entry.divergent += 1,
                Protection::Unprotected(reason) => {
                    *entry
                        .unprotected
                        .entry(reason.name().to_owned())
                        .or_default() += 1
                }
            }
        }
        by_service
    }
}

/// The metric families of live replay.
fn families(now: &BTreeMap<SocketAddr, ServiceProtection>, totals: &Totals) -> Vec<Family> {
    let divergences = Family::counter(
        "live_divergences",
        "Live connections whose instance produced a byte the primary did not send.",
        None,
    )
    .count(Vec::new(), totals.divergences.load(Ordering::Relaxed));
    let mut unprotected = Family::counter(
        "live_unprotected",
        "Live connections that became unprotected, by reason.",
        None,
    );
    for reason in Reason::ALL {
        let n = totals.unprotected[reason as usize].load(Ordering::Relaxed);
        unprotected = unprotected.count(vec![("reason", reason.name().to_owned())], n);
    }
    let mut connections = Family::gauge(
        "live_connections",
        "Open connections of live-replay services, by protection (and reason).",
        None,
    );
    let mut lag_bytes = Family::gauge(
        "live_lag",
        "Bytes the standby instance owes or has not been written yet, per service.",
        Some(prometheus_client::registry::Unit::Bytes),
    );
    let mut lag_seconds = Family::gauge(
        "live_lag",
        "Age of the oldest captured byte the standby instance has not produced yet.",
        Some(prometheus_client::registry::Unit::Seconds),
    );
    for (service, p) in now {
        let labels = |state: &str, reason: &str| {
            vec![
                ("service", service.to_string()),
                ("state", state.to_owned()),
                ("reason", reason.to_owned()),
            ]
        };
        connections = connections
            .set(labels("protected", ""), p.protected as f64)
            .set(labels("opening", ""), p.opening as f64)
            .set(labels("divergent", ""), p.divergent as f64);
        for reason in Reason::ALL {
            let n = p.unprotected.get(reason.name()).copied().unwrap_or(0);
            connections = connections.set(labels("unprotected", reason.name()), n as f64);
        }
        let service = vec![("service", service.to_string())];
        lag_bytes = lag_bytes.set(service.clone(), p.lag_bytes as f64);
        lag_seconds = lag_seconds.set(service, p.lag_seconds);
    }
    vec![
        connections,
        lag_bytes,
        lag_seconds,
        divergences,
        unprotected,
    ]
}

#[cfg(test)]
mod tests;
