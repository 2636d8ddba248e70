//! TCP connections built with `TCP_REPAIR`, so that a test picks their sequence
//! numbers.
//!
//! The kernel chooses a connection's initial sequence numbers at random
//! (`secure_tcp_seq()`), so an ordinary connection almost never crosses 2^32 within
//! a few megabytes. Repair mode (kernel ≥ 3.5; `TCP_REPAIR_WINDOW` ≥ 4.8) lets a
//! privileged process create an *established* socket with chosen state instead of
//! running a handshake; CRIU's libsoccr (`soccr/soccr.c`) restores sockets this
//! way. [`RepairSocket::create`] follows its order:
//!
//! 1. `TCP_REPAIR = 1` (needs `CAP_NET_ADMIN`);
//! 2. `bind` the local address (repair mode forces address reuse);
//! 3. `TCP_REPAIR_QUEUE = TCP_SEND_QUEUE`, `TCP_QUEUE_SEQ` = the sequence number of
//!    the first byte this side will send (`write_seq`);
//! 4. `TCP_REPAIR_QUEUE = TCP_RECV_QUEUE`, `TCP_QUEUE_SEQ` = the sequence number of
//!    the first byte it expects (`rcv_nxt`). `do_tcp_setsockopt()` accepts both only
//!    while the socket is still closed;
//! 5. `connect`: `tcp_connect()` (net/ipv4/tcp_output.c) sees `tp->repair`, calls
//!    `tcp_finish_connect()` and sends nothing, so the socket is established at
//!    once;
//! 6. `TCP_REPAIR_OPTIONS`: MSS, window scaling both ways, SACK permitted
//!    (`tcp_repair_options_est()` takes them only on an established socket that
//!    has sent nothing);
//! 7. `TCP_REPAIR_WINDOW`: `tcp_connect_init()` left the send window at 0 and
//!    `snd_wl1` at 0, and a peer ACK whose sequence number is "before" 0 in the
//!    signed 32-bit comparison (any value in the upper half, as here) would never
//!    update the window (`tcp_may_update_window()` in net/ipv4/tcp_input.c); the
//!    window is therefore set explicitly, consistent on both ends;
//!
//! and [`RepairSocket::leave_repair`] finally sets `TCP_REPAIR = 0`, after which the
//! kernel sends one window probe (a bare ACK with sequence `snd_una - 1`) and the
//! socket behaves like any other.
//!
//! Both ends of a connection must exist before either leaves repair mode: a
//! window probe (or data) reaching a namespace with no socket for it would be
//! answered with a reset. [`repaired_pair`] does that.
//!
//! Sequence numbers are `u32` all the way: values above 2^31 go to `setsockopt` as
//! unsigned 32-bit integers.

use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netns::Netns;

/// `TCP_REPAIR` values (include/uapi/linux/tcp.h).
const TCP_REPAIR_ON: libc::c_int = 1;
const TCP_REPAIR_OFF: libc::c_int = 0;
/// `TCP_REPAIR_QUEUE` values.
const TCP_NO_QUEUE: libc::c_int = 0;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// `TCP_REPAIR_OPTIONS` codes: the TCP option kinds (RFC 9293, RFC 7323, RFC 2018).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;

/// MSS both ends use (below either family's 1500-byte-MTU MSS).
pub const MSS: u32 = 1400;
/// Window scale both ends use, each way.
pub const WSCALE: u32 = 7;
/// Send and receive window both ends start with, in bytes.
pub const WINDOW: u32 = 256 * 1024;

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpRepairOpt {
    opt_code: u32,
    opt_val: u32,
}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpRepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

/// An established TCP socket still in repair mode: nothing has been sent.
#[derive(Debug)]
pub struct RepairSocket {
    fd: OwnedFd,
    /// `local → peer`, for messages.
    what: String,
}

impl RepairSocket {
    /// Creates, inside `ns`, a socket connected from `local` to `peer` whose first
    /// byte sent will have sequence number `send_seq` and whose first byte expected
    /// has `recv_seq`. Panics naming the failing call.
    pub fn create(
        ns: &Netns,
        local: SocketAddr,
        peer: SocketAddr,
        send_seq: u32,
        recv_seq: u32,
    ) -> RepairSocket {
        let what = format!("{local} → {peer}");
        let domain = match local {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // A socket belongs to the namespace it was created in; the other calls
        // may run anywhere.
        let fd = ns.run(|| {
            // SAFETY: plain socket(2) call.
            let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(
                raw >= 0,
                "socket(SOCK_STREAM) in {}: {}",
                ns.name(),
                io::Error::last_os_error()
            );
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(raw) }
        });
        let sock = RepairSocket { fd, what };
        sock.set_int("TCP_REPAIR", libc::TCP_REPAIR, TCP_REPAIR_ON);
        sock.addr_call("bind", local, libc::bind);
        sock.set_int("TCP_REPAIR_QUEUE", libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
        sock.set_u32("TCP_QUEUE_SEQ (send)", libc::TCP_QUEUE_SEQ, send_seq);
        sock.set_int("TCP_REPAIR_QUEUE", libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
        sock.set_u32("TCP_QUEUE_SEQ (receive)", libc::TCP_QUEUE_SEQ, recv_seq);
        sock.set_int("TCP_REPAIR_QUEUE", libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
        sock.addr_call("connect", peer, libc::connect);
        let options = [
            TcpRepairOpt {
                opt_code: TCPOPT_MSS,
                opt_val: MSS,
            },
            TcpRepairOpt {
                opt_code: TCPOPT_WINDOW,
                opt_val: WSCALE | (WSCALE << 16),
            },
            TcpRepairOpt {
                opt_code: TCPOPT_SACK_PERM,
                opt_val: 0,
            },
        ];
        sock.set("TCP_REPAIR_OPTIONS", libc::TCP_REPAIR_OPTIONS, &options);
        let window = TcpRepairWindow {
            snd_wl1: recv_seq,
            snd_wnd: WINDOW,
            max_window: WINDOW,
            rcv_wnd: WINDOW,
            rcv_wup: recv_seq,
        };
        sock.set("TCP_REPAIR_WINDOW", libc::TCP_REPAIR_WINDOW, &window);
        sock
    }

    /// Leaves repair mode (`TCP_REPAIR = 0`; the kernel sends a window probe) and
    /// returns an ordinary blocking stream.
    pub fn leave_repair(self) -> TcpStream {
        self.set_int("TCP_REPAIR", libc::TCP_REPAIR, TCP_REPAIR_OFF);
        let RepairSocket { fd, .. } = self;
        TcpStream::from(fd)
    }

    fn set_int(&self, name: &str, option: libc::c_int, value: libc::c_int) {
        self.set(&format!("{name}={value}"), option, &value);
    }

    fn set_u32(&self, name: &str, option: libc::c_int, value: u32) {
        self.set(&format!("{name}={value:#010x}"), option, &value);
    }

    /// `setsockopt(SOL_TCP, option, value)`.
    fn set<T: ?Sized>(&self, name: &str, option: libc::c_int, value: &T) {
        // SAFETY: `value` is a valid buffer of the length passed; every T used here
        // is plain old data with the layout the kernel expects.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_TCP,
                option,
                (value as *const T).cast(),
                size_of_val(value) as libc::socklen_t,
            )
        };
        assert!(
            rc == 0,
            "setsockopt({name}) on {}: {}",
            self.what,
            io::Error::last_os_error()
        );
    }

    /// `bind` or `connect` to `addr`.
    fn addr_call(
        &self,
        name: &str,
        addr: SocketAddr,
        call: unsafe extern "C" fn(
            libc::c_int,
            *const libc::sockaddr,
            libc::socklen_t,
        ) -> libc::c_int,
    ) {
        let (storage, len) = sockaddr(addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
        let rc = unsafe { call(self.fd.as_raw_fd(), (&raw const storage).cast(), len) };
        assert!(
            rc == 0,
            "{name}({addr}) in repair mode on {}: {}",
            self.what,
            io::Error::last_os_error()
        );
    }
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

/// An established connection between `client` (a socket in `client_ns`) and
/// `server` (in `server_ns`) whose client → server bytes start at sequence number
/// `client_seq` and server → client bytes at `server_seq`, with no handshake on
/// the wire. Returns (client stream, server stream).
///
/// Both sockets are created in repair mode before either leaves it, so neither
/// end ever sees a segment for a socket that does not exist yet.
pub fn repaired_pair(
    client_ns: &Netns,
    server_ns: &Netns,
    client: SocketAddr,
    server: SocketAddr,
    client_seq: u32,
    server_seq: u32,
) -> (TcpStream, TcpStream) {
    let c = RepairSocket::create(client_ns, client, server, client_seq, server_seq);
    let s = RepairSocket::create(server_ns, server, client, server_seq, client_seq);
    let s = s.leave_repair();
    let c = c.leave_repair();
    (c, s)
}
