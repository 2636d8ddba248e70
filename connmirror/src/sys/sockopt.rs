//! `setsockopt(2)` and `getsockopt(2)` with typed options: each [`Opt`] names
//! its level, its option and the plain-old-data type the kernel reads or
//! writes for it, so a caller cannot pass the wrong size, and a failure names
//! the option (`setsockopt(TCP_REPAIR_QUEUE): ...`).
//!
//! The TCP repair options are in include/uapi/linux/tcp.h and
//! `do_tcp_setsockopt()` / `do_tcp_getsockopt()` in net/ipv4/tcp.c; see
//! tcp(7), ip(7), ipv6(7) and socket(7) for the others.

use std::{
    marker::PhantomData,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use libc::c_int;

use super::SyscallError;

/// `struct tcp_info` (include/uapi/linux/tcp.h), what `TCP_INFO` fills in.
pub use libc::tcp_info as TcpInfo;

/// Plain old data for which every bit pattern, all-zero included, is valid.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` types without padding-sensitive invariants,
/// pointers or references.
pub unsafe trait Pod: Copy {}

// SAFETY: integers and the repr(C) kernel structs below are plain old data.
unsafe impl Pod for c_int {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for TcpRepairWindow {}
// SAFETY: as above.
unsafe impl Pod for TcpRepairOpt {}
// SAFETY: as above.
unsafe impl Pod for TcpInfo {}
// SAFETY: as above.
unsafe impl Pod for libc::linger {}

/// `struct tcp_repair_window` (include/uapi/linux/tcp.h, Linux ≥ 4.8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpRepairWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// The peer's receive window (our send window), in bytes.
    pub snd_wnd: u32,
    /// Largest window the peer ever offered, in bytes.
    pub max_window: u32,
    /// Our receive window, in bytes.
    pub rcv_wnd: u32,
    /// `rcv_nxt` when `rcv_wnd` was last advertised.
    pub rcv_wup: u32,
}

/// `struct tcp_repair_opt` (include/uapi/linux/tcp.h): one entry of
/// `TCP_REPAIR_OPTIONS`, a TCP option kind and its value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpRepairOpt {
    /// The option kind (`TCPOPT_MSS`, `TCPOPT_WINDOW`, ...).
    pub opt_code: u32,
    /// Its value; for the window scale, send scale | receive scale << 16.
    pub opt_val: u32,
}

/// A socket option whose value is a `T`.
#[derive(Debug)]
pub struct Opt<T> {
    level: c_int,
    name: c_int,
    set_call: &'static str,
    get_call: &'static str,
    value: PhantomData<fn(T) -> T>,
}

macro_rules! opts {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $level:ident;)*) => {$(
        $(#[$doc])*
        pub const $name: Opt<$ty> = Opt {
            level: libc::$level,
            name: libc::$name,
            set_call: concat!("setsockopt(", stringify!($name), ")"),
            get_call: concat!("getsockopt(", stringify!($name), ")"),
            value: PhantomData,
        };
    )*};
}

opts! {
    /// Repair mode on (1) or off (0, or -1 for no window probe).
    TCP_REPAIR: c_int = IPPROTO_TCP;
    /// Which queue `TCP_QUEUE_SEQ` and repair-mode sends act on.
    TCP_REPAIR_QUEUE: c_int = IPPROTO_TCP;
    /// `write_seq` or `rcv_nxt` of the selected queue.
    TCP_QUEUE_SEQ: u32 = IPPROTO_TCP;
    /// Negotiated options, a list of [`TcpRepairOpt`].
    TCP_REPAIR_OPTIONS: TcpRepairOpt = IPPROTO_TCP;
    /// Windows and their sequence anchors.
    TCP_REPAIR_WINDOW: TcpRepairWindow = IPPROTO_TCP;
    /// The next TSval (low bit: microsecond clock since Linux 6.7).
    TCP_TIMESTAMP: u32 = IPPROTO_TCP;
    /// The MSS (the peer's, `mss_clamp`, in repair mode).
    TCP_MAXSEG: c_int = IPPROTO_TCP;
    /// `struct tcp_info`.
    TCP_INFO: TcpInfo = IPPROTO_TCP;
    /// Bind to an address that is not local (IPv4).
    IP_FREEBIND: c_int = IPPROTO_IP;
    /// Use a non-local source address (IPv4).
    IP_TRANSPARENT: c_int = IPPROTO_IP;
    /// Bind to an address that is not local (IPv6).
    IPV6_FREEBIND: c_int = IPPROTO_IPV6;
    /// Use a non-local source address (IPv6).
    IPV6_TRANSPARENT: c_int = IPPROTO_IPV6;
    /// The send buffer size (the kernel doubles what is set).
    SO_SNDBUF: c_int = SOL_SOCKET;
    /// `SO_SNDBUF` past `wmem_max` (needs `CAP_NET_ADMIN`).
    SO_SNDBUFFORCE: c_int = SOL_SOCKET;
    /// What `close(2)` does with unsent data.
    SO_LINGER: libc::linger = SOL_SOCKET;
    /// The receive buffer size (the kernel doubles what is set).
    SO_RCVBUF: c_int = SOL_SOCKET;
    /// `SO_RCVBUF` past `rmem_max` (needs `CAP_NET_ADMIN`).
    SO_RCVBUFFORCE: c_int = SOL_SOCKET;
    /// A netlink socket whose receive buffer overflowed drops messages
    /// silently instead of failing the next `recv(2)` with `ENOBUFS`
    /// (netlink(7)).
    NETLINK_NO_ENOBUFS: c_int = SOL_NETLINK;
}

/// [`TCP_REPAIR`] value: repair mode on (include/uapi/linux/tcp.h).
pub const TCP_REPAIR_ON: c_int = 1;
/// [`TCP_REPAIR`] value: repair mode off, with a window probe.
pub const TCP_REPAIR_OFF: c_int = 0;
/// [`TCP_REPAIR`] value: repair mode off without a window probe (Linux ≥
/// 4.8); libc does not define it.
pub const TCP_REPAIR_OFF_NO_WP: c_int = -1;
/// [`TCP_REPAIR_QUEUE`] value: no queue selected; libc does not define the
/// queue values (include/uapi/linux/tcp.h).
pub const TCP_NO_QUEUE: c_int = 0;
/// [`TCP_REPAIR_QUEUE`] value: the receive queue.
pub const TCP_RECV_QUEUE: c_int = 1;
/// [`TCP_REPAIR_QUEUE`] value: the send queue.
pub const TCP_SEND_QUEUE: c_int = 2;

/// `setsockopt(fd, opt, value)`.
pub fn set<T: Pod>(fd: BorrowedFd<'_>, opt: &Opt<T>, value: &T) -> Result<(), SyscallError> {
    set_slice(fd, opt, std::slice::from_ref(value))
}

/// `setsockopt(fd, opt, values)` for an option that takes an array of `T`
/// (`TCP_REPAIR_OPTIONS`).
pub fn set_slice<T: Pod>(
    fd: BorrowedFd<'_>,
    opt: &Opt<T>,
    values: &[T],
) -> Result<(), SyscallError> {
    // SAFETY: `T` is the type the option reads, and `values` is valid for
    // reads of its size.
    unsafe { set_raw(fd, opt.level, opt.name, values) }.map_err(|e| SyscallError {
        call: opt.set_call,
        io_error: e.io_error,
    })
}

/// `getsockopt(fd, opt)`; a shorter answer leaves the rest of `T` zero.
pub fn get<T: Pod>(fd: BorrowedFd<'_>, opt: &Opt<T>) -> Result<T, SyscallError> {
    // SAFETY: `T` is Pod: all-zero is a valid value.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is valid for writes of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            opt.level,
            opt.name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    super::check(rc, opt.get_call).map(|_| value)
}

/// `SO_LINGER {on, 0 s}`: the socket's `close(2)` then sends a RST instead of
/// a FIN and drops whatever is unsent (`tcp_close()` in net/ipv4/tcp.c).
pub fn linger_zero(fd: BorrowedFd<'_>) -> Result<(), SyscallError> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set(fd, &SO_LINGER, &linger)
}

/// `setsockopt(fd, level, name, value)` for options this module has no
/// [`Opt`] for (the test fixtures' packet-socket options). The error's call
/// is plain `setsockopt`.
///
/// # Safety
///
/// `T` must be plain old data laid out as the kernel expects for option
/// `name` (an `int`, a `struct timeval`, a `struct sock_fprog`, ...): the
/// kernel reads `size_of_val(value)` bytes of it.
pub unsafe fn set_raw<T: ?Sized>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &T,
) -> Result<(), SyscallError> {
    // SAFETY: `value` is valid for reads of its size; the caller vouches for
    // its layout.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of_val(value) as libc::socklen_t,
        )
    };
    super::check(rc, "setsockopt").map(drop)
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn tcp_repair_on_a_udp_socket_fails_naming_the_option() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();

        let err = set(udp.as_fd(), &TCP_REPAIR, &1).unwrap_err();

        // A UDP socket has no IPPROTO_TCP options: udp_setsockopt() hands
        // them to ip_setsockopt(), which answers ENOPROTOOPT.
        assert_eq!(err.call, "setsockopt(TCP_REPAIR)");
        assert_eq!(
            err.to_string(),
            "setsockopt(TCP_REPAIR): Protocol not available (os error 92)"
        );
    }

    #[test]
    fn tcp_info_of_a_udp_socket_fails_naming_the_option() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();

        let err = get(udp.as_fd(), &TCP_INFO).unwrap_err();

        // udp_getsockopt() hands other levels to ip_getsockopt(), which
        // answers EOPNOTSUPP for a level that is not SOL_IP.
        assert_eq!(
            err.to_string(),
            "getsockopt(TCP_INFO): Operation not supported (os error 95)"
        );
    }

    #[test]
    fn options_round_trip_on_a_connected_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();

        set(client.as_fd(), &TCP_MAXSEG, &1000).unwrap();
        let info = get(client.as_fd(), &TCP_INFO).unwrap();

        assert_eq!(info.tcpi_state, 1, "TCP_ESTABLISHED");
        assert!(get(client.as_fd(), &TCP_MAXSEG).unwrap() > 0);
        linger_zero(client.as_fd()).unwrap();
    }
}
