//! Valid inputs for every target, built with the encoders the tests use:
//! the corpora start from them (`cargo run -p connmirror-fuzz --example
//! seed_corpus` writes them as `corpus/TARGET/seed-N`), so the fuzzer
//! begins past the framing and the corpus test always has something to run.

use std::net::SocketAddr;

use connmirror::flow::record::Record;
use connmirror::key::Key;
use connmirror::ownership::heartbeat::{self, Kind, Ownership};
use connmirror::replication::channel::{self, Batch, Hello as ChannelHello, ReplicationLag};
use connmirror_common::frame::TcpFrame;
use connmirror_common::{Direction, RecordHeader};
use connmirror_handoff::wire::{FlowMeta, Hello as HandoffHello, Recorded};

use crate::HEARTBEAT_KEY;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a socket address")
}

/// The seeds of the target `name` (one of [`crate::TARGETS`]).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "packet" => packets(),
        "ring_record" => ring_records(),
        "journal_record" => journal_records(),
        "heartbeat" => heartbeats(),
        "replication" => replication(),
        "control" => control(),
        "handoff" => handoff(),
        _ => panic!("no target named {name}"),
    }
}

fn packets() -> Vec<Vec<u8>> {
    let mut v4 = TcpFrame::new(addr("198.18.0.1:40000"), addr("198.18.0.2:7000"));
    v4.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    v4.tcp_options = vec![2, 4, 5, 0xb4, 1, 1, 4, 2];
    let mut v6 = TcpFrame::new(addr("[fd00::1]:40000"), addr("[fd00::2]:7000"));
    v6.payload = vec![0x55; 100];
    let v4_frame = v4.build();
    let ip = v4_frame[v4.l3_offset()..].to_vec();
    vec![v4_frame, v6.build(), ip]
}

fn ring_records() -> Vec<Vec<u8>> {
    let mut header = RecordHeader::zeroed();
    header.family = connmirror_common::map::FAMILY_V4;
    let empty = header.as_bytes().to_vec();
    header.family = connmirror_common::map::FAMILY_V6;
    header.chunk_len = 5;
    header.payload_len = 5;
    let mut record = header.as_bytes().to_vec();
    record.extend_from_slice(b"hello");
    vec![record, empty]
}

fn journal_records() -> Vec<Vec<u8>> {
    let data = Record::Data {
        id: 1,
        dir: Direction::ClientToServer,
        offset: 0,
        bytes: b"hello".to_vec().into(),
    };
    [data, Record::CheckpointEnd]
        .iter()
        .map(|record| {
            let mut out = vec![record.kind() as u8];
            record.encode(&mut out);
            out
        })
        .collect()
}

fn heartbeats() -> Vec<Vec<u8>> {
    let key = Key::from_bytes(HEARTBEAT_KEY);
    let ownership = Ownership {
        node_id: "primary".into(),
        cluster_id: "default".into(),
        epoch: 3,
        services: vec![addr("198.18.0.100:7000")],
        macs: vec!["02:00:00:00:00:01".into()],
        policy: "auto".into(),
        applications: vec!["echo".into()],
    };
    let sealed = heartbeat::seal(&key, Kind::Heartbeat, 7, &ownership);
    // The target appends a valid MAC itself: the seed is the body.
    let body = sealed[..sealed.len() - connmirror::key::MAC_LEN].to_vec();
    vec![body, sealed]
}

fn replication() -> Vec<Vec<u8>> {
    let record = &journal_records()[0];
    let mut records = vec![record[0]];
    records.extend((record.len() as u32 - 1).to_le_bytes());
    records.extend(&record[1..]);
    let batch = Batch {
        end: 42,
        lag: ReplicationLag {
            bytes: 10,
            seconds: 0.5,
        },
        records: &records,
    };
    let hello = ChannelHello {
        role: "mirror".into(),
        interval_ms: 100,
        missed: 10,
    };
    vec![
        batch.encode(),
        channel::encode_needs(&[addr("198.18.0.100:7000")].into()),
        channel::encode_ack(42),
        hello.encode(),
    ]
}

fn control() -> Vec<Vec<u8>> {
    [
        r#"{"command":"status"}"#,
        r#"{"command":"takeover","services":null}"#,
        r#"{"command":"migrate","to":"b","services":["198.18.0.100:7000"]}"#,
    ]
    .map(|line| line.as_bytes().to_vec())
    .to_vec()
}

fn handoff() -> Vec<Vec<u8>> {
    let recorded = Recorded {
        start: 0,
        end: 10,
        acked: 5,
    };
    let meta = FlowMeta {
        id: 1,
        service: addr("198.18.0.100:7000"),
        server: addr("198.18.0.100:7000"),
        client: addr("198.18.0.1:40000"),
        c2s: recorded,
        s2c: recorded,
    };
    let hello = HandoffHello {
        services: vec![addr("198.18.0.100:7000")],
    };
    vec![
        meta.encode_header(),
        hello.encode(2),
        3u32.to_be_bytes().to_vec(),
    ]
}

#[cfg(test)]
mod tests {
    use connmirror::daemon::control::Request;
    use connmirror_common::parse::{self, Parsed};

    use super::*;

    /// Each seed gets past its framing: a seed the decoder refuses would
    /// start the fuzzer at the first error it checks for.
    #[test]
    fn every_seed_decodes() {
        let tcp = |p| matches!(p, Ok(Parsed::Tcp(_)));
        let [v4, v6, ip] = &packets()[..] else {
            panic!("three packets")
        };
        assert!(tcp(parse::parse(v4.as_slice())) && tcp(parse::parse(v6.as_slice())));
        assert!(tcp(parse::parse_ip(ip.as_slice())));
        for record in ring_records() {
            RecordHeader::decode(&record).expect("a ring record");
        }
        for record in journal_records() {
            Record::decode(record[0], &record[1..]).expect("a journal record");
        }
        let key = Key::from_bytes(HEARTBEAT_KEY);
        heartbeat::open(&key, &heartbeats()[1]).expect("a heartbeat");
        let [batch, needs, ack, hello] = &replication()[..] else {
            panic!("four messages")
        };
        let batch = Batch::decode(batch).expect("a batch");
        assert_eq!(batch.decode_records().expect("its records").len(), 1);
        assert_eq!(channel::decode_needs(needs).expect("needs").len(), 1);
        assert_eq!(channel::decode_ack(ack), Ok(42));
        assert!(ChannelHello::decode(hello).expect("a hello").is_some());
        for line in control() {
            serde_json::from_slice::<Request>(&line).expect("a control request");
        }
        let [header, hello, _] = &handoff()[..] else {
            panic!("three handoff seeds")
        };
        FlowMeta::decode_header(&header[4..]).expect("a flow header");
        HandoffHello::decode_body(&hello[10..]).expect("a hello body");
    }
}
