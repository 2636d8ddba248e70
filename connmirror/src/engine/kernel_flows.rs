//! The kernel's flow map walked off the event loop. A walk costs one or two
//! system calls per entry (about 130 ms for a full map of 131,072), so a
//! thread of its own (`flow-walk`) does it, every [`SWEEP_ROUNDS`] rounds of
//! [`Reader::bound_flows`](super::Reader::bound_flows): it counts the map for
//! the `kernel_flows` gauge and removes what the table does not hold
//! ([`FlowWalker::walk`]). The loop only hands it the keys the table holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};

use anyhow::Context as _;
use connmirror_common::FlowKey;

use super::SWEEP_ROUNDS;
use crate::capture::{Capture, FlowWalker};
use crate::flow::FlowTable;

/// The loop's end of the walking thread.
#[derive(Debug)]
pub(super) struct KernelFlows {
    /// The keys the table held, for the next walk; full while one runs.
    walks: SyncSender<HashSet<FlowKey>>,
    /// Entries at the end of the last walk.
    count: Arc<AtomicU64>,
    /// Entries walks removed.
    swept: Arc<AtomicU64>,
    /// Calls of [`round`](Self::round) so far.
    rounds: u64,
}

impl KernelFlows {
    /// Starts the thread on a handle of its own on `capture`'s flow map.
    pub(super) fn start(capture: &Capture) -> anyhow::Result<Self> {
        let walker = capture.flow_walker()?;
        let (walks, asked) = mpsc::sync_channel(1);
        let count = Arc::new(AtomicU64::new(0));
        let swept = Arc::new(AtomicU64::new(0));
        let (walked, removed) = (Arc::clone(&count), Arc::clone(&swept));
        std::thread::Builder::new()
            .name("flow-walk".into())
            .spawn(move || walk_all(walker, &asked, &walked, &removed))
            .context("starting the flow-walk thread")?;
        Ok(Self {
            walks,
            count,
            swept,
            rounds: 0,
        })
    }

    /// One round: every [`SWEEP_ROUNDS`] (the first at once), hands the
    /// thread the keys `table` holds, unless it is still walking.
    pub(super) fn round(&mut self, table: &FlowTable) {
        self.rounds += 1;
        if self.rounds % SWEEP_ROUNDS == 1 {
            let _ = self.walks.try_send(table.held_keys());
        }
    }

    /// Entries of the map at the end of the last walk.
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Entries walks removed so far.
    pub(super) fn swept(&self) -> u64 {
        self.swept.load(Ordering::Relaxed)
    }
}

/// The thread: one walk per set of keys, until the loop's end is dropped.
fn walk_all(
    mut walker: FlowWalker,
    asked: &mpsc::Receiver<HashSet<FlowKey>>,
    count: &AtomicU64,
    swept: &AtomicU64,
) {
    let mut suspects = HashSet::new();
    for held in asked {
        match walker.walk(|key| held.contains(key), &mut suspects) {
            Ok((entries, removed)) => {
                count.store(entries as u64, Ordering::Relaxed);
                swept.fetch_add(removed as u64, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!("walking the kernel's flow map: {err}"),
        }
    }
}
