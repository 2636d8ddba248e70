//! One direction of a TCP connection, reassembled in sequence space.
//!
//! The capture programs hand userspace every segment they see, in the order the
//! ring buffers yield them: veth queues drop before XDP runs, TC egress sees
//! retransmissions, two CPUs writing into one ring interleave a flow's segments,
//! and a gateway captures each segment twice (ingress and egress). A [`Stream`]
//! turns those segments back into the byte stream the sender wrote, and says
//! exactly what it could not vouch for.
//!
//! # Sequence space
//!
//! TCP numbers every byte with a 32-bit sequence number that wraps
//! ([RFC 9293 §3.4](https://www.rfc-editor.org/rfc/rfc9293#section-3.4)); the
//! kernel compares them with `before()` / `after()` in `include/net/tcp.h`, i.e.
//! as a signed 32-bit difference. A stream maps every sequence number to a 64-bit
//! *offset* from its origin (offset 0 is the first data byte, `ISN + 1`) by
//! taking the value closest to the delivery point, within ±2³¹. Streams longer
//! than 4 GiB and ISNs near 2³² therefore work: the DESIGN's proof of concept
//! broke on exactly that with a naive 32-bit reassembler.
//!
//! # What happens to each byte
//!
//! Every byte passed to [`Stream::data`] ends up in exactly one [`StreamStats`]
//! bucket: delivered (or buffered in `pending` until it is), a duplicate, a
//! conflict, unverified, late, or before the origin. Where two copies of a byte
//! disagree, the first copy seen wins and the other is counted as conflicting.
//!
//! # Bounded memory
//!
//! Out-of-order bytes wait in a map keyed by offset, at most
//! [`StreamLimits::max_pending`] of them. When one more would exceed the limit,
//! the stream gives up on the oldest hole: the hole is recorded as abandoned
//! (see [`Stream::holes`]) and the bytes after it are delivered. The sink learns
//! about the jump through [`Chunk::Gap`] (see [`Stream::data_with_gaps`]), so it
//! never glues bytes across a hole. The last [`StreamLimits::keep_delivered`]
//! delivered bytes are kept to compare retransmissions against.

use std::collections::{BTreeMap, VecDeque};

/// Limits that bound a stream's memory.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Most out-of-order bytes buffered ahead of a hole before the stream gives up on the hole.
    pub max_pending: usize,
    /// Delivered bytes kept at least, whatever the retention, to compare
    /// retransmissions against (overlap conflict detection).
    pub keep_delivered: usize,
    /// Which delivered bytes are retained (for a restore or a replay).
    pub retention: Retention,
}

impl Default for StreamLimits {
    /// 16 MiB pending, 1 MiB kept, unacknowledged bytes retained.
    fn default() -> Self {
        Self {
            max_pending: 16 << 20,
            keep_delivered: 1 << 20,
            retention: Retention::Unacked,
        }
    }
}

/// A stream's position, as journaled (see [`Stream::marks`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamMarks {
    /// Sequence number of offset 0, once known.
    pub origin: Option<u32>,
    /// Whether a SYN fixed the origin.
    pub handshake: bool,
    /// Offset of the next byte to deliver.
    pub next: u64,
    /// Highest offset the receiver acknowledged.
    pub acked: u64,
    /// Offset of the FIN, once seen.
    pub fin: Option<u64>,
    /// Full retention went over its cap.
    pub handoff_only: bool,
}

/// The value congruent to `distance` modulo 2³² closest to `hint`.
fn nearest(distance: u32, hint: u64) -> u64 {
    let distance = u64::from(distance);
    let wraps = (hint.saturating_sub(distance) + (1 << 31)) >> 32;
    distance + (wraps << 32)
}

/// Which delivered bytes a stream retains, per service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Bytes the receiver has not acknowledged yet: what a restored sender must
    /// still be able to send.
    Unacked,
    /// The whole history from the first byte, for replay, up to `cap` bytes;
    /// past the cap the stream becomes *handoff-only* and falls back to
    /// `Unacked` (never silently truncated: [`Stream::is_handoff_only`] says so).
    Full {
        /// Most bytes of history kept.
        cap: u64,
    },
}

/// What a stream hands its sink, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// The next bytes of the stream.
    Bytes(&'a [u8]),
    /// This many bytes of the stream were given up on (an abandoned hole); the
    /// next [`Chunk::Bytes`] starts that far after the previous one ended.
    Gap(u64),
}

/// Byte counts of one stream. Every byte passed to [`Stream::data`] is counted
/// once, in exactly one of the fields below (`delivered` and `pending` together
/// holding the accepted ones); `abandoned_bytes` counts bytes never seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// Bytes handed to the sink, in order.
    pub delivered: u64,
    /// Bytes seen again that matched what was already held or delivered.
    pub duplicate_bytes: u64,
    /// Overlapping bytes that differ from what was held or delivered, bytes past
    /// the FIN, and FINs (one each) that disagree with the stream.
    pub conflicting_bytes: u64,
    /// Retransmitted bytes older than `keep_delivered` (could not be compared).
    pub unverified_bytes: u64,
    /// Bytes before the stream's origin (mid-stream start), ignored.
    pub before_origin_bytes: u64,
    /// Bytes currently buffered out of order.
    pub pending: u64,
    /// Bytes skipped when a hole was given up.
    pub abandoned_bytes: u64,
    /// Bytes that arrived for a hole after it was given up, ignored.
    pub late_bytes: u64,
}

/// One direction of one TCP connection, reassembled by sequence number.
///
/// ```
/// use connmirror::flow::stream::{Stream, StreamLimits};
///
/// let mut stream = Stream::new(StreamLimits::default());
/// let mut out = Vec::new();
/// stream.syn(0xffff_fff8); // "hello, " ends exactly at the wrap
/// stream.data(0, b"world", &mut |b| out.extend_from_slice(b)); // arrives early
/// stream.data(0xffff_fff9, b"hello, ", &mut |b| out.extend_from_slice(b));
/// stream.data(0xffff_fff9, b"hello, ", &mut |b| out.extend_from_slice(b)); // again
/// stream.fin(5);
/// assert_eq!(out, b"hello, world");
/// assert!(stream.is_complete());
/// assert_eq!(stream.stats().duplicate_bytes, 7);
/// ```
#[derive(Debug)]
pub struct Stream {
    limits: StreamLimits,
    /// Sequence number of offset 0, once known.
    origin: Option<u32>,
    /// Whether a SYN fixed `origin`.
    handshake: bool,
    /// Offset of the next byte to deliver.
    next: u64,
    /// Out-of-order bytes by offset: non-overlapping, every key at least `next`.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Sum of the lengths in `pending`.
    pending_bytes: usize,
    /// Retained delivered bytes: offsets `[next - recent.len(), next)` (see
    /// [`Retention`]; at least the last `keep_delivered`).
    recent: VecDeque<u8>,
    /// Full retention went over its cap: only unacknowledged bytes are kept.
    handoff_only: bool,
    /// Offset of the FIN, once seen.
    fin: Option<u64>,
    /// Holes given up on, as offsets `[start, end)`, in order, all below `next`.
    abandoned: Vec<(u64, u64)>,
    /// Highest offset the receiver acknowledged.
    acked: u64,
    stats: StreamStats,
}

impl Stream {
    /// An empty stream; its origin is fixed by the first [`syn`](Self::syn),
    /// [`data`](Self::data) or [`fin`](Self::fin) call.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            origin: None,
            handshake: false,
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            recent: VecDeque::new(),
            handoff_only: false,
            fin: None,
            abandoned: Vec::new(),
            acked: 0,
            stats: StreamStats::default(),
        }
    }

    /// SYN seen with sequence number `isn`: the first data byte has sequence `isn + 1`.
    ///
    /// Only the first SYN of a stream that has no origin yet counts. A
    /// retransmitted SYN is a no-op, and so is a SYN after data or a FIN already
    /// fixed a mid-stream origin (bytes already delivered are never re-based).
    pub fn syn(&mut self, isn: u32) {
        if self.origin.is_none() {
            self.origin = Some(isn.wrapping_add(1));
            self.handshake = true;
        }
    }

    /// Payload `bytes` seen starting at sequence number `seq`. Every byte that becomes
    /// contiguous with what was already delivered is passed to `sink`, in order, exactly once.
    ///
    /// Abandoned holes are not reported to `sink`: bytes on either side of one
    /// arrive back to back. Callers that must not glue across a hole use
    /// [`data_with_gaps`](Self::data_with_gaps) (or check [`holes`](Self::holes)).
    pub fn data(&mut self, seq: u32, bytes: &[u8], sink: &mut dyn FnMut(&[u8])) {
        self.data_with_gaps(seq, bytes, &mut |chunk| {
            if let Chunk::Bytes(b) = chunk {
                sink(b);
            }
        });
    }

    /// Like [`data`](Self::data), but also tells `sink` where a hole was given up
    /// on, with a [`Chunk::Gap`] in stream order.
    pub fn data_with_gaps(&mut self, seq: u32, bytes: &[u8], sink: &mut dyn FnMut(Chunk<'_>)) {
        if bytes.is_empty() {
            return;
        }
        let origin = *self.origin.get_or_insert(seq);
        let Some((start, bytes)) = self.clip(self.offset(origin, seq), bytes) else {
            return;
        };
        let end = start + bytes.len() as u64;
        let fresh = start.max(self.next);
        if start < self.next {
            let seen = end.min(self.next);
            self.compare_delivered(start, &bytes[..(seen - start) as usize]);
        }
        if end <= self.next {
            return;
        }
        let bytes = &bytes[(fresh - start) as usize..];
        if fresh == self.next {
            self.accept_in_order(bytes, sink);
        } else {
            self.buffer(fresh, bytes);
            self.enforce_limit(sink);
        }
        self.drain(sink);
    }

    /// FIN seen; `seq` is the sequence number of the FIN itself (one past the last data byte).
    ///
    /// A FIN that disagrees with an earlier FIN, or that falls before bytes
    /// already seen, counts as one conflicting byte and is ignored (the first
    /// copy wins).
    pub fn fin(&mut self, seq: u32) {
        let origin = *self.origin.get_or_insert(seq);
        let at = self.offset(origin, seq);
        match self.fin {
            Some(fin) if at == fin as i64 => {}
            Some(_) => self.stats.conflicting_bytes += 1,
            None if at < self.known_end() as i64 => self.stats.conflicting_bytes += 1,
            None => self.fin = Some(at as u64),
        }
    }

    /// Whether a SYN fixed the origin (false: origin was the first byte seen, mid-stream).
    pub fn has_handshake(&self) -> bool {
        self.handshake
    }

    /// FIN seen and every byte before it delivered: no hole was given up on.
    pub fn is_complete(&self) -> bool {
        self.fin_reached() && self.abandoned.is_empty()
    }

    /// FIN seen and delivery reached it, possibly across abandoned holes.
    pub fn fin_reached(&self) -> bool {
        self.fin == Some(self.next)
    }

    /// Missing byte ranges as stream offsets [start, end) (offset 0 = first data byte):
    /// holes before pending data, ranges abandoned, and the range up to a FIN not yet reached.
    pub fn holes(&self) -> Vec<(u64, u64)> {
        let Self {
            next,
            pending,
            fin,
            abandoned,
            ..
        } = self;
        let mut holes = abandoned.clone();
        let mut cursor = *next;
        for (&at, piece) in pending {
            if at > cursor {
                holes.push((cursor, at));
            }
            cursor = at + piece.len() as u64;
        }
        if let Some(fin) = *fin
            && fin > cursor
        {
            holes.push((cursor, fin));
        }
        holes
    }

    /// The receiver acknowledged every byte before `seq` (an acknowledgment number
    /// seen in the other direction). Keeps the highest, as a stream offset;
    /// ignored until the origin is known.
    pub fn ack(&mut self, seq: u32) {
        if let Some(origin) = self.origin {
            let offset = self.offset(origin, seq).max(0) as u64;
            self.acked = self.acked.max(offset);
            self.trim();
        }
    }

    /// Offset of the next byte to deliver: the bytes delivered so far, plus any
    /// abandoned holes.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// The marks a journal needs to rebuild this stream with [`restore`](Self::restore).
    pub fn marks(&self) -> StreamMarks {
        StreamMarks {
            origin: self.origin,
            handshake: self.handshake,
            next: self.next,
            acked: self.acked,
            fin: self.fin,
            handoff_only: self.handoff_only,
        }
    }

    /// Rebuilds a stream from journaled `marks` and its retained bytes, which
    /// end at `marks.next`. Out-of-order bytes come back through
    /// [`restore_out_of_order`](Self::restore_out_of_order) when they were
    /// journaled (a clean stop, a checkpoint); after a crash they are lost.
    pub fn restore(limits: StreamLimits, marks: StreamMarks, retained: &[u8]) -> Self {
        let mut stream = Self::new(limits);
        let StreamMarks {
            origin,
            handshake,
            next,
            acked,
            fin,
            handoff_only,
        } = marks;
        stream.origin = origin;
        stream.handshake = handshake;
        stream.next = next;
        stream.acked = acked;
        stream.fin = fin;
        stream.handoff_only = handoff_only;
        let keep = retained.len().min(next as usize);
        stream.recent.extend(&retained[retained.len() - keep..]);
        stream.stats.delivered = next;
        stream.trim();
        stream
    }

    /// Moves a stream the capture did not see for a while (its connection was
    /// served by this host, uncaptured) to where the connection stands now:
    /// `next_seq` is the sequence number of the next byte, `acked_seq` the
    /// receiver's acknowledgment, and `retained` the bytes `[acked_seq,
    /// next_seq)`. Offsets stay absolute: the distance from the old delivery
    /// point is known modulo 2³², and `moved` (about how many bytes went by
    /// unseen, e.g. the socket's `tcpi_bytes_received`) picks the multiple.
    /// Out-of-order bytes, given-up holes and a FIN are forgotten. Returns the
    /// new next offset; `None` (and nothing changes) without an origin.
    pub fn rebase(
        &mut self,
        next_seq: u32,
        acked_seq: u32,
        retained: &[u8],
        moved: u64,
    ) -> Option<u64> {
        let origin = self.origin?;
        let here = origin.wrapping_add(self.next as u32);
        let next = self.next + nearest(next_seq.wrapping_sub(here), moved);
        let acked = next.saturating_sub(u64::from(next_seq.wrapping_sub(acked_seq)));
        self.next = next;
        self.acked = acked;
        self.fin = None;
        self.pending.clear();
        self.pending_bytes = 0;
        self.abandoned.clear();
        self.recent.clear();
        self.recent
            .extend(&retained[retained.len().saturating_sub((next - acked) as usize)..]);
        self.stats.delivered = next;
        self.trim();
        Some(next)
    }

    /// The bytes buffered out of order, by stream offset.
    pub fn out_of_order(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pending.iter().map(|(at, bytes)| (*at, &bytes[..]))
    }

    /// Buffers journaled out-of-order bytes again after [`restore`](Self::restore);
    /// whatever lies below the next offset is already delivered and dropped.
    pub fn restore_out_of_order(&mut self, offset: u64, bytes: &[u8]) {
        let skip = self.next.saturating_sub(offset).min(bytes.len() as u64) as usize;
        if skip < bytes.len() {
            self.buffer(offset + skip as u64, &bytes[skip..]);
        }
    }

    /// The retained delivered bytes and the stream offset of the first of them.
    pub fn retained(&self) -> (u64, impl Iterator<Item = &[u8]>) {
        let (a, b) = self.recent.as_slices();
        (self.next - self.recent.len() as u64, [a, b].into_iter())
    }

    /// Bytes of payload this stream holds: retained plus out-of-order.
    pub fn held_bytes(&self) -> usize {
        self.recent.len() + self.pending_bytes
    }

    /// Full retention exceeded its cap: the history is no longer complete, so
    /// the flow can be handed off but not replayed.
    pub fn is_handoff_only(&self) -> bool {
        self.handoff_only
    }

    /// Drops retained bytes the retention no longer needs.
    fn trim(&mut self) {
        let next = self.next;
        let policy_from = match self.limits.retention {
            Retention::Full { cap } if !self.handoff_only => {
                if next > cap {
                    self.handoff_only = true;
                    self.acked
                } else {
                    0
                }
            }
            _ => self.acked,
        };
        let keep_from = policy_from
            .min(next)
            .min(next.saturating_sub(self.limits.keep_delivered as u64));
        let kept_from = next - self.recent.len() as u64;
        if keep_from > kept_from {
            self.recent.drain(..(keep_from - kept_from) as usize);
            if self.recent.is_empty() {
                self.recent.shrink_to_fit();
            }
        }
    }

    /// Highest acknowledged stream offset (see [`ack`](Self::ack)).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The parts of [`holes`](Self::holes) below the highest acknowledgment: bytes
    /// the receiver has but the capture lacks. Holes above it are bytes in flight,
    /// which the sender still holds and will resend (or, after a RST, never will).
    pub fn missing(&self) -> Vec<(u64, u64)> {
        self.holes()
            .into_iter()
            .filter(|(start, _)| *start < self.acked)
            .map(|(start, end)| (start, end.min(self.acked)))
            .collect()
    }

    /// Next expected sequence number, once an origin is known.
    pub fn next_seq(&self) -> Option<u32> {
        self.origin.map(|o| o.wrapping_add(self.next as u32))
    }

    /// Byte counts so far.
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            pending: self.pending_bytes as u64,
            ..self.stats
        }
    }

    /// The offset of `seq`: the value congruent to `seq - origin` modulo 2³²
    /// that is closest to the delivery point. Negative before the origin.
    fn offset(&self, origin: u32, seq: u32) -> i64 {
        let here = origin.wrapping_add(self.next as u32);
        self.next as i64 + i64::from(seq.wrapping_sub(here) as i32)
    }

    /// One past the last byte delivered or buffered.
    fn known_end(&self) -> u64 {
        self.pending
            .last_key_value()
            .map_or(self.next, |(&at, piece)| at + piece.len() as u64)
    }

    /// Drops (and counts) the bytes before the origin and past the FIN.
    fn clip<'b>(&mut self, start: i64, bytes: &'b [u8]) -> Option<(u64, &'b [u8])> {
        let before = start.min(0).unsigned_abs().min(bytes.len() as u64) as usize;
        self.stats.before_origin_bytes += before as u64;
        let bytes = &bytes[before..];
        let start = start.max(0) as u64;
        let end = start + bytes.len() as u64;
        let keep = match self.fin {
            Some(fin) if end > fin => fin.saturating_sub(start) as usize,
            _ => bytes.len(),
        };
        self.stats.conflicting_bytes += (bytes.len() - keep) as u64;
        let bytes = &bytes[..keep];
        (!bytes.is_empty()).then_some((start, bytes))
    }

    /// Counts a retransmission of bytes below `next`, comparing what is still kept.
    fn compare_delivered(&mut self, start: u64, bytes: &[u8]) {
        let kept_from = self.next - self.recent.len() as u64;
        let old = (kept_from.saturating_sub(start) as usize).min(bytes.len());
        let late = self.abandoned_overlap(start, start + old as u64);
        self.stats.late_bytes += late;
        self.stats.unverified_bytes += old as u64 - late;
        let (a, b) = self.recent.as_slices();
        let mut at = (start + old as u64).saturating_sub(kept_from) as usize;
        let mut rest = &bytes[old..];
        for kept in [a, b] {
            if at >= kept.len() {
                at -= kept.len();
                continue;
            }
            let n = (kept.len() - at).min(rest.len());
            count_overlap(&mut self.stats, &kept[at..at + n], &rest[..n]);
            rest = &rest[n..];
            at = 0;
        }
    }

    /// Bytes of `[start, end)` inside abandoned holes.
    fn abandoned_overlap(&self, start: u64, end: u64) -> u64 {
        let first = self.abandoned.partition_point(|&(_, e)| e <= start);
        self.abandoned[first..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| e.min(end) - s.max(start))
            .sum()
    }

    /// Delivers `bytes`, which start at `next`, merging any pending pieces they
    /// overlap (the pending copy came first, so it wins).
    fn accept_in_order(&mut self, bytes: &[u8], sink: &mut dyn FnMut(Chunk<'_>)) {
        let start = self.next;
        let end = start + bytes.len() as u64;
        while self.next < end {
            let from = (self.next - start) as usize;
            match self.pending.first_key_value() {
                Some((&at, _)) if at < end => {
                    let to = (at - start) as usize;
                    if to > from {
                        self.deliver(&bytes[from..to], sink);
                    }
                    let Some((_, held)) = self.pending.pop_first() else {
                        break;
                    };
                    self.pending_bytes -= held.len();
                    let n = held.len().min(bytes.len() - to);
                    count_overlap(&mut self.stats, &held[..n], &bytes[to..to + n]);
                    self.deliver(&held, sink);
                }
                _ => self.deliver(&bytes[from..], sink),
            }
        }
    }

    /// Buffers `bytes` at offset `start` (> `next`), keeping only what no pending
    /// piece already holds and counting the overlap.
    fn buffer(&mut self, start: u64, bytes: &[u8]) {
        let end = start + bytes.len() as u64;
        let mut cursor = start;
        if let Some((&at, held)) = self.pending.range(..start).next_back() {
            let held_end = at + held.len() as u64;
            if held_end > start {
                let n = (held_end.min(end) - start) as usize;
                let from = (start - at) as usize;
                count_overlap(&mut self.stats, &held[from..from + n], &bytes[..n]);
                cursor = start + n as u64;
            }
        }
        while cursor < end {
            let from = (cursor - start) as usize;
            let Some((&at, held)) = self.pending.range(cursor..end).next() else {
                self.store(cursor, &bytes[from..]);
                break;
            };
            let to = (at - start) as usize;
            let n = held.len().min(bytes.len() - to);
            count_overlap(&mut self.stats, &held[..n], &bytes[to..to + n]);
            if to > from {
                self.store(cursor, &bytes[from..to]);
            }
            cursor = at + n as u64;
        }
    }

    /// Adds a piece no pending piece overlaps, appending it to the piece that
    /// ends where it starts, if any (so in-order bytes behind a hole stay one piece).
    fn store(&mut self, at: u64, bytes: &[u8]) {
        self.pending_bytes += bytes.len();
        if let Some((&prev, held)) = self.pending.range_mut(..at).next_back()
            && prev + held.len() as u64 == at
        {
            held.extend_from_slice(bytes);
        } else {
            self.pending.insert(at, bytes.to_vec());
        }
    }

    /// Gives up on the oldest holes until the pending bytes fit the limit.
    fn enforce_limit(&mut self, sink: &mut dyn FnMut(Chunk<'_>)) {
        while self.pending_bytes > self.limits.max_pending {
            let Some(&at) = self.pending.keys().next() else {
                break;
            };
            let len = at - self.next;
            self.abandoned.push((self.next, at));
            self.stats.abandoned_bytes += len;
            self.recent.clear();
            self.next = at;
            sink(Chunk::Gap(len));
            self.drain(sink);
        }
    }

    /// Delivers the pending pieces that start at `next`.
    fn drain(&mut self, sink: &mut dyn FnMut(Chunk<'_>)) {
        while self
            .pending
            .first_key_value()
            .is_some_and(|(&at, _)| at == self.next)
        {
            let Some((_, piece)) = self.pending.pop_first() else {
                break;
            };
            self.pending_bytes -= piece.len();
            self.deliver(&piece, sink);
        }
    }

    /// Hands `bytes` (at `next`) to the sink and remembers them.
    fn deliver(&mut self, bytes: &[u8], sink: &mut dyn FnMut(Chunk<'_>)) {
        sink(Chunk::Bytes(bytes));
        self.next += bytes.len() as u64;
        self.stats.delivered += bytes.len() as u64;
        self.remember(bytes);
    }

    /// Retains delivered `bytes` (just below `next`), then trims per the retention.
    fn remember(&mut self, bytes: &[u8]) {
        self.recent.extend(bytes);
        self.trim();
    }
}

/// Counts `seen` against `held` (same length): equal bytes as duplicates,
/// different ones as conflicts.
fn count_overlap(stats: &mut StreamStats, held: &[u8], seen: &[u8]) {
    let differ = if held == seen {
        0
    } else {
        held.iter().zip(seen).filter(|(h, s)| h != s).count() as u64
    };
    stats.conflicting_bytes += differ;
    stats.duplicate_bytes += seen.len() as u64 - differ;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::{collection::vec, prelude::*, sample::Index};

    fn stream() -> Stream {
        Stream::new(StreamLimits::default())
    }

    fn feed(stream: &mut Stream, seq: u32, bytes: &[u8], out: &mut Vec<u8>) {
        stream.data(seq, bytes, &mut |b| out.extend_from_slice(b));
    }

    /// What a gap-aware sink saw, owned.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Bytes(Vec<u8>),
        Gap(u64),
    }

    #[test]
    fn nearest_picks_the_wrap_closest_to_the_hint() {
        assert_eq!(nearest(100, 0), 100);
        assert_eq!(nearest(100, 90), 100);
        assert_eq!(nearest(100, (5 << 32) + 7), (5 << 32) + 100);
        assert_eq!(nearest(u32::MAX, 1 << 32), u64::from(u32::MAX));
        assert_eq!(nearest(5, (1 << 32) + (1 << 30)), (1 << 32) + 5);
    }

    #[test]
    fn a_rebased_stream_continues_from_the_new_point_without_a_hole() {
        let isn = u32::MAX - 2;
        let mut s = stream();
        s.syn(isn);
        let mut out = Vec::new();
        feed(&mut s, isn.wrapping_add(1), b"before", &mut out);
        s.ack(isn.wrapping_add(7));
        // 6 GiB + 20 bytes go by unseen; the receiver acknowledged all but 4.
        let moved = (6u64 << 30) + 20;
        let next_seq = isn.wrapping_add(7).wrapping_add(moved as u32);

        let next = s.rebase(next_seq, next_seq.wrapping_sub(4), b"tail", moved);
        feed(&mut s, next_seq, b"after", &mut out);

        assert_eq!(next, Some(6 + moved));
        assert_eq!(s.acked(), 6 + moved - 4);
        assert_eq!(s.missing(), Vec::new());
        assert_eq!(s.holes(), Vec::new());
        assert_eq!(s.next_offset(), 6 + moved + 5);
        assert_eq!(out, b"beforeafter");
        let (start, retained) = s.retained();
        assert_eq!(start, 6 + moved - 4);
        assert_eq!(
            retained.flatten().copied().collect::<Vec<u8>>(),
            b"tailafter"
        );
    }

    #[test]
    fn a_stream_without_an_origin_is_not_rebased() {
        let mut s = stream();
        assert_eq!(s.rebase(10, 10, b"", 0), None);
        assert_eq!(s.next_offset(), 0);
    }

    fn feed_with_gaps(stream: &mut Stream, seq: u32, bytes: &[u8], out: &mut Vec<Seen>) {
        stream.data_with_gaps(seq, bytes, &mut |chunk| match chunk {
            Chunk::Bytes(b) => out.push(Seen::Bytes(b.to_vec())),
            Chunk::Gap(n) => out.push(Seen::Gap(n)),
        });
    }

    #[test]
    fn in_order_segments_are_delivered_immediately_and_once() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(1000);
        feed(&mut s, 1001, b"hello", &mut out);
        assert_eq!(out, b"hello");
        feed(&mut s, 1006, b" world", &mut out);

        assert_eq!(out, b"hello world");
        assert!(s.has_handshake());
        assert_eq!(s.next_seq(), Some(1012));
        assert!(s.holes().is_empty());
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 11,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn reordered_segments_wait_for_the_hole_then_deliver_in_order() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 8, b"rld", &mut out);
        feed(&mut s, 6, b"wo", &mut out);
        assert!(out.is_empty());
        assert_eq!(s.holes(), vec![(0, 5)]);
        assert_eq!(s.stats().pending, 5);

        feed(&mut s, 1, b"hello", &mut out);

        assert_eq!(out, b"helloworld");
        assert!(s.holes().is_empty());
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 10,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn duplicated_segments_are_counted_not_delivered_twice() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 5, b"ef", &mut out);
        feed(&mut s, 5, b"ef", &mut out);
        for (seq, seg) in [(1, b"ab"), (3, b"cd")] {
            feed(&mut s, seq, seg, &mut out);
            feed(&mut s, seq, seg, &mut out);
        }

        assert_eq!(out, b"abcdef");
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 6,
                duplicate_bytes: 6,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn overlapping_identical_pieces_merge_with_exact_duplicate_counts() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0); // offset n is seq n + 1
        feed(&mut s, 6, b"56789", &mut out);
        feed(&mut s, 4, b"34567", &mut out);
        assert_eq!(s.holes(), vec![(0, 3)]);
        assert_eq!(s.stats().pending, 7);
        assert_eq!(s.stats().duplicate_bytes, 3);

        feed(&mut s, 1, b"0123", &mut out);

        assert_eq!(out, b"0123456789");
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 10,
                duplicate_bytes: 4,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn segment_spanning_several_pending_pieces_fills_only_the_gaps() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 3, b"23", &mut out);
        feed(&mut s, 7, b"67", &mut out);
        feed(&mut s, 2, b"12345678", &mut out);
        assert_eq!(s.holes(), vec![(0, 1)]);
        assert_eq!(s.stats().pending, 8);
        assert_eq!(s.stats().duplicate_bytes, 4);

        feed(&mut s, 1, b"0", &mut out);

        assert_eq!(out, b"012345678");
        assert_eq!(s.stats().pending, 0);
        assert_eq!(s.stats().conflicting_bytes, 0);
    }

    #[test]
    fn conflicting_overlap_counts_each_differing_byte_and_first_copy_wins() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 5, b"4567", &mut out);
        // Against the pending "4567": x != 4, 5 == 5, y != 6, 7 == 7.
        feed(&mut s, 3, b"23x5y7", &mut out);
        feed(&mut s, 1, b"01", &mut out);
        assert_eq!(out, b"01234567");
        // Against the delivered bytes: X != 1, Y != 6, six equal.
        feed(&mut s, 1, b"0X2345Y7", &mut out);

        assert_eq!(out, b"01234567");
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 8,
                duplicate_bytes: 8,
                conflicting_bytes: 4,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn in_order_segment_overlapping_a_pending_piece_keeps_the_pending_copy() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 3, b"23", &mut out);
        feed(&mut s, 1, b"01ab4", &mut out);

        assert_eq!(out, b"01234");
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 5,
                conflicting_bytes: 2,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn sequence_numbers_wrap_across_2_pow_32_after_syn_at_0xffff_ff00() {
        let data: Vec<u8> = (0..512u32).map(|i| (i * 7 + i / 256) as u8).collect();
        let isn = 0xFFFF_FF00u32;
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(isn);
        for k in [4usize, 2, 0, 3, 1, 5] {
            let piece = &data[k * 100..(k * 100 + 100).min(data.len())];
            feed(
                &mut s,
                isn.wrapping_add(1 + k as u32 * 100),
                piece,
                &mut out,
            );
        }
        s.fin(isn.wrapping_add(513));

        assert_eq!(out, data);
        assert_eq!(s.next_seq(), Some(0x101));
        assert!(s.is_complete());
        assert_eq!(s.stats().conflicting_bytes, 0);
    }

    #[test]
    fn stream_longer_than_4_gib_keeps_offsets_straight() {
        const CHUNK: u64 = 1 << 16;
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        let isn = 0xFFFF_0000u32;
        let origin = isn.wrapping_add(1);
        let mut s = Stream::new(StreamLimits {
            keep_delivered: 16,
            ..StreamLimits::default()
        });
        let mut delivered = 0u64;
        let mut count = |b: &[u8]| delivered += b.len() as u64;
        s.syn(isn);
        let chunks = (1 << 32) / CHUNK + 1;
        for i in 0..chunks {
            s.data(origin.wrapping_add((i * CHUNK) as u32), &chunk, &mut count);
            // The receiver acknowledges as it goes, so only keep_delivered is retained.
            s.ack(origin.wrapping_add(((i + 1) * CHUNK) as u32));
        }
        let end = chunks * CHUNK;
        // Past the 4 GiB mark: a segment beyond a 10-byte hole, then the hole.
        s.data(
            origin.wrapping_add(end as u32 + 10),
            &chunk[..6],
            &mut count,
        );
        assert_eq!(s.holes(), vec![(end, end + 10)]);
        s.data(origin.wrapping_add(end as u32), &chunk[..10], &mut count);
        s.ack(origin.wrapping_add((end + 16) as u32));
        // A retransmission of the last 20 delivered bytes: 16 still kept.
        s.data(
            origin.wrapping_add(end as u32 - 4),
            &chunk[..20],
            &mut count,
        );

        assert_eq!(delivered, end + 16);
        assert!(s.holes().is_empty());
        assert_eq!(s.next_seq(), Some(origin.wrapping_add((end + 16) as u32)));
        let stats = s.stats();
        assert_eq!(stats.unverified_bytes, 4);
        assert_eq!(stats.duplicate_bytes + stats.conflicting_bytes, 16);
    }

    #[test]
    fn mid_stream_start_takes_the_first_byte_seen_as_origin() {
        let mut s = stream();
        let mut out = Vec::new();
        feed(&mut s, 5000, b"cde", &mut out);
        feed(&mut s, 4998, b"abcdef", &mut out);
        s.syn(4000);

        assert_eq!(out, b"cdef");
        assert!(!s.has_handshake());
        assert_eq!(s.next_seq(), Some(5004));
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 4,
                duplicate_bytes: 3,
                before_origin_bytes: 2,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn retransmitted_syn_is_a_no_op() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(7);
        feed(&mut s, 8, b"ab", &mut out);
        s.syn(7);
        feed(&mut s, 10, b"cd", &mut out);

        assert_eq!(out, b"abcd");
        assert_eq!(s.next_seq(), Some(12));
        assert!(s.has_handshake());
    }

    #[test]
    fn bytes_before_the_origin_are_counted_and_ignored() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(100); // first data byte: 101
        feed(&mut s, 95, b"0123456789", &mut out);
        feed(&mut s, 90, b"abc", &mut out);

        assert_eq!(out, b"6789");
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 4,
                before_origin_bytes: 9,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn fin_completes_the_stream_only_when_every_byte_before_it_is_delivered() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0);
        s.fin(11);
        assert!(!s.is_complete());
        assert_eq!(s.holes(), vec![(0, 10)]);
        feed(&mut s, 6, b"world", &mut out);
        assert!(!s.is_complete());
        assert_eq!(s.holes(), vec![(0, 5)]);

        feed(&mut s, 1, b"hello", &mut out);
        s.fin(11);

        assert_eq!(out, b"helloworld");
        assert!(s.is_complete());
        assert!(s.holes().is_empty());
        assert_eq!(s.stats().conflicting_bytes, 0);
    }

    #[test]
    fn data_past_the_fin_and_a_disagreeing_fin_conflict() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 1, b"0123", &mut out);
        s.fin(3); // before bytes already delivered
        s.fin(5);
        s.fin(6); // disagrees with the first FIN
        feed(&mut s, 4, b"3XYZ", &mut out); // "3" is a duplicate, XYZ past the FIN

        assert_eq!(out, b"0123");
        assert!(s.is_complete());
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 4,
                duplicate_bytes: 1,
                conflicting_bytes: 5,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn retransmission_older_than_keep_delivered_is_unverified() {
        let mut s = Stream::new(StreamLimits {
            keep_delivered: 4,
            ..StreamLimits::default()
        });
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 1, b"abcdefgh", &mut out);
        s.ack(9); // all acknowledged: only keep_delivered (4) is retained
        feed(&mut s, 1, b"abcdefgX", &mut out);

        assert_eq!(out, b"abcdefgh");
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 8,
                unverified_bytes: 4,
                duplicate_bytes: 3,
                conflicting_bytes: 1,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn memory_limit_abandons_the_oldest_hole_with_its_exact_range() {
        let mut s = Stream::new(StreamLimits {
            max_pending: 10,
            ..StreamLimits::default()
        });
        let mut seen = Vec::new();
        s.syn(0); // offset n is seq n + 1
        feed_with_gaps(&mut s, 6, b"555555", &mut seen);
        assert!(seen.is_empty());
        feed_with_gaps(&mut s, 21, b"bbbbbb", &mut seen);

        assert_eq!(seen, vec![Seen::Gap(5), Seen::Bytes(b"555555".to_vec())]);
        assert_eq!(s.holes(), vec![(0, 5), (11, 20)]);
        assert_eq!(s.stats().abandoned_bytes, 5);
        assert_eq!(s.stats().pending, 6);

        feed_with_gaps(&mut s, 1, b"late!", &mut seen);
        feed_with_gaps(&mut s, 12, b"aaaaaaaaa", &mut seen);
        s.fin(27);

        assert_eq!(seen.len(), 4);
        assert_eq!(s.holes(), vec![(0, 5)]);
        assert!(s.fin_reached());
        assert!(!s.is_complete());
        assert_eq!(
            s.stats(),
            StreamStats {
                delivered: 21,
                abandoned_bytes: 5,
                late_bytes: 5,
                ..StreamStats::default()
            }
        );
    }

    #[test]
    fn only_holes_below_the_highest_ack_are_missing() {
        let mut s = stream();
        let mut out = Vec::new();
        s.syn(99);
        feed(&mut s, 100, b"abcd", &mut out);
        feed(&mut s, 110, b"klmn", &mut out);
        assert_eq!(s.holes(), vec![(4, 10)]);

        s.ack(104);
        assert_eq!(s.missing(), Vec::<(u64, u64)>::new());

        s.ack(107);
        s.ack(105); // an older ACK does not lower the mark
        assert_eq!(s.acked(), 7);
        assert_eq!(s.missing(), vec![(4, 7)]);
    }

    #[test]
    fn unacked_retention_keeps_exactly_the_unacknowledged_bytes() {
        let mut s = Stream::new(StreamLimits {
            keep_delivered: 0,
            ..StreamLimits::default()
        });
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 1, b"abcdefgh", &mut out);
        assert_eq!(retained(&s), (0, b"abcdefgh".to_vec()));

        s.ack(6);

        assert_eq!(retained(&s), (5, b"fgh".to_vec()));
        assert_eq!(s.held_bytes(), 3);
        s.ack(9);
        assert_eq!(retained(&s), (8, Vec::new()));
        assert!(!s.is_handoff_only());
    }

    #[test]
    fn full_retention_keeps_history_until_its_cap_then_becomes_handoff_only() {
        let mut s = Stream::new(StreamLimits {
            keep_delivered: 0,
            retention: Retention::Full { cap: 10 },
            ..StreamLimits::default()
        });
        let mut out = Vec::new();
        s.syn(0);
        feed(&mut s, 1, b"abcdefgh", &mut out);
        s.ack(9);
        assert_eq!(retained(&s), (0, b"abcdefgh".to_vec()));
        assert!(!s.is_handoff_only());

        feed(&mut s, 9, b"ijkl", &mut out);

        assert!(s.is_handoff_only());
        assert_eq!(retained(&s), (8, b"ijkl".to_vec()));
    }

    fn retained(s: &Stream) -> (u64, Vec<u8>) {
        let (start, pieces) = s.retained();
        (start, pieces.flat_map(|p| p.iter().copied()).collect())
    }

    #[test]
    fn data_ignores_gaps_but_still_delivers_the_bytes_after_them() {
        let mut s = Stream::new(StreamLimits {
            max_pending: 2,
            ..StreamLimits::default()
        });
        let mut out = Vec::new();
        feed(&mut s, 100, b"ab", &mut out);
        feed(&mut s, 110, b"xyz", &mut out);

        assert_eq!(out, b"abxyz");
        assert_eq!(s.holes(), vec![(2, 10)]);
        assert_eq!(s.next_seq(), Some(113));
    }

    /// `len` pseudo-random bytes from `seed` (splitmix64), cheaper than a
    /// proptest value per byte.
    fn bytes_from(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }

    fn isn() -> impl Strategy<Value = u32> {
        prop_oneof![any::<u32>(), (u32::MAX - 70_000)..=u32::MAX]
    }

    /// Cut points of `[0, len)` into segments covering it exactly once.
    fn cut(len: usize, mut cuts: Vec<usize>) -> Vec<(usize, usize)> {
        cuts.extend([0, len]);
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// A byte string and the segments one capture saw of it, in arrival order.
    #[derive(Clone, Debug)]
    struct Capture {
        data: Vec<u8>,
        isn: u32,
        /// `[start, end)` offsets, shuffled, with duplicates and overlaps.
        segments: Vec<(usize, usize)>,
        /// Where among the segments the FIN arrives.
        fin_at: usize,
    }

    fn capture() -> impl Strategy<Value = Capture> {
        (0usize..=65_536, any::<u64>(), isn())
            .prop_flat_map(|(len, seed, isn)| {
                let cuts = vec(0..=len, 0..48);
                let dups = vec(any::<Index>(), 0..16);
                let extra = vec((0..=len, 0..=len), 0..8);
                (Just((len, seed, isn)), cuts, dups, extra)
            })
            .prop_flat_map(|((len, seed, isn), cuts, dups, extra)| {
                let mut segments = cut(len, cuts);
                let dups: Vec<_> = match segments.len() {
                    0 => Vec::new(),
                    n => dups.iter().map(|d| segments[d.index(n)]).collect(),
                };
                segments.extend(dups);
                let extra = extra.into_iter().filter(|(a, b)| a != b);
                segments.extend(extra.map(|(a, b)| (a.min(b), a.max(b))));
                let n = segments.len();
                (Just((len, seed, isn)), Just(segments).prop_shuffle(), 0..=n)
            })
            .prop_map(|((len, seed, isn), segments, fin_at)| Capture {
                data: bytes_from(seed, len),
                isn,
                segments,
                fin_at,
            })
    }

    fn seq_of(isn: u32, offset: usize) -> u32 {
        isn.wrapping_add(1).wrapping_add(offset as u32)
    }

    proptest! {
        /// Whatever the arrival order and the acknowledgments seen in between,
        /// a stream retains exactly the bytes its policy asks for: under
        /// `unacked` the delivered bytes from the highest ACK on, under `full`
        /// everything delivered (until the cap, then it is handoff-only and
        /// keeps only the unacknowledged bytes).
        #[test]
        fn retention_keeps_exactly_what_its_policy_asks_for(
            c in capture(),
            acks in vec(0usize..=65_536, 0..16),
            full in any::<bool>(),
            cap in prop_oneof![Just(u64::MAX), 0u64..70_000],
        ) {
            let retention = if full { Retention::Full { cap } } else { Retention::Unacked };
            let mut s = Stream::new(StreamLimits {
                keep_delivered: 0,
                retention,
                ..StreamLimits::default()
            });
            s.syn(c.isn);
            let mut acked = 0usize;
            for (i, &(a, b)) in c.segments.iter().enumerate() {
                s.data(seq_of(c.isn, a), &c.data[a..b], &mut |_| {});
                if let Some(&ack) = acks.get(i) {
                    // A receiver only acknowledges what it has: at most what
                    // the stream delivered so far.
                    let ack = ack.min(s.next_offset() as usize);
                    s.ack(seq_of(c.isn, ack));
                    acked = acked.max(ack);
                }
            }
            let next = s.next_offset() as usize;
            prop_assert_eq!(next, c.data.len());
            let keep_from = match retention {
                Retention::Full { cap } if next as u64 <= cap => 0,
                _ => acked,
            };
            let (start, pieces) = s.retained();
            let kept: Vec<u8> = pieces.flat_map(|p| p.iter().copied()).collect();
            prop_assert_eq!(start as usize, keep_from);
            prop_assert_eq!(&kept[..], &c.data[keep_from..next]);
            prop_assert_eq!(s.is_handoff_only(), full && next as u64 > cap);
            prop_assert_eq!(s.held_bytes(), next - keep_from);
        }

        #[test]
        fn any_capture_of_a_stream_reassembles_it_exactly(
            c in capture(),
            keep in prop_oneof![Just(0usize), 1usize..4096, Just(1usize << 20)],
        ) {
            let mut s = Stream::new(StreamLimits { keep_delivered: keep, ..StreamLimits::default() });
            let mut out = Vec::new();
            s.syn(c.isn);
            let mut fed = 0;
            for (i, &(a, b)) in c.segments.iter().enumerate() {
                if i == c.fin_at {
                    s.fin(seq_of(c.isn, c.data.len()));
                }
                feed(&mut s, seq_of(c.isn, a), &c.data[a..b], &mut out);
                fed += (b - a) as u64;
            }
            s.fin(seq_of(c.isn, c.data.len()));

            prop_assert!(out == c.data, "delivered bytes differ from the original");
            prop_assert_eq!(s.holes(), vec![]);
            prop_assert!(s.is_complete());
            let st = s.stats();
            prop_assert_eq!(st.conflicting_bytes, 0);
            prop_assert_eq!(st.delivered, c.data.len() as u64);
            prop_assert_eq!(st.duplicate_bytes + st.unverified_bytes, fed - st.delivered);
            prop_assert_eq!(st.pending + st.abandoned_bytes + st.late_bytes + st.before_origin_bytes, 0);
        }

        #[test]
        fn a_corrupted_retransmission_conflicts_by_exactly_its_differing_bytes(
            (c, copy, flips, at) in capture().prop_filter("needs data", |c| !c.data.is_empty())
                .prop_flat_map(|c| {
                    let len = c.data.len();
                    let n = c.segments.len();
                    (Just(c), (0..len, 1..=len), vec((any::<Index>(), 1..=255u8), 1..32), 0..=n)
                }),
        ) {
            // Only the exact cover of the data, plus one corrupted copy of [a, b).
            let segments = cut(c.data.len(), c.segments.iter().map(|s| s.0).collect());
            let (a, b) = (copy.0, (copy.0 + copy.1).min(c.data.len()));
            let mut corrupt = c.data[a..b].to_vec();
            let mut flipped = std::collections::BTreeSet::new();
            for (i, mask) in &flips {
                let i = i.index(corrupt.len());
                if flipped.insert(i) {
                    corrupt[i] ^= mask;
                }
            }
            let mut s = stream();
            let mut out = Vec::new();
            s.syn(c.isn);
            let at = at.min(segments.len());
            for (i, &(x, y)) in segments.iter().enumerate() {
                if i == at {
                    feed(&mut s, seq_of(c.isn, a), &corrupt, &mut out);
                }
                feed(&mut s, seq_of(c.isn, x), &c.data[x..y], &mut out);
            }
            if at == segments.len() {
                feed(&mut s, seq_of(c.isn, a), &corrupt, &mut out);
                prop_assert!(out == c.data, "the first copy must win");
            }

            let st = s.stats();
            prop_assert_eq!(st.conflicting_bytes, flipped.len() as u64);
            prop_assert_eq!(st.duplicate_bytes, (b - a - flipped.len()) as u64);
            prop_assert_eq!(out.len(), c.data.len());
            for (i, (&got, &want)) in out.iter().zip(&c.data).enumerate() {
                let other = (a..b).contains(&i).then(|| corrupt[i - a]);
                prop_assert!(got == want || Some(got) == other, "byte {} invented", i);
            }
        }

        #[test]
        fn under_memory_pressure_gaps_and_bytes_land_at_their_true_offsets(
            c in capture(),
            max_pending in 0usize..4096,
        ) {
            let mut s = Stream::new(StreamLimits { max_pending, ..StreamLimits::default() });
            let mut pos = 0usize;
            let mut sink_ok = true;
            let mut sink = |chunk: Chunk<'_>| match chunk {
                Chunk::Gap(n) => pos += n as usize,
                Chunk::Bytes(b) => {
                    sink_ok &= c.data.get(pos..pos + b.len()) == Some(b);
                    pos += b.len();
                }
            };
            s.syn(c.isn);
            for &(a, b) in &c.segments {
                s.data_with_gaps(seq_of(c.isn, a), &c.data[a..b], &mut sink);
            }

            prop_assert!(sink_ok, "a chunk landed at the wrong offset");
            prop_assert_eq!(pos, c.data.len());
            let st = s.stats();
            prop_assert_eq!(st.delivered + st.abandoned_bytes, c.data.len() as u64);
            prop_assert_eq!(st.conflicting_bytes + st.pending, 0);
            let abandoned: u64 = s.holes().iter().map(|(a, b)| b - a).sum();
            prop_assert_eq!(abandoned, st.abandoned_bytes);
        }
    }
}
