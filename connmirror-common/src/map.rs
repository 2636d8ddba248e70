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

/// Value of the `SERVICES` hash map: the service's id and what the programs
/// do with its segments (a [`ServiceMode`] bit set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Service id, carried by every record.
    pub id: u32,
    /// [`ServiceMode`] bits; zero means "capture".
    pub mode: u32,
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
}

/// Key of the `FLOWS` LRU map: one TCP connection of a service.
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

/// Value of the `FLOWS` LRU map.
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
