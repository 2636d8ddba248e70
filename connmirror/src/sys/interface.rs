//! Network interfaces of the calling thread's namespace: names and indexes
//! (`if_nametoindex(3)`, `if_indextoname(3)`) and the hardware address
//! (`ioctl(SIOCGIFHWADDR)`, netdevice(7)).

use std::{
    ffi::{CStr, CString},
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::{SyscallError, check};

/// `ARPHRD_ETHER` (include/uapi/linux/if_arp.h): an Ethernet hardware type.
pub const ARPHRD_ETHER: u16 = libc::ARPHRD_ETHER;

/// The index of interface `name`, if there is one.
pub fn index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => None,
        index => Some(index),
    }
}

/// The name of interface `index`, if there is one.
pub fn name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// A hardware address: its `ARPHRD_*` type and its first six bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardwareAddress {
    /// `sa_family` of `ifr_hwaddr`, an `ARPHRD_*` value.
    pub kind: u16,
    /// The address (an Ethernet MAC when `kind` is [`ARPHRD_ETHER`]).
    pub bytes: [u8; 6],
}

/// `ioctl(SIOCGIFHWADDR)` for `iface`, issued on a new `AF_INET` datagram
/// socket so that it acts on the calling thread's network namespace
/// (`sock_do_ioctl()` in net/socket.c). A name that cannot be an interface's
/// fails with `ENODEV`, as a missing interface does.
pub fn hardware_address(iface: &str) -> Result<HardwareAddress, SyscallError> {
    const CALL: &str = "ioctl(SIOCGIFHWADDR)";
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    // The name must leave room for the NUL that the zeroed struct supplies.
    if iface.len() >= req.ifr_name.len() || iface.as_bytes().contains(&0) {
        return Err(SyscallError {
            call: CALL,
            io_error: io::Error::from_raw_os_error(libc::ENODEV),
        });
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let raw = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "socket(AF_INET, SOCK_DGRAM)",
    )?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `req` is a valid ifreq that SIOCGIFHWADDR fills in.
    check(
        unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) },
        CALL,
    )?;
    // SAFETY: SIOCGIFHWADDR filled in the ifru_hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut bytes = [0u8; 6];
    for (dst, &src) in bytes.iter_mut().zip(&hw.sa_data) {
        *dst = src as u8;
    }
    Ok(HardwareAddress {
        kind: hw.sa_family,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_both_ways_and_is_not_ethernet() {
        let lo = index("lo").expect("every namespace has lo");
        assert_eq!(name(lo).as_deref(), Some("lo"));
        assert_eq!(hardware_address("lo").unwrap().kind, libc::ARPHRD_LOOPBACK);
        assert_eq!(index("nope0"), None);
    }

    #[test]
    fn a_missing_interface_is_enodev() {
        let err = hardware_address("nope0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ioctl(SIOCGIFHWADDR): No such device (os error 19)"
        );
        let err = hardware_address("a-name-far-too-long-for-linux").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }
}
