//! Unit tests of `replication/channel.rs`.

use super::*;
use crate::flow::stream::StreamMarks;

fn side(origin: u32, next: u64, fin: Option<u64>) -> SideSnapshot {
    SideSnapshot {
        marks: StreamMarks {
            origin: Some(origin),
            next,
            fin,
            ..StreamMarks::default()
        },
        ..SideSnapshot::default()
    }
}

/// The IPv4 flow from client port 1 to `server_addr`:7000.
fn flow_key(server_addr: [u8; 16]) -> FlowKey {
    FlowKey {
        server_addr,
        client_addr: [0; 16],
        server_port: 7000,
        client_port: 1,
        family: 4,
        _pad: [0; 3],
    }
}

#[test]
fn sync_limits_end_where_the_journaled_bytes_end_and_count_the_clients_fin() {
    let limit = sync_limit(
        &side(0xffff_fff0, 0x20, Some(0x20)).marks,
        &side(100, 5, None).marks,
    );
    assert_eq!(
        limit,
        Some(SyncLimit {
            seq: 105,
            ack: 0x11
        })
    );
    let open = sync_limit(&side(7, 3, Some(9)).marks, &side(100, 5, Some(5)).marks);
    assert_eq!(
        open,
        Some(SyncLimit { seq: 105, ack: 10 }),
        "a server FIN is not data"
    );
    assert_eq!(
        sync_limit(&StreamMarks::default(), &side(1, 1, None).marks),
        None
    );
}

#[test]
fn batches_and_acks_round_trip() {
    let mut records = Vec::new();
    encode_record(&Record::CheckpointEnd, &mut records);
    let batch = Batch {
        end: 77,
        lag: ReplicationLag {
            bytes: 5,
            seconds: 0.25,
        },
        records: &records,
    };
    let body = batch.encode();
    let decoded = Batch::decode(&body).unwrap();
    assert_eq!(decoded, batch);
    assert_eq!(
        decoded.decode_records().unwrap(),
        vec![Record::CheckpointEnd]
    );
    assert_eq!(decode_ack(&encode_ack(1 << 40)), Ok(1 << 40));
    assert_eq!(
        decode_ack(&[ACK, 1]),
        Err("an acknowledgment of the wrong size".to_owned())
    );
}

#[test]
fn acknowledgments_release_limit_changes_in_order_and_shrink_the_lag() {
    let mut outbox = Outbox::new(true);
    let key = flow_key([0; 16]);
    let (tx, _rx) = mpsc::unbounded_channel();
    outbox.connected(tx, &[], 0, BTreeSet::new());
    let update = |dir, snapshot| Record::Update {
        id: 1,
        dir,
        kernel_gaps: 0,
        snapshot,
    };
    outbox.ship(
        &[
            Record::Open {
                id: 1,
                key,
                service_id: 0,
            },
            update(Direction::ClientToServer, side(10, 4, None)),
            update(Direction::ServerToClient, side(20, 2, None)),
        ],
        0,
    );
    let first = outbox.position;
    outbox.ship(
        &[Record::Close {
            id: 1,
            reason: crate::flow::record::CloseReason::Closed,
        }],
        100,
    );
    assert_eq!(outbox.lag(100).bytes, outbox.position + 100);
    assert_eq!(outbox.acked(first - 1), vec![]);
    assert_eq!(
        outbox.acked(first),
        vec![LimitChange::Set(key, SyncLimit { seq: 22, ack: 14 })]
    );
    assert_eq!(
        outbox.acked(outbox.position),
        vec![LimitChange::Remove(key)]
    );
    assert_eq!(outbox.lag(0).bytes, 0);
    assert_eq!(outbox.lag(0).seconds, 0.0);
}

#[test]
fn exposure_counts_sent_and_acknowledged_bytes_the_standby_has_not_acknowledged() {
    let mut outbox = Outbox::new(false);
    let key = crate::flow::key_of(
        "198.18.1.2:7000".parse().unwrap(),
        "198.18.0.1:40000".parse().unwrap(),
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    outbox.connected(tx, &[], 0, BTreeSet::new());
    let update = |dir, next, acked| Record::Update {
        id: 1,
        dir,
        kernel_gaps: 0,
        snapshot: SideSnapshot {
            marks: StreamMarks {
                origin: Some(1),
                next,
                acked,
                ..StreamMarks::default()
            },
            ..SideSnapshot::default()
        },
    };
    let open = Record::Open {
        id: 1,
        key,
        service_id: 0,
    };
    let (c2s, s2c) = (Direction::ClientToServer, Direction::ServerToClient);
    outbox.ship(&[open, update(c2s, 10, 6), update(s2c, 8, 0)], 0);
    let service = "198.18.1.2:7000".parse().unwrap();
    assert_eq!(outbox.exposure(), [(service, 8 + 6)].into());

    assert_eq!(
        outbox.acked(outbox.position),
        vec![],
        "no limits without --sync"
    );
    assert_eq!(outbox.exposure(), [(service, 0)].into());

    outbox.ship(&[update(c2s, 20, 15), update(s2c, 9, 0)], 0);
    assert_eq!(
        outbox.exposure(),
        [(service, (9 - 8) + (15 - 10))].into(),
        "client bytes not yet acknowledged by the primary are not lost"
    );
}

#[test]
fn a_large_drain_ships_as_batches_of_about_the_target_size() {
    let mut outbox = Outbox::new(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    outbox.connected(tx, &[], 0, BTreeSet::new());
    let data = |offset| Record::Data {
        id: 1,
        dir: Direction::ClientToServer,
        offset,
        bytes: bytes::Bytes::from(vec![7; 100 << 10]),
    };
    let records: Vec<Record> = (0..6).map(|i| data(i * (100 << 10))).collect();

    outbox.ship(&records, 0);

    let mut ends = Vec::new();
    while let Ok(body) = rx.try_recv() {
        let batch = Batch::decode(&body).unwrap();
        ends.push((batch.end, batch.decode_records().unwrap().len()));
    }
    let record = outbox.position / 6;
    assert_eq!(
        ends,
        vec![(3 * record, 3), (6 * record, 3)],
        "three 100 KiB records reach the 256 KiB target"
    );
    assert_eq!(outbox.acked(3 * record), vec![]);
    assert_eq!(outbox.lag(0).bytes, 3 * record);
}

async fn pair(
    agent_key: &[u8],
    standby_key: &[u8],
) -> (Result<Channel, ChannelError>, Result<Channel, ChannelError>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let standby_key = Key::from_bytes(standby_key);
    let accept = async {
        let (stream, _) = listener.accept().await.unwrap();
        Channel::accept(stream, &standby_key).await
    };
    let agent_key = Key::from_bytes(agent_key);
    tokio::join!(Channel::connect(addr, &agent_key), accept)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn messages_of_any_size_cross_the_channel_in_order() {
    runtime().block_on(async {
        let (agent, standby) = pair(b"0123456789abcdef0123", b"0123456789abcdef0123").await;
        let (mut agent, mut standby) = (agent.unwrap(), standby.unwrap());
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        agent.writer.send(b"first").await.unwrap();
        agent.writer.send(&big).await.unwrap();
        agent.writer.send(&[]).await.unwrap();
        assert_eq!(standby.reader.next().await.unwrap().unwrap(), b"first");
        assert_eq!(standby.reader.next().await.unwrap().unwrap(), big);
        assert_eq!(standby.reader.next().await.unwrap().unwrap(), b"");
        standby.writer.send(&encode_ack(7)).await.unwrap();
        let ack = agent.reader.next().await.unwrap().unwrap();
        assert_eq!(decode_ack(&ack), Ok(7));
        drop(agent);
        assert!(
            standby.reader.next().await.unwrap().is_none(),
            "a clean close"
        );
    });
}

#[test]
fn a_wrong_key_fails_the_first_handshake_message_on_both_ends() {
    runtime().block_on(async {
        let (agent, standby) = pair(b"0123456789abcdef0123", b"another key of 20 b.").await;
        let standby = standby.err().expect("the standby refuses").to_string();
        assert!(
            standby.starts_with("replication handshake with 127.0.0.1:"),
            "{standby}"
        );
        assert!(
            standby.ends_with(
                " refused: its first handshake message failed authentication under the \
             shared key (the two hosts' --key files differ?)"
            ),
            "{standby}"
        );
        let agent = agent.err().expect("the agent fails").to_string();
        assert!(
            agent.ends_with(
                " refused: the standby closed the connection (the two hosts' --key files \
             differ?)"
            ),
            "{agent}"
        );
    });
}

/// A state that holds more than one body's worth of bytes.
fn large_state() -> Recovered {
    let mut state = Recovered::new();
    let key = flow_key([0; 16]);
    state.apply(Record::Open {
        id: 4,
        key,
        service_id: 0,
    });
    let bytes: Vec<u8> = (0..3 * STATE_TARGET as u32).map(|i| i as u8).collect();
    state.apply(Record::Data {
        id: 4,
        dir: Direction::ServerToClient,
        offset: 9,
        bytes: bytes.into(),
    });
    state
}

#[test]
fn a_restarted_agent_fetches_the_standbys_flows_in_several_bodies() {
    let state = large_state();
    let bodies = encode_state(&state);
    assert_eq!(bodies.len(), 4, "three 1 MiB data records, then the end");
    let fetched = fetch_from(bodies);
    assert_eq!(fetched.unwrap(), state);
}

/// [`fetch_state`] from a standby that answers its request with `bodies`
/// (after the services it needs whole: none), then closes.
fn fetch_from(bodies: Vec<Vec<u8>>) -> Result<Recovered, ChannelError> {
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = Key::from_bytes(b"0123456789abcdef0123");
        let standby = async {
            let (stream, _) = listener.accept().await.unwrap();
            let mut channel = Channel::accept(stream, &key).await.unwrap();
            let needs = encode_needs(&BTreeSet::new());
            channel.writer.send(&needs).await.unwrap();
            let asked = channel.reader.next().await.unwrap().unwrap();
            assert!(is_resume(&asked));
            for body in &bodies {
                channel.writer.send(body).await.unwrap();
            }
        };
        tokio::join!(fetch_state(addr, &key), standby).0
    })
}

#[test]
fn a_state_cut_short_or_of_another_kind_is_refused_by_name() {
    let mut state = Recovered::new();
    assert_eq!(
        apply_state(&encode_ack(1), &mut state),
        Err("not the standby's state".to_owned())
    );
    let mut body = encode_state(&large_state()).remove(0);
    body.truncate(body.len() - 1);
    assert_eq!(
        apply_state(&body, &mut state),
        Err("a record cut short".to_owned())
    );
    let first = encode_state(&large_state()).remove(0);
    let err = fetch_from(vec![first]).unwrap_err().to_string();
    assert!(
        err.starts_with("replication channel with 127.0.0.1:")
            && err.ends_with(": the standby closed the channel before its state was complete"),
        "{err}"
    );
}

#[test]
fn the_services_the_standby_needs_whole_round_trip_and_bad_ones_are_named() {
    let services: BTreeSet<SocketAddr> = ["198.18.1.2:7000", "[fd00::2]:7001"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(decode_needs(&encode_needs(&services)), Ok(services));
    assert_eq!(
        decode_needs(&encode_needs(&BTreeSet::new())),
        Ok(BTreeSet::new())
    );
    let mut cut = encode_needs(&["198.18.1.2:7000".parse().unwrap()].into());
    cut.pop();
    assert_eq!(
        decode_needs(&cut),
        Err("a services message cut short".to_owned())
    );
    assert_eq!(
        decode_needs(&encode_ack(3)),
        Err(
            "the standby did not say which services it needs whole (a connmirror from \
             before that message?)"
                .to_owned()
        )
    );
}

/// The records of every batch `rx` received, in order.
fn shipped(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<Record> {
    let mut records = Vec::new();
    while let Ok(body) = rx.try_recv() {
        records.extend(Batch::decode(&body).unwrap().decode_records().unwrap());
    }
    records
}

#[test]
fn bytes_acknowledged_within_a_drain_are_left_out_unless_the_standby_needs_them_whole() {
    let key = flow_key([198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let data = |dir, offset: u64, len: usize| Record::Data {
        id: 1,
        dir,
        offset,
        bytes: vec![7u8; len].into(),
    };
    let mut acked = side(10, 100, None);
    acked.marks.acked = 60;
    let drain = [
        Record::Open {
            id: 1,
            key,
            service_id: 0,
        },
        data(Direction::ClientToServer, 0, 50),
        data(Direction::ClientToServer, 50, 50),
        data(Direction::ServerToClient, 0, 30),
        Record::Update {
            id: 1,
            dir: Direction::ClientToServer,
            kernel_gaps: 0,
            snapshot: acked,
        },
    ];
    let mut outbox = Outbox::new(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    outbox.connected(tx, &[], 0, BTreeSet::new());
    outbox.ship(&drain, 0);
    let left: Vec<Record> = shipped(&mut rx);
    assert_eq!(
        left,
        vec![
            drain[0].clone(),
            data(Direction::ClientToServer, 60, 40),
            drain[3].clone(),
            drain[4].clone(),
        ]
    );
    assert_eq!(outbox.elided, 60);

    let whole = ["198.18.1.2:7000".parse().unwrap()].into();
    let (tx, mut rx) = mpsc::unbounded_channel();
    outbox.connected(tx, &[], 0, whole);
    outbox.ship(&drain[1..], 0);
    assert_eq!(shipped(&mut rx), drain[1..].to_vec());
}

/// A new owner's first standby gets the checkpoint of the takeover and
/// every record since, not a checkpoint taken when it connects (bytes
/// acknowledged meanwhile would be missing from that); one that does not
/// connect within `MAX_BACKLOG` bytes gets the later checkpoint.
#[test]
fn the_first_standby_gets_the_kept_checkpoint_and_every_record_since() {
    let data = |offset, len| Record::Data {
        id: 1,
        dir: Direction::ClientToServer,
        offset,
        bytes: bytes::Bytes::from(vec![7; len]),
    };
    let received = |rx: &mut mpsc::UnboundedReceiver<Vec<u8>>| {
        let mut records = Vec::new();
        while let Ok(body) = rx.try_recv() {
            records.extend(Batch::decode(&body).unwrap().decode_records().unwrap());
        }
        records
    };
    let kept = vec![
        Record::CheckpointBegin { next_id: 2 },
        Record::CheckpointEnd,
    ];
    let later = [
        Record::CheckpointBegin { next_id: 9 },
        Record::CheckpointEnd,
    ];

    let mut outbox = Outbox::new(false);
    outbox.keep_from(kept.clone());
    outbox.ship(&[data(0, 10)], 0);
    outbox.ship(&[data(10, 5)], 0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert_eq!(outbox.connected(tx, &later, 0, BTreeSet::new()), 4);
    let mut expected = kept.clone();
    expected.extend([data(0, 10), data(10, 5)]);
    assert_eq!(received(&mut rx), expected);

    // A reconnect gets a checkpoint of then.
    outbox.disconnected();
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert_eq!(outbox.connected(tx, &later, 0, BTreeSet::new()), 2);
    assert_eq!(received(&mut rx), later);

    let mut outbox = Outbox::new(false);
    outbox.keep_from(kept);
    outbox.ship(&[data(0, outbox::MAX_BACKLOG as usize)], 0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert_eq!(outbox.connected(tx, &later, 0, BTreeSet::new()), 2);
    assert_eq!(received(&mut rx), later);
}

/// A sender's hello round-trips; a cut-short one, a role that is no short
/// name and a zero interval are refused by name; other messages are not
/// hellos.
#[test]
fn hellos_round_trip_and_bad_ones_are_named() {
    let hello = Hello {
        role: "mirror".into(),
        interval_ms: 50,
        missed: 4,
    };
    let body = hello.encode();
    assert_eq!(Hello::decode(&body), Ok(Some(hello.clone())));
    assert_eq!(hello.silence(), std::time::Duration::from_millis(200));
    assert_eq!(Hello::decode(&encode_ack(7)), Ok(None));
    assert_eq!(
        Hello::decode(&body[..6]),
        Err("a hello cut short".to_owned())
    );
    assert_eq!(
        Hello::decode(&body[..9]),
        Err("a hello whose role is not a short name".to_owned())
    );
    let zero = Hello {
        interval_ms: 0,
        ..hello
    };
    assert_eq!(
        Hello::decode(&zero.encode()),
        Err("a hello with a health interval of 0 ms".to_owned())
    );
}
