//! The writer thread's helper for compaction (`journal-remove`): it deletes
//! the segments a checkpoint made redundant. On a filesystem mounted with
//! `discard`, unlinking a 64 MiB segment trims it inline: an off-CPU profile
//! of the journal benchmark had the writer thread blocked there for 14 % of
//! its time, and the ring reader, waiting on the full batch channel, for 22 %.
//!
//! Removals run in the order they were handed over, each oldest first, so a
//! crash leaves a contiguous run of segments (the journal's own guarantee).

use std::{
    path::Path,
    sync::mpsc::{self, Receiver, Sender, TryRecvError},
    thread::{self, JoinHandle},
};

use super::helper_gone;
use crate::journal::{JournalError, JournalWriter, Released, Removed, io_error};

/// What the writer was doing when this thread went missing, for its error.
const GONE: &str = "run the removal thread for";

/// The writer thread's end of the removal thread.
pub(super) struct Remover {
    to: Option<Sender<Released>>,
    from: Receiver<Result<Removed, JournalError>>,
    thread: Option<JoinHandle<()>>,
    /// Removals handed over and not yet reported back.
    pending: usize,
}

impl Remover {
    /// Starts the removal thread for the journal in `dir`.
    pub(super) fn spawn(dir: &Path) -> Result<Self, JournalError> {
        let (to, jobs) = mpsc::channel::<Released>();
        let (done, from) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("journal-remove".into())
            .spawn(move || {
                for released in jobs {
                    if done.send(released.remove()).is_err() {
                        break;
                    }
                }
            })
            .map_err(io_error("spawn the removal thread for", dir))?;
        Ok(Self {
            to: Some(to),
            from,
            thread: Some(thread),
            pending: 0,
        })
    }

    /// Hands `released` over for deletion.
    pub(super) fn remove(
        &mut self,
        writer: &JournalWriter,
        released: Released,
    ) -> Result<(), JournalError> {
        match self.to.as_ref().map(|to| to.send(released)) {
            Some(Ok(())) => {
                self.pending += 1;
                Ok(())
            }
            _ => Err(helper_gone(writer, GONE)),
        }
    }

    /// Counts the removals finished so far into `writer`'s stats; the first
    /// failed one is the error.
    pub(super) fn poll(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        while self.pending > 0 {
            match self.from.try_recv() {
                Ok(result) => self.finished(writer, result)?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Err(helper_gone(writer, GONE));
                }
            }
        }
        Ok(())
    }

    /// Waits for every removal handed over, and counts them.
    pub(super) fn finish(&mut self, writer: &mut JournalWriter) -> Result<(), JournalError> {
        while self.pending > 0 {
            match self.from.recv() {
                Ok(result) => self.finished(writer, result)?,
                Err(_) => return Err(helper_gone(writer, GONE)),
            }
        }
        Ok(())
    }

    fn finished(
        &mut self,
        writer: &mut JournalWriter,
        result: Result<Removed, JournalError>,
    ) -> Result<(), JournalError> {
        self.pending -= 1;
        let removed = result?;
        tracing::debug!(removed = removed.segments.len(), "journal compaction");
        writer.count_removed(&removed);
        Ok(())
    }
}

impl Drop for Remover {
    /// Lets the thread finish the removals handed over, then joins it.
    fn drop(&mut self) {
        self.to = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
