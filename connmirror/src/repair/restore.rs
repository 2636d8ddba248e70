//! Rebuilding the server end of a TCP connection with `TCP_REPAIR`.
//!
//! Repair mode ([`TCP_REPAIR`], Linux ≥ 3.5, needs `CAP_NET_ADMIN`) lets a
//! privileged process create an *established* TCP socket whose state it chooses:
//! sequence numbers, negotiated options, windows, timestamp clock and the bytes
//! still in flight. Nothing is sent on the wire while a socket is in repair mode;
//! the kernel behaves as if the connection had always existed once repair mode is
//! left. CRIU restores sockets this way (its `soccr/soccr.c`, "libsoccr"); this
//! module does the same from a [`RestorePlan`] that the standby built from the
//! mirrored segments (see DESIGN.md, "State needed to restore one connection").
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
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread::{self, ScopedJoinHandle};

use libc::c_int;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sys::sockopt;

/// `TCP_REPAIR` values (include/uapi/linux/tcp.h).
const TCP_REPAIR_ON: c_int = 1;
const TCP_REPAIR_OFF: c_int = 0;
/// Leave repair mode without sending a window probe (include/uapi/linux/tcp.h,
/// Linux ≥ 4.8); libc does not define it.
const TCP_REPAIR_OFF_NO_WP: c_int = -1;
/// `TCP_REPAIR_QUEUE` values (`TCP_NO_QUEUE`, `TCP_RECV_QUEUE`, `TCP_SEND_QUEUE`
/// in include/uapi/linux/tcp.h); libc does not define them.
const TCP_NO_QUEUE: c_int = 0;
const TCP_RECV_QUEUE: c_int = 1;
const TCP_SEND_QUEUE: c_int = 2;
/// `TCP_REPAIR_OPTIONS` codes are the TCP option kinds (`TCPOPT_*` in
/// include/net/tcp.h, a kernel-internal header libc does not mirror).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// The low bit of a `TCP_TIMESTAMP` value selects the microsecond clock (Linux ≥ 6.7).
const TCP_TIMESTAMP_USEC: u32 = 1;
/// Where the calling thread's network namespace is (Linux ≥ 3.17).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

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
/// field, so it can be passed to (and read from) `TCP_REPAIR_WINDOW` directly.
#[repr(C)]
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

/// `struct tcp_repair_opt` (include/uapi/linux/tcp.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TcpRepairOpt {
    opt_code: u32,
    opt_val: u32,
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
        sock.set_int(
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            "setsockopt(TCP_MAXSEG)",
            c_int::from(plan.options.mss),
        )?;
        sock.addr_call("bind", plan.server, libc::bind)?;
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
        sock.addr_call("connect", plan.client, libc::connect)?;
        sock.set_options(&plan.options)?;
        sock.set_tcp(
            "setsockopt(TCP_REPAIR_WINDOW)",
            libc::TCP_REPAIR_WINDOW,
            &plan.window,
        )?;
        if let Some(ts) = plan.timestamp {
            sock.set_tcp(
                "setsockopt(TCP_TIMESTAMP)",
                libc::TCP_TIMESTAMP,
                &(ts & !TCP_TIMESTAMP_USEC),
            )?;
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
        self.set_int(
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR,
            "setsockopt(TCP_REPAIR)",
            TCP_REPAIR_OFF,
        )?;
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
        self.set_int(
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR,
            "setsockopt(TCP_REPAIR)",
            TCP_REPAIR_OFF_NO_WP,
        )?;
        sockopt::linger_zero(self.fd.as_fd())
            .map_err(|error| self.error("setsockopt(SO_LINGER)", error))?;
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
        let (domain, call) = match server {
            SocketAddr::V4(_) => (libc::AF_INET, "socket(AF_INET, SOCK_STREAM)"),
            SocketAddr::V6(_) => (libc::AF_INET6, "socket(AF_INET6, SOCK_STREAM)"),
        };
        // SAFETY: plain socket(2) call.
        let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(restore_error(
                call,
                server,
                client,
                io::Error::last_os_error(),
            ));
        }
        let sock = RepairedSocket {
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            server,
            client,
            unsent: Vec::new(),
        };
        sock.set_int(
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR,
            "setsockopt(TCP_REPAIR)",
            TCP_REPAIR_ON,
        )?;
        Ok(sock)
    }

    /// `*_FREEBIND` and `*_TRANSPARENT`: `bind()` and `connect()` work while the
    /// service address is not local yet (module docs, step 2).
    fn allow_foreign_address(&self) -> Result<(), RestoreError> {
        let options = match self.server {
            SocketAddr::V4(_) => [
                (
                    libc::IPPROTO_IP,
                    libc::IP_FREEBIND,
                    "setsockopt(IP_FREEBIND)",
                ),
                (
                    libc::IPPROTO_IP,
                    libc::IP_TRANSPARENT,
                    "setsockopt(IP_TRANSPARENT)",
                ),
            ],
            SocketAddr::V6(_) => [
                (
                    libc::IPPROTO_IPV6,
                    libc::IPV6_FREEBIND,
                    "setsockopt(IPV6_FREEBIND)",
                ),
                (
                    libc::IPPROTO_IPV6,
                    libc::IPV6_TRANSPARENT,
                    "setsockopt(IPV6_TRANSPARENT)",
                ),
            ],
        };
        options
            .into_iter()
            .try_for_each(|(level, option, call)| self.set_int(level, option, call, 1))
    }

    /// `TCP_REPAIR_QUEUE = queue`, then `TCP_QUEUE_SEQ = seq` for it.
    fn set_queue_seq(
        &self,
        queue: c_int,
        seq: u32,
        call: &'static str,
    ) -> Result<(), RestoreError> {
        self.select_queue(queue)?;
        self.set_tcp(call, libc::TCP_QUEUE_SEQ, &seq)
    }

    fn select_queue(&self, queue: c_int) -> Result<(), RestoreError> {
        self.set_int(
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_QUEUE,
            "setsockopt(TCP_REPAIR_QUEUE)",
            queue,
        )
    }

    /// `TCP_REPAIR_OPTIONS` (module docs, step 7).
    fn set_options(&self, options: &RestoreOptions) -> Result<(), RestoreError> {
        let (list, len) = repair_options(options);
        self.set_tcp(
            "setsockopt(TCP_REPAIR_OPTIONS)",
            libc::TCP_REPAIR_OPTIONS,
            &list[..len],
        )
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
            // SAFETY: `rest` is a valid buffer of `rest.len()` bytes.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            match n {
                n if n > 0 => sent += n as usize,
                0 => return Err(self.error("send", io::Error::from(io::ErrorKind::WriteZero))),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        let what = format!("send ({sent} of {} bytes queued)", bytes.len());
                        return Err(self.error(what, err));
                    }
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
        let current = self.get_int(libc::SOL_SOCKET, libc::SO_SNDBUF, "getsockopt(SO_SNDBUF)")?;
        let wanted = len.saturating_add(SLACK);
        if usize::try_from(current).unwrap_or(0) / 2 >= wanted {
            return Ok(());
        }
        let value = c_int::try_from(wanted).unwrap_or(c_int::MAX / 2);
        self.set_int(
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            "setsockopt(SO_SNDBUFFORCE)",
            value,
        )
    }

    fn set_int(
        &self,
        level: c_int,
        option: c_int,
        call: &'static str,
        value: c_int,
    ) -> Result<(), RestoreError> {
        self.set(level, option, call, &value)
    }

    fn set_tcp<T: ?Sized>(
        &self,
        call: &'static str,
        option: c_int,
        value: &T,
    ) -> Result<(), RestoreError> {
        self.set(libc::IPPROTO_TCP, option, call, value)
    }

    /// `setsockopt(level, option, value)`; `T` must be plain old data laid out as
    /// the kernel expects for `option`.
    fn set<T: ?Sized>(
        &self,
        level: c_int,
        option: c_int,
        call: &'static str,
        value: &T,
    ) -> Result<(), RestoreError> {
        // SAFETY: every T passed here is plain old data with the layout the
        // kernel expects for its option (ints, tcp_repair_opt, tcp_repair_window).
        unsafe { sockopt::set(self.fd.as_fd(), level, option, value) }
            .map_err(|error| self.error(call, error))
    }

    fn get_int(
        &self,
        level: c_int,
        option: c_int,
        call: &'static str,
    ) -> Result<c_int, RestoreError> {
        sockopt::get_int(self.fd.as_fd(), level, option).map_err(|error| self.error(call, error))
    }

    /// `bind` or `connect` to `addr`.
    fn addr_call(
        &self,
        call: &'static str,
        addr: SocketAddr,
        f: unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int,
    ) -> Result<(), RestoreError> {
        let (storage, len) = sockaddr(addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
        let rc = unsafe { f(self.fd.as_raw_fd(), (&raw const storage).cast(), len) };
        self.check(rc, call)
    }

    fn check(&self, rc: c_int, call: &'static str) -> Result<(), RestoreError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(self.error(call, io::Error::last_os_error()))
        }
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

/// Builds every plan on `workers` threads in parallel batches (contiguous runs of
/// `plans`, one per thread); result `i` belongs to `plans[i]`. Every socket is
/// created in the calling thread's network namespace.
pub fn build_all(
    plans: &[RestorePlan],
    workers: usize,
) -> Vec<Result<RepairedSocket, RestoreError>> {
    in_caller_netns(
        plans.iter().collect(),
        workers,
        |plan| (plan.server, plan.client),
        RepairedSocket::build,
    )
}

/// Leaves repair mode on every socket ([`RepairedSocket::leave_repair`]) on
/// `workers` threads; result `i` belongs to `sockets[i]`.
pub fn leave_all(
    sockets: Vec<RepairedSocket>,
    workers: usize,
) -> Vec<Result<TcpStream, RestoreError>> {
    in_caller_netns(
        sockets,
        workers,
        RepairedSocket::flow,
        RepairedSocket::leave_repair,
    )
}

/// Runs `work` over `items` on up to `workers` threads, each in the calling
/// thread's network namespace, and returns the results in order.
///
/// A socket belongs for its whole life to the network namespace of the thread
/// that created it, and a daemon typically enters the standby's namespace with
/// `setns(2)` on one thread only (network namespaces are per thread). A thread
/// created with `clone(CLONE_THREAD)` starts with its creator's namespaces
/// (`copy_namespaces()` in kernel/nsproxy.c shares the creator's `nsproxy`;
/// checked here on 6.18: a thread spawned after `setns` is in the new
/// namespace), so scoped threads spawned from the caller would already be right.
/// Each worker still joins the caller's namespace explicitly, from a descriptor
/// of `/proc/thread-self/ns/net` opened on the calling thread, so that
/// correctness never depends on who created the worker (a pool created earlier,
/// on another thread, would sit in the process's first namespace). The first
/// batch runs on the calling thread itself.
fn in_caller_netns<I, O, F, W>(
    items: Vec<I>,
    workers: usize,
    flow: F,
    work: W,
) -> Vec<Result<O, RestoreError>>
where
    I: Send,
    O: Send,
    F: Fn(&I) -> (SocketAddr, SocketAddr) + Sync,
    W: Fn(I) -> Result<O, RestoreError> + Sync,
{
    let netns = match File::open(THREAD_NETNS) {
        Ok(file) => file,
        Err(err) => return fail_all(items, &flow, &format!("open({THREAD_NETNS})"), &err),
    };
    let mut batches = batches(items, workers).into_iter();
    let first = batches.next().unwrap_or_default();
    let run = |netns: Option<&File>, batch: Vec<I>| run_batch(netns, batch, &flow, &work);
    thread::scope(|s| {
        let others: Vec<_> = batches
            .map(|batch| spawn_batch(s, &netns, batch, &run))
            .collect();
        let mut results = run(None, first);
        for batch in others {
            match batch {
                Batch::Running(handle) => match handle.join() {
                    Ok(done) => results.extend(done),
                    Err(payload) => std::panic::resume_unwind(payload),
                },
                Batch::Done(done) => results.extend(done),
            }
        }
        results
    })
}

/// A batch running on its own thread, or already run on the calling thread.
enum Batch<'s, O> {
    Running(ScopedJoinHandle<'s, Vec<Result<O, RestoreError>>>),
    Done(Vec<Result<O, RestoreError>>),
}

/// Runs `batch` on a new thread that joins `netns`. The batch is handed over
/// only once the thread exists, so that if it cannot be created the batch runs
/// on the calling thread (already in the right namespace) instead of being lost.
fn spawn_batch<'s, 'e: 's, I, O>(
    s: &'s thread::Scope<'s, 'e>,
    netns: &'e File,
    batch: Vec<I>,
    run: &'e (impl Fn(Option<&File>, Vec<I>) -> Vec<Result<O, RestoreError>> + Sync),
) -> Batch<'s, O>
where
    I: Send + 'e,
    O: Send + 'e,
{
    let (tx, rx) = mpsc::sync_channel::<Vec<I>>(1);
    let spawned = thread::Builder::new()
        .name("restore".into())
        .spawn_scoped(s, move || run(Some(netns), rx.recv().unwrap_or_default()));
    match spawned {
        Ok(handle) => match tx.send(batch) {
            Ok(()) => Batch::Running(handle),
            Err(mpsc::SendError(batch)) => Batch::Done(run(None, batch)),
        },
        Err(_) => Batch::Done(run(None, batch)),
    }
}

/// Splits `items` into at most `workers` contiguous batches of nearly equal size.
fn batches<I>(items: Vec<I>, workers: usize) -> Vec<Vec<I>> {
    let size = items.len().div_ceil(workers.max(1)).max(1);
    let mut items = items.into_iter().peekable();
    let mut batches = Vec::new();
    while items.peek().is_some() {
        batches.push(items.by_ref().take(size).collect());
    }
    batches
}

/// Joins `netns` (when given), then runs `work` over `batch`.
fn run_batch<I, O>(
    netns: Option<&File>,
    batch: Vec<I>,
    flow: &impl Fn(&I) -> (SocketAddr, SocketAddr),
    work: &impl Fn(I) -> Result<O, RestoreError>,
) -> Vec<Result<O, RestoreError>> {
    if let Some(netns) = netns {
        // SAFETY: `netns` is an open namespace file; setns only changes this
        // thread's network namespace.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return fail_all(
                batch,
                flow,
                "setns(CLONE_NEWNET)",
                &io::Error::last_os_error(),
            );
        }
    }
    batch.into_iter().map(work).collect()
}

/// The same error for every item.
fn fail_all<I, O>(
    items: Vec<I>,
    flow: &impl Fn(&I) -> (SocketAddr, SocketAddr),
    call: &str,
    err: &io::Error,
) -> Vec<Result<O, RestoreError>> {
    items
        .iter()
        .map(|item| {
            let (server, client) = flow(item);
            Err(restore_error(call, server, client, copy_error(err)))
        })
        .collect()
}

/// `io::Error` is not `Clone`; an OS error is rebuilt from its code.
fn copy_error(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
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
    use super::*;

    #[test]
    fn repair_options_always_carry_mss_and_window_scale() {
        let options = RestoreOptions {
            mss: 1460,
            window_scale: Some(WindowScale {
                send: 7,
                receive: 9,
            }),
            sack: true,
            timestamps: true,
        };
        let (list, len) = repair_options(&options);
        let pairs: Vec<_> = list[..len]
            .iter()
            .map(|o| (o.opt_code, o.opt_val))
            .collect();
        assert_eq!(pairs, [(2, 1460), (3, 7 | 9 << 16), (4, 0), (8, 0)]);

        let bare = RestoreOptions {
            mss: 536,
            window_scale: None,
            sack: false,
            timestamps: false,
        };
        let (list, len) = repair_options(&bare);
        let pairs: Vec<_> = list[..len]
            .iter()
            .map(|o| (o.opt_code, o.opt_val))
            .collect();
        assert_eq!(pairs, [(2, 536), (3, 0)]);
    }

    #[test]
    fn batches_keep_order_and_cover_every_item() {
        assert_eq!(
            batches((0..10).collect(), 3),
            [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        assert_eq!(batches((0..2).collect(), 8), [vec![0], vec![1]]);
        assert_eq!(batches::<u8>(Vec::new(), 0), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn error_text_names_the_call_and_the_flow() {
        let err = restore_error(
            "setsockopt(TCP_REPAIR_WINDOW)",
            "198.18.1.2:7000".parse().unwrap(),
            "198.18.0.1:40312".parse().unwrap(),
            io::Error::from_raw_os_error(libc::EINVAL),
        );
        assert_eq!(
            err.to_string(),
            "setsockopt(TCP_REPAIR_WINDOW) on 198.18.1.2:7000 ↔ 198.18.0.1:40312: Invalid argument (os error 22)"
        );
    }
}
