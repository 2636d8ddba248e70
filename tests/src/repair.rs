//! `TCP_REPAIR` fixtures: connections built at chosen sequence numbers, and live
//! sockets dumped and cut the way a failover would find them.
//!
//! The rebuilding itself is the library's ([`connmirror::repair::restore`]); this module
//! only wraps it for tests (panicking with the library's error text) and adds
//! what a test needs and the daemon does not:
//!
//! - [`repaired_pair`]: both ends of a connection at chosen sequence numbers. The
//!   kernel picks initial sequence numbers at random (`secure_tcp_seq()`), so an
//!   ordinary connection almost never crosses 2^32 within a few megabytes; two
//!   repaired sockets can start just below it, as [`wrapping_pair`]'s do.
//! - [`cut`]: reads an established socket's real state with the library's
//!   [`connmirror::repair::save`] (repair-mode `getsockopt`s, as CRIU's libsoccr does
//!   when it checkpoints a socket), and closes the socket in repair mode, which
//!   sends nothing
//!   (`__tcp_close()` → `tcp_disconnect()` with `tp->repair` set): the peer sees
//!   the connection's server end vanish without a FIN or RST, as if its host had
//!   died.
//! - [`tcp_info`]: `TCP_INFO`, for assertions about MSS, options and windows.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;

use connmirror::repair::restore::{
    QueueMode, RepairedSocket, RestoreOptions, RestorePlan, RestoreWindow, WindowScale,
};

use crate::netns::Netns;
use crate::topology::Topology;

/// MSS both ends of a [`repaired_pair`] use (below either family's 1500-byte-MTU MSS).
pub const MSS: u16 = 1400;
/// Window scale both ends of a [`repaired_pair`] use, each way.
pub const WSCALE: u8 = 7;
/// Send and receive window both ends of a [`repaired_pair`] start with, in bytes.
pub const WINDOW: u32 = 256 * 1024;

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

/// Sequence number of the first client → server byte of a [`wrapping_pair`]:
/// the wrap comes about 1 MiB into the stream, once reassembly is well under way.
pub const WRAP_CLIENT_SEQ: u32 = 0xfff0_1234;
/// Sequence number of the first server → client byte of a [`wrapping_pair`]:
/// the wrap comes 32 KiB in.
pub const WRAP_SERVER_SEQ: u32 = 0xffff_8000;

/// A [`repaired_pair`] from `client` in `topo`'s client namespace to `service`
/// in its server namespace whose sequence numbers start just below 2^32
/// ([`WRAP_CLIENT_SEQ`], [`WRAP_SERVER_SEQ`]), so both directions wrap within
/// their first MiB. Returns (client stream, server stream).
pub fn wrapping_pair(
    topo: &Topology,
    client: SocketAddr,
    service: SocketAddr,
) -> (TcpStream, TcpStream) {
    repaired_pair(
        &topo.client,
        &topo.server,
        client,
        service,
        WRAP_CLIENT_SEQ,
        WRAP_SERVER_SEQ,
    )
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
/// connection) into a plan that rebuilds it with `queue`
/// ([`connmirror::repair::save::save`]), then closes it in repair mode, sending
/// nothing.
///
/// Panics with the library's error text, e.g. if the receive queue holds
/// bytes the application has not read: the plan has no place for them (the
/// daemon replays client bytes itself).
pub fn cut(stream: TcpStream, queue: QueueMode) -> RestorePlan {
    let plan = connmirror::repair::save::save(&stream, queue).unwrap_or_else(|e| panic!("{e}"));
    drop(stream);
    plan
}

/// `TCP_INFO` of a TCP socket, for assertions about MSS, options and windows.
pub fn tcp_info(fd: impl AsFd) -> libc::tcp_info {
    connmirror::repair::save::tcp_info(fd).unwrap_or_else(|e| panic!("getsockopt(TCP_INFO): {e}"))
}
