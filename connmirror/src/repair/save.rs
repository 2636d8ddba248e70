//! Reading a live TCP socket's state with `TCP_REPAIR`: the checkpoint half of
//! what [`crate::repair::restore`] rebuilds, as CRIU's libsoccr does it
//! (`libsoccr_save()` in soccr/soccr.c). It is how a connection moves between
//! hosts (failback by migration, [`crate::failover::migrate`]) and what the tests use to
//! cut live connections.
//!
//! [`save`] puts the socket in repair mode and reads, in this order:
//!
//! 1. `TCP_REPAIR_QUEUE = TCP_SEND_QUEUE`: `TCP_QUEUE_SEQ` is `write_seq`, and
//!    `SIOCOUTQ` is `write_seq - snd_una`, so the plan's `send_seq` is `snd_una`;
//!    `recv(MSG_PEEK)` on the send queue copies the queued bytes
//!    (`tcp_peek_sndq()` in net/ipv4/tcp.c), acknowledged or not.
//! 2. `TCP_REPAIR_QUEUE = TCP_RECV_QUEUE`: `TCP_QUEUE_SEQ` is `rcv_nxt`;
//!    `SIOCINQ` must be 0. A [`RestorePlan`] has no place for client bytes the
//!    application has not read, so a socket with some is refused (the caller
//!    lets the application drain it first).
//! 3. `TCP_INFO` for the options (timestamps, SACK, window-scale shifts),
//!    `TCP_MAXSEG` (in repair mode the peer's MSS, `rx_opt.mss_clamp`),
//!    `TCP_REPAIR_WINDOW`, and `TCP_TIMESTAMP` (the socket's next TSval; low
//!    bit clear for Linux's millisecond clock).
//!
//! The socket is left in repair mode: closing it then sends nothing
//! (`__tcp_close()` → `tcp_disconnect()` with `tp->repair` set), so the peer
//! sees no FIN and no RST; the connection lives on wherever the plan is
//! rebuilt.
//!
//! # Minimum kernel version
//! `TCP_REPAIR` 3.5, `TCP_REPAIR_WINDOW` 4.8, `TCP_TIMESTAMP` reads 3.9;
//! developed on 6.18. Needs `CAP_NET_ADMIN`.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};

use crate::repair::restore::{QueueMode, RestoreError, RestoreOptions, RestorePlan, WindowScale};
use crate::sys::sockopt::{self, TCP_RECV_QUEUE, TCP_REPAIR_ON, TCP_SEND_QUEUE, TcpInfo};
use crate::sys::{SyscallError, socket};

/// `tcpi_options` bits (include/uapi/linux/tcp.h).
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

/// Puts the established socket `stream` in repair mode and reads the plan
/// that rebuilds its local end elsewhere, with `queue` (see the module docs).
/// The socket stays in repair mode.
pub fn save(stream: &TcpStream, queue: QueueMode) -> Result<RestorePlan, RestoreError> {
    let fail = |call: &str, error: io::Error| {
        let (server, client) = ends(stream);
        RestoreError {
            call: call.to_owned(),
            server,
            client,
            error,
        }
    };
    let failed = |e: SyscallError| fail(e.call, e.io_error);
    let fd = stream.as_fd();
    let select = |queue| sockopt::set(fd, &sockopt::TCP_REPAIR_QUEUE, &queue).map_err(failed);
    sockopt::set(fd, &sockopt::TCP_REPAIR, &TCP_REPAIR_ON).map_err(failed)?;
    select(TCP_SEND_QUEUE)?;
    let write_seq = sockopt::get(fd, &sockopt::TCP_QUEUE_SEQ)
        .map_err(|e| fail("getsockopt(TCP_QUEUE_SEQ, send queue)", e.io_error))?;
    let queued = socket::unacked(fd).map_err(failed)?;
    let send_queue = peek(fd, queued).map_err(|e| fail("recv(MSG_PEEK) of the send queue", e))?;
    select(TCP_RECV_QUEUE)?;
    let recv_seq = sockopt::get(fd, &sockopt::TCP_QUEUE_SEQ)
        .map_err(|e| fail("getsockopt(TCP_QUEUE_SEQ, receive queue)", e.io_error))?;
    let unread = socket::unread(fd).map_err(failed)?;
    if unread > 0 {
        let error = io::Error::other(format!("{unread} received bytes are not read yet"));
        return Err(fail("ioctl(SIOCINQ)", error));
    }
    let info = tcp_info(fd).map_err(failed)?;
    let timestamps = info.tcpi_options & TCPI_OPT_TIMESTAMPS != 0;
    let mss = sockopt::get(fd, &sockopt::TCP_MAXSEG).map_err(failed)?;
    let window = sockopt::get(fd, &sockopt::TCP_REPAIR_WINDOW).map_err(failed)?;
    let timestamp = match timestamps {
        true => Some(sockopt::get(fd, &sockopt::TCP_TIMESTAMP).map_err(failed)?),
        false => None,
    };
    let (server, client) = ends(stream);
    Ok(RestorePlan {
        server,
        client,
        send_seq: write_seq.wrapping_sub(send_queue.len() as u32),
        recv_seq,
        send_queue,
        options: RestoreOptions {
            mss: u16::try_from(mss).unwrap_or(u16::MAX),
            window_scale: window_scale(&info),
            sack: info.tcpi_options & TCPI_OPT_SACK != 0,
            timestamps,
        },
        window: window.into(),
        timestamp,
        queue,
    })
}

/// `TCP_INFO` of a TCP socket.
pub fn tcp_info(fd: impl AsFd) -> Result<TcpInfo, SyscallError> {
    sockopt::get(fd.as_fd(), &sockopt::TCP_INFO)
}

/// The socket's (local, peer) addresses; unspecified ones if unknown.
fn ends(stream: &TcpStream) -> (SocketAddr, SocketAddr) {
    let none = SocketAddr::from(([0u8; 4], 0));
    (
        stream.local_addr().unwrap_or(none),
        stream.peer_addr().unwrap_or(none),
    )
}

/// The window-scale shifts `TCP_INFO` reports, if scaling was negotiated.
fn window_scale(info: &TcpInfo) -> Option<WindowScale> {
    // `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`: the first bitfield is the low
    // nibble on little-endian targets.
    (info.tcpi_options & TCPI_OPT_WSCALE != 0).then_some(WindowScale {
        send: info.tcpi_snd_rcv_wscale & 0x0f,
        receive: info.tcpi_snd_rcv_wscale >> 4,
    })
}

/// The first `len` bytes of the selected repair queue (`recv(MSG_PEEK)`).
fn peek(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    match socket::peek(fd, &mut buf).map_err(|e| e.io_error)? {
        n if n == len => Ok(buf),
        n => Err(io::Error::other(format!("{n} of {len} bytes"))),
    }
}
