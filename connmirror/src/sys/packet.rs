//! `AF_PACKET` / `SOCK_RAW` sockets bound to one interface (packet(7)): how
//! the announcements reach the wire without an address or a route.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use super::{SyscallError, check};

/// A new close-on-exec `AF_PACKET` / `SOCK_RAW` socket bound to interface
/// `ifindex`, receiving EtherType `protocol` (host order; 0 receives nothing).
/// The socket is created with protocol 0 and only hooked into receive by
/// `bind`, so it never sees a frame from another interface.
pub fn bound_socket(ifindex: u32, protocol: u16) -> Result<OwnedFd, SyscallError> {
    // SAFETY: plain socket(2) call.
    let raw = check(
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) },
        "socket(AF_PACKET, SOCK_RAW)",
    )?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(rc, "bind(AF_PACKET)")?;
    Ok(fd)
}
