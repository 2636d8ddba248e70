//! One socket's own calls: `socket(2)`, `bind(2)` and `connect(2)` to a
//! [`SocketAddr`], `send(2)`, `recv(2)` with `MSG_PEEK`, and the queue-length
//! ioctls of tcp(7) (`SIOCINQ`, `SIOCOUTQ`).
//!
//! std's `TcpStream` cannot be created unconnected, bound to a foreign address
//! or driven in repair mode, so the repair code makes these calls itself.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use super::{SyscallError, check};

/// `SIOCINQ` / `SIOCOUTQ` (include/uapi/linux/sockios.h: aliases of
/// `FIONREAD` / `TIOCOUTQ`); libc does not define them.
const SIOCINQ: libc::Ioctl = libc::FIONREAD;
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;

/// A new close-on-exec `SOCK_STREAM` socket of `addr`'s family.
pub fn tcp_socket(addr: SocketAddr) -> Result<OwnedFd, SyscallError> {
    match addr {
        SocketAddr::V4(_) => new(libc::AF_INET, "socket(AF_INET, SOCK_STREAM)"),
        SocketAddr::V6(_) => new(libc::AF_INET6, "socket(AF_INET6, SOCK_STREAM)"),
    }
}

fn new(domain: libc::c_int, call: &'static str) -> Result<OwnedFd, SyscallError> {
    // SAFETY: plain socket(2) call.
    let raw = check(
        unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        call,
    )?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `bind(fd, addr)`.
pub fn bind(fd: BorrowedFd<'_>, addr: SocketAddr) -> Result<(), SyscallError> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    check(rc, "bind").map(drop)
}

/// `connect(fd, addr)`.
pub fn connect(fd: BorrowedFd<'_>, addr: SocketAddr) -> Result<(), SyscallError> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    check(rc, "connect").map(drop)
}

/// `connect(fd, AF_UNSPEC)`: dissolves the socket's association; in repair
/// mode without sending anything (`tcp_disconnect()` in net/ipv4/tcp.c).
pub fn disconnect(fd: BorrowedFd<'_>) -> Result<(), SyscallError> {
    // SAFETY: an all-zero sockaddr with family AF_UNSPEC is valid.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    let len = size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), &raw const addr, len) };
    check(rc, "connect(AF_UNSPEC)").map(drop)
}

/// `send(fd, buf, 0)`: the number of bytes sent.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, SyscallError> {
    send_flags(fd, buf, 0, "send")
}

/// `send(fd, buf, MSG_DONTWAIT | MSG_NOSIGNAL)`: never blocks, never raises
/// `SIGPIPE`; the number of bytes sent.
pub fn send_nowait(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, SyscallError> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    send_flags(fd, buf, flags, "send(MSG_DONTWAIT)")
}

fn send_flags(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    flags: libc::c_int,
    call: &'static str,
) -> Result<usize, SyscallError> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    check(n, call).map(|n| n as usize)
}

/// `recv(fd, buf, MSG_PEEK | MSG_DONTWAIT)`: copies queued bytes without
/// consuming them; in repair mode from the selected queue.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, SyscallError> {
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    check(n, "recv(MSG_PEEK)").map(|n| n as usize)
}

/// `ioctl(SIOCINQ)`: received bytes not read yet (tcp(7)).
pub fn unread(fd: BorrowedFd<'_>) -> Result<usize, SyscallError> {
    ioctl_int(fd, SIOCINQ, "ioctl(SIOCINQ)")
}

/// `ioctl(SIOCOUTQ)`: bytes in the send queue, sent or not, not acknowledged
/// (tcp(7)); in repair mode with the send queue selected, `write_seq - snd_una`.
pub fn unacked(fd: BorrowedFd<'_>) -> Result<usize, SyscallError> {
    ioctl_int(fd, SIOCOUTQ, "ioctl(SIOCOUTQ)")
}

fn ioctl_int(
    fd: BorrowedFd<'_>,
    request: libc::Ioctl,
    call: &'static str,
) -> Result<usize, SyscallError> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one int.
    check(
        unsafe { libc::ioctl(fd.as_raw_fd(), request, &raw mut n) },
        call,
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `addr` as a `sockaddr_in` / `sockaddr_in6` in a `sockaddr_storage`.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn a_socket_binds_connects_sends_and_peeks() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let fd = tcp_socket(server).unwrap();
        bind(fd.as_fd(), "127.0.0.1:0".parse().unwrap()).unwrap();
        connect(fd.as_fd(), server).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();

        assert_eq!(send_nowait(fd.as_fd(), b"ping").unwrap(), 4);
        accepted.write_all(b"pong!").unwrap();
        let client = TcpStream::from(fd);
        let mut buf = [0u8; 8];
        while unread(client.as_fd()).unwrap() < 5 {
            std::thread::yield_now();
        }
        assert_eq!(peek(client.as_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"pong!");
        assert_eq!(
            unread(client.as_fd()).unwrap(),
            5,
            "peeking consumes nothing"
        );
    }

    #[test]
    fn connecting_to_a_closed_port_names_the_call() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let fd = tcp_socket(addr).unwrap();

        let err = connect(fd.as_fd(), addr).unwrap_err();

        assert_eq!(
            err.to_string(),
            "connect: Connection refused (os error 111)"
        );
    }
}
