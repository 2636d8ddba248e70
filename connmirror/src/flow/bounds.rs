//! What keeps the flow table, and the kernel's flow map behind it, bounded:
//! closed flows are pruned once they fall quiet; past the memory cap the
//! flows idle longest that are not ready are evicted; and when only ready
//! flows are left, new flows are refused protection (counted, logged) rather
//! than a ready flow evicted. Each change the kernel's map must follow (a
//! flow forgotten, a flow refused) is queued for the engine, which owns the
//! map ([`FlowTable::take_kernel_changes`]).

use std::collections::{BTreeSet, HashSet, VecDeque};

use connmirror_common::FlowKey;

use super::{CloseReason, Flow, FlowTable, Readiness, Record};

/// Prunes ([`FlowTable::prune_closed`], once a second) a flow first seen
/// mid-stream must stay quiet for before it goes: two minutes.
pub const STALE_ROUNDS: usize = 120;

/// The table's bounds and what enforcing them did.
#[derive(Debug, Default)]
pub(super) struct Bounds {
    /// Most bytes the flows may hold together.
    pub(super) memory_cap: Option<usize>,
    /// Flows evicted under the memory cap so far.
    pub(super) evicted: u64,
    /// Flows pruned so far ([`FlowTable::pruned`]).
    pub(super) pruned: u64,
    /// Flows refused protection at the memory cap so far.
    pub(super) refused: u64,
    /// Whether new flows are refused: the cap was reached with only ready
    /// flows left to evict. Ends once the flows hold 90 % of the cap again.
    refusing: bool,
    /// The flows refused in the current refusing spell: their records that
    /// were already in the ring count once. At most the kernel map's size.
    refused_keys: HashSet<FlowKey>,
    /// `applied` at each of the last [`STALE_ROUNDS`] prunes, newest last:
    /// a flow not seen since the newest is quiet; how many it was not seen
    /// since is how many rounds it has been quiet here.
    prune_marks: VecDeque<u64>,
    /// Flows the kernel's map is to forget (pruned or evicted).
    forget: Vec<FlowKey>,
    /// Flows the kernel's map is to mark refused.
    refuse: BTreeSet<FlowKey>,
}

/// What the kernel's flow map is to follow: the flows to remove, and those
/// to mark refused ([`connmirror_common::FlowFlags::REFUSED`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelChanges {
    /// Flows the table no longer holds.
    pub forget: Vec<FlowKey>,
    /// Flows refused protection.
    pub refuse: Vec<FlowKey>,
}

impl FlowTable {
    /// Bounds the memory the flows hold; see the module docs for what
    /// happens past it.
    pub fn memory_cap(mut self, bytes: usize) -> Self {
        self.bounds.memory_cap = Some(bytes);
        self
    }

    /// Flows evicted under the memory cap so far.
    pub fn evicted(&self) -> u64 {
        self.bounds.evicted
    }

    /// Flows pruned so far: done or stale ([`prune_closed`](Self::prune_closed)),
    /// replaced by a new connection on their ports, or left behind by a
    /// failback ([`forget_served`](Self::forget_served)).
    pub fn pruned(&self) -> u64 {
        self.bounds.pruned
    }

    /// Flows refused protection at the memory cap so far.
    pub fn refused(&self) -> u64 {
        self.bounds.refused
    }

    /// Removes every flow that is done and saw no segment since the
    /// previous call: closed (both FINs, or a RST), or closing (a FIN) and
    /// not ready (first seen at its close: it could never be restored), and
    /// journals its close. The engine calls it once a second, so such a
    /// flow goes within one to two seconds of its last segment: late
    /// retransmissions of its FIN still find it. A flow first seen
    /// mid-stream (no handshake) goes too once it saw no segment for
    /// [`STALE_ROUNDS`] calls (with a journal, counting those before a
    /// restart: [`Record::Quiet`]): a connection's last ACK after its FINs went
    /// by unseen looks like one, and nothing else would end it. Should the
    /// connection live on, its next segment opens it again, as first seen
    /// mid-stream, which it was.
    pub fn prune_closed(&mut self) {
        let quiet = self.bounds.prune_marks.back().copied().unwrap_or(0);
        let gone: Vec<FlowKey> = (self.flows.iter())
            .filter(|(_, flow)| {
                flow.last_seen <= quiet && done(flow)
                    || unknown(flow) && self.quiet_rounds(flow) >= STALE_ROUNDS
            })
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            self.drop_flow(key);
        }
        let marks = &mut self.bounds.prune_marks;
        if marks.len() == STALE_ROUNDS {
            marks.pop_front();
        }
        marks.push_back(self.applied);
    }

    /// Forgets every flow of the services `service_ids` but those in
    /// `followed`; returns how many went. Once this host served those
    /// services, their segments passed uncaptured
    /// ([`connmirror_common::ServiceMode::OWNED`]), so what the table holds
    /// of their connections is stale: a connection restored at the takeover
    /// that closed since would look open, and be rebuilt as a ghost (or reset
    /// as gapped) at the next one. A failback calls it with the flows it
    /// moved and rebased ([`rebase`](Self::rebase)). Each is journaled
    /// closed, counted as pruned, and forgotten by the kernel's map.
    pub fn forget_served(&mut self, service_ids: &[u32], followed: &HashSet<FlowKey>) -> usize {
        let gone: Vec<FlowKey> = (self.flows.iter())
            .filter(|(key, flow)| service_ids.contains(&flow.service_id) && !followed.contains(key))
            .map(|(key, _)| *key)
            .collect();
        let n = gone.len();
        gone.into_iter().for_each(|key| self.drop_flow(key));
        n
    }

    /// Removes the flow of `key`: journals its close, counts it pruned, and
    /// queues it for the kernel's map to forget.
    fn drop_flow(&mut self, key: FlowKey) {
        if let Some(flow) = self.flows.remove(&key) {
            self.held -= flow.held();
            self.bounds.pruned += 1;
            self.bounds.forget.push(key);
            self.journal_close(&flow);
        }
    }

    /// Prune rounds `flow` saw no segment in: before this daemon (its
    /// journal said) and here (at most [`STALE_ROUNDS`] of those).
    fn quiet_rounds(&self, flow: &Flow) -> usize {
        let marks = &self.bounds.prune_marks;
        let here = marks.len() - marks.partition_point(|&mark| mark < flow.last_seen);
        flow.quiet_before as usize + here
    }

    /// [`Record::Quiet`] for `flow` when it was first seen mid-stream and
    /// has been quiet for a round or more, so a restarted daemon goes on
    /// counting ([`prune_closed`](Self::prune_closed)).
    pub(super) fn quiet_record(&self, flow: &Flow) -> Option<Record> {
        let rounds = self.quiet_rounds(flow);
        (unknown(flow) && rounds > 0).then(|| Record::Quiet {
            id: flow.id,
            rounds: u32::try_from(rounds).unwrap_or(u32::MAX),
        })
    }

    /// Emits [`Record::Quiet`] for every open flow that needs one (the
    /// journal writes them when it closes).
    pub fn quiet<E>(&self, mut emit: impl FnMut(Record) -> Result<(), E>) -> Result<(), E> {
        (self.flows.values())
            .filter(|flow| !flow.closed)
            .filter_map(|flow| self.quiet_record(flow))
            .try_for_each(&mut emit)
    }

    /// Journals `flow`'s close, unless the journal was told already.
    fn journal_close(&mut self, flow: &Flow) {
        if let Some(records) = self.records.as_mut()
            && !flow.closed
        {
            records.push(Record::Close {
                id: flow.id,
                reason: CloseReason::Closed,
            });
        }
    }

    /// Retires `key`'s flow when a client SYN with sequence number `isn`
    /// starts another connection on its 4-tuple (the client reused the
    /// port): the flow is closed, or never saw its client's SYN (first seen
    /// mid-stream, or only its last ACK), or saw another one. The two must
    /// not mix. Counted as pruned. The kernel's entry stays: the new
    /// connection's segments already use it.
    pub(super) fn retire_replaced(&mut self, key: &FlowKey, isn: u32) {
        let replaced =
            |flow: &Flow| flow.is_closed() || flow.c2s.state.syn.is_none_or(|syn| syn.isn != isn);
        if !self.flows.get(key).is_some_and(|flow| replaced(flow)) {
            return;
        }
        let Some(flow) = self.flows.remove(key) else {
            return;
        };
        self.held -= flow.held();
        self.bounds.pruned += 1;
        self.journal_close(&flow);
    }

    /// The changes the kernel's flow map is to follow since the last call.
    pub fn take_kernel_changes(&mut self) -> KernelChanges {
        KernelChanges {
            forget: std::mem::take(&mut self.bounds.forget),
            refuse: std::mem::take(&mut self.bounds.refuse)
                .into_iter()
                .collect(),
        }
    }

    /// Whether the table holds `key`'s flow.
    pub fn holds(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(key)
    }

    /// The keys of every flow the table holds.
    pub fn held_keys(&self) -> HashSet<FlowKey> {
        self.flows.keys().copied().collect()
    }

    /// Whether a flow first seen now is refused protection (and its records
    /// ignored): the table is refusing and still above 90 % of its cap.
    /// Counts each refused flow once, and queues it for the kernel to mark
    /// again whenever its records come (its entry lost the mark: the kernel
    /// had not marked it yet, or it was swept and made anew).
    pub(super) fn refuses(&mut self, key: &FlowKey) -> bool {
        let bounds = &mut self.bounds;
        if !bounds.refusing {
            return false;
        }
        let cap = bounds.memory_cap.unwrap_or(usize::MAX);
        if self.held <= cap / 10 * 9 {
            bounds.refusing = false;
            bounds.refused_keys.clear();
            tracing::info!(
                held = self.held,
                cap,
                "back under the memory cap: new flows are protected again"
            );
            return false;
        }
        if bounds.refused_keys.insert(*key) {
            bounds.refused += 1;
        }
        bounds.refuse.insert(*key);
        true
    }

    /// Evicts the flows idle longest that are not ready (never `current`)
    /// until the held bytes are under 90 % of the cap, so eviction runs in
    /// batches rather than per record. When that is not enough, refuses new
    /// flows from now on ([`refuses`](Self::refuses)): a ready flow is never
    /// evicted.
    pub(super) fn enforce_memory_cap(&mut self, current: &FlowKey) {
        let Some(cap) = self.bounds.memory_cap else {
            return;
        };
        if self.held <= cap || self.bounds.refusing {
            return;
        }
        let mut idle: Vec<(u64, FlowKey)> = (self.flows.iter())
            .filter(|(key, flow)| *key != current && flow.readiness() != Readiness::Ready)
            .map(|(key, flow)| (flow.last_seen, *key))
            .collect();
        idle.sort_unstable();
        let target = cap / 10 * 9;
        let mut evicted = 0u64;
        for (_, key) in idle {
            if self.held <= target {
                break;
            }
            self.evict(key);
            evicted += 1;
        }
        self.bounds.evicted += evicted;
        if evicted > 0 {
            tracing::warn!(
                evicted,
                total = self.bounds.evicted,
                held = self.held,
                cap,
                "memory cap reached: evicted the flows idle longest that were not ready"
            );
        }
        if self.held > target {
            self.bounds.refusing = true;
            tracing::warn!(
                held = self.held,
                cap,
                flows = self.flows.len(),
                "memory cap reached with only ready flows left: new flows are refused \
                 protection (counted as flows_refused) until the flows hold 90 % of it"
            );
        }
    }

    /// Removes `key`'s flow, journals it as closed by eviction (unless the
    /// journal has its close already), and queues it for the kernel to forget.
    fn evict(&mut self, key: FlowKey) {
        if let Some(flow) = self.flows.remove(&key) {
            self.held -= flow.held();
            if let Some(records) = self.records.as_mut()
                && !flow.closed
            {
                records.push(Record::Close {
                    id: flow.id,
                    reason: CloseReason::Evicted,
                });
            }
            self.bounds.forget.push(key);
        }
    }
}

/// Whether `flow` was first seen mid-stream (no handshake, nothing missing).
fn unknown(flow: &Flow) -> bool {
    flow.readiness() == Readiness::NoHandshake
}

/// Whether `flow` is done: closed, or closing and not ready.
fn done(flow: &Flow) -> bool {
    let closing = flow.c2s.state.fin || flow.s2c.state.fin;
    flow.is_closed() || closing && flow.readiness() != Readiness::Ready
}

#[cfg(test)]
mod tests;
