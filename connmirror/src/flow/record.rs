//! What the journal's records mean: flow opened, bytes delivered, state marks,
//! live replay's divergence, flow closed, and checkpoints of the whole table. [`crate::journal`] frames
//! and checksums them; this module turns them into payload bytes and back.
//!
//! Encoding: little-endian integers, `u32`-length-prefixed byte strings, one
//! presence byte before each optional value. Decoding checks every length
//! against what is left and never panics, whatever the bytes.

use bytes::Bytes;
use connmirror_common::{Direction, FlowKey};
use thiserror::Error;

use super::{
    Divergence,
    state::{SideState, SynState},
    stream::StreamMarks,
};

/// Journal record kinds, the storage layer's `kind` byte.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`Record::Open`].
    Open = 1,
    /// [`Record::Data`].
    Data = 2,
    /// [`Record::Update`].
    Update = 3,
    /// [`Record::Close`].
    Close = 4,
    /// [`Record::CheckpointBegin`].
    CheckpointBegin = 5,
    /// [`Record::CheckpointFlow`].
    CheckpointFlow = 6,
    /// [`Record::CheckpointEnd`].
    CheckpointEnd = 7,
    /// [`Record::OutOfOrder`].
    OutOfOrder = 8,
    /// [`Record::Divergent`]. A build older than this kind stops at it with
    /// `unknown record kind 9` (docs/configuration.md, "Journal").
    Divergent = 9,
    /// [`Record::Quiet`]. A build older than this kind stops at it with
    /// `unknown record kind 10`.
    Quiet = 10,
}

/// Why a flow left the table.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both FINs seen and acknowledged, or a RST.
    Closed = 1,
    /// Evicted under the memory cap.
    Evicted = 2,
}

/// The restorable state of one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SideSnapshot {
    /// Where its stream stands.
    pub marks: StreamMarks,
    /// Sequence, ACK, window and timestamp marks of the segments this side sent.
    pub side: SideState,
}

/// One flow in a checkpoint: its state. Its retained bytes follow as
/// [`Record::Data`] records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSnapshot {
    /// Journal-wide flow id.
    pub id: u64,
    /// 4-tuple.
    pub key: FlowKey,
    /// Service id.
    pub service_id: u32,
    /// Segments the kernel passed uncaptured.
    pub kernel_gaps: u32,
    /// Client → server.
    pub c2s: SideSnapshot,
    /// Server → client.
    pub s2c: SideSnapshot,
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A flow was first seen.
    Open {
        /// Journal-wide flow id.
        id: u64,
        /// 4-tuple.
        key: FlowKey,
        /// Service id.
        service_id: u32,
    },
    /// Bytes of one direction, delivered in order at stream offset `offset`.
    Data {
        /// Flow id.
        id: u64,
        /// Direction.
        dir: Direction,
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes (a slice of a shared buffer: cloning a record or
        /// handing it on copies no payload).
        bytes: Bytes,
    },
    /// Bytes of one direction buffered out of order (beyond a hole) at
    /// stream offset `offset`. Written when the mirror stops cleanly and in
    /// checkpoints: a daemon that restarts (hot restart, `--pin`) still has
    /// them when the hole's bytes arrive, since TCP never resends bytes the
    /// receiver already has. A crash still loses them (they were only in memory).
    OutOfOrder {
        /// Flow id.
        id: u64,
        /// Direction.
        dir: Direction,
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes (a slice of a shared buffer: cloning a record or
        /// handing it on copies no payload).
        bytes: Bytes,
    },
    /// The state of one direction changed.
    Update {
        /// Flow id.
        id: u64,
        /// Direction.
        dir: Direction,
        /// Segments the kernel passed uncaptured for the flow so far.
        kernel_gaps: u32,
        /// The direction's state.
        snapshot: SideSnapshot,
    },
    /// Live replay's instance diverged from the primary on the flow
    /// (docs/failover.md, "Live replay"): only its first differing byte.
    Divergent {
        /// Flow id.
        id: u64,
        /// Where, and both bytes.
        divergence: Divergence,
    },
    /// A flow first seen mid-stream had been quiet for `rounds` prune rounds
    /// (about seconds) when the journal wrote this, at a checkpoint or a clean
    /// stop: a restarted daemon goes on counting (docs/configuration.md, "How
    /// many flows, and for how long"). A later record of the flow means it was
    /// seen since.
    Quiet {
        /// Flow id.
        id: u64,
        /// Prune rounds without a segment.
        rounds: u32,
    },
    /// The flow left the table.
    Close {
        /// Flow id.
        id: u64,
        /// Why.
        reason: CloseReason,
    },
    /// A checkpoint starts: recovery can start here once its
    /// [`Record::CheckpointEnd`] follows. In between come one
    /// [`Record::CheckpointFlow`] per live flow, each followed by its retained
    /// bytes as [`Record::Data`] (so no record grows with the flows it holds).
    CheckpointBegin {
        /// The next flow id to hand out.
        next_id: u64,
    },
    /// One live flow of the checkpoint.
    CheckpointFlow(FlowSnapshot),
    /// The checkpoint is complete.
    CheckpointEnd,
}

/// Why a record payload could not be decoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The payload ended early.
    #[error("record payload ends early at byte {0}")]
    Truncated(usize),
    /// A field holds a value no encoder writes.
    #[error("invalid {field} value {value}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// Bytes follow the last field.
    #[error("{0} unexpected bytes after the record")]
    Trailing(usize),
    /// Unknown kind byte.
    #[error("unknown record kind {0}")]
    Kind(u8),
}

impl Record {
    /// The storage layer's kind byte.
    pub fn kind(&self) -> Kind {
        match self {
            Record::Open { .. } => Kind::Open,
            Record::Data { .. } => Kind::Data,
            Record::OutOfOrder { .. } => Kind::OutOfOrder,
            Record::Update { .. } => Kind::Update,
            Record::Divergent { .. } => Kind::Divergent,
            Record::Quiet { .. } => Kind::Quiet,
            Record::Close { .. } => Kind::Close,
            Record::CheckpointBegin { .. } => Kind::CheckpointBegin,
            Record::CheckpointFlow(_) => Kind::CheckpointFlow,
            Record::CheckpointEnd => Kind::CheckpointEnd,
        }
    }

    /// Encodes the payload (the kind travels separately).
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(bytes) = self.encode_split(out) {
            out.extend_from_slice(&bytes);
        }
    }

    /// Encodes the payload as [`encode`](Self::encode) does, except that the
    /// bytes a `Data` or `OutOfOrder` record carries (they end its payload)
    /// are returned rather than copied: the journal frames them from where
    /// they already are ([`crate::journal::Appender::push_split`]).
    pub fn encode_split(&self, out: &mut Vec<u8>) -> Option<Bytes> {
        let mut w = Writer(out);
        match self {
            Record::Open {
                id,
                key,
                service_id,
            } => {
                w.u64(*id);
                w.key(key);
                w.u32(*service_id);
            }
            Record::Data {
                id,
                dir,
                offset,
                bytes,
            }
            | Record::OutOfOrder {
                id,
                dir,
                offset,
                bytes,
            } => {
                w.u64(*id);
                w.u8(*dir as u8);
                w.u64(*offset);
                w.u32(bytes.len() as u32);
                return Some(bytes.clone());
            }
            Record::Update {
                id,
                dir,
                kernel_gaps,
                snapshot,
            } => {
                w.u64(*id);
                w.u8(*dir as u8);
                w.u32(*kernel_gaps);
                w.side_snapshot(snapshot);
            }
            Record::Divergent { id, divergence } => {
                w.u64(*id);
                w.u64(divergence.offset);
                w.u8(divergence.primary);
                w.u8(divergence.instance);
            }
            Record::Close { id, reason } => {
                w.u64(*id);
                w.u8(*reason as u8);
            }
            Record::Quiet { id, rounds } => {
                w.u64(*id);
                w.u32(*rounds);
            }
            Record::CheckpointBegin { next_id } => w.u64(*next_id),
            Record::CheckpointFlow(flow) => w.flow_snapshot(flow),
            Record::CheckpointEnd => {}
        }
        None
    }

    /// Decodes a payload of kind `kind`.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        let record = match kind {
            1 => Record::Open {
                id: r.u64()?,
                key: r.key()?,
                service_id: r.u32()?,
            },
            2 => Record::Data {
                id: r.u64()?,
                dir: r.dir()?,
                offset: r.u64()?,
                bytes: Bytes::copy_from_slice(r.bytes()?),
            },
            3 => Record::Update {
                id: r.u64()?,
                dir: r.dir()?,
                kernel_gaps: r.u32()?,
                snapshot: r.side_snapshot()?,
            },
            4 => Record::Close {
                id: r.u64()?,
                reason: match r.u8()? {
                    1 => CloseReason::Closed,
                    2 => CloseReason::Evicted,
                    v => return Err(invalid("close reason", v)),
                },
            },
            5 => Record::CheckpointBegin { next_id: r.u64()? },
            6 => Record::CheckpointFlow(r.flow_snapshot()?),
            7 => Record::CheckpointEnd,
            8 => Record::OutOfOrder {
                id: r.u64()?,
                dir: r.dir()?,
                offset: r.u64()?,
                bytes: Bytes::copy_from_slice(r.bytes()?),
            },
            9 => Record::Divergent {
                id: r.u64()?,
                divergence: Divergence {
                    offset: r.u64()?,
                    primary: r.u8()?,
                    instance: r.u8()?,
                },
            },
            10 => Record::Quiet {
                id: r.u64()?,
                rounds: r.u32()?,
            },
            other => return Err(RecordError::Kind(other)),
        };
        match payload.len() - r.at {
            0 => Ok(record),
            n => Err(RecordError::Trailing(n)),
        }
    }
}

fn invalid(field: &'static str, value: impl Into<u64>) -> RecordError {
    RecordError::Invalid {
        field,
        value: value.into(),
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        self.bool(v.is_some());
        if let Some(v) = v {
            put(self, v);
        }
    }
    fn key(&mut self, k: &FlowKey) {
        self.0.extend_from_slice(&k.server_addr);
        self.0.extend_from_slice(&k.client_addr);
        self.u16(k.server_port);
        self.u16(k.client_port);
        self.u8(k.family);
    }
    fn syn(&mut self, s: SynState) {
        self.u32(s.isn);
        self.opt(s.mss, Self::u16);
        self.opt(s.window_scale, Self::u8);
        self.bool(s.sack_permitted);
        self.bool(s.timestamps);
    }
    fn side(&mut self, s: &SideState) {
        self.opt(s.syn, Self::syn);
        self.opt(s.next_seq, Self::u32);
        self.opt(s.ack, Self::u32);
        self.u16(s.window);
        self.u32(s.window_scaled);
        self.opt(s.tsval, Self::u32);
        self.opt(s.tsecr, Self::u32);
        self.bool(s.fin);
        self.bool(s.rst);
    }
    fn side_snapshot(&mut self, s: &SideSnapshot) {
        let m = &s.marks;
        self.opt(m.origin, Self::u32);
        self.bool(m.handshake);
        self.u64(m.next);
        self.u64(m.acked);
        self.opt(m.fin, Self::u64);
        self.bool(m.handoff_only);
        self.side(&s.side);
    }
    fn flow_snapshot(&mut self, f: &FlowSnapshot) {
        self.u64(f.id);
        self.key(&f.key);
        self.u32(f.service_id);
        self.u32(f.kernel_gaps);
        self.side_snapshot(&f.c2s);
        self.side_snapshot(&f.s2c);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let bytes = self
            .buf
            .get(self.at..self.at + N)
            .ok_or(RecordError::Truncated(self.at))?;
        self.at += N;
        bytes
            .try_into()
            .map_err(|_| RecordError::Truncated(self.at))
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        self.take().map(u64::from_le_bytes)
    }
    fn bool(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(invalid("bool", v)),
        }
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u32()? as usize;
        let bytes = self
            .buf
            .get(self.at..self.at.saturating_add(len))
            .ok_or(RecordError::Truncated(self.at))?;
        self.at += len;
        Ok(bytes)
    }
    fn opt<T>(
        &mut self,
        get: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        if self.bool()? {
            get(self).map(Some)
        } else {
            Ok(None)
        }
    }
    fn dir(&mut self) -> Result<Direction, RecordError> {
        let v = self.u8()?;
        Direction::from_u8(v).ok_or(invalid("direction", v))
    }
    fn key(&mut self) -> Result<FlowKey, RecordError> {
        Ok(FlowKey {
            server_addr: self.take()?,
            client_addr: self.take()?,
            server_port: self.u16()?,
            client_port: self.u16()?,
            family: self.u8()?,
            _pad: [0; 3],
        })
    }
    fn syn(&mut self) -> Result<SynState, RecordError> {
        Ok(SynState {
            isn: self.u32()?,
            mss: self.opt(Self::u16)?,
            window_scale: self.opt(Self::u8)?,
            sack_permitted: self.bool()?,
            timestamps: self.bool()?,
        })
    }
    fn side(&mut self) -> Result<SideState, RecordError> {
        Ok(SideState {
            syn: self.opt(Self::syn)?,
            next_seq: self.opt(Self::u32)?,
            ack: self.opt(Self::u32)?,
            window: self.u16()?,
            window_scaled: self.u32()?,
            tsval: self.opt(Self::u32)?,
            tsecr: self.opt(Self::u32)?,
            fin: self.bool()?,
            rst: self.bool()?,
        })
    }
    fn side_snapshot(&mut self) -> Result<SideSnapshot, RecordError> {
        Ok(SideSnapshot {
            marks: StreamMarks {
                origin: self.opt(Self::u32)?,
                handshake: self.bool()?,
                next: self.u64()?,
                acked: self.u64()?,
                fin: self.opt(Self::u64)?,
                handoff_only: self.bool()?,
            },
            side: self.side()?,
        })
    }
    fn flow_snapshot(&mut self) -> Result<FlowSnapshot, RecordError> {
        let id = self.u64()?;
        let key = self.key()?;
        let service_id = self.u32()?;
        let kernel_gaps = self.u32()?;
        let c2s = self.side_snapshot()?;
        let s2c = self.side_snapshot()?;
        Ok(FlowSnapshot {
            id,
            key,
            service_id,
            kernel_gaps,
            c2s,
            s2c,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::{collection::vec, option, prelude::*};

    use super::*;

    fn key() -> impl Strategy<Value = FlowKey> {
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(|(s, c, sp, cp)| FlowKey {
                server_addr: s,
                client_addr: c,
                server_port: sp,
                client_port: cp,
                family: 6,
                _pad: [0; 3],
            })
    }

    fn syn() -> impl Strategy<Value = SynState> {
        (
            any::<u32>(),
            option::of(any::<u16>()),
            option::of(0u8..15),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(isn, mss, window_scale, sack_permitted, timestamps)| SynState {
                    isn,
                    mss,
                    window_scale,
                    sack_permitted,
                    timestamps,
                },
            )
    }

    fn side() -> impl Strategy<Value = SideState> {
        (
            option::of(syn()),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            any::<u16>(),
            any::<u32>(),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            any::<(bool, bool)>(),
        )
            .prop_map(
                |(syn, next_seq, ack, window, window_scaled, tsval, tsecr, (fin, rst))| SideState {
                    syn,
                    next_seq,
                    ack,
                    window,
                    window_scaled,
                    tsval,
                    tsecr,
                    fin,
                    rst,
                },
            )
    }

    fn snapshot() -> impl Strategy<Value = SideSnapshot> {
        (
            option::of(any::<u32>()),
            any::<(bool, bool)>(),
            any::<u64>(),
            any::<u64>(),
            option::of(any::<u64>()),
            side(),
        )
            .prop_map(
                |(origin, (handshake, handoff_only), next, acked, fin, side)| SideSnapshot {
                    marks: StreamMarks {
                        origin,
                        handshake,
                        next,
                        acked,
                        fin,
                        handoff_only,
                    },
                    side,
                },
            )
    }

    fn dir() -> impl Strategy<Value = Direction> {
        prop_oneof![
            Just(Direction::ClientToServer),
            Just(Direction::ServerToClient)
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        let flow = (
            any::<u64>(),
            key(),
            any::<u32>(),
            any::<u32>(),
            snapshot(),
            snapshot(),
        )
            .prop_map(
                |(id, key, service_id, kernel_gaps, c2s, s2c)| FlowSnapshot {
                    id,
                    key,
                    service_id,
                    kernel_gaps,
                    c2s,
                    s2c,
                },
            );
        prop_oneof![
            (any::<u64>(), key(), any::<u32>()).prop_map(|(id, key, service_id)| Record::Open {
                id,
                key,
                service_id
            }),
            (any::<u64>(), dir(), any::<u64>(), vec(any::<u8>(), 0..256)).prop_map(
                |(id, dir, offset, bytes)| Record::Data {
                    id,
                    dir,
                    offset,
                    bytes: bytes.into()
                }
            ),
            (any::<u64>(), dir(), any::<u64>(), vec(any::<u8>(), 0..256)).prop_map(
                |(id, dir, offset, bytes)| Record::OutOfOrder {
                    id,
                    dir,
                    offset,
                    bytes: bytes.into()
                }
            ),
            (any::<u64>(), any::<u64>(), any::<u8>(), any::<u8>()).prop_map(
                |(id, offset, primary, instance)| Record::Divergent {
                    id,
                    divergence: Divergence {
                        offset,
                        primary,
                        instance
                    }
                }
            ),
            (any::<u64>(), dir(), any::<u32>(), snapshot()).prop_map(
                |(id, dir, kernel_gaps, snapshot)| Record::Update {
                    id,
                    dir,
                    kernel_gaps,
                    snapshot
                }
            ),
            (
                any::<u64>(),
                prop_oneof![Just(CloseReason::Closed), Just(CloseReason::Evicted)]
            )
                .prop_map(|(id, reason)| Record::Close { id, reason }),
            (any::<u64>(), any::<u32>()).prop_map(|(id, rounds)| Record::Quiet { id, rounds }),
            any::<u64>().prop_map(|next_id| Record::CheckpointBegin { next_id }),
            flow.prop_map(Record::CheckpointFlow),
            Just(Record::CheckpointEnd),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(record in record()) {
            let mut payload = Vec::new();
            record.encode(&mut payload);
            prop_assert_eq!(Record::decode(record.kind() as u8, &payload), Ok(record));
        }

        #[test]
        fn arbitrary_payloads_never_panic(kind in 0u8..13, payload in vec(any::<u8>(), 0..512)) {
            let _ = Record::decode(kind, &payload);
        }

        #[test]
        fn every_strict_prefix_of_a_record_is_an_error(record in record()) {
            let mut payload = Vec::new();
            record.encode(&mut payload);
            for cut in 0..payload.len() {
                prop_assert!(Record::decode(record.kind() as u8, &payload[..cut]).is_err());
            }
        }
    }

    #[test]
    fn a_divergence_is_eighteen_bytes_exactly() {
        let record = Record::Divergent {
            id: 7,
            divergence: Divergence {
                offset: 2,
                primary: 0x0d,
                instance: 0x30,
            },
        };
        let mut payload = Vec::new();
        record.encode(&mut payload);
        assert_eq!(
            payload,
            [7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x0d, 0x30]
        );
        assert_eq!(Record::decode(9, &payload), Ok(record));
        assert_eq!(
            Record::decode(9, &payload[..17]),
            Err(RecordError::Truncated(17))
        );
        payload.push(0);
        assert_eq!(Record::decode(9, &payload), Err(RecordError::Trailing(1)));
    }

    #[test]
    fn an_unknown_kind_names_itself() {
        assert_eq!(Record::decode(11, &[]), Err(RecordError::Kind(11)));
        assert_eq!(RecordError::Kind(11).to_string(), "unknown record kind 11");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut payload = Vec::new();
        Record::Close {
            id: 3,
            reason: CloseReason::Closed,
        }
        .encode(&mut payload);
        payload.push(0);
        assert_eq!(
            Record::decode(Kind::Close as u8, &payload),
            Err(RecordError::Trailing(1))
        );
    }
}
