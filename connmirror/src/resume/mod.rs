//! Resumption: what happens to a restored connection once its socket exists.
//!
//! [`handoff`] passes restored sockets to a local application over a Unix
//! socket (the daemon's server; the wire format and the application's side
//! are the `connmirror-handoff` crate);
//! [`replay`] feeds a standby instance of an unmodified, deterministic server
//! the recorded client history at takeover; [`live`] feeds it all along, and
//! at takeover only splices; [`splice`] relays a resumed connection with
//! splice(2).
//!
//! Uses: [`crate::repair`], [`crate::flow`], [`crate::metrics`], [`crate::sys`]. Must not use:
//! failover or roles; those call in.

pub mod handoff;
pub mod live;
pub mod replay;
pub mod splice;

use std::net::TcpStream;

use tokio::io::AsyncWriteExt as _;

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
    /// Live replay could not continue it: its instance is down, lagged past
    /// the cap, or never saw its beginning ([`live::Reason`]).
    Unprotected,
}

impl Unrecoverable {
    /// Every reason.
    pub const ALL: [Unrecoverable; 8] = [
        Unrecoverable::Gapped,
        Unrecoverable::NoHandshake,
        Unrecoverable::Closing,
        Unrecoverable::OverCap,
        Unrecoverable::NoApplication,
        Unrecoverable::ReplayFailed,
        Unrecoverable::RestoreFailed,
        Unrecoverable::Unprotected,
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
            Unrecoverable::Unprotected => "unprotected",
        }
    }
}

/// How one flow's resumption ended.
pub enum Outcome {
    /// An application took the socket.
    HandedOff,
    /// The replay matched and the socket is spliced to the application.
    Replayed,
    /// The live instance caught up and the socket is spliced to it.
    Live,
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

/// Relays both ways between the restored socket and the application until
/// both are done ([`splice::relay`]: splice(2), or a userspace copy where the
/// kernel refuses); `extra` (new application output) goes to the client
/// first.
pub(crate) async fn splice(
    client: TcpStream,
    mut app: tokio::net::TcpStream,
    extra: Vec<u8>,
    what: String,
) {
    let result = async {
        client.set_nonblocking(true)?;
        let mut client = tokio::net::TcpStream::from_std(client)?;
        client.write_all(&extra).await?;
        splice::relay(&mut client, &mut app).await
    }
    .await;
    match result {
        Ok((c2s, s2c)) => tracing::info!(flow = what, c2s, s2c, "splice finished"),
        Err(err) => tracing::warn!(flow = what, %err, "splice ended"),
    }
}
