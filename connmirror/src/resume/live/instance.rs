//! One live connection's task: its own connection to the standby instance,
//! fed the client's bytes as they are captured, its output compared with the
//! primary's ([`Comparison`]), and handed over at takeover.
//!
//! The task writes through a writer task of its own, so an instance that is
//! slow to read never stops the comparison from reading its output (which
//! would deadlock two full socket buffers). What the task holds is bounded by
//! the lag cap: past it the connection is unprotected (`instance-lag`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use connmirror_common::FlowKey;

use super::{
    Protection, Reason, Totals,
    compare::{Comparison, Divergence},
};

/// What the feed sends a connection's task.
pub(super) enum Input {
    /// Client → server bytes, contiguous with the ones before.
    ClientBytes(Vec<u8>),
    /// Server → client bytes the primary sent, contiguous with the ones before.
    ServerBytes(Vec<u8>),
    /// Takeover: finish the comparison within the timeout and hand over.
    Take(Duration, oneshot::Sender<Result<Taken, String>>),
}

/// An instance connection handed over at takeover.
#[derive(Debug)]
pub struct Taken {
    /// The connection to the instance, in step with the primary.
    pub conn: TcpStream,
    /// Output the instance produced past the primary's last byte: new bytes
    /// for the client.
    pub ahead: Vec<u8>,
}

/// A connection's state, shared between its task and the feed.
#[derive(Debug)]
pub(super) struct Shared {
    /// Protected, divergent or unprotected.
    pub protection: Protection,
    /// Client bytes queued for the instance and not yet written.
    pub unwritten: usize,
    /// Captured server bytes the instance has not produced yet.
    pub owed: usize,
    /// When the oldest of them was captured.
    pub owed_since: Option<Instant>,
}

/// The feed's end of a connection's task.
pub(super) struct Handle {
    /// Inputs; dropping it ends the task and closes the instance connection.
    pub tx: mpsc::UnboundedSender<Input>,
    /// The task's state.
    pub shared: Arc<Mutex<Shared>>,
}

impl Handle {
    /// Starts the task of connection `key` (`what` in logs), which connects
    /// to the instance at `app`.
    pub fn spawn(
        app: SocketAddr,
        key: FlowKey,
        what: String,
        cap: usize,
        totals: Arc<Totals>,
    ) -> Handle {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared {
            protection: Protection::Opening,
            unwritten: 0,
            owed: 0,
            owed_since: None,
        }));
        let task = Task {
            shared: shared.clone(),
            key,
            what,
            cap,
            totals,
            comparison: Comparison::default(),
        };
        tokio::spawn(task.run(app, rx));
        Handle { tx, shared }
    }

    /// Sends an input; false when the task has ended.
    pub fn send(&self, input: Input) -> bool {
        self.tx.send(input).is_ok()
    }
}

/// A connection's task.
struct Task {
    shared: Arc<Mutex<Shared>>,
    key: FlowKey,
    what: String,
    cap: usize,
    totals: Arc<Totals>,
    comparison: Comparison,
}

impl Task {
    async fn run(mut self, app: SocketAddr, mut rx: mpsc::UnboundedReceiver<Input>) {
        let conn = match connect(app).await {
            Ok(conn) => {
                self.lock().protection = Protection::Protected;
                conn
            }
            Err(err) => {
                let detail = format!("connecting to the instance at {app}: {err}");
                return self.unprotect(Reason::InstanceDown, detail);
            }
        };
        let (mut reader, writer) = conn.into_split();
        let (wtx, wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(write_all(writer, wrx, self.shared.clone()));
        let mut buf = vec![0u8; 64 << 10];
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    // The primary's connection closed: so does the instance's.
                    None => return,
                    Some(Input::ClientBytes(bytes)) => {
                        self.lock().unwritten += bytes.len();
                        // A send fails only once the writer ended, which it reports.
                        let _ = wtx.send(bytes);
                    }
                    Some(Input::ServerBytes(bytes)) => {
                        let checked = self.comparison.captured(&bytes, Instant::now());
                        if !self.checked(checked) {
                            return;
                        }
                    }
                    Some(Input::Take(timeout, reply)) => {
                        let taken = self.take(reader, writer, wtx, timeout).await;
                        let _ = reply.send(taken);
                        return;
                    }
                },
                read = reader.read(&mut buf) => if !self.read(read, &buf) {
                    return;
                },
            }
            if !self.within_cap() {
                return;
            }
        }
    }

    /// Takes the result of a read from the instance; false when the
    /// connection can no longer be protected.
    fn read(&mut self, read: std::io::Result<usize>, buf: &[u8]) -> bool {
        match read {
            Ok(0) => {
                let detail = "the instance closed the connection".to_owned();
                self.unprotect(Reason::InstanceDown, detail);
                false
            }
            Ok(n) => {
                let checked = self.comparison.produced(&buf[..n]);
                self.checked(checked)
            }
            Err(err) => {
                let detail = format!("reading from the instance: {err}");
                self.unprotect(Reason::InstanceDown, detail);
                false
            }
        }
    }

    /// Records a comparison step; false (and divergent) on a differing byte.
    /// Queued for the journal before it shows: whoever sees `divergent`
    /// finds it in [`super::Live::take_divergences`].
    fn checked(&mut self, checked: Result<(), Divergence>) -> bool {
        let mut shared = self.lock();
        shared.owed = self.comparison.owed();
        shared.owed_since = self.comparison.owed_since();
        let Err(divergence) = checked else {
            return true;
        };
        self.totals.divergence(self.key, divergence);
        shared.protection = Protection::Divergent(divergence);
        drop(shared);
        tracing::warn!(
            flow = self.what,
            offset = divergence.offset,
            primary = format_args!("{:#04x}", divergence.primary),
            instance = format_args!("{:#04x}", divergence.instance),
            "live replay diverged: the connection is no longer protected"
        );
        false
    }

    /// False (and unprotected) once the connection holds more than the cap.
    fn within_cap(&mut self) -> bool {
        let held = self.lock().unwritten + self.comparison.owed() + self.comparison.ahead();
        if held <= self.cap {
            return true;
        }
        let detail = format!("{held} bytes behind or ahead, over the cap of {}", self.cap);
        self.unprotect(Reason::InstanceLag, detail);
        false
    }

    /// Finishes at takeover: every client byte written, and every captured
    /// server byte produced and matched, within `timeout`.
    async fn take(
        &mut self,
        mut reader: OwnedReadHalf,
        writer: JoinHandle<std::io::Result<OwnedWriteHalf>>,
        wtx: mpsc::UnboundedSender<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Taken, String> {
        drop(wtx);
        let comparison = &mut self.comparison;
        let read = async {
            let mut buf = vec![0u8; 64 << 10];
            while comparison.owed() > 0 {
                match reader.read(&mut buf).await {
                    Ok(0) => return Err("the instance closed".to_owned()),
                    Ok(n) => comparison.produced(&buf[..n]).map_err(|d| d.to_string())?,
                    Err(err) => return Err(format!("reading from the instance: {err}")),
                }
            }
            Ok(())
        };
        let write = async {
            match writer.await {
                Ok(Ok(writer)) => Ok(writer),
                Ok(Err(err)) => Err(format!("writing to the instance: {err}")),
                Err(err) => Err(format!("the writer task: {err}")),
            }
        };
        let joined = tokio::time::timeout(timeout, async { tokio::try_join!(write, read) }).await;
        let owed = self.comparison.owed();
        let writer = match joined {
            Ok(Ok((writer, ()))) => writer,
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(format!(
                    "the instance still owed {owed} bytes after {timeout:?}"
                ));
            }
        };
        let conn = reader.reunite(writer).map_err(|err| err.to_string())?;
        let ahead = self.comparison.take_ahead();
        Ok(Taken { conn, ahead })
    }

    fn unprotect(&self, reason: Reason, detail: String) {
        tracing::warn!(
            flow = self.what,
            reason = reason.name(),
            detail,
            "live replay: unprotected"
        );
        self.lock().protection = Protection::Unprotected(reason);
        self.totals.unprotected(reason);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("live connection state")
    }
}

/// Connects to the instance, with Nagle off (requests go out as they come).
async fn connect(app: SocketAddr) -> std::io::Result<TcpStream> {
    let conn = TcpStream::connect(app).await?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// Writes each queued run of client bytes to the instance, in order, until
/// the queue closes; returns the write half for a takeover.
async fn write_all(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Mutex<Shared>>,
) -> std::io::Result<OwnedWriteHalf> {
    while let Some(bytes) = rx.recv().await {
        writer.write_all(&bytes).await?;
        shared.lock().expect("live connection state").unwritten -= bytes.len();
    }
    Ok(writer)
}
