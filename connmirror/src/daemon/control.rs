//! The standby's control socket: how `connmirror takeover` asks a running
//! standby to take services over.
//!
//! A Unix stream socket (`unix(7)`), mode 0600, set before `listen(2)` so no
//! other user can ever connect (made like the handoff socket,
//! [`crate::resume::handoff::bind_private`]); each accepted peer's credentials
//! (`SO_PEERCRED`) must also be root or the daemon's own user. One request
//! per connection: a JSON [`Request`] on one line (at most
//! [`MAX_MESSAGE`] bytes), answered with one JSON [`Response`] line. Anything
//! else is rejected with an error response, counted and logged (rate-limited).

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{
    daemon::status::StatusReport, engine::EventSource, failover::migrate::MigrateReport,
    failover::takeover::TakeoverReport, resume::handoff::HandoffError,
};

/// Where the standby listens unless told otherwise.
pub const DEFAULT_CONTROL: &str = "/run/connmirror/control.sock";

/// Longest request line accepted.
pub const MAX_MESSAGE: usize = 64 << 10;

/// How long a peer may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Take over these services (all protected services when `None`).
    Takeover {
        /// Service addresses.
        services: Option<Vec<SocketAddr>>,
    },
    /// Report the node's status.
    Status,
    /// Move the live connections of these services (every service taken
    /// over when `None`) to the node `to`, whose agent runs with `--handoff`
    /// ([`crate::failover::migrate`]), and yield the services to it.
    Migrate {
        /// The node id.
        to: String,
        /// Service addresses.
        services: Option<Vec<SocketAddr>>,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// The takeover ran.
    Takeover(TakeoverReport),
    /// The node's status.
    Status(Box<StatusReport>),
    /// The migration ran.
    Migrate(MigrateReport),
    /// The request was refused or failed.
    Error(String),
}

/// Control-socket errors.
#[derive(Debug, Error)]
pub enum ControlError {
    /// A socket call failed.
    #[error("{call} {path}")]
    Io {
        /// What was attempted.
        call: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket could not be created (shared with the handoff socket).
    #[error(transparent)]
    Bind(#[from] HandoffError),
    /// The standby answered with something that is not a [`Response`].
    #[error("unreadable answer from the standby at {path}: {reason}")]
    Answer {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// A request waiting for the daemon's answer.
#[derive(Debug)]
pub struct Pending {
    /// What was asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// The listening control socket; yields [`Pending`] requests.
#[derive(Debug)]
pub struct ControlServer {
    requests: mpsc::Receiver<Pending>,
    rejected: Arc<AtomicU64>,
}

impl ControlServer {
    /// Binds `path` with mode 0600 and starts accepting requests.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let listener = crate::resume::handoff::bind_private(path)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(listener))
            .map_err(io_error("listening on", path))
            .map(|listener| {
                let (tx, requests) = mpsc::channel(4);
                let rejected = Arc::new(AtomicU64::new(0));
                tokio::spawn(accept_loop(listener, tx, rejected.clone()));
                tracing::info!(path = %path.display(), "control socket ready");
                Self { requests, rejected }
            })
    }

    /// Requests rejected so far (malformed, oversize, or from another user).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl EventSource<Pending> for ControlServer {
    async fn next(&mut self) -> Pending {
        match self.requests.recv().await {
            Some(pending) => pending,
            None => std::future::pending().await,
        }
    }
}

fn io_error(call: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ControlError {
    let path = path.to_owned();
    move |source| ControlError::Io { call, path, source }
}

async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Pending>, rejected: Arc<AtomicU64>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, tx.clone(), rejected.clone()));
            }
            Err(err) => {
                tracing::warn!(%err, "accepting on the control socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one connection: one request, one response.
async fn serve(mut stream: UnixStream, tx: mpsc::Sender<Pending>, rejected: Arc<AtomicU64>) {
    let response = match read_request(&mut stream).await {
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            let pending = Pending { request, reply };
            match tx.send(pending).await {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| Response::Error("the standby is shutting down".into())),
                Err(_) => Response::Error("the standby is shutting down".into()),
            }
        }
        Err(reason) => {
            let n = rejected.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(reason, rejected = n, "control request rejected");
            }
            Response::Error(reason)
        }
    };
    let mut line = serde_json::to_vec(&response).expect("responses serialise");
    line.push(b'\n');
    if let Err(err) = stream.write_all(&line).await {
        tracing::warn!(%err, "answering on the control socket");
    }
}

/// Reads and checks one request; `Err` is the message sent back.
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let cred = stream
        .peer_cred()
        .map_err(|err| format!("SO_PEERCRED: {err}"))?;
    let euid = crate::sys::process::euid();
    if cred.uid() != 0 && cred.uid() != euid {
        return Err(format!("uid {} may not use the control socket", cred.uid()));
    }
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(stream).take(MAX_MESSAGE as u64 + 1);
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    match read {
        Err(_) => return Err("no request within 5 s".into()),
        Ok(Err(err)) => return Err(format!("reading the request: {err}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_MESSAGE {
        return Err(format!("request longer than {MAX_MESSAGE} bytes"));
    }
    serde_json::from_slice(&line).map_err(|err| format!("malformed control request: {err}"))
}

/// Sends `request` to the standby at `path` and returns its answer
/// (blocking; for the `connmirror takeover` command).
pub fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let mut stream = StdUnixStream::connect(path).map_err(io_error("connect to", path))?;
    let mut line = serde_json::to_vec(request).expect("requests serialise");
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(io_error("writing to", path))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_error("reading from", path))?;
    serde_json::from_str(&answer).map_err(|err| ControlError::Answer {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}
