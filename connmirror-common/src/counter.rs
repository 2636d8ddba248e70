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
    /// Outgoing segments of a `--sync` on-host primary held back (dropped, so
    /// TCP sends them again) because the standby had not acknowledged the
    /// journal up to them yet.
    SyncHeld = 13,
}

impl Counter {
    /// All non-malformed counters, in slot order.
    pub const ALL: [Counter; 14] = [
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
    ];

    /// The slot index in the counter array.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// A stable snake_case name, used in reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PacketsSeen => "packets_seen",
            Counter::PacketsTracked => "packets_tracked",
            Counter::BytesCaptured => "bytes_captured",
            Counter::Records => "records",
            Counter::RingFull => "ring_full",
            Counter::BackpressureDrops => "backpressure_drops",
            Counter::GapsMarked => "gaps_marked",
            Counter::NotTcp => "not_tcp",
            Counter::Fragments => "fragments",
            Counter::Oversize => "oversize",
            Counter::CopyFailed => "copy_failed",
            Counter::QuiesceDrops => "quiesce_drops",
            Counter::FenceDrops => "fence_drops",
            Counter::SyncHeld => "sync_held",
        }
    }
}

/// First slot of the malformed-packet counters; slot = `MALFORMED_BASE + reason`.
pub const MALFORMED_BASE: u32 = 16;

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
