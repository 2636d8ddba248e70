//! Unit tests of `flow/stream.rs`.

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
fn a_skipping_stream_follows_the_acknowledgment_and_holds_nothing() {
    let mut s = stream();
    let mut out = Vec::new();
    s.syn(0);
    feed(&mut s, 1, b"ab", &mut out);
    s.skip(7, 3); // past a hole at 3..6: nothing of this direction is needed
    assert_eq!(
        s.next_offset(),
        2,
        "not past what the receiver acknowledged"
    );
    s.ack(10);
    s.skip(3, 4); // the hole's bytes, late
    assert_eq!(s.next_offset(), 9);
    assert_eq!(retained(&s), (9, Vec::new()));
    assert_eq!((s.missing(), s.holes()), (vec![], vec![]));
    s.ack(13); // acknowledges the FIN at 12, seen after its acknowledgment
    s.skip(10, 2);
    assert_eq!(s.next_offset(), 12);
    s.fin(12);
    assert!(s.is_complete());
    assert_eq!(
        s.stats(),
        StreamStats {
            delivered: 2,
            skipped_bytes: 9,
            ..StreamStats::default()
        }
    );
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
