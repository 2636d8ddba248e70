//! Where a side's delivered bytes go besides the stream: the journal's
//! [`Record::Data`]. Each piece is copied once, into an arena the whole table
//! shares, and the record holds a [`Bytes`] slice of it: no allocation per
//! record, and the journal thread, the replication channel and live replay
//! take the bytes on without copying them again.

use bytes::{Bytes, BytesMut};
use connmirror_common::Direction;

use super::record::Record;

/// Size of each arena allocation. An allocation is freed once every record
/// sliced from it has been written (the table's records live one read slice).
const ARENA_BYTES: usize = 1 << 20;

/// The journal as one side of flow `id` sees it, in direction `dir`.
pub(super) struct Journaling<'a> {
    pub(super) id: u64,
    pub(super) dir: Direction,
    pub(super) records: &'a mut Vec<Record>,
    pub(super) arena: &'a mut BytesMut,
}

impl Journaling<'_> {
    /// Journals `bytes` delivered at stream offset `offset`.
    pub(super) fn data(&mut self, offset: u64, bytes: &[u8]) {
        self.records.push(Record::Data {
            id: self.id,
            dir: self.dir,
            offset,
            bytes: copy_into(self.arena, bytes),
        });
    }
}

/// `bytes`, copied into `arena` (which moves to a fresh allocation when full).
pub(super) fn copy_into(arena: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if arena.capacity() - arena.len() < bytes.len() {
        *arena = BytesMut::with_capacity(ARENA_BYTES.max(bytes.len()));
    }
    arena.extend_from_slice(bytes);
    arena.split().freeze()
}
