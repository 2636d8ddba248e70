//! The engine's Prometheus families: kernel counters, per-interface capture counts and the journal's.

use connmirror_common::counter::Unit as CounterUnit;

use super::*;

pub(super) fn journal_families(stats: &JournalStats) -> [Family; 3] {
    let latency = &stats.fsync_latency;
    let bounds = FSYNC_BUCKETS.iter().map(Duration::as_secs_f64);
    let histogram = Histogram {
        buckets: bounds.chain([f64::INFINITY]).zip(latency.counts).collect(),
        sum: latency.sum.as_secs_f64(),
        count: latency.count(),
    };
    [
        Family::counter("journal_records", "Records appended to the journal.", None)
            .count(Vec::new(), stats.records),
        Family::counter(
            "journal_written",
            "Bytes appended to the journal, framing included.",
            Some(Unit::Bytes),
        )
        .count(Vec::new(), stats.bytes_appended),
        Family::histogram(
            "journal_fsync",
            "Latency of fdatasync on journal segments.",
            Some(Unit::Seconds),
        )
        .observe(Vec::new(), histogram),
    ]
}
/// The eBPF programs' per-CPU counters, summed, one family each, and the
/// malformed frames by reason.
pub(super) fn kernel_families(counters: &Counters) -> Vec<Family> {
    let mut families: Vec<Family> = (Counter::ALL.iter())
        .map(|&counter| {
            let info = counter.info();
            let unit = match info.unit {
                CounterUnit::Bytes => Some(Unit::Bytes),
                CounterUnit::None => None,
            };
            Family::counter(info.metric, info.help, unit).count(Vec::new(), counters.get(counter))
        })
        .collect();
    let mut malformed = Family::counter(
        "malformed_packets",
        "Frames the eBPF parser refused (passed untouched), by reason.",
        None,
    );
    for reason in Malformed::ALL {
        malformed = malformed.count(
            vec![("reason", reason.name().into())],
            counters.malformed(reason),
        );
    }
    families.push(malformed);
    families
}
/// The interface's name, or `if<index>` once it is gone.
pub(super) fn iface_name(ifindex: u32) -> String {
    crate::sys::interface::name(ifindex).unwrap_or_else(|| format!("if{ifindex}"))
}
