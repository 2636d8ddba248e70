//! The [`Holder`]: which queued segments the standbys now cover, in queue
//! order, and when to stop holding because they are gone.
//!
//! Pure bookkeeping, no I/O: the agent feeds it the segments NFQUEUE hands
//! over, the flows' [`SyncLimit`]s as each standby acknowledges batches, and
//! the clock; it answers with the verdicts to give. Queue order is release
//! order: a segment goes only after every segment queued before it, so no
//! flow is ever reordered (one flow's wait also delays the others, by at
//! most the same round trip to the standby).
//!
//! With several standbys (an agent's repeated `--replicate-to`, each known
//! by its index), a segment goes once every *connected* standby covers it:
//! whichever standby takes over then holds what the clients were told. A
//! standby that is not connected does not count; one that connects counts
//! at once, with no limits yet, so segments wait for its checkpoint's
//! acknowledgment. A fallback to async resumes once every connected standby
//! has acknowledged the position its own stream had reached.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use connmirror_common::FlowKey;

use crate::metrics::Histogram;

/// How far the standby holds one flow's journal, in the flow's sequence
/// spaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncLimit {
    /// One past the last server → client sequence number the standby holds:
    /// the primary may send data up to here.
    pub seq: u32,
    /// One past the last client → server sequence number the standby holds
    /// (the client's FIN included): the primary may acknowledge up to here.
    pub ack: u32,
}

impl SyncLimit {
    /// Whether a segment sending data up to `end` (its sequence number plus
    /// payload length) and acknowledging `ack` (if it carries an ACK) stays
    /// within the limit. Comparisons are modulo 2³² (RFC 793 sequence space).
    pub fn covers(&self, end: u32, ack: Option<u32>) -> bool {
        let within = |value: u32, limit: u32| (value.wrapping_sub(limit) as i32) <= 0;
        within(end, self.seq) && ack.is_none_or(|ack| within(ack, self.ack))
    }
}

/// One outgoing segment NFQUEUE handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// NFQUEUE's packet id.
    pub id: u32,
    /// Its flow.
    pub key: FlowKey,
    /// Its sequence number plus its payload length.
    pub end: u32,
    /// Its acknowledgment number, if it has the ACK flag.
    pub ack: Option<u32>,
    /// Whether it carries bytes the journal must hold first: payload, or a
    /// SYN (the flow itself).
    pub carries: bool,
}

/// What to do with a segment just handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Held; it goes out with a later [`Holder::release`].
    Held,
    /// Not holding now (fallen back to async): it may go at once.
    Pass,
    /// Drop it: the journal lacks its bytes (the capture ring was full), so
    /// no acknowledgment would ever cover it; TCP sends it again.
    Drop,
}

/// A held segment.
#[derive(Clone, Copy, Debug)]
struct Held {
    segment: Segment,
    at: Instant,
}

/// What the holder counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldStats {
    /// Segments held.
    pub held: u64,
    /// Held segments released.
    pub released: u64,
    /// Segments passed unheld while fallen back.
    pub passed: u64,
    /// Segments dropped because the journal lacked their bytes.
    pub dropped: u64,
    /// Times holding fell back to async.
    pub fallbacks: u64,
    /// Times holding resumed.
    pub resumptions: u64,
}

/// Holding state: the held segments in queue order, each standby's flow
/// limits, and whether holding fell back to async.
pub struct Holder {
    held: VecDeque<Held>,
    /// Per standby (by index): its flows' limits while it is connected,
    /// `None` while it is not (then it does not count).
    standbys: Vec<Option<HashMap<FlowKey, SyncLimit>>>,
    timeout: Duration,
    /// While fallen back: per standby, the replication position of its own
    /// stream it must still acknowledge before holding resumes (`None`
    /// once it has).
    fallback: Option<Vec<Option<u64>>>,
    stats: HoldStats,
    /// How long each released segment was held.
    held_for: Histogram,
}

/// The buckets of [`Holder::held_for`], in seconds: 100 µs to 2.5 s.
const HELD_FOR_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Holder {
    /// A holder for `standbys` standbys (none connected yet) that falls
    /// back once a segment waited `timeout`.
    pub fn new(timeout: Duration, standbys: usize) -> Self {
        Self {
            held: VecDeque::new(),
            standbys: vec![None; standbys],
            timeout,
            fallback: None,
            stats: HoldStats::default(),
            held_for: Histogram::of(&HELD_FOR_BOUNDS, []),
        }
    }

    /// Takes one segment; `journaled` is where the journal's copy of its
    /// flow's server → client bytes ends (`None`: the flow is unknown).
    pub fn arrive(&mut self, segment: Segment, journaled: Option<u32>, now: Instant) -> Arrival {
        let lacking = segment.carries
            && journaled.is_none_or(|end| (segment.end.wrapping_sub(end) as i32) > 0);
        if lacking {
            self.stats.dropped += 1;
            return Arrival::Drop;
        }
        if self.fallback.is_some() {
            self.stats.passed += 1;
            return Arrival::Pass;
        }
        self.stats.held += 1;
        self.held.push_back(Held { segment, at: now });
        Arrival::Held
    }

    /// Standby `standby` holds `key` up to `limit` (ignored while it is not
    /// connected: its next stream starts with a checkpoint).
    pub fn set_limit(&mut self, standby: usize, key: FlowKey, limit: SyncLimit) {
        if let Some(limits) = &mut self.standbys[standby] {
            limits.insert(key, limit);
        }
    }

    /// Standby `standby` saw `key` close.
    pub fn remove_limit(&mut self, standby: usize, key: &FlowKey) {
        if let Some(limits) = &mut self.standbys[standby] {
            limits.remove(key);
        }
    }

    /// Standby `standby` went away: what it held no longer counts (a new
    /// stream starts from nothing). True when this ends a fallback: every
    /// standby still connected had caught up.
    pub fn disconnected(&mut self, standby: usize) -> bool {
        self.standbys[standby] = None;
        self.resume_if_caught_up()
    }

    /// Pops the held segments at the front that the limits now cover (at
    /// `now`); the id of the last one, for one batch verdict, if any.
    pub fn release(&mut self, now: Instant) -> Option<u32> {
        let mut last = None;
        while let Some(front) = self.held.front() {
            if !self.covered(&front.segment) {
                break;
            }
            last = Some(front.segment.id);
            self.held_for
                .record(now.duration_since(front.at).as_secs_f64());
            self.held.pop_front();
            self.stats.released += 1;
        }
        last
    }

    /// How long each segment released so far was held (those a fallback
    /// released are not in it).
    pub fn held_for(&self) -> &Histogram {
        &self.held_for
    }

    /// A segment goes when every connected standby's limit for its flow
    /// covers it; with none connected, as if one were, holding no limit.
    fn covered(&self, segment: &Segment) -> bool {
        let mut connected = self.standbys.iter().flatten().peekable();
        if connected.peek().is_none() {
            return covered_by(&HashMap::new(), segment);
        }
        connected.all(|limits| covered_by(limits, segment))
    }

    /// Falls back to async when the oldest held segment waited past the
    /// timeout: every held segment goes (the id of the last), and holding
    /// resumes once each connected standby has acknowledged its stream's
    /// position in `positions` (by standby index).
    pub fn expire(&mut self, now: Instant, positions: &[u64]) -> Option<u32> {
        let oldest = self.held.front()?.at;
        if now.duration_since(oldest) < self.timeout {
            return None;
        }
        self.fallback = Some(positions.iter().map(|&p| Some(p)).collect());
        self.stats.fallbacks += 1;
        self.stats.released += self.held.len() as u64;
        let last = self.held.back().map(|h| h.segment.id);
        self.held.clear();
        last
    }

    /// Standby `standby` acknowledged position `acked` of its stream: true
    /// when this ends a fallback, so holding resumes.
    pub fn acknowledged(&mut self, standby: usize, acked: u64) -> bool {
        let Some(marks) = &mut self.fallback else {
            return false;
        };
        if marks[standby].is_some_and(|resume_at| acked >= resume_at) {
            marks[standby] = None;
        }
        self.resume_if_caught_up()
    }

    /// Standby `standby` connected: it counts from now on, holding no limit
    /// yet; its new stream started at position 0, and a fallback waits for
    /// its checkpoint, which ends at `checkpoint_end`.
    pub fn restarted(&mut self, standby: usize, checkpoint_end: u64) {
        self.standbys[standby] = Some(HashMap::new());
        if let Some(marks) = &mut self.fallback {
            marks[standby] = Some(checkpoint_end);
        }
    }

    /// Ends a fallback once a standby is connected and every connected
    /// standby acknowledged its mark; true if it did.
    fn resume_if_caught_up(&mut self) -> bool {
        let Some(marks) = &self.fallback else {
            return false;
        };
        let connected: Vec<&Option<u64>> = (self.standbys.iter().zip(marks))
            .filter_map(|(limits, mark)| limits.is_some().then_some(mark))
            .collect();
        if connected.is_empty() || connected.iter().any(|mark| mark.is_some()) {
            return false;
        }
        self.fallback = None;
        self.stats.resumptions += 1;
        true
    }

    /// Whether it is holding (not fallen back).
    pub fn is_holding(&self) -> bool {
        self.fallback.is_none()
    }

    /// Segments held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How long the oldest held segment has waited.
    pub fn oldest(&self, now: Instant) -> Option<Duration> {
        self.held.front().map(|h| now.duration_since(h.at))
    }

    /// What it counted.
    pub fn stats(&self) -> HoldStats {
        self.stats
    }
}

/// Whether one standby's `limits` cover `segment`: its flow's limit does. A
/// segment of a flow with no limit that carries nothing new goes too: its
/// flow closed on the standby (the last ACK after both FINs).
fn covered_by(limits: &HashMap<FlowKey, SyncLimit>, segment: &Segment) -> bool {
    match limits.get(&segment.key) {
        Some(limit) => limit.covers(segment.end, segment.ack),
        None => !segment.carries,
    }
}
