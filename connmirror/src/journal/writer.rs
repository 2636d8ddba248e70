//! Appending: recovery on open, buffering, group commit, rotation, compaction.

use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

mod config;
pub(super) mod direct;
pub(super) mod overlap;
pub(super) mod seal;
mod stats;

pub use config::{FsyncPolicy, JournalConfig, Recovery};
use direct::Direct;
pub use stats::{FSYNC_BUCKETS, FsyncHistogram, JournalStats};

use super::{
    JournalError,
    format::{
        MAX_RECORD_BYTES, SEGMENT_HEADER_LEN, encode_segment_header, encode_split_record_header,
        is_segment_tmp_name, segment_path, segment_tmp_path,
    },
    io_error,
    reader::{JournalReader, Position, StoredRecord, TornTail},
};

/// The segment appends go to.
#[derive(Debug)]
struct Active {
    seq: u64,
    path: PathBuf,
    file: File,
    /// Logical length: header plus every appended record, buffered or not.
    len: u64,
    /// The direct-I/O window, when appends bypass the page cache; else they
    /// go through [`JournalWriter::buf`] and `file`.
    direct: Option<Direct>,
}

/// Appends records to a journal directory. See the module docs for the format
/// and the durability of each [`FsyncPolicy`].
///
/// One writer per directory: [`open`](Self::open) takes an exclusive `flock`
/// on `journal.lock`, held until the writer is dropped. Dropping the writer
/// writes its buffer to the kernel without syncing it; [`close`](Self::close)
/// syncs.
#[derive(Debug)]
pub struct JournalWriter {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    buffer_bytes: usize,
    /// The direct-I/O window size for each new segment, while direct I/O is
    /// on; `None` once off (asked for, or the filesystem lacks it).
    direct_window: Option<usize>,
    active: Active,
    sealed: BTreeSet<u64>,
    buf: Vec<u8>,
    /// Bytes appended since the last `fdatasync` of the active segment.
    unsynced: u64,
    pub(super) last_sync: Instant,
    stats: JournalStats,
    failed: Option<(&'static str, PathBuf)>,
    /// Whether rotations leave their waits on the disk to the caller
    /// (`writer/seal.rs`).
    defer_seals: bool,
    /// The latest rotation's seal, while it has not run.
    sealing: Option<seal::Seal>,
    /// Released (closed) when the writer is dropped.
    _lock: File,
}

impl JournalWriter {
    /// Recovers the directory and opens a new segment for appending.
    ///
    /// Recovery reads every segment as [`super::read_journal`] does, with
    /// [`JournalConfig::read_mode`]. It cuts the newest segment's torn tail and
    /// logs a warning with the file and byte count. It syncs the surviving
    /// newest segment, which is now sealed. Appends then go to a new segment
    /// numbered one above the last, or `1` in an empty directory. A sealed
    /// segment is never reopened.
    ///
    /// # Errors
    ///
    /// [`JournalError::Busy`] when another writer holds the directory,
    /// [`JournalError::Corrupt`] for damage in a sealed segment in strict mode,
    /// and [`JournalError::Io`].
    pub fn open(config: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        let mut records = Vec::new();
        let (writer, mut recovery) = Self::open_with(config, |record| records.push(record))?;
        recovery.records = records;
        Ok((writer, recovery))
    }

    /// [`open`](Self::open), but each recovered record goes to `visit` as it
    /// is read, so that only one segment is held in memory at a time.
    /// [`Recovery::records`] stays empty.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with(
        config: JournalConfig,
        mut visit: impl FnMut(StoredRecord),
    ) -> Result<(Self, Recovery), JournalError> {
        let JournalConfig {
            dir,
            fsync,
            segment_bytes,
            buffer_bytes,
            read_mode,
            direct_io,
        } = config;
        fs::create_dir_all(&dir).map_err(io_error("create_dir", &dir))?;
        let lock = lock_dir(&dir)?;
        let mut stats = JournalStats::default();
        remove_stale_tmp_files(&dir)?;

        let mut reader = JournalReader::open(&dir, read_mode)?;
        for record in reader.by_ref() {
            visit(record?);
        }
        let mut segments = reader.segments().to_vec();
        let torn = reader.torn_tail().cloned();
        let salvaged = reader.salvaged();

        let mut next_seq = segments.last().map_or(1, |&seq| seq.saturating_add(1));
        if let Some(torn) = &torn {
            cut_torn_tail(&dir, torn, &mut stats)?;
            if torn.whole_file {
                segments.retain(|&seq| seq != torn.seq);
                // Reuse the number so the sequence stays contiguous.
                next_seq = torn.seq;
            }
        }
        seal_newest(&dir, &segments, &mut stats)?;
        if next_seq == u64::MAX {
            return Err(JournalError::Corrupt {
                file: segment_path(&dir, next_seq),
                offset: 0,
                reason: "segment sequence numbers exhausted".to_string(),
            });
        }
        let direct_window = direct_io.then_some(buffer_bytes);
        let active = create_segment(&dir, next_seq, direct_window, &mut stats)?;
        log_io_mode(&dir, direct_io, active.direct.is_some());
        let recovery = Recovery {
            records: Vec::new(),
            truncated_tail: torn.map(|t| (t.path, t.bytes)),
            salvaged,
            segments: segments.clone(),
            active_segment: next_seq,
        };
        let writer = Self {
            dir,
            fsync,
            segment_bytes,
            buffer_bytes,
            direct_window: direct_window.filter(|_| active.direct.is_some()),
            active,
            sealed: segments.into_iter().collect(),
            buf: Vec::with_capacity(buffer_bytes),
            unsynced: 0,
            last_sync: Instant::now(),
            stats,
            failed: None,
            defer_seals: false,
            sealing: None,
            _lock: lock,
        };
        Ok((writer, recovery))
    }

    /// Appends one record and returns where it starts. Under
    /// [`FsyncPolicy::Always`] the record is synced before this returns.
    /// Otherwise it is buffered; see [`commit_due`](Self::commit_due).
    ///
    /// If the active segment has reached [`JournalConfig::segment_bytes`],
    /// the record starts a new segment.
    ///
    /// # Errors
    ///
    /// [`JournalError::TooLarge`] for a payload over [`MAX_RECORD_BYTES`]; the
    /// writer is unchanged. [`JournalError::Io`] when a write or sync fails,
    /// after which the writer is stopped ([`JournalError::Failed`]).
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Position, JournalError> {
        self.append_split(kind, payload, &[])
    }

    /// [`append`](Self::append) for a payload held in two parts: the record
    /// written is the one `append` writes for `head` followed by `tail`. The
    /// writer thread uses it to frame a record whose bytes the ring reader
    /// handed over apart from its fields ([`crate::journal::Appender::push_split`]).
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub fn append_split(
        &mut self,
        kind: u8,
        head: &[u8],
        tail: &[u8],
    ) -> Result<Position, JournalError> {
        self.check_failed()?;
        let len = head.len() + tail.len();
        if len > MAX_RECORD_BYTES as usize {
            return Err(JournalError::TooLarge {
                len,
                max: MAX_RECORD_BYTES,
            });
        }
        if self.active.len >= self.segment_bytes && self.active.len > SEGMENT_HEADER_LEN {
            self.rotate()?;
        }
        let position = Position {
            segment: self.active.seq,
            offset: self.active.len,
        };
        let header = encode_split_record_header(kind, head, tail);
        let frame = header.len() + len;
        if self.active.direct.is_none() && self.buf.len() + frame > self.buffer_bytes {
            self.write_out()?;
        }
        for part in [&header[..], head, tail] {
            self.put(part)?;
        }
        let frame = frame as u64;
        self.active.len += frame;
        self.unsynced += frame;
        self.stats.records += 1;
        self.stats.bytes_appended += frame;
        if self.fsync == FsyncPolicy::Always {
            self.flush_and_sync()?;
        }
        Ok(position)
    }

    /// Group commit: call this often, for example after each batch of
    /// appends, or at [`commit_deadline`](Self::commit_deadline).
    ///
    /// * `Interval`: flushes and syncs when records are pending and `every`
    ///   has passed since the last sync or `bytes` were appended since it.
    /// * `Never`: writes the buffer to the kernel, without syncing.
    /// * `Always`: nothing to do.
    ///
    /// Returns whether it wrote or synced anything.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the write or sync fails; the writer is then
    /// stopped.
    pub fn commit_due(&mut self) -> Result<bool, JournalError> {
        self.commit_due_at(Instant::now())
    }

    pub(super) fn commit_due_at(&mut self, now: Instant) -> Result<bool, JournalError> {
        self.check_failed()?;
        match self.fsync {
            FsyncPolicy::Never => {
                let pending = self.pending();
                self.write_out()?;
                Ok(pending)
            }
            FsyncPolicy::Interval { .. } => {
                let due = self.sync_due(now);
                if due {
                    self.flush_and_sync()?;
                }
                Ok(due)
            }
            FsyncPolicy::Always => Ok(false),
        }
    }

    /// When [`commit_due`](Self::commit_due) will next sync under
    /// `Interval`, if records are pending. `None` otherwise, and always for
    /// the other policies.
    pub fn commit_deadline(&self) -> Option<Instant> {
        match self.fsync {
            FsyncPolicy::Interval { every, .. } if self.unsynced > 0 => {
                Some(self.last_sync + every)
            }
            _ => None,
        }
    }

    /// Writes the buffer to the kernel, without syncing.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`]; the writer is then stopped.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        self.check_failed()?;
        self.write_out()
    }

    /// Writes the buffer and `fdatasync`s the active segment, whatever the
    /// policy. Every record appended so far is durable once this returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`]; the writer is then stopped.
    pub fn flush_and_sync(&mut self) -> Result<(), JournalError> {
        self.check_failed()?;
        self.settle_seal()?;
        self.write_out()?;
        if self.unsynced > 0 {
            let Self { active, stats, .. } = self;
            if let Err(error) = timed_sync(&active.file, &active.path, stats) {
                self.failed = Some(("fdatasync", self.active.path.clone()));
                return Err(error);
            }
            self.unsynced = 0;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals the active segment (flush and `fdatasync`) and starts a new one,
    /// returning its sequence number. Write a checkpoint as its first record
    /// and then call [`remove_segments_before`](Self::remove_segments_before)
    /// to compact.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`]; the writer is then stopped.
    pub fn rotate(&mut self) -> Result<u64, JournalError> {
        if self.defer_seals {
            return self.rotate_deferred();
        }
        self.flush_and_sync()?;
        let seq = self.active.seq + 1;
        let new = match create_segment(&self.dir, seq, self.direct_window, &mut self.stats) {
            Ok(new) => new,
            Err(error) => {
                self.failed = Some(("create segment", segment_path(&self.dir, seq)));
                return Err(error);
            }
        };
        self.switch_to(new);
        Ok(seq)
    }

    /// Makes `new` the active segment and the old one sealed; the interval
    /// restarts with nothing unsynced in `new`.
    fn switch_to(&mut self, new: Active) {
        let old = std::mem::replace(&mut self.active, new);
        self.sealed.insert(old.seq);
        self.unsynced = 0;
        self.last_sync = Instant::now();
    }

    /// Deletes the sealed segments numbered below `seq`, oldest first, and
    /// `fsync`s the directory. The active segment is never removed. Returns the
    /// numbers removed.
    ///
    /// Pending records are synced first, so the checkpoint that makes the old
    /// segments redundant is durable before they go.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the sync, a removal or the directory sync
    /// fails. Segments removed before the failure stay removed.
    pub fn remove_segments_before(&mut self, seq: u64) -> Result<Vec<u64>, JournalError> {
        let released = self.release_segments_before(seq)?;
        let removed = released.remove()?;
        self.count_removed(&removed);
        Ok(removed.segments)
    }

    /// [`remove_segments_before`](Self::remove_segments_before) in two steps,
    /// for a caller that deletes the files on another thread: this syncs the
    /// pending records and lets go of the segments below `seq`, and
    /// [`Released::remove`] deletes them. Unlinking a large file can wait on
    /// the disk (a filesystem mounted with `discard` trims it inline), and
    /// the journal's writer thread must not. Report what was removed with
    /// [`count_removed`](Self::count_removed).
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the sync fails.
    pub fn release_segments_before(&mut self, seq: u64) -> Result<Released, JournalError> {
        self.flush_and_sync()?;
        let segments: Vec<u64> = self.sealed.range(..seq).copied().collect();
        for old in &segments {
            self.sealed.remove(old);
        }
        Ok(Released {
            dir: self.dir.clone(),
            segments,
        })
    }

    /// Adds a finished [`Released::remove`] to the counters.
    pub fn count_removed(&mut self, removed: &Removed) {
        self.stats.segments_removed += removed.segments.len() as u64;
        self.stats.dir_fsyncs += u64::from(removed.dir_synced);
    }

    /// Sequence numbers of the segments in the journal, the active one last.
    pub fn segments(&self) -> Vec<u64> {
        self.sealed
            .iter()
            .copied()
            .chain([self.active.seq])
            .collect()
    }

    /// Sequence number of the segment appends go to.
    pub fn active_segment(&self) -> u64 {
        self.active.seq
    }

    /// Where the next record will start, unless it rotates first.
    pub fn end_position(&self) -> Position {
        Position {
            segment: self.active.seq,
            offset: self.active.len,
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether appends to the active segment bypass the page cache
    /// (`O_DIRECT`): asked for with [`JournalConfig::direct_io`] and supported
    /// by the filesystem (`statx` reports its direct-I/O alignment).
    pub fn direct_io(&self) -> bool {
        self.active.direct.is_some()
    }

    /// Counters since open.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Flushes, syncs and closes the journal, returning the final counters.
    ///
    /// # Errors
    ///
    /// As [`flush_and_sync`](Self::flush_and_sync).
    pub fn close(mut self) -> Result<JournalStats, JournalError> {
        self.flush_and_sync()?;
        Ok(self.stats.clone())
    }

    fn check_failed(&self) -> Result<(), JournalError> {
        match &self.failed {
            None => Ok(()),
            Some((op, path)) => Err(JournalError::Failed {
                op,
                path: path.clone(),
            }),
        }
    }

    /// Stops the writer after a failed write on the active segment.
    fn fail(&mut self, op: &'static str, cause: std::io::Error) -> JournalError {
        let path = self.active.path.clone();
        self.failed = Some((op, path.clone()));
        JournalError::Io { op, path, cause }
    }

    /// Adds `part` of a record to the direct-I/O window or the buffer, or
    /// writes it straight to the file (after the buffer) when it would not
    /// fit.
    fn put(&mut self, part: &[u8]) -> Result<(), JournalError> {
        if let Some(direct) = &mut self.active.direct {
            return direct
                .append(part)
                .map_err(|source| self.fail("write", source));
        }
        if self.buf.len() + part.len() <= self.buffer_bytes {
            self.buf.extend_from_slice(part);
            return Ok(());
        }
        self.write_out()?;
        let Self { active, .. } = self;
        if let Err(source) = active.file.write_all(part) {
            return Err(self.fail("write", source));
        }
        Ok(())
    }

    /// Whether appended bytes are still only in this process.
    fn pending(&self) -> bool {
        match &self.active.direct {
            Some(direct) => direct.pending(),
            None => !self.buf.is_empty(),
        }
    }

    /// Hands the buffer (or the direct-I/O window) to the kernel.
    fn write_out(&mut self) -> Result<(), JournalError> {
        if let Some(direct) = &mut self.active.direct {
            return direct
                .flush(&self.active.file)
                .map_err(|source| self.fail("write", source));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let Self { active, buf, .. } = self;
        if let Err(source) = active.file.write_all(buf) {
            return Err(self.fail("write", source));
        }
        buf.clear();
        Ok(())
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        if self.failed.is_none()
            && let Err(error) = self.write_out().and_then(|()| self.settle_seal())
        {
            tracing::warn!("journal: records buffered at drop were lost: {error}");
        }
    }
}

/// Sealed segments a checkpoint made redundant, no longer part of the
/// journal the writer holds, to delete
/// ([`JournalWriter::release_segments_before`]).
#[derive(Debug)]
#[must_use = "the released segments stay on disk until removed"]
pub struct Released {
    dir: PathBuf,
    segments: Vec<u64>,
}

/// What [`Released::remove`] did.
#[derive(Debug, Default)]
pub struct Removed {
    /// The segments deleted, oldest first.
    pub segments: Vec<u64>,
    /// Whether the directory was synced after the deletions.
    pub dir_synced: bool,
}

impl Released {
    /// Deletes the segments oldest first, so a crash part-way leaves a
    /// contiguous run, and `fsync`s the directory.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when a removal or the directory sync fails.
    /// Segments removed before the failure stay removed.
    pub fn remove(self) -> Result<Removed, JournalError> {
        let mut removed = Removed::default();
        for &old in &self.segments {
            let path = segment_path(&self.dir, old);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(cause) => {
                    return Err(JournalError::Io {
                        op: "remove",
                        path,
                        cause,
                    });
                }
            }
            removed.segments.push(old);
        }
        if !removed.segments.is_empty() {
            fsync_dir(&self.dir)?;
            removed.dir_synced = true;
        }
        Ok(removed)
    }
}

/// Cuts the newest segment's torn tail: removes the file when its header is
/// torn, else truncates it to its valid length; syncs the directory and logs
/// a warning with the file and byte count.
fn cut_torn_tail(
    dir: &Path,
    torn: &TornTail,
    stats: &mut JournalStats,
) -> Result<(), JournalError> {
    if torn.whole_file {
        fs::remove_file(&torn.path).map_err(io_error("remove", &torn.path))?;
    } else {
        let file = OpenOptions::new()
            .write(true)
            .open(&torn.path)
            .map_err(io_error("open", &torn.path))?;
        file.set_len(torn.valid_len)
            .map_err(io_error("ftruncate", &torn.path))?;
    }
    sync_dir(dir, stats)?;
    tracing::warn!(
        "journal recovery: cut a torn tail of {} bytes from {} ({})",
        torn.bytes,
        torn.path.display(),
        if torn.whole_file {
            "torn segment header: file removed".to_string()
        } else {
            format!("kept {} bytes", torn.valid_len)
        },
    );
    Ok(())
}

/// Syncs the newest surviving segment of `segments`, which becomes sealed.
/// Its bytes may still sit only in the page cache (a killed process under
/// `Never` or `Interval`), and a sealed segment must never hold a crash
/// artefact.
fn seal_newest(dir: &Path, segments: &[u64], stats: &mut JournalStats) -> Result<(), JournalError> {
    if let Some(&newest) = segments.last() {
        let path = segment_path(dir, newest);
        let file = File::open(&path).map_err(io_error("open", &path))?;
        timed_sync(&file, &path, stats)?;
    }
    Ok(())
}

/// Takes the directory's exclusive writer lock.
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("journal.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Busy {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(cause)) => Err(JournalError::Io {
            op: "flock",
            path,
            cause,
        }),
    }
}

/// Removes `seg-….cmj.tmp` files left by a crash during segment creation.
fn remove_stale_tmp_files(dir: &Path) -> Result<(), JournalError> {
    for entry in fs::read_dir(dir).map_err(io_error("read_dir", dir))? {
        let entry = entry.map_err(io_error("read_dir", dir))?;
        if entry.file_name().to_str().is_some_and(is_segment_tmp_name) {
            let path = entry.path();
            tracing::debug!("journal: removing leftover {}", path.display());
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
    }
    Ok(())
}

/// Creates segment `seq`. It writes and syncs the header under a temporary
/// name, renames the file into place and syncs the directory, so a segment
/// file either has a valid header or does not exist. With `direct_window`,
/// appends then bypass the page cache where the filesystem allows.
fn create_segment(
    dir: &Path,
    seq: u64,
    direct_window: Option<usize>,
    stats: &mut JournalStats,
) -> Result<Active, JournalError> {
    let (active, tmp) = create_segment_file(dir, seq, direct_window)?;
    timed_sync(&active.file, &tmp, stats)?;
    publish_segment(&tmp, &active.path)?;
    sync_dir(dir, stats)?;
    stats.segments_created += 1;
    Ok(active)
}

/// Creates segment `seq` under its temporary name with its header written,
/// not synced: the segment to append to (named by its final path) and the
/// temporary path.
fn create_segment_file(
    dir: &Path,
    seq: u64,
    direct_window: Option<usize>,
) -> Result<(Active, PathBuf), JournalError> {
    let path = segment_path(dir, seq);
    let tmp = segment_tmp_path(dir, seq);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    let header = encode_segment_header(seq);
    file.write_all(&header).map_err(io_error("write", &tmp))?;
    let direct = match direct_window {
        Some(window) => Direct::open(&tmp, &header, window).map_err(io_error("open", &tmp))?,
        None => None,
    };
    let active = Active {
        seq,
        path,
        file,
        len: SEGMENT_HEADER_LEN,
        direct,
    };
    Ok((active, tmp))
}

/// Renames a new segment from `tmp` into place at `path`.
fn publish_segment(tmp: &Path, path: &Path) -> Result<(), JournalError> {
    // rename(2) replaces an existing file; the directory lock rules out a
    // second writer, and this catches a bug.
    if fs::symlink_metadata(path).is_ok() {
        return Err(JournalError::Io {
            op: "create",
            path: path.to_path_buf(),
            cause: std::io::ErrorKind::AlreadyExists.into(),
        });
    }
    fs::rename(tmp, path).map_err(io_error("rename", tmp))
}

/// Says how appends reach the disk, once at open.
fn log_io_mode(dir: &Path, asked: bool, direct: bool) {
    let dir = dir.display();
    match (asked, direct) {
        (_, true) => tracing::info!("journal {dir}: appending with direct I/O (O_DIRECT)"),
        (true, false) => tracing::info!(
            "journal {dir}: the filesystem does not support direct I/O; appending through the page cache"
        ),
        (false, false) => tracing::info!("journal {dir}: appending through the page cache"),
    }
}

/// `fdatasync` (`File::sync_data` on Linux), timed into `stats`.
fn timed_sync(file: &File, path: &Path, stats: &mut JournalStats) -> Result<(), JournalError> {
    let start = Instant::now();
    file.sync_data().map_err(io_error("fdatasync", path))?;
    stats.observe_fsync(start.elapsed());
    Ok(())
}

/// `fsync` on the directory, so that created, renamed and removed entries are
/// durable (ext4 and XFS need this for a new file's name to survive a crash).
fn sync_dir(dir: &Path, stats: &mut JournalStats) -> Result<(), JournalError> {
    fsync_dir(dir)?;
    stats.dir_fsyncs += 1;
    Ok(())
}

/// `fsync` on the directory, uncounted.
fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    let handle = File::open(dir).map_err(io_error("open", dir))?;
    handle.sync_all().map_err(io_error("fsync", dir))
}
