//! The writer thread's own helper thread (`journal-sync`) for group commit
//! and rotation that overlap appends: it runs the `fdatasync`s and seals the
//! writer thread hands it, one at a time and in order, while the writer
//! thread goes on writing (see `journal/writer/overlap.rs` for what a sync
//! then covers, and `journal/writer/seal.rs` for a seal's steps).

use std::time::{Duration, Instant};

use super::helper::{Helper, Names};
use crate::journal::{
    JournalError, JournalWriter,
    writer::{
        overlap::{Overlapped, Synced},
        seal::{Seal, Sealed},
    },
};

/// The sync thread's names.
const NAMES: Names = Names {
    thread: "journal-sync",
    spawn: "spawn the sync thread for",
    run: "run the sync thread for",
};

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

/// The writer thread's end of the sync thread. One job runs at a time.
pub(super) struct Syncer {
    helper: Helper<Work, Done>,
}

impl Syncer {
    /// Starts the sync thread for `writer`, whose rotations then seal on it.
    pub(super) fn spawn(writer: &mut JournalWriter) -> Result<Self, JournalError> {
        let helper = Helper::spawn(&NAMES, writer, 1, Work::run)?;
        writer.defer_seals();
        Ok(Self { helper })
    }

    /// Whether a sync or seal is running.
    pub(super) fn in_flight(&self) -> bool {
        self.helper.pending() > 0
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
        if let Some(done) = self.helper.try_done(writer)? {
            finished(writer, done)?;
        }
        if let Some(seal) = writer.take_seal() {
            self.finish(writer)?;
            return self.helper.send(writer, Work::Seal(seal));
        }
        if !self.in_flight() && writer.sync_due(Instant::now()) {
            let sync = writer.begin_sync()?;
            return self.helper.send(writer, Work::Sync(sync));
        }
        Ok(())
    }

    /// Waits for the job in flight, if any, and takes it into account.
    pub(super) fn finish(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        match self.helper.done(writer)? {
            Some(done) => finished(writer, done),
            None => Ok(()),
        }
    }
}

/// Takes a finished job into account.
fn finished(writer: &mut JournalWriter, done: Done) -> Result<(), JournalError> {
    match done {
        Done::Synced(synced) => writer.end_sync(synced),
        Done::Sealed(sealed) => writer.end_seal(sealed),
    }
}
