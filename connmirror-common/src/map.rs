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
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
}
