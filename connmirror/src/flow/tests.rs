//! Unit tests of `flow/mod.rs`.

use connmirror_common::{
    map::FAMILY_V4,
    record::tcp_flags::{ACK, FIN, RST, SYN},
};

use super::*;

fn header(direction: Direction, seq: u32, flags: u8, payload: &[u8]) -> RecordHeader {
    header_from(40000, direction, seq, flags, payload)
}

/// A segment of the flow between 198.18.0.2:`port` and 198.18.1.2:7000.
pub(in crate::flow) fn header_from(
    port: u16,
    direction: Direction,
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> RecordHeader {
    let mut h = RecordHeader::zeroed();
    let (server, client) = ([198, 18, 1, 2], [198, 18, 0, 2]);
    let ((src, sport), (dst, dport)) = match direction {
        Direction::ClientToServer => ((client, port), (server, 7000)),
        Direction::ServerToClient => ((server, 7000), (client, port)),
    };
    h.src_addr[..4].copy_from_slice(&src);
    h.dst_addr[..4].copy_from_slice(&dst);
    (h.src_port, h.dst_port) = (sport, dport);
    h.family = FAMILY_V4;
    h.direction = direction as u8;
    h.seq = seq;
    h.tcp_flags = flags;
    h.payload_len = payload.len() as u32;
    h.chunk_len = payload.len() as u32;
    h
}

fn feed(table: &mut FlowTable, direction: Direction, seq: u32, flags: u8, payload: &[u8]) {
    table
        .record(&header(direction, seq, flags, payload), payload)
        .unwrap();
}

/// A segment with an acknowledgment number.
fn feed_ack(table: &mut FlowTable, direction: Direction, seq: u32, ack: u32, payload: &[u8]) {
    let mut h = header(direction, seq, ACK, payload);
    h.ack = ack;
    table.record(&h, payload).unwrap();
}

#[test]
fn a_rebased_flow_goes_on_without_a_hole_and_journals_where_it_stands() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    handshake_then(&mut table, b"hello");
    feed_ack(&mut table, Direction::ServerToClient, 101, 3, b"hello");
    let mut all = table.take_records();
    // Served uncaptured elsewhere: 3 GiB each way went by, and 4 server
    // bytes wait for the client's acknowledgment.
    let moved = 3u64 << 30;
    let recv_seq = 3u32.wrapping_add(moved as u32);
    let send_seq = 106u32.wrapping_add(moved as u32);
    let plan = RestorePlan {
        server: "198.18.1.2:7000".parse().unwrap(),
        client: "198.18.0.2:40000".parse().unwrap(),
        send_seq,
        recv_seq,
        send_queue: b"tail".to_vec(),
        options: crate::repair::restore::RestoreOptions {
            mss: 1460,
            window_scale: None,
            sack: true,
            timestamps: true,
        },
        window: crate::repair::restore::RestoreWindow::default(),
        timestamp: Some(777),
        queue: crate::repair::restore::QueueMode::Unsent,
    };

    assert!(table.rebase(&plan, moved, moved));
    let journaled = table.take_records();
    feed_ack(
        &mut table,
        Direction::ClientToServer,
        recv_seq,
        send_seq,
        b"abc",
    );
    feed_ack(
        &mut table,
        Direction::ServerToClient,
        send_seq.wrapping_add(4),
        recv_seq,
        b"de",
    );
    let flow = table.takeover(0).pop().unwrap();
    all.extend(journaled.iter().cloned());
    all.extend(table.take_records());
    let mut records = Recovered::new();
    all.into_iter().for_each(|r| records.apply(r));
    let mut recovered = FlowTable::new(StreamLimits::default(), None);
    recovered.restore(records);
    let again = recovered.takeover(0).pop().unwrap();

    assert_eq!(flow.readiness, Readiness::Ready);
    assert_eq!(
        (
            again.readiness,
            again.c2s.marks,
            again.s2c.marks,
            &again.s2c.bytes
        ),
        (
            Readiness::Ready,
            flow.c2s.marks,
            flow.s2c.marks,
            &flow.s2c.bytes
        ),
        "the journal recovers the rebased flow"
    );
    assert_eq!(
        (flow.c2s.marks.next, flow.c2s.marks.acked),
        (5 + moved + 3, 5 + moved)
    );
    assert_eq!(
        (flow.s2c.marks.next, flow.s2c.marks.acked),
        (5 + moved + 6, 5 + moved)
    );
    assert_eq!(
        (flow.s2c.bytes_start, &flow.s2c.bytes[..]),
        (5 + moved, &b"tailde"[..])
    );
    assert_eq!(flow.s2c.state.tsval, Some(777));
    assert_eq!(flow.s2c.state.next_seq, Some(send_seq.wrapping_add(6)));
    assert_eq!(
        journaled[..2],
        [
            Record::Data {
                id: 1,
                dir: Direction::ClientToServer,
                offset: 5 + moved,
                bytes: Default::default(),
            },
            Record::Data {
                id: 1,
                dir: Direction::ServerToClient,
                offset: 5 + moved,
                bytes: b"tail".to_vec().into(),
            },
        ]
    );
    assert!(
        matches!(journaled[2], Record::Update { .. }),
        "{journaled:?}"
    );
}

#[test]
fn a_flow_the_table_never_saw_is_not_rebased() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    let plan = RestorePlan {
        server: "198.18.1.2:7000".parse().unwrap(),
        client: "198.18.0.2:40001".parse().unwrap(),
        send_seq: 1,
        recv_seq: 1,
        send_queue: Vec::new(),
        options: crate::repair::restore::RestoreOptions {
            mss: 536,
            window_scale: None,
            sack: false,
            timestamps: false,
        },
        window: crate::repair::restore::RestoreWindow::default(),
        timestamp: None,
        queue: crate::repair::restore::QueueMode::Unsent,
    };
    assert!(!table.rebase(&plan, 0, 0));
}

/// Both SYNs (client ISN just below 2^32, so its data wraps), then `c2s`.
fn handshake_then(table: &mut FlowTable, c2s: &[u8]) {
    feed(table, Direction::ClientToServer, u32::MAX - 2, SYN, b"");
    feed(table, Direction::ServerToClient, 100, SYN | ACK, b"");
    feed(table, Direction::ClientToServer, u32::MAX - 1, ACK, c2s);
}

#[test]
fn a_flow_with_both_handshakes_and_fins_is_complete() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    handshake_then(&mut table, b"abcd");
    feed(&mut table, Direction::ServerToClient, 101, ACK | FIN, b"xy");
    feed(&mut table, Direction::ClientToServer, 2, ACK | FIN, b"");

    let report = table.report().unwrap();

    assert_eq!(report.len(), 1);
    let flow = &report[0];
    assert_eq!(flow.status, FlowStatus::Complete);
    assert!(flow.handshake);
    assert_eq!((flow.c2s.delivered, flow.s2c.delivered), (4, 2));
    assert_eq!(flow.server, "198.18.1.2:7000".parse().unwrap());
    assert_eq!(flow.client, "198.18.0.2:40000".parse().unwrap());
}

#[test]
fn out_of_order_bytes_journaled_at_a_clean_stop_fill_in_once_the_hole_arrives() {
    use crate::flow::recovery::recover;
    let limits = StreamLimits {
        retention: Retention::Full { cap: 1 << 20 },
        ..StreamLimits::default()
    };
    let mut table = FlowTable::new(limits, None).journal();
    feed(&mut table, Direction::ClientToServer, 10, SYN, b"");
    feed(&mut table, Direction::ServerToClient, 20, SYN | ACK, b"");
    feed(&mut table, Direction::ClientToServer, 11, ACK, b"abc");
    // "def" is missing; "ghi" arrives early and waits behind the hole.
    feed(&mut table, Direction::ClientToServer, 17, ACK, b"ghi");
    let mut records = table.take_records();
    table
        .out_of_order(|record| {
            records.push(record);
            Ok::<_, ()>(())
        })
        .unwrap();
    assert!(records.contains(&Record::OutOfOrder {
        id: 1,
        dir: Direction::ClientToServer,
        offset: 6,
        bytes: b"ghi".to_vec().into(),
    }));

    let mut restored = FlowTable::new(limits, None).journal();
    restored.restore(recover(crate::flow::recovery::tests::stored(&records)).unwrap());
    // The retransmitted hole is all TCP sends again after the restart.
    feed(&mut restored, Direction::ClientToServer, 14, ACK, b"def");

    let flow = restored.flows.values().next().unwrap();
    let (start, pieces) = flow.c2s.stream.retained();
    let bytes: Vec<u8> = pieces.flat_map(|p| p.iter().copied()).collect();
    assert_eq!((start, bytes), (0, b"abcdefghi".to_vec()));
    assert_eq!(flow.c2s.stream.holes(), vec![]);
}

#[test]
fn a_kernel_gap_makes_the_flow_gapped_even_when_every_seen_byte_is_present() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    feed(&mut table, Direction::ClientToServer, 10, SYN, b"");
    feed(&mut table, Direction::ServerToClient, 20, SYN | ACK, b"");
    feed(&mut table, Direction::ClientToServer, 11, ACK | FIN, b"");
    feed(&mut table, Direction::ServerToClient, 21, ACK | FIN, b"");
    let key = table.flows.keys().next().copied().unwrap();

    table.kernel_gaps(&key, 3);

    let report = table.report().unwrap();
    assert_eq!(report[0].status, FlowStatus::Gapped);
    assert_eq!(report[0].kernel_gaps, 3);
}

#[test]
fn a_reset_flow_missing_only_unacknowledged_bytes_is_reset_not_gapped() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    feed(&mut table, Direction::ClientToServer, 0, SYN, b"");
    feed(&mut table, Direction::ServerToClient, 500, SYN | ACK, b"");
    feed(&mut table, Direction::ClientToServer, 1, ACK, b"abcd");
    // Bytes 5..9 were dropped for backpressure; the server acknowledged up to 5.
    feed(&mut table, Direction::ClientToServer, 9, ACK, b"ijkl");
    let mut rst = header(Direction::ServerToClient, 501, RST | ACK, b"");
    rst.ack = 5;
    table.record(&rst, b"").unwrap();

    let report = table.report().unwrap();

    assert_eq!(report[0].status, FlowStatus::Reset);
    assert_eq!(report[0].c2s.holes, vec![(4, 8)]);
    assert_eq!(report[0].c2s.missing, Vec::<(u64, u64)>::new());
    assert_eq!(report[0].c2s.acked, 4);
}

#[test]
fn the_dump_stops_at_an_abandoned_hole_and_stays_an_exact_prefix() {
    let dir = std::env::temp_dir().join(format!("connmirror-flow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let limits = StreamLimits {
        max_pending: 4,
        keep_delivered: 16,
        ..StreamLimits::default()
    };
    let mut table = FlowTable::new(limits, Some(dir.clone()));
    feed(&mut table, Direction::ClientToServer, 0, SYN, b"");
    feed(&mut table, Direction::ClientToServer, 1, ACK, b"ab");
    // Bytes 2..4 never arrive; 8 bytes after them overflow the pending bound.
    feed(&mut table, Direction::ClientToServer, 5, ACK, b"efghijkl");
    // The server acknowledges them all: the capture lacks bytes it has.
    let mut ack = header(Direction::ServerToClient, 50, ACK, b"");
    ack.ack = 13;
    table.record(&ack, b"").unwrap();

    let report = table.report().unwrap();

    let c2s = &report[0].c2s;
    assert_eq!(report[0].status, FlowStatus::Gapped);
    assert_eq!(c2s.dump_stopped_at, Some(2));
    assert_eq!(c2s.missing, vec![(2, 4)]);
    assert_eq!(std::fs::read(c2s.file.as_ref().unwrap()).unwrap(), b"ab");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client SYN from port `port` (one idle flow per port).
pub(in crate::flow) fn syn_from(table: &mut FlowTable, port: u16) {
    let mut h = header(Direction::ClientToServer, 1000, SYN, b"");
    h.src_port = port;
    table.record(&h, b"").unwrap();
}

#[test]
fn ten_thousand_idle_flows_stay_under_the_memory_cap_with_exact_eviction_counts() {
    let cap = 2000 * FLOW_OVERHEAD;
    let mut table = FlowTable::new(StreamLimits::default(), None)
        .memory_cap(cap)
        .journal();

    for port in 0..10_000u16 {
        syn_from(&mut table, 20_000 + port);
        assert!(
            table.held_bytes() <= cap,
            "held {} > cap {cap}",
            table.held_bytes()
        );
    }

    let evicted_records = table
        .take_records()
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::Close {
                    reason: CloseReason::Evicted,
                    ..
                }
            )
        })
        .count() as u64;
    assert_eq!(table.evicted(), 10_000 - table.len() as u64);
    assert_eq!(evicted_records, table.evicted());
    assert_eq!(table.held_bytes(), table.len() * FLOW_OVERHEAD);
    // The newest flows survive: eviction takes the idle longest first.
    let ports: Vec<u16> = table.flows.keys().map(|k| k.client_port).collect();
    assert_eq!(ports.iter().min(), Some(&(30_000 - table.len() as u16)));
}

#[test]
fn a_restarted_table_continues_its_dump_files_and_cuts_bytes_that_come_again() {
    use crate::flow::recovery::recover;
    let dir = std::env::temp_dir().join(format!("connmirror-dumps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let limits = StreamLimits::default();
    let mut table = FlowTable::new(limits, Some(dir.clone())).journal();
    handshake_then(&mut table, b"before");
    feed(&mut table, Direction::ServerToClient, 101, ACK, b"reply");
    let stored = crate::flow::recovery::tests::stored(&table.take_records());
    table.report().unwrap();
    // Bytes the first table dumped but the journal never got: they come again.
    let c2s_path = table.report().unwrap()[0].c2s.file.clone().unwrap();
    feed(&mut table, Direction::ClientToServer, 4, ACK, b"-lost");
    table.report().unwrap();
    assert_eq!(std::fs::read(&c2s_path).unwrap(), b"before-lost");

    let mut restored = FlowTable::new(limits, Some(dir.clone()));
    restored.restore(recover(stored).unwrap());
    restored.continue_dumps().unwrap();
    feed(&mut restored, Direction::ClientToServer, 4, ACK, b"-after");
    feed(&mut restored, Direction::ServerToClient, 106, ACK, b"!");

    let report = restored.report().unwrap();
    let flow = &report[0];
    assert_eq!((flow.c2s.delivered, flow.s2c.delivered), (12, 6));
    assert_eq!(
        (flow.c2s.dump_stopped_at, flow.s2c.dump_stopped_at),
        (None, None)
    );
    assert_eq!(
        std::fs::read(flow.c2s.file.as_ref().unwrap()).unwrap(),
        b"before-after"
    );
    assert_eq!(
        std::fs::read(flow.s2c.file.as_ref().unwrap()).unwrap(),
        b"reply!"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dump_file_shorter_than_the_recovered_stream_stays_an_exact_prefix() {
    use crate::flow::recovery::recover;
    let dir = std::env::temp_dir().join(format!("connmirror-short-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let limits = StreamLimits::default();
    let mut table = FlowTable::new(limits, Some(dir.clone())).journal();
    handshake_then(&mut table, b"abcdef");
    let stored = crate::flow::recovery::tests::stored(&table.take_records());
    let path = table.report().unwrap()[0].c2s.file.clone().unwrap();
    // A crash lost the buffered tail of the dump; the journal has it.
    std::fs::write(&path, b"abc").unwrap();

    let mut restored = FlowTable::new(limits, Some(dir.clone()));
    restored.restore(recover(stored).unwrap());
    restored.continue_dumps().unwrap();
    feed(&mut restored, Direction::ClientToServer, 4, ACK, b"gh");

    let report = restored.report().unwrap();
    assert_eq!(report[0].c2s.delivered, 8);
    assert_eq!(report[0].c2s.dump_stopped_at, Some(3));
    assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journaled_table_replays_to_the_same_flows() {
    use crate::flow::recovery::recover;
    let limits = StreamLimits {
        retention: Retention::Full { cap: 1 << 20 },
        ..StreamLimits::default()
    };
    let mut table = FlowTable::new(limits, None).journal();
    handshake_then(&mut table, b"wrapping");
    feed(&mut table, Direction::ServerToClient, 101, ACK, b"reply");
    let stored = crate::flow::recovery::tests::stored(&table.take_records());

    let mut restored = FlowTable::new(limits, None);
    restored.restore(recover(stored).unwrap());

    let (a, b) = (&table.report().unwrap()[0], &restored.report().unwrap()[0]);
    assert_eq!((b.id, b.server, b.client), (a.id, a.server, a.client));
    assert_eq!(b.readiness, Readiness::Ready);
    assert_eq!(b.readiness, a.readiness);
    assert_eq!((b.c2s.delivered, b.s2c.delivered), (8, 5));
    assert_eq!((b.c2s.state, b.s2c.state), (a.c2s.state, a.s2c.state));
    let bytes = |t: &FlowTable, dir: Direction| {
        let flow = t.flows.values().next().unwrap();
        let side = if dir == Direction::ClientToServer {
            &flow.c2s
        } else {
            &flow.s2c
        };
        let (start, pieces) = side.stream.retained();
        (
            start,
            pieces.flat_map(|p| p.iter().copied()).collect::<Vec<u8>>(),
        )
    };
    assert_eq!(
        bytes(&restored, Direction::ClientToServer),
        (0, b"wrapping".to_vec())
    );
    assert_eq!(
        bytes(&restored, Direction::ServerToClient),
        (0, b"reply".to_vec())
    );
}

#[test]
fn readiness_follows_handshake_holes_and_close() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    feed(&mut table, Direction::ClientToServer, 10, ACK, b"mid");
    assert_eq!(table.report().unwrap()[0].readiness, Readiness::NoHandshake);

    let mut table = FlowTable::new(StreamLimits::default(), None);
    feed(&mut table, Direction::ClientToServer, 0, SYN, b"");
    feed(&mut table, Direction::ServerToClient, 50, SYN | ACK, b"");
    feed(&mut table, Direction::ServerToClient, 51, ACK, b"ab");
    feed(&mut table, Direction::ServerToClient, 55, ACK, b"ef"); // 53..55 missing
    assert_eq!(
        table.report().unwrap()[0].readiness,
        Readiness::MissingBytes(vec![MissingRange {
            dir: "s2c",
            start: 2,
            end: 4
        }])
    );
    feed(&mut table, Direction::ServerToClient, 53, ACK, b"cd");
    assert_eq!(table.report().unwrap()[0].readiness, Readiness::Ready);
    feed(&mut table, Direction::ClientToServer, 1, ACK | RST, b"");
    assert_eq!(table.report().unwrap()[0].readiness, Readiness::Closed);
}

#[test]
fn each_service_keeps_its_own_retention() {
    let mut table = FlowTable::new(
        StreamLimits {
            keep_delivered: 0,
            ..StreamLimits::default()
        },
        None,
    )
    .service_retention(1, Retention::Full { cap: 1 << 20 });
    for service_id in [0, 1] {
        let mut syn = header(Direction::ClientToServer, 0, SYN, b"");
        syn.service_id = service_id;
        syn.src_port = 40000 + service_id as u16;
        table.record(&syn, b"").unwrap();
        let mut data = header(Direction::ClientToServer, 1, ACK, b"abcd");
        data.service_id = service_id;
        data.src_port = syn.src_port;
        table.record(&data, b"abcd").unwrap();
        let mut ack = header(Direction::ServerToClient, 0, ACK, b"");
        ack.ack = 5;
        ack.dst_port = syn.src_port;
        table.record(&ack, b"").unwrap();
    }

    let retained: Vec<(u32, u64)> = table
        .report()
        .unwrap()
        .iter()
        .map(|f| (f.service_id, f.c2s.retained))
        .collect();
    assert_eq!(retained, vec![(0, 0), (1, 4)]);
}

#[test]
fn data_journaled_after_the_last_state_update_moves_the_sequence_mark_on_recovery() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    handshake_then(&mut table, b"");
    let mut records = table.take_records();
    feed(
        &mut table,
        Direction::ClientToServer,
        u32::MAX - 1,
        ACK,
        b"wrapping",
    );
    // A crash cut the batch after its data, before its state updates.
    records.extend(
        table
            .take_records()
            .into_iter()
            .filter(|r| matches!(r, Record::Data { .. })),
    );

    let mut restored = FlowTable::new(StreamLimits::default(), None);
    restored.restore(
        crate::flow::recovery::recover(crate::flow::recovery::tests::stored(&records)).unwrap(),
    );

    let c2s = &restored.report().unwrap()[0].c2s;
    assert_eq!(c2s.delivered, 8);
    assert_eq!(c2s.state.next_seq, Some((u32::MAX - 1).wrapping_add(8)));
}

#[test]
fn a_crash_between_a_new_flows_first_data_and_its_state_updates_keeps_the_handshake() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    // One read slice holds the handshake and the first bytes both ways.
    handshake_then(&mut table, b"wrapping");
    feed_ack(&mut table, Direction::ServerToClient, 101, 7, b"reply");
    let records = table.take_records();

    let b = recovered_after_the_last_data(&records);

    let a = &table.report().unwrap()[0];
    assert_eq!(b.readiness, Readiness::Ready);
    assert_eq!((b.c2s.delivered, b.s2c.delivered), (8, 5));
    assert_eq!(
        (b.c2s.state.syn, b.s2c.state.syn),
        (a.c2s.state.syn, a.s2c.state.syn)
    );
    assert_eq!(
        (b.c2s.state.next_seq, b.s2c.state.next_seq),
        (a.c2s.state.next_seq, a.s2c.state.next_seq)
    );
}

/// What recovery makes of `records` cut after their last data record, as a
/// crash between a read slice's data and the updates that end it leaves them.
fn recovered_after_the_last_data(records: &[Record]) -> FlowReport {
    let last_data = records
        .iter()
        .rposition(|r| matches!(r, Record::Data { .. }))
        .unwrap();
    let cut = crate::flow::recovery::tests::stored(&records[..=last_data]);
    let mut restored = FlowTable::new(StreamLimits::default(), None);
    restored.restore(crate::flow::recovery::recover(cut).unwrap());
    restored.report().unwrap().remove(0)
}

#[test]
fn a_syn_ack_read_a_slice_after_the_syn_is_journaled_before_the_data_behind_it() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    feed(
        &mut table,
        Direction::ClientToServer,
        u32::MAX - 2,
        SYN,
        b"",
    );
    let mut records = table.take_records();
    feed(&mut table, Direction::ServerToClient, 100, SYN | ACK, b"");
    feed_ack(
        &mut table,
        Direction::ClientToServer,
        u32::MAX - 1,
        101,
        b"abc",
    );
    records.extend(table.take_records());

    let b = recovered_after_the_last_data(&records);

    assert_eq!(b.readiness, Readiness::Ready);
    assert_eq!(b.s2c.state.syn.map(|s| s.isn), Some(100));
    assert_eq!((b.c2s.delivered, b.c2s.state.ack), (3, Some(101)));
}

#[test]
fn a_mid_stream_flows_first_slice_keeps_its_origin_when_cut_before_its_updates() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    feed(&mut table, Direction::ServerToClient, 5000, ACK, b"mid");
    let records = table.take_records();

    let b = recovered_after_the_last_data(&records);

    assert_eq!(b.readiness, Readiness::NoHandshake);
    assert_eq!((b.s2c.delivered, b.s2c.state.next_seq), (3, Some(5003)));
}

/// The divergence of the live replay e2e test: `:1\r\n` from the primary,
/// `:1001\r\n` from the instance.
const DIVERGENCE: Divergence = Divergence {
    offset: 2,
    primary: 0x0d,
    instance: 0x30,
};

#[test]
fn a_divergence_is_journaled_once_behind_the_flows_records_and_recovered() {
    use crate::flow::recovery::{recover, tests::stored};
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    handshake_then(&mut table, b"INCR a\r\n");
    feed(&mut table, Direction::ServerToClient, 101, ACK, b":1\r\n");
    let mut records = table.take_records();
    let key = table.flows.keys().next().copied().unwrap();

    assert!(table.mark_divergent(&key, DIVERGENCE));
    let later = Divergence {
        offset: 9,
        ..DIVERGENCE
    };
    assert!(table.mark_divergent(&key, later));
    let divergent = table.take_records();

    let record = Record::Divergent {
        id: 1,
        divergence: DIVERGENCE,
    };
    assert_eq!(divergent, vec![record]);
    records.extend(divergent);
    let recovered = recover(stored(&records)).unwrap();
    assert_eq!(recovered.flows[&1].divergence, Some(DIVERGENCE));
    assert_eq!(recovered.orphans, 0);
    let mut restored = FlowTable::new(StreamLimits::default(), None);
    restored.restore(recovered);
    assert_eq!(restored.report().unwrap()[0].divergence, Some(DIVERGENCE));
}

#[test]
fn a_checkpoint_carries_the_divergence_past_compaction() {
    use crate::flow::recovery::{recover, tests::stored};
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    handshake_then(&mut table, b"INCR a\r\n");
    syn_from(&mut table, 40001);
    let key = table.flows.keys().next().copied().unwrap();
    table.mark_divergent(&key, DIVERGENCE);
    let mut checkpoint = Vec::new();
    table
        .checkpoint(|record| {
            checkpoint.push(record);
            Ok::<_, ()>(())
        })
        .unwrap();

    let divergent: Vec<&Record> = (checkpoint.iter())
        .filter(|r| matches!(r, Record::Divergent { .. }))
        .collect();
    let id = table.flows[&key].id;
    let record = Record::Divergent {
        id,
        divergence: DIVERGENCE,
    };
    assert_eq!(divergent, vec![&record]);
    let recovered = recover(stored(&checkpoint)).unwrap();
    let divergences: Vec<(u64, Option<Divergence>)> = (recovered.flows.values())
        .map(|f| (f.id, f.divergence))
        .collect();
    assert_eq!(divergences, vec![(1, Some(DIVERGENCE)), (2, None)]);
}

#[test]
fn without_a_journal_the_table_still_reports_the_divergence() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    handshake_then(&mut table, b"x");
    let key = table.flows.keys().next().copied().unwrap();
    let unknown = key_of(
        "198.18.1.2:7000".parse().unwrap(),
        "198.18.0.9:1".parse().unwrap(),
    );

    assert!(!table.mark_divergent(&unknown, DIVERGENCE));
    assert!(table.mark_divergent(&key, DIVERGENCE));

    assert_eq!(table.take_records(), vec![]);
    let report = table.report().unwrap();
    assert_eq!(report[0].divergence, Some(DIVERGENCE));
    let json = serde_json::to_value(&report[0]).unwrap();
    assert_eq!(
        json["divergence"],
        serde_json::json!({"offset": 2, "primary": 13, "instance": 48})
    );
}

#[test]
fn journal_inspect_prints_a_line_per_divergent_flow_under_the_table() {
    let mut table = FlowTable::new(StreamLimits::default(), None);
    handshake_then(&mut table, b"x");
    syn_from(&mut table, 40001);
    let key = table.flows.keys().next().copied().unwrap();
    table.mark_divergent(&key, DIVERGENCE);
    let inspection = inspect::Inspection {
        segments: vec![1],
        truncated_tail: None,
        salvaged: 0,
        flows: table.report().unwrap(),
    };
    let mut out = Vec::new();

    inspect::print_table(&inspection, &mut out).unwrap();

    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].starts_with("   1  198.18.1.2:7000 "), "{text}");
    assert_eq!(
        lines[3],
        "flow 1 divergent: the instance's output differs from the primary's at offset 2 \
         (primary 0x0d, instance 0x30)"
    );
}

/// A client segment whose payload the capture skipped: its length, no chunk.
fn skipped(seq: u32, flags: u8, ack: u32, payload_len: u32) -> RecordHeader {
    let mut h = header(Direction::ClientToServer, seq, flags | ACK, b"");
    h.payload_len = payload_len;
    h.ack = ack;
    h.flags = connmirror_common::record::record_flags::PAYLOAD_SKIPPED;
    h
}

#[test]
fn skipped_client_payload_advances_the_sequence_without_bytes() {
    let mut table = FlowTable::new(StreamLimits::default(), None).journal();
    feed(&mut table, Direction::ClientToServer, 9, SYN, b"");
    feed(&mut table, Direction::ServerToClient, 100, SYN | ACK, b"");
    // 4 then 3 client bytes skipped, the second pair out of order.
    table.record(&skipped(14, 0, 101, 3), b"").unwrap();
    table.record(&skipped(10, 0, 101, 4), b"").unwrap();
    feed_ack(&mut table, Direction::ServerToClient, 101, 17, b"reply");
    table.record(&skipped(17, FIN, 103, 2), b"").unwrap();

    let flow = table.takeover(0).pop().unwrap();
    assert_eq!(flow.readiness, Readiness::Ready);
    // Delivery follows the server's acknowledgment: the restored socket
    // expects the client's bytes from 7 on, which the client sends again.
    assert_eq!((flow.c2s.marks.next, flow.c2s.marks.acked), (7, 7));
    assert!(flow.c2s.bytes.is_empty());
    assert_eq!(
        (flow.s2c.bytes_start, &flow.s2c.bytes[..]),
        (2, &b"ply"[..])
    );
    let records = table.take_records();
    assert!(
        !(records.iter()).any(|r| matches!(r, Record::Data { dir, bytes, .. }
            if *dir == Direction::ClientToServer && !bytes.is_empty())),
        "no client byte journaled: {records:?}"
    );
    feed_ack(&mut table, Direction::ServerToClient, 106, 20, b"");
    let report = table.report().unwrap();
    assert!(
        report[0].c2s.complete,
        "a FIN on a skipped record ends the stream"
    );
}

#[test]
fn an_acknowledged_stream_keeps_its_buffer_while_active_and_gives_it_back_once_idle() {
    let mut table = FlowTable::new(
        StreamLimits {
            keep_delivered: 0,
            ..StreamLimits::default()
        },
        None,
    );
    handshake_then(&mut table, &[1; 100_000]);
    // The server acknowledges all of it: nothing is retained any more.
    feed_ack(&mut table, Direction::ServerToClient, 101, 99_999, b"");
    let capacity = |table: &FlowTable| {
        let flow = table.flows.values().next().expect("one flow");
        flow.c2s.stream.retained_capacity()
    };
    let flow = table.flows.values().next().expect("one flow");
    assert_eq!(flow.c2s.stream.held_bytes(), 0);
    let active = capacity(&table);
    assert!(active >= 100_000, "kept while active: {active}");
    // Another flow's segments advance the clock past one sweep (at
    // IDLE_RECORDS, when the flow is not idle yet) to just before the next...
    let others = 2 * IDLE_RECORDS - table.applied - 1;
    for _ in 0..others {
        syn_from(&mut table, 50_000);
    }
    assert_eq!(capacity(&table), active, "not idle yet");
    // ...and the next record makes the sweep run.
    syn_from(&mut table, 50_000);
    assert_eq!(capacity(&table), 0, "given back once idle");
}
