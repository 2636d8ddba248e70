//! The agent's [`Outbox`]: what it has produced, shipped and had acknowledged
//! on the current stream, the replication lag, each flow's marks as produced
//! and as the standby acknowledged them, hence the exposure (what a failover
//! would lose now, per service) and the sync limits each acknowledgment makes
//! safe (on-host `--sync`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    time::Instant,
};

use connmirror_common::{Direction, FlowKey};
use prometheus_client::registry::Unit;
use tokio::sync::mpsc;

use crate::{
    flow::{endpoints, record::Record, stream::StreamMarks},
    hold::SyncLimit,
    metrics::Family,
    replication::channel::{BATCH_HEADER, Batch, LinkStats, ReplicationLag, encode_record},
};

/// Record bytes a batch holds at most, give or take its last record: small
/// enough that the standby acknowledges the first part of a large drain
/// while the agent still sends the rest (what `--sync` waits for), large
/// enough that each costs a few Noise messages.
const BATCH_TARGET: usize = 256 << 10;

/// A standby further behind than this many bytes is dropped (it reconnects
/// and starts again from a checkpoint) instead of the agent buffering more.
pub(super) const MAX_BACKLOG: u64 = 256 << 20;

/// A change to one flow's [`SyncLimit`], effective once the standby
/// acknowledges the batch that carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitChange {
    /// The standby holds the flow up to here.
    Set(FlowKey, SyncLimit),
    /// The flow closed.
    Remove(FlowKey),
}

/// Shipped but not yet acknowledged.
struct Pending {
    end: u64,
    at: Instant,
    /// The flows' marks the batch carried, in order: (id, side, marks).
    marks: Vec<(u64, usize, StreamMarks)>,
    /// The flows it closed.
    closed: Vec<u64>,
}

/// One open flow's marks ([`CLIENT`] and [`SERVER`] side): as produced, and
/// as the standby acknowledged them.
struct Tracked {
    key: FlowKey,
    produced: [StreamMarks; 2],
    standby: [StreamMarks; 2],
}

/// The index of the client → server side in [`Tracked`]'s arrays.
const CLIENT: usize = 0;
/// The index of the server → client side.
const SERVER: usize = 1;

impl Tracked {
    /// Bytes a failover would lose now: server bytes sent past the
    /// standby's copy, and client bytes the primary acknowledged past it.
    fn exposure(&self) -> u64 {
        let (client, server) = (&self.produced[CLIENT], &self.produced[SERVER]);
        let told = client.acked.min(client.next);
        (server.next.saturating_sub(self.standby[SERVER].next))
            + told.saturating_sub(self.standby[CLIENT].next)
    }
}

/// The agent's side of replication, fed by the reader after every drain: it
/// encodes the records, counts positions, remembers when each batch left and
/// which sync limits it makes safe.
pub struct Outbox {
    /// Bytes produced on the current stream.
    pub(super) position: u64,
    /// Bytes the standby acknowledged on it.
    acked: u64,
    /// Where batches go; `None` while no standby is connected.
    link: Option<mpsc::UnboundedSender<Vec<u8>>>,
    unacked: VecDeque<Pending>,
    /// Open flows by journal id.
    flows: HashMap<u64, Tracked>,
    sync: bool,
    /// Record bytes produced over the agent's life.
    produced: u64,
    /// Bytes sent to a standby over the agent's life.
    sent: u64,
    /// Batches encoded by [`Outbox::ship`], not yet sent, with the
    /// position each ends at.
    outgoing: Vec<(u64, Vec<u8>)>,
    /// The services whose every byte the connected standby needs.
    whole: BTreeSet<SocketAddr>,
    /// Payload bytes left out because acknowledged before shipped.
    pub(super) elided: u64,
    /// What the first standby to connect gets instead of a checkpoint taken
    /// then: a checkpoint taken earlier and every record since, with their
    /// payload bytes ([`Outbox::keep_from`]).
    first: Option<(Vec<Record>, u64)>,
}

impl Outbox {
    /// An outbox with no standby yet; `sync` collects sync limits.
    pub fn new(sync: bool) -> Self {
        Self {
            position: 0,
            acked: 0,
            link: None,
            unacked: VecDeque::new(),
            flows: HashMap::new(),
            sync,
            produced: 0,
            sent: 0,
            outgoing: Vec::new(),
            whole: BTreeSet::new(),
            elided: 0,
            first: None,
        }
    }

    /// The first standby to connect gets `checkpoint`, taken now, and every
    /// record after it, instead of a checkpoint taken when it connects: a
    /// new owner's standbys connect a moment after its takeover, and bytes
    /// acknowledged meanwhile would be missing from a later checkpoint,
    /// while a standby whose live replay fed each connection from its first
    /// byte needs every byte past its own copy. Given up past
    /// [`MAX_BACKLOG`] bytes: that standby then gets a checkpoint when it
    /// connects.
    pub fn keep_from(&mut self, checkpoint: Vec<Record>) {
        let bytes = checkpoint.iter().map(payload_bytes).sum();
        self.first = Some((checkpoint, bytes));
    }

    /// Keeps `records` for the first standby ([`Outbox::keep_from`]); false
    /// when nothing is kept for it.
    fn keep(&mut self, records: &[Record]) -> bool {
        let Some((kept, bytes)) = &mut self.first else {
            return false;
        };
        *bytes += records.iter().map(payload_bytes).sum::<u64>();
        if *bytes > MAX_BACKLOG {
            tracing::warn!(
                "no standby connected within {MAX_BACKLOG} bytes of the takeover: \
                 the first one gets a checkpoint when it connects"
            );
            self.first = None;
            return false;
        }
        kept.extend_from_slice(records);
        true
    }

    /// A standby connected: a fresh stream starts at position 0 with
    /// `checkpoint` (every open flow and its retained bytes). It needs
    /// every byte of the services in `whole`. Returns how many records
    /// started the stream (more than the checkpoint's when records were
    /// kept for it: [`Outbox::keep_from`]).
    pub fn connected(
        &mut self,
        link: mpsc::UnboundedSender<Vec<u8>>,
        checkpoint: &[Record],
        ring_backlog: u64,
        whole: BTreeSet<SocketAddr>,
    ) -> usize {
        self.whole = whole;
        self.position = 0;
        self.acked = 0;
        self.unacked.clear();
        for flow in self.flows.values_mut() {
            flow.standby = Default::default();
        }
        self.link = Some(link);
        let kept = self.first.take().map(|(kept, _)| kept);
        let records = kept.as_deref().unwrap_or(checkpoint);
        self.ship(records, ring_backlog);
        records.len()
    }

    /// The standby went away: batches stay unshipped (and lag grows) until
    /// another connects and gets a checkpoint.
    pub fn disconnected(&mut self) {
        self.link = None;
    }

    /// Encodes `records` as batches of about [`BATCH_TARGET`] bytes and ships
    /// them when a standby is connected.
    ///
    /// Payload the receiver acknowledged within the same drain is left out
    /// (of services the standby does not need whole): the standby would
    /// drop it on arrival.
    pub fn ship(&mut self, records: &[Record], ring_backlog: u64) {
        if self.link.is_none() && self.keep(records) {
            return;
        }
        let elided = self.elide_acknowledged(records);
        let records = elided.as_slice();
        let mut start = 0;
        let mut body = vec![0; BATCH_HEADER];
        for (i, record) in records.iter().enumerate() {
            encode_record(record, &mut body);
            if body.len() >= BATCH_TARGET || i + 1 == records.len() {
                let next = vec![0; BATCH_HEADER];
                self.ship_batch(&records[start..=i], std::mem::replace(&mut body, next));
                start = i + 1;
            }
        }
        if start > 0 {
            self.send_outgoing(ring_backlog);
        }
    }

    /// Queues one batch: `body` holds `records` encoded behind room for its
    /// header.
    fn ship_batch(&mut self, records: &[Record], body: Vec<u8>) {
        let bytes = body.len() - BATCH_HEADER;
        let (marks, closed) = self.track(records);
        self.position += bytes as u64;
        self.produced += bytes as u64;
        match (&self.link, self.unacked.back_mut()) {
            // With no standby only the age of the oldest unshipped batch
            // matters (a reconnect starts over from a checkpoint, which
            // leaves out the flows closed meanwhile).
            (None, Some(pending)) => {
                pending.end = self.position;
                for id in closed {
                    self.flows.remove(&id);
                }
            }
            _ => self.unacked.push_back(Pending {
                end: self.position,
                at: Instant::now(),
                marks,
                closed,
            }),
        }
        self.outgoing.push((self.position, body));
    }

    /// Tells the standby the current lag without records (a keepalive).
    pub fn keepalive(&mut self, ring_backlog: u64) {
        let mut body = vec![0; BATCH_HEADER];
        Batch::write_header(&mut body, self.position, self.lag(ring_backlog));
        self.send(body);
    }

    /// Sends the batches queued by [`Outbox::ship`], each with the position
    /// it ends at and the lag.
    fn send_outgoing(&mut self, ring_backlog: u64) {
        let lag = self.lag(ring_backlog);
        for (end, mut body) in std::mem::take(&mut self.outgoing) {
            Batch::write_header(&mut body, end, lag);
            self.send(body);
        }
    }

    /// Sends one batch `body`, its header written, to a connected standby,
    /// dropping the standby once it fell more than [`MAX_BACKLOG`] behind.
    fn send(&mut self, body: Vec<u8>) {
        let Some(link) = &self.link else {
            return;
        };
        if self.position - self.acked > MAX_BACKLOG {
            tracing::warn!(
                behind = self.position - self.acked,
                "the standby fell more than {MAX_BACKLOG} bytes behind: dropping its channel"
            );
            self.link = None;
            return;
        }
        self.sent += (body.len() - BATCH_HEADER) as u64;
        if link.send(body).is_err() {
            self.link = None;
        }
    }

    /// The standby applied everything before `end`: the sync-limit changes
    /// that became safe, in order (none without `--sync`).
    pub fn acked(&mut self, end: u64) -> Vec<LimitChange> {
        self.acked = self.acked.max(end.min(self.position));
        let mut changes = Vec::new();
        while self.unacked.front().is_some_and(|p| p.end <= self.acked) {
            let pending = self.unacked.pop_front().expect("checked");
            self.apply(pending, &mut changes);
        }
        changes
    }

    /// The standby holds what `pending` carried.
    fn apply(&mut self, pending: Pending, changes: &mut Vec<LimitChange>) {
        let mut touched = Vec::new();
        for (id, side, marks) in pending.marks {
            if let Some(flow) = self.flows.get_mut(&id) {
                flow.standby[side] = marks;
                touched.push(id);
            }
        }
        if self.sync {
            touched.sort_unstable();
            touched.dedup();
            changes.extend(touched.iter().filter_map(|id| {
                let flow = self.flows.get(id)?;
                let limit = sync_limit(&flow.standby[CLIENT], &flow.standby[SERVER])?;
                Some(LimitChange::Set(flow.key, limit))
            }));
        }
        for id in pending.closed {
            if let Some(flow) = self.flows.remove(&id) {
                changes.extend(self.sync.then_some(LimitChange::Remove(flow.key)));
            }
        }
    }

    /// Bytes a failover would lose now, per service: what each open flow's
    /// server sent and its primary acknowledged of the client's bytes,
    /// beyond what the standby acknowledged holding. Records still in the
    /// ring are not counted ([`Outbox::lag`] counts them).
    pub fn exposure(&self) -> BTreeMap<SocketAddr, u64> {
        let mut services = BTreeMap::new();
        for flow in self.flows.values() {
            *services.entry(endpoints(&flow.key).0).or_default() += flow.exposure();
        }
        services
    }

    /// Record bytes not acknowledged by the standby (plus what still waits in
    /// the ring), and the age of the oldest of them.
    pub fn lag(&self, ring_backlog: u64) -> ReplicationLag {
        let seconds = self
            .unacked
            .front()
            .map_or(0.0, |p| p.at.elapsed().as_secs_f64());
        ReplicationLag {
            bytes: self.position - self.acked + ring_backlog,
            seconds,
        }
    }

    /// Bytes produced on the current stream: the position its next batch
    /// starts at.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether a standby is connected.
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// Follows the flows `records` open, update and close: the marks each
    /// side reached (as the batch that carries them), and the flows closed.
    fn track(&mut self, records: &[Record]) -> (Vec<(u64, usize, StreamMarks)>, Vec<u64>) {
        let (mut marks, mut closed) = (Vec::new(), Vec::new());
        let mut produce = |flows: &mut HashMap<u64, Tracked>, id, side: usize, m| {
            if let Some(flow) = flows.get_mut(&id) {
                flow.produced[side] = m;
            }
            marks.push((id, side, m));
        };
        for record in records {
            match record {
                Record::Open { id, key, .. } => self.open(*id, key),
                Record::CheckpointFlow(flow) => {
                    self.open(flow.id, &flow.key);
                    produce(&mut self.flows, flow.id, CLIENT, flow.c2s.marks);
                    produce(&mut self.flows, flow.id, SERVER, flow.s2c.marks);
                }
                Record::Update {
                    id, dir, snapshot, ..
                } => {
                    let side = match dir {
                        Direction::ClientToServer => CLIENT,
                        Direction::ServerToClient => SERVER,
                    };
                    produce(&mut self.flows, *id, side, snapshot.marks);
                }
                Record::Close { id, .. } => closed.push(*id),
                _ => {}
            }
        }
        (marks, closed)
    }

    /// Starts following flow `id` (a checkpoint may name it again).
    fn open(&mut self, id: u64, key: &FlowKey) {
        self.flows.entry(id).or_insert_with(|| Tracked {
            key: *key,
            produced: Default::default(),
            standby: Default::default(),
        });
    }

    /// The outbox's metrics: lag (with the ring's backlog), bytes produced and
    /// sent, whether a standby is connected.
    pub fn families(&self, ring_backlog: u64, link: &LinkStats) -> Vec<Family> {
        let lag = self.lag(ring_backlog);
        let mut families = Vec::from(lag_families(lag));
        families.extend([
            Family::counter(
                "replication_produced",
                "Journal record bytes produced for the standby.",
                Some(Unit::Bytes),
            )
            .count(Vec::new(), self.produced),
            Family::counter(
                "replication_sent",
                "Journal record bytes sent to a connected standby.",
                Some(Unit::Bytes),
            )
            .count(Vec::new(), self.sent),
            Family::counter(
                "replication_elided",
                "Payload bytes left out of the replication stream: their receiver had acknowledged them before they were shipped, and the standby does not need them (it keeps only unacknowledged bytes of their service).",
                Some(Unit::Bytes),
            )
            .count(Vec::new(), self.elided),
            Family::gauge(
                "replication_connected",
                "1 while a standby is connected to the replication channel.",
                None,
            )
            .set(Vec::new(), f64::from(u8::from(self.is_connected()))),
            self.exposure_family(),
        ]);
        families.extend(link.families());
        families
    }
}

impl Outbox {
    /// `replication_exposure_bytes{service}`.
    fn exposure_family(&self) -> Family {
        let mut family = Family::gauge(
            "replication_exposure",
            "On-host: bytes a failover would lose now, per service: server bytes sent and client bytes the primary acknowledged that the standby has not acknowledged holding.",
            Some(Unit::Bytes),
        );
        for (service, bytes) in self.exposure() {
            family = family.set(vec![("service", service.to_string())], bytes as f64);
        }
        family
    }
}

/// The `replica_lag` families (bytes and seconds), exported by the agent and
/// (as the agent last reported it) by the standby.
pub fn lag_families(lag: ReplicationLag) -> [Family; 2] {
    [
        Family::gauge(
            "replica_lag",
            "On-host mode: journal bytes the standby has not acknowledged yet, the primary's ring backlog included.",
            Some(Unit::Bytes),
        )
        .set(Vec::new(), lag.bytes as f64),
        Family::gauge(
            "replica_lag",
            "On-host mode: age of the oldest journal record the standby has not acknowledged; 0 when caught up.",
            Some(Unit::Seconds),
        )
        .set(Vec::new(), lag.seconds),
    ]
}

/// Where the standby's copy of a flow ends, in the flow's sequence spaces:
/// server data up to `s2c` origin + bytes, client bytes (and its FIN) up to
/// `c2s` origin + bytes. `None` before both origins are known.
pub(super) fn sync_limit(c2s: &StreamMarks, s2c: &StreamMarks) -> Option<SyncLimit> {
    let end = |marks: &StreamMarks, fin: bool| {
        let fin = u32::from(fin && marks.fin == Some(marks.next));
        Some(
            marks
                .origin?
                .wrapping_add(marks.next as u32)
                .wrapping_add(fin),
        )
    };
    Some(SyncLimit {
        seq: end(s2c, false)?,
        ack: end(c2s, true)?,
    })
}

impl Outbox {
    /// `records` without the payload bytes that the same drain's
    /// [`Record::Update`]s show the receiver acknowledged, except in flows
    /// of the services the standby needs whole.
    fn elide_acknowledged(&mut self, records: &[Record]) -> Vec<Record> {
        let acked = self.elidable(records);
        let mut kept = Vec::with_capacity(records.len());
        for record in records {
            let Record::Data {
                id,
                dir,
                offset,
                bytes,
            } = record
            else {
                kept.push(record.clone());
                continue;
            };
            let Some(&acked) = acked.get(&(*id, *dir)) else {
                kept.push(record.clone());
                continue;
            };
            let skip = acked.saturating_sub(*offset).min(bytes.len() as u64);
            self.elided += skip;
            if skip < bytes.len() as u64 {
                kept.push(Record::Data {
                    id: *id,
                    dir: *dir,
                    offset: offset + skip,
                    bytes: bytes.slice(skip as usize..),
                });
            }
        }
        kept
    }

    /// The acknowledged offset each flow direction's last update in
    /// `records` shows, for flows the standby does not need whole.
    fn elidable(&self, records: &[Record]) -> HashMap<(u64, Direction), u64> {
        let mut opened = HashMap::new();
        let mut acked = HashMap::new();
        for record in records {
            match record {
                Record::Open { id, key, .. } => {
                    opened.insert(*id, *key);
                }
                Record::Update {
                    id, dir, snapshot, ..
                } => {
                    let key = opened.get(id).or(self.flows.get(id).map(|f| &f.key));
                    if key.is_some_and(|key| !self.whole.contains(&endpoints(key).0)) {
                        acked.insert((*id, *dir), snapshot.marks.acked);
                    }
                }
                _ => {}
            }
        }
        acked
    }
}

/// A record's payload bytes, and a little for the rest of it: what
/// [`Outbox::keep_from`] counts.
fn payload_bytes(record: &Record) -> u64 {
    match record {
        Record::Data { bytes, .. } => 64 + bytes.len() as u64,
        _ => 64,
    }
}
