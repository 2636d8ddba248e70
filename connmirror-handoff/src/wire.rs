//! The messages both ends of the handoff socket exchange, and their checks.
//!
//! A Unix `SOCK_STREAM` socket, [`DEFAULT_SOCKET`] by default, mode 0600, in a
//! directory created 0700. Integers are big-endian. Two protocol versions
//! exist; the application chooses one in its hello and the daemon serves
//! both ([`VERSIONS`]). This crate speaks version 2 ([`VERSION`]).
//!
//! 1. Application → daemon, the [`Hello`]: magic [`MAGIC`], `u16` version,
//!    `u32` length, then that many bytes of JSON
//!    `{"services": ["198.18.0.1:7000", ...]}` (at most [`MAX_HELLO`] bytes;
//!    unknown fields are refused).
//! 2. Daemon → application: one byte [`REGISTERED`] when registered. Otherwise
//!    a line of text saying why (no `0` byte first), and the daemon closes the
//!    connection. The daemon also refuses peers whose `SO_PEERCRED` uid is
//!    neither 0 nor its own effective uid, and hellos of a version it does not
//!    speak.
//! 3. Daemon → application, the restored connections, as messages whose form
//!    depends on the version:
//!    - **version 1**, one message per connection: one `sendmsg` of
//!      `[u32 header length][JSON FlowMeta]` ([`FlowMeta::encode_header`])
//!      carrying the TCP socket in an `SCM_RIGHTS` control message, then the
//!      raw c2s bytes, then the raw s2c bytes (`end - start` bytes each).
//!    - **version 2**, one *bundle* of 1 to [`MAX_BUNDLE`] connections per
//!      message: one `sendmsg` of `[u32 count n]` followed by `n` headers
//!      `[u32 header length][JSON FlowMeta]` ([`encode_bundle_head`]),
//!      carrying the `n` TCP sockets in one `SCM_RIGHTS` control message,
//!      descriptor `i` belonging to header `i`; then, for each connection in
//!      header order, its raw c2s bytes, then its raw s2c bytes. A version-1
//!      message is thus a bundle of one without the count. `n` is at most
//!      `SCM_MAX_FD` (253), the most descriptors one message carries; the
//!      daemon sends a takeover's connections in as few bundles as that allows
//!      (spread over the applications registered for the service).
//!
//! The receiver checks every message: the headers (each at most
//! [`MAX_HEADER`] bytes, ranges consistent), the count (1 to
//! [`MAX_BUNDLE`]), that exactly one descriptor per header came with it, each
//! a TCP socket, and that no part is cut short; on any error it closes every
//! descriptor the message brought.
//!
//! Why the receiver finds the descriptor with the 4-byte prefix: Linux attaches
//! passed descriptors to the skb of the write that carried them, and a stream
//! read never runs past such an skb. In `unix_stream_read_generic`
//! (`net/unix/af_unix.c`), once a read consumes bytes of an skb with
//! descriptors it calls `unix_detach_fds` and stops (`if (scm.fp) break;`).
//! The receiver reads each earlier part with exact lengths, so its `recvmsg` of
//! the 4-byte prefix starts at the first byte of that skb and gets the
//! descriptor. It still passes a control buffer to every `recvmsg`, so a
//! descriptor anywhere else is seen (and refused) rather than silently closed
//! by the kernel.
//!
//! # What the metadata means
//!
//! Offsets count payload bytes of one direction from 0, the first byte after
//! the SYN (sequence number ISN + 1).
//!
//! - [`FlowMeta::c2s`], client → server: the client bytes this connection has
//!   already consumed. [`Handoff::c2s`] holds stream offsets `[start, end)`;
//!   the first byte read from the restored socket is offset `end`. `acked` is
//!   the highest offset the old primary acknowledged to the client.
//! - [`FlowMeta::s2c`], server → client: the server bytes already sent.
//!   [`Handoff::s2c`] holds offsets `[start, end)`; the client acknowledged up
//!   to `acked`; the socket's send queue already holds `[acked, end)` and
//!   delivers them by itself; the application's next write is offset `end`.
//! - `start` may be above 0 when the service keeps only unacknowledged bytes
//!   (retention `unacked`). Applications that need the history run their
//!   service with retention `full`.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, send, sendmsg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the daemon listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/connmirror/handoff.sock";
/// The first four bytes of a hello.
pub const MAGIC: [u8; 4] = *b"CMHO";
/// The protocol version this crate's [`crate::Application`] speaks.
pub const VERSION: u16 = 2;
/// The protocol versions the daemon serves, oldest first.
pub const VERSIONS: [u16; 2] = [1, 2];
/// Most connections in one version-2 bundle: `SCM_MAX_FD`
/// (`include/net/scm.h`), the most descriptors one `sendmsg` can pass.
pub const MAX_BUNDLE: usize = 253;
/// Length of the prefix that gives a version-2 bundle's count.
pub const COUNT_PREFIX: usize = 4;
/// Length of a hello's fixed part: magic, version, body length.
pub const HELLO_HEAD: usize = 10;
/// Largest hello JSON body the daemon accepts, in bytes.
pub const MAX_HELLO: u32 = 64 << 10;
/// Length of the prefix that gives a [`FlowMeta`] header's length.
pub const HEADER_PREFIX: usize = 4;
/// Largest [`FlowMeta`] header an application accepts, in bytes.
pub const MAX_HEADER: u32 = 64 << 10;
/// The reply byte that means "registered".
pub const REGISTERED: u8 = 0;
/// Longest refusal line an application reads.
pub const MAX_REPLY: u64 = 4096;
/// How long the daemon waits for a whole hello, and an application for the reply.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a message breaks the protocol; the text is what the daemon sends back
/// for a refused hello, and what an application reports for a bad handoff.
#[derive(Debug, Error)]
pub enum WireError {
    /// A hello does not start with [`MAGIC`].
    #[error("wrong magic \"{}\", expected \"CMHO\"", .0.escape_ascii())]
    Magic([u8; 4]),
    /// A hello speaks a version not in [`VERSIONS`].
    #[error("unsupported protocol version {0}, this daemon speaks versions 1 and 2")]
    Version(u16),
    /// A hello body longer than [`MAX_HELLO`].
    #[error("hello of {0} bytes exceeds the maximum of {MAX_HELLO} bytes")]
    HelloOversize(u32),
    /// A hello body that is not the expected JSON.
    #[error("malformed hello JSON: {0}")]
    HelloJson(serde_json::Error),
    /// A hello with an empty service list.
    #[error("hello registers no service")]
    NoService,
    /// A version-2 bundle announcing no connection, or more than [`MAX_BUNDLE`].
    #[error("bundle announces {0} connections, expected 1 to {MAX_BUNDLE}")]
    BundleCount(u32),
    /// A [`FlowMeta`] header longer than [`MAX_HEADER`].
    #[error("header of {0} bytes exceeds the maximum of {MAX_HEADER} bytes")]
    HeaderOversize(u32),
    /// A header that is not a [`FlowMeta`].
    #[error("header is not a FlowMeta: {0}")]
    HeaderJson(serde_json::Error),
    /// A recorded range whose end is before its start.
    #[error("{dir} range [{start}, {end}) ends before it starts")]
    Backwards {
        /// `c2s` or `s2c`.
        dir: &'static str,
        /// [`Recorded::start`].
        start: u64,
        /// [`Recorded::end`].
        end: u64,
    },
    /// A recorded range acknowledged past its end.
    #[error("{dir} acknowledged offset {acked} is past its end {end}")]
    AckedPastEnd {
        /// `c2s` or `s2c`.
        dir: &'static str,
        /// [`Recorded::acked`].
        acked: u64,
        /// [`Recorded::end`].
        end: u64,
    },
    /// Recorded bytes whose count differs from their range.
    #[error("{dir} holds {len} bytes but its range [{start}, {end}) spans {}", .end - .start)]
    Length {
        /// `c2s` or `s2c`.
        dir: &'static str,
        /// How many bytes there are.
        len: usize,
        /// [`Recorded::start`].
        start: u64,
        /// [`Recorded::end`].
        end: u64,
    },
}

/// One direction's recorded bytes, as stream offsets (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    /// Offset of the first recorded byte.
    pub start: u64,
    /// Offset one past the last recorded byte.
    pub end: u64,
    /// Highest offset the receiving side acknowledged.
    pub acked: u64,
}

impl Recorded {
    /// Number of recorded bytes, `end - start` (0 for a range that fails
    /// [`Recorded::check`]).
    pub fn len(self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether no byte is recorded.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Checks that the range is well formed; `dir` names it in the error.
    pub fn check(self, dir: &'static str) -> Result<(), WireError> {
        let Self { start, end, acked } = self;
        if start > end {
            return Err(WireError::Backwards { dir, start, end });
        }
        if acked > end {
            return Err(WireError::AckedPastEnd { dir, acked, end });
        }
        Ok(())
    }

    /// Checks that `len` bytes are what the range spans.
    fn check_len(self, dir: &'static str, len: usize) -> Result<(), WireError> {
        if self.len() == len as u64 {
            return Ok(());
        }
        let Self { start, end, .. } = self;
        Err(WireError::Length {
            dir,
            len,
            start,
            end,
        })
    }
}

/// What an application needs to know about one restored connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowMeta {
    /// The daemon's id of the flow, for logs.
    pub id: u64,
    /// The service address the application registered for.
    pub service: SocketAddr,
    /// The server end of the connection (the restored socket's local address).
    pub server: SocketAddr,
    /// The client end of the connection (the restored socket's peer).
    pub client: SocketAddr,
    /// Client → server bytes.
    pub c2s: Recorded,
    /// Server → client bytes.
    pub s2c: Recorded,
}

impl FlowMeta {
    /// Checks both ranges.
    pub fn check(&self) -> Result<(), WireError> {
        self.c2s.check("c2s")?;
        self.s2c.check("s2c")
    }

    /// The first part of a handoff message: `[u32 length][JSON]`.
    pub fn encode_header(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a FlowMeta serializes");
        let mut header = Vec::with_capacity(HEADER_PREFIX + json.len());
        header.extend_from_slice(&(json.len() as u32).to_be_bytes());
        header.extend_from_slice(&json);
        header
    }

    /// The JSON length a header prefix announces, at most [`MAX_HEADER`].
    pub fn decode_header_len(prefix: [u8; HEADER_PREFIX]) -> Result<usize, WireError> {
        let len = u32::from_be_bytes(prefix);
        if len > MAX_HEADER {
            return Err(WireError::HeaderOversize(len));
        }
        Ok(len as usize)
    }

    /// The header's JSON, checked ([`FlowMeta::check`]).
    pub fn decode_header(json: &[u8]) -> Result<FlowMeta, WireError> {
        let meta: FlowMeta = serde_json::from_slice(json).map_err(WireError::HeaderJson)?;
        meta.check()?;
        Ok(meta)
    }
}

/// The first part of a version-2 bundle: `[u32 count]`, then each header
/// ([`FlowMeta::encode_header`]) in order. The caller keeps the count within
/// 1 to [`MAX_BUNDLE`].
pub fn encode_bundle_head<'a>(metas: impl ExactSizeIterator<Item = &'a FlowMeta>) -> Vec<u8> {
    let mut head = (metas.len() as u32).to_be_bytes().to_vec();
    for meta in metas {
        head.extend_from_slice(&meta.encode_header());
    }
    head
}

/// The count a version-2 bundle's prefix announces, 1 to [`MAX_BUNDLE`].
pub fn decode_bundle_count(prefix: [u8; COUNT_PREFIX]) -> Result<usize, WireError> {
    let count = u32::from_be_bytes(prefix);
    if count == 0 || count as usize > MAX_BUNDLE {
        return Err(WireError::BundleCount(count));
    }
    Ok(count as usize)
}

/// One restored connection.
///
/// `Debug` shows the byte vectors' lengths, not their contents.
pub struct Handoff {
    /// The restored socket, out of repair mode.
    pub stream: TcpStream,
    /// Where the connection stood.
    pub meta: FlowMeta,
    /// Client → server bytes `[meta.c2s.start, meta.c2s.end)`.
    pub c2s: Vec<u8>,
    /// Server → client bytes `[meta.s2c.start, meta.s2c.end)`.
    pub s2c: Vec<u8>,
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            stream,
            meta,
            c2s,
            s2c,
        } = self;
        f.debug_struct("Handoff")
            .field("stream", stream)
            .field("meta", meta)
            .field("c2s_len", &c2s.len())
            .field("s2c_len", &s2c.len())
            .finish()
    }
}

impl Handoff {
    /// Checks the ranges and that the byte vectors have their lengths.
    pub fn check(&self) -> Result<(), WireError> {
        let Self { meta, c2s, s2c, .. } = self;
        meta.check()?;
        meta.c2s.check_len("c2s", c2s.len())?;
        meta.s2c.check_len("s2c", s2c.len())
    }
}

/// The body of a hello: the services an application takes connections of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Service addresses, as the daemon's configuration names them.
    pub services: Vec<SocketAddr>,
}

impl Hello {
    /// The whole hello speaking protocol `version`: magic, version, length,
    /// JSON body.
    pub fn encode(&self, version: u16) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a list of socket addresses serializes");
        let mut hello = Vec::with_capacity(HELLO_HEAD + body.len());
        hello.extend_from_slice(&MAGIC);
        hello.extend_from_slice(&version.to_be_bytes());
        hello.extend_from_slice(&(body.len() as u32).to_be_bytes());
        hello.extend_from_slice(&body);
        hello
    }

    /// Checks a hello's fixed part and returns its version (one of
    /// [`VERSIONS`]) and the body's length.
    pub fn decode_head(head: [u8; HELLO_HEAD]) -> Result<(u16, usize), WireError> {
        let (magic, rest) = head.split_at(4);
        let (version, len) = rest.split_at(2);
        let magic: [u8; 4] = magic.try_into().expect("split at 4");
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        let version = u16::from_be_bytes(version.try_into().expect("2 bytes"));
        if !VERSIONS.contains(&version) {
            return Err(WireError::Version(version));
        }
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes"));
        if len > MAX_HELLO {
            return Err(WireError::HelloOversize(len));
        }
        Ok((version, len as usize))
    }

    /// Parses a hello's body; it must name at least one service.
    pub fn decode_body(body: &[u8]) -> Result<Hello, WireError> {
        let hello: Hello = serde_json::from_slice(body).map_err(WireError::HelloJson)?;
        if hello.services.is_empty() {
            return Err(WireError::NoService);
        }
        Ok(hello)
    }
}

/// Sends one message of either version: `parts` in order, the first
/// `sendmsg(2)` carrying `fds` in one `SCM_RIGHTS` control message (so the
/// descriptors come with the message's first byte), then whatever that call
/// did not take. `MSG_NOSIGNAL`, retrying on `EINTR`. `parts` must hold at
/// least one byte and `fds` at most [`MAX_BUNDLE`] descriptors. On failure,
/// returns the call that failed (`sendmsg(SCM_RIGHTS)` or `sendmsg`) and its
/// error.
pub fn send_message(
    sock: BorrowedFd<'_>,
    mut parts: &mut [IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> Result<(), (&'static str, io::Error)> {
    let fds: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let mut control: &[ControlMessage<'_>] = &rights;
    while parts.iter().any(|part| !part.is_empty()) {
        let call = match control {
            [] => "sendmsg",
            _ => "sendmsg(SCM_RIGHTS)",
        };
        let flags = MsgFlags::MSG_NOSIGNAL;
        match sendmsg::<()>(sock.as_raw_fd(), parts, control, flags, None) {
            Ok(0) => return Err((call, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                control = &[];
                IoSlice::advance_slices(&mut parts, n);
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err((call, e.into())),
        }
    }
    Ok(())
}

/// `send(2)` all of `bytes` with `MSG_NOSIGNAL` (no `SIGPIPE` when the peer is
/// gone), retrying on `EINTR`: how both ends write to the handoff socket.
pub fn send_all(sock: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match send(sock.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
