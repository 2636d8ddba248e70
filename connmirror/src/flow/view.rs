//! A flow as a takeover sees it: the restorable state and the bytes of each side, copied out of the table (see `FlowTable::takeover_view`).

use super::*;

/// One flow as a takeover sees it (see [`FlowTable::takeover`]).
#[derive(Clone, Debug)]
pub struct TakeoverFlow {
    /// Journal-wide id.
    pub id: u64,
    /// The 4-tuple.
    pub key: FlowKey,
    /// Whether it can be restored.
    pub readiness: Readiness,
    /// Client → server.
    pub c2s: TakeoverSide,
    /// Server → client.
    pub s2c: TakeoverSide,
}

impl TakeoverFlow {
    pub(super) fn of(key: &FlowKey, flow: &Flow, history: bool) -> Self {
        TakeoverFlow {
            id: flow.id,
            key: *key,
            readiness: flow.readiness(),
            c2s: TakeoverSide::of(&flow.c2s, history),
            s2c: TakeoverSide::of(&flow.s2c, history),
        }
    }

    /// (server, client) socket addresses.
    pub fn endpoints(&self) -> (SocketAddr, SocketAddr) {
        endpoints(&self.key)
    }
}

/// One direction of a [`TakeoverFlow`].
#[derive(Clone, Debug)]
pub struct TakeoverSide {
    /// State of the segments the sender sent.
    pub state: SideState,
    /// Stream position (origin, delivered end, highest acknowledgment).
    pub marks: StreamMarks,
    /// First delivered offset the table still holds.
    pub retained_start: u64,
    /// Stream offset of `bytes[0]`.
    pub bytes_start: u64,
    /// Delivered bytes `[bytes_start, marks.next)`: from `retained_start`
    /// with the history, else from the receiver's acknowledgment.
    pub bytes: Vec<u8>,
}

impl TakeoverSide {
    pub(super) fn of(side: &Side, history: bool) -> Self {
        let marks = side.stream.marks();
        let (retained_start, pieces) = side.stream.retained();
        let bytes_start = match history {
            true => retained_start,
            false => marks.acked.clamp(retained_start, marks.next),
        };
        let mut skip = (bytes_start - retained_start) as usize;
        let mut bytes = Vec::with_capacity((marks.next - bytes_start) as usize);
        for piece in pieces {
            let take = skip.min(piece.len());
            bytes.extend_from_slice(&piece[take..]);
            skip -= take;
        }
        Self {
            state: side.state,
            marks,
            retained_start,
            bytes_start,
            bytes,
        }
    }

    /// Sequence number of stream offset `offset`, once the origin is known.
    pub fn seq_at(&self, offset: u64) -> Option<u32> {
        self.marks.origin.map(|o| o.wrapping_add(offset as u32))
    }

    /// The copied bytes from stream offset `from` on, if they are all there.
    pub fn bytes_from(&self, from: u64) -> Option<&[u8]> {
        let skip = from.checked_sub(self.bytes_start)?;
        self.bytes.get(usize::try_from(skip).ok()?..)
    }
}
