//! How a journal is opened for writing: the fsync policy, the configuration,
//! and what recovery on open reports.

use std::{path::PathBuf, str::FromStr, time::Duration};

#[cfg(doc)]
use crate::journal::JournalWriter;
use crate::journal::reader::{ReadMode, StoredRecord};

/// When appended records are made durable with `fdatasync`. The module docs
/// list what a crash can lose under each policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never sync records. [`JournalWriter::commit_due`] writes the buffer to
    /// the kernel and the kernel decides when it reaches the disk.
    Never,
    /// Group commit. [`JournalWriter::commit_due`] flushes and syncs once
    /// `every` has passed since the last sync, or once `bytes` have been
    /// appended since it, whichever comes first.
    Interval {
        /// Longest time between syncs while records are pending (default 10 ms).
        every: Duration,
        /// Most bytes appended between syncs (default 4 MiB).
        bytes: u64,
    },
    /// Flush and sync on every append. Nothing acknowledged is ever lost, and
    /// each append costs one `fdatasync`.
    Always,
}

impl FsyncPolicy {
    /// `Interval` with the defaults: 10 ms, 4 MiB.
    pub const INTERVAL: Self = Self::Interval {
        every: Duration::from_millis(10),
        bytes: 4 << 20,
    };
}

impl Default for FsyncPolicy {
    /// [`FsyncPolicy::INTERVAL`].
    fn default() -> Self {
        Self::INTERVAL
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;

    /// `never`, `interval` (with the default interval and byte count) or
    /// `always`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" => Ok(Self::Never),
            "interval" => Ok(Self::INTERVAL),
            "always" => Ok(Self::Always),
            other => Err(format!(
                "unknown fsync policy {other:?} (expected never, interval or always)"
            )),
        }
    }
}

/// How to open a journal for writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// The data directory. It is created if missing.
    pub dir: PathBuf,
    /// When appended records are synced.
    pub fsync: FsyncPolicy,
    /// The next append starts a new segment once the active one holds this
    /// many bytes (default 64 MiB). A segment can therefore exceed it by up to
    /// one record.
    pub segment_bytes: u64,
    /// Size of the userspace write buffer (default 1 MiB). Records larger than
    /// this bypass it.
    pub buffer_bytes: usize,
    /// How recovery treats damage in sealed segments.
    pub read_mode: ReadMode,
    /// Append with direct I/O (`O_DIRECT`), bypassing the page cache, where
    /// the filesystem supports it. Off by default: see
    /// `journal/writer/direct.rs` for when it pays. [`JournalWriter::direct_io`]
    /// says whether it is in use.
    pub direct_io: bool,
}

impl JournalConfig {
    /// Defaults for `dir`: interval fsync (10 ms / 4 MiB), 64 MiB segments,
    /// a 1 MiB buffer, strict recovery, appends through the page cache.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: FsyncPolicy::default(),
            segment_bytes: 64 << 20,
            buffer_bytes: 1 << 20,
            read_mode: ReadMode::Strict,
            direct_io: false,
        }
    }
}

/// What [`JournalWriter::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Every intact record, in order. It stays empty for
    /// [`JournalWriter::open_with`], which hands the records to its visitor.
    pub records: Vec<StoredRecord>,
    /// The torn tail cut from the newest segment, as the file and the bytes
    /// cut. A torn header removes the whole file.
    pub truncated_tail: Option<(PathBuf, u64)>,
    /// Damaged records or regions skipped ([`ReadMode::Salvage`] only).
    pub salvaged: u64,
    /// The segments left after repair, ascending. The new active segment is
    /// not included.
    pub segments: Vec<u64>,
    /// The segment that appends now go to.
    pub active_segment: u64,
}
