//! Reading a journal directory: segment listing, record iteration, torn-tail
//! detection and salvage. Never modifies a file.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{
    JournalError,
    format::{
        RecordDefect, SEGMENT_HEADER_LEN, check_segment_header, parse_record,
        parse_segment_file_name, resync, segment_path,
    },
    io_error,
};

/// Where a record starts: its segment's sequence number and the byte offset of
/// its framing header in that file. Positions order like the journal:
/// segment first, then offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Sequence number of the segment file.
    pub segment: u64,
    /// Byte offset of the record in the segment file (at least
    /// [`SEGMENT_HEADER_LEN`]).
    pub offset: u64,
}

/// One record as stored: where it is, its kind byte, and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Where the record starts.
    pub position: Position,
    /// The kind byte given to [`super::JournalWriter::append`].
    pub kind: u8,
    /// The payload given to [`super::JournalWriter::append`].
    pub payload: Vec<u8>,
}

/// What to do with damage in sealed segments (the newest segment's damage is
/// always a torn tail; see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Stop with [`JournalError::Corrupt`] at the first damaged record.
    #[default]
    Strict,
    /// Skip damaged records and count them in [`JournalScan::salvaged`].
    Salvage,
}

/// Everything [`read_journal`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalScan {
    /// All records, in journal order.
    pub records: Vec<StoredRecord>,
    /// The newest segment's torn tail, as the segment file and the number of
    /// bytes recovery would cut off. The whole file for a torn header.
    pub truncated_tail: Option<(PathBuf, u64)>,
    /// Damaged records or regions skipped in [`ReadMode::Salvage`] (see the
    /// module docs for how they are counted).
    pub salvaged: u64,
    /// Sequence numbers of the segment files found, ascending.
    pub segments: Vec<u64>,
}

/// Reads every record of the journal in `dir`, in order. Never modifies a file.
///
/// The whole journal is held in memory; [`JournalReader`] streams it instead.
///
/// # Errors
///
/// [`JournalError::Io`] when the directory or a segment cannot be read, and
/// [`JournalError::Corrupt`] for damage outside the newest segment's tail in
/// [`ReadMode::Strict`].
pub fn read_journal(dir: impl AsRef<Path>, mode: ReadMode) -> Result<JournalScan, JournalError> {
    let mut reader = JournalReader::open(dir, mode)?;
    let records = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok(JournalScan {
        records,
        truncated_tail: reader.truncated_tail().map(|(p, n)| (p.to_path_buf(), n)),
        salvaged: reader.salvaged(),
        segments: reader.segments().to_vec(),
    })
}

/// The newest segment's torn tail, with what the writer needs to cut it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TornTail {
    pub seq: u64,
    pub path: PathBuf,
    /// Bytes to keep.
    pub valid_len: u64,
    /// Bytes to cut.
    pub bytes: u64,
    /// The header itself is torn: the file goes.
    pub whole_file: bool,
}

/// A streaming reader: an iterator over the records of a journal directory
/// that holds one segment in memory at a time.
///
/// Iteration stops after the first error. Once it has ended,
/// [`truncated_tail`](Self::truncated_tail) and [`salvaged`](Self::salvaged)
/// are final.
#[derive(Debug)]
pub struct JournalReader {
    dir: PathBuf,
    mode: ReadMode,
    segments: Vec<u64>,
    next_segment: usize,
    current: Option<LoadedSegment>,
    torn: Option<TornTail>,
    salvaged: u64,
    finished: bool,
}

#[derive(Debug)]
struct LoadedSegment {
    seq: u64,
    path: PathBuf,
    data: Vec<u8>,
    pos: usize,
    newest: bool,
}

impl JournalReader {
    /// Lists the segments in `dir`; records are read as the iterator advances.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the directory cannot be listed.
    pub fn open(dir: impl AsRef<Path>, mode: ReadMode) -> Result<Self, JournalError> {
        let dir = dir.as_ref().to_path_buf();
        let segments = list_segments(&dir)?;
        Ok(Self {
            dir,
            mode,
            segments,
            next_segment: 0,
            current: None,
            torn: None,
            salvaged: 0,
            finished: false,
        })
    }

    /// Sequence numbers of the segment files found, ascending.
    pub fn segments(&self) -> &[u64] {
        &self.segments
    }

    /// The newest segment's torn tail (file, bytes to cut), once reached.
    pub fn truncated_tail(&self) -> Option<(&Path, u64)> {
        self.torn.as_ref().map(|t| (t.path.as_path(), t.bytes))
    }

    /// Damaged records or regions skipped so far in [`ReadMode::Salvage`].
    pub fn salvaged(&self) -> u64 {
        self.salvaged
    }

    pub(super) fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Loads the next segment into `current`; `Ok(false)` when none is left.
    fn load_next(&mut self) -> Result<bool, JournalError> {
        let Self {
            dir,
            mode,
            segments,
            next_segment,
            current,
            torn,
            salvaged,
            ..
        } = self;
        let index = *next_segment;
        let Some(&seq) = segments.get(index) else {
            return Ok(false);
        };
        *next_segment += 1;
        if let Some(&prev) = index.checked_sub(1).and_then(|i| segments.get(i)) {
            check_contiguous(dir, *mode, prev, seq, salvaged)?;
        }
        let path = segment_path(dir, seq);
        let data = fs::read(&path).map_err(io_error("read", &path))?;
        let newest = index + 1 == segments.len();
        match check_segment_header(&data, seq) {
            Ok(()) => {
                *current = Some(LoadedSegment {
                    seq,
                    path,
                    data,
                    pos: SEGMENT_HEADER_LEN as usize,
                    newest,
                });
            }
            // A segment is created under a temporary name and renamed once its
            // header is synced, so a torn header needs a file system that
            // kept the size but not the data (zeros) or a foreign writer.
            Err(_) if newest && torn_header(&data) => {
                *torn = Some(TornTail {
                    seq,
                    path,
                    valid_len: 0,
                    bytes: data.len() as u64,
                    whole_file: true,
                });
            }
            Err(defect) => skip_segment(*mode, path, &defect, salvaged)?,
        }
        Ok(true)
    }
}

impl Iterator for JournalReader {
    type Item = Result<StoredRecord, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let Some(segment) = self.current.as_mut() else {
                match self.load_next() {
                    Ok(true) => continue,
                    Ok(false) => self.finished = true,
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(error));
                    }
                }
                continue;
            };
            let at = segment.pos;
            let defect = match parse_record(&segment.data, at) {
                super::format::Parsed::Record { kind, payload, end } => {
                    let record = StoredRecord {
                        position: Position {
                            segment: segment.seq,
                            offset: at as u64,
                        },
                        kind,
                        payload: payload.to_vec(),
                    };
                    segment.pos = end;
                    return Some(Ok(record));
                }
                super::format::Parsed::End => {
                    self.current = None;
                    continue;
                }
                super::format::Parsed::Bad(defect) => defect,
            };
            if segment.newest {
                let len = segment.data.len() as u64;
                self.torn = Some(TornTail {
                    seq: segment.seq,
                    path: segment.path.clone(),
                    valid_len: at as u64,
                    bytes: len - at as u64,
                    whole_file: false,
                });
                self.current = None;
                continue;
            }
            match self.mode {
                ReadMode::Strict => {
                    self.finished = true;
                    return Some(Err(corrupt(&segment.path, at, &defect)));
                }
                ReadMode::Salvage => {
                    let to = resync(&segment.data, at, &defect);
                    tracing::warn!(
                        "journal salvage: skipped bytes {at}..{to} of {} ({defect})",
                        segment.path.display()
                    );
                    segment.pos = to;
                    self.salvaged += 1;
                }
            }
        }
        None
    }
}

/// Fails (strict) or counts a salvaged defect (salvage) when segment `seq`
/// does not follow `prev`: a segment file in between is missing.
fn check_contiguous(
    dir: &Path,
    mode: ReadMode,
    prev: u64,
    seq: u64,
    salvaged: &mut u64,
) -> Result<(), JournalError> {
    if prev.checked_add(1) == Some(seq) {
        return Ok(());
    }
    let missing = segment_path(dir, prev + 1);
    let reason = format!("segment file missing: sequence numbers jump from {prev} to {seq}");
    match mode {
        ReadMode::Strict => {
            return Err(JournalError::Corrupt {
                file: missing,
                offset: 0,
                reason,
            });
        }
        ReadMode::Salvage => {
            tracing::warn!("journal salvage: {}: {reason}", missing.display());
            *salvaged += 1;
        }
    }
    Ok(())
}

/// Whether the newest segment's bad header is torn rather than damaged:
/// shorter than a header, or all zeros.
fn torn_header(data: &[u8]) -> bool {
    (data.len() as u64) < SEGMENT_HEADER_LEN || data.iter().all(|&b| b == 0)
}

/// Fails (strict) or skips the segment at `path` and counts it (salvage)
/// when its header has `defect`.
fn skip_segment(
    mode: ReadMode,
    path: PathBuf,
    defect: &impl std::fmt::Display,
    salvaged: &mut u64,
) -> Result<(), JournalError> {
    match mode {
        ReadMode::Strict => {
            return Err(JournalError::Corrupt {
                file: path,
                offset: 0,
                reason: defect.to_string(),
            });
        }
        ReadMode::Salvage => {
            tracing::warn!(
                "journal salvage: skipped segment {} ({defect})",
                path.display()
            );
            *salvaged += 1;
        }
    }
    Ok(())
}

fn corrupt(path: &Path, at: usize, defect: &RecordDefect) -> JournalError {
    JournalError::Corrupt {
        file: path.to_path_buf(),
        offset: at as u64,
        reason: defect.to_string(),
    }
}

/// Sequence numbers of the segment files in `dir`, ascending.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("read_dir", dir))? {
        let entry = entry.map_err(io_error("read_dir", dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push(seq);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}
