//! The engine's Prometheus families: kernel counters, per-interface capture counts and the journal's.

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
            let (name, unit) = match counter {
                Counter::BytesCaptured => ("ebpf_captured", Some(Unit::Bytes)),
                other => (kernel_name(other), None),
            };
            Family::counter(name, counter_help(counter), unit)
                .count(Vec::new(), counters.get(counter))
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
/// `ebpf_` and the counter's name, as a `'static` metric name.
pub(super) fn kernel_name(counter: Counter) -> &'static str {
    match counter {
        Counter::PacketsSeen => "ebpf_packets_seen",
        Counter::PacketsTracked => "ebpf_packets_tracked",
        Counter::BytesCaptured => "ebpf_captured",
        Counter::Records => "ebpf_records",
        Counter::RingFull => "ebpf_ring_full",
        Counter::BackpressureDrops => "ebpf_backpressure_drops",
        Counter::GapsMarked => "ebpf_gaps_marked",
        Counter::NotTcp => "ebpf_not_tcp",
        Counter::Fragments => "ebpf_fragments",
        Counter::Oversize => "ebpf_oversize",
        Counter::CopyFailed => "ebpf_copy_failed",
        Counter::QuiesceDrops => "ebpf_quiesce_drops",
        Counter::FenceDrops => "ebpf_fence_drops",
        Counter::SyncHeld => "ebpf_sync_held",
    }
}
pub(super) fn counter_help(counter: Counter) -> &'static str {
    match counter {
        Counter::PacketsSeen => "Frames the capture programs ran on.",
        Counter::PacketsTracked => "TCP segments of a protected service.",
        Counter::BytesCaptured => "Payload bytes written into the ring buffer.",
        Counter::Records => "Records written into the ring buffer.",
        Counter::RingFull => {
            "Ring-full events: reservations that failed because the ring was full."
        }
        Counter::BackpressureDrops => {
            "Segments dropped under --on-ring-full drop (TCP retransmits them)."
        }
        Counter::GapsMarked => {
            "Segments passed uncaptured under --on-ring-full pass (their flow is gapped)."
        }
        Counter::NotTcp => "Frames that are not TCP over IPv4/IPv6, passed untouched.",
        Counter::Fragments => "IP fragments, passed untouched.",
        Counter::Oversize => "Tracked segments too large to copy in one pass.",
        Counter::CopyFailed => "Tracked segments whose payload the kernel refused to copy.",
        Counter::QuiesceDrops => {
            "Client segments dropped while their service was quiesced for a takeover."
        }
        Counter::FenceDrops => "Segments from a fenced (taken-over) primary, dropped.",
        Counter::SyncHeld => {
            "Outgoing segments held (dropped, TCP resends them) until the standby acknowledged the journal up to them (on-host --sync)."
        }
    }
}
/// The interface's name, or `if<index>` once it is gone.
pub(super) fn iface_name(ifindex: u32) -> String {
    crate::sys::interface::name(ifindex).unwrap_or_else(|| format!("if{ifindex}"))
}
