//! A helper thread of the journal's writer thread: it runs the jobs handed
//! to it one at a time, in order, and hands back what each came to. The sync
//! thread ([`super::syncer`]) and the removal thread ([`super::remover`]) are
//! two, so that waits on the disk do not hold up appends.

use std::{
    sync::mpsc::{self, Receiver, SyncSender, TryRecvError},
    thread::{self, JoinHandle},
};

use crate::journal::{JournalError, JournalWriter, io_error};

/// A helper thread's name, and what it does for the journal's errors.
pub(super) struct Names {
    /// The thread's name (`journal-sync`).
    pub(super) thread: &'static str,
    /// The operation when it cannot be started ("spawn the sync thread for").
    pub(super) spawn: &'static str,
    /// The operation when it is gone ("run the sync thread for").
    pub(super) run: &'static str,
}

/// The writer thread's end of a helper thread.
pub(super) struct Helper<J, D> {
    to: Option<SyncSender<J>>,
    from: Receiver<D>,
    thread: Option<JoinHandle<()>>,
    /// Jobs handed over whose outcome has not been taken yet.
    pending: usize,
    /// The operation named when the thread is gone.
    run_op: &'static str,
}

impl<J: Send + 'static, D: Send + 'static> Helper<J, D> {
    /// Starts the thread named in `names` for `writer`'s journal, running
    /// `run` on each job. Up to `bound` jobs queue for it; its outcomes never
    /// wait, so the helper cannot block on a writer thread that is itself
    /// waiting to hand over a job.
    pub(super) fn spawn(
        names: &Names,
        writer: &JournalWriter,
        bound: usize,
        run: impl Fn(J) -> D + Send + 'static,
    ) -> Result<Self, JournalError> {
        let (to, jobs) = mpsc::sync_channel::<J>(bound);
        let (done, from) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(names.thread.into())
            .spawn(move || {
                for job in jobs {
                    if done.send(run(job)).is_err() {
                        break;
                    }
                }
            })
            .map_err(io_error(names.spawn, writer.dir()))?;
        Ok(Self {
            to: Some(to),
            from,
            thread: Some(thread),
            pending: 0,
            run_op: names.run,
        })
    }

    /// Jobs handed over whose outcome has not been taken yet.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Hands `job` over.
    pub(super) fn send(&mut self, writer: &JournalWriter, job: J) -> Result<(), JournalError> {
        match self.to.as_ref().map(|to| to.send(job)) {
            Some(Ok(())) => {
                self.pending += 1;
                Ok(())
            }
            _ => Err(self.gone(writer)),
        }
    }

    /// The next outcome if one is ready.
    pub(super) fn try_done(&mut self, writer: &JournalWriter) -> Result<Option<D>, JournalError> {
        if self.pending == 0 {
            return Ok(None);
        }
        match self.from.try_recv() {
            Ok(done) => Ok(Some(self.took(done))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(self.gone(writer)),
        }
    }

    /// The next outcome, waiting for it; `None` when nothing is pending.
    pub(super) fn done(&mut self, writer: &JournalWriter) -> Result<Option<D>, JournalError> {
        if self.pending == 0 {
            return Ok(None);
        }
        match self.from.recv() {
            Ok(done) => Ok(Some(self.took(done))),
            Err(_) => Err(self.gone(writer)),
        }
    }

    fn took(&mut self, done: D) -> D {
        self.pending -= 1;
        done
    }

    /// The error for a helper thread that is gone (it only ends when told to).
    fn gone(&self, writer: &JournalWriter) -> JournalError {
        JournalError::Failed {
            op: self.run_op,
            path: writer.dir().to_path_buf(),
        }
    }
}

impl<J, D> Drop for Helper<J, D> {
    /// Lets the thread finish the jobs handed over, then joins it.
    fn drop(&mut self) {
        self.to = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
