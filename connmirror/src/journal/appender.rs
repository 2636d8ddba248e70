//! The journal's writer thread. The ring reader only encodes records into a
//! batch; framing (CRC32C), writes, group commit and `fdatasync` run on a
//! dedicated thread that owns the [`JournalWriter`], so a slow disk or an
//! fsync never holds up the thread that drains the ring. Under `Interval`
//! that thread hands each sync to one more ([`syncer`]) and goes on writing.
//!
//! Batches travel as [`Bytes`] (the encoded records, handed over without a
//! copy) through a bounded channel. When the writer falls behind, the channel
//! fills and [`Appender::push`] waits: nothing is dropped, the reader stops
//! reading, the ring fills, and the kernel's ring-full policy (`drop` or
//! `pass`) decides, exactly as when the reader itself was slow.
//!
//! Errors surface on the next call after the thread stopped: the first one as
//! the thread saw it, every later one as [`JournalError::Failed`].

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
    },
    thread::{self, JoinHandle},
    time::Instant,
};

use bytes::Bytes;

use super::{JournalError, JournalStats, JournalWriter, RECORD_HEADER_LEN};

mod helper;
mod remover;
mod syncer;
use remover::Remover;
use syncer::Syncer;

/// A batch is sent once its encoded records reach this many bytes.
pub const BATCH_BYTES: usize = 4 << 20;

/// Room allocated for a batch: the record that takes it past
/// [`BATCH_BYTES`] fits too (a segment's chunk is at most 8 KiB), so the
/// batch is not reallocated, and copied, as it closes.
const BATCH_CAPACITY: usize = BATCH_BYTES + (64 << 10);

/// Batches in flight between the reader and the writer thread, besides the
/// one being filled: 64 MiB. A checkpoint pushes every open flow's retained
/// bytes at once (up to twice `--history-cap` per flow under full
/// retention); with 4 batches the reader then waited on the writer and the
/// ring overflowed (journal benchmark, mirrored: 0.36 of an unmirrored
/// stream with 4, 0.43 and 0.46 with 16). Batches queue only while the disk
/// is behind, and a daemon crash loses the ones queued.
const BATCHES_IN_FLIGHT: usize = 16;

/// Bytes before each payload in a batch: the kind and the payload length.
const BATCH_FRAME: usize = 5;

/// Set in a batch frame's length when the record's payload goes on with the
/// next of the batch's tails ([`Appender::push_split`]). Lengths stay far
/// below it ([`super::MAX_RECORD_BYTES`]).
const SPLIT: u32 = 1 << 31;

/// What the writer thread is asked to do.
enum Job {
    /// Append every record of the batch, then commit as the policy says. The
    /// second part holds the tails of the records pushed with
    /// [`Appender::push_split`], in order.
    Append(Bytes, Vec<Bytes>),
    /// Start a new segment: a checkpoint's records follow.
    Rotate,
    /// The checkpoint is complete: sync it and remove the older segments.
    Seal,
    /// Answer once everything sent before has been done.
    Barrier(SyncSender<()>),
}

/// The reader's end of the writer thread: encodes records into batches and
/// hands them over. See the module docs.
pub struct Appender {
    sender: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<Result<JournalStats, JournalError>>>,
    /// The thread's counters after its last job.
    shared: Arc<Mutex<JournalStats>>,
    batch: Vec<u8>,
    /// The tails of the batch's split records ([`push_split`](Self::push_split)).
    tails: Vec<Bytes>,
    /// Batches the thread has written, back for reuse: a fresh 4 MiB per
    /// batch cost the reader a page fault every 4 KiB.
    recycled: Receiver<Vec<u8>>,
    /// Records and framed bytes handed over, counted as the writer counts them.
    records: u64,
    bytes_appended: u64,
    failed: Option<(&'static str, PathBuf)>,
    dir: PathBuf,
}

impl Appender {
    /// Moves `writer` to a new thread (`journal-writer`).
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the thread cannot be started.
    pub fn spawn(writer: JournalWriter) -> Result<Self, JournalError> {
        let dir = writer.dir().to_path_buf();
        let stats = writer.stats().clone();
        let (records, bytes_appended) = (stats.records, stats.bytes_appended);
        let shared = Arc::new(Mutex::new(stats));
        let (sender, receiver) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
        let (recycle, recycled) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || run(writer, &receiver, &recycle, &thread_shared))
            .map_err(super::io_error("spawn the writer thread for", &dir))?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            shared,
            batch: Vec::with_capacity(BATCH_CAPACITY),
            tails: Vec::new(),
            recycled,
            records,
            bytes_appended,
            failed: None,
            dir,
        })
    }

    /// Adds one record: `encode` appends its payload. Sends the batch once it
    /// holds [`BATCH_BYTES`]; waits while the writer thread is that far behind.
    ///
    /// # Errors
    ///
    /// The writer thread stopped on an error.
    pub fn push(
        &mut self,
        kind: u8,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), JournalError> {
        let len = frame(&mut self.batch, kind, encode) - BATCH_FRAME;
        self.added(len)
    }

    /// Like [`push`](Self::push) for a record whose payload is what `encode`
    /// appends followed by the bytes it returns, if any. Those bytes are not
    /// copied here: the writer thread frames the record from both parts.
    /// The ring reader journals each data record's bytes so, rather than
    /// copying them into the batch first.
    ///
    /// # Errors
    ///
    /// The writer thread stopped on an error.
    pub fn push_split(
        &mut self,
        kind: u8,
        encode: impl FnOnce(&mut Vec<u8>) -> Option<Bytes>,
    ) -> Result<(), JournalError> {
        let start = self.batch.len();
        let mut tail = None;
        let head = frame(&mut self.batch, kind, |out| tail = encode(out)) - BATCH_FRAME;
        let Some(tail) = tail.filter(|tail| !tail.is_empty()) else {
            return self.added(head);
        };
        let flagged = head as u32 | SPLIT;
        self.batch[start + 1..start + BATCH_FRAME].copy_from_slice(&flagged.to_le_bytes());
        let len = head + tail.len();
        self.tails.push(tail);
        self.added(len)
    }

    /// Counts a record of `len` payload bytes as handed over, and sends the
    /// batch once it is full.
    fn added(&mut self, len: usize) -> Result<(), JournalError> {
        self.records += 1;
        self.bytes_appended += RECORD_HEADER_LEN + len as u64;
        if self.batch.len() >= BATCH_BYTES {
            self.commit()?;
        }
        Ok(())
    }

    /// Hands the records pushed so far to the writer thread, which appends
    /// them and commits per the fsync policy (group commit runs there, on its
    /// own clock).
    ///
    /// # Errors
    ///
    /// The writer thread stopped on an error.
    pub fn commit(&mut self) -> Result<(), JournalError> {
        if self.batch.is_empty() {
            return self.check();
        }
        let fresh =
            (self.recycled.try_recv()).unwrap_or_else(|_| Vec::with_capacity(BATCH_CAPACITY));
        let batch = std::mem::replace(&mut self.batch, fresh);
        let tails = std::mem::take(&mut self.tails);
        self.send(Job::Append(Bytes::from(batch), tails))
    }

    /// Commits what was pushed, then has the writer start a new segment; the
    /// records pushed until [`seal`](Self::seal) begin it.
    ///
    /// # Errors
    ///
    /// The writer thread stopped on an error.
    pub fn rotate(&mut self) -> Result<(), JournalError> {
        self.commit()?;
        self.send(Job::Rotate)
    }

    /// Commits what was pushed, then has the writer sync the segment started
    /// by [`rotate`](Self::rotate) and delete every older one.
    ///
    /// # Errors
    ///
    /// The writer thread stopped on an error.
    pub fn seal(&mut self) -> Result<(), JournalError> {
        self.commit()?;
        self.send(Job::Seal)
    }

    /// Commits what was pushed and waits until the writer thread has done
    /// everything sent so far.
    ///
    /// # Errors
    ///
    /// The writer thread stopped on an error.
    pub fn wait(&mut self) -> Result<(), JournalError> {
        self.commit()?;
        let (done, answered) = mpsc::sync_channel(1);
        self.send(Job::Barrier(done))?;
        match answered.recv() {
            Ok(()) => Ok(()),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Framed bytes handed over so far (what the writer's
    /// [`JournalStats::bytes_appended`] reaches once it has caught up).
    pub fn bytes_appended(&self) -> u64 {
        self.bytes_appended
    }

    /// The writer's counters, with the records and bytes counted as handed
    /// over (the fsync counts are the thread's, as of its last job).
    pub fn stats(&self) -> JournalStats {
        let mut stats = match self.shared.lock() {
            Ok(stats) => stats.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        stats.records = self.records;
        stats.bytes_appended = self.bytes_appended;
        stats
    }

    /// Commits what was pushed, stops the thread, and closes the writer
    /// (flush and sync); returns its final counters.
    ///
    /// # Errors
    ///
    /// The writer thread stopped on an error, or the final sync failed.
    pub fn close(mut self) -> Result<JournalStats, JournalError> {
        self.commit()?;
        self.sender = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(self.stopped()),
        }
    }

    fn send(&mut self, job: Job) -> Result<(), JournalError> {
        self.check()?;
        match self.sender.as_ref().map(|sender| sender.send(job)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// The thread's error, if it has stopped.
    fn check(&mut self) -> Result<(), JournalError> {
        let finished = self.thread.as_ref().is_none_or(JoinHandle::is_finished);
        match finished {
            true => Err(self.stopped()),
            false => Ok(()),
        }
    }

    /// The error that stopped the thread the first time it is asked for;
    /// [`JournalError::Failed`] after that.
    fn stopped(&mut self) -> JournalError {
        self.sender = None;
        let error = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(error))) => error,
            _ => {
                let (op, path) = (self.failed.clone())
                    .unwrap_or_else(|| ("run the writer thread for", self.dir.clone()));
                return JournalError::Failed { op, path };
            }
        };
        self.failed = Some(match &error {
            JournalError::Io { op, path, .. } | JournalError::Failed { op, path } => {
                (*op, path.clone())
            }
            _ => ("append", self.dir.clone()),
        });
        error
    }
}

impl Drop for Appender {
    /// Hands over what was pushed and waits for the thread to write and sync
    /// it, as [`close`](Appender::close) does, so that a path that drops the
    /// journal (an error) leaves no batch unwritten when the process exits.
    fn drop(&mut self) {
        let _ = self.commit();
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends one record to `out` as a batch holds it: the kind, the payload
/// length (`u32` LE), then the payload `encode` appends. Returns the bytes
/// added. The replication channel frames its records the same way.
pub fn frame(out: &mut Vec<u8>, kind: u8, encode: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    encode(out);
    let len = (out.len() - start - BATCH_FRAME) as u32;
    out[start + 1..start + BATCH_FRAME].copy_from_slice(&len.to_le_bytes());
    out.len() - start
}

/// The writer thread: applies each job, commits on the policy's clock while
/// idle (an `Interval` sync on the [`Syncer`]'s thread, so appends go on
/// meanwhile), and closes the writer once the reader hangs up. Each batch
/// written goes back through `recycle` when no one else holds it.
fn run(
    mut writer: JournalWriter,
    jobs: &Receiver<Job>,
    recycle: &SyncSender<Vec<u8>>,
    shared: &Mutex<JournalStats>,
) -> Result<JournalStats, JournalError> {
    let mut syncer = Syncer::spawn(&mut writer)?;
    let mut remover = Remover::spawn(&writer)?;
    let mut rotated = None;
    loop {
        let deadline = match syncer.in_flight() {
            true => Some(Instant::now() + syncer::POLL),
            false => writer.commit_deadline(),
        };
        let job = match deadline {
            Some(deadline) => {
                match jobs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
        };
        match job {
            Some(Job::Append(batch, tails)) => {
                append_batch(&mut writer, &batch, tails)?;
                if let Ok(batch) = batch.try_into_mut() {
                    let mut batch = Vec::from(batch);
                    batch.clear();
                    let _ = recycle.try_send(batch);
                }
            }
            Some(Job::Rotate) => rotated = Some(writer.rotate()?),
            Some(Job::Seal) => {
                // Releasing syncs the checkpoint first, as a plain seal does.
                syncer.finish(&mut writer)?;
                match rotated.take() {
                    Some(segment) => {
                        let released = writer.release_segments_before(segment)?;
                        remover.remove(&writer, released)?;
                    }
                    None => writer.flush_and_sync()?,
                }
            }
            Some(Job::Barrier(done)) => {
                remover.finish(&mut writer)?;
                let _ = done.send(());
            }
            None => {}
        }
        remover.poll(&mut writer)?;
        syncer.commit(&mut writer)?;
        if let Ok(mut stats) = shared.lock() {
            stats.clone_from(writer.stats());
        }
    }
    syncer.finish(&mut writer)?;
    remover.finish(&mut writer)?;
    writer.close()
}

/// Appends every record of `batch`, each split one with the next of `tails`.
fn append_batch(
    writer: &mut JournalWriter,
    batch: &[u8],
    tails: Vec<Bytes>,
) -> Result<(), JournalError> {
    let mut tails = tails.into_iter();
    let mut at = 0;
    while at + BATCH_FRAME <= batch.len() {
        let kind = batch[at];
        let mut len = [0; 4];
        len.copy_from_slice(&batch[at + 1..at + BATCH_FRAME]);
        let len = u32::from_le_bytes(len);
        let end = at + BATCH_FRAME + (len & !SPLIT) as usize;
        let head = &batch[at + BATCH_FRAME..end];
        match len & SPLIT {
            0 => writer.append(kind, head)?,
            _ => {
                let tail = tails.next().expect("one tail per split record");
                writer.append_split(kind, head, &tail)?
            }
        };
        at = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
