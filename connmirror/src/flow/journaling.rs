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

/// `bytes`, copied into `arena`. When it is full, `reserve` takes its
/// allocation back if every record sliced from it is gone (the usual case:
/// they live one read slice), and moves to a fresh one otherwise. Reusing it
/// keeps its pages mapped: a fresh megabyte per megabyte journaled cost the
/// reader a page fault every 4 KiB.
pub(super) fn copy_into(arena: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if arena.capacity() - arena.len() < bytes.len() {
        arena.reserve(ARENA_BYTES.max(bytes.len()));
    }
    arena.extend_from_slice(bytes);
    arena.split().freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the arena to the last byte and returns where its allocation starts.
    fn fill(arena: &mut BytesMut, keep: &mut Vec<Bytes>) -> *const u8 {
        let piece = vec![7u8; ARENA_BYTES / 4];
        let first = copy_into(arena, &piece);
        let start = first.as_ptr();
        keep.push(first);
        for _ in 1..4 {
            keep.push(copy_into(arena, &piece));
        }
        assert_eq!(arena.capacity(), 0, "the arena is full");
        start
    }

    #[test]
    fn a_full_arena_takes_its_allocation_back_once_its_records_are_gone() {
        let mut arena = BytesMut::new();
        let mut keep = Vec::new();
        let first = fill(&mut arena, &mut keep);
        assert!(keep.iter().all(|b| b.len() == ARENA_BYTES / 4 && b[0] == 7));
        keep.clear();
        assert_eq!(fill(&mut arena, &mut keep), first, "reused");
    }

    #[test]
    fn a_full_arena_whose_records_live_on_moves_to_a_fresh_allocation() {
        let mut arena = BytesMut::new();
        let mut keep = Vec::new();
        let first = fill(&mut arena, &mut keep);
        let second = fill(&mut arena, &mut keep);
        assert_ne!(second, first, "a record still holds the first allocation");
        assert!(keep.iter().all(|b| b.iter().all(|&x| x == 7)));
    }
}
