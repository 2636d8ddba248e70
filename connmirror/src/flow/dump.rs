//! Dumps (`--dump-dir`): each direction of each flow written to a file as it is
//! reassembled. After a gap a file stops growing, so it is always an exact prefix
//! of its stream. "Dump" means only this in connmirror: a stream's bytes written
//! out (also `journal dump`); a socket's `TCP_REPAIR` checkpoint is a save
//! ([`crate::repair::save`]).

use super::*;

/// Where one direction is written. After a gap the file stops growing, so it is
/// always an exact prefix of the stream, never bytes glued across a hole.
pub(super) struct Dump {
    pub(super) path: PathBuf,
    pub(super) file: BufWriter<File>,
    /// Stream offset where writing stopped because of a gap.
    pub(super) stopped_at: Option<u64>,
    pub(super) written: u64,
}

impl Dump {
    /// Continues the dump file at `path` for a stream recovered at offset
    /// `next` (a restarted daemon, `--journal` and `--dump-dir` the same): the
    /// file is cut to `next` bytes (bytes past it come again and are the same)
    /// and appended to. A file shorter than `next` lacks bytes nobody can
    /// supply, so it stays as it is, an exact prefix, and is not written.
    /// `None` when there is no file: a dump starts only with its stream.
    pub(super) fn continue_at(path: PathBuf, next: u64) -> io::Result<Option<Box<Self>>> {
        let context = |op: &str, err: io::Error| {
            io::Error::new(err.kind(), format!("{op} {}: {err}", path.display()))
        };
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(context("opening", err)),
        };
        let len = file
            .metadata()
            .map_err(|e| context("reading the size of", e))?
            .len();
        let stopped_at = if len >= next {
            file.set_len(next).map_err(|e| context("truncating", e))?;
            None
        } else {
            Some(len)
        };
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.seek(SeekFrom::End(0))
            .map_err(|e| context("seeking in", e))?;
        Ok(Some(Box::new(Self {
            path,
            file,
            stopped_at,
            written: len.min(next),
        })))
    }

    pub(super) fn write(&mut self, chunk: Chunk<'_>) -> io::Result<()> {
        match (chunk, self.stopped_at) {
            (_, Some(_)) => Ok(()),
            (Chunk::Bytes(bytes), None) => {
                self.written += bytes.len() as u64;
                self.file.write_all(bytes)
            }
            (Chunk::Gap(_), None) => {
                self.stopped_at = Some(self.written);
                Ok(())
            }
        }
    }
}
/// The dump file of one direction of a flow.
pub(super) fn dump_path(dir: &Path, key: &FlowKey, direction: Direction) -> PathBuf {
    dir.join(format!("{}.{}", flow_name(key), direction.name()))
}
