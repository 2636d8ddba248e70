//! `--trace-ebpf`: a task that logs the traced programs' records as they
//! arrive ([`crate::capture::TraceLog`]), beside the engine's loop.

use std::io;

use anyhow::Context as _;
use tokio::io::{Interest, unix::AsyncFd};

use crate::capture::TraceLog;

/// Spawns the task that flushes `log` whenever its ring is readable. It runs
/// on the engine's runtime until the process exits.
pub(super) fn forward(log: TraceLog) -> anyhow::Result<()> {
    // SAFETY: the TraceLog owns its ring's fd and keeps it open, unchanged,
    // for as long as it lives inside the AsyncFd.
    let mut log = unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) }
        .map_err(io::Error::from)
        .context("registering the eBPF trace log with the reactor")?;
    tracing::info!("--trace-ebpf: the traced programs log every TCP segment they see");
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = log.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
