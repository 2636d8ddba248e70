//! The byte format: segment header, record framing, file names. Pure functions
//! over byte slices, shared by the reader, the writer and the tests.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// First 8 bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"CMJOURN1";
/// Format version written in the segment header.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header: magic, version, sequence number, CRC32C.
pub const SEGMENT_HEADER_LEN: u64 = 24;
/// Length of a record's framing: `len`, `crc`, `kind`.
pub const RECORD_HEADER_LEN: u64 = 9;
/// Largest payload accepted on append and on read (64 MiB). A length field
/// above it is corruption.
pub const MAX_RECORD_BYTES: u32 = 64 << 20;

const HEADER: usize = SEGMENT_HEADER_LEN as usize;
const FRAME: usize = RECORD_HEADER_LEN as usize;
const NAME_PREFIX: &str = "seg-";
const NAME_SUFFIX: &str = ".cmj";
const NAME_DIGITS: usize = 20;

/// The file name of segment `seq`: `seg-<20 digits>.cmj`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{NAME_PREFIX}{seq:0NAME_DIGITS$}{NAME_SUFFIX}")
}

/// The path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

/// The sequence number in a segment file name, or `None` when `name` is not
/// exactly `seg-<20 digits>.cmj`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name of the temporary file a segment is created under before it is
/// renamed into place.
pub(super) fn segment_tmp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{}.tmp", segment_file_name(seq)))
}

/// Whether `name` is a leftover temporary segment file.
pub(super) fn is_segment_tmp_name(name: &str) -> bool {
    name.strip_suffix(".tmp")
        .and_then(parse_segment_file_name)
        .is_some()
}

/// The 24-byte header of segment `seq`.
pub(super) fn encode_segment_header(seq: u64) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What is wrong with a segment header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HeaderDefect {
    /// The file is shorter than a header.
    Short { have: usize },
    /// The first 8 bytes are not [`MAGIC`].
    Magic,
    /// The header's CRC32C does not match.
    Checksum,
    /// A valid header of a version this code does not read.
    Version(u32),
    /// A valid header naming another segment than the file name does.
    Sequence { found: u64 },
}

impl fmt::Display for HeaderDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { have } => {
                write!(f, "segment header truncated ({have} of {HEADER} bytes)")
            }
            Self::Magic => f.write_str("bad segment magic (not a connmirror journal segment)"),
            Self::Checksum => f.write_str("segment header checksum mismatch"),
            Self::Version(v) => write!(
                f,
                "unsupported segment format version {v} (this build reads {FORMAT_VERSION})"
            ),
            Self::Sequence { found } => write!(
                f,
                "segment header names sequence number {found}, not the one in the file name"
            ),
        }
    }
}

/// Checks the header at the start of `data`, the contents of segment `seq`.
pub(super) fn check_segment_header(data: &[u8], seq: u64) -> Result<(), HeaderDefect> {
    let Some(header) = data.get(..HEADER) else {
        return Err(HeaderDefect::Short { have: data.len() });
    };
    if header[0..8] != MAGIC {
        return Err(HeaderDefect::Magic);
    }
    if crc32c::crc32c(&header[0..20]) != u32_at(header, 20) {
        return Err(HeaderDefect::Checksum);
    }
    let version = u32_at(header, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderDefect::Version(version));
    }
    let found = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    if found != seq {
        return Err(HeaderDefect::Sequence { found });
    }
    Ok(())
}

/// CRC32C of a record: over the kind byte, then the payload.
pub(super) fn record_crc(kind: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload)
}

/// The 9-byte framing in front of `payload`. The caller has checked the length.
#[cfg(test)]
pub(super) fn encode_record_header(kind: u8, payload: &[u8]) -> [u8; FRAME] {
    encode_split_record_header(kind, payload, &[])
}

/// The 9-byte framing in front of a payload held in two parts, `head` then
/// `tail` (the same bytes on disk as one payload of both).
pub(super) fn encode_split_record_header(kind: u8, head: &[u8], tail: &[u8]) -> [u8; FRAME] {
    let len = u32::try_from(head.len() + tail.len())
        .expect("payload length checked against MAX_RECORD_BYTES");
    let crc = crc32c::crc32c_append(record_crc(kind, head), tail);
    let mut header = [0u8; FRAME];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header[8] = kind;
    header
}

/// The result of parsing one record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed<'a> {
    /// A whole record with a valid checksum; the next one starts at `end`.
    Record {
        kind: u8,
        payload: &'a [u8],
        end: usize,
    },
    /// `at` is exactly the end of the data: no more records.
    End,
    /// No valid record starts at `at`.
    Bad(RecordDefect),
}

/// Why no valid record starts at an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RecordDefect {
    /// Fewer than 9 bytes are left.
    ShortHeader { have: usize },
    /// The length field is over [`MAX_RECORD_BYTES`].
    TooLong { len: u32 },
    /// The record would end past the end of the data.
    PastEnd { len: u32, have: usize },
    /// The frame fits but its checksum does not match; the record would end at
    /// `end`.
    Checksum { end: usize },
}

impl fmt::Display for RecordDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShortHeader { have } => {
                write!(f, "truncated record header ({have} of {FRAME} bytes)")
            }
            Self::TooLong { len } => write!(
                f,
                "record length {len} exceeds the maximum of {MAX_RECORD_BYTES} bytes"
            ),
            Self::PastEnd { len, have } => write!(
                f,
                "record of {len} payload bytes runs past the end of the segment ({have} bytes left after its header)"
            ),
            Self::Checksum { .. } => f.write_str("checksum mismatch"),
        }
    }
}

/// Parses the record at byte `at` of a segment's contents `data`. Never
/// panics and never allocates, whatever the bytes. An `at` past the end of
/// `data` reads as a short header.
pub(super) fn parse_record(data: &[u8], at: usize) -> Parsed<'_> {
    if at == data.len() {
        return Parsed::End;
    }
    let rest = data.get(at..).unwrap_or_default();
    let Some(header) = rest.get(..FRAME) else {
        return Parsed::Bad(RecordDefect::ShortHeader { have: rest.len() });
    };
    let len = u32_at(header, 0);
    if len > MAX_RECORD_BYTES {
        return Parsed::Bad(RecordDefect::TooLong { len });
    }
    let body = &rest[FRAME..];
    let Some(payload) = body.get(..len as usize) else {
        return Parsed::Bad(RecordDefect::PastEnd {
            len,
            have: body.len(),
        });
    };
    let end = at + FRAME + payload.len();
    let kind = header[8];
    if record_crc(kind, payload) != u32_at(header, 4) {
        return Parsed::Bad(RecordDefect::Checksum { end });
    }
    Parsed::Record { kind, payload, end }
}

/// Where salvage resumes after the record at `at` failed with `defect`; see
/// "Resynchronising after damage" in the module docs. The result is greater
/// than `at` and at most `data.len()`.
pub(super) fn resync(data: &[u8], at: usize, defect: &RecordDefect) -> usize {
    if let RecordDefect::Checksum { end } = *defect
        && matches!(parse_record(data, end), Parsed::End | Parsed::Record { .. })
    {
        return end;
    }
    (at + 1..data.len())
        .find(|&candidate| matches!(parse_record(data, candidate), Parsed::Record { .. }))
        .unwrap_or(data.len())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
