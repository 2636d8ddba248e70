//! Resumption: what happens to a restored connection once its socket exists.
//!
//! [`handoff`] passes restored sockets to a local application over a Unix
//! socket (the daemon's server; the wire format and the application's side
//! are the `connmirror-handoff` crate);
//! [`replay`] feeds a standby instance of an unmodified, deterministic server
//! the recorded client history.
//!
//! Uses: [`crate::repair`], [`crate::flow`], [`crate::sys`]. Must not use:
//! failover or roles; those call in.

pub mod handoff;
pub mod live;
pub mod replay;

use std::net::TcpStream;

use crate::sys::sockopt;

/// Why a flow was not restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unrecoverable {
    /// Bytes a restore needs are missing (a capture gap).
    Gapped,
    /// First seen mid-stream, and the policy is `reset`.
    NoHandshake,
    /// One side had already sent its FIN: half-closed connections are not rebuilt.
    Closing,
    /// Replay needs the whole history, and it went over the history cap.
    OverCap,
    /// No application took the handed-off socket in time.
    NoApplication,
    /// A replay failed for a reason other than divergence (timeout, I/O).
    ReplayFailed,
    /// A restore system call failed.
    RestoreFailed,
}

impl Unrecoverable {
    /// Every reason.
    pub const ALL: [Unrecoverable; 7] = [
        Unrecoverable::Gapped,
        Unrecoverable::NoHandshake,
        Unrecoverable::Closing,
        Unrecoverable::OverCap,
        Unrecoverable::NoApplication,
        Unrecoverable::ReplayFailed,
        Unrecoverable::RestoreFailed,
    ];

    /// The reason's name in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Unrecoverable::Gapped => "gapped",
            Unrecoverable::NoHandshake => "no-handshake",
            Unrecoverable::Closing => "closing",
            Unrecoverable::OverCap => "over-cap",
            Unrecoverable::NoApplication => "no-application",
            Unrecoverable::ReplayFailed => "replay-failed",
            Unrecoverable::RestoreFailed => "restore-failed",
        }
    }
}

/// How one flow's resumption ended.
pub enum Outcome {
    /// An application took the socket.
    HandedOff,
    /// The replay matched and the socket is spliced to the application.
    Replayed,
    /// The replayed output differed; the connection was reset.
    Divergent(String),
    /// The flow could not continue; the connection was reset.
    Failed(Unrecoverable, String),
}

/// Closes `stream` with a RST (see [`sockopt::linger_zero`]).
pub fn abort(stream: TcpStream) {
    use std::os::fd::AsFd as _;
    if let Err(err) = sockopt::linger_zero(stream.as_fd()) {
        tracing::warn!(%err, "setsockopt(SO_LINGER)");
    }
}
