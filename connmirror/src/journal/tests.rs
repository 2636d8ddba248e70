use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use proptest::prelude::*;
use tempfile::TempDir;

use crate::testing::pseudo_random;

use super::{
    format::{encode_record_header, encode_segment_header, segment_tmp_path},
    *,
};

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("connmirror-journal-")
        .tempdir()
        .expect("create temp dir")
}

/// Small segments and buffer so that rotation and buffer bypass happen often.
fn small_config(dir: &Path) -> JournalConfig {
    JournalConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 4096,
        buffer_bytes: 1024,
        ..JournalConfig::new(dir)
    }
}

/// Deterministic, irregular bytes, so that no payload looks like a framed
/// record by accident.
fn payload(seed: usize, len: usize) -> Vec<u8> {
    pseudo_random(seed as u64, len)
}

/// Payload lengths: irregular, some empty, some over the 1 KiB test buffer.
fn payload_len(i: usize) -> usize {
    match i % 17 {
        0 => 0,
        5 => 1500 + i % 300,
        _ => (i * 37) % 311 + 1,
    }
}

fn expected_record(position: Position, i: usize) -> StoredRecord {
    StoredRecord {
        position,
        kind: (i % 251) as u8,
        payload: payload(i, payload_len(i)),
    }
}

/// Opens a fresh journal in `dir`, appends `n` records and closes it.
fn write_records(config: JournalConfig, n: usize) -> Vec<StoredRecord> {
    let (mut writer, recovery) = JournalWriter::open(config).expect("open");
    assert!(recovery.records.is_empty());
    let records = (0..n)
        .map(|i| {
            let expected = expected_record(
                Position {
                    segment: 0,
                    offset: 0,
                },
                i,
            );
            let position = writer
                .append(expected.kind, &expected.payload)
                .expect("append");
            StoredRecord {
                position,
                ..expected
            }
        })
        .collect();
    writer.close().expect("close");
    records
}

fn copy_segments(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if parse_segment_file_name(name.to_str().unwrap()).is_some() {
            fs::copy(entry.path(), to.join(name)).unwrap();
        }
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= 0xFF;
    fs::write(path, data).unwrap();
}

fn corrupt_parts(error: JournalError) -> (PathBuf, u64, String) {
    match error {
        JournalError::Corrupt {
            file,
            offset,
            reason,
        } => (file, offset, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn without(records: &[StoredRecord], skip: Position) -> Vec<StoredRecord> {
    records
        .iter()
        .filter(|r| r.position != skip)
        .cloned()
        .collect()
}

#[test]
fn records_round_trip_across_rotations_with_increasing_positions() {
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 600);

    assert!(written.windows(2).all(|w| w[0].position < w[1].position));
    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    assert_eq!(scan.records, written);
    assert_eq!(scan.truncated_tail, None);
    assert_eq!(scan.salvaged, 0);
    let last_segment = written.last().unwrap().position.segment;
    assert_eq!(scan.segments, (1..=last_segment).collect::<Vec<_>>());
    assert!(last_segment >= 5, "only {last_segment} segments");
    // Every segment but the newest reached segment_bytes before the next started.
    for &seq in &scan.segments[..scan.segments.len() - 1] {
        let len = fs::metadata(segment_path(dir.path(), seq)).unwrap().len();
        assert!(len >= 4096, "segment {seq} sealed at {len} bytes");
    }

    // Reopening recovers everything and appends to a new segment.
    let (mut writer, recovery) = JournalWriter::open(small_config(dir.path())).unwrap();
    assert_eq!(recovery.records, written);
    assert_eq!(recovery.truncated_tail, None);
    assert_eq!(recovery.active_segment, last_segment + 1);
    let position = writer.append(7, b"after reopen").unwrap();
    assert_eq!(
        position,
        Position {
            segment: last_segment + 1,
            offset: SEGMENT_HEADER_LEN
        }
    );
    assert_eq!(
        writer.segments(),
        (1..=last_segment + 1).collect::<Vec<_>>()
    );
    writer.close().unwrap();
    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    assert_eq!(scan.records.len(), 601);
    assert_eq!(scan.records[600].payload, b"after reopen");
}

#[test]
fn open_with_streams_recovered_records_to_the_visitor() {
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 50);

    let mut seen = Vec::new();
    let (writer, recovery) =
        JournalWriter::open_with(small_config(dir.path()), |r| seen.push(r)).unwrap();

    assert_eq!(seen, written);
    assert!(recovery.records.is_empty());
    drop(writer);
}

#[test]
fn truncation_at_every_byte_of_the_last_record_recovers_the_previous_records() {
    let original = temp_dir();
    let written = write_records(small_config(original.path()), 40);
    let last = written.last().unwrap();
    let newest = segment_path(original.path(), last.position.segment);
    let start = last.position.offset;
    let end = fs::metadata(&newest).unwrap().len();
    assert_eq!(end, start + RECORD_HEADER_LEN + last.payload.len() as u64);
    assert!(
        last.position.segment > 1,
        "the newest segment must not be the only one"
    );

    for cut in start..end {
        let dir = temp_dir();
        copy_segments(original.path(), dir.path());
        let torn = segment_path(dir.path(), last.position.segment);
        fs::OpenOptions::new()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let expected_tail = (cut > start).then(|| (torn.clone(), cut - start));

        // The reader reports the torn tail and leaves the file alone.
        let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
        assert_eq!(scan.records, written[..39], "cut at {cut}");
        assert_eq!(scan.truncated_tail, expected_tail, "cut at {cut}");
        assert_eq!(fs::metadata(&torn).unwrap().len(), cut);

        // The writer cuts it and appends after it.
        let (mut writer, recovery) = JournalWriter::open(small_config(dir.path())).unwrap();
        assert_eq!(recovery.records, written[..39], "cut at {cut}");
        assert_eq!(recovery.truncated_tail, expected_tail, "cut at {cut}");
        assert_eq!(fs::metadata(&torn).unwrap().len(), start);
        writer.append(9, b"after recovery").unwrap();
        writer.close().unwrap();

        let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
        assert_eq!(scan.records.len(), 40);
        assert_eq!(scan.records[..39], written[..39]);
        assert_eq!(scan.records[39].payload, b"after recovery");
        assert_eq!(
            scan.records[39].position,
            Position {
                segment: last.position.segment + 1,
                offset: SEGMENT_HEADER_LEN
            }
        );
        assert_eq!(scan.truncated_tail, None);
    }
}

#[test]
fn torn_header_of_the_newest_segment_removes_the_file_and_reuses_its_number() {
    let original = temp_dir();
    let written = write_records(small_config(original.path()), 20);
    let torn_seq = written.last().unwrap().position.segment + 1;
    let header = encode_segment_header(torn_seq);
    let mut torn_contents: Vec<Vec<u8>> = (0..header.len()).map(|n| header[..n].to_vec()).collect();
    // A file whose size reached the disk but whose data did not.
    torn_contents.push(vec![0; 4096]);

    for contents in torn_contents {
        let dir = temp_dir();
        copy_segments(original.path(), dir.path());
        let torn = segment_path(dir.path(), torn_seq);
        fs::write(&torn, &contents).unwrap();
        let expected_tail = Some((torn.clone(), contents.len() as u64));

        let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
        assert_eq!(scan.records, written);
        assert_eq!(scan.truncated_tail, expected_tail);

        let (mut writer, recovery) = JournalWriter::open(small_config(dir.path())).unwrap();
        assert_eq!(recovery.records, written);
        assert_eq!(recovery.truncated_tail, expected_tail);
        assert_eq!(recovery.active_segment, torn_seq);
        assert_eq!(fs::metadata(&torn).unwrap().len(), SEGMENT_HEADER_LEN);
        writer.append(1, b"x").unwrap();
        writer.close().unwrap();
        let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
        assert_eq!(scan.records.len(), written.len() + 1);
    }
}

#[test]
fn flipped_payload_byte_in_a_sealed_segment_is_a_checksum_error_naming_file_and_offset() {
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 100);
    let victim = written
        .iter()
        .find(|r| r.position.segment == 2 && r.payload.len() > 10)
        .unwrap()
        .clone();
    let file = segment_path(dir.path(), 2);
    flip_byte(&file, victim.position.offset + RECORD_HEADER_LEN + 5);

    let error = read_journal(dir.path(), ReadMode::Strict).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "corrupt journal record in {} at byte offset {}: checksum mismatch",
            file.display(),
            victim.position.offset
        )
    );
    let scan = read_journal(dir.path(), ReadMode::Salvage).unwrap();
    assert_eq!(scan.records, without(&written, victim.position));
    assert_eq!(scan.salvaged, 1);
    assert_eq!(scan.truncated_tail, None);

    // The writer refuses to start on it in strict mode and salvages on request.
    let error = JournalWriter::open(small_config(dir.path())).unwrap_err();
    assert!(
        matches!(error, JournalError::Corrupt { offset, .. } if offset == victim.position.offset)
    );
    let config = JournalConfig {
        read_mode: ReadMode::Salvage,
        ..small_config(dir.path())
    };
    let (_writer, recovery) = JournalWriter::open(config).unwrap();
    assert_eq!(recovery.records, without(&written, victim.position));
    assert_eq!(recovery.salvaged, 1);
}

#[test]
fn every_flipped_byte_of_a_sealed_record_is_corrupt_at_its_offset_and_salvage_skips_only_it() {
    let original = temp_dir();
    let written = write_records(small_config(original.path()), 100);
    // A record in the middle of segment 2 and the last record of segment 2.
    let in_segment_2: Vec<&StoredRecord> =
        written.iter().filter(|r| r.position.segment == 2).collect();
    let victims = [
        in_segment_2[in_segment_2.len() / 2],
        in_segment_2[in_segment_2.len() - 1],
    ];

    for victim in victims {
        let frame = RECORD_HEADER_LEN + victim.payload.len() as u64;
        for byte in 0..frame {
            let dir = temp_dir();
            copy_segments(original.path(), dir.path());
            let file = segment_path(dir.path(), 2);
            flip_byte(&file, victim.position.offset + byte);

            let (bad_file, offset, reason) =
                corrupt_parts(read_journal(dir.path(), ReadMode::Strict).unwrap_err());
            assert_eq!(
                (bad_file, offset),
                (file.clone(), victim.position.offset),
                "byte {byte}: {reason}"
            );
            let scan = read_journal(dir.path(), ReadMode::Salvage).unwrap();
            assert_eq!(scan.salvaged, 1, "byte {byte}: {reason}");
            assert_eq!(
                scan.records,
                without(&written, victim.position),
                "byte {byte}"
            );
        }
    }
}

#[test]
fn huge_length_field_is_an_error_not_an_allocation() {
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 100);
    let sealed = written.iter().find(|r| r.position.segment == 1).unwrap();
    let sealed_file = segment_path(dir.path(), 1);
    let mut data = fs::read(&sealed_file).unwrap();
    let at = sealed.position.offset as usize;
    data[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    fs::write(&sealed_file, data).unwrap();

    let error = read_journal(dir.path(), ReadMode::Strict).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "corrupt journal record in {} at byte offset {}: record length 4294967280 exceeds the maximum of 67108864 bytes",
            sealed_file.display(),
            sealed.position.offset
        )
    );
    let scan = read_journal(dir.path(), ReadMode::Salvage).unwrap();
    assert_eq!(scan.records, without(&written, sealed.position));
    assert_eq!(scan.salvaged, 1);

    // A plausible length that runs past the end of a sealed segment.
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 100);
    let last_of_1 = written.iter().rfind(|r| r.position.segment == 1).unwrap();
    let file = segment_path(dir.path(), 1);
    let mut data = fs::read(&file).unwrap();
    let at = last_of_1.position.offset as usize;
    data[at..at + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
    fs::write(&file, data).unwrap();
    let (_, offset, reason) =
        corrupt_parts(read_journal(dir.path(), ReadMode::Strict).unwrap_err());
    assert_eq!(offset, last_of_1.position.offset);
    assert!(
        reason.starts_with("record of 1000000 payload bytes runs past the end of the segment"),
        "{reason}"
    );

    // In the newest segment a huge length is a torn tail.
    let newest_last = written.last().unwrap();
    let newest = segment_path(dir.path(), newest_last.position.segment);
    let mut data = fs::read(&newest).unwrap();
    let at = newest_last.position.offset as usize;
    data[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let len = data.len() as u64;
    fs::write(&newest, data).unwrap();
    let scan = read_journal(dir.path(), ReadMode::Salvage).unwrap();
    assert_eq!(
        scan.truncated_tail,
        Some((newest, len - newest_last.position.offset))
    );

    // The writer refuses an oversized payload and stays usable.
    let empty = temp_dir();
    let (mut writer, _) = JournalWriter::open(small_config(empty.path())).unwrap();
    let error = writer
        .append(1, &vec![0; MAX_RECORD_BYTES as usize + 1])
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "journal record of 67108865 bytes exceeds the maximum of 67108864 bytes"
    );
    assert_eq!(writer.stats().records, 0);
    writer.append(1, b"fine").unwrap();
}

#[test]
fn corrupt_header_of_a_sealed_segment_is_corrupt_at_offset_zero() {
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 100);
    let file = segment_path(dir.path(), 2);
    flip_byte(&file, 13);

    let error = read_journal(dir.path(), ReadMode::Strict).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "corrupt journal record in {} at byte offset 0: segment header checksum mismatch",
            file.display()
        )
    );
    let scan = read_journal(dir.path(), ReadMode::Salvage).unwrap();
    let expected: Vec<_> = written
        .iter()
        .filter(|r| r.position.segment != 2)
        .cloned()
        .collect();
    assert_eq!(scan.records, expected);
    assert_eq!(scan.salvaged, 1);
}

#[test]
fn missing_middle_segment_is_corrupt() {
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 100);
    let missing = segment_path(dir.path(), 3);
    fs::remove_file(&missing).unwrap();

    let error = read_journal(dir.path(), ReadMode::Strict).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "corrupt journal record in {} at byte offset 0: segment file missing: sequence numbers jump from 2 to 4",
            missing.display()
        )
    );
    let scan = read_journal(dir.path(), ReadMode::Salvage).unwrap();
    let expected: Vec<_> = written
        .iter()
        .filter(|r| r.position.segment != 3)
        .cloned()
        .collect();
    assert_eq!(scan.records, expected);
    assert_eq!(scan.salvaged, 1);
}

fn open_with_policy(dir: &Path, fsync: FsyncPolicy) -> JournalWriter {
    let config = JournalConfig {
        fsync,
        ..JournalConfig::new(dir)
    };
    JournalWriter::open(config).unwrap().0
}

#[test]
fn always_policy_syncs_once_per_append() {
    let dir = temp_dir();
    let mut writer = open_with_policy(dir.path(), FsyncPolicy::Always);
    let before = writer.stats().fsyncs;

    for i in 0..5 {
        writer.append(1, &payload(i, 100)).unwrap();
        assert_eq!(writer.stats().fsyncs, before + i as u64 + 1);
    }
    assert!(!writer.commit_due().unwrap());
    assert_eq!(writer.stats().fsyncs, before + 5);
    // Each append reached the file before it returned.
    let len = fs::metadata(segment_path(dir.path(), 1)).unwrap().len();
    assert_eq!(len, SEGMENT_HEADER_LEN + 5 * (RECORD_HEADER_LEN + 100));
}

#[test]
fn interval_policy_syncs_only_after_the_byte_threshold() {
    let dir = temp_dir();
    let fsync = FsyncPolicy::Interval {
        every: Duration::from_secs(3600),
        bytes: 1000,
    };
    let mut writer = open_with_policy(dir.path(), fsync);
    let before = writer.stats().fsyncs;

    // 9 records of 109 framed bytes: 981 bytes, under the threshold.
    for i in 0..9 {
        writer.append(1, &payload(i, 100)).unwrap();
        assert!(!writer.commit_due().unwrap());
    }
    assert_eq!(writer.stats().fsyncs, before);
    writer.append(1, &payload(9, 100)).unwrap();
    assert!(writer.commit_due().unwrap());
    assert_eq!(writer.stats().fsyncs, before + 1);
    assert!(!writer.commit_due().unwrap());
    assert_eq!(writer.stats().fsyncs, before + 1);
}

#[test]
fn interval_policy_syncs_only_after_the_interval() {
    let dir = temp_dir();
    let every = Duration::from_millis(10);
    let fsync = FsyncPolicy::Interval {
        every,
        bytes: 4 << 20,
    };
    let mut writer = open_with_policy(dir.path(), fsync);
    let before = writer.stats().fsyncs;
    let synced_at = writer.last_sync;

    writer.append(1, b"pending").unwrap();
    assert_eq!(writer.commit_deadline(), Some(synced_at + every));
    assert!(
        !writer
            .commit_due_at(synced_at + every - Duration::from_nanos(1))
            .unwrap()
    );
    assert_eq!(writer.stats().fsyncs, before);
    assert!(writer.commit_due_at(synced_at + every).unwrap());
    assert_eq!(writer.stats().fsyncs, before + 1);
    assert_eq!(writer.commit_deadline(), None);
    // Nothing pending: nothing to sync, however late it is.
    assert!(!writer.commit_due_at(synced_at + 10 * every).unwrap());
    assert_eq!(writer.stats().fsyncs, before + 1);
}

#[test]
fn never_policy_never_syncs_but_commit_due_writes_to_the_kernel() {
    let dir = temp_dir();
    let mut writer = open_with_policy(dir.path(), FsyncPolicy::Never);
    let before = writer.stats().fsyncs;

    for i in 0..100 {
        writer.append(1, &payload(i, 100)).unwrap();
    }
    let file = segment_path(dir.path(), 1);
    assert_eq!(fs::metadata(&file).unwrap().len(), SEGMENT_HEADER_LEN);
    assert!(writer.commit_due().unwrap());
    assert_eq!(
        fs::metadata(&file).unwrap().len(),
        SEGMENT_HEADER_LEN + 100 * (RECORD_HEADER_LEN + 100)
    );
    assert!(!writer.commit_due().unwrap());
    assert_eq!(writer.stats().fsyncs, before);
    assert_eq!(writer.stats().records, 100);
    assert_eq!(
        writer.stats().bytes_appended,
        100 * (RECORD_HEADER_LEN + 100)
    );
}

#[test]
fn fsync_latencies_are_counted_in_the_histogram() {
    let dir = temp_dir();
    let mut writer = open_with_policy(dir.path(), FsyncPolicy::Always);
    for i in 0..3 {
        writer.append(1, &payload(i, 10)).unwrap();
    }
    let stats = writer.stats();

    assert_eq!(stats.fsync_latency.count(), stats.fsyncs);
    let cumulative: Vec<_> = stats.fsync_latency.cumulative().collect();
    assert_eq!(cumulative.len(), FSYNC_BUCKETS.len() + 1);
    assert_eq!(cumulative.last(), Some(&(None, stats.fsyncs)));
    assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
    assert!(stats.last_fsync.is_some());
    assert!(stats.max_fsync >= stats.last_fsync.unwrap());
}

#[test]
fn checkpoint_in_a_fresh_segment_then_removing_older_segments_compacts() {
    let dir = temp_dir();
    let (mut writer, _) = JournalWriter::open(small_config(dir.path())).unwrap();
    for i in 0..100 {
        writer.append(2, &payload(i, payload_len(i))).unwrap();
    }
    let old_segments = writer.segments();
    assert!(old_segments.len() > 3);

    let fresh = writer.rotate().unwrap();
    assert_eq!(fresh, old_segments.last().unwrap() + 1);
    let checkpoint = writer.append(5, b"checkpoint").unwrap();
    assert_eq!(
        checkpoint,
        Position {
            segment: fresh,
            offset: SEGMENT_HEADER_LEN
        }
    );
    let removed = writer.remove_segments_before(fresh).unwrap();
    assert_eq!(removed, old_segments);
    assert_eq!(writer.segments(), vec![fresh]);
    writer.append(2, b"after").unwrap();
    writer.close().unwrap();

    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    assert_eq!(scan.segments, vec![fresh]);
    let kinds: Vec<_> = scan
        .records
        .iter()
        .map(|r| (r.kind, r.payload.as_slice()))
        .collect();
    assert_eq!(kinds, vec![(5, &b"checkpoint"[..]), (2, &b"after"[..])]);

    // The active segment is never removed.
    let (mut writer, recovery) = JournalWriter::open(small_config(dir.path())).unwrap();
    assert_eq!(recovery.records, scan.records);
    assert_eq!(
        writer.remove_segments_before(u64::MAX).unwrap(),
        vec![fresh]
    );
    assert_eq!(writer.segments(), vec![fresh + 1]);
}

#[test]
fn second_writer_on_the_same_directory_is_busy() {
    let dir = temp_dir();
    let (first, _) = JournalWriter::open(small_config(dir.path())).unwrap();

    let error = JournalWriter::open(small_config(dir.path())).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "journal directory {} is in use by another writer",
            dir.path().display()
        )
    );
    drop(first);
    JournalWriter::open(small_config(dir.path())).unwrap();
}

#[test]
fn io_errors_name_the_operation_and_the_path() {
    let dir = temp_dir();
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, b"").unwrap();

    let error = JournalWriter::open(JournalConfig::new(not_a_dir.join("journal"))).unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "create_dir {}: ",
            not_a_dir.join("journal").display()
        )),
        "{text}"
    );
    let error = read_journal(dir.path().join("absent"), ReadMode::Strict).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "read_dir {}: ",
            dir.path().join("absent").display()
        )),
        "{error}"
    );
}

#[test]
fn leftover_temporary_segment_is_removed_and_other_files_are_ignored() {
    let dir = temp_dir();
    let written = write_records(small_config(dir.path()), 10);
    let tmp = dir.path().join(format!("{}.tmp", segment_file_name(99)));
    fs::write(&tmp, b"half").unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("seg-1.cmj"), b"not 20 digits").unwrap();

    assert_eq!(
        read_journal(dir.path(), ReadMode::Strict).unwrap().records,
        written
    );
    let (_writer, recovery) = JournalWriter::open(small_config(dir.path())).unwrap();
    assert_eq!(recovery.records, written);
    assert!(!tmp.exists());
}

#[test]
fn segment_file_names_have_twenty_digits() {
    assert_eq!(segment_file_name(7), "seg-00000000000000000007.cmj");
    assert_eq!(
        parse_segment_file_name("seg-00000000000000000007.cmj"),
        Some(7)
    );
    assert_eq!(
        parse_segment_file_name(&segment_file_name(u64::MAX)),
        Some(u64::MAX)
    );
    assert_eq!(
        parse_segment_file_name("seg-99999999999999999999.cmj"),
        None
    );
    assert_eq!(parse_segment_file_name("seg-0000000000000000007.cmj"), None);
    assert_eq!(
        parse_segment_file_name("seg-+0000000000000000007.cmj"),
        None
    );
}

/// Segment contents for the fuzz test: arbitrary bytes, or a valid segment
/// with a few bytes overwritten and possibly cut short.
fn segment_bytes() -> impl Strategy<Value = Vec<u8>> {
    let arbitrary = prop::collection::vec(any::<u8>(), 0..600);
    let damaged = (
        prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..80)),
            0..8,
        ),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(records, edits, cut, do_cut)| {
            let mut data = encode_segment_header(1).to_vec();
            for (kind, payload) in &records {
                data.extend_from_slice(&encode_record_header(*kind, payload));
                data.extend_from_slice(payload);
            }
            for (at, value) in edits {
                let at = at.index(data.len());
                data[at] = value;
            }
            if do_cut {
                data.truncate(cut.index(data.len() + 1));
            }
            data
        });
    prop_oneof![arbitrary, damaged]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_segment_bytes_never_panic_the_reader(data in segment_bytes(), sealed in any::<bool>()) {
        let dir = temp_dir();
        fs::write(segment_path(dir.path(), 1), &data).unwrap();
        if sealed {
            fs::write(segment_path(dir.path(), 2), encode_segment_header(2)).unwrap();
        }
        let strict = read_journal(dir.path(), ReadMode::Strict);
        let salvage = read_journal(dir.path(), ReadMode::Salvage);
        // Salvage only fails on I/O, and agrees with a successful strict read.
        let salvage = salvage.unwrap();
        if let Ok(strict) = strict {
            prop_assert_eq!(&strict, &salvage);
        }
        for record in &salvage.records {
            prop_assert!(record.payload.len() <= data.len());
        }
        // Recovery on the same bytes never panics, and leaves a clean journal.
        let config = JournalConfig { read_mode: ReadMode::Salvage, ..small_config(dir.path()) };
        let (writer, recovery) = JournalWriter::open(config).unwrap();
        prop_assert_eq!(&recovery.records, &salvage.records);
        drop(writer);
    }

    #[test]
    fn random_record_sequences_round_trip(
        records in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..600)), 0..60),
        segment_bytes in 24u64..3000,
        buffer_bytes in 1usize..2048,
        interval in any::<bool>(),
    ) {
        let dir = temp_dir();
        let config = JournalConfig {
            fsync: if interval { FsyncPolicy::Interval { every: Duration::ZERO, bytes: 1 } } else { FsyncPolicy::Never },
            segment_bytes,
            buffer_bytes,
            ..JournalConfig::new(dir.path())
        };
        let (mut writer, _) = JournalWriter::open(config.clone()).unwrap();
        let mut positions = Vec::new();
        for (kind, payload) in &records {
            positions.push(writer.append(*kind, payload).unwrap());
            writer.commit_due().unwrap();
        }
        drop(writer); // Drop writes the buffer out, without a sync.

        let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
        let read: Vec<_> = scan.records.iter().map(|r| (r.kind, r.payload.clone())).collect();
        prop_assert_eq!(read, records);
        let read_positions: Vec<_> = scan.records.iter().map(|r| r.position).collect();
        prop_assert_eq!(read_positions, positions.clone());
        prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(scan.truncated_tail, None);
    }
}

/// Appends `n` records to `writer`, handing them to the kernel after every
/// `flush_every`-th one, and checks after each flush that the files read back
/// as exactly what was appended, with no torn tail: the direct-I/O window's
/// partial last block is rewritten many times over.
fn append_and_check_each_flush(
    dir: &Path,
    writer: &mut JournalWriter,
    written: &mut Vec<StoredRecord>,
    n: usize,
    flush_every: usize,
) {
    for i in 0..n {
        let expected = expected_record(
            Position {
                segment: 0,
                offset: 0,
            },
            i,
        );
        let position = writer.append(expected.kind, &expected.payload).unwrap();
        written.push(StoredRecord {
            position,
            ..expected
        });
        if i % flush_every == flush_every - 1 {
            writer.flush().unwrap();
            let scan = read_journal(dir, ReadMode::Strict).unwrap();
            assert_eq!(scan.truncated_tail, None, "after record {i}");
            assert_eq!(scan.records.len(), written.len(), "after record {i}");
            assert!(scan.records == *written, "records differ after record {i}");
            let end = writer.end_position();
            let len = fs::metadata(segment_path(dir, end.segment)).unwrap().len();
            assert_eq!(
                len, end.offset,
                "the file's length is exact after record {i}"
            );
        }
    }
}

#[test]
fn direct_io_appends_read_back_exactly_after_every_flush() {
    let dir = temp_dir();
    let config = JournalConfig {
        segment_bytes: 64 << 10,
        direct_io: true,
        ..small_config(dir.path())
    };
    let (mut writer, _) = JournalWriter::open(config).unwrap();
    assert!(
        writer.direct_io(),
        "the temporary directory's filesystem ({}) reports no direct-I/O alignment",
        dir.path().display()
    );
    // Flushes land at every offset within a block; some records span the
    // 8 KiB window, and the segments rotate.
    let mut written = Vec::new();
    for flush_every in [1, 3, 7, 40] {
        append_and_check_each_flush(dir.path(), &mut writer, &mut written, 400, flush_every);
        assert!(writer.direct_io());
    }
    assert!(writer.segments().len() > 2, "{:?}", writer.segments());
}

#[test]
fn direct_io_is_off_by_default_and_appends_go_through_the_page_cache() {
    let dir = temp_dir();
    let (mut writer, _) = JournalWriter::open(small_config(dir.path())).unwrap();
    assert!(!writer.direct_io());
    append_and_check_each_flush(dir.path(), &mut writer, &mut Vec::new(), 300, 7);
}

#[test]
fn direct_io_records_larger_than_the_window_round_trip() {
    let dir = temp_dir();
    let config = JournalConfig {
        direct_io: true,
        ..small_config(dir.path())
    };
    let (mut writer, _) = JournalWriter::open(config).unwrap();
    assert!(writer.direct_io());
    let big = payload(1, 100_000);
    let position = writer.append(3, &big).unwrap();
    writer.append(4, b"after").unwrap();
    writer.close().unwrap();
    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    assert_eq!(scan.records.len(), 2);
    assert_eq!(scan.records[0].position, position);
    assert_eq!(scan.records[0].payload, big);
    assert_eq!(scan.records[1].payload, b"after");
}

/// `Interval` commits, as under the writer thread, and 4 KiB segments.
fn deferred_seal_config(dir: &Path) -> JournalConfig {
    JournalConfig {
        fsync: FsyncPolicy::INTERVAL,
        segment_bytes: 4096,
        ..JournalConfig::new(dir)
    }
}

#[test]
fn a_deferred_seal_leaves_a_crash_with_the_old_segment_newest_and_runs_in_order() {
    let dir = temp_dir();
    let config = deferred_seal_config(dir.path());
    let (mut writer, _) = JournalWriter::open(config.clone()).unwrap();
    writer.defer_seals();
    let mut first = Vec::new();
    while writer.end_position().segment == 1 {
        first.push(writer.append(5, &payload(first.len(), 300)).unwrap());
    }
    // The record that rotated went into segment 2, under its temporary name.
    let rotated = first.pop().unwrap();
    assert_eq!(rotated.segment, 2);
    assert!(segment_tmp_path(dir.path(), 2).exists());
    assert!(!segment_path(dir.path(), 2).exists());
    let seal = writer.take_seal().expect("the rotation's seal");

    // A crash now: recovery drops the temporary file, and segment 1 is whole.
    let crashed = temp_dir();
    copy_segments(dir.path(), crashed.path());
    fs::copy(
        segment_tmp_path(dir.path(), 2),
        segment_tmp_path(crashed.path(), 2),
    )
    .unwrap();
    let (after_crash, recovery) = JournalWriter::open(JournalConfig {
        dir: crashed.path().to_path_buf(),
        ..config
    })
    .unwrap();
    let positions: Vec<Position> = recovery.records.iter().map(|r| r.position).collect();
    assert_eq!(positions, first);
    assert_eq!(recovery.truncated_tail, None);
    assert!(!segment_tmp_path(crashed.path(), 2).exists());
    drop(after_crash);

    // The seal, run: segment 2 is in place and synced, with both records.
    let fsyncs = writer.stats().fsyncs;
    writer.end_seal(seal.run()).unwrap();
    assert_eq!(writer.stats().fsyncs, fsyncs + 2);
    assert!(segment_path(dir.path(), 2).exists());
    assert!(!segment_tmp_path(dir.path(), 2).exists());
    writer.append(6, b"after the seal").unwrap();
    writer.close().unwrap();
    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    assert_eq!(scan.records.len(), first.len() + 2);
    assert_eq!(scan.records[first.len()].position, rotated);
    assert_eq!(scan.records.last().unwrap().payload, b"after the seal");
}

#[test]
fn a_seal_not_taken_runs_at_close() {
    let dir = temp_dir();
    let config = deferred_seal_config(dir.path());
    let (mut writer, _) = JournalWriter::open(config).unwrap();
    writer.defer_seals();
    for i in 0..40 {
        writer.append(1, &payload(i, 300)).unwrap();
    }
    writer.close().unwrap();
    let scan = read_journal(dir.path(), ReadMode::Strict).unwrap();
    assert_eq!(scan.records.len(), 40);
    assert_eq!(scan.segments, vec![1, 2, 3]);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
