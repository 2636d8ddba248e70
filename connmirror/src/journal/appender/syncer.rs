//! The writer thread's own helper thread (`journal-sync`) for group commit
//! that overlaps appends: it runs the `fdatasync`s the writer thread hands
//! it, one at a time, while the writer thread goes on writing (see
//! `journal/writer/overlap.rs` for what a sync then covers).

use std::{
    path::Path,
    sync::mpsc::{self, Receiver, SyncSender, TryRecvError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::journal::{
    JournalError, JournalWriter, io_error,
    writer::overlap::{Overlapped, Synced},
};

/// How long the writer thread waits for a job while a sync is in flight
/// before it looks whether the sync has finished.
pub(super) const POLL: Duration = Duration::from_millis(1);

/// The writer thread's end of the sync thread.
pub(super) struct Syncer {
    to: Option<SyncSender<Overlapped>>,
    from: Receiver<Synced>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl Syncer {
    /// Starts the sync thread for the journal in `dir`.
    pub(super) fn spawn(dir: &Path) -> Result<Self, JournalError> {
        let (to, jobs) = mpsc::sync_channel::<Overlapped>(1);
        let (done, from) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || {
                for sync in jobs {
                    if done.send(sync.run()).is_err() {
                        break;
                    }
                }
            })
            .map_err(io_error("spawn the sync thread for", dir))?;
        Ok(Self {
            to: Some(to),
            from,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Whether a sync is running.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Group commit for `writer`: takes a finished sync into account, then
    /// starts the next one if it is due and none is running. Policies other
    /// than `Interval` commit inline ([`JournalWriter::commit_due`]).
    pub(super) fn commit(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        if !writer.overlaps() {
            return writer.commit_due().map(drop);
        }
        if self.in_flight {
            match self.from.try_recv() {
                Ok(synced) => self.finished(writer, synced)?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(stopped(writer)),
            }
        }
        if writer.sync_due(Instant::now()) {
            let sync = writer.begin_sync()?;
            let sent = self.to.as_ref().map(|to| to.send(sync));
            if !matches!(sent, Some(Ok(()))) {
                return Err(stopped(writer));
            }
            self.in_flight = true;
        }
        Ok(())
    }

    /// Waits for the sync in flight, if any, and takes it into account.
    pub(super) fn finish(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        if !self.in_flight {
            return Ok(());
        }
        match self.from.recv() {
            Ok(synced) => self.finished(writer, synced),
            Err(_) => Err(stopped(writer)),
        }
    }

    fn finished(&mut self, writer: &mut JournalWriter, synced: Synced) -> Result<(), JournalError> {
        self.in_flight = false;
        writer.end_sync(synced)
    }
}

impl Drop for Syncer {
    /// Lets the sync thread finish the sync it runs, then joins it.
    fn drop(&mut self) {
        self.to = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The error for a sync thread that is gone (it only ends when told to).
fn stopped(writer: &JournalWriter) -> JournalError {
    JournalError::Failed {
        op: "run the sync thread for",
        path: writer.dir().to_path_buf(),
    }
}
