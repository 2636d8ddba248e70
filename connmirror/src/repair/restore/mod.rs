//! Rebuilding the server end of a TCP connection with `TCP_REPAIR`.
//!
//! Repair mode ([`TCP_REPAIR`], Linux ≥ 3.5, needs `CAP_NET_ADMIN`) lets a
//! privileged process create an *established* TCP socket whose state it chooses:
//! sequence numbers, negotiated options, windows, timestamp clock and the bytes
//! still in flight. Nothing is sent on the wire while a socket is in repair mode;
//! the kernel behaves as if the connection had always existed once repair mode is
//! left. CRIU restores sockets this way (its `soccr/soccr.c`, "libsoccr"); this
//! module does the same from a [`RestorePlan`] that the standby built from the
//! mirrored segments (see docs/architecture.md, "State needed to restore one connection").
//!
//! # Order, and why each step is there
//!
//! [`RepairedSocket::build`] makes these calls, in this order (kernel functions
//! are in [net/ipv4/tcp.c] unless named otherwise):
//!
//! 1. `socket(SOCK_STREAM | SOCK_CLOEXEC)`, then `TCP_REPAIR = 1`.
//!    `do_tcp_setsockopt()` sets `tp->repair` and `sk->sk_reuse =
//!    SK_FORCE_REUSE`, so `bind()` below ignores every other socket on the port.
//!    That is why there is **no `SO_REUSEADDR`**: with it, each `bind()` walks the
//!    port's owners (measured here: 1.3 s in `bind` alone for 10,000 sockets on one
//!    port, 0.02 s without).
//! 2. `IP_FREEBIND` + `IP_TRANSPARENT` (IPv4) or `IPV6_FREEBIND` +
//!    `IPV6_TRANSPARENT` (IPv6). During takeover the service address becomes local
//!    only after every socket exists (a client retransmission meeting a kernel that
//!    owns the address but has no socket is answered with a reset). `FREEBIND`
//!    lets `bind()` take the foreign address; `TRANSPARENT` sets
//!    `FLOWI_FLAG_ANYSRC` so that the route lookup in the repair-mode `connect()`
//!    accepts it as a source (`__ip_route_output_key()` in net/ipv4/route.c;
//!    without it IPv4 fails with `ENETUNREACH`).
//! 3. `TCP_MAXSEG = options.mss`, **before** `connect()`. `tcp_connect_init()`
//!    ([net/ipv4/tcp_output.c]) computes `mss_cache`, the size of every segment
//!    the socket will send, from `rx_opt.mss_clamp`, which it takes from the user
//!    MSS set here. `TCP_REPAIR_OPTIONS` later sets `mss_clamp` again but never
//!    recomputes `mss_cache` (`tcp_repair_options_est()` only calls
//!    `tcp_mtup_init()`), so without this step a restored socket keeps the
//!    default clamp set by `tcp_v4_connect()` / `tcp_v6_connect()`: 536 on IPv4,
//!    1220 on IPv6 (measured here: `tcpi_snd_mss` 524 / 1208 with timestamps,
//!    until traffic made the kernel resynchronise it; a 1 MB transfer to a
//!    client with MSS 600 took about a minute instead of a fraction of a
//!    second). Side effect:
//!    the socket's advertised-MSS estimate (`advmss`, used only to size its
//!    receive-side heuristics, never sent again) is clamped to the client's MSS.
//! 4. `bind(server)`.
//! 5. `TCP_REPAIR_QUEUE = TCP_SEND_QUEUE`, `TCP_QUEUE_SEQ = send_seq`; then
//!    `TCP_RECV_QUEUE`, `TCP_QUEUE_SEQ = recv_seq`; then `TCP_NO_QUEUE`.
//!    `TCP_QUEUE_SEQ` sets `write_seq` / `rcv_nxt` and is accepted only while the
//!    socket is still `TCP_CLOSE`.
//! 6. `connect(client)`: `tcp_connect()` sees `tp->repair`, calls
//!    `tcp_finish_connect()` and sends nothing: the socket is `ESTABLISHED` with
//!    `snd_una = snd_nxt = write_seq`.
//! 7. `TCP_REPAIR_OPTIONS`: MSS, window scaling, SACK permitted, timestamps. The
//!    kernel takes them only on an established socket that has sent nothing
//!    (`tp->bytes_sent == 0`, `EPERM` otherwise), hence before any data is queued.
//!    Window scaling is always given: when the connection has none, as shift 0
//!    both ways. `tcp_connect_init()` already chose a receive shift for the SYN it
//!    never sent, and `tcp_select_window()` ([net/ipv4/tcp_output.c]) applies
//!    `rx_opt.rcv_wscale` whether or not scaling was negotiated; leaving it would
//!    make the socket advertise windows 2^shift times too small to a client that
//!    does not scale (measured here: the peer saw a 63-byte window instead of
//!    64,064).
//! 8. `TCP_REPAIR_WINDOW` (Linux ≥ 4.8): `tcp_repair_set_window()` sets `snd_wl1`,
//!    `snd_wnd`, `max_window`, `rcv_wnd`, `rcv_wup`. Without it `snd_wnd` is 0
//!    and `snd_wl1` is 0, and the client's ACKs would not open the window while
//!    their sequence number is "before" 0 in the signed 32-bit comparison of
//!    `tcp_may_update_window()` ([net/ipv4/tcp_input.c]). It refuses (`EINVAL`)
//!    `max_window < snd_wnd`, `snd_wl1` after `rcv_nxt + rcv_wnd`, and `rcv_wup`
//!    after `rcv_nxt`.
//! 9. `TCP_TIMESTAMP` when [`RestorePlan::timestamp`] is set: the kernel stores
//!    `tsoffset = value - now`, so the restored socket's TSvals continue the
//!    primary's. Since Linux 6.7 the value's low bit selects a microsecond clock
//!    (`tp->tcp_usec_ts = val & 1`); the plan holds a millisecond TSval, so
//!    [`RepairedSocket::build`] clears that bit (a set bit made a lab restore emit
//!    TSvals 1000× too fast).
//! 10. [`QueueMode::Sent`]: `TCP_REPAIR_QUEUE = TCP_SEND_QUEUE`, `send()` the
//!     bytes, `TCP_NO_QUEUE`. In repair mode `tcp_write_xmit()` moves them
//!     straight to the retransmission queue as if sent
//!     (`tcp_event_new_data_sent()`), so the kernel retransmits them on its own
//!     timers. `SO_SNDBUFFORCE` is raised first when the queue is large: nothing
//!     is acknowledged in repair mode, so a send that does not fit would never
//!     complete.
//!
//! [`RepairedSocket::leave_repair`] then sets `TCP_REPAIR = 0`:
//! `tcp_send_window_probe()` ([net/ipv4/tcp_output.c]) sends a bare ACK with
//! sequence `snd_una - 1`, which the client answers with an ACK carrying its
//! `rcv_nxt` and window. In [`QueueMode::Unsent`] the bytes are written now, as
//! new data (libsoccr's "unsent" part), and go out at once, within the congestion
//! window, instead of waiting for the retransmission timer.
//!
//! # Sent or unsent
//!
//! Measured here (kernel 6.18, a client behind a forwarding namespace, 50,000
//! bytes the client never received in the restored send queue): with
//! [`QueueMode::Unsent`] the client had them 0.4 ms after
//! [`RepairedSocket::leave_repair`]; with [`QueueMode::Sent`], 4.1 s. A restored
//! socket has no RTT sample, so its tail-loss probe fires after
//! `TCP_TIMEOUT_INIT` (1 s) and sends only the last segment, which the client
//! SACKs; without an RTT, RACK does not mark the rest lost, and
//! `tcp_init_metrics()` ([net/ipv4/tcp_metrics.c]) has set the RTO to
//! `TCP_TIMEOUT_FALLBACK` (3 s) before the head is retransmitted. Bytes the
//! client did receive (only its ACK was lost) arrive twice in unsent mode; the
//! client drops the copies and reports them with a D-SACK.
//!
//! [`RepairedSocket::reset`] leaves with `TCP_REPAIR_OFF_NO_WP` (no probe) and
//! closes with a zero linger time: `tcp_disconnect()` sends one RST with
//! `tcp_acceptable_seq()`, which is `snd_nxt` while that is inside the client's
//! window. A client whose `rcv_nxt` equals it accepts the RST at once
//! (RFC 5961 §3.2); otherwise it answers with a challenge ACK, which a host with
//! no socket for the flow answers with a RST at exactly the acknowledged sequence.
//!
//! Dropping a [`RepairedSocket`] sends nothing: `__tcp_close()` sees `tp->repair`
//! and calls `tcp_disconnect()`, which in repair mode only sets `ECONNABORTED` on
//! the socket instead of sending a RST.
//!
//! Sequence numbers are `u32` throughout and go to `setsockopt()` as unsigned
//! 32-bit values, including those above 2^31.
//!
//! # Example
//!
//! ```no_run
//! use std::net::TcpStream;
//!
//! use connmirror::repair::restore::{RestoreError, RestorePlan, build_all, leave_all};
//!
//! /// Runs on a thread inside the standby's network namespace.
//! fn take_over(plans: &[RestorePlan]) -> Vec<Result<TcpStream, RestoreError>> {
//!     // The service address is not local yet, and nothing is sent.
//!     let mut sockets = Vec::new();
//!     for built in build_all(plans, 2) {
//!         match built {
//!             Ok(socket) => sockets.push(socket),
//!             Err(err) => eprintln!("not restored: {err}"),
//!         }
//!     }
//!     // Make the service address local here, then:
//!     leave_all(sockets, 2)
//! }
//! ```
//!
//! # Minimum kernel version
//!
//! `TCP_REPAIR`, `TCP_REPAIR_QUEUE`, `TCP_QUEUE_SEQ`, `TCP_REPAIR_OPTIONS`: 3.5.
//! `TCP_TIMESTAMP` setsockopt: 3.9. `TCP_REPAIR_WINDOW` and
//! `TCP_REPAIR_OFF_NO_WP`: 4.8. The low-bit microsecond flag of `TCP_TIMESTAMP`:
//! 6.7 (on older kernels the bit is an ordinary part of the value, and clearing
//! it costs at most one millisecond). `/proc/thread-self`: 3.17.
//!
//! [`TCP_REPAIR`]: https://lwn.net/Articles/495304/
//! [net/ipv4/tcp.c]: https://github.com/torvalds/linux/blob/master/net/ipv4/tcp.c
//! [net/ipv4/tcp_output.c]: https://github.com/torvalds/linux/blob/master/net/ipv4/tcp_output.c
//! [net/ipv4/tcp_input.c]: https://github.com/torvalds/linux/blob/master/net/ipv4/tcp_input.c
//! [net/ipv4/tcp_metrics.c]: https://github.com/torvalds/linux/blob/master/net/ipv4/tcp_metrics.c

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sys::sockopt::{
    self, Opt, TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_REPAIR_OFF, TCP_REPAIR_OFF_NO_WP, TCP_REPAIR_ON,
    TCP_SEND_QUEUE, TcpRepairOpt, TcpRepairWindow,
};
use crate::sys::{SyscallError, socket};

mod parallel;
#[cfg(test)]
mod tests;

pub use parallel::{build_all, leave_all};

/// `TCP_REPAIR_OPTIONS` codes are the TCP option kinds (`TCPOPT_*` in
/// include/net/tcp.h, a kernel-internal header libc does not mirror).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// The low bit of a `TCP_TIMESTAMP` value selects the microsecond clock (Linux ≥ 6.7).
const TCP_TIMESTAMP_USEC: u32 = 1;

/// Everything needed to rebuild the server end of one connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestorePlan {
    /// The local end: the service address and port.
    pub server: SocketAddr,
    /// The peer.
    pub client: SocketAddr,
    /// `snd_una`: the sequence number of `send_queue[0]`.
    pub send_seq: u32,
    /// `rcv_nxt`: the next client byte expected.
    pub recv_seq: u32,
    /// Server → client bytes `[snd_una, snd_nxt)` the client has not acknowledged.
    pub send_queue: Vec<u8>,
    /// Options negotiated in the handshake.
    pub options: RestoreOptions,
    /// Windows, as `TCP_REPAIR_WINDOW` takes them.
    pub window: RestoreWindow,
    /// The server's next TSval (`TCP_TIMESTAMP`) when timestamps are on: a
    /// millisecond value; its low bit is cleared (see the module docs, step 9).
    pub timestamp: Option<u32>,
    /// How the send queue is refilled.
    pub queue: QueueMode,
}

/// Options negotiated in the SYN / SYN-ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOptions {
    /// The peer's (client's) MSS.
    pub mss: u16,
    /// Window scaling, if both ends offered it.
    pub window_scale: Option<WindowScale>,
    /// SACK permitted.
    pub sack: bool,
    /// Timestamps (RFC 7323) on.
    pub timestamps: bool,
}

/// Window-scale shifts of a connection that negotiated scaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowScale {
    /// The shift the client applies to its windows (`snd_wscale`).
    pub send: u8,
    /// The shift we apply to ours (`rcv_wscale`).
    pub receive: u8,
}

/// `struct tcp_repair_window` (include/uapi/linux/tcp.h, Linux ≥ 4.8), field for
/// field, as `TCP_REPAIR_WINDOW` reads and writes it ([`TcpRepairWindow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestoreWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// The client's window, in bytes (already scaled).
    pub snd_wnd: u32,
    /// Largest window the client ever offered, in bytes.
    pub max_window: u32,
    /// Our receive window, in bytes.
    pub rcv_wnd: u32,
    /// `rcv_nxt` when `rcv_wnd` was last advertised.
    pub rcv_wup: u32,
}

impl From<TcpRepairWindow> for RestoreWindow {
    fn from(w: TcpRepairWindow) -> RestoreWindow {
        let TcpRepairWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        } = w;
        RestoreWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        }
    }
}

impl From<RestoreWindow> for TcpRepairWindow {
    fn from(w: RestoreWindow) -> TcpRepairWindow {
        let RestoreWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        } = w;
        TcpRepairWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        }
    }
}

/// How the unacknowledged send-queue bytes are put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum QueueMode {
    /// Queued in repair mode: they count as sent, and the kernel retransmits them
    /// when its timers fire (seconds after the restore; see the module docs,
    /// "Sent or unsent").
    #[default]
    Sent,
    /// The send queue starts at `snd_una` and the bytes are written with `send()`
    /// after leaving repair mode, so they are transmitted at once (libsoccr's
    /// unsent part).
    Unsent,
}

/// A failed call while restoring one connection.
#[derive(Debug, Error)]
#[error("{call} on {server} ↔ {client}: {error}")]
pub struct RestoreError {
    /// The call that failed, e.g. `setsockopt(TCP_REPAIR_WINDOW)`.
    pub call: String,
    /// The local end of the connection.
    pub server: SocketAddr,
    /// The peer.
    pub client: SocketAddr,
    /// What the kernel said.
    pub error: io::Error,
}

/// A socket rebuilt in repair mode: established, nothing sent yet.
///
/// Dropping it closes the socket without sending anything (see the module docs).
pub struct RepairedSocket {
    fd: OwnedFd,
    server: SocketAddr,
    client: SocketAddr,
    /// [`QueueMode::Unsent`] bytes still to be written after leaving repair mode.
    unsent: Vec<u8>,
}

impl RepairedSocket {
    /// Rebuilds the connection `plan` describes, in the calling thread's network
    /// namespace, and leaves the socket in repair mode.
    pub fn build(plan: &RestorePlan) -> Result<RepairedSocket, RestoreError> {
        let mut sock = RepairedSocket::open(plan.server, plan.client)?;
        sock.allow_foreign_address()?;
        sock.set(&sockopt::TCP_MAXSEG, &i32::from(plan.options.mss))?;
        socket::bind(sock.fd.as_fd(), plan.server).map_err(|e| sock.failed(e))?;
        sock.set_queue_seq(
            TCP_SEND_QUEUE,
            plan.send_seq,
            "setsockopt(TCP_QUEUE_SEQ, send queue)",
        )?;
        sock.set_queue_seq(
            TCP_RECV_QUEUE,
            plan.recv_seq,
            "setsockopt(TCP_QUEUE_SEQ, receive queue)",
        )?;
        sock.select_queue(TCP_NO_QUEUE)?;
        socket::connect(sock.fd.as_fd(), plan.client).map_err(|e| sock.failed(e))?;
        sock.set_options(&plan.options)?;
        sock.set(&sockopt::TCP_REPAIR_WINDOW, &plan.window.into())?;
        if let Some(ts) = plan.timestamp {
            sock.set(&sockopt::TCP_TIMESTAMP, &(ts & !TCP_TIMESTAMP_USEC))?;
        }
        match plan.queue {
            QueueMode::Sent => sock.queue_as_sent(&plan.send_queue)?,
            QueueMode::Unsent => sock.unsent = plan.send_queue.clone(),
        }
        Ok(sock)
    }

    /// Leaves repair mode (`TCP_REPAIR = 0`: the kernel sends a window probe), then
    /// writes the [`QueueMode::Unsent`] bytes, and returns a blocking stream.
    pub fn leave_repair(self) -> Result<TcpStream, RestoreError> {
        self.set(&sockopt::TCP_REPAIR, &TCP_REPAIR_OFF)?;
        if !self.unsent.is_empty() {
            self.send_all(&self.unsent)?;
        }
        let RepairedSocket { fd, .. } = self;
        Ok(TcpStream::from(fd))
    }

    /// Resets the connection cleanly: leaves repair mode without a window probe
    /// (`TCP_REPAIR_OFF_NO_WP`), sets `SO_LINGER {1, 0}` and closes, so the kernel
    /// sends one RST with sequence `snd_nxt` = `send_seq` + the send queue's length.
    /// For flows that cannot be restored.
    ///
    /// In [`QueueMode::Unsent`] the bytes are queued in repair mode first, so that
    /// `snd_nxt` is the same in both modes: the client most likely received every
    /// byte the primary sent, and accepts a RST only at its `rcv_nxt`.
    pub fn reset(self) -> Result<(), RestoreError> {
        self.queue_as_sent(&self.unsent)?;
        self.set(&sockopt::TCP_REPAIR, &TCP_REPAIR_OFF_NO_WP)?;
        sockopt::linger_zero(self.fd.as_fd()).map_err(|e| self.failed(e))?;
        // close(2) of a TCP socket does not fail; the RST is sent from inside it.
        drop(self);
        Ok(())
    }

    /// The connection's `(server, client)` addresses.
    pub fn flow(&self) -> (SocketAddr, SocketAddr) {
        (self.server, self.client)
    }

    /// `socket()` for the family of `server`, then `TCP_REPAIR = 1`.
    fn open(server: SocketAddr, client: SocketAddr) -> Result<RepairedSocket, RestoreError> {
        let fd = socket::tcp_socket(server)
            .map_err(|e| restore_error(e.call, server, client, e.io_error))?;
        let sock = RepairedSocket {
            fd,
            server,
            client,
            unsent: Vec::new(),
        };
        sock.set(&sockopt::TCP_REPAIR, &TCP_REPAIR_ON)?;
        Ok(sock)
    }

    /// `*_FREEBIND` and `*_TRANSPARENT`: `bind()` and `connect()` work while the
    /// service address is not local yet (module docs, step 2).
    fn allow_foreign_address(&self) -> Result<(), RestoreError> {
        let options = match self.server {
            SocketAddr::V4(_) => [sockopt::IP_FREEBIND, sockopt::IP_TRANSPARENT],
            SocketAddr::V6(_) => [sockopt::IPV6_FREEBIND, sockopt::IPV6_TRANSPARENT],
        };
        (options.iter()).try_for_each(|option| self.set(option, &1))
    }

    /// `TCP_REPAIR_QUEUE = queue`, then `TCP_QUEUE_SEQ = seq` for it.
    fn set_queue_seq(&self, queue: i32, seq: u32, call: &'static str) -> Result<(), RestoreError> {
        self.select_queue(queue)?;
        sockopt::set(self.fd.as_fd(), &sockopt::TCP_QUEUE_SEQ, &seq)
            .map_err(|e| self.error(call, e.io_error))
    }

    fn select_queue(&self, queue: i32) -> Result<(), RestoreError> {
        self.set(&sockopt::TCP_REPAIR_QUEUE, &queue)
    }

    /// `TCP_REPAIR_OPTIONS` (module docs, step 7).
    fn set_options(&self, options: &RestoreOptions) -> Result<(), RestoreError> {
        let (list, len) = repair_options(options);
        sockopt::set_slice(self.fd.as_fd(), &sockopt::TCP_REPAIR_OPTIONS, &list[..len])
            .map_err(|e| self.failed(e))
    }

    /// Puts `bytes` in the send queue as already sent (module docs, step 10).
    fn queue_as_sent(&self, bytes: &[u8]) -> Result<(), RestoreError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.select_queue(TCP_SEND_QUEUE)?;
        self.send_all(bytes)?;
        self.select_queue(TCP_NO_QUEUE)
    }

    /// Writes all of `bytes` without blocking, first raising the send buffer so
    /// that they fit: in repair mode nothing is ever acknowledged, so a send that
    /// waited for room would wait forever.
    fn send_all(&self, bytes: &[u8]) -> Result<(), RestoreError> {
        self.make_room(bytes.len())?;
        let mut sent = 0;
        while sent < bytes.len() {
            let rest = &bytes[sent..];
            match socket::send_nowait(self.fd.as_fd(), rest) {
                Ok(0) => return Err(self.error("send", io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => sent += n,
                Err(e) if e.io_error.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let what = format!("send ({sent} of {} bytes queued)", bytes.len());
                    return Err(self.error(what, e.io_error));
                }
            }
        }
        Ok(())
    }

    /// Raises `SO_SNDBUF` with `SO_SNDBUFFORCE` (ignores `wmem_max`, needs
    /// `CAP_NET_ADMIN`) when `len` bytes would not fit. The kernel doubles the
    /// value for its bookkeeping overhead (`sock_setsockopt()`, net/core/sock.c),
    /// and charges each skb's truesize; `len` plus 64 KiB covers the per-skb
    /// overhead of 64 KiB skbs with room to spare. A forced size also locks it
    /// (`SOCK_SNDBUF_LOCK`): the kernel no longer tunes this socket's send
    /// buffer, which stays large enough for the queue it restored.
    fn make_room(&self, len: usize) -> Result<(), RestoreError> {
        const SLACK: usize = 64 * 1024;
        let current =
            sockopt::get(self.fd.as_fd(), &sockopt::SO_SNDBUF).map_err(|e| self.failed(e))?;
        let wanted = len.saturating_add(SLACK);
        if usize::try_from(current).unwrap_or(0) / 2 >= wanted {
            return Ok(());
        }
        let value = i32::try_from(wanted).unwrap_or(i32::MAX / 2);
        self.set(&sockopt::SO_SNDBUFFORCE, &value)
    }

    /// `setsockopt(option, value)`, failing with this connection's ends.
    fn set<T: sockopt::Pod>(&self, option: &Opt<T>, value: &T) -> Result<(), RestoreError> {
        sockopt::set(self.fd.as_fd(), option, value).map_err(|e| self.failed(e))
    }

    fn failed(&self, err: SyscallError) -> RestoreError {
        self.error(err.call, err.io_error)
    }

    fn error(&self, call: impl Into<String>, source: io::Error) -> RestoreError {
        restore_error(call, self.server, self.client, source)
    }
}

impl AsFd for RepairedSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for RepairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RepairedSocket {
            fd,
            server,
            client,
            unsent,
        } = self;
        f.debug_struct("RepairedSocket")
            .field("fd", &fd.as_raw_fd())
            .field("server", server)
            .field("client", client)
            .field("unsent_bytes", &unsent.len())
            .finish()
    }
}

fn restore_error(
    call: impl Into<String>,
    server: SocketAddr,
    client: SocketAddr,
    source: io::Error,
) -> RestoreError {
    RestoreError {
        call: call.into(),
        server,
        client,
        error: source,
    }
}

/// The `TCP_REPAIR_OPTIONS` list for `options`, and how many entries are used.
fn repair_options(options: &RestoreOptions) -> ([TcpRepairOpt; 4], usize) {
    let RestoreOptions {
        mss,
        window_scale,
        sack,
        timestamps,
    } = *options;
    // No scaling is shift 0 both ways, never "leave the kernel's" (module docs, step 7).
    let scale = window_scale.unwrap_or(WindowScale {
        send: 0,
        receive: 0,
    });
    let mut list = [TcpRepairOpt::default(); 4];
    let mut len = 0;
    let mut push = |opt_code, opt_val| {
        list[len] = TcpRepairOpt { opt_code, opt_val };
        len += 1;
    };
    push(TCPOPT_MSS, u32::from(mss));
    push(
        TCPOPT_WINDOW,
        u32::from(scale.send) | u32::from(scale.receive) << 16,
    );
    if sack {
        push(TCPOPT_SACK_PERM, 0);
    }
    if timestamps {
        push(TCPOPT_TIMESTAMP, 0);
    }
    (list, len)
}
