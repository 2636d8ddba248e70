//! Recovery: the flow table's side of the durable journal. [`Journal`] turns
//! each tracked flow's opening, delivered bytes, state changes and closing into
//! records for [`crate::journal`] (which frames, checksums, syncs and recovers
//! the segment files; [`super::record`] says what each record means), and
//! [`recover`] reads a journal back into flows, so a standby (or a restarted
//! daemon) can rebuild the flow table. "Replay" in connmirror means only the
//! resumption mode ([`crate::resume::replay`]); reading a journal back is
//! recovery.
//!
//! Compaction: a [`record::Record::Checkpoint`] holds every live flow with its
//! retained bytes (and live replay's divergence, if any), written first in a fresh segment; every older segment is
//! then deleted. Closed flows are simply not in the checkpoint.

use std::collections::BTreeMap;

use connmirror_common::{Direction, FlowKey};

use super::{
    Divergence,
    record::{CloseReason, FlowSnapshot, Record, RecordError, SideSnapshot},
};
use crate::journal::{JournalError, StoredRecord};

/// One direction of a recovered flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredSide {
    /// The latest state journaled.
    pub snapshot: SideSnapshot,
    /// Stream offset of `bytes[0]`.
    pub start: u64,
    /// The contiguous bytes journaled for this direction since `start` (a
    /// given-up hole restarts them at the offset after it).
    pub bytes: Vec<u8>,
    /// Out-of-order pieces journaled at a clean stop or a checkpoint, by offset.
    pub out_of_order: Vec<(u64, bytes::Bytes)>,
}

impl RecoveredSide {
    /// Forgets the bytes before stream offset `offset` (the receiver has them),
    /// so a replica that follows a long stream holds only what a restore needs.
    /// An `offset` past the bytes held (the agent left out bytes acknowledged
    /// before it shipped them) moves `start` there.
    pub fn release_before(&mut self, offset: u64) {
        let end = self.start + self.bytes.len() as u64;
        if offset >= end {
            self.bytes.clear();
            self.start = self.start.max(offset);
            return;
        }
        let cut = offset.max(self.start);
        self.bytes.drain(..(cut - self.start) as usize);
        self.start = cut;
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) {
        if offset != self.start + self.bytes.len() as u64 {
            self.start = offset;
            self.bytes.clear();
        }
        self.bytes.extend_from_slice(bytes);
    }
}

/// A flow rebuilt from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredFlow {
    /// Journal-wide id.
    pub id: u64,
    /// 4-tuple.
    pub key: FlowKey,
    /// Service id.
    pub service_id: u32,
    /// Segments the kernel passed uncaptured.
    pub kernel_gaps: u32,
    /// Client → server.
    pub c2s: RecoveredSide,
    /// Server → client.
    pub s2c: RecoveredSide,
    /// Set once the flow left the table.
    pub closed: Option<CloseReason>,
    /// Live replay's first divergence on the flow, once journaled.
    pub divergence: Option<Divergence>,
    /// Prune rounds the flow (first seen mid-stream) had been quiet for at
    /// its last [`Record::Quiet`], unless a record of it came after.
    pub quiet_rounds: u32,
}

impl RecoveredFlow {
    fn side(&mut self, dir: Direction) -> &mut RecoveredSide {
        match dir {
            Direction::ClientToServer => &mut self.c2s,
            Direction::ServerToClient => &mut self.s2c,
        }
    }

    fn from_snapshot(snapshot: FlowSnapshot) -> Self {
        let FlowSnapshot {
            id,
            key,
            service_id,
            kernel_gaps,
            c2s,
            s2c,
        } = snapshot;
        let side = |snapshot: SideSnapshot| RecoveredSide {
            snapshot,
            ..RecoveredSide::default()
        };
        Self {
            id,
            key,
            service_id,
            kernel_gaps,
            c2s: side(c2s),
            s2c: side(s2c),
            closed: None,
            divergence: None,
            quiet_rounds: 0,
        }
    }
}

/// The flows a journal describes, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The next id to hand out.
    pub next_id: u64,
    /// Every flow opened (closed ones included, with `closed` set).
    pub flows: BTreeMap<u64, RecoveredFlow>,
    /// Records that named a flow the journal never opened (counted, not fatal).
    pub orphans: u64,
    /// A checkpoint being read: it replaces the state above only once its end
    /// record arrives (a crash in the middle of writing one leaves the older
    /// segments, which it never deleted, in charge).
    pending: Option<Box<Recovered>>,
}

impl Recovered {
    /// An empty state, ready for records (a stream that starts with a
    /// checkpoint, as replication does).
    pub fn new() -> Self {
        Self {
            next_id: 1,
            ..Self::default()
        }
    }

    /// Applies one record, in journal order.
    pub fn apply(&mut self, record: Record) {
        apply(self, record);
    }

    /// Whether a checkpoint is being read (its state takes over at its end).
    pub fn in_checkpoint(&self) -> bool {
        self.pending.is_some()
    }

    /// Emits the open flows as a checkpoint (begin, each flow with its
    /// divergence, out-of-order pieces and bytes, end), as
    /// [`FlowTable::checkpoint`](super::FlowTable::checkpoint) does: applied
    /// to an empty state, the records rebuild these flows (an on-host
    /// standby sends its copy back to an agent restarted with `--pin`).
    pub fn checkpoint(&self, mut emit: impl FnMut(Record)) {
        emit(Record::CheckpointBegin {
            next_id: self.next_id,
        });
        for flow in self.flows.values().filter(|flow| flow.closed.is_none()) {
            flow.checkpoint(&mut emit);
        }
        emit(Record::CheckpointEnd);
    }
}

impl RecoveredFlow {
    fn checkpoint(&self, emit: &mut impl FnMut(Record)) {
        let id = self.id;
        emit(Record::CheckpointFlow(FlowSnapshot {
            id,
            key: self.key,
            service_id: self.service_id,
            kernel_gaps: self.kernel_gaps,
            c2s: self.c2s.snapshot.clone(),
            s2c: self.s2c.snapshot.clone(),
        }));
        if let Some(divergence) = self.divergence {
            emit(Record::Divergent { id, divergence });
        }
        for (dir, side) in [
            (Direction::ClientToServer, &self.c2s),
            (Direction::ServerToClient, &self.s2c),
        ] {
            for (offset, bytes) in &side.out_of_order {
                let (offset, bytes) = (*offset, bytes.clone());
                emit(Record::OutOfOrder {
                    id,
                    dir,
                    offset,
                    bytes,
                });
            }
            let mut offset = side.start;
            for chunk in side.bytes.chunks(super::CHECKPOINT_CHUNK) {
                let bytes = bytes::Bytes::copy_from_slice(chunk);
                emit(Record::Data {
                    id,
                    dir,
                    offset,
                    bytes,
                });
                offset += chunk.len() as u64;
            }
        }
        if self.quiet_rounds > 0 {
            let rounds = self.quiet_rounds;
            emit(Record::Quiet { id, rounds });
        }
    }
}

/// Why a journal could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Reading the segments failed (I/O, or corruption in strict mode).
    #[error(transparent)]
    Storage(#[from] JournalError),
    /// A record passed its checksum but its payload does not decode.
    #[error("journal record in segment {segment} at byte offset {offset}: {source}")]
    Record {
        /// Segment sequence number.
        segment: u64,
        /// Byte offset in the segment.
        offset: u64,
        /// What was wrong with its payload.
        #[source]
        source: RecordError,
    },
}

/// Rebuilds the flows from journal records in order: the state of the last
/// checkpoint, then every record after it.
pub fn recover(
    records: impl IntoIterator<Item = Result<StoredRecord, JournalError>>,
) -> Result<Recovered, RecoveryError> {
    let mut recovered = Recovered::new();
    for stored in records {
        let StoredRecord {
            position,
            kind,
            payload,
        } = stored?;
        let record = Record::decode(kind, &payload).map_err(|source| RecoveryError::Record {
            segment: position.segment,
            offset: position.offset,
            source,
        })?;
        apply(&mut recovered, record);
    }
    Ok(recovered)
}

fn apply(recovered: &mut Recovered, record: Record) {
    match record {
        Record::CheckpointBegin { next_id } => {
            recovered.pending = Some(Box::new(Recovered {
                next_id,
                ..Recovered::default()
            }));
            return;
        }
        Record::CheckpointEnd => {
            if let Some(checkpoint) = recovered.pending.take() {
                let orphans = recovered.orphans;
                *recovered = *checkpoint;
                recovered.orphans += orphans;
            }
            return;
        }
        _ => {}
    }
    let target = match recovered.pending.as_deref_mut() {
        Some(checkpoint) => checkpoint,
        None => recovered,
    };
    apply_to(target, record);
}

/// Applies a flow record to `recovered` (a checkpoint being read, or the state).
fn apply_to(recovered: &mut Recovered, record: Record) {
    let Recovered {
        next_id,
        flows,
        orphans,
        ..
    } = recovered;
    let mut on_flow = |id: u64, change: &mut dyn FnMut(&mut RecoveredFlow)| match flows.get_mut(&id)
    {
        Some(flow) => change(flow),
        None => *orphans += 1,
    };
    match record {
        Record::CheckpointBegin { .. } | Record::CheckpointEnd => {}
        Record::CheckpointFlow(flow) => {
            *next_id = (*next_id).max(flow.id + 1);
            flows.insert(flow.id, RecoveredFlow::from_snapshot(flow));
        }
        Record::Open {
            id,
            key,
            service_id,
        } => {
            *next_id = (*next_id).max(id + 1);
            let snapshot = FlowSnapshot {
                id,
                key,
                service_id,
                kernel_gaps: 0,
                c2s: SideSnapshot::default(),
                s2c: SideSnapshot::default(),
            };
            flows.insert(id, RecoveredFlow::from_snapshot(snapshot));
        }
        Record::Data {
            id,
            dir,
            offset,
            bytes,
        } => on_flow(id, &mut |flow| {
            flow.quiet_rounds = 0;
            flow.side(dir).data(offset, &bytes);
        }),
        Record::OutOfOrder {
            id,
            dir,
            offset,
            bytes,
        } => on_flow(id, &mut |flow| {
            flow.quiet_rounds = 0;
            flow.side(dir).out_of_order.push((offset, bytes.clone()));
        }),
        Record::Update {
            id,
            dir,
            kernel_gaps,
            snapshot,
        } => on_flow(id, &mut |flow| {
            flow.quiet_rounds = 0;
            flow.kernel_gaps = kernel_gaps;
            flow.side(dir).snapshot = snapshot.clone();
        }),
        // Only the first divergence counts, as live replay reports it.
        Record::Divergent { id, divergence } => on_flow(id, &mut |flow| {
            flow.divergence.get_or_insert(divergence);
        }),
        Record::Close { id, reason } => on_flow(id, &mut |flow| flow.closed = Some(reason)),
        Record::Quiet { id, rounds } => on_flow(id, &mut |flow| flow.quiet_rounds = rounds),
    }
}

/// The journal as the mirror uses it: the flow table's records appended and
/// group-committed, and a checkpoint (with compaction) every so many bytes.
/// Records are encoded here, on the thread that owns the table; framing,
/// writes and syncs run on the writer thread ([`crate::journal::Appender`]).
pub struct Journal {
    appender: crate::journal::Appender,
    checkpoint_bytes: u64,
    /// `bytes_appended` at the last checkpoint.
    checkpointed_at: u64,
}

impl Journal {
    /// Opens (recovering) the journal described by `config`, restores its flows
    /// into `table`, and starts with a checkpoint so older segments can go; it
    /// returns once that checkpoint is durable.
    pub fn open(
        config: crate::journal::JournalConfig,
        checkpoint_bytes: u64,
        table: &mut crate::flow::FlowTable,
    ) -> Result<Self, RecoveryError> {
        let (writer, recovery) = crate::journal::JournalWriter::open(config)?;
        if let Some((file, bytes)) = &recovery.truncated_tail {
            tracing::warn!(file = %file.display(), bytes, "journal: truncated a torn tail");
        }
        if recovery.salvaged > 0 {
            tracing::warn!(
                skipped = recovery.salvaged,
                "journal: salvage skipped damaged records"
            );
        }
        let recovered = recover(recovery.records.into_iter().map(Ok))?;
        tracing::info!(flows = recovered.flows.len(), "journal recovered");
        table.restore(recovered);
        let mut journal = Self {
            appender: crate::journal::Appender::spawn(writer)?,
            checkpoint_bytes,
            checkpointed_at: 0,
        };
        journal.checkpoint(table)?;
        journal.appender.wait()?;
        Ok(journal)
    }

    /// Appends the table's pending records, commits per the fsync policy, and
    /// checkpoints when enough bytes went by.
    pub fn sync(&mut self, table: &mut crate::flow::FlowTable) -> Result<(), JournalError> {
        let records = table.take_records();
        self.write(&records, table)
    }

    /// Like [`sync`](Self::sync), with the records already taken from `table`
    /// (the on-host agent also ships them to the standby).
    pub fn write(
        &mut self,
        records: &[Record],
        table: &mut crate::flow::FlowTable,
    ) -> Result<(), JournalError> {
        for record in records {
            self.append(record)?;
        }
        self.appender.commit()?;
        if self.checkpoint_due(table) {
            self.checkpoint(table)?;
        }
        Ok(())
    }

    /// Whether to checkpoint: once `checkpoint_bytes` went by since the last
    /// checkpoint, and at least as many bytes as the flows hold, which the
    /// checkpoint writes again. Under full retention each checkpoint rewrites
    /// every open flow's history (up to `--history-cap` per direction), so
    /// with many long flows a fixed byte count could rewrite more than was
    /// journaled since the last one; this bounds the journal's writes to
    /// twice what it was given.
    fn checkpoint_due(&self, table: &crate::flow::FlowTable) -> bool {
        let since = self.appender.bytes_appended() - self.checkpointed_at;
        since >= self.checkpoint_bytes.max(table.held_bytes() as u64)
    }

    /// Starts a fresh segment with a checkpoint of `table`, syncs it, and deletes
    /// every older segment (the compaction: closed flows are not carried over).
    /// The writer thread does the rotation, sync and deletion in that order,
    /// after every record handed over before.
    pub fn checkpoint(&mut self, table: &mut crate::flow::FlowTable) -> Result<(), JournalError> {
        for record in table.take_records() {
            self.append(&record)?;
        }
        self.appender.rotate()?;
        table.checkpoint(|record| self.append(&record))?;
        self.appender.seal()?;
        self.checkpointed_at = self.appender.bytes_appended();
        Ok(())
    }

    /// Appends what is left, including the bytes buffered out of order (see
    /// [`Record::OutOfOrder`]), syncs, and closes the journal; returns its counters.
    pub fn close(
        mut self,
        table: &mut crate::flow::FlowTable,
    ) -> Result<crate::journal::JournalStats, JournalError> {
        for record in table.take_records() {
            self.append(&record)?;
        }
        table.out_of_order(|record| self.append(&record))?;
        table.quiet(|record| self.append(&record))?;
        self.appender.close()
    }

    /// The writer's counters (bytes, fsyncs and their latency).
    pub fn stats(&self) -> crate::journal::JournalStats {
        self.appender.stats()
    }

    fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        (self.appender).push_split(record.kind() as u8, |out| record.encode_split(out))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::journal::Position;

    /// `records` as the storage layer would hand them back, for `recover`.
    pub(crate) fn stored(records: &[Record]) -> Vec<Result<StoredRecord, JournalError>> {
        records
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let mut payload = Vec::new();
                record.encode(&mut payload);
                Ok(StoredRecord {
                    position: Position {
                        segment: 1,
                        offset: i as u64,
                    },
                    kind: record.kind() as u8,
                    payload,
                })
            })
            .collect()
    }

    fn open(id: u64) -> Record {
        Record::Open {
            id,
            key: FlowKey {
                server_addr: [0; 16],
                client_addr: [0; 16],
                server_port: 7000,
                client_port: id as u16,
                family: 4,
                _pad: [0; 3],
            },
            service_id: 0,
        }
    }

    fn data(id: u64, offset: u64, bytes: &[u8]) -> Record {
        Record::Data {
            id,
            dir: Direction::ClientToServer,
            offset,
            bytes: bytes.to_vec().into(),
        }
    }

    #[test]
    fn a_complete_checkpoint_replaces_the_state_and_carries_retained_bytes() {
        let Record::Open { key, .. } = open(2) else {
            unreachable!()
        };
        let records = [
            open(1),
            data(1, 0, b"old"),
            Record::CheckpointBegin { next_id: 3 },
            Record::CheckpointFlow(FlowSnapshot {
                id: 2,
                key,
                service_id: 0,
                kernel_gaps: 0,
                c2s: SideSnapshot::default(),
                s2c: SideSnapshot::default(),
            }),
            data(2, 10, b"kept"),
            Record::CheckpointEnd,
            data(2, 14, b"+new"),
        ];

        let recovered = recover(stored(&records)).unwrap();

        assert_eq!(recovered.next_id, 3);
        assert_eq!(recovered.flows.keys().copied().collect::<Vec<_>>(), vec![2]);
        let c2s = &recovered.flows[&2].c2s;
        assert_eq!((c2s.start, c2s.bytes.as_slice()), (10, &b"kept+new"[..]));
    }

    #[test]
    fn quiet_rounds_hold_until_a_later_record_of_the_flow_and_go_round_a_checkpoint() {
        let quiet = |id, rounds| Record::Quiet { id, rounds };
        let records = [
            open(1),
            open(2),
            quiet(1, 30),
            quiet(2, 40),
            data(2, 0, b"x"),
        ];

        let recovered = recover(stored(&records)).unwrap();

        let rounds = |r: &Recovered, id| r.flows[&id].quiet_rounds;
        assert_eq!((rounds(&recovered, 1), rounds(&recovered, 2)), (30, 0));
        let mut again = Recovered::new();
        recovered.checkpoint(|record| again.apply(record));
        assert_eq!((rounds(&again, 1), rounds(&again, 2)), (30, 0));
    }

    fn divergent(id: u64, offset: u64) -> Record {
        Record::Divergent {
            id,
            divergence: Divergence {
                offset,
                primary: b'+',
                instance: b'-',
            },
        }
    }

    #[test]
    fn a_flows_first_divergence_is_kept_and_one_of_an_unknown_flow_is_an_orphan() {
        let records = [open(1), divergent(1, 5), divergent(1, 9), divergent(7, 3)];

        let recovered = recover(stored(&records)).unwrap();

        let Record::Divergent { divergence, .. } = divergent(1, 5) else {
            unreachable!()
        };
        assert_eq!(recovered.flows[&1].divergence, Some(divergence));
        assert_eq!(recovered.orphans, 1);
    }

    #[test]
    fn an_unknown_record_kind_stops_recovery_naming_where_and_which() {
        let mut records = stored(&[open(1), divergent(1, 5)]);
        if let Some(Ok(record)) = records.get_mut(1) {
            record.kind = 11;
        }

        let error = recover(records).unwrap_err();

        assert_eq!(
            error.to_string(),
            "journal record in segment 1 at byte offset 1: unknown record kind 11"
        );
    }

    #[test]
    fn releasing_past_the_bytes_held_moves_the_start_there() {
        let mut side = RecoveredSide {
            start: 10,
            bytes: b"abcd".to_vec(),
            ..RecoveredSide::default()
        };
        side.release_before(12);
        assert_eq!((side.start, side.bytes.as_slice()), (12, &b"cd"[..]));
        side.release_before(5);
        assert_eq!((side.start, side.bytes.as_slice()), (12, &b"cd"[..]));
        side.release_before(40);
        assert_eq!((side.start, side.bytes.as_slice()), (40, &b""[..]));
        side.data(40, b"ef");
        assert_eq!((side.start, side.bytes.as_slice()), (40, &b"ef"[..]));
    }

    #[test]
    fn a_recovered_states_checkpoint_rebuilds_its_open_flows_exactly() {
        let mut s2c = data(1, 3, b"late");
        if let Record::Data { dir, .. } = &mut s2c {
            *dir = Direction::ServerToClient;
        }
        let ahead = Record::OutOfOrder {
            id: 1,
            dir: Direction::ServerToClient,
            offset: 20,
            bytes: b"ahead".to_vec().into(),
        };
        let records = [
            open(1),
            data(1, 0, b"hello"),
            s2c,
            ahead,
            divergent(1, 4),
            open(2),
            Record::Close {
                id: 2,
                reason: CloseReason::Closed,
            },
            open(5),
        ];
        let state = recover(stored(&records)).unwrap();

        let mut checkpoint = Vec::new();
        state.checkpoint(|record| checkpoint.push(record));
        let rebuilt = recover(stored(&checkpoint)).unwrap();

        let mut open_only = state.clone();
        open_only.flows.remove(&2);
        assert_eq!(rebuilt, open_only);
        assert_eq!(rebuilt.next_id, 6);
        assert_eq!(rebuilt.flows[&1].s2c.start, 3);
    }

    #[test]
    fn a_checkpoint_cut_short_by_a_crash_leaves_the_earlier_state_in_charge() {
        let records = [
            open(1),
            data(1, 0, b"abc"),
            Record::CheckpointBegin { next_id: 2 },
            data(1, 0, b"abc"),
        ];

        let recovered = recover(stored(&records)).unwrap();

        assert_eq!(recovered.flows.len(), 1);
        assert_eq!(recovered.flows[&1].c2s.bytes, b"abc");
    }
}
