//! Unit tests of `journal/appender.rs`, on real files in a temp directory.

use std::path::PathBuf;

use super::*;
use crate::journal::{
    JournalConfig, MAX_RECORD_BYTES, RECORD_HEADER_LEN, ReadMode, read_journal, segment_path,
};

fn open(prefix: &str) -> (tempfile::TempDir, Appender) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    let (writer, _) = JournalWriter::open(JournalConfig::new(dir.path())).expect("open");
    (dir, Appender::spawn(writer).expect("spawn"))
}

/// Deterministic payload `i`, irregular lengths, some over a whole batch.
fn payload(i: usize) -> Vec<u8> {
    let len = match i % 7 {
        0 => 0,
        3 => BATCH_BYTES + 17,
        _ => i * 131 % 5000,
    };
    (0..len).map(|j| (j * 31 + i) as u8).collect()
}

/// Pushes [`payload`]s `0..n` with kind `i as u8`; returns the framed bytes.
fn push_payloads(appender: &mut Appender, n: usize) -> u64 {
    let mut bytes = 0;
    for i in 0..n {
        let data = payload(i);
        bytes += RECORD_HEADER_LEN + data.len() as u64;
        appender
            .push(i as u8, |out| out.extend_from_slice(&data))
            .unwrap();
    }
    bytes
}

/// Asserts the journal in `dir` holds exactly [`payload`]s `0..n`.
fn assert_payloads(dir: &std::path::Path, n: usize) {
    let scan = read_journal(dir, ReadMode::Strict).unwrap();
    let got: Vec<(u8, Vec<u8>)> = (scan.records.into_iter())
        .map(|r| (r.kind, r.payload))
        .collect();
    let want: Vec<(u8, Vec<u8>)> = (0..n).map(|i| (i as u8, payload(i))).collect();
    assert!(got == want, "records differ");
}

#[test]
fn records_come_back_byte_exact_across_batches_and_are_counted_as_handed_over() {
    let (dir, mut appender) = open("connmirror-appender-");
    let bytes = push_payloads(&mut appender, 40);
    let stats = appender.stats();
    assert_eq!((stats.records, stats.bytes_appended - bytes), (40, 0));
    let stats = appender.close().unwrap();
    assert_eq!(stats.records, 40);
    assert_eq!(stats.bytes_appended, bytes);
    assert_payloads(dir.path(), 40);
}

#[test]
fn a_checkpoint_starts_a_segment_syncs_it_and_removes_the_older_ones() {
    let (dir, mut appender) = open("connmirror-appender-");
    appender
        .push(1, |out| out.extend_from_slice(b"before"))
        .unwrap();
    appender.rotate().unwrap();
    appender
        .push(2, |out| out.extend_from_slice(b"checkpoint"))
        .unwrap();
    appender.seal().unwrap();
    appender.wait().unwrap();
    // Open recovered nothing and started segment 1; the checkpoint is segment 2.
    assert!(!segment_path(dir.path(), 1).exists());
    assert!(segment_path(dir.path(), 2).exists());
    let stats = appender.close().unwrap();
    assert_eq!(stats.segments_removed, 1);
    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    let got: Vec<(u64, u8, Vec<u8>)> = (scan.records.into_iter())
        .map(|r| (r.position.segment, r.kind, r.payload))
        .collect();
    assert_eq!(got, vec![(2, 2, b"checkpoint".to_vec())]);
}

#[test]
fn the_threads_error_comes_back_once_and_then_the_writer_is_stopped() {
    let (dir, mut appender) = open("connmirror-appender-");
    let too_large = MAX_RECORD_BYTES as usize + 1;
    appender
        .push(7, |out| out.resize(out.len() + too_large, 0))
        .unwrap();
    let first = appender.wait().unwrap_err();
    assert_eq!(
        first.to_string(),
        "journal record of 67108865 bytes exceeds the maximum of 67108864 bytes"
    );
    let second = appender.commit().unwrap_err();
    let path = PathBuf::from(dir.path());
    assert_eq!(
        second.to_string(),
        format!(
            "journal writer stopped after append {} failed; reopen the journal to recover",
            path.display()
        )
    );
    assert!(appender.close().is_err());
}

#[test]
fn a_written_batch_comes_back_for_the_next_one_and_its_records_stay_exact() {
    let (dir, mut appender) = open("connmirror-appender-");
    let record = vec![5u8; 64 << 10];
    for _ in 0..BATCH_BYTES / record.len() {
        appender
            .push(1, |out| out.extend_from_slice(&record))
            .unwrap();
    }
    appender.wait().unwrap();
    let back = appender.recycled.try_recv().expect("the batch came back");
    assert_eq!((back.len(), back.capacity() >= BATCH_BYTES), (0, true));
    assert!(appender.batch.is_empty());
    appender.batch = back;
    appender
        .push(2, |out| out.extend_from_slice(b"after"))
        .unwrap();
    appender.close().unwrap();
    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    let kinds: Vec<u8> = scan.records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds.len(), BATCH_BYTES / record.len() + 1);
    assert!(
        scan.records
            .iter()
            .take(kinds.len() - 1)
            .all(|r| r.kind == 1 && r.payload == record)
    );
    assert_eq!(
        scan.records.last().map(|r| r.payload.as_slice()),
        Some(&b"after"[..])
    );
}

/// An appender whose `Interval` policy syncs every `bytes` or 5 ms.
fn open_interval(bytes: u64) -> (tempfile::TempDir, Appender) {
    let dir = tempfile::Builder::new()
        .prefix("connmirror-appender-sync-")
        .tempdir()
        .expect("temp dir");
    let mut config = JournalConfig::new(dir.path());
    config.fsync = crate::journal::FsyncPolicy::Interval {
        every: std::time::Duration::from_millis(5),
        bytes,
    };
    let (writer, _) = JournalWriter::open(config).expect("open");
    (dir, Appender::spawn(writer).expect("spawn"))
}

#[test]
fn an_idle_appender_still_syncs_the_records_it_was_handed_within_the_interval() {
    let (_dir, mut appender) = open_interval(u64::MAX);
    let before = appender.stats().fsyncs;
    appender.push(1, |out| out.extend_from_slice(b"x")).unwrap();
    appender.commit().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while appender.stats().fsyncs == before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(appender.stats().fsyncs, before + 1, "one sync, then none");
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(appender.stats().fsyncs, before + 1, "nothing new to sync");
}

#[test]
fn syncs_overlapping_appends_keep_every_record_exact() {
    let (dir, mut appender) = open_interval(64 << 10);
    let before = appender.stats().fsyncs;
    let bytes = push_payloads(&mut appender, 400);
    let stats = appender.close().unwrap();
    assert_eq!((stats.records, stats.bytes_appended), (400, bytes));
    assert!(
        stats.fsyncs > before + 10,
        "{} syncs",
        stats.fsyncs - before
    );
    assert_eq!(stats.fsyncs, stats.fsync_latency.count());
    assert_payloads(dir.path(), 400);
}

#[test]
fn a_split_record_is_written_as_its_head_and_tail_together() {
    let (dir, mut appender) = open("connmirror-appender-split-");
    let mut bytes = 0;
    for i in 0..300 {
        let data = payload(i);
        let cut = data.len() / 3;
        bytes += RECORD_HEADER_LEN + data.len() as u64;
        // Every third record plain, the others split (some with an empty tail).
        let tail = Bytes::copy_from_slice(&data[cut..]);
        match i % 3 {
            0 => appender.push(i as u8, |out| out.extend_from_slice(&data)),
            _ => appender.push_split(i as u8, |out| {
                out.extend_from_slice(&data[..cut]);
                Some(tail)
            }),
        }
        .unwrap();
    }
    let stats = appender.close().unwrap();
    assert_eq!((stats.records, stats.bytes_appended), (300, bytes));
    assert_payloads(dir.path(), 300);
}
