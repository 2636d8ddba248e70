//! The writer's counters, for metrics: records, bytes, syncs and their
//! latency histogram, segments created and removed.

use std::time::Duration;

#[cfg(doc)]
use crate::journal::JournalWriter;

/// Upper bounds of the [`FsyncHistogram`] buckets. A last, unbounded bucket
/// follows them.
pub const FSYNC_BUCKETS: [Duration; 15] = [
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_micros(2_500_000),
];

/// `fdatasync` latencies counted in the fixed buckets [`FSYNC_BUCKETS`], in
/// the shape of a Prometheus histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsyncHistogram {
    /// `counts[i]` counts the latencies in `(FSYNC_BUCKETS[i-1], FSYNC_BUCKETS[i]]`.
    /// The last entry, `counts[FSYNC_BUCKETS.len()]`, counts those above the
    /// last bound. The buckets are not cumulative.
    pub counts: [u64; FSYNC_BUCKETS.len() + 1],
    /// Sum of all latencies.
    pub sum: Duration,
}

impl FsyncHistogram {
    fn observe(&mut self, latency: Duration) {
        let bucket = FSYNC_BUCKETS.partition_point(|&bound| bound < latency);
        self.counts[bucket] += 1;
        self.sum += latency;
    }

    /// Cumulative counts as Prometheus wants them: `(le, count of latencies
    /// ≤ le)` for each bound, then `(None, total)` for `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let bounds = FSYNC_BUCKETS.iter().copied().map(Some).chain([None]);
        bounds
            .zip(self.counts.iter())
            .scan(0u64, |total, (bound, &count)| {
                *total += count;
                Some((bound, *total))
            })
    }

    /// How many latencies were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Counters of a [`JournalWriter`], for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records appended since open.
    pub records: u64,
    /// Bytes appended since open, framing included (9 bytes per record).
    pub bytes_appended: u64,
    /// `fdatasync` calls on segment files. This counts commits, the sync of a
    /// segment before it is sealed, each new segment's header, and the sync
    /// of the recovered segment on open.
    pub fsyncs: u64,
    /// `fsync` calls on the data directory (segment created or removed).
    pub dir_fsyncs: u64,
    /// Latency of the latest `fdatasync`.
    pub last_fsync: Option<Duration>,
    /// Highest `fdatasync` latency.
    pub max_fsync: Duration,
    /// All `fdatasync` latencies.
    pub fsync_latency: FsyncHistogram,
    /// Segment files created since open, the first active one included.
    pub segments_created: u64,
    /// Segment files removed by [`JournalWriter::remove_segments_before`].
    pub segments_removed: u64,
}

impl JournalStats {
    pub(super) fn observe_fsync(&mut self, latency: Duration) {
        self.fsyncs += 1;
        self.last_fsync = Some(latency);
        self.max_fsync = self.max_fsync.max(latency);
        self.fsync_latency.observe(latency);
    }
}
