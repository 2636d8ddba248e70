//! Unit tests of `flow/bounds.rs`: pruning, eviction of flows not ready,
//! and refusal when only ready flows are left.

use std::collections::HashSet;

use connmirror_common::record::tcp_flags::{ACK, FIN, SYN};

use super::super::*;
use crate::flow::tests::syn_from;

/// A segment of the flow from client port `port`.
fn segment(direction: Direction, port: u16, seq: u32, flags: u8) -> RecordHeader {
    crate::flow::tests::header_from(port, direction, seq, flags, b"")
}

/// Both SYNs of the flow from client port `port`: a ready flow.
fn handshake(table: &mut FlowTable, port: u16) {
    table
        .record(&segment(Direction::ClientToServer, port, 1000, SYN), b"")
        .unwrap();
    let mut synack = segment(Direction::ServerToClient, port, 5000, SYN | ACK);
    synack.ack = 1001;
    table.record(&synack, b"").unwrap();
}

/// Both FINs of the flow from client port `port`.
fn close(table: &mut FlowTable, port: u16) {
    table
        .record(
            &segment(Direction::ClientToServer, port, 1001, FIN | ACK),
            b"",
        )
        .unwrap();
    table
        .record(
            &segment(Direction::ServerToClient, port, 5001, FIN | ACK),
            b"",
        )
        .unwrap();
}

fn key(port: u16) -> FlowKey {
    flow_key(
        &segment(Direction::ClientToServer, port, 0, 0),
        Direction::ClientToServer,
    )
}

#[test]
fn a_closed_flow_is_pruned_once_quiet_and_the_kernel_told_to_forget_it() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    handshake(&mut table, 40_000);
    handshake(&mut table, 40_001);
    close(&mut table, 40_000);
    table.take_records();

    // Its last segment came after the previous prune: it stays one round.
    table.prune_closed();
    assert_eq!((table.len(), table.pruned()), (2, 0));
    table.prune_closed();

    assert_eq!((table.len(), table.pruned()), (1, 1));
    assert_eq!(table.held_bytes(), FLOW_OVERHEAD);
    let changes = table.take_kernel_changes();
    assert_eq!(changes.forget, vec![key(40_000)]);
    assert!(changes.refuse.is_empty());
    assert_eq!(table.take_kernel_changes(), KernelChanges::default());
}

/// The `Close` records among `records`, by flow id.
fn closes(records: &[Record]) -> Vec<u64> {
    (records.iter())
        .filter_map(|r| match r {
            Record::Close { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pruned_flow_is_journaled_closed_once() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    handshake(&mut table, 40_000);
    close(&mut table, 40_000);
    assert_eq!(closes(&table.take_records()), [1]);
    table.prune_closed();
    table.prune_closed();

    assert_eq!((table.len(), table.pruned()), (0, 1));
    assert_eq!(closes(&table.take_records()), [] as [u64; 0]);
}

#[test]
fn a_flow_first_seen_at_its_close_is_pruned_but_a_half_closed_ready_one_stays() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    let fin = segment(Direction::ClientToServer, 40_000, 7, FIN | ACK);
    table.record(&fin, b"").unwrap();
    handshake(&mut table, 40_001);
    let fin = segment(Direction::ClientToServer, 40_001, 1001, FIN | ACK);
    table.record(&fin, b"").unwrap();
    table.take_records();
    table.prune_closed();
    table.prune_closed();

    assert_eq!((table.len(), table.pruned()), (1, 1));
    assert!(table.holds(&key(40_001)));
    assert_eq!(closes(&table.take_records()), [1]);
    assert_eq!(table.take_kernel_changes().forget, [key(40_000)]);
}

#[test]
fn at_the_cap_flows_not_ready_are_evicted_and_ready_ones_kept() {
    let cap = 10 * FLOW_OVERHEAD;
    let mut table = FlowTable::new(StreamLimits::default(), None)
        .memory_cap(cap)
        .journal();
    for port in 0..5 {
        handshake(&mut table, 40_000 + port);
    }
    for port in 0..20 {
        syn_from(&mut table, 50_000 + port);
    }

    assert!(table.held_bytes() <= cap);
    let ready = table.readiness_counts()["ready"];
    assert_eq!(ready, 5, "{:?}", table.readiness_counts());
    assert_eq!(table.evicted(), 25 - table.len() as u64);
    assert_eq!(table.refused(), 0);
    let forget = table.take_kernel_changes().forget;
    assert_eq!(forget.len() as u64, table.evicted());
    assert!(forget.iter().all(|k| k.client_port >= 50_000));
}

#[test]
fn at_the_cap_with_only_ready_flows_new_flows_are_refused_once_each() {
    let cap = 10 * FLOW_OVERHEAD;
    let mut table = FlowTable::new(StreamLimits::default(), None)
        .memory_cap(cap)
        .journal();
    for port in 0..11 {
        handshake(&mut table, 40_000 + port);
    }
    // Eleven ready flows: over the cap, nothing to evict.
    assert_eq!((table.len(), table.evicted(), table.refused()), (11, 0, 0));

    for port in 0..3 {
        handshake(&mut table, 50_000 + port);
    }
    // Records of a refused flow that were already in the ring count once.
    syn_from(&mut table, 50_000);

    assert_eq!((table.len(), table.evicted(), table.refused()), (11, 0, 3));
    let changes = table.take_kernel_changes();
    assert_eq!(changes.refuse, vec![key(50_000), key(50_001), key(50_002)]);
    assert!(changes.forget.is_empty());
    let opened = table.take_records().into_iter();
    assert_eq!(
        opened.filter(|r| matches!(r, Record::Open { .. })).count(),
        11
    );

    // Two ready flows close and go: back under 90 % of the cap, new flows
    // are protected again.
    close(&mut table, 40_000);
    close(&mut table, 40_001);
    table.take_records();
    table.prune_closed();
    table.prune_closed();
    handshake(&mut table, 50_003);
    assert_eq!((table.len(), table.refused()), (10, 3));
    assert_eq!(table.readiness_counts()["ready"], 10);
}

#[test]
fn a_client_syn_on_a_closed_flows_ports_opens_a_new_flow() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    handshake(&mut table, 40_000);
    close(&mut table, 40_000);
    handshake(&mut table, 40_000);

    assert_eq!((table.len(), table.pruned()), (1, 1));
    assert_eq!(table.readiness_counts()["ready"], 1);
    let records = table.take_records();
    let ids: Vec<(&str, u64)> = (records.iter())
        .filter_map(|r| match r {
            Record::Open { id, .. } => Some(("open", *id)),
            Record::Close { id, .. } => Some(("close", *id)),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [("open", 1), ("close", 1), ("open", 2)]);
}

#[test]
fn a_flow_first_seen_mid_stream_goes_once_stale_and_one_with_a_gap_stays() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    let ack = segment(Direction::ClientToServer, 40_000, 7, ACK);
    table.record(&ack, b"").unwrap();
    let mut gapped = segment(Direction::ClientToServer, 40_001, 7, ACK);
    gapped.flow_gaps = 1;
    table.record(&gapped, b"").unwrap();
    for _ in 0..bounds::STALE_ROUNDS {
        table.prune_closed();
    }
    assert_eq!(table.len(), 2);

    table.prune_closed();
    assert_eq!((table.len(), table.pruned()), (1, 1));
    assert!(table.holds(&key(40_001)));
}

#[test]
fn a_client_syn_replaces_a_flow_seen_mid_stream_but_not_its_own_retransmission() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    let last_ack = segment(Direction::ClientToServer, 40_000, 7, ACK);
    table.record(&last_ack, b"").unwrap();
    handshake(&mut table, 40_000);
    assert_eq!((table.len(), table.pruned()), (1, 1));
    assert_eq!(table.readiness_counts()["ready"], 1);

    // The same SYN again (a retransmission) keeps the flow.
    table
        .record(&segment(Direction::ClientToServer, 40_000, 1000, SYN), b"")
        .unwrap();
    assert_eq!((table.len(), table.pruned()), (1, 1));
    assert_eq!(table.readiness_counts()["ready"], 1);
}

#[test]
fn a_flow_first_seen_mid_stream_goes_on_aging_across_a_restart_until_it_is_seen() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    for port in [40_000, 40_001] {
        let ack = segment(Direction::ClientToServer, port, 7, ACK);
        table.record(&ack, b"").unwrap();
    }
    for _ in 0..100 {
        table.prune_closed();
    }
    // What a clean stop journals: the pending records, then how long each
    // flow first seen mid-stream has been quiet.
    let mut journal = table.take_records();
    table.quiet(collect(&mut journal)).unwrap();
    assert_eq!(
        quiet(&journal),
        [
            &Record::Quiet { id: 1, rounds: 100 },
            &Record::Quiet { id: 2, rounds: 100 }
        ]
    );
    let mut recovered = Recovered::new();
    journal.into_iter().for_each(|r| recovered.apply(r));

    let mut restarted = FlowTable::new(StreamLimits::default(), None).journal();
    restarted.restore(recovered);
    let ack = segment(Direction::ClientToServer, 40_001, 7, ACK);
    restarted.record(&ack, b"").unwrap();
    let mut checkpoint = Vec::new();
    restarted.checkpoint(collect(&mut checkpoint)).unwrap();
    assert_eq!(quiet(&checkpoint), [&Record::Quiet { id: 1, rounds: 100 }]);
    for _ in 0..20 {
        restarted.prune_closed();
    }
    assert_eq!(restarted.len(), 2);

    // 100 rounds before the restart and 20 after: stale. The flow seen
    // after the restart starts again from 0.
    restarted.prune_closed();
    assert_eq!((restarted.len(), restarted.pruned()), (1, 1));
    assert!(restarted.holds(&key(40_001)));
}

/// An emitter that pushes each record onto `records`.
fn collect(records: &mut Vec<Record>) -> impl FnMut(Record) -> Result<(), ()> + '_ {
    |record| {
        records.push(record);
        Ok(())
    }
}

/// The `Quiet` records among `records`.
fn quiet(records: &[Record]) -> Vec<&Record> {
    (records.iter())
        .filter(|r| matches!(r, Record::Quiet { .. }))
        .collect()
}

#[test]
fn a_failback_forgets_the_served_services_flows_but_the_followed_ones() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    for port in [40_000, 40_001] {
        handshake(&mut table, port);
    }
    let mut other = segment(Direction::ClientToServer, 40_002, 1000, SYN);
    other.service_id = 1;
    table.record(&other, b"").unwrap();
    table.take_records();

    let followed: HashSet<FlowKey> = [key(40_001)].into();
    assert_eq!(table.forget_served(&[0], &followed), 1);

    assert_eq!((table.len(), table.pruned()), (2, 1));
    assert!(table.holds(&key(40_001)));
    assert_eq!(closes(&table.take_records()), [1]);
    assert_eq!(table.take_kernel_changes().forget, [key(40_000)]);
}
