//! Tests of the holder's decisions (pure: no queue, no kernel) and of
//! reading a queued packet's headers.

use std::time::{Duration, Instant};

use connmirror_common::frame::TcpFrame;

use super::*;
use crate::{flow::key_of, sys::nfqueue::Queued};

fn key(client_port: u16) -> FlowKey {
    let client = format!("198.18.0.1:{client_port}").parse().unwrap();
    key_of("198.18.1.2:7000".parse().unwrap(), client)
}

fn data(id: u32, key: FlowKey, end: u32, ack: u32) -> Segment {
    Segment {
        id,
        key,
        end,
        ack: Some(ack),
        carries: true,
    }
}

fn pure_ack(id: u32, key: FlowKey, end: u32, ack: u32) -> Segment {
    Segment {
        carries: false,
        ..data(id, key, end, ack)
    }
}

const T: Duration = Duration::from_millis(500);

/// Standby `standby` now holds flow `key` up to `seq` and `ack`: what the
/// holder releases then.
fn cover(holder: &mut Holder, standby: usize, key: FlowKey, seq: u32, ack: u32) -> Option<u32> {
    holder.set_limit(standby, key, SyncLimit { seq, ack });
    holder.release(Instant::now())
}

/// A holder for `n` standbys, every one connected (its checkpoint ending
/// at 0).
fn connected(n: usize) -> Holder {
    let mut holder = Holder::new(T, n);
    for standby in 0..n {
        holder.restarted(standby, 0);
    }
    holder
}

#[test]
fn sync_limits_compare_in_sequence_space_across_the_wrap() {
    let limit = SyncLimit {
        seq: 10,
        ack: 0xffff_fff0,
    };
    assert!(limit.covers(10, Some(0xffff_fff0)));
    assert!(limit.covers(0xffff_ff00, Some(0xffff_ff00)));
    assert!(!limit.covers(11, None));
    assert!(!limit.covers(10, Some(0xffff_fff1)));
    assert!(
        !limit.covers(10, Some(5)),
        "5 lies past the wrap, after the limit"
    );
    assert!(
        limit.covers(10, None),
        "a segment without ACK is not held for it"
    );
}

#[test]
fn segments_go_in_queue_order_once_covered_and_one_flow_waits_for_another() {
    let (a, b) = (key(1), key(2));
    let mut holder = connected(1);
    let now = Instant::now();
    for segment in [data(1, a, 100, 5), data(2, b, 200, 5), data(3, a, 150, 5)] {
        assert_eq!(holder.arrive(segment, Some(1000), now), Arrival::Held);
    }
    assert_eq!(holder.release(now), None, "no limit yet");

    holder.set_limit(0, a, SyncLimit { seq: 150, ack: 5 });
    assert_eq!(
        holder.release(now),
        Some(1),
        "3 is covered but waits behind 2"
    );
    assert_eq!(holder.len(), 2);

    holder.set_limit(0, b, SyncLimit { seq: 199, ack: 5 });
    assert_eq!(
        holder.release(now),
        None,
        "2 ends at 200, the standby holds 199"
    );
    holder.set_limit(0, b, SyncLimit { seq: 200, ack: 4 });
    assert_eq!(
        holder.release(now),
        None,
        "2 acknowledges 5, the standby holds 4"
    );
    holder.set_limit(0, b, SyncLimit { seq: 200, ack: 5 });
    let later = now + Duration::from_millis(3);
    assert_eq!(holder.release(later), Some(3));
    assert!(holder.is_empty());
    assert_eq!(holder.stats().released, 3);
    let held_for = holder.held_for();
    assert_eq!(held_for.count, 3);
    assert!((held_for.sum - 0.006).abs() < 1e-9, "{}", held_for.sum);
    let counts: Vec<u64> = held_for.buckets.iter().map(|&(_, n)| n).collect();
    assert_eq!(counts, [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn a_segment_whose_bytes_the_journal_lacks_is_dropped_not_held() {
    let mut holder = Holder::new(T, 1);
    let now = Instant::now();
    assert_eq!(
        holder.arrive(data(1, key(1), 101, 0), Some(100), now),
        Arrival::Drop
    );
    assert_eq!(
        holder.arrive(data(2, key(1), 100, 0), None, now),
        Arrival::Drop
    );
    assert_eq!(
        holder.arrive(data(3, key(1), 100, 0), Some(100), now),
        Arrival::Held
    );
    assert_eq!(
        holder.arrive(pure_ack(4, key(1), 120, 0), Some(100), now),
        Arrival::Held,
        "a pure ACK carries no bytes of its own"
    );
    assert_eq!(holder.stats().dropped, 2);
}

#[test]
fn a_closed_flows_last_ack_goes_but_its_data_would_wait() {
    let mut holder = Holder::new(T, 1);
    let now = Instant::now();
    holder.arrive(pure_ack(1, key(1), 10, 3), Some(10), now);
    assert_eq!(holder.release(now), Some(1));
    holder.arrive(data(2, key(1), 10, 3), Some(10), now);
    assert_eq!(holder.release(now), None);
}

#[test]
fn holding_falls_back_after_the_timeout_and_resumes_once_the_standby_caught_up() {
    let mut holder = connected(1);
    let start = Instant::now();
    holder.arrive(data(1, key(1), 10, 0), Some(10), start);
    holder.arrive(data(2, key(1), 20, 0), Some(20), start + T / 2);

    assert_eq!(
        holder.expire(start + T - Duration::from_millis(1), &[7]),
        None
    );
    assert_eq!(
        holder.expire(start + T, &[700]),
        Some(2),
        "everything held goes"
    );
    assert!(!holder.is_holding());
    assert_eq!(
        holder.arrive(data(3, key(1), 30, 0), Some(30), start + T),
        Arrival::Pass
    );

    assert!(!holder.disconnected(0), "no standby connected");
    holder.restarted(0, 900);
    assert!(!holder.acknowledged(0, 899));
    assert!(holder.acknowledged(0, 900));
    assert!(holder.is_holding());
    assert_eq!(
        holder.arrive(data(4, key(1), 40, 0), Some(40), start + T),
        Arrival::Held
    );
    let stats = holder.stats();
    assert_eq!(
        (stats.fallbacks, stats.resumptions, stats.passed),
        (1, 1, 1)
    );
}

#[test]
fn with_two_standbys_a_segment_goes_only_once_both_cover_it() {
    let a = key(1);
    let mut holder = connected(2);
    let now = Instant::now();
    holder.arrive(data(1, a, 100, 5), Some(100), now);
    holder.arrive(data(2, a, 200, 5), Some(200), now);

    assert_eq!(
        cover(&mut holder, 0, a, 200, 5),
        None,
        "standby 1 holds nothing yet"
    );
    assert_eq!(
        cover(&mut holder, 1, a, 100, 5),
        Some(1),
        "both cover 1, only 0 covers 2"
    );
    assert_eq!(
        cover(&mut holder, 1, a, 200, 4),
        None,
        "2 acknowledges 5, standby 1 holds 4"
    );
    assert_eq!(cover(&mut holder, 1, a, 200, 5), Some(2));
    assert!(holder.is_empty());
}

#[test]
fn a_disconnected_standby_stops_counting_and_a_reconnected_one_waits_for_its_checkpoint() {
    let a = key(1);
    let mut holder = connected(2);
    let now = Instant::now();
    holder.arrive(data(1, a, 100, 5), Some(100), now);
    assert_eq!(cover(&mut holder, 0, a, 100, 5), None, "standby 1 lacks it");

    assert!(!holder.disconnected(1), "not fallen back");
    assert_eq!(holder.release(now), Some(1), "only standby 0 counts now");
    holder.set_limit(1, a, SyncLimit { seq: 500, ack: 5 });
    holder.arrive(data(2, a, 150, 5), Some(150), now);
    assert_eq!(
        holder.release(now),
        None,
        "a disconnected standby's limits are ignored"
    );
    assert_eq!(cover(&mut holder, 0, a, 150, 5), Some(2));

    holder.restarted(1, 40);
    holder.arrive(data(3, a, 160, 5), Some(160), now);
    assert_eq!(
        cover(&mut holder, 0, a, 160, 5),
        None,
        "standby 1 is back and holds nothing yet"
    );
    assert_eq!(cover(&mut holder, 1, a, 160, 5), Some(3));

    assert!(!holder.disconnected(0));
    assert!(!holder.disconnected(1));
    holder.arrive(data(4, a, 170, 5), Some(170), now);
    holder.arrive(pure_ack(5, key(2), 10, 3), Some(10), now);
    assert_eq!(holder.release(now), None, "with none connected, data waits");
}

#[test]
fn after_a_fallback_holding_resumes_only_once_every_connected_standby_caught_up() {
    let mut holder = connected(2);
    let start = Instant::now();
    holder.arrive(data(1, key(1), 10, 0), Some(10), start);
    assert_eq!(holder.expire(start + T, &[700, 300]), Some(1));
    assert!(!holder.is_holding());

    assert!(!holder.acknowledged(0, 700), "standby 1 is still behind");
    assert!(!holder.acknowledged(1, 299));
    assert!(holder.acknowledged(1, 300));
    assert!(holder.is_holding());

    assert_eq!(
        holder.expire(start + 3 * T, &[10, 20]),
        None,
        "nothing held"
    );
    holder.arrive(data(2, key(1), 20, 0), Some(20), start + 3 * T);
    assert_eq!(holder.expire(start + 4 * T, &[800, 400]), Some(2));
    assert!(!holder.acknowledged(1, 400), "standby 0 is still behind");
    assert!(holder.disconnected(0), "the one left caught up");
    assert_eq!(holder.expire(start + 5 * T, &[0, 0]), None);

    holder.arrive(data(3, key(1), 30, 0), Some(30), start + 5 * T);
    assert_eq!(holder.expire(start + 6 * T, &[900, 500]), Some(3));
    assert!(
        !holder.disconnected(1),
        "with none connected it stays fallen back"
    );
    holder.restarted(0, 50);
    assert!(!holder.acknowledged(0, 49));
    assert!(holder.acknowledged(0, 50), "its checkpoint is acknowledged");
    assert_eq!(holder.stats().resumptions, 3);
}

#[test]
fn a_queued_packet_reads_as_its_flow_end_and_ack() {
    for (server, client) in [
        ("198.18.1.2:7000", "198.18.0.1:40000"),
        ("[fd00::1:2]:7000", "[fd00::1]:40000"),
    ] {
        let mut frame = TcpFrame::new(server.parse().unwrap(), client.parse().unwrap());
        frame.seq = 0xffff_fff0;
        frame.ack = 77;
        frame.payload = vec![7; 1000];
        let ip = frame.build()[14..].to_vec();
        let queued = Queued {
            id: 9,
            protocol: 0,
            len: ip.len() as u32,
            data: ip[..COPY_RANGE as usize].to_vec(),
        };

        let segment = segment_of(&queued).expect("a TCP segment");

        let expected = key_of(server.parse().unwrap(), client.parse().unwrap());
        assert_eq!(
            segment,
            data(9, expected, 0xffff_fff0u32.wrapping_add(1000), 77)
        );
    }
}
