//! The writer thread's own helper thread (`journal-sync`) for group commit
//! and rotation that overlap appends: it runs the `fdatasync`s and seals the
//! writer thread hands it, one at a time and in order, while the writer
//! thread goes on writing (see `journal/writer/overlap.rs` for what a sync
//! then covers, and `journal/writer/seal.rs` for a seal's steps).

use std::{
    sync::mpsc::{self, Receiver, SyncSender, TryRecvError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::helper_gone;
use crate::journal::{
    JournalError, JournalWriter, io_error,
    writer::{
        overlap::{Overlapped, Synced},
        seal::{Seal, Sealed},
    },
};

/// What the writer was doing when this thread went missing, for its error.
const GONE: &str = "run the sync thread for";

/// How long the writer thread waits for a job while a sync is in flight
/// before it looks whether the sync has finished.
pub(super) const POLL: Duration = Duration::from_millis(1);

/// A wait on the disk the sync thread runs.
enum Work {
    Sync(Overlapped),
    Seal(Seal),
}

/// What a [`Work`] came to.
enum Done {
    Synced(Synced),
    Sealed(Sealed),
}

impl Work {
    fn run(self) -> Done {
        match self {
            Self::Sync(sync) => Done::Synced(sync.run()),
            Self::Seal(seal) => Done::Sealed(seal.run()),
        }
    }
}

/// The writer thread's end of the sync thread.
pub(super) struct Syncer {
    to: Option<SyncSender<Work>>,
    from: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl Syncer {
    /// Starts the sync thread for `writer`, whose rotations then seal on it.
    pub(super) fn spawn(writer: &mut JournalWriter) -> Result<Self, JournalError> {
        let (to, jobs) = mpsc::sync_channel::<Work>(1);
        let (done, from) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || {
                for work in jobs {
                    if done.send(work.run()).is_err() {
                        break;
                    }
                }
            })
            .map_err(io_error("spawn the sync thread for", writer.dir()))?;
        writer.defer_seals();
        Ok(Self {
            to: Some(to),
            from,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Whether a sync or seal is running.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Group commit for `writer`: takes a finished job into account, then
    /// starts the latest rotation's seal, or else the next sync if it is due
    /// (none while another runs, and a seal waits for a running sync).
    /// Policies other than `Interval` commit inline
    /// ([`JournalWriter::commit_due`]).
    pub(super) fn commit(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        if !writer.overlaps() {
            return writer.commit_due().map(drop);
        }
        if self.in_flight {
            match self.from.try_recv() {
                Ok(done) => self.finished(writer, done)?,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Err(helper_gone(writer, GONE)),
            }
        }
        if let Some(seal) = writer.take_seal() {
            self.finish(writer)?;
            return self.send(writer, Work::Seal(seal));
        }
        if !self.in_flight && writer.sync_due(Instant::now()) {
            let sync = writer.begin_sync()?;
            return self.send(writer, Work::Sync(sync));
        }
        Ok(())
    }

    /// Waits for the job in flight, if any, and takes it into account.
    pub(super) fn finish(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        if !self.in_flight {
            return Ok(());
        }
        match self.from.recv() {
            Ok(done) => self.finished(writer, done),
            Err(_) => Err(helper_gone(writer, GONE)),
        }
    }

    fn send(&mut self, writer: &JournalWriter, work: Work) -> Result<(), JournalError> {
        match self.to.as_ref().map(|to| to.send(work)) {
            Some(Ok(())) => {
                self.in_flight = true;
                Ok(())
            }
            _ => Err(helper_gone(writer, GONE)),
        }
    }

    fn finished(&mut self, writer: &mut JournalWriter, done: Done) -> Result<(), JournalError> {
        self.in_flight = false;
        match done {
            Done::Synced(synced) => writer.end_sync(synced),
            Done::Sealed(sealed) => writer.end_seal(sealed),
        }
    }
}

impl Drop for Syncer {
    /// Lets the sync thread finish the job it runs, then joins it.
    fn drop(&mut self) {
        self.to = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
