//! The flow table: every tracked connection, its two reassembled byte streams,
//! its restorable state and readiness, and (with `--dump-dir`) the files each
//! stream is written to. With a journal, every change also becomes a journal
//! [`Record`], collected for the writer by [`FlowTable::take_records`].
//!
//! Memory is bounded by a global cap: past it, the flows idle longest that
//! are not ready are evicted (counted, logged, and journaled as closed by
//! eviction), and when only ready flows are left new flows are refused
//! protection — never an out-of-memory kill, and never a ready flow lost.
//! Closed flows are pruned once quiet ([`bounds`]).

pub mod inspect;
pub mod record;
pub mod recovery;
pub mod state;
pub mod stream;

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Seek, SeekFrom, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use bytes::{Bytes, BytesMut};
use connmirror_common::{
    Direction, FlowKey, RecordHeader,
    record::tcp_flags::{ACK, FIN, RST, SYN},
};
use serde::Serialize;

use crate::{
    flow::record::{CloseReason, FlowSnapshot, Record, SideSnapshot},
    flow::recovery::{Recovered, RecoveredFlow, RecoveredSide},
    flow::state::{MissingRange, Readiness, SideState, after},
    flow::stream::{Chunk, Retention, Stream, StreamLimits, StreamMarks},
    repair::restore::RestorePlan,
    service::{addr_bytes, socket_addr},
};

mod report;
use report::flow_report;
pub use report::{FlowReport, FlowStatus, SideReport};
mod view;
pub use view::{TakeoverFlow, TakeoverSide};
mod key;
pub use key::{endpoints, key_of};
use key::{flow_key, flow_name};
mod dump;
use dump::{Dump, dump_path};
mod divergence;
pub use divergence::Divergence;
mod journaling;
use journaling::Journaling;
mod side;
use side::Side;
mod bounds;
use bounds::Bounds;
pub use bounds::KernelChanges;

/// One TCP connection of a service.
struct Flow {
    /// Journal-wide id, in the order flows were first seen.
    id: u64,
    service_id: u32,
    c2s: Side,
    s2c: Side,
    kernel_gaps: u32,
    rst: bool,
    /// Record count when the flow last saw a segment: the idle order for eviction.
    last_seen: u64,
    /// Prune rounds it had been quiet for before this daemon (its journal's
    /// [`Record::Quiet`]); 0 once it saw a segment here.
    quiet_before: u32,
    /// The journal has been told the flow is closed.
    closed: bool,
    /// State changed since the last [`Record::Update`].
    dirty: bool,
    /// Which sides' SYNs the flow's last [`Record::Update`] (or checkpoint)
    /// carried, as [`Flow::syns`]; `None` before the first.
    journaled_syns: Option<[bool; 2]>,
    /// Live replay's instance diverged from the primary on this flow.
    divergence: Option<Divergence>,
}

impl Flow {
    /// Bytes this flow holds, with a fixed allowance for its own structures.
    fn held(&self) -> usize {
        FLOW_OVERHEAD + self.c2s.stream.held_bytes() + self.s2c.stream.held_bytes()
    }

    /// Both FINs, or a RST.
    fn is_closed(&self) -> bool {
        self.rst || (self.c2s.state.fin && self.s2c.state.fin)
    }

    /// Whether a restore could rebuild this flow now (see [`Readiness`]).
    fn readiness(&self) -> Readiness {
        if self.is_closed() {
            return Readiness::Closed;
        }
        // Client bytes the server acknowledged, and every server byte not yet
        // delivered in order (the server's send queue), must be present.
        let ranges: Vec<MissingRange> = (self.c2s.stream.missing().into_iter())
            .map(|(start, end)| MissingRange {
                dir: "c2s",
                start,
                end,
            })
            .chain(
                self.s2c
                    .stream
                    .holes()
                    .into_iter()
                    .map(|(start, end)| MissingRange {
                        dir: "s2c",
                        start,
                        end,
                    }),
            )
            .collect();
        if !ranges.is_empty() || self.kernel_gaps > 0 {
            return Readiness::MissingBytes(ranges);
        }
        if self.c2s.state.syn.is_none() || self.s2c.state.syn.is_none() {
            return Readiness::NoHandshake;
        }
        Readiness::Ready
    }

    /// Emits both directions' out-of-order bytes as [`Record::OutOfOrder`].
    fn out_of_order<E>(&self, emit: &mut impl FnMut(Record) -> Result<(), E>) -> Result<(), E> {
        for (dir, side) in [
            (Direction::ClientToServer, &self.c2s),
            (Direction::ServerToClient, &self.s2c),
        ] {
            for (offset, bytes) in side.stream.out_of_order() {
                emit(Record::OutOfOrder {
                    id: self.id,
                    dir,
                    offset,
                    bytes: Bytes::copy_from_slice(bytes),
                })?;
            }
        }
        Ok(())
    }

    /// Whether each side's SYN was seen, client first.
    fn syns(&self) -> [bool; 2] {
        [self.c2s.state.syn.is_some(), self.s2c.state.syn.is_some()]
    }

    /// The state of both directions as it stands, as [`Record::Update`]s.
    fn updates(&mut self) -> [Record; 2] {
        self.journaled_syns = Some(self.syns());
        [
            (Direction::ClientToServer, &self.c2s),
            (Direction::ServerToClient, &self.s2c),
        ]
        .map(|(dir, side)| Record::Update {
            id: self.id,
            dir,
            kernel_gaps: self.kernel_gaps,
            snapshot: Flow::side_snapshot(side),
        })
    }

    fn side_snapshot(side: &Side) -> SideSnapshot {
        SideSnapshot {
            marks: side.stream.marks(),
            side: side.state,
        }
    }
}

/// Largest data record a checkpoint writes (records must stay far below the
/// storage layer's 64 MiB limit however much a flow retains).
pub const CHECKPOINT_CHUNK: usize = 1 << 20;

/// What one flow costs before any payload: its boxed struct (streams and
/// state inline) with the allocator's header, and the B-tree's per-entry share
/// (key and pointer, twice over: nodes filled in key order stay about half
/// full). Counting it keeps the cap honest for many idle flows. The flow is
/// boxed so that the half-empty node slots cost a pointer, not a whole flow.
const FLOW_OVERHEAD: usize =
    std::mem::size_of::<Flow>() + 16 + (std::mem::size_of::<FlowKey>() + 8) * 2;

// The journal issue's target: an idle tracked connection costs under 1 KiB.
const _: () = assert!(FLOW_OVERHEAD < 1024);

/// A flow that saw no segment for this many records is idle: its streams
/// give back their spare capacity ([`Stream::shrink`]).
const IDLE_RECORDS: u64 = 1 << 16;

/// Every flow seen, keyed by 4-tuple.
pub struct FlowTable {
    flows: BTreeMap<FlowKey, Box<Flow>>,
    limits: StreamLimits,
    /// Retention per service id, where it differs from `limits.retention`.
    retention: BTreeMap<u32, Retention>,
    dump_dir: Option<PathBuf>,
    /// Journal records not yet taken, when journaling.
    records: Option<Vec<Record>>,
    /// Where the journaled payload is copied ([`journaling`]).
    arena: BytesMut,
    next_id: u64,
    /// Records applied so far (the clock for idleness; every
    /// [`IDLE_RECORDS`] of them, idle flows give back spare buffer space).
    applied: u64,
    /// Sum of [`Flow::held`].
    held: usize,
    bounds: Bounds,
}

impl FlowTable {
    /// An empty table; with `dump_dir`, each stream is also written to a file there.
    pub fn new(limits: StreamLimits, dump_dir: Option<PathBuf>) -> Self {
        Self {
            flows: BTreeMap::new(),
            limits,
            retention: BTreeMap::new(),
            dump_dir,
            records: None,
            arena: BytesMut::new(),
            next_id: 1,
            applied: 0,
            held: 0,
            bounds: Bounds::default(),
        }
    }

    /// Gives the flows of service `service_id` their own retention policy.
    pub fn service_retention(mut self, service_id: u32, retention: Retention) -> Self {
        self.retention.insert(service_id, retention);
        self
    }

    /// The stream limits for flows of `service_id`.
    fn limits_for(&self, service_id: u32) -> StreamLimits {
        StreamLimits {
            retention: self
                .retention
                .get(&service_id)
                .copied()
                .unwrap_or(self.limits.retention),
            ..self.limits
        }
    }

    /// Collects journal records from now on (see [`take_records`](Self::take_records)).
    pub fn journal(mut self) -> Self {
        self.records = Some(Vec::new());
        self
    }

    /// Like [`journal`](Self::journal) on a table already in use: collects
    /// journal records from now on (the on-host agent replicates them).
    pub fn collect_records(&mut self) {
        self.records.get_or_insert_with(Vec::new);
    }

    /// Number of flows tracked.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow has been seen.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Bytes the flows hold, as counted against the memory cap.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Applies one decoded record. Fails only when a dump file cannot be written.
    pub fn record(&mut self, header: &RecordHeader, chunk: &[u8]) -> io::Result<()> {
        let direction = Direction::from_u8(header.direction).unwrap_or(Direction::ClientToServer);
        let key = flow_key(header, direction);
        self.applied += 1;
        if self.applied.is_multiple_of(IDLE_RECORDS) {
            self.shrink_idle();
        }
        if direction == Direction::ClientToServer && header.tcp_flags & (SYN | ACK) == SYN {
            self.retire_replaced(&key, header.seq);
        }
        if !self.open_if_new(key, header.service_id)? {
            return Ok(());
        }
        let Self {
            flows,
            records,
            arena,
            applied,
            held,
            ..
        } = self;
        let flow = flows.get_mut(&key).expect("open_if_new inserted it");
        let before = flow.held();
        flow.last_seen = *applied;
        flow.quiet_before = 0;
        flow.dirty = true;
        flow.kernel_gaps = flow.kernel_gaps.max(header.flow_gaps);
        flow.rst |= header.tcp_flags & RST != 0;
        let id = flow.id;
        let (this, other) = match direction {
            Direction::ClientToServer => (&mut flow.c2s, &mut flow.s2c),
            Direction::ServerToClient => (&mut flow.s2c, &mut flow.c2s),
        };
        if header.tcp_flags & ACK != 0 {
            other.stream.ack(header.ack);
        }
        let first_data = records.as_ref().map_or(0, Vec::len);
        let journal = records.as_mut().map(|records| Journaling {
            id,
            dir: direction,
            records,
            arena,
        });
        let result = this.record(header, chunk, other.state.scales(), journal);
        // A read slice ends with the updates of the flows it changed, so a
        // crash can cut the journal between a slice's data and its updates;
        // recovery then takes the last update before. When that update lacks
        // a SYN the table has (or there is none), the data records just made
        // get the updates in front of them, or the flow would come back
        // without its handshake (or its origin).
        if let Some(records) = records.as_mut()
            && records.len() > first_data
            && flow.journaled_syns != Some(flow.syns())
        {
            records.splice(first_data..first_data, flow.updates());
        }
        *held = *held + flow.held() - before;
        self.enforce_memory_cap(&key);
        result
    }

    /// Has every flow idle for [`IDLE_RECORDS`] give back its streams' spare
    /// capacity. Runs once per [`IDLE_RECORDS`] records, so its walk over
    /// the table costs about one step per record per `IDLE_RECORDS` flows.
    fn shrink_idle(&mut self) {
        let now = self.applied;
        for flow in self.flows.values_mut() {
            if now - flow.last_seen >= IDLE_RECORDS {
                flow.c2s.stream.shrink();
                flow.s2c.stream.shrink();
            }
        }
    }

    /// Opens (and journals) the flow for `key` on first sight; `false` when
    /// the table refuses it ([`bounds`]).
    fn open_if_new(&mut self, key: FlowKey, service_id: u32) -> io::Result<bool> {
        if !self.flows.contains_key(&key) {
            if self.refuses(&key) {
                return Ok(false);
            }
            let id = self.next_id;
            self.next_id += 1;
            let limits = self.limits_for(service_id);
            let flow = open_flow(id, &key, service_id, limits, self.dump_dir.as_deref())?;
            tracing::debug!(flow = %flow_name(&key), id, "new flow");
            if let Some(records) = self.records.as_mut() {
                records.push(Record::Open {
                    id,
                    key,
                    service_id,
                });
            }
            self.held += flow.held();
            self.flows.insert(key, Box::new(flow));
        }
        Ok(true)
    }

    /// Moves a flow this host served uncaptured (it took the connection over,
    /// or had it migrated in) to where its socket stood when it was dumped to
    /// migrate away ([`crate::failover::migrate`]), so capture goes on without a hole
    /// and a later failover can restore it. `received` and `acked` are that
    /// socket's `tcpi_bytes_received` and `tcpi_bytes_acked` (how far each
    /// direction went unseen, which sequence numbers alone tell only modulo
    /// 2³²). The server's TSval becomes the dump's timestamp. Journaled as data
    /// records at the new offsets and an update. `false` when the table has no
    /// such flow, or it has no origins yet.
    pub fn rebase(&mut self, plan: &RestorePlan, received: u64, acked: u64) -> bool {
        let key = key_of(plan.server, plan.client);
        let Some(flow) = self.flows.get_mut(&key) else {
            return false;
        };
        if flow.c2s.stream.marks().origin.is_none() || flow.s2c.stream.marks().origin.is_none() {
            return false;
        }
        let before = flow.held();
        let queued = plan.send_queue.len() as u32;
        let snd_nxt = plan.send_seq.wrapping_add(queued);
        let c2s = flow.c2s.rebase(plan.recv_seq, plan.send_seq, &[], received);
        let s2c = flow.s2c.rebase(
            snd_nxt,
            plan.recv_seq,
            &plan.send_queue,
            acked + u64::from(queued),
        );
        if let Some(ts) = plan.timestamp {
            flow.s2c.state.tsval = Some(ts);
        }
        flow.dirty = true;
        if let (Some(records), Some(c2s), Some(s2c)) = (self.records.as_mut(), c2s, s2c) {
            for (dir, offset, bytes) in [
                (Direction::ClientToServer, c2s, Bytes::new()),
                (
                    Direction::ServerToClient,
                    s2c,
                    Bytes::copy_from_slice(&plan.send_queue),
                ),
            ] {
                records.push(Record::Data {
                    id: flow.id,
                    dir,
                    offset,
                    bytes,
                });
            }
        }
        self.held = self.held + flow.held() - before;
        true
    }

    /// The journal records collected since the last call, ending with an
    /// [`Record::Update`] per direction of every flow that changed (and a
    /// [`Record::Close`] for flows that closed). Empty unless journaling.
    pub fn take_records(&mut self) -> Vec<Record> {
        let Some(records) = self.records.as_mut() else {
            return Vec::new();
        };
        for flow in self.flows.values_mut().filter(|flow| flow.dirty) {
            flow.dirty = false;
            records.extend(flow.updates());
            if flow.is_closed() && !flow.closed {
                flow.closed = true;
                records.push(Record::Close {
                    id: flow.id,
                    reason: CloseReason::Closed,
                });
            }
        }
        std::mem::take(records)
    }

    /// Rebuilds the table from a recovered journal: every flow not closed, its
    /// streams restored from their marks, retained bytes and journaled
    /// out-of-order bytes (those pending at a crash are lost: a hole then stays
    /// a hole).
    pub fn restore(&mut self, recovered: Recovered) {
        self.restore_flows(recovered, false);
    }

    /// Like [`restore`](Self::restore), keeping closed and evicted flows too
    /// (for `connmirror journal inspect`).
    pub fn restore_all(&mut self, recovered: Recovered) {
        self.restore_flows(recovered, true);
    }

    fn restore_flows(&mut self, recovered: Recovered, closed_too: bool) {
        self.next_id = self.next_id.max(recovered.next_id);
        for flow in (recovered.flows.into_values()).filter(|f| closed_too || f.closed.is_none()) {
            let RecoveredFlow {
                id,
                key,
                service_id,
                kernel_gaps,
                c2s,
                s2c,
                divergence,
                quiet_rounds,
                ..
            } = flow;
            let limits = self.limits_for(service_id);
            let side = |recovered: RecoveredSide| {
                let mut stream = restore_stream(limits, &recovered);
                for (offset, bytes) in &recovered.out_of_order {
                    stream.restore_out_of_order(*offset, bytes);
                }
                let state = caught_up(recovered.snapshot.side, &stream);
                Side {
                    stream,
                    state,
                    dump: None,
                }
            };
            let flow = Flow {
                id,
                service_id,
                c2s: side(c2s),
                s2c: side(s2c),
                kernel_gaps,
                rst: false,
                last_seen: 0,
                quiet_before: quiet_rounds,
                closed: false,
                dirty: false,
                journaled_syns: None,
                divergence,
            };
            self.held += flow.held();
            self.flows.insert(key, Box::new(flow));
        }
    }

    /// Reopens the dump files of flows recovered from the journal (with
    /// `--dump-dir`), so a restarted daemon continues them where the stream
    /// stands instead of leaving them behind; see [`Dump::continue_at`].
    pub fn continue_dumps(&mut self) -> io::Result<()> {
        let Some(dir) = self.dump_dir.as_deref() else {
            return Ok(());
        };
        for (key, flow) in &mut self.flows {
            for (direction, side) in [
                (Direction::ClientToServer, &mut flow.c2s),
                (Direction::ServerToClient, &mut flow.s2c),
            ] {
                if side.dump.is_none() {
                    let path = dump_path(dir, key, direction);
                    side.dump = Dump::continue_at(path, side.stream.next_offset())?;
                }
            }
        }
        Ok(())
    }

    /// Emits a checkpoint of every flow not yet closed, with its retained bytes
    /// as data records of at most [`CHECKPOINT_CHUNK`] bytes: all recovery needs,
    /// so the segments before it can be deleted.
    pub fn checkpoint<E>(&self, mut emit: impl FnMut(Record) -> Result<(), E>) -> Result<(), E> {
        emit(Record::CheckpointBegin {
            next_id: self.next_id,
        })?;
        for (key, flow) in self.flows.iter().filter(|(_, flow)| !flow.closed) {
            emit(Record::CheckpointFlow(FlowSnapshot {
                id: flow.id,
                key: *key,
                service_id: flow.service_id,
                kernel_gaps: flow.kernel_gaps,
                c2s: Flow::side_snapshot(&flow.c2s),
                s2c: Flow::side_snapshot(&flow.s2c),
            }))?;
            flow.divergent(&mut emit)?;
            flow.out_of_order(&mut emit)?;
            for (dir, side) in [
                (Direction::ClientToServer, &flow.c2s),
                (Direction::ServerToClient, &flow.s2c),
            ] {
                let (mut offset, pieces) = side.stream.retained();
                for piece in pieces {
                    for bytes in piece.chunks(CHECKPOINT_CHUNK) {
                        emit(Record::Data {
                            id: flow.id,
                            dir,
                            offset,
                            bytes: Bytes::copy_from_slice(bytes),
                        })?;
                        offset += bytes.len() as u64;
                    }
                }
            }
            if let Some(record) = self.quiet_record(flow) {
                emit(record)?;
            }
        }
        emit(Record::CheckpointEnd)
    }

    /// Emits every open flow's out-of-order bytes as [`Record::OutOfOrder`]
    /// (the journal writes them when it closes).
    pub fn out_of_order<E>(&self, mut emit: impl FnMut(Record) -> Result<(), E>) -> Result<(), E> {
        (self.flows.values())
            .filter(|flow| !flow.closed)
            .try_for_each(|flow| flow.out_of_order(&mut emit))
    }

    /// What a takeover needs to rebuild each flow of `service_id`: readiness,
    /// state, stream marks, and only the bytes each receiver has not
    /// acknowledged (the restored send queue), copied out while the clients
    /// are quiesced. The whole history waits for [`takeover_history`](Self::takeover_history).
    pub fn takeover(&self, service_id: u32) -> Vec<TakeoverFlow> {
        self.flows
            .iter()
            .filter(|(_, flow)| flow.service_id == service_id && !flow.closed)
            .map(|(key, flow)| TakeoverFlow::of(key, flow, false))
            .collect()
    }

    /// Like [`takeover`](Self::takeover) for one flow, with every retained
    /// byte: what handoff and replay resume from. Copying a long history
    /// takes time, so a takeover asks for it only after the clients are let
    /// through again.
    pub fn takeover_history(&self, key: &FlowKey) -> Option<TakeoverFlow> {
        self.flows
            .get(key)
            .map(|flow| TakeoverFlow::of(key, flow, true))
    }

    /// How many flows each [`Readiness`] holds, by name (`ready`,
    /// `missing-bytes`, `no-handshake`, `closed`), evicted and journal-closed
    /// flows left out.
    pub fn readiness_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for flow in self.flows.values().filter(|flow| !flow.closed) {
            *counts.entry(flow.readiness().name()).or_default() += 1;
        }
        counts
    }

    /// One past the last server → client sequence number `key`'s journal
    /// holds without a hole: what on-host `--sync` may let the primary send
    /// once the standby holds it. `None` for an unknown flow, or before its
    /// server's first sequence number is known.
    pub fn sent_end(&self, key: &FlowKey) -> Option<u32> {
        let marks = self.flows.get(key)?.s2c.stream.marks();
        Some(marks.origin?.wrapping_add(marks.next as u32))
    }

    /// Raises the kernel gap count of `key` (read from the kernel's flow map at exit).
    pub fn kernel_gaps(&mut self, key: &FlowKey, gaps: u32) {
        if let Some(flow) = self.flows.get_mut(key) {
            flow.kernel_gaps = flow.kernel_gaps.max(gaps);
            flow.dirty = true;
        }
    }

    /// Flushes the dump files and describes every flow.
    pub fn report(&mut self) -> io::Result<Vec<FlowReport>> {
        self.flows
            .iter_mut()
            .map(|(key, flow)| flow_report(key, flow))
            .collect()
    }
}

/// `state` with its sequence mark moved up to the journaled bytes: the state
/// update of a batch follows its data records, so a crash between them leaves
/// data the last update does not cover, and the sender has certainly sent what
/// was delivered. (A flow's handshake is never behind its data: see
/// [`FlowTable::record`].)
fn caught_up(mut state: SideState, stream: &Stream) -> SideState {
    if let Some(origin) = stream.marks().origin {
        let delivered_end = origin.wrapping_add(stream.next_offset() as u32);
        if state.next_seq.is_none_or(|n| after(delivered_end, n)) {
            state.next_seq = Some(delivered_end);
        }
    }
    state
}

/// A stream rebuilt from journaled marks and bytes. Data journaled after the
/// last state update moves the delivery point forward: the bytes are the truth.
fn restore_stream(limits: StreamLimits, side: &RecoveredSide) -> Stream {
    let mut marks = side.snapshot.marks;
    let end = side.start + side.bytes.len() as u64;
    marks.next = marks.next.max(end);
    let usable = if end == marks.next {
        &side.bytes[..]
    } else {
        &[][..]
    };
    Stream::restore(limits, marks, usable)
}

fn open_flow(
    id: u64,
    key: &FlowKey,
    service_id: u32,
    limits: StreamLimits,
    dump_dir: Option<&Path>,
) -> io::Result<Flow> {
    let side = |direction: Direction| -> io::Result<Side> {
        let dump = match dump_dir {
            Some(dir) => {
                let path = dump_path(dir, key, direction);
                let file = File::create(&path).map_err(|err| {
                    io::Error::new(err.kind(), format!("creating {}: {err}", path.display()))
                })?;
                Some(Box::new(Dump {
                    path,
                    file: BufWriter::with_capacity(1 << 20, file),
                    stopped_at: None,
                    written: 0,
                }))
            }
            None => None,
        };
        Ok(Side::new(limits, dump))
    };
    Ok(Flow {
        id,
        service_id,
        c2s: side(Direction::ClientToServer)?,
        s2c: side(Direction::ServerToClient)?,
        kernel_gaps: 0,
        rst: false,
        last_seen: 0,
        quiet_before: 0,
        closed: false,
        dirty: true,
        journaled_syns: None,
        divergence: None,
    })
}

#[cfg(test)]
mod tests;
