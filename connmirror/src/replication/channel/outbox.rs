//! The agent's [`Outbox`]: what it has produced, shipped and had acknowledged
//! on the current stream, the replication lag, and the sync limits each
//! acknowledgment makes safe (on-host `--sync`).

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use connmirror_common::{Direction, FlowKey};
use prometheus_client::registry::Unit;
use tokio::sync::mpsc;

use crate::{
    flow::record::{Record, SideSnapshot},
    hold::SyncLimit,
    metrics::Family,
    replication::channel::{Batch, LinkStats, ReplicationLag, encode_record},
};

/// A standby further behind than this many bytes is dropped (it reconnects
/// and starts again from a checkpoint) instead of the agent buffering more.
const MAX_BACKLOG: u64 = 256 << 20;

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
    changes: Vec<LimitChange>,
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
    /// Flow keys by journal id, for the sync limits.
    keys: HashMap<u64, FlowKey>,
    /// Both directions' snapshots seen in the batch being built, by id.
    sides: HashMap<u64, [Option<SideSnapshot>; 2]>,
    sync: bool,
    /// Record bytes produced over the agent's life.
    produced: u64,
    /// Bytes sent to a standby over the agent's life.
    sent: u64,
}

impl Outbox {
    /// An outbox with no standby yet; `sync` collects sync limits.
    pub fn new(sync: bool) -> Self {
        Self {
            position: 0,
            acked: 0,
            link: None,
            unacked: VecDeque::new(),
            keys: HashMap::new(),
            sides: HashMap::new(),
            sync,
            produced: 0,
            sent: 0,
        }
    }

    /// A standby connected: a fresh stream starts at position 0 with
    /// `checkpoint` (every open flow and its retained bytes).
    pub fn connected(
        &mut self,
        link: mpsc::UnboundedSender<Vec<u8>>,
        checkpoint: &[Record],
        ring_backlog: u64,
    ) {
        self.position = 0;
        self.acked = 0;
        self.unacked.clear();
        self.link = Some(link);
        self.ship(checkpoint, ring_backlog);
    }

    /// The standby went away: batches stay unshipped (and lag grows) until
    /// another connects and gets a checkpoint.
    pub fn disconnected(&mut self) {
        self.link = None;
    }

    /// Encodes `records` as one batch and ships it when a standby is connected.
    pub fn ship(&mut self, records: &[Record], ring_backlog: u64) {
        if records.is_empty() {
            return;
        }
        let mut bytes = Vec::new();
        for record in records {
            encode_record(record, &mut bytes);
        }
        let changes = self.limit_changes(records);
        self.position += bytes.len() as u64;
        self.produced += bytes.len() as u64;
        match (&self.link, self.unacked.back_mut()) {
            // With no standby only the age of the oldest unshipped batch
            // matters (a reconnect starts over from a checkpoint).
            (None, Some(pending)) => pending.end = self.position,
            _ => self.unacked.push_back(Pending {
                end: self.position,
                at: Instant::now(),
                changes,
            }),
        }
        self.send(bytes, ring_backlog);
    }

    /// Tells the standby the current lag without records (a keepalive).
    pub fn keepalive(&mut self, ring_backlog: u64) {
        self.send(Vec::new(), ring_backlog);
    }

    /// Sends a batch of `records` (and the lag) to a connected standby,
    /// dropping the standby once it fell more than [`MAX_BACKLOG`] behind.
    fn send(&mut self, records: Vec<u8>, ring_backlog: u64) {
        let lag = self.lag(ring_backlog);
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
        let batch = Batch {
            end: self.position,
            lag,
            records,
        };
        self.sent += batch.records.len() as u64;
        if link.send(batch.encode()).is_err() {
            self.link = None;
        }
    }

    /// The standby applied everything before `end`: the sync-limit changes
    /// that became safe, in order.
    pub fn acked(&mut self, end: u64) -> Vec<LimitChange> {
        self.acked = self.acked.max(end.min(self.position));
        let mut changes = Vec::new();
        while self.unacked.front().is_some_and(|p| p.end <= self.acked) {
            let pending = self.unacked.pop_front().expect("checked");
            changes.extend(pending.changes);
        }
        changes
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

    /// The sync-limit changes a batch of `records` makes safe: for every flow
    /// it updates, where each direction's journaled bytes end, in sequence
    /// space; for every flow it closes, a removal.
    fn limit_changes(&mut self, records: &[Record]) -> Vec<LimitChange> {
        if !self.sync {
            return Vec::new();
        }
        let Self { keys, sides, .. } = self;
        sides.clear();
        let mut closed = Vec::new();
        for record in records {
            match record {
                Record::Open { id, key, .. } => {
                    keys.insert(*id, *key);
                }
                Record::CheckpointFlow(flow) => {
                    keys.insert(flow.id, flow.key);
                    sides.insert(flow.id, [Some(flow.c2s.clone()), Some(flow.s2c.clone())]);
                }
                Record::Update {
                    id, dir, snapshot, ..
                } => {
                    let slot = match dir {
                        Direction::ClientToServer => 0,
                        Direction::ServerToClient => 1,
                    };
                    sides.entry(*id).or_default()[slot] = Some(snapshot.clone());
                }
                Record::Close { id, .. } => closed.push(*id),
                _ => {}
            }
        }
        let mut changes: Vec<LimitChange> = (sides.iter())
            .filter_map(|(id, [c2s, s2c])| {
                let key = keys.get(id)?;
                Some(LimitChange::Set(
                    *key,
                    sync_limit(c2s.as_ref()?, s2c.as_ref()?)?,
                ))
            })
            .collect();
        for id in closed {
            if let Some(key) = keys.remove(&id) {
                changes.push(LimitChange::Remove(key));
            }
        }
        changes
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
            Family::gauge(
                "replication_connected",
                "1 while a standby is connected to the replication channel.",
                None,
            )
            .set(Vec::new(), f64::from(u8::from(self.is_connected()))),
        ]);
        families.extend(link.families());
        families
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
pub(super) fn sync_limit(c2s: &SideSnapshot, s2c: &SideSnapshot) -> Option<SyncLimit> {
    let end = |side: &SideSnapshot, fin: bool| {
        let marks = side.marks;
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
