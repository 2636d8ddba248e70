//! Indices of the per-CPU counter array (`COUNTERS`) that the eBPF programs bump.
//!
//! The array holds [`COUNTER_SLOTS`] `u64`s per CPU. Userspace sums the CPUs.

/// Number of slots in the per-CPU counter array.
pub const COUNTER_SLOTS: u32 = 32;

/// What the capture programs count. The value is the slot index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every frame the program ran on.
    PacketsSeen = 0,
    /// TCP segments of a tracked service.
    PacketsTracked = 1,
    /// Payload bytes written into the ring buffer.
    BytesCaptured = 2,
    /// Records written into the ring buffer.
    Records = 3,
    /// Reservations that failed because the ring buffer was full.
    RingFull = 4,
    /// Segments dropped under the `drop` policy because the ring was full.
    BackpressureDrops = 5,
    /// Segments forwarded uncaptured under the `pass` policy (their flow is gapped).
    GapsMarked = 6,
    /// Frames that are not TCP over IPv4/IPv6 (ARP, UDP, ...), passed untouched.
    NotTcp = 7,
    /// IP fragments, passed untouched (a TCP header cannot be read from them).
    Fragments = 8,
    /// Tracked segments whose payload exceeds what one pass can copy.
    Oversize = 9,
    /// Tracked segments whose payload the kernel refused to copy (a helper
    /// failed); not expected for a frame the parser accepted.
    CopyFailed = 10,
    /// Client segments dropped while their service was quiesced for a takeover.
    QuiesceDrops = 11,
    /// Segments from a fenced (taken-over) primary, dropped.
    FenceDrops = 12,
    /// Outgoing segments of a `--sync` on-host primary captured at netfilter
    /// POSTROUTING and sent to NFQUEUE, where the agent holds each until the
    /// standby has acknowledged the journal up to it.
    SyncHeld = 13,
    /// Payload bytes of tracked segments not copied into the ring because
    /// their service does not need them ([`crate::PayloadSkip`]).
    PayloadSkipped = 14,
    /// Segments passed uncaptured under the `drop` policy because no daemon
    /// had read the ring within its reader timeout (it died, or is stopped):
    /// a pinned capture left behind never stops the traffic it sits on.
    /// Their flows are gapped.
    UnreadPasses = 15,
    /// Segments of a flow the kernel's flow map had no room for (it holds
    /// `--max-flows`), passed uncaptured: the flow is not protected. A full
    /// map refuses new flows; it never evicts one it tracks.
    FlowsUntracked = 16,
}

impl Counter {
    /// All non-malformed counters, in slot order.
    pub const ALL: [Counter; 17] = [
        Counter::PacketsSeen,
        Counter::PacketsTracked,
        Counter::BytesCaptured,
        Counter::Records,
        Counter::RingFull,
        Counter::BackpressureDrops,
        Counter::GapsMarked,
        Counter::NotTcp,
        Counter::Fragments,
        Counter::Oversize,
        Counter::CopyFailed,
        Counter::QuiesceDrops,
        Counter::FenceDrops,
        Counter::SyncHeld,
        Counter::PayloadSkipped,
        Counter::UnreadPasses,
        Counter::FlowsUntracked,
    ];

    /// The slot index in the counter array.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// A stable snake_case name: the counter's key in `report.json`.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// How the counter is shown everywhere: the one table of counter names.
    pub const fn info(self) -> CounterInfo {
        match self {
            Counter::PacketsSeen => CounterInfo {
                name: "packets_seen",
                metric: "ebpf_packets_seen",
                unit: Unit::None,
                help: "Frames the capture programs ran on.",
            },
            Counter::PacketsTracked => CounterInfo {
                name: "packets_tracked",
                metric: "ebpf_packets_tracked",
                unit: Unit::None,
                help: "TCP segments of a protected service.",
            },
            Counter::BytesCaptured => CounterInfo {
                name: "bytes_captured",
                metric: "ebpf_captured",
                unit: Unit::Bytes,
                help: "Payload bytes written into the ring buffer.",
            },
            Counter::Records => CounterInfo {
                name: "records",
                metric: "ebpf_records",
                unit: Unit::None,
                help: "Records written into the ring buffer.",
            },
            Counter::RingFull => CounterInfo {
                name: "ring_full",
                metric: "ebpf_ring_full",
                unit: Unit::None,
                help: "Ring-full events: reservations that failed because the ring was full.",
            },
            Counter::BackpressureDrops => CounterInfo {
                name: "backpressure_drops",
                metric: "ebpf_backpressure_drops",
                unit: Unit::None,
                help: "Segments dropped under --on-ring-full drop (TCP retransmits them).",
            },
            Counter::GapsMarked => CounterInfo {
                name: "gaps_marked",
                metric: "ebpf_gaps_marked",
                unit: Unit::None,
                help: "Segments passed uncaptured under --on-ring-full pass (their flow is gapped).",
            },
            Counter::NotTcp => CounterInfo {
                name: "not_tcp",
                metric: "ebpf_not_tcp",
                unit: Unit::None,
                help: "Frames that are not TCP over IPv4/IPv6, passed untouched.",
            },
            Counter::Fragments => CounterInfo {
                name: "fragments",
                metric: "ebpf_fragments",
                unit: Unit::None,
                help: "IP fragments, passed untouched.",
            },
            Counter::Oversize => CounterInfo {
                name: "oversize",
                metric: "ebpf_oversize",
                unit: Unit::None,
                help: "Tracked segments too large to copy in one pass.",
            },
            Counter::CopyFailed => CounterInfo {
                name: "copy_failed",
                metric: "ebpf_copy_failed",
                unit: Unit::None,
                help: "Tracked segments whose payload the kernel refused to copy.",
            },
            Counter::QuiesceDrops => CounterInfo {
                name: "quiesce_drops",
                metric: "ebpf_quiesce_drops",
                unit: Unit::None,
                help: "Client segments dropped while their service was quiesced for a takeover.",
            },
            Counter::FenceDrops => CounterInfo {
                name: "fence_drops",
                metric: "ebpf_fence_drops",
                unit: Unit::None,
                help: "Segments from a fenced (taken-over) primary, dropped.",
            },
            Counter::SyncHeld => CounterInfo {
                name: "sync_held",
                metric: "ebpf_sync_held",
                unit: Unit::None,
                help: "Outgoing segments captured at netfilter POSTROUTING and queued to the agent, which holds each until the standby acknowledged the journal up to it (on-host --sync).",
            },
            Counter::PayloadSkipped => CounterInfo {
                name: "payload_skipped",
                metric: "ebpf_payload_skipped",
                unit: Unit::Bytes,
                help: "Payload bytes not copied into the ring because their service does not need them (client to server, retention unacked).",
            },
            Counter::UnreadPasses => CounterInfo {
                name: "unread_passes",
                metric: "ebpf_unread_passes",
                unit: Unit::None,
                help: "Segments passed uncaptured under --on-ring-full drop because no daemon had read the ring for --reader-timeout (it died or is stopped); their flows are gapped.",
            },
            Counter::FlowsUntracked => CounterInfo {
                name: "flows_untracked",
                metric: "ebpf_flows_untracked",
                unit: Unit::None,
                help: "Segments passed uncaptured because the kernel's flow map was full (--max-flows): their flows are not protected.",
            },
        }
    }
}

/// The unit of a counter's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A count of events.
    None,
    /// Bytes.
    Bytes,
}

/// How a [`Counter`] is shown: in `report.json` (under `counters`) and as a
/// Prometheus counter (`connmirror_METRIC_total`, or `_bytes_total` for
/// bytes). The eBPF programs bump the slot; userspace reads every name from
/// here, so the report and the metrics cannot disagree on what exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterInfo {
    /// The key in `report.json`.
    pub name: &'static str,
    /// The metric name, without the `connmirror_` prefix and the unit and
    /// `_total` suffixes.
    pub metric: &'static str,
    /// What the value counts.
    pub unit: Unit,
    /// The metric's help text.
    pub help: &'static str,
}

/// First slot of the malformed-packet counters; slot = `MALFORMED_BASE + reason`.
pub const MALFORMED_BASE: u32 = 20;

/// Why a frame could not be parsed. Such frames are counted and passed untouched.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The frame ends inside the Ethernet header or a VLAN tag.
    TruncatedL2 = 0,
    /// The frame ends inside the fixed IPv4 or IPv6 header.
    TruncatedL3 = 1,
    /// IPv4 header length (IHL) below 5 words.
    Ipv4Ihl = 2,
    /// IP total length disagrees with the frame (shorter than the header or past the end).
    IpLength = 3,
    /// IPv6 extension-header chain longer than the walk allows, or cut short.
    Ipv6ExtChain = 4,
    /// The frame ends inside the fixed TCP header.
    TruncatedL4 = 5,
    /// TCP data offset below 5 words.
    TcpDataOffsetShort = 6,
    /// TCP data offset points past the end of the IP packet.
    TcpDataOffsetPastEnd = 7,
    /// The IP version nibble disagrees with the EtherType.
    IpVersion = 8,
}

impl Malformed {
    /// All reasons, in slot order.
    pub const ALL: [Malformed; 9] = [
        Malformed::TruncatedL2,
        Malformed::TruncatedL3,
        Malformed::Ipv4Ihl,
        Malformed::IpLength,
        Malformed::Ipv6ExtChain,
        Malformed::TruncatedL4,
        Malformed::TcpDataOffsetShort,
        Malformed::TcpDataOffsetPastEnd,
        Malformed::IpVersion,
    ];

    /// The slot index in the counter array.
    pub const fn index(self) -> u32 {
        MALFORMED_BASE + self as u32
    }

    /// A stable snake_case name, used in reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Malformed::TruncatedL2 => "truncated_l2",
            Malformed::TruncatedL3 => "truncated_l3",
            Malformed::Ipv4Ihl => "ipv4_ihl",
            Malformed::IpLength => "ip_length",
            Malformed::Ipv6ExtChain => "ipv6_ext_chain",
            Malformed::TruncatedL4 => "truncated_l4",
            Malformed::TcpDataOffsetShort => "tcp_data_offset_short",
            Malformed::TcpDataOffsetPastEnd => "tcp_data_offset_past_end",
            Malformed::IpVersion => "ip_version",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one table: every counter has a distinct report key and metric
    /// name, metrics are all `ebpf_` ones, and only the payload counters
    /// are in bytes.
    #[test]
    fn every_counter_has_one_distinct_name_metric_and_help() {
        let infos = Counter::ALL.map(Counter::info);
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(Counter::ALL[i].name(), info.name);
            assert!(info.metric.starts_with("ebpf_"), "{}", info.metric);
            assert!(info.help.ends_with('.'), "{}", info.help);
            for other in &infos[i + 1..] {
                assert_ne!(info.name, other.name);
                assert_ne!(info.metric, other.metric);
            }
        }
        let bytes: std::vec::Vec<_> = (infos.iter())
            .filter(|info| info.unit == Unit::Bytes)
            .map(|info| (info.name, info.metric))
            .collect();
        assert_eq!(
            bytes,
            [
                ("bytes_captured", "ebpf_captured"),
                ("payload_skipped", "ebpf_payload_skipped")
            ]
        );
    }
}
