//! The journal's storage layer: checksummed, length-framed records in
//! append-only segment files.
//!
//! This layer knows nothing about what a record means. A record is a `kind`
//! byte and an opaque payload (see [`crate::flow::record`] for the meaning). The
//! layer guarantees three things. Every record read back is byte-for-byte the
//! one that was appended. A crash leaves at most a torn tail in the newest
//! segment, and recovery cuts it away. Damage anywhere else is reported with
//! the file and byte offset, never skipped silently.
//!
//! # Directory layout
//!
//! A data directory holds segment files named
//! `seg-<sequence number, 20 decimal digits, zero-padded>.cmj`, for example
//! `seg-00000000000000000007.cmj`. Sequence numbers are consecutive. Compaction
//! deletes the oldest files, so the first number need not be 1, but a gap
//! between two files is reported as a missing segment. The directory also
//! holds `journal.lock` (the writer's `flock`) and, briefly, a
//! `seg-….cmj.tmp` file while a new segment is created. Other files are
//! ignored.
//!
//! # Segment header: 24 bytes
//!
//! | offset | size | field |
//! | ---: | ---: | --- |
//! | 0 | 8 | magic `b"CMJOURN1"` |
//! | 8 | 4 | format version, `u32` little-endian, currently [`FORMAT_VERSION`] (1) |
//! | 12 | 8 | segment sequence number, `u64` LE. It must equal the number in the file name |
//! | 20 | 4 | CRC32C of bytes 0..20, `u32` LE |
//!
//! # Record: 9 bytes of framing, then the payload
//!
//! Records follow the header back to back, with no padding and no trailer.
//!
//! | offset | size | field |
//! | ---: | ---: | --- |
//! | 0 | 4 | `len`: payload length, `u32` LE, at most [`MAX_RECORD_BYTES`] |
//! | 4 | 4 | `crc`: CRC32C over the kind byte followed by the payload, `u32` LE |
//! | 8 | 1 | `kind` |
//! | 9 | `len` | payload |
//!
//! CRC32C is the Castagnoli polynomial that iSCSI and ext4 metadata use. The
//! `crc32c` crate computes it with the SSE 4.2 / ARMv8 CRC instructions.
//! `len` is not inside the checksum, but it decides which bytes the checksum
//! covers, so a damaged length fails the check as well. A `len` above
//! [`MAX_RECORD_BYTES`], or one that runs past the end of the file, is
//! corruption. The reader never allocates from it.
//!
//! # Reading and recovery
//!
//! [`read_journal`] (or the streaming [`JournalReader`]) returns the records
//! segment by segment, in order, each with its [`Position`]. It never modifies
//! a file. [`JournalWriter::open`] reads the same way, repairs the tail, and
//! then starts a new segment.
//!
//! * **Newest segment** (the highest sequence number present). A record that
//!   fails to parse is a *torn tail*. That covers a partial framing header, a
//!   payload cut short, a length over the maximum, and a checksum mismatch.
//!   Everything from that record to the end of the file is dropped:
//!   [`JournalScan::truncated_tail`] reports the file and byte count, and
//!   `open` truncates the file and logs a `tracing` warning. A header that is
//!   shorter than 24 bytes, or a file that is all zero bytes (its size reached
//!   the disk but its data did not), is torn too: `open` deletes the file.
//!   The newest segment cannot tell bit rot from a torn write. After a power
//!   loss, the page cache may have written back any subset of the pages dirtied
//!   since the last `fdatasync`, so intact records may follow a damaged one.
//!   Keeping them would mean trusting bytes nobody synced.
//! * **Sealed segments** (all others). These were `fdatasync`ed before the
//!   next segment was created, so damage in them is not a crash artefact. In
//!   [`ReadMode::Strict`], any framing or checksum failure is
//!   [`JournalError::Corrupt`], for example
//!   `corrupt journal record in /data/seg-00000000000000000003.cmj at byte offset 4096: checksum mismatch`.
//!   A bad segment header is `Corrupt` at offset 0, and so is a missing
//!   segment number.
//! * [`ReadMode::Salvage`] skips damaged regions instead and counts each one in
//!   [`JournalScan::salvaged`]. A segment with a bad header is skipped whole and
//!   counts 1, and so does each gap in the sequence numbers. Salvage never
//!   rewrites a file, so the next read salvages the same regions again.
//!
//! ## Resynchronising after damage (salvage)
//!
//! After a record at offset `o` fails in a sealed segment, the reader resumes
//! at the first of these that applies:
//!
//! 1. If the record's length field is plausible (at most the maximum, and
//!    inside the file) and only the checksum failed, it tries the end of that
//!    record, `o + 9 + len`. It resumes there when that is the end of the file
//!    or a whole record with a valid checksum starts there. This skips exactly
//!    one record when a payload, kind or checksum byte is damaged.
//! 2. Otherwise it scans forward byte by byte from `o + 1` and resumes at the
//!    first offset where a whole record with a valid checksum parses. A random
//!    9-byte header passes the checksum with probability 2⁻³², but a payload
//!    that *contains* framed records can fool the scan. Each candidate costs a
//!    CRC over its claimed length, so scanning a large damaged region is slow.
//!    Salvage is a rescue tool, not the normal path.
//! 3. If nothing parses, it skips to the end of the segment.
//!
//! Each resynchronisation counts 1 in `salvaged`. This is the skipped record
//! in case 1, or the skipped region, however many records it held, in cases
//! 2 and 3.
//!
//! # Durability of each [`FsyncPolicy`]
//!
//! [`JournalWriter::append`] copies a record into a userspace buffer
//! ([`JournalConfig::buffer_bytes`], 1 MiB by default). The buffer reaches the
//! kernel when it fills, on [`JournalWriter::commit_due`] as described below,
//! and on [`JournalWriter::flush`], [`JournalWriter::flush_and_sync`] and
//! rotation. Under every policy, a segment is `fdatasync`ed before it is
//! sealed. A new segment's header is synced, and the directory `fsync`ed,
//! before the segment takes its name: through [`Appender`] under `Interval`,
//! records go into the new file under its temporary name while the sync
//! thread seals the old segment and then publishes the new one
//! (`writer/seal.rs`), and recovery deletes a temporary file. Recovery also
//! syncs the surviving newest segment before sealing it. Crash damage can
//! therefore only be a torn tail in the newest segment.
//!
//! | policy | process crash (SIGKILL, panic) loses | machine crash or power loss loses |
//! | --- | --- | --- |
//! | `Never` | records appended since the last `commit_due` / `flush` (it writes the buffer to the kernel, no sync) | everything the kernel had not written back yet: unbounded in principle, typically up to `vm.dirty_expire_centisecs` (30 s) |
//! | `Interval { every, bytes }` (default 10 ms / 4 MiB) | records appended since the last sync, i.e. at most `every` (plus the time between `commit_due` calls) or `bytes`, whichever comes first; through [`Appender`], which syncs (and seals rotated segments) on another thread while appends go on, plus one sync's or seal's latency | the same bound |
//! | `Always` | nothing for which `append` returned `Ok` | the same: each `append` is `fdatasync`ed before it returns |
//!
//! `Interval` is group commit. The caller appends freely and calls
//! [`JournalWriter::commit_due`] often, for example after every batch of ring
//! buffer records, or at [`JournalWriter::commit_deadline`]. One `fdatasync`
//! then covers every record since the previous one.
//!
//! # Checkpoints and compaction
//!
//! [`JournalWriter::rotate`] seals the active segment and starts a new one. The
//! caller writes a checkpoint as the first record of the new segment and then
//! calls [`JournalWriter::remove_segments_before`]. That call syncs the
//! checkpoint first, then deletes the older files in ascending order and
//! `fsync`s the directory. A crash part-way through therefore leaves a
//! contiguous run of segments that still starts at a valid record.
//! [`JournalWriter::release_segments_before`] and [`Released::remove`] are
//! the same in two steps: [`Appender`] deletes on a thread of its own, since
//! unlinking can wait on the disk (a `discard` mount trims inline).
//!
//! # Errors after a failed write or sync
//!
//! After a failed `write` or `fdatasync` the writer refuses every further call
//! with [`JournalError::Failed`]. Since Linux 4.13 a failed writeback marks
//! the page clean and reports the error once per file description
//! (`errseq_t`, `mm/filemap.c`; PostgreSQL's "fsyncgate", 2018). A retried
//! `fdatasync` can then succeed while the data never reached the disk. Reopen
//! the journal instead: recovery cuts whatever tail did not make it.
//!
//! # Example
//!
//! ```
//! use connmirror::journal::{JournalConfig, JournalWriter, ReadMode, read_journal};
//!
//! let dir = std::env::temp_dir().join(format!("connmirror-doc-{}", std::process::id()));
//! let (mut writer, recovery) = JournalWriter::open(JournalConfig::new(&dir))?;
//! assert!(recovery.records.is_empty());
//! let first = writer.append(1, b"hello")?;
//! let second = writer.append(2, b"world")?;
//! assert!(first < second);
//! writer.commit_due()?; // group commit: syncs once 10 ms have passed
//! writer.close()?;
//!
//! let scan = read_journal(&dir, ReadMode::Strict)?;
//! assert_eq!(scan.records[1].payload, b"world");
//! assert_eq!(scan.truncated_tail, None);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), connmirror::journal::JournalError>(())
//! ```

use std::{io, path::PathBuf};

use thiserror::Error;

mod appender;
mod format;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use appender::{Appender, BATCH_BYTES, frame};
pub use format::{
    FORMAT_VERSION, MAGIC, MAX_RECORD_BYTES, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
    parse_segment_file_name, segment_file_name, segment_path,
};
pub use reader::{JournalReader, JournalScan, Position, ReadMode, StoredRecord, read_journal};
pub use writer::{
    FSYNC_BUCKETS, FsyncHistogram, FsyncPolicy, JournalConfig, JournalStats, JournalWriter,
    Recovery, Released, Removed,
};

/// Why a journal operation failed.
#[derive(Debug, Error)]
pub enum JournalError {
    /// A system call failed. `op` names it (`fdatasync`, `write`, `rename`, …)
    /// and `path` is the file or directory it was called on.
    #[error("{op} {}: {cause}", .path.display())]
    Io {
        /// The system call or file operation, e.g. `fdatasync`.
        op: &'static str,
        /// The file or directory it was called on.
        path: PathBuf,
        /// What the kernel said: part of the message, not a separate
        /// source, so an error chain names it once.
        cause: io::Error,
    },
    /// A record or segment header failed its checks where no torn tail can
    /// explain it (see the module docs).
    #[error("corrupt journal record in {} at byte offset {offset}: {reason}", .file.display())]
    Corrupt {
        /// The segment file, or for a missing segment the path it should have.
        file: PathBuf,
        /// Byte offset of the bad record (0 for a bad header or missing file).
        offset: u64,
        /// What failed, e.g. `checksum mismatch`.
        reason: String,
    },
    /// [`JournalWriter::append`] was given a payload over [`MAX_RECORD_BYTES`].
    #[error("journal record of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The payload length given.
        len: usize,
        /// The maximum, [`MAX_RECORD_BYTES`].
        max: u32,
    },
    /// Another writer holds the directory's lock.
    #[error("journal directory {} is in use by another writer", .dir.display())]
    Busy {
        /// The data directory.
        dir: PathBuf,
    },
    /// An earlier write or sync failed, so the writer stopped (see the module
    /// docs for why it does not retry).
    #[error(
        "journal writer stopped after {op} {} failed; reopen the journal to recover",
        .path.display()
    )]
    Failed {
        /// The system call that failed.
        op: &'static str,
        /// The file it failed on.
        path: PathBuf,
    },
}

/// Wraps an [`io::Error`] with the operation and path it came from.
fn io_error(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.into();
    move |cause| JournalError::Io { op, path, cause }
}
