//! Group commit that does not stop appends: under `Interval`, the writer
//! thread hands each due `fdatasync` to a second thread ([`Overlapped`]) and
//! keeps writing while the disk flushes. Waiting for each sync in turn held
//! appends up for its whole latency (about 3 ms per 4 MiB here), and with them
//! the ring reader once the batches in flight ran out.
//!
//! A sync covers what was written to the kernel when it started; the bytes
//! appended meanwhile stay unsynced until the next one. At most one is in
//! flight, so the durability bound of `Interval` grows by one sync's latency.

use std::{
    fs::File,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{FsyncPolicy, JournalError, JournalWriter};

/// One `fdatasync` of the active segment, to run on another thread.
#[derive(Debug)]
pub(in crate::journal) struct Overlapped {
    /// A second descriptor of the segment (the same open file).
    file: File,
    path: PathBuf,
    seq: u64,
    /// The segment's logical length when the sync started.
    upto: u64,
}

/// What an [`Overlapped`] sync came to.
#[derive(Debug)]
pub(in crate::journal) struct Synced {
    sync: Overlapped,
    latency: Duration,
    result: std::io::Result<()>,
}

impl Overlapped {
    /// Runs the sync (blocking) and says how it went.
    pub(in crate::journal) fn run(self) -> Synced {
        let started = Instant::now();
        let result = self.file.sync_data();
        Synced {
            sync: self,
            latency: started.elapsed(),
            result,
        }
    }
}

impl JournalWriter {
    /// Whether an `Interval` commit is due at `now`: records are pending and
    /// `every` has passed since the last sync or `bytes` were appended since.
    /// Always false under the other policies.
    pub(in crate::journal) fn sync_due(&self, now: Instant) -> bool {
        match self.fsync {
            FsyncPolicy::Interval { every, bytes } => {
                self.unsynced > 0
                    && (now.saturating_duration_since(self.last_sync) >= every
                        || self.unsynced >= bytes)
            }
            _ => false,
        }
    }

    /// Writes the buffer to the kernel and returns a sync of everything
    /// appended so far, for another thread to run. The interval restarts now.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the write or the `dup` fails; the writer is
    /// then stopped.
    pub(in crate::journal) fn begin_sync(&mut self) -> Result<Overlapped, JournalError> {
        self.check_failed()?;
        self.write_out()?;
        let file = match self.active.file.try_clone() {
            Ok(file) => file,
            Err(source) => return Err(self.fail("dup", source)),
        };
        self.last_sync = Instant::now();
        Ok(Overlapped {
            file,
            path: self.active.path.clone(),
            seq: self.active.seq,
            upto: self.active.len,
        })
    }

    /// Takes a finished sync into account: its latency, and the bytes it
    /// made durable if they are still in the active segment.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the sync failed; the writer is then stopped
    /// (see the module docs of [`crate::journal`] on failed syncs).
    pub(in crate::journal) fn end_sync(&mut self, synced: Synced) -> Result<(), JournalError> {
        let Synced {
            sync,
            latency,
            result,
        } = synced;
        if let Err(cause) = result {
            self.failed = Some(("fdatasync", sync.path.clone()));
            return Err(JournalError::Io {
                op: "fdatasync",
                path: sync.path,
                cause,
            });
        }
        self.stats.observe_fsync(latency);
        if sync.seq == self.active.seq {
            self.unsynced = self.unsynced.min(self.active.len - sync.upto);
        }
        Ok(())
    }
}

impl JournalWriter {
    /// Whether commits overlap appends: under `Interval` only. `Always`
    /// syncs each record before `append` returns, and `Never` never syncs.
    pub(in crate::journal) fn overlaps(&self) -> bool {
        matches!(self.fsync, FsyncPolicy::Interval { .. })
    }
}
