//! The writer thread's helper for compaction (`journal-remove`): it deletes
//! the segments a checkpoint made redundant. On a filesystem mounted with
//! `discard`, unlinking a 64 MiB segment trims it inline: an off-CPU profile
//! of the journal benchmark had the writer thread blocked there for 14 % of
//! its time, and the ring reader, waiting on the full batch channel, for 22 %.
//!
//! Removals run in the order they were handed over, each oldest first, so a
//! crash leaves a contiguous run of segments (the journal's own guarantee).

use super::helper::{Helper, Names};
use crate::journal::{JournalError, JournalWriter, Released, Removed};

/// The removal thread's names.
const NAMES: Names = Names {
    thread: "journal-remove",
    spawn: "spawn the removal thread for",
    run: "run the removal thread for",
};

/// Removals that may queue before the writer thread waits to hand over one
/// more (one per checkpoint).
const QUEUED: usize = 4;

/// The writer thread's end of the removal thread.
pub(super) struct Remover {
    helper: Helper<Released, Result<Removed, JournalError>>,
}

impl Remover {
    /// Starts the removal thread for `writer`'s journal.
    pub(super) fn spawn(writer: &JournalWriter) -> Result<Self, JournalError> {
        let helper = Helper::spawn(&NAMES, writer, QUEUED, Released::remove)?;
        Ok(Self { helper })
    }

    /// Hands `released` over for deletion.
    pub(super) fn remove(
        &mut self,
        writer: &JournalWriter,
        released: Released,
    ) -> Result<(), JournalError> {
        self.helper.send(writer, released)
    }

    /// Counts the removals finished so far into `writer`'s stats; the first
    /// failed one is the error.
    pub(super) fn poll(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        while let Some(result) = self.helper.try_done(writer)? {
            finished(writer, result)?;
        }
        Ok(())
    }

    /// Waits for every removal handed over, and counts them.
    pub(super) fn finish(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        while let Some(result) = self.helper.done(writer)? {
            finished(writer, result)?;
        }
        Ok(())
    }
}

/// Counts a finished removal into `writer`'s stats.
fn finished(
    writer: &mut JournalWriter,
    result: Result<Removed, JournalError>,
) -> Result<(), JournalError> {
    let removed = result?;
    tracing::debug!(removed = removed.segments.len(), "journal compaction");
    writer.count_removed(&removed);
    Ok(())
}
