//! The daemon's end of the handoff socket (`handoff` mode).
//!
//! On failover the standby rebuilds each protected connection as a kernel TCP
//! socket (`TCP_REPAIR`, see [`crate::repair::restore`]). For a service in
//! `handoff` mode the daemon then passes that socket to an application running
//! on the standby, over a Unix domain socket with an `SCM_RIGHTS` control
//! message, together with [`FlowMeta`] and the bytes the journal recorded.
//!
//! [`HandoffServer`] is the daemon's end: it listens, admits applications'
//! registrations (refusing and counting bad ones) and sends them restored
//! sockets. The application's end, and the wire format both ends speak, are
//! the `connmirror-handoff` crate ([`connmirror_handoff::wire`] documents the
//! protocol), so an application builds without this crate. The types
//! [`HandoffServer::deliver`] takes are re-exported here from it.
//!
//! Applications speak protocol version 1 (one message per connection) or 2
//! (bundles of up to 253 connections per message); each registration keeps
//! the version of its hello, and [`HandoffServer::deliver_all`] sends each
//! application the messages of its version.
//!
//! The API is synchronous std I/O: the daemon calls
//! [`HandoffServer::deliver_all`] from a blocking thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, IoSlice, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use std::{iter, mem, slice};

use connmirror_handoff::wire::{
    HELLO_HEAD, HELLO_TIMEOUT, Hello, MAX_BUNDLE, MAX_HELLO, REGISTERED, WireError,
    encode_bundle_head, send_all, send_message,
};
pub use connmirror_handoff::{DEFAULT_SOCKET, FlowMeta, Handoff, Recorded};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket, sockopt,
};
use thiserror::Error;

/// How long one handoff may block on an application that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the daemon's end of the handoff socket.
#[derive(Debug, Error)]
pub enum HandoffError {
    /// A system call on the handoff socket (or its directory) failed.
    #[error("{call} {}: {error}", .path.display())]
    Syscall {
        /// The call, with what it was made on (`bind`, `mkdir`, ...).
        call: &'static str,
        /// The socket's path (or its directory's).
        path: PathBuf,
        /// What the call returned.
        error: io::Error,
    },
    /// Something other than a socket is in the way of the handoff socket.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// The path does not fit `sockaddr_un.sun_path`.
    #[error("socket path {} is longer than the {max} bytes sun_path holds", .path.display())]
    PathTooLong {
        /// The socket's path.
        path: PathBuf,
        /// The longest path that fits.
        max: usize,
    },
    /// [`HandoffServer::deliver`] was given metadata that disagrees with itself.
    #[error("handoff of flow {id} is inconsistent: {reason}")]
    Inconsistent {
        /// The flow.
        id: u64,
        /// What disagrees.
        reason: WireError,
    },
    /// No application registered for the service in time.
    #[error("no application registered for service {service} within {waited:?}")]
    NoApplication {
        /// The flow's service.
        service: SocketAddr,
        /// How long the daemon waited.
        waited: Duration,
    },
    /// Sending to the last application registered for the service failed, and no
    /// other registered in time.
    #[error("handing flow {id} to the application registered for {service}: {error}")]
    Send {
        /// The flow.
        id: u64,
        /// The flow's service.
        service: SocketAddr,
        /// The failed call.
        error: SendError,
    },
}

/// Resets the connection of a handoff that could not be delivered
/// ([`crate::resume::abort`]) and says why, as `server ↔ client: error`.
pub fn reset_undelivered(handoff: Handoff, err: HandoffError) -> String {
    let Handoff { stream, meta, .. } = handoff;
    crate::resume::abort(stream);
    format!("{} ↔ {}: {err}", meta.server, meta.client)
}

/// A failed call while sending one handoff to an application.
#[derive(Debug, Error)]
#[error("{call} on {}: {error}", .path.display())]
pub struct SendError {
    /// The call: `sendmsg(SCM_RIGHTS)` or `sendmsg`.
    pub call: &'static str,
    /// The handoff socket.
    pub path: PathBuf,
    /// What it returned.
    pub error: io::Error,
}

/// `map_err` helper: a failed `call` on `path`.
fn syscall(call: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HandoffError {
    let path = path.to_path_buf();
    move |error| HandoffError::Syscall { call, path, error }
}

/// Why the daemon refused a hello; the text is the refusal line.
#[derive(Debug, Error)]
enum Rejection {
    #[error("peer uid {uid} is neither root nor the daemon's uid {euid}")]
    Uid { uid: u32, euid: u32 },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("reading the hello: {0}")]
    Read(io::Error),
}

/// The daemon's end: a listening Unix socket that applications register with.
///
/// Dropping it stops accepting, closes every application's connection (their
/// [`connmirror_handoff::Application::next`] returns `Ok(None)`) and removes
/// the socket file.
#[derive(Debug)]
pub struct HandoffServer {
    shared: Arc<Shared>,
    listener: UnixListener,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    euid: u32,
    rejected: AtomicU64,
    closing: AtomicBool,
    registry: Mutex<Registry>,
    registered: Condvar,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    /// Applications per service, in the order handoffs rotate through them.
    by_service: HashMap<SocketAddr, VecDeque<Arc<App>>>,
}

/// One registered application connection.
#[derive(Debug)]
struct App {
    id: u64,
    pid: i32,
    /// The protocol version of its hello.
    version: u16,
    stream: Mutex<UnixStream>,
}

impl HandoffServer {
    /// Binds `path` (parent dir created 0700 if missing, stale socket file
    /// replaced, the socket file chmod 0600 before `listen(2)` so no other user
    /// can connect) and starts a thread accepting applications.
    pub fn bind(path: &Path) -> Result<HandoffServer, HandoffError> {
        let listener = bind_private(path)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            euid: crate::sys::process::euid(),
            rejected: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            registry: Mutex::default(),
            registered: Condvar::new(),
        });
        let accepting = listener.try_clone().map_err(syscall("dup", path))?;
        let thread_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("handoff-accept".into())
            .spawn(move || thread_shared.accept_loop(&accepting))
            .map_err(syscall("spawn accept thread for", path))?;
        tracing::info!(path = %path.display(), "handoff socket listening");
        Ok(HandoffServer {
            shared,
            listener,
            accept: Some(accept),
        })
    }

    /// Passes `handoff` to an application registered for
    /// `handoff.meta.service`, waiting up to `wait` for one to register: a
    /// [`HandoffServer::deliver_all`] of one. On failure the handoff comes back
    /// so the caller can reset the connection.
    pub fn deliver(
        &self,
        handoff: Handoff,
        wait: Duration,
    ) -> Result<(), (Box<Handoff>, HandoffError)> {
        match self.deliver_all(vec![handoff], wait).pop() {
            None => Ok(()),
            Some((handoff, err)) => Err((Box::new(handoff), err)),
        }
    }

    /// Passes each of `handoffs` to an application registered for its
    /// service, waiting up to `wait` in all for one to register; returns the
    /// handoffs that could not be delivered, each with its reason, so the
    /// caller can reset exactly those connections.
    ///
    /// A service's connections go in bundles of up to [`MAX_BUNDLE`] per
    /// message (one per connection to an application that speaks version 1),
    /// spread evenly over the applications registered for it when the first
    /// bundle goes, which take turns: bundles of one size, one per application
    /// a turn, in the fewest turns that keep each within [`MAX_BUNDLE`]. One that fails (it exited, or did not read for 10 s) is dropped
    /// and its bundle goes to the next one, until `wait` is over.
    pub fn deliver_all(
        &self,
        handoffs: Vec<Handoff>,
        wait: Duration,
    ) -> Vec<(Handoff, HandoffError)> {
        let deadline = Instant::now() + wait;
        let mut failed = Vec::new();
        let mut by_service: BTreeMap<SocketAddr, VecDeque<Handoff>> = BTreeMap::new();
        for handoff in handoffs {
            match handoff.check() {
                Ok(()) => by_service
                    .entry(handoff.meta.service)
                    .or_default()
                    .push_back(handoff),
                Err(reason) => {
                    let id = handoff.meta.id;
                    failed.push((handoff, HandoffError::Inconsistent { id, reason }));
                }
            }
        }
        for (service, queue) in by_service {
            let undelivered = self.shared.deliver_service(service, queue, deadline);
            failed.extend(undelivered.into_iter().map(|(handoff, failure)| {
                let FlowMeta { id, service, .. } = handoff.meta;
                let err = match failure {
                    Some(error) => HandoffError::Send { id, service, error },
                    None => HandoffError::NoApplication {
                        service,
                        waited: wait,
                    },
                };
                (handoff, err)
            }));
        }
        failed
    }

    /// Hello messages rejected (malformed, wrong magic/version, unknown fields,
    /// oversize, or a peer of another user) since start.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// Whether an application is registered for `service` now.
    pub fn serves(&self, service: SocketAddr) -> bool {
        self.shared.serves(service)
    }

    /// Whether an application registers for `service` within `wait`.
    pub fn wait_for(&self, service: SocketAddr, wait: Duration) -> bool {
        self.shared.pick(service, Instant::now() + wait).is_some()
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Drop for HandoffServer {
    fn drop(&mut self) {
        let Self {
            shared,
            listener,
            accept,
        } = self;
        shared.closing.store(true, Ordering::Release);
        // Shutting a listening Unix socket down wakes a blocked accept(2) with
        // EINVAL: unix_accept (net/unix/af_unix.c) gets no skb from
        // skb_recv_datagram once RCV_SHUTDOWN is set ("This means receive
        // shutdown").
        let how = nix::sys::socket::Shutdown::Both;
        let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), how);
        if let Some(accept) = accept.take() {
            let _ = accept.join();
        }
        let registry = mem::take(&mut *shared.lock());
        for app in registry.by_service.values().flatten() {
            let _ = lock(&app.stream).shutdown(std::net::Shutdown::Both);
        }
        let _ = fs::remove_file(&shared.path);
    }
}

/// A listening Unix socket at `path` that only root and its owner can reach:
/// the parent directory is created (0700) if missing, a stale socket file is
/// replaced (anything else at `path` is refused), and the file is made 0600
/// before `listen(2)`. The handoff socket and the standby's control socket
/// are both made this way.
pub(crate) fn bind_private(path: &Path) -> Result<UnixListener, HandoffError> {
    prepare_path(path)?;
    listen_private(path)
}

/// Creates the parent directory (0700) if missing and removes a stale socket.
fn prepare_path(path: &Path) -> Result<(), HandoffError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(syscall("mkdir", parent))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(syscall("unlink stale socket", path))
        }
        Ok(_) => Err(HandoffError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(syscall("lstat", path)(e)),
    }
}

/// `socket`, `bind`, `chmod 0600`, `listen`: std's `UnixListener::bind` listens
/// at once, which would leave a window where the file has the umask's mode and
/// already accepts connections.
fn listen_private(path: &Path) -> Result<UnixListener, HandoffError> {
    let errno = |call| move |e: Errno| syscall(call, path)(e.into());
    let addr = UnixAddr::new(path).map_err(|e| match e {
        Errno::ENAMETOOLONG => HandoffError::PathTooLong {
            path: path.to_path_buf(),
            // One byte stays zero: the terminating NUL.
            max: mem::size_of::<nix::libc::sockaddr_un>()
                - mem::offset_of!(nix::libc::sockaddr_un, sun_path)
                - 1,
        },
        e => errno("sockaddr_un for")(e),
    })?;
    let flags = SockFlag::SOCK_CLOEXEC;
    let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)
        .map_err(errno("socket(AF_UNIX) for"))?;
    bind(fd.as_raw_fd(), &addr).map_err(errno("bind"))?;
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(syscall("chmod", path))?;
    listen(&fd, Backlog::MAXCONN).map_err(errno("listen"))?;
    Ok(UnixListener::from(fd))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves no broken invariant behind.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    fn accept_loop(&self, listener: &UnixListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(_) if self.closing.load(Ordering::Acquire) => return,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), %e, "accept on the handoff socket failed");
                    // EMFILE and friends persist for a while: do not spin.
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Reads one hello and registers the application or refuses it.
    fn admit(&self, stream: UnixStream) {
        let (pid, uid) = peer_cred(&stream).unwrap_or((-1, u32::MAX));
        match self.read_hello(&stream, uid) {
            Ok((version, hello)) => self.register(stream, pid, version, hello),
            Err(rejection) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pid, uid, %rejection, "handoff hello rejected");
                let line = format!("{rejection}\n");
                let _ = send_all(stream.as_fd(), line.as_bytes());
                discard_unread(&stream);
            }
        }
    }

    /// The hello's version and body.
    fn read_hello(&self, mut stream: &UnixStream, uid: u32) -> Result<(u16, Hello), Rejection> {
        if uid != 0 && uid != self.euid {
            return Err(Rejection::Uid {
                uid,
                euid: self.euid,
            });
        }
        stream
            .set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(Rejection::Read)?;
        let mut head = [0u8; HELLO_HEAD];
        stream.read_exact(&mut head).map_err(Rejection::Read)?;
        let (version, len) = Hello::decode_head(head)?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).map_err(Rejection::Read)?;
        Ok((version, Hello::decode_body(&body)?))
    }

    fn register(&self, stream: UnixStream, pid: i32, version: u16, hello: Hello) {
        if let Err(e) = stream.set_write_timeout(Some(SEND_TIMEOUT)) {
            tracing::warn!(pid, %e, "setsockopt(SO_SNDTIMEO) on an application connection");
            return;
        }
        let mut registry = self.lock();
        // Reply before the application becomes visible to deliver(), so the
        // registration byte always precedes the first handoff on the wire.
        if let Err(e) = send_all(stream.as_fd(), &[REGISTERED]) {
            tracing::warn!(pid, %e, "replying to an application's hello");
            return;
        }
        registry.next_id += 1;
        let app = Arc::new(App {
            id: registry.next_id,
            pid,
            version,
            stream: Mutex::new(stream),
        });
        for service in &hello.services {
            let apps = registry.by_service.entry(*service).or_default();
            if !apps.iter().any(|a| a.id == app.id) {
                apps.push_back(Arc::clone(&app));
            }
        }
        drop(registry);
        tracing::info!(pid, version, services = ?hello.services, "application registered");
        self.registered.notify_all();
    }

    /// Whether an application is registered for `service` now.
    fn serves(&self, service: SocketAddr) -> bool {
        self.lock()
            .by_service
            .get(&service)
            .is_some_and(|apps| !apps.is_empty())
    }

    /// Delivers `queue`, the checked handoffs of `service`, until it is empty
    /// or no application registers by `deadline`; returns those left, with
    /// the last send failure (`None`: no application was there to try).
    fn deliver_service(
        &self,
        service: SocketAddr,
        mut queue: VecDeque<Handoff>,
        deadline: Instant,
    ) -> Vec<(Handoff, Option<SendError>)> {
        let (mut failure, mut size) = (None, None);
        while !queue.is_empty() {
            let Some((app, apps)) = self.pick(service, deadline) else {
                break;
            };
            let size = *size.get_or_insert_with(|| bundle_size(queue.len(), apps));
            let size = size.min(queue.len());
            let bundle: Vec<Handoff> = queue.drain(..size).collect();
            let ids = (bundle[0].meta.id, bundle[size - 1].meta.id);
            match app.send(&bundle, &self.path) {
                Ok(()) => {
                    tracing::info!(%service, app = app.pid, flows = size, ?ids, "handed off");
                }
                Err(source) => {
                    tracing::warn!(%service, app = app.pid, flows = size, ?ids, %source, "handoff to application failed; dropping it");
                    self.forget(&app);
                    failure = Some(source);
                    bundle.into_iter().rev().for_each(|h| queue.push_front(h));
                }
            }
        }
        let error = |failure: &Option<SendError>| failure.as_ref().map(SendError::copy);
        queue.into_iter().map(|h| (h, error(&failure))).collect()
    }

    /// The next application for `service` (rotating), waiting until
    /// `deadline`, with how many are registered for it.
    fn pick(&self, service: SocketAddr, deadline: Instant) -> Option<(Arc<App>, usize)> {
        let mut registry = self.lock();
        loop {
            if let Some(apps) = registry.by_service.get_mut(&service)
                && let Some(app) = apps.pop_front()
            {
                apps.push_back(Arc::clone(&app));
                return Some((app, apps.len()));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            registry = self
                .registered
                .wait_timeout(registry, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Removes `app` from every service and closes its connection.
    fn forget(&self, app: &App) {
        let mut registry = self.lock();
        registry.by_service.retain(|_, apps| {
            apps.retain(|a| a.id != app.id);
            !apps.is_empty()
        });
        drop(registry);
        let _ = lock(&app.stream).shutdown(std::net::Shutdown::Both);
    }
}

impl App {
    /// Writes `bundle` (at most [`MAX_BUNDLE`] handoffs): one message in
    /// version 2, one per handoff in version 1 (see [`connmirror_handoff::wire`]).
    fn send(&self, bundle: &[Handoff], path: &Path) -> Result<(), SendError> {
        let app = lock(&self.stream);
        if self.version == 1 {
            for handoff in bundle {
                let header = handoff.meta.encode_header();
                send_bundle(app.as_fd(), header, slice::from_ref(handoff), path)?;
            }
            return Ok(());
        }
        let head = encode_bundle_head(bundle.iter().map(|h| &h.meta));
        send_bundle(app.as_fd(), head, bundle, path)
    }
}

/// Sends one message: `head`, then each handoff's c2s and s2c bytes, with
/// their sockets in one `SCM_RIGHTS` control message.
fn send_bundle(
    app: BorrowedFd<'_>,
    head: Vec<u8>,
    bundle: &[Handoff],
    path: &Path,
) -> Result<(), SendError> {
    let bytes = bundle.iter().flat_map(|h| [&h.c2s, &h.s2c]);
    let mut parts: Vec<IoSlice<'_>> = iter::once(&head)
        .chain(bytes.filter(|b| !b.is_empty()))
        .map(|b| IoSlice::new(b))
        .collect();
    let fds: Vec<BorrowedFd<'_>> = bundle.iter().map(|h| h.stream.as_fd()).collect();
    send_message(app, &mut parts, &fds).map_err(|(call, error)| SendError {
        call,
        path: path.to_path_buf(),
        error: stalled(error),
    })
}

impl SendError {
    /// The same error for another flow of the bundle it ended (`io::Error`
    /// is not `Clone`).
    fn copy(&self) -> SendError {
        let Self { call, path, error } = self;
        let error = match error.raw_os_error() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(error.kind(), error.to_string()),
        };
        SendError {
            call,
            path: path.clone(),
            error,
        }
    }
}

/// The size of the bundles that split `total` connections evenly over `apps`
/// applications taking turns: the fewest turns in which no bundle exceeds
/// [`MAX_BUNDLE`], every application getting one bundle per turn (600 over 2:
/// four bundles of 150).
fn bundle_size(total: usize, apps: usize) -> usize {
    let turns = total.div_ceil(MAX_BUNDLE * apps).max(1);
    total.div_ceil(turns * apps).max(1)
}

/// Names the `SO_SNDTIMEO` expiry (`EAGAIN` on a blocking socket, see
/// `socket(7)`) for what it is.
fn stalled(e: io::Error) -> io::Error {
    if e.kind() != io::ErrorKind::WouldBlock {
        return e;
    }
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the application read nothing for {SEND_TIMEOUT:?}"),
    )
}

/// Reads and drops what the peer already sent, so that closing does not reset
/// the connection before the peer has read the refusal: `unix_release_sock`
/// (`net/unix/af_unix.c`) sets `ECONNRESET` on the peer when the closing side's
/// receive queue is not empty, and the peer's read then fails instead of ending.
fn discard_unread(mut stream: &UnixStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    // Bounded: at most a whole hello's worth, then close regardless.
    let mut left = MAX_HELLO as usize + 10;
    while left > 0 {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// `SO_PEERCRED`: the pid and uid of the process that connected.
fn peer_cred(stream: &UnixStream) -> io::Result<(i32, u32)> {
    let cred = nix::sys::socket::getsockopt(stream, sockopt::PeerCredentials)?;
    Ok((cred.pid(), cred.uid()))
}

#[cfg(test)]
mod tests {
    use super::{MAX_BUNDLE, bundle_size};

    #[test]
    fn bundles_split_evenly_in_the_fewest_turns() {
        assert_eq!(MAX_BUNDLE, 253);
        // (connections, applications) → bundle size
        let cases = [
            ((1, 1), 1),
            ((1, 3), 1),
            ((4, 2), 2),
            ((253, 1), 253),
            ((254, 1), 127),
            ((600, 2), 150),
            ((1000, 1), 250),
            ((10_000, 1), 250),
            ((10_000, 3), 239),
        ];
        for ((total, apps), size) in cases {
            assert_eq!(bundle_size(total, apps), size, "{total} over {apps}");
        }
    }
}
