//! Network interfaces of the calling thread's namespace: names and indexes
//! (`if_nametoindex(3)`, `if_indextoname(3)`, `if_nameindex(3)`), the hardware
//! address and flags (`ioctl(SIOCGIFHWADDR)`, `ioctl(SIOCGIFFLAGS)`,
//! netdevice(7)), the driver's name (`ioctl(SIOCETHTOOL)` with
//! `ETHTOOL_GDRVINFO`, include/uapi/linux/ethtool.h) and whether an address is
//! local (`bind(2)` without `IP_FREEBIND`).

use std::{
    ffi::{CStr, CString},
    io, mem,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
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
    let mut req = ifreq(iface, "ioctl(SIOCGIFHWADDR)")?;
    // SAFETY: `req` is a valid ifreq that SIOCGIFHWADDR fills in.
    unsafe { interface_ioctl(libc::SIOCGIFHWADDR, &mut req, "ioctl(SIOCGIFHWADDR)")? };
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

/// Whether `iface` is administratively up (`IFF_UP` from `ioctl(SIOCGIFFLAGS)`).
pub fn is_up(iface: &str) -> Result<bool, SyscallError> {
    let mut req = ifreq(iface, "ioctl(SIOCGIFFLAGS)")?;
    // SAFETY: `req` is a valid ifreq that SIOCGIFFLAGS fills in.
    unsafe { interface_ioctl(libc::SIOCGIFFLAGS, &mut req, "ioctl(SIOCGIFFLAGS)")? };
    // SAFETY: SIOCGIFFLAGS filled in the ifru_flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(i32::from(flags) & libc::IFF_UP != 0)
}

/// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `SIOCETHTOOL` (include/uapi/linux/sockios.h).
const SIOCETHTOOL: libc::Ioctl = 0x8946;
/// `ETHTOOL_GDRVINFO` (include/uapi/linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 3;

/// The name of `iface`'s driver, as `ethtool -i` prints it: `veth`, `bridge`,
/// `802.1Q VLAN Driver`, `mlx5_core`... (`ETHTOOL_GDRVINFO`; every interface
/// answers it, virtual ones included).
pub fn driver(iface: &str) -> Result<String, SyscallError> {
    const CALL: &str = "ioctl(SIOCETHTOOL, ETHTOOL_GDRVINFO)";
    let mut req = ifreq(iface, CALL)?;
    // SAFETY: ethtool_drvinfo is plain old data; all-zero is a valid value.
    let mut info: EthtoolDrvinfo = unsafe { mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: `req` points at `info`, which outlives the call and which
    // ETHTOOL_GDRVINFO fills in.
    unsafe { interface_ioctl(SIOCETHTOOL, &mut req, CALL)? };
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// The names of every interface of the namespace (`if_nameindex(3)`).
pub fn names() -> Result<Vec<String>, SyscallError> {
    // SAFETY: no preconditions; the result is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(SyscallError::last_os_error("if_nameindex"));
    }
    let mut names = Vec::new();
    // SAFETY: the array ends with an entry whose index is 0, and each name is a
    // NUL-terminated string, until `if_freenameindex`.
    unsafe {
        let mut entry = list;
        while (*entry).if_index != 0 {
            names.push(
                CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(names)
}

/// Whether `addr` is assigned to an interface of the namespace: a datagram
/// socket can `bind(2)` to it (without `IP_FREEBIND`, a foreign address fails
/// with `EADDRNOTAVAIL`). Under `net.ipv4.ip_nonlocal_bind` every address
/// looks local.
pub fn address_is_local(addr: IpAddr) -> Result<bool, SyscallError> {
    let domain = match addr {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    let socket = datagram_socket(domain)?;
    match super::socket::bind(socket.as_fd(), SocketAddr::new(addr, 0)) {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(err) => Err(err),
    }
}

/// An ifreq naming `iface`; `ENODEV` (as `call`) for a name no interface can have.
fn ifreq(iface: &str, call: &'static str) -> Result<libc::ifreq, SyscallError> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    // The name must leave room for the NUL that the zeroed struct supplies.
    if iface.len() >= req.ifr_name.len() || iface.as_bytes().contains(&0) {
        return Err(SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(libc::ENODEV),
        });
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// A new datagram socket of `domain`, for ioctls and bind tests.
fn datagram_socket(domain: libc::c_int) -> Result<OwnedFd, SyscallError> {
    // SAFETY: plain socket(2) call.
    let raw = check(
        unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "socket(SOCK_DGRAM)",
    )?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Issues interface ioctl `request` with `req` on a new `AF_INET` datagram
/// socket, so that it acts on the calling thread's network namespace
/// (`sock_do_ioctl()` in net/socket.c).
///
/// # Safety
/// `req` must be what `request` expects, pointers in it included.
unsafe fn interface_ioctl(
    request: libc::Ioctl,
    req: &mut libc::ifreq,
    call: &'static str,
) -> Result<(), SyscallError> {
    let socket = datagram_socket(libc::AF_INET)?;
    // SAFETY: the caller vouches for `req`.
    check(
        unsafe { libc::ioctl(socket.as_raw_fd(), request, req as *mut libc::ifreq) },
        call,
    )?;
    Ok(())
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
    fn lo_is_listed_up_and_127_0_0_1_is_local_while_a_foreign_address_is_not() {
        assert!(names().unwrap().iter().any(|name| name == "lo"));
        assert!(is_up("lo").unwrap());
        assert!(address_is_local("127.0.0.1".parse().unwrap()).unwrap());
        assert!(!address_is_local("198.18.255.254".parse().unwrap()).unwrap());
        let err = driver("nope0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ioctl(SIOCETHTOOL, ETHTOOL_GDRVINFO): No such device (os error 19)"
        );
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
