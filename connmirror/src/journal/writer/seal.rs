//! Rotation that does not stop appends. Sealing a segment takes four waits
//! on the disk: the old segment's `fdatasync`, the new one's header, its
//! `rename` into place and the directory's `fsync`. On the writer thread they
//! held appends up at every rotation (every 64 MiB, and at each checkpoint):
//! the journal benchmark ran at 0.33 of an unmirrored stream with 64 MiB
//! segments and at 0.41 with 1 GiB ones.
//!
//! With deferred seals ([`JournalWriter::defer_seals`], which the writer
//! thread turns on under `Interval`), a rotation writes the new segment's
//! header under its temporary name and appends go on into that file at once.
//! The four waits then run on the sync thread, in this order, so the
//! journal's guarantees hold at every step of a crash:
//! 1. `fdatasync` of the old segment: it is whole before anything follows it.
//! 2. `fdatasync` of the new file: its header (and what was appended so far).
//! 3. `rename` to the segment's name: until then recovery removes the
//!    temporary file, and the old segment is the newest (its tail, if torn,
//!    is cut as any newest segment's is).
//! 4. `fsync` of the directory.
//!
//! What a crash can lose grows by the records appended while a seal runs,
//! as with an overlapped sync. Policies other than `Interval`, and writers
//! used without the writer thread, seal inline as before.

use std::{
    fs::File,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{
    JournalError, JournalWriter, create_segment_file, fsync_dir, publish_segment, segment_path,
};

/// A rotation's waits on the disk, to run on another thread.
#[derive(Debug)]
pub(in crate::journal) struct Seal {
    /// A second descriptor of the segment being sealed.
    old: File,
    old_path: PathBuf,
    /// A second descriptor of the new segment, still under `tmp`.
    new: File,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

/// What a [`Seal`] came to.
#[derive(Debug)]
pub(in crate::journal) struct Sealed {
    /// Latencies of the two `fdatasync`s, the ones that completed.
    latencies: Vec<Duration>,
    /// Whether the directory was synced.
    dir_synced: bool,
    result: Result<(), JournalError>,
}

impl Seal {
    /// Runs the four steps (blocking) and says how it went.
    pub(in crate::journal) fn run(self) -> Sealed {
        let mut sealed = Sealed {
            latencies: Vec::new(),
            dir_synced: false,
            result: Ok(()),
        };
        sealed.result = self.steps(&mut sealed);
        sealed
    }

    fn steps(self, sealed: &mut Sealed) -> Result<(), JournalError> {
        for (file, path) in [(&self.old, &self.old_path), (&self.new, &self.tmp)] {
            let started = Instant::now();
            file.sync_data()
                .map_err(super::io_error("fdatasync", path))?;
            sealed.latencies.push(started.elapsed());
        }
        publish_segment(&self.tmp, &self.path)?;
        fsync_dir(&self.dir)?;
        sealed.dir_synced = true;
        Ok(())
    }
}

impl JournalWriter {
    /// Has each later rotation under `Interval` leave its waits on the disk
    /// to the caller: [`take_seal`](Self::take_seal) hands them over, to run
    /// on another thread, and [`end_seal`](Self::end_seal) takes the outcome.
    /// A seal not taken runs inline at the next sync, rotation or drop.
    pub(in crate::journal) fn defer_seals(&mut self) {
        self.defer_seals = self.overlaps();
    }

    /// The seal of the latest rotation, if it has not run.
    pub(in crate::journal) fn take_seal(&mut self) -> Option<Seal> {
        self.sealing.take()
    }

    /// Takes a finished seal into account.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when a step failed; the writer is then stopped.
    pub(in crate::journal) fn end_seal(&mut self, sealed: Sealed) -> Result<(), JournalError> {
        for latency in sealed.latencies {
            self.stats.observe_fsync(latency);
        }
        self.stats.dir_fsyncs += u64::from(sealed.dir_synced);
        if let Err(error) = sealed.result {
            if let JournalError::Io { op, path, .. } = &error {
                self.failed = Some((op, path.clone()));
            }
            return Err(error);
        }
        Ok(())
    }

    /// Runs the seal of the latest rotation here, if it has not run.
    pub(super) fn settle_seal(&mut self) -> Result<(), JournalError> {
        match self.sealing.take() {
            Some(seal) => self.end_seal(seal.run()),
            None => Ok(()),
        }
    }

    /// A rotation with deferred seals: the old segment's bytes go to the
    /// kernel, the new segment starts under its temporary name, and the seal
    /// waits for [`take_seal`](Self::take_seal).
    pub(super) fn rotate_deferred(&mut self) -> Result<u64, JournalError> {
        self.settle_seal()?;
        self.write_out()?;
        let seq = self.active.seq + 1;
        let path = segment_path(&self.dir, seq);
        let (new, tmp) = match create_segment_file(&self.dir, seq, self.direct_window) {
            Ok(created) => created,
            Err(error) => {
                self.failed = Some(("create segment", path));
                return Err(error);
            }
        };
        let seal = match (self.active.file.try_clone(), new.file.try_clone()) {
            (Ok(old), Ok(new_dup)) => Seal {
                old,
                old_path: self.active.path.clone(),
                new: new_dup,
                tmp,
                path,
                dir: self.dir.clone(),
            },
            (Err(source), _) | (_, Err(source)) => return Err(self.fail("dup", source)),
        };
        self.stats.segments_created += 1;
        self.switch_to(new);
        self.sealing = Some(seal);
        Ok(seq)
    }
}
