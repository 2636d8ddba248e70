//! `TCP_REPAIR` fixtures: connections built at chosen sequence numbers, and live
//! sockets dumped and cut the way a failover would find them.
//!
//! The rebuilding itself is the library's ([`connmirror::restore`]); this module
//! only wraps it for tests (panicking with the library's error text) and adds
//! what a test needs and the daemon does not:
//!
//! - [`repaired_pair`]: both ends of a connection at chosen sequence numbers. The
//!   kernel picks initial sequence numbers at random (`secure_tcp_seq()`), so an
//!   ordinary connection almost never crosses 2^32 within a few megabytes; two
//!   repaired sockets can start just below it.
//! - [`cut`]: reads an established socket's real state with repair-mode
//!   `getsockopt`s, as CRIU's libsoccr does when it checkpoints a socket
//!   (`libsoccr_save()` in soccr/soccr.c), turns it into a
//!   [`RestorePlan`], and closes the socket in repair mode, which sends nothing
//!   (`__tcp_close()` → `tcp_disconnect()` with `tp->repair` set): the peer sees
//!   the connection's server end vanish without a FIN or RST, as if its host had
//!   died.
//! - [`tcp_info`]: `TCP_INFO`, for assertions about MSS, options and windows.

use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use connmirror::restore::{
    QueueMode, RepairedSocket, RestoreOptions, RestorePlan, RestoreWindow, WindowScale,
};
use connmirror::sockopt;

use crate::netns::Netns;

/// MSS both ends of a [`repaired_pair`] use (below either family's 1500-byte-MTU MSS).
pub const MSS: u16 = 1400;
/// Window scale both ends of a [`repaired_pair`] use, each way.
pub const WSCALE: u8 = 7;
/// Send and receive window both ends of a [`repaired_pair`] start with, in bytes.
pub const WINDOW: u32 = 256 * 1024;

/// `TCP_REPAIR` and `TCP_REPAIR_QUEUE` values (include/uapi/linux/tcp.h).
const TCP_REPAIR_ON: libc::c_int = 1;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// `tcpi_options` bits (include/uapi/linux/tcp.h).
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// `SIOCINQ` / `SIOCOUTQ` (include/uapi/linux/sockios.h: aliases of `FIONREAD` /
/// `TIOCOUTQ`); libc does not define them.
const SIOCINQ: libc::Ioctl = libc::FIONREAD;
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;

/// An established connection between `client` (a socket in `client_ns`) and
/// `server` (in `server_ns`) whose client → server bytes start at sequence number
/// `client_seq` and server → client bytes at `server_seq`, with no handshake on
/// the wire. Returns (client stream, server stream).
///
/// Both sockets are created in repair mode before either leaves it, so neither
/// end ever sees a segment for a socket that does not exist yet (a window probe
/// reaching a namespace with no socket for it would be answered with a reset).
pub fn repaired_pair(
    client_ns: &Netns,
    server_ns: &Netns,
    client: SocketAddr,
    server: SocketAddr,
    client_seq: u32,
    server_seq: u32,
) -> (TcpStream, TcpStream) {
    let c = build_in(
        client_ns,
        &pair_plan(client, server, client_seq, server_seq),
    );
    let s = build_in(
        server_ns,
        &pair_plan(server, client, server_seq, client_seq),
    );
    let s = s.leave_repair().unwrap_or_else(|e| panic!("{e}"));
    let c = c.leave_repair().unwrap_or_else(|e| panic!("{e}"));
    (c, s)
}

/// [`RepairedSocket::build`] inside `ns`; panics with the error's text.
pub fn build_in(ns: &Netns, plan: &RestorePlan) -> RepairedSocket {
    ns.run(|| RepairedSocket::build(plan))
        .unwrap_or_else(|e| panic!("in {}: {e}", ns.name()))
}

/// One end of a [`repaired_pair`]: `local` is the plan's "server" end.
fn pair_plan(local: SocketAddr, peer: SocketAddr, send_seq: u32, recv_seq: u32) -> RestorePlan {
    RestorePlan {
        server: local,
        client: peer,
        send_seq,
        recv_seq,
        send_queue: Vec::new(),
        options: RestoreOptions {
            mss: MSS,
            window_scale: Some(WindowScale {
                send: WSCALE,
                receive: WSCALE,
            }),
            sack: true,
            timestamps: false,
        },
        window: RestoreWindow {
            snd_wl1: recv_seq,
            snd_wnd: WINDOW,
            max_window: WINDOW,
            rcv_wnd: WINDOW,
            rcv_wup: recv_seq,
        },
        timestamp: None,
        queue: QueueMode::Sent,
    }
}

/// Dumps the state of the established socket `stream` (the server end of its
/// connection) into a plan that rebuilds it with `queue`, then closes it in
/// repair mode, sending nothing.
///
/// Reads, all in repair mode: `TCP_QUEUE_SEQ` of the send queue (`write_seq`) and
/// `SIOCOUTQ` (`write_seq - snd_una`), so `send_seq` is `snd_una`; the queued
/// bytes themselves with `recv(MSG_PEEK)` on the send queue (`tcp_peek_sndq()`);
/// `TCP_QUEUE_SEQ` of the receive queue (`rcv_nxt`); `TCP_REPAIR_WINDOW`;
/// `TCP_MAXSEG` (in repair mode the peer's MSS, `rx_opt.mss_clamp`); `TCP_INFO`
/// for the options; `TCP_TIMESTAMP` (the next TSval, low bit clear for the
/// millisecond clock).
///
/// Panics if the receive queue holds bytes the application has not read: the
/// plan has no place for them (the daemon replays client bytes itself).
pub fn cut(stream: TcpStream, queue: QueueMode) -> RestorePlan {
    let server = stream.local_addr().expect("local_addr");
    let client = stream.peer_addr().expect("peer_addr");
    let fd = stream.as_fd();
    set_tcp(fd, libc::TCP_REPAIR, TCP_REPAIR_ON);
    set_tcp(fd, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
    let write_seq: u32 = get_tcp(fd, libc::TCP_QUEUE_SEQ);
    let send_queue = peek(fd, ioctl_len(fd, SIOCOUTQ, "SIOCOUTQ"));
    set_tcp(fd, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    let recv_seq: u32 = get_tcp(fd, libc::TCP_QUEUE_SEQ);
    let unread = ioctl_len(fd, SIOCINQ, "SIOCINQ");
    assert_eq!(
        unread, 0,
        "{server} ↔ {client}: read everything before the cut"
    );
    let info = tcp_info(fd);
    let timestamps = info.tcpi_options & TCPI_OPT_TIMESTAMPS != 0;
    let mss: libc::c_int = get_tcp(fd, libc::TCP_MAXSEG);
    let plan = RestorePlan {
        server,
        client,
        send_seq: write_seq.wrapping_sub(send_queue.len() as u32),
        recv_seq,
        send_queue,
        options: RestoreOptions {
            mss: u16::try_from(mss).expect("MSS fits in 16 bits"),
            window_scale: window_scale(&info),
            sack: info.tcpi_options & TCPI_OPT_SACK != 0,
            timestamps,
        },
        window: get_tcp(fd, libc::TCP_REPAIR_WINDOW),
        timestamp: timestamps.then(|| get_tcp(fd, libc::TCP_TIMESTAMP)),
        queue,
    };
    drop(stream);
    plan
}

/// The window-scale shifts `TCP_INFO` reports, if scaling was negotiated.
fn window_scale(info: &libc::tcp_info) -> Option<WindowScale> {
    // `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`: the first bitfield is the low
    // nibble on little-endian targets.
    (info.tcpi_options & TCPI_OPT_WSCALE != 0).then_some(WindowScale {
        send: info.tcpi_snd_rcv_wscale & 0x0f,
        receive: info.tcpi_snd_rcv_wscale >> 4,
    })
}

/// `TCP_INFO` of a TCP socket.
pub fn tcp_info(fd: impl AsFd) -> libc::tcp_info {
    get_tcp(fd.as_fd(), libc::TCP_INFO)
}

/// `getsockopt(IPPROTO_TCP, option)` into a `T` (plain old data the kernel fills
/// in; a shorter answer leaves the rest zero).
fn get_tcp<T: Copy>(fd: BorrowedFd<'_>, option: libc::c_int) -> T {
    // SAFETY: every T used here is plain old data for which all-zero is valid.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is valid for writing `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    assert!(
        rc == 0,
        "getsockopt(IPPROTO_TCP, {option}): {}",
        io::Error::last_os_error()
    );
    value
}

fn set_tcp(fd: BorrowedFd<'_>, option: libc::c_int, value: libc::c_int) {
    sockopt::set_int(fd, libc::IPPROTO_TCP, option, value)
        .unwrap_or_else(|e| panic!("setsockopt(IPPROTO_TCP, {option}, {value}): {e}"));
}

/// A byte count from `ioctl(request)`.
fn ioctl_len(fd: BorrowedFd<'_>, request: libc::Ioctl, name: &str) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &raw mut n) };
    assert!(rc == 0, "ioctl({name}): {}", io::Error::last_os_error());
    usize::try_from(n).expect("non-negative queue length")
}

/// The first `len` bytes of the selected repair queue (`recv(MSG_PEEK)`).
fn peek(fd: BorrowedFd<'_>, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return buf;
    }
    // SAFETY: `buf` is valid for writing `len` bytes.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    assert!(
        n >= 0,
        "recv(MSG_PEEK) of the send queue: {}",
        io::Error::last_os_error()
    );
    assert_eq!(n as usize, len, "recv(MSG_PEEK) of the send queue");
    buf
}
