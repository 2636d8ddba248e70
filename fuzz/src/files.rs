//! The files of the [`journal_dir`](crate::journal_dir) target: a scratch
//! directory per input, on tmpfs where there is one (no disk I/O, fsync is
//! free), and the layout of arbitrary bytes as files in it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use connmirror::journal::segment_file_name;

/// Most files one input lays out.
const MAX_FILES: usize = 8;

/// A directory of its own, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh empty directory, named for this process and a counter.
    pub fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let base = match shm.is_dir() {
            true => shm.to_path_buf(),
            false => std::env::temp_dir(),
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("cm-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The name a selector byte gives a file: segments 0 to 3, a segment's
/// leftover temporary file, or a file that is no segment.
fn name(selector: u8) -> String {
    match selector % 6 {
        n @ 0..=3 => segment_file_name(u64::from(n)),
        4 => format!("{}.tmp", segment_file_name(4)),
        _ => "notes.txt".to_owned(),
    }
}

/// Writes `data` into `dir` as files: each is a selector byte ([`name`]),
/// a little-endian `u16` length, then that many bytes (fewer at the end).
pub fn write(dir: &Path, mut data: &[u8]) {
    for _ in 0..MAX_FILES {
        let Some((&selector, rest)) = data.split_first() else {
            return;
        };
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let path = dir.join(name(selector));
        std::fs::write(&path, &rest[..len]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        data = &rest[len..];
    }
}

/// The bytes [`write`] lays out as `files` (selector, contents).
pub fn encode(files: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (selector, bytes) in files {
        let len = u16::try_from(bytes.len()).expect("a seed file under 64 KiB");
        out.push(*selector);
        out.extend(len.to_le_bytes());
        out.extend(bytes);
    }
    out
}
