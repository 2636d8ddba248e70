//! Keys and values of the BPF maps shared by the eBPF programs and userspace.

/// Address family tag for IPv4 (addresses use the first 4 of 16 bytes).
pub const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6.
pub const FAMILY_V6: u8 = 6;

/// Key of the `SERVICES` hash map: a protected (address, port).
///
/// IPv4 addresses occupy `addr[..4]`; the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Service address, network byte order.
    pub addr: [u8; 16],
    /// Service port, host byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero (hash keys compare every byte).
    pub _pad: u8,
}

/// Value of the `SERVICES` hash map: the service's id, what the programs
/// do with its segments (a [`ServiceMode`] bit set) and which payload they
/// leave out (a [`PayloadSkip`] bit set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Service id, carried by every record.
    pub id: u32,
    /// [`ServiceMode`] bits; zero means "capture".
    pub mode: u32,
    /// [`PayloadSkip`] bits; zero copies every payload byte.
    pub skip: u32,
}

/// Payload the programs do not copy into the ring for a service, as bits of
/// [`ServiceValue::skip`]. The segment still yields a header-only record with
/// its `payload_len`, flagged [`crate::record::record_flags::PAYLOAD_SKIPPED`],
/// so userspace keeps the sequence numbers, and the bytes are counted in
/// [`crate::Counter::PayloadSkipped`]. Userspace sets it per service from
/// what the service's retention and resumption need (docs/configuration.md,
/// "What capture copies").
pub struct PayloadSkip;

impl PayloadSkip {
    /// Leave out client → server payload: a restore needs only the
    /// unacknowledged server → client bytes and the client's sequence numbers.
    pub const CLIENT_TO_SERVER: u32 = 1;
}

/// What the programs do with a service's segments, as bits of
/// [`ServiceValue::mode`]. A takeover moves a service through
/// `QUIESCED | FENCED` (while its sockets are rebuilt) to `FENCED | OWNED`.
pub struct ServiceMode;

impl ServiceMode {
    /// Drop client → service segments at ingress, uncaptured: while the
    /// standby rebuilds the sockets, a client segment must not reach a kernel
    /// with no socket for it (it would answer with a RST); the client
    /// retransmits it later.
    pub const QUIESCED: u32 = 1;
    /// Drop service → client segments at ingress: the old primary is fenced off,
    /// so a primary that comes back cannot reach (and reset) the clients.
    pub const FENCED: u32 = 2;
    /// This host serves the address now: segments pass uncaptured.
    pub const OWNED: u32 = 4;
    /// On-host `--sync`: the primary's own outgoing segments are captured at
    /// netfilter POSTROUTING instead of TC egress, and queued (NFQUEUE) for
    /// the agent to hold until the standby has them. The other bits take
    /// precedence: it only combines with "capture".
    pub const SYNC: u32 = 8;
}

/// Key of the `FLOWS` map: one TCP connection of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Service (server) address, network byte order.
    pub server_addr: [u8; 16],
    /// Client address, network byte order.
    pub client_addr: [u8; 16],
    /// Service port, host byte order.
    pub server_port: u16,
    /// Client port, host byte order.
    pub client_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Value of the `FLOWS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `bpf_ktime_get_ns()` when the flow was first seen.
    pub first_seen_ns: u64,
    /// Segments forwarded uncaptured (`pass` policy): nonzero means the flow has a
    /// gap. The BPF target has no atomic read-modify-write in `core`, so two CPUs
    /// bumping it at once may count one: treat the value as a lower bound.
    pub gaps: u32,
    /// Service id from the `SERVICES` map.
    pub service_id: u32,
    /// [`FlowFlags`] bits, set by userspace.
    pub flags: u32,
    /// Always zero.
    pub _pad: u32,
}

/// Bits of [`FlowValue::flags`].
pub struct FlowFlags;

impl FlowFlags {
    /// Userspace refused to protect the flow (its memory cap was reached
    /// with every flow it holds ready): the programs pass the flow's
    /// segments uncaptured.
    pub const REFUSED: u32 = 1;
    /// A refused flow saw a FIN or a RST: userspace removes the entry once
    /// the close is over (its sweep).
    pub const CLOSING: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, no padding holes left
    // uninitialised by construction (explicit `_pad` fields).
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
}
