//! Unit tests of live replay against a real instance on loopback: a small
//! deterministic server (it answers each byte with its upper case), fed from
//! records as the flow table writes them.

use std::net::SocketAddr;

use connmirror_common::{Direction, FlowKey};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;
use crate::{
    flow::{
        record::{FlowSnapshot, Record, SideSnapshot},
        stream::StreamMarks,
    },
    service::addr_bytes,
};

/// The protected service's address (never connected to: only a name).
const SERVICE: &str = "198.18.1.2:7000";
const CLIENT: &str = "198.18.0.2:40000";

/// Starts the instance: a server that answers every byte with its upper case.
async fn upper_case_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    buf[..n].make_ascii_uppercase();
                    if conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn key() -> FlowKey {
    let (server, client): (SocketAddr, SocketAddr) =
        (SERVICE.parse().unwrap(), CLIENT.parse().unwrap());
    let (server_addr, family) = addr_bytes(&server);
    FlowKey {
        server_addr,
        client_addr: addr_bytes(&client).0,
        server_port: server.port(),
        client_port: client.port(),
        family,
        _pad: [0; 3],
    }
}

fn live(app: SocketAddr, cap: usize) -> Live {
    Live::new([(SERVICE.parse().unwrap(), app)].into(), cap)
}

/// Live replay of [`SERVICE`] into a fresh [`upper_case_server`], fed one
/// connection's opening (with or without its handshake).
async fn opened_live(cap: usize, handshake: bool) -> Live {
    let live = live(upper_case_server().await, cap);
    live.feed(&opened(handshake));
    live
}

/// The error of a takeover of the connection whose restored socket received
/// `client_next` client bytes.
async fn take_error(live: &Live, client_next: u64) -> String {
    let taken = live.take(&key(), client_next, Duration::from_secs(1)).await;
    taken.unwrap_err().to_string()
}

/// The records of a connection opening, with or without its handshake.
fn opened(handshake: bool) -> Vec<Record> {
    let snapshot = SideSnapshot {
        marks: StreamMarks {
            handshake,
            ..StreamMarks::default()
        },
        ..SideSnapshot::default()
    };
    vec![
        Record::Open {
            id: 1,
            key: key(),
            service_id: 1,
        },
        Record::Update {
            id: 1,
            dir: Direction::ClientToServer,
            kernel_gaps: 0,
            snapshot,
        },
    ]
}

fn data(dir: Direction, offset: u64, bytes: &[u8]) -> Record {
    Record::Data {
        id: 1,
        dir,
        offset,
        bytes: bytes.to_vec().into(),
    }
}

/// Waits (at most 5 s) until the service's protection satisfies `done`.
async fn until(live: &Live, done: impl Fn(&ServiceProtection) -> bool) -> ServiceProtection {
    let service: SocketAddr = SERVICE.parse().unwrap();
    for _ in 0..500 {
        let p = live.protection().remove(&service).unwrap();
        if done(&p) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out: {:?}", live.protection());
}

fn unprotected(reason: &str) -> BTreeMap<String, u64> {
    [(reason.to_owned(), 1)].into()
}

/// `p` is one connection, unprotected for `reason`, counted once in the metrics.
#[track_caller]
fn assert_unprotected_once(live: &Live, p: &ServiceProtection, reason: &str) {
    assert_eq!((p.protected, p.opening, p.divergent), (0, 0, 0));
    assert_eq!(p.unprotected, unprotected(reason));
    let text = crate::metrics::encode_text(live.families());
    let counted = format!("connmirror_live_unprotected_total{{reason=\"{reason}\"}} 1\n");
    assert!(text.contains(&counted), "{text}");
}

#[tokio::test]
async fn an_agreeing_instance_is_protected_and_handed_over_with_its_new_output() {
    let live = opened_live(DEFAULT_LAG_CAP, true).await;
    live.feed(&[
        data(Direction::ClientToServer, 0, b"hello"),
        data(Direction::ServerToClient, 0, b"HEL"),
    ]);
    let p = until(&live, |p| p.protected == 1 && p.lag_bytes == 0).await;
    assert_eq!((p.opening, p.divergent), (0, 0));
    let Taken { mut conn, ahead } = live.take(&key(), 5, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ahead, b"LO");
    conn.write_all(b"more").await.unwrap();
    let mut reply = [0u8; 4];
    conn.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"MORE");
    assert_eq!(until(&live, |_| true).await, ServiceProtection::default());
}

#[tokio::test]
async fn the_first_differing_byte_makes_the_connection_divergent() {
    let live = opened_live(DEFAULT_LAG_CAP, true).await;
    live.feed(&[
        data(Direction::ClientToServer, 0, b"get"),
        data(Direction::ServerToClient, 0, b"GEX"),
    ]);
    let p = until(&live, |p| p.divergent == 1).await;
    // What the instance owed when it diverged is no lag: it is not fed any more.
    assert_eq!((p.protected, p.lag_bytes, p.lag_seconds), (0, 0, 0.0));
    // Queued for the journal by the time it shows, and taken once.
    let divergence = Divergence {
        offset: 2,
        primary: b'X',
        instance: b'T',
    };
    assert_eq!(live.take_divergences(), vec![(key(), divergence)]);
    assert_eq!(live.take_divergences(), vec![]);
    let err = take_error(&live, 3).await;
    assert_eq!(
        err,
        "divergent: the instance's output differs from the primary's at offset 2 \
         (primary 0x58, instance 0x54)"
    );
    let text = crate::metrics::encode_text(live.families());
    assert!(
        text.contains("connmirror_live_divergences_total 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn an_instance_that_is_down_leaves_the_connection_unprotected() {
    // A port nothing listens on: bind one, then close it.
    let app = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let live = live(app, DEFAULT_LAG_CAP);
    live.feed(&opened(true));
    let p = until(&live, |p| p.opening == 0).await;
    assert_unprotected_once(&live, &p, "instance-down");
    let err = take_error(&live, 0).await;
    assert_eq!(err, "unprotected: instance-down");
}

#[tokio::test]
async fn a_connection_first_seen_mid_stream_is_unprotected() {
    let live = opened_live(DEFAULT_LAG_CAP, false).await;
    let p = until(&live, |_| true).await;
    assert_eq!(p.unprotected, unprotected("mid-stream"));
    let err = take_error(&live, 0).await;
    assert_eq!(err, "unprotected: mid-stream");
}

#[tokio::test]
async fn output_the_instance_never_produces_goes_over_the_lag_cap() {
    let live = opened_live(64, true).await;
    live.feed(&[data(Direction::ServerToClient, 0, &[b'A'; 100])]);
    let p = until(&live, |p| !p.unprotected.is_empty()).await;
    assert_unprotected_once(&live, &p, "instance-lag");
}

#[tokio::test]
async fn a_missing_byte_in_the_feed_leaves_the_connection_unprotected() {
    let live = opened_live(DEFAULT_LAG_CAP, true).await;
    live.feed(&[
        data(Direction::ClientToServer, 0, b"ab"),
        data(Direction::ClientToServer, 3, b"d"),
    ]);
    let p = until(&live, |_| true).await;
    assert_eq!(p.unprotected, unprotected("gapped"));
}

#[tokio::test]
async fn a_takeover_refuses_a_feed_that_differs_from_the_restored_socket() {
    let live = opened_live(DEFAULT_LAG_CAP, true).await;
    live.feed(&[data(Direction::ClientToServer, 0, b"abc")]);
    let err = take_error(&live, 2).await;
    assert_eq!(
        err,
        "the instance was fed 3 client bytes, the restored socket received 2"
    );
}

#[tokio::test]
async fn closing_the_connection_forgets_it() {
    let live = opened_live(DEFAULT_LAG_CAP, true).await;
    live.feed(&[Record::Close {
        id: 1,
        reason: crate::flow::record::CloseReason::Closed,
    }]);
    assert_eq!(until(&live, |_| true).await, ServiceProtection::default());
    let err = take_error(&live, 0).await;
    assert_eq!(err, "live replay never saw the connection open");
}

/// A connection's key reused under a new feed id, even before the old id's
/// close arrives: the takeover finds the newer connection.
#[tokio::test]
async fn a_reused_key_is_taken_by_its_newest_connection() {
    let live = opened_live(DEFAULT_LAG_CAP, true).await;
    let reopened: Vec<Record> = (opened(true).into_iter())
        .map(|record| match record {
            Record::Open {
                key, service_id, ..
            } => Record::Open {
                id: 2,
                key,
                service_id,
            },
            Record::Update {
                dir,
                kernel_gaps,
                snapshot,
                ..
            } => Record::Update {
                id: 2,
                dir,
                kernel_gaps,
                snapshot,
            },
            other => other,
        })
        .collect();
    live.feed(&reopened);
    live.feed(&[
        Record::Close {
            id: 1,
            reason: crate::flow::record::CloseReason::Closed,
        },
        Record::Data {
            id: 2,
            dir: Direction::ClientToServer,
            offset: 0,
            bytes: b"ab".to_vec().into(),
        },
    ]);
    let Taken { mut conn, .. } = live.take(&key(), 2, Duration::from_secs(5)).await.unwrap();
    conn.write_all(b"c").await.unwrap();
    let mut reply = Vec::new();
    while !reply.ends_with(b"C") {
        let mut buf = [0u8; 8];
        let n = conn.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "the instance closed after {reply:?}");
        reply.extend_from_slice(&buf[..n]);
    }
    // What the instance had not produced at the takeover comes first.
    assert!(b"ABC".ends_with(&reply), "{reply:?}");
}

/// A connection is `opening`, neither protected nor unprotected, until its
/// instance connection is established: first while its handshake's update
/// has not come, then while the instance has not accepted (a listener whose
/// accept queue is full drops the SYN until it is emptied).
#[tokio::test]
async fn a_connection_is_opening_until_its_instance_connection_is_established() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let app = listener.local_addr().unwrap();
    // Fill the accept queue: a backlog of 1 holds two.
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(tokio::net::TcpStream::connect(app).await.unwrap());
    }
    let live = live(app, DEFAULT_LAG_CAP);
    let [open, update] = <[Record; 2]>::try_from(opened(true)).unwrap();
    live.feed(&[open]);
    let p = until(&live, |_| true).await;
    assert_eq!((p.opening, p.protected, p.unprotected.len()), (1, 0, 0));
    live.feed(&[update]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = until(&live, |_| true).await;
    assert_eq!((p.opening, p.protected, p.unprotected.len()), (1, 0, 0));
    assert_eq!(
        p.summary(),
        "0 protected, 1 opening, 0 divergent, lag 0 bytes, 0.000 s"
    );
    let text = crate::metrics::encode_text(live.families());
    let series = format!(
        "connmirror_live_connections{{service=\"{SERVICE}\",state=\"opening\",reason=\"\"}} 1.0\n"
    );
    assert!(text.contains(&series), "{text}");
    // Emptying the queue lets the retransmitted SYN in.
    for _ in 0..2 {
        drop(listener.accept().await.unwrap());
    }
    drop(queued);
    let p = until(&live, |p| p.opening == 0).await;
    assert_eq!((p.protected, p.unprotected.len()), (1, 0));
}

/// Flows a restarted standby recovered from its journal were open before
/// live replay: each of a live service is `unprotected: mid-stream`, shown
/// and counted, and a takeover says so; another service's is left out.
#[tokio::test]
async fn recovered_flows_are_unprotected_mid_stream() {
    let live = live(upper_case_server().await, DEFAULT_LAG_CAP);
    let mut other = key();
    other.server_port += 1;
    live.recovered([(7, key()), (8, other)]);
    let p = until(&live, |_| true).await;
    assert_unprotected_once(&live, &p, "mid-stream");
    // The feed's later records of the flow change nothing.
    live.feed(&[Record::Data {
        id: 7,
        dir: Direction::ClientToServer,
        offset: 40,
        bytes: b"more".to_vec().into(),
    }]);
    assert_eq!(until(&live, |_| true).await, p);
    assert_eq!(take_error(&live, 44).await, "unprotected: mid-stream");
}

/// A new owner's stream after a takeover starts with a checkpoint of the
/// connection under its own id, repeating bytes already fed: the connection
/// goes on protected, the repeated bytes are not fed twice, and the
/// takeover finds it by its key with every client byte counted once.
#[tokio::test]
async fn a_new_owners_checkpoint_of_a_connection_fed_all_along_continues_it() {
    let live = opened_live(DEFAULT_LAG_CAP, true).await;
    live.feed(&[
        data(Direction::ClientToServer, 0, b"abc"),
        data(Direction::ServerToClient, 0, b"AB"),
    ]);
    let snapshot = FlowSnapshot {
        id: 9,
        key: key(),
        service_id: 1,
        kernel_gaps: 0,
        c2s: SideSnapshot::default(),
        s2c: SideSnapshot::default(),
    };
    let again = |dir, offset, bytes: &[u8]| match data(dir, offset, bytes) {
        Record::Data {
            dir, offset, bytes, ..
        } => Record::Data {
            id: 9,
            dir,
            offset,
            bytes,
        },
        _ => unreachable!(),
    };
    live.feed(&[
        Record::CheckpointBegin { next_id: 10 },
        Record::CheckpointFlow(snapshot),
        again(Direction::ClientToServer, 1, b"bcd"),
        again(Direction::ServerToClient, 0, b"ABC"),
        Record::CheckpointEnd,
        again(Direction::ClientToServer, 4, b"e"),
        again(Direction::ServerToClient, 3, b"D"),
    ]);
    let p = until(&live, |p| p.protected == 1 && p.lag_bytes == 0).await;
    assert_eq!((p.opening, p.divergent, p.unprotected.len()), (0, 0, 0));
    let Taken { ahead, .. } = live.take(&key(), 5, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ahead, b"E");
}

/// A checkpoint's connection live replay never saw open is first seen
/// mid-stream, even when its bytes start at offset 0.
#[tokio::test]
async fn a_checkpoint_of_an_unknown_connection_is_unprotected_mid_stream() {
    let live = live(upper_case_server().await, DEFAULT_LAG_CAP);
    live.feed(&[
        Record::CheckpointBegin { next_id: 2 },
        Record::CheckpointFlow(FlowSnapshot {
            id: 1,
            key: key(),
            service_id: 1,
            kernel_gaps: 0,
            c2s: SideSnapshot::default(),
            s2c: SideSnapshot::default(),
        }),
        data(Direction::ClientToServer, 0, b"abc"),
        Record::CheckpointEnd,
    ]);
    let p = until(&live, |_| true).await;
    assert_unprotected_once(&live, &p, "mid-stream");
}
