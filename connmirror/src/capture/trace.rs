//! `--trace-ebpf`: attach the traced programs (connmirror-ebpf's
//! `src/trace.rs`) instead of the default ones, and turn their aya-log records
//! into the daemon's log lines, target `connmirror::ebpf`.
//!
//! The traced programs run the same capture, then log one line per TCP
//! segment: the hook and interface index, `tracked` (with the service id and
//! direction) or `untracked`, the addresses, sequence number and payload
//! length, and the verdict. They are separate programs, so the default path
//! carries no logging; a traced segment costs microseconds more, for debugging
//! only.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya_log::EbpfLogger;

use crate::capture::{Capture, CaptureError};

/// The traced programs' log ring. Readable when records wait; [`flush`](Self::flush)
/// logs them.
pub struct TraceLog(EbpfLogger<Forward>);

impl std::fmt::Debug for TraceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLog").finish_non_exhaustive()
    }
}

impl TraceLog {
    /// Logs every record waiting in the ring.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

impl AsFd for TraceLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for TraceLog {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Hands aya-log's records to `tracing`, at info level, target `connmirror::ebpf`.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "connmirror::ebpf", "{}", record.args());
    }

    fn flush(&self) {}
}

impl Capture {
    /// Switches to the traced programs for every later attach, and opens their
    /// log ring. Call before [`attach`](Self::attach).
    pub fn trace(&mut self) -> Result<TraceLog, CaptureError> {
        let logger = EbpfLogger::init_with_logger(&mut self.ebpf, Forward)
            .map_err(|err| CaptureError::TraceLog(Box::new(err)))?;
        self.trace = true;
        Ok(TraceLog(logger))
    }
}
