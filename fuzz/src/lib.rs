//! The fuzz targets: one function per decoder that reads bytes from outside
//! the process. Each takes any bytes and must return without panicking,
//! hanging or allocating without bound; where an encoder exists, it also
//! checks the round trip (what decodes, re-encoded, decodes to the same
//! value) and panics if it breaks.
//!
//! `cargo fuzz` runs them through the binaries in `fuzz_targets/` (the
//! `libfuzzer` feature, nightly); `tests/corpus.rs` runs every file of
//! `corpus/TARGET/` through them on stable, so `cargo xtask test` fails on a
//! regression. [`TARGETS`] lists them.
//!
//! | target | decoder | where its bytes come from |
//! | --- | --- | --- |
//! | [`packet`] | `connmirror_common::parse` (the code the kernel runs) | any frame on a captured link |
//! | [`ring_record`] | `RecordHeader::decode` | the ring buffer (the programs, or a pinned ring of an older build) |
//! | [`journal_record`] | `flow::record::Record::decode` | journal segments on disk, replication batches |
//! | [`heartbeat`] | `ownership::heartbeat::open` | UDP datagrams from anyone |
//! | [`replication`] | the replication channel's plaintext messages | the peer, once the channel is open |
//! | [`control`] | `daemon::control::Request` | the control socket |
//! | [`handoff`] | the handoff hello and flow headers | the application, and the daemon |
//! | [`journal_dir`] | reading and recovering a journal directory | the disk, after a crash or worse |
//! | [`migration`] | `failover::migrate::read_frame` | the migration peer |
//! | [`config`] | `daemon::config::Config::parse` against the real command line | a configuration file |

mod files;
pub mod seeds;

use std::collections::BTreeSet;
use std::path::Path;

use connmirror::daemon::cli::{LAYOUT, cli_command};
use connmirror::daemon::config::Config;
use connmirror::daemon::control::Request;
use connmirror::failover::migrate;
use connmirror::flow::record::Record;
use connmirror::journal::{self, FsyncPolicy, JournalConfig, JournalWriter, ReadMode};
use connmirror::key::Key;
use connmirror::ownership::heartbeat;
use connmirror::replication::channel::{self, Batch, Hello as ChannelHello};
use connmirror_common::RecordHeader;
use connmirror_common::parse::{self, Parsed};
use connmirror_handoff::wire::{
    self, COUNT_PREFIX, FlowMeta, HEADER_PREFIX, HELLO_HEAD, Hello as HandoffHello,
};
use serde::{Serialize, de::DeserializeOwned};

/// A fuzz target: any bytes in, a panic when a check fails.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus directory.
pub const TARGETS: [(&str, Target); 10] = [
    ("packet", packet),
    ("ring_record", ring_record),
    ("journal_record", journal_record),
    ("heartbeat", heartbeat),
    ("replication", replication),
    ("control", control),
    ("handoff", handoff),
    ("journal_dir", journal_dir),
    ("migration", migration),
    ("config", config),
];

/// The key the [`heartbeat`] target signs and verifies with.
pub const HEARTBEAT_KEY: &[u8] = b"connmirror fuzzing key, 32 bytes";

/// A frame as XDP and TC see it (from the Ethernet header), and as the
/// netfilter hook sees it (from the IP header): a parsed segment's options
/// and payload must lie inside the frame.
pub fn packet(data: &[u8]) {
    for parsed in [parse::parse(data), parse::parse_ip(data)] {
        if let Ok(Parsed::Tcp(seg)) = parsed {
            assert!(
                seg.options_offset + seg.options_len <= data.len(),
                "{seg:?}"
            );
            assert!(
                seg.payload_offset + seg.payload_len <= data.len(),
                "{seg:?}"
            );
        }
    }
}

/// A raw ring-buffer record: the chunk it yields lies inside the record.
pub fn ring_record(data: &[u8]) {
    if let Ok((header, chunk)) = RecordHeader::decode(data) {
        assert_eq!(chunk.len(), header.chunk_len as usize);
    }
}

/// A journal record: the first byte is its kind, the rest its payload.
/// What decodes re-encodes to a payload that decodes to the same record.
pub fn journal_record(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    if let Ok(record) = Record::decode(kind, payload) {
        let mut again = Vec::new();
        record.encode(&mut again);
        assert_eq!(Record::decode(kind, &again), Ok(record));
    }
}

/// A heartbeat datagram, as it arrives, and with a valid MAC appended (so
/// the framing and the JSON past the MAC are fuzzed too). What opens
/// re-seals to a datagram that opens to the same message.
pub fn heartbeat(data: &[u8]) {
    use hmac::Mac as _;
    let key = Key::from_bytes(HEARTBEAT_KEY);
    let _ = heartbeat::open(&key, data);
    let mut mac = key.mac();
    mac.update(data);
    let mut signed = data.to_vec();
    signed.extend(mac.finalize().into_bytes());
    if let Ok(message) = heartbeat::open(&key, &signed) {
        let sealed = heartbeat::seal(&key, message.kind, message.counter, &message.ownership);
        assert_eq!(heartbeat::open(&key, &sealed), Ok(message));
    }
}

/// A plaintext message of the replication channel, tried as each kind:
/// a batch (and the records it carries), the standby's needs and
/// acknowledgments, the sender's hello. Each that decodes re-encodes to
/// what decodes the same.
pub fn replication(data: &[u8]) {
    if let Ok(batch) = Batch::decode(data) {
        let _ = batch.decode_records();
        let again = batch.encode();
        let back = Batch::decode(&again).expect("a re-encoded batch decodes");
        assert_eq!((back.end, back.records), (batch.end, batch.records));
    }
    if let Ok(needs) = channel::decode_needs(data) {
        let again: BTreeSet<_> =
            channel::decode_needs(&channel::encode_needs(&needs)).expect("re-encoded needs decode");
        assert_eq!(again, needs);
    }
    if let Ok(end) = channel::decode_ack(data) {
        assert_eq!(channel::decode_ack(&channel::encode_ack(end)), Ok(end));
    }
    if let Ok(Some(hello)) = ChannelHello::decode(data) {
        assert_eq!(ChannelHello::decode(&hello.encode()), Ok(Some(hello)));
    }
}

/// A control-socket request line: what parses re-serializes to a request
/// that parses the same.
pub fn control(data: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let again = serde_json::to_vec(&request).expect("a request serializes");
        let back: Request = serde_json::from_slice(&again).expect("a re-serialized request parses");
        assert_eq!(back, request);
    }
}

/// The handoff socket's framing: a flow header (length prefix, then JSON),
/// a bundle count, and an application's hello (head, then body). What
/// decodes re-encodes to what decodes the same.
pub fn handoff(data: &[u8]) {
    if let Some(prefix) = data.first_chunk::<HEADER_PREFIX>() {
        let _ = FlowMeta::decode_header_len(*prefix);
        header_round_trip(&data[HEADER_PREFIX..]);
    }
    if let Some(prefix) = data.first_chunk::<COUNT_PREFIX>() {
        let _ = wire::decode_bundle_count(*prefix);
    }
    if let Some(head) = data.first_chunk::<HELLO_HEAD>()
        && let Ok((version, _)) = HandoffHello::decode_head(*head)
    {
        hello_round_trip(version, &data[HELLO_HEAD..]);
    }
}

fn header_round_trip(json: &[u8]) {
    let Ok(meta) = FlowMeta::decode_header(json) else {
        return;
    };
    let _ = meta.check();
    let encoded = meta.encode_header();
    let prefix = encoded.first_chunk::<HEADER_PREFIX>().expect("a prefix");
    let len = FlowMeta::decode_header_len(*prefix).expect("its own length is accepted");
    assert_eq!(len, encoded.len() - HEADER_PREFIX);
    let back = FlowMeta::decode_header(&encoded[HEADER_PREFIX..]).expect("re-encoded decodes");
    assert_eq!(back, meta);
}

fn hello_round_trip(version: u16, body: &[u8]) {
    let Ok(hello) = HandoffHello::decode_body(body) else {
        return;
    };
    let encoded = hello.encode(version);
    let head = encoded.first_chunk::<HELLO_HEAD>().expect("a head");
    let (again, len) = HandoffHello::decode_head(*head).expect("its own head is accepted");
    assert_eq!((again, len), (version, encoded.len() - HELLO_HEAD));
    let back = HandoffHello::decode_body(&encoded[HELLO_HEAD..]).expect("re-encoded decodes");
    assert_eq!(back, hello);
}

/// A journal directory of arbitrary files ([`files::write`] lays them out):
/// read strictly and with salvage, every record decoded; then the writer's
/// recovery opens it, and what it leaves must read back strictly.
pub fn journal_dir(data: &[u8]) {
    let dir = files::Scratch::new();
    files::write(dir.path(), data);
    for mode in [ReadMode::Strict, ReadMode::Salvage] {
        if let Ok(scan) = journal::read_journal(dir.path(), mode) {
            for record in &scan.records {
                let _ = Record::decode(record.kind, &record.payload);
            }
        }
    }
    let mut config = JournalConfig::new(dir.path());
    config.fsync = FsyncPolicy::Never;
    if let Ok((writer, _)) = JournalWriter::open(config) {
        writer.close().expect("closing a recovered journal");
        let again = journal::read_journal(dir.path(), ReadMode::Strict);
        assert!(
            again.is_ok(),
            "a recovered journal must read back: {again:?}"
        );
    }
}

/// A migration frame as each message it can be, as it arrives and with a
/// valid MAC over it (so the JSON past the MAC is fuzzed too). What reads
/// re-writes to a frame that reads the same.
pub fn migration(data: &[u8]) {
    let key = Key::from_bytes(HEARTBEAT_KEY);
    frame::<migrate::Prepare>(&key, data);
    frame::<migrate::Prepared>(&key, data);
    frame::<migrate::Transfer>(&key, data);
    frame::<migrate::Receipt>(&key, data);
}

fn frame<T: DeserializeOwned + Serialize>(key: &Key, data: &[u8]) {
    let _ = migrate::read_frame::<T>(&mut &data[..], key);
    let mut signed = (data.len() as u32).to_be_bytes().to_vec();
    signed.extend(data);
    let tag = key.sign(&signed);
    signed.extend(tag);
    let Ok(value) = migrate::read_frame::<T>(&mut &signed[..], key) else {
        return;
    };
    let mut again = Vec::new();
    migrate::write_frame(&mut again, key, &value).expect("a frame writes into memory");
    let back: T = migrate::read_frame(&mut &again[..], key).expect("a re-written frame reads");
    let json = |v: &T| serde_json::to_value(v).expect("a frame's value serializes");
    assert_eq!(json(&back), json(&value));
}

/// A configuration file, checked against the real command line as
/// `connmirror config check` does. What it accepts prints (as the
/// effective settings) a file that is accepted too and prints the same
/// settings (every one of them now set in the file, none marked default).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cmd = cli_command();
    let Ok(effective) = Config::parse(Path::new("fuzz.toml"), text, &cmd, &LAYOUT)
        .and_then(|config| config.effective(&cmd))
    else {
        return;
    };
    let again = Config::parse(Path::new("effective.toml"), &effective, &cmd, &LAYOUT)
        .and_then(|config| config.effective(&cmd));
    // Every value is explicit the second time: only the marks differ.
    let unmarked = |text: &str| text.replace("  # default", "");
    match again {
        Ok(again) => assert_eq!(unmarked(&again), unmarked(&effective)),
        Err(e) => panic!("the effective settings are refused: {e}\n{effective}"),
    }
}
