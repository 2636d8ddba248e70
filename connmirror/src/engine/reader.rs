//! The ring reader: decodes each record in place (the chunk is borrowed from
//! the ring item, the header read onto the stack: nothing is allocated per
//! record) and applies it to the flow table (and the journal, with live
//! replay's divergences), in slices so the event loop stays responsive. The
//! journal's records are only encoded here; framing, writes and fsyncs run on
//! the journal's own thread ([`crate::journal::Appender`]), so this loop never
//! waits on the disk unless that thread is a whole channel of batches behind.

use super::*;

/// What the ring feeds: the flow table, the reader's counts and the journal.
pub(crate) struct Reader {
    pub(crate) table: FlowTable,
    pub(super) stats: ReaderStats,
    pub(super) journal: Option<Journal>,
    /// Segments and payload bytes by interface index and direction.
    pub(super) captured: BTreeMap<(u32, &'static str), Captured>,
    /// `ts_ns` of the newest record applied.
    pub(super) newest_ns: u64,
    /// On-host mode: where the journal records also go, one outbox per
    /// standby (none otherwise).
    pub(crate) outboxes: Vec<Outbox>,
    /// Live replay: the records also feed the standby's instances.
    pub(crate) live: Option<Live>,
    /// The kernel's flow map as the table follows it ([`Reader::bound_flows`]).
    pub(super) kernel_flows: KernelFlows,
}
/// Segments and payload bytes captured on one interface in one direction.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Captured {
    pub(super) packets: u64,
    pub(super) bytes: u64,
}
impl Reader {
    /// Applies every record waiting in the ring, then hands the changes to the
    /// journal (group commit happens there).
    pub(crate) fn read_all(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        self.read_up_to(ring, usize::MAX).map(drop)
    }

    /// Like [`read_all`](Self::read_all), stopping after `limit` records; returns
    /// whether it stopped there (records may still wait). The event loop
    /// reads in such slices so that a ring refilled as fast as it is read
    /// never starves the loop's other work (acknowledgments, scrapes), and
    /// the changes reach the journal (and the standby) slice by slice.
    pub(crate) fn read_up_to(
        &mut self,
        ring: &mut RingBuf<MapData>,
        limit: usize,
    ) -> anyhow::Result<bool> {
        let Self {
            table,
            stats,
            journal,
            captured,
            newest_ns,
            outboxes,
            live,
            ..
        } = self;
        let mut left = limit;
        while left > 0 {
            let Some(item) = ring.next() else { break };
            left -= 1;
            stats.records += 1;
            match RecordHeader::decode(&item) {
                Ok((header, chunk)) => {
                    count_capture(captured, &header);
                    *newest_ns = (*newest_ns).max(header.ts_ns);
                    table
                        .record(&header, chunk)
                        .context("writing a dump file")?
                }
                Err(err) => {
                    stats.decode_errors += 1;
                    if stats.decode_errors.is_power_of_two() {
                        tracing::warn!(%err, count = stats.decode_errors, "undecodable record");
                    }
                }
            }
        }
        if let Some(live) = live {
            mark_divergent(table, live);
        }
        let records = table.take_records();
        for outbox in outboxes {
            // The ring was just read to its end: nothing of it waits any more.
            // Each outbox encodes the drain itself: what it leaves out
            // depends on what its standby needs whole.
            outbox.ship(&records, 0);
        }
        if let Some(live) = live {
            live.feed(&records);
        }
        if let Some(journal) = journal {
            (journal.write(&records, table)).context("writing the journal")?;
        }
        Ok(left == 0)
    }
}
impl Reader {
    /// Prunes the table's quiet closed flows (unless `prune` is off: a
    /// report lists them), then has the kernel's flow map forget the flows
    /// the table let go and stop capturing those it refused; every
    /// [`SWEEP_ROUNDS`] calls, has the map walked for what the table does
    /// not hold ([`KernelFlows`]). Called once every [`BOUND_EVERY`].
    pub(super) fn bound_flows(&mut self, capture: &mut Capture, prune: bool) -> anyhow::Result<()> {
        if prune {
            self.table.prune_closed();
        }
        let changes = self.table.take_kernel_changes();
        if !changes.forget.is_empty() {
            capture
                .forget_flows(&changes.forget)
                .context("forgetting closed flows in the kernel")?;
        }
        if !changes.refuse.is_empty() {
            capture
                .refuse_flows(&changes.refuse)
                .context("refusing flows in the kernel")?;
        }
        self.kernel_flows.round(&self.table);
        Ok(())
    }
}
/// Hands live replay's new divergences to the table, which journals each
/// behind its flow's records so far (and keeps it for `report.json`). Taken
/// here, on the loop that owns the table, so a live connection's task never
/// waits on the journal.
pub(super) fn mark_divergent(table: &mut FlowTable, live: &Live) {
    for (key, divergence) in live.take_divergences() {
        table.mark_divergent(&key, divergence);
    }
}
/// Counts one record in its interface's and direction's totals: a segment at
/// its first chunk, and every chunk's payload.
pub(super) fn count_capture(
    captured: &mut BTreeMap<(u32, &'static str), Captured>,
    header: &RecordHeader,
) {
    let direction = match Hook::from_u8(header.hook) {
        Some(Hook::TcEgress | Hook::Netfilter) => "egress",
        _ => "ingress",
    };
    let entry = captured.entry((header.ifindex, direction)).or_default();
    entry.packets += u64::from(header.chunk_offset == 0);
    entry.bytes += u64::from(header.chunk_len);
}
impl Reader {
    pub(super) fn families(&self, backlog: &Backlog) -> Vec<Family> {
        let (table, stats) = (&self.table, &self.stats);
        let mut packets = Family::counter(
            "captured_packets",
            "Segments of protected services applied from the ring, by interface and direction.",
            None,
        );
        let mut bytes = Family::counter(
            "captured",
            "Payload bytes of protected services applied from the ring, by interface and direction.",
            Some(Unit::Bytes),
        );
        for ((ifindex, direction), n) in &self.captured {
            let labels = || {
                vec![
                    ("iface", iface_name(*ifindex)),
                    ("direction", (*direction).into()),
                ]
            };
            packets = packets.count(labels(), n.packets);
            bytes = bytes.count(labels(), n.bytes);
        }
        let mut flows = Family::gauge("flows", "Open flows tracked, by readiness.", None);
        for (readiness, n) in table.readiness_counts() {
            flows = flows.set(vec![("readiness", readiness.into())], n as f64);
        }
        let lag = backlog.bytes();
        let lag_seconds = match lag {
            0 => 0.0,
            _ => monotonic_ns().saturating_sub(self.newest_ns) as f64 / 1e9,
        };
        let mut families = vec![
            packets,
            bytes,
            flows,
            Family::counter("ring_records", "Records read from the ring buffer.", None)
                .count(Vec::new(), stats.records),
            Family::counter("ring_decode_errors", "Ring records that did not decode.", None)
                .count(Vec::new(), stats.decode_errors),
            Family::gauge(
                "replication_lag",
                "Bytes the kernel wrote into the ring that the daemon has not applied (and journaled) yet.",
                Some(Unit::Bytes),
            )
            .set(Vec::new(), lag as f64),
            Family::gauge(
                "replication_lag",
                "Age of the newest applied record while records wait in the ring; 0 when caught up.",
                Some(Unit::Seconds),
            )
            .set(Vec::new(), lag_seconds),
        ];
        families.extend(self.bound_families());
        if let Some(journal) = &self.journal {
            families.extend(journal_families(&journal.stats()));
        }
        families
    }

    /// What keeps the flows bounded: evictions, refusals, pruning, and the
    /// kernel's flow map.
    fn bound_families(&self) -> [Family; 5] {
        let table = &self.table;
        [
            Family::counter(
                "flows_evicted",
                "Flows that were not ready evicted under the memory cap.",
                None,
            )
            .count(Vec::new(), table.evicted()),
            Family::counter(
                "flows_refused",
                "New flows refused protection: the memory cap was reached with only ready flows left.",
                None,
            )
            .count(Vec::new(), table.refused()),
            Family::counter(
                "flows_pruned",
                "Flows forgotten: closed once quiet, first seen at their close or mid-stream and quiet for two minutes, replaced by a new connection on their ports, or stale after a failback (not among the connections it moved).",
                None,
            )
                .count(Vec::new(), table.pruned()),
            Family::counter(
                "kernel_flows_swept",
                "Entries removed from the kernel's flow map that the daemon did not hold: refused flows once closed, and flows whose segments it ignored.",
                None,
            )
            .count(Vec::new(), self.kernel_flows.swept()),
            Family::gauge(
                "kernel_flows",
                "Flows in the kernel's flow map (at most --max-flows), at its last walk (every ten seconds).",
                None,
            )
            .set(Vec::new(), self.kernel_flows.count() as f64),
        ]
    }
}
/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    crate::sys::process::monotonic_ns()
}
