//! Valid inputs for every target, built with the encoders the tests use:
//! the corpora start from them (`cargo run -p connmirror-fuzz --example
//! seed_corpus` writes them as `corpus/TARGET/seed-N`), so the fuzzer
//! begins past the framing and the corpus test always has something to run.

use std::net::SocketAddr;
use std::path::Path;

use connmirror::failover::migrate::{Prepare, Prepared, Receipt};
use connmirror::flow::record::Record;
use connmirror::journal::{FsyncPolicy, JournalConfig, JournalWriter, parse_segment_file_name};
use connmirror::key::Key;
use connmirror::ownership::heartbeat::{self, Kind, Ownership};
use connmirror::replication::channel::{self, Batch, Hello as ChannelHello, ReplicationLag};
use connmirror_common::frame::TcpFrame;
use connmirror_common::{Direction, RecordHeader};
use connmirror_handoff::wire::{FlowMeta, Hello as HandoffHello, Recorded};

use crate::{HEARTBEAT_KEY, files};

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
        "journal_dir" => journal_dirs(),
        "migration" => migration(),
        "config" => configs(),
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

/// A journal the writer wrote (three records), as [`crate::files`] lays
/// it out; the same with its last record torn; and with a leftover
/// temporary segment beside it.
fn journal_dirs() -> Vec<Vec<u8>> {
    let dir = files::Scratch::new();
    let mut config = JournalConfig::new(dir.path());
    config.fsync = FsyncPolicy::Never;
    let (mut writer, _) = JournalWriter::open(config).expect("a journal in a scratch directory");
    for record in journal_records().iter().cycle().take(3) {
        writer.append(record[0], &record[1..]).expect("an append");
    }
    writer.close().expect("closing the journal");
    let mut segments: Vec<(u8, Vec<u8>)> = std::fs::read_dir(dir.path())
        .expect("the scratch directory")
        .map(|entry| entry.expect("an entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let seq = u8::try_from(parse_segment_file_name(name)?).ok()?;
            Some((seq, std::fs::read(&path).expect("a segment")))
        })
        .collect();
    segments.sort();
    let whole = files::encode(&segments);
    if let Some((_, last)) = segments.last_mut() {
        last.truncate(last.len() - 3);
    }
    let torn = files::encode(&segments);
    segments.push((4, b"half a segment".to_vec()));
    vec![whole, torn, files::encode(&segments)]
}

/// The JSON of each migration message (the target frames and signs it).
fn migration() -> Vec<Vec<u8>> {
    let prepare = Prepare {
        node_id: "primary".into(),
        to: "standby".into(),
        counter: 5,
        epoch: 2,
        services: vec![addr("198.18.0.100:7000")],
    };
    let prepared = Prepared {
        counter: 5,
        refused: None,
    };
    let receipt = Receipt {
        counter: 5,
        restored: 4,
        errors: vec!["one reset".into()],
        refused: None,
    };
    vec![json(&prepare), json(&prepared), json(&receipt)]
}

/// `value` as JSON.
fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("a migration message serializes")
}

/// The example configuration files (examples/*.toml).
fn configs() -> Vec<Vec<u8>> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap_or_else(|e| panic!("{}: {e}", examples.display()))
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read(path).expect("an example"))
        .collect()
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
        let cmd = connmirror::daemon::cli::cli_command();
        let layout = &connmirror::daemon::cli::LAYOUT;
        let configs = configs();
        assert!(configs.len() >= 5);
        for text in configs {
            let text = String::from_utf8(text).expect("UTF-8");
            connmirror::daemon::config::Config::parse(Path::new("x.toml"), &text, &cmd, layout)
                .expect("an example configuration");
        }
        let [whole, _, _] = &journal_dirs()[..] else {
            panic!("three journals")
        };
        let dir = files::Scratch::new();
        files::write(dir.path(), whole);
        let scan = connmirror::journal::read_journal(dir.path(), Default::default());
        assert_eq!(scan.expect("the journal reads").records.len(), 3);
        let key = Key::from_bytes(HEARTBEAT_KEY);
        for json in migration() {
            let mut frame = (json.len() as u32).to_be_bytes().to_vec();
            frame.extend(&json);
            frame.extend(key.sign(&frame));
            let value: serde_json::Value =
                connmirror::failover::migrate::read_frame(&mut &frame[..], &key).expect("a frame");
            assert!(value.is_object());
        }
    }
}
