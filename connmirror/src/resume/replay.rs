//! Replay resumption (docs/architecture.md, "Resumption"): for an unmodified,
//! deterministic server, a standby instance of the application continues each
//! restored connection.
//!
//! connmirror connects to the standby instance, writes it every client byte the
//! restored connection has consumed (the whole recorded client → server history,
//! from the first byte), and reads its output while doing so. That output must
//! equal the recorded server → client bytes up to what the primary had sent:
//! those the client already has (or will get from the restored send queue), so
//! they are discarded. Any output past them is new, and goes to the client.
//! Then the restored socket and the application connection are spliced.
//!
//! Output that differs (or an application that closes early) means the standby
//! instance is not where the primary was: that one connection is reset, never
//! continued with bytes the client would see as corrupt.

use std::{net::SocketAddr, time::Duration};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    flow::TakeoverFlow,
    resume::{Outcome, Unrecoverable, abort, splice},
};

/// Why a replay could not continue a connection.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The application's output differs from what the primary sent.
    #[error(
        "replayed output differs from the recorded server bytes at offset {offset} \
         (expected {expected:#04x}, got {got:#04x})"
    )]
    Divergent {
        /// Stream offset of the first differing byte.
        offset: u64,
        /// The recorded byte.
        expected: u8,
        /// The application's byte.
        got: u8,
    },
    /// The application closed before reproducing the recorded output.
    #[error("the application closed after {got} of {want} recorded output bytes")]
    Closed {
        /// Bytes it produced.
        got: u64,
        /// Bytes the primary had sent.
        want: u64,
    },
    /// An I/O error, with what was being done.
    #[error("{what} {app}: {source}")]
    Io {
        /// `connect to`, `write to`, `read from`.
        what: &'static str,
        /// The application's address.
        app: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Replays `flow` into the application at `app`, verifies its output, and
/// splices `client` (the restored socket) to it; resets `client` otherwise.
pub(crate) async fn resume(
    client: std::net::TcpStream,
    flow: &TakeoverFlow,
    app: SocketAddr,
    timeout: Duration,
) -> Outcome {
    let (server, peer) = flow.endpoints();
    let what = format!("{server} ↔ {peer}");
    match tokio::time::timeout(timeout, verify(flow, app)).await {
        Ok(Ok((conn, extra))) => {
            tokio::spawn(splice(client, conn, extra, what));
            Outcome::Replayed
        }
        Ok(Err(err @ ReplayError::Divergent { .. })) => {
            abort(client);
            Outcome::Divergent(format!("{what}: {err}"))
        }
        Ok(Err(err)) => {
            abort(client);
            Outcome::Failed(Unrecoverable::ReplayFailed, format!("{what}: {err}"))
        }
        Err(_) => {
            abort(client);
            let error = format!("{what}: replay into {app} took longer than {timeout:?}");
            Outcome::Failed(Unrecoverable::ReplayFailed, error)
        }
    }
}

/// Writes the client history into a new connection to `app` while checking
/// its output against the recorded server bytes. Returns the connection and
/// whatever output came past the recorded bytes.
async fn verify(flow: &TakeoverFlow, app: SocketAddr) -> Result<(TcpStream, Vec<u8>), ReplayError> {
    let io = |what| move |source| ReplayError::Io { what, app, source };
    let conn = TcpStream::connect(app).await.map_err(io("connect to"))?;
    conn.set_nodelay(true).map_err(io("connect to"))?;
    let (mut reader, mut writer) = conn.into_split();
    let input = &flow.c2s.bytes;
    let write = async {
        writer.write_all(input).await.map_err(io("write to"))?;
        Ok(writer)
    };
    let read = async {
        let extra = compare(&mut reader, &flow.s2c.bytes)
            .await
            .map_err(|err| match err {
                Compared::Io(source) => io("read from")(source),
                Compared::Error(err) => err,
            })?;
        Ok::<_, ReplayError>((reader, extra))
    };
    let (writer, (reader, extra)) = tokio::try_join!(write, read)?;
    let conn = reader
        .reunite(writer)
        .expect("both halves come from the same stream");
    Ok((conn, extra))
}

enum Compared {
    Io(std::io::Error),
    Error(ReplayError),
}

/// Reads until `expected.len()` bytes matched; returns the bytes read past them.
async fn compare(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    expected: &[u8],
) -> Result<Vec<u8>, Compared> {
    let mut buf = vec![0u8; 64 << 10];
    let mut matched = 0;
    while matched < expected.len() {
        let n = reader.read(&mut buf).await.map_err(Compared::Io)?;
        if n == 0 {
            return Err(Compared::Error(ReplayError::Closed {
                got: matched as u64,
                want: expected.len() as u64,
            }));
        }
        let take = n.min(expected.len() - matched);
        let want = &expected[matched..matched + take];
        if let Some(i) = (0..take).find(|&i| buf[i] != want[i]) {
            return Err(Compared::Error(ReplayError::Divergent {
                offset: (matched + i) as u64,
                expected: want[i],
                got: buf[i],
            }));
        }
        matched += take;
        if n > take {
            return Ok(buf[take..n].to_vec());
        }
    }
    Ok(Vec::new())
}
