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
//! than 4 GiB and ISNs near 2³² therefore work: connmirror's proof of concept
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
    /// Bytes the capture did not copy (see [`Stream::skip`]), each time seen.
    pub skipped_bytes: u64,
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

    /// `len` payload bytes at sequence number `seq` that the capture did not
    /// copy: the service needs none of this direction's payload
    /// ([`PayloadSkip`](connmirror_common::PayloadSkip)). From then on the
    /// stream holds no bytes and its delivery point follows the receiver's
    /// acknowledgment (up to the FIN), never past it: a socket restored from
    /// it expects the sender's bytes from there on, and the sender, whose
    /// later bytes were never acknowledged, sends them again.
    pub fn skip(&mut self, seq: u32, len: u32) {
        self.origin.get_or_insert(seq);
        self.stats.skipped_bytes += u64::from(len);
        self.follow_ack();
    }

    /// A stream whose payload is skipped: moves delivery up to the
    /// acknowledgment, clipped to the FIN. Pieces buffered before the payload
    /// stopped being copied (a restart changed the retention) and now behind
    /// the delivery point are moot.
    fn follow_ack(&mut self) {
        let to = self.fin.map_or(self.acked, |fin| fin.min(self.acked));
        if self.stats.skipped_bytes == 0 || to <= self.next {
            return;
        }
        self.next = to;
        self.recent.clear();
        while let Some(entry) = self.pending.first_entry()
            && *entry.key() < to
        {
            self.pending_bytes -= entry.remove().len();
        }
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
            // A skipping stream followed the acknowledgment of this FIN first.
            None if self.stats.skipped_bytes > 0 && at + 1 == self.next as i64 => {
                self.next = at as u64;
                self.fin = Some(at as u64);
            }
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
            self.follow_ack();
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
        }
    }

    /// Gives back the retained buffer's spare capacity. The table calls this
    /// for idle flows only ([`super::FlowTable`]): a flow whose receiver
    /// acknowledges everything empties its buffer many times a second, and
    /// shrinking it each time made the next segment grow it again, a
    /// reallocation and copy of up to a window's bytes (8 % of the reader's
    /// time in the journal benchmark).
    pub fn shrink(&mut self) {
        self.recent.shrink_to_fit();
    }

    /// Bytes the retained buffer has room for (tests of [`shrink`](Self::shrink)).
    #[cfg(test)]
    pub(crate) fn retained_capacity(&self) -> usize {
        self.recent.capacity()
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
mod tests;
