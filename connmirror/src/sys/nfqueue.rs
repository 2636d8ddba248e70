//! The netfilter queue: packets an iptables `NFQUEUE` rule hands to user
//! space over `NETLINK_NETFILTER` (subsystem `nfnetlink_queue`,
//! include/uapi/linux/netfilter/nfnetlink_queue.h and
//! net/netfilter/nfnetlink_queue.c), each held by the kernel until a verdict
//! accepts or drops it.
//!
//! On-host `--sync` output commit queues every outgoing segment of a protected
//! flow, reads its headers, and releases everything up to a packet id with one
//! batch verdict once a standby has acknowledged the data. Hence a small
//! hand-written client rather than a crate: messages are built on the stack,
//! datagrams are read many per `recvmmsg(2)` into one reused buffer, and the
//! only allocation per packet is the copy of its first bytes.
//!
//! The queue is bound with one config message (`NFQNL_CFG_CMD_BIND` with its
//! copy mode, length and flags), so no packet is queued to it before its copy
//! mode is set. The kernel answers `EPERM`, not `EBUSY`, when another socket
//! holds the queue, and `EPERM` also when the caller lacks `CAP_NET_ADMIN`;
//! a `NFQNL_CFG_CMD_PF_BIND` (a no-op the kernel accepts from any capable
//! socket) sent first tells the two apart.

use std::{
    fmt, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use thiserror::Error;

use super::{SyscallError, check, sockopt};

/// `NFNL_SUBSYS_QUEUE` (include/uapi/linux/netfilter/nfnetlink.h).
const NFNL_SUBSYS_QUEUE: u16 = 3;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;
/// `enum nfqnl_msg_types`.
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
/// `enum nfqnl_attr_type`.
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;
/// `enum nfqnl_attr_config`.
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
/// `NFQA_CFG_F_GSO`: GSO packets are queued whole, not segmented first.
const NFQA_CFG_F_GSO: u32 = 1 << 2;
/// `enum nfqnl_msg_config_cmds`.
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_PF_BIND: u8 = 3;
/// `NFQNL_COPY_PACKET` (`enum nfqnl_config_mode`).
const NFQNL_COPY_PACKET: u8 = 2;
/// `NFQNL_MAX_COPY_RANGE`: the kernel's cap on `copy_range` (0xffff minus an
/// attribute header); 0 means this too.
const MAX_COPY_RANGE: u32 = 0xffff - NLA_HDRLEN as u32;

/// `NLMSG_ERROR` (include/uapi/linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
/// `NLA_TYPE_MASK`: drops `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `struct nfgenmsg`: family, version, queue number.
const NFGENMSG_LEN: usize = 4;

/// The receive buffer: many datagram slots for `recvmmsg(2)`.
const RECV_BUF: usize = 256 << 10;
/// A datagram's bytes besides the copied packet: the headers and the
/// metadata attributes (ids, interfaces, marks, timestamps, lengths).
const SLOT_OVERHEAD: usize = 2048;
/// Datagrams read by one [`Queue::recv`].
const MAX_DATAGRAMS: usize = 64;
/// How long [`Queue::bind`] waits for each config message's ack; the kernel
/// writes it before `send(2)` returns, so this only bounds a broken kernel.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A bound netfilter queue.
///
/// Dropping it closes the socket, and the kernel then drops the queue with
/// every packet it still holds (`nfqnl_rcv_nl_event()`).
pub struct Queue {
    fd: OwnedFd,
    num: u16,
    /// Datagram slots of `slot` bytes each.
    buf: Vec<u8>,
    slot: usize,
    /// Packets that arrived while [`Queue::bind`] awaited an ack.
    pending: Vec<Queued>,
    seq: u32,
    errors: u64,
}

/// One queued packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// The kernel's packet id (`NFQA_PACKET_HDR`), the verdict's handle.
    pub id: u32,
    /// `NFQA_PACKET_HDR` `hw_protocol` (`ETH_P_IP` 0x0800 / `ETH_P_IPV6`
    /// 0x86dd), host order.
    pub protocol: u16,
    /// The packet's whole length: `NFQA_CAP_LEN` when the kernel truncated
    /// the copy, else `data.len()`.
    pub len: u32,
    /// Its first `copy_range` bytes, from the IP header on (`NFQA_PAYLOAD`).
    pub data: Vec<u8>,
}

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `NF_ACCEPT`: it continues through the stack.
    Accept,
    /// `NF_DROP`: it is freed.
    Drop,
}

impl Verdict {
    /// `NF_ACCEPT` / `NF_DROP` (include/uapi/linux/netfilter.h).
    fn code(self) -> u32 {
        match self {
            Verdict::Accept => 1,
            Verdict::Drop => 0,
        }
    }
}

/// Why a queue call failed.
#[derive(Debug, Error)]
pub enum NfqueueError {
    /// A system call failed.
    #[error(transparent)]
    Syscall(#[from] SyscallError),
    /// Another socket holds the queue.
    #[error("netfilter queue {num} is already bound by another process")]
    Busy {
        /// The queue number.
        num: u16,
    },
    /// The kernel refused a config message, e.g. `binding netfilter queue 7:
    /// Operation not permitted (os error 1)`.
    #[error("{what} netfilter queue {num}: {io_error}")]
    Kernel {
        /// What the message did ("binding").
        what: &'static str,
        /// The queue number.
        num: u16,
        /// The kernel's errno.
        #[source]
        io_error: io::Error,
    },
    /// A datagram that does not parse.
    #[error("malformed nfnetlink_queue datagram: {0}")]
    Malformed(String),
}

impl Queue {
    /// Binds queue `num` in the calling thread's network namespace: copy mode
    /// `NFQNL_COPY_PACKET` with `copy_range` bytes (0, or more than the
    /// kernel's 65531, means 65531), at most `maxlen` packets waiting
    /// (`NFQA_CFG_QUEUE_MAXLEN`), flag `NFQA_CFG_F_GSO` (GSO packets are
    /// queued whole, not segmented); never `NFQA_CFG_F_FAIL_OPEN`. The socket
    /// is non-blocking, close-on-exec, its receive buffer forced to `rcvbuf`
    /// bytes (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`), and
    /// `NETLINK_NO_ENOBUFS` set.
    ///
    /// Each config message is sent with `NLM_F_ACK` and its ack awaited, so
    /// errors are reported here: [`NfqueueError::Busy`] when another socket
    /// holds the queue, [`NfqueueError::Kernel`] for any other refusal (e.g.
    /// `EPERM` without `CAP_NET_ADMIN`).
    pub fn bind(
        num: u16,
        copy_range: u32,
        maxlen: u32,
        rcvbuf: usize,
    ) -> Result<Queue, NfqueueError> {
        let fd = open(rcvbuf)?;
        let slot = slot_size(copy_range);
        let mut queue = Queue {
            fd,
            num,
            buf: vec![0; RECV_BUF.max(slot)],
            slot,
            pending: Vec::new(),
            seq: 0,
            errors: 0,
        };
        queue.configure(|seq| probe_message(num, seq))?;
        match queue.configure(|seq| bind_message(num, seq, copy_range, maxlen)) {
            Err(NfqueueError::Kernel { io_error, .. }) if is_busy(&io_error) => {
                Err(NfqueueError::Busy { num })
            }
            other => other.map(|()| queue),
        }
    }

    /// The queue number.
    pub fn num(&self) -> u16 {
        self.num
    }

    /// Appends every packet waiting on the socket to `out` without blocking
    /// (`recvmmsg(2)` until `EAGAIN`, at most 64 datagrams per call); returns
    /// how many were added. On an error, `out` keeps the packets appended
    /// before it, which the caller still has to give verdicts.
    ///
    /// Netlink error replies to earlier verdicts are counted (see
    /// [`Queue::verdict_errors`]), not returned.
    pub fn recv(&mut self, out: &mut Vec<Queued>) -> Result<usize, NfqueueError> {
        let before = out.len();
        out.append(&mut self.pending);
        let mut datagrams = 0;
        let mut lens = [0; MAX_DATAGRAMS];
        while datagrams < MAX_DATAGRAMS {
            let want = self.slots().min(MAX_DATAGRAMS - datagrams);
            let got = self.recv_batch(&mut lens[..want])?;
            for (i, &len) in lens[..got].iter().enumerate() {
                let start = i * self.slot;
                decode(&self.buf[start..start + len], out, &mut self.errors)?;
            }
            datagrams += got;
            if got < want {
                break;
            }
        }
        Ok(out.len() - before)
    }

    /// Sets the verdict of one packet (`NFQNL_MSG_VERDICT`).
    pub fn verdict(&self, id: u32, verdict: Verdict) -> Result<(), NfqueueError> {
        let msg = verdict_message(self.num, NFQNL_MSG_VERDICT, id, verdict);
        self.send(msg.bytes(), "send(NFQNL_MSG_VERDICT)")
    }

    /// Sets the verdict of every queued packet whose id is at most `id`
    /// (`NFQNL_MSG_VERDICT_BATCH`; ids compare modulo 2^32 as the kernel's
    /// do). A batch that matches no packet is answered with `ENOENT`, which
    /// [`Queue::verdict_errors`] counts.
    pub fn verdict_batch(&self, id: u32, verdict: Verdict) -> Result<(), NfqueueError> {
        let msg = verdict_message(self.num, NFQNL_MSG_VERDICT_BATCH, id, verdict);
        self.send(msg.bytes(), "send(NFQNL_MSG_VERDICT_BATCH)")
    }

    /// Error replies the kernel sent for verdicts so far (e.g. `ENOENT` for
    /// an unknown id), as [`Queue::recv`] has read them.
    pub fn verdict_errors(&self) -> u64 {
        self.errors
    }

    /// How many datagram slots one `recvmmsg(2)` fills.
    fn slots(&self) -> usize {
        (self.buf.len() / self.slot).min(MAX_DATAGRAMS)
    }

    /// Sends the config message `build` makes with the next sequence number
    /// and waits for its ack.
    fn configure(&mut self, build: impl FnOnce(u32) -> Msg) -> Result<(), NfqueueError> {
        self.seq += 1;
        let msg = build(self.seq);
        self.send(msg.bytes(), "send(NFQNL_MSG_CONFIG)")?;
        match self.await_ack(self.seq)? {
            0 => Ok(()),
            code => Err(NfqueueError::Kernel {
                what: "binding",
                num: self.num,
                io_error: io::Error::from_raw_os_error(code.saturating_neg()),
            }),
        }
    }

    /// The error code of the ack to message `seq` (0 for success, else a
    /// negative errno); packets read meanwhile go to `pending`.
    fn await_ack(&mut self, seq: u32) -> Result<i32, NfqueueError> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !wait_readable(self.fd.as_fd(), left)? {
                break;
            }
            let len = self.recv_one()?;
            let datagram = &self.buf[..len];
            if let Some(code) = scan_ack(datagram, seq, &mut self.pending, &mut self.errors)? {
                return Ok(code);
            }
        }
        Ok(-libc::ETIMEDOUT)
    }

    /// One datagram into the start of the buffer; 0 bytes if none waits.
    fn recv_one(&mut self) -> Result<usize, NfqueueError> {
        // SAFETY: `buf` is valid for writes of its length.
        let rc = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match check(rc, "recv(NETLINK_NETFILTER)") {
            Ok(len) => Ok(len as usize),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// One `recvmmsg(2)` into the buffer's first `lens.len()` slots (at
    /// most [`Queue::slots`]); the datagrams' lengths go to `lens`. Returns
    /// how many were read (0 if none waits).
    fn recv_batch(&mut self, lens: &mut [usize]) -> Result<usize, NfqueueError> {
        let slots = self.slots().min(lens.len());
        // SAFETY: all-zero iovecs and mmsghdrs are valid (null pointers,
        // zero lengths); the loop below points the used ones at the slots.
        let mut iovs: [libc::iovec; MAX_DATAGRAMS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; MAX_DATAGRAMS] = unsafe { std::mem::zeroed() };
        let chunks = self.buf.chunks_exact_mut(self.slot);
        for ((chunk, iov), msg) in chunks.zip(&mut iovs).zip(&mut msgs).take(slots) {
            iov.iov_base = chunk.as_mut_ptr().cast();
            iov.iov_len = chunk.len();
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        let got = recvmmsg(self.fd.as_fd(), &mut msgs[..slots])?;
        for (len, msg) in lens.iter_mut().zip(&msgs[..got]) {
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                return Err(malformed(format!(
                    "a datagram longer than the {}-byte slot",
                    self.slot
                )));
            }
            *len = (msg.msg_len as usize).min(self.slot);
        }
        Ok(got)
    }

    fn send(&self, msg: &[u8], call: &'static str) -> Result<(), NfqueueError> {
        // SAFETY: `msg` is valid for reads of its length.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        check(rc, call)?;
        Ok(())
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("fd", &self.fd)
            .field("num", &self.num)
            .field("verdict_errors", &self.errors)
            .finish_non_exhaustive()
    }
}

/// Whether a refused `NFQNL_CFG_CMD_BIND` means another socket holds the
/// queue: `EPERM` from `nfqnl_recv_config()`'s owner check (capability was
/// confirmed by the probe before), or `EBUSY` were this socket the holder.
fn is_busy(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EPERM | libc::EBUSY))
}

/// A datagram slot: the copied bytes plus headers and metadata, 8-aligned.
fn slot_size(copy_range: u32) -> usize {
    let range = match copy_range {
        0 => MAX_COPY_RANGE,
        n => n.min(MAX_COPY_RANGE),
    };
    (range as usize + SLOT_OVERHEAD).next_multiple_of(8)
}

/// A non-blocking, close-on-exec `NETLINK_NETFILTER` socket with its receive
/// buffer set, `NETLINK_NO_ENOBUFS` on, bound to a kernel-chosen port id.
fn open(rcvbuf: usize) -> Result<OwnedFd, SyscallError> {
    let kind = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2) call.
    let raw = check(
        unsafe { libc::socket(libc::AF_NETLINK, kind, libc::NETLINK_NETFILTER) },
        "socket(AF_NETLINK, NETLINK_NETFILTER)",
    )?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_rcvbuf(fd.as_fd(), rcvbuf)?;
    sockopt::set(fd.as_fd(), &sockopt::NETLINK_NO_ENOBUFS, &1)?;
    bind_netlink(fd.as_fd())?;
    Ok(fd)
}

/// `SO_RCVBUFFORCE`, or `SO_RCVBUF` (capped at `rmem_max`) without
/// `CAP_NET_ADMIN`.
fn set_rcvbuf(fd: BorrowedFd<'_>, bytes: usize) -> Result<(), SyscallError> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    match sockopt::set(fd, &sockopt::SO_RCVBUFFORCE, &bytes) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            sockopt::set(fd, &sockopt::SO_RCVBUF, &bytes)
        }
        other => other,
    }
}

fn bind_netlink(fd: BorrowedFd<'_>) -> Result<(), SyscallError> {
    // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 lets the kernel
    // choose the port id.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    check(rc, "bind(AF_NETLINK)").map(drop)
}

/// `poll(2)` for input: whether `fd` became readable within `timeout`.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool, SyscallError> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd.
    let ready = check(unsafe { libc::poll(&mut pfd, 1, ms.max(1)) }, "poll")?;
    Ok(ready > 0)
}

/// `recvmmsg(fd, msgs, MSG_DONTWAIT)`: how many datagrams were read, 0 on
/// `EAGAIN`.
fn recvmmsg(fd: BorrowedFd<'_>, msgs: &mut [libc::mmsghdr]) -> Result<usize, SyscallError> {
    let count = msgs.len() as libc::c_uint;
    let flags = libc::MSG_DONTWAIT;
    // SAFETY: every header points at one iovec over a live, writable slot;
    // a null timeout is allowed.
    let rc = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            count,
            flags,
            std::ptr::null_mut(),
        )
    };
    match check(rc, "recvmmsg(NETLINK_NETFILTER)") {
        Ok(got) => Ok(got as usize),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
        Err(e) => Err(e),
    }
}

/// An outgoing nfnetlink message, built on the stack.
struct Msg {
    buf: [u8; 128],
    len: usize,
}

impl Msg {
    /// The netlink header and `nfgenmsg` of a queue message of `kind`.
    fn new(kind: u16, flags: u16, seq: u32, num: u16) -> Msg {
        let mut msg = Msg {
            buf: [0; 128],
            len: 4,
        };
        msg.push(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        msg.push(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.push(&seq.to_ne_bytes());
        msg.push(&0u32.to_ne_bytes()); // nlmsg_pid: to the kernel.
        msg.push(&[libc::AF_UNSPEC as u8, NFNETLINK_V0]);
        msg.push(&num.to_be_bytes());
        msg
    }

    /// Appends attribute `kind` holding `value`, padded to 4 bytes.
    fn attr(mut self, kind: u16, value: &[u8]) -> Msg {
        let len = (NLA_HDRLEN + value.len()) as u16;
        self.push(&len.to_ne_bytes());
        self.push(&kind.to_ne_bytes());
        self.push(value);
        self.len = self.len.next_multiple_of(4);
        self
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Writes `nlmsg_len`.
    fn finish(mut self) -> Msg {
        let len = self.len as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The message (after [`Msg::finish`]).
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `NFQNL_CFG_CMD_PF_BIND`: accepted as a no-op by any socket with
/// `CAP_NET_ADMIN`, refused with `EPERM` otherwise.
fn probe_message(num: u16, seq: u32) -> Msg {
    let cmd = [NFQNL_CFG_CMD_PF_BIND, 0, 0, libc::AF_INET as u8];
    Msg::new(NFQNL_MSG_CONFIG, NLM_F_ACK, seq, num)
        .attr(NFQA_CFG_CMD, &cmd)
        .finish()
}

/// `NFQNL_CFG_CMD_BIND` with the copy mode, queue length and flags.
fn bind_message(num: u16, seq: u32, copy_range: u32, maxlen: u32) -> Msg {
    let cmd = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
    let mut params = [0; 5];
    params[..4].copy_from_slice(&copy_range.to_be_bytes());
    params[4] = NFQNL_COPY_PACKET;
    Msg::new(NFQNL_MSG_CONFIG, NLM_F_ACK, seq, num)
        .attr(NFQA_CFG_CMD, &cmd)
        .attr(NFQA_CFG_PARAMS, &params)
        .attr(NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes())
        .attr(NFQA_CFG_MASK, &NFQA_CFG_F_GSO.to_be_bytes())
        .attr(NFQA_CFG_FLAGS, &NFQA_CFG_F_GSO.to_be_bytes())
        .finish()
}

/// A verdict (`kind` `NFQNL_MSG_VERDICT` or `NFQNL_MSG_VERDICT_BATCH`); no
/// ack asked, so the kernel answers only errors.
fn verdict_message(num: u16, kind: u16, id: u32, verdict: Verdict) -> Msg {
    let mut hdr = [0; 8];
    hdr[..4].copy_from_slice(&verdict.code().to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    Msg::new(kind, 0, 0, num)
        .attr(NFQA_VERDICT_HDR, &hdr)
        .finish()
}

/// A netlink message header's fields this module reads.
#[derive(Clone, Copy, Debug)]
struct Header {
    kind: u16,
    seq: u32,
}

/// Decodes one datagram: its packet messages are appended to `out` in order,
/// error replies (a negative errno in `NLMSG_ERROR`) counted in `errors`, and
/// anything else (acks, `NLMSG_DONE`, other types) skipped.
fn decode(datagram: &[u8], out: &mut Vec<Queued>, errors: &mut u64) -> Result<(), NfqueueError> {
    each_message(datagram, |header, body| message(header, body, out, errors))
}

/// Like [`decode`], but the `NLMSG_ERROR` answering `seq` is returned (its
/// code: 0 for an ack, else a negative errno) instead of counted.
fn scan_ack(
    datagram: &[u8],
    seq: u32,
    out: &mut Vec<Queued>,
    errors: &mut u64,
) -> Result<Option<i32>, NfqueueError> {
    let mut ack = None;
    each_message(datagram, |header, body| {
        match header.kind == NLMSG_ERROR && header.seq == seq {
            true => error_code(body).map(|code| ack = Some(code)),
            false => message(header, body, out, errors),
        }
    })?;
    Ok(ack)
}

fn message(
    header: Header,
    body: &[u8],
    out: &mut Vec<Queued>,
    errors: &mut u64,
) -> Result<(), NfqueueError> {
    const PACKET: u16 = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
    match header.kind {
        NLMSG_ERROR => {
            *errors += u64::from(error_code(body)? < 0);
            Ok(())
        }
        PACKET => packet(body).map(|queued| out.push(queued)),
        _ => Ok(()),
    }
}

/// Calls `f` with each netlink message of `datagram` and its body.
fn each_message<'a>(
    datagram: &'a [u8],
    mut f: impl FnMut(Header, &'a [u8]) -> Result<(), NfqueueError>,
) -> Result<(), NfqueueError> {
    let mut at = 0;
    while at < datagram.len() {
        let rest = &datagram[at..];
        let head = rest.get(..NLMSG_HDRLEN).ok_or_else(|| {
            malformed(format!(
                "{} trailing bytes at offset {at}, shorter than a netlink header",
                rest.len()
            ))
        })?;
        let len = u32::from_ne_bytes(field(head, 0)) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(malformed(format!(
                "netlink message at offset {at} claims {len} bytes, {} are left",
                rest.len()
            )));
        }
        let header = Header {
            kind: u16::from_ne_bytes(field(head, 4)),
            seq: u32::from_ne_bytes(field(head, 8)),
        };
        f(header, &rest[NLMSG_HDRLEN..len])?;
        at += len.next_multiple_of(4);
    }
    Ok(())
}

/// Calls `f` with each attribute (type without flag bits, value) of `attrs`.
fn each_attr<'a>(
    mut attrs: &'a [u8],
    mut f: impl FnMut(u16, &'a [u8]) -> Result<(), NfqueueError>,
) -> Result<(), NfqueueError> {
    while !attrs.is_empty() {
        let head = attrs.get(..NLA_HDRLEN).ok_or_else(|| {
            malformed(format!(
                "{} trailing bytes, shorter than an attribute header",
                attrs.len()
            ))
        })?;
        let len = usize::from(u16::from_ne_bytes(field(head, 0)));
        let kind = u16::from_ne_bytes(field(head, 2)) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > attrs.len() {
            return Err(malformed(format!(
                "attribute {kind} claims {len} bytes, {} are left",
                attrs.len()
            )));
        }
        f(kind, &attrs[NLA_HDRLEN..len])?;
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(())
}

/// An `NFQNL_MSG_PACKET` body: `nfgenmsg`, then attributes.
fn packet(body: &[u8]) -> Result<Queued, NfqueueError> {
    let attrs = body
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| malformed("packet message shorter than its nfgenmsg".to_string()))?;
    let (mut hdr, mut payload, mut cap_len) = (None, &[][..], None);
    each_attr(attrs, |kind, value| {
        match kind {
            NFQA_PACKET_HDR => hdr = Some(packet_hdr(value)?),
            NFQA_PAYLOAD => payload = value,
            NFQA_CAP_LEN => cap_len = Some(u32::from_be_bytes(sized(value, "NFQA_CAP_LEN")?)),
            _ => {}
        }
        Ok(())
    })?;
    let (id, protocol) =
        hdr.ok_or_else(|| malformed("packet message without NFQA_PACKET_HDR".to_string()))?;
    Ok(Queued {
        id,
        protocol,
        len: cap_len.unwrap_or(payload.len() as u32),
        data: payload.to_vec(),
    })
}

/// `struct nfqnl_msg_packet_hdr` {packet_id be32, hw_protocol be16, hook u8}:
/// the id and protocol.
fn packet_hdr(value: &[u8]) -> Result<(u32, u16), NfqueueError> {
    let hdr: [u8; 7] = sized(value, "NFQA_PACKET_HDR")?;
    Ok((
        u32::from_be_bytes(field(&hdr, 0)),
        u16::from_be_bytes(field(&hdr, 4)),
    ))
}

/// The code of an `NLMSG_ERROR` body (`struct nlmsgerr`'s leading `int`).
fn error_code(body: &[u8]) -> Result<i32, NfqueueError> {
    Ok(i32::from_ne_bytes(sized(body, "NLMSG_ERROR")?))
}

/// The first `N` bytes of `value`, which must have at least that many.
fn sized<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], NfqueueError> {
    value
        .get(..N)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            malformed(format!(
                "{what} of {} bytes, expected at least {N}",
                value.len()
            ))
        })
}

/// `N` bytes of `bytes` at `at`; the caller has checked the length.
fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn malformed(what: String) -> NfqueueError {
    NfqueueError::Malformed(what)
}

#[cfg(test)]
#[path = "nfqueue_tests.rs"]
mod tests;
