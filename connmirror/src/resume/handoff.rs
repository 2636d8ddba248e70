//! Handing restored connections to a local application (`handoff` mode).
//!
//! On failover the standby rebuilds each protected connection as a kernel TCP
//! socket (`TCP_REPAIR`, see [`crate::repair::restore`]). For a service in `handoff` mode
//! the daemon then passes that socket to an application running on the standby,
//! over a Unix domain socket with an `SCM_RIGHTS` control message (see `unix(7)`,
//! `cmsg(3)`), together with [`FlowMeta`] and the bytes the journal recorded, so
//! the application finds where the connection stood and carries on.
//!
//! Both sides are here: [`HandoffServer`] is the daemon's end, [`Application`]
//! the library an application links. The API is synchronous std I/O: the daemon
//! calls [`HandoffServer::deliver`] from a blocking thread, and an application
//! usually wants a plain blocking [`TcpStream`] per connection.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::path::Path;
//!
//! use connmirror::resume::handoff::{Application, DEFAULT_SOCKET};
//!
//! # fn main() -> Result<(), connmirror::resume::handoff::HandoffError> {
//! let service: SocketAddr = "198.18.0.1:7000".parse().unwrap();
//! let mut app = Application::connect(Path::new(DEFAULT_SOCKET), &[service])?;
//! while let Some(handoff) = app.next()? {
//!     // Client bytes [c2s.start, c2s.end) are in handoff.c2s; the next byte
//!     // read from handoff.stream is client offset c2s.end.
//!     println!("resumed {} at c2s={}", handoff.meta.client, handoff.meta.c2s.end);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What the metadata means
//!
//! Offsets count payload bytes of one direction from 0, the first byte after the
//! SYN (sequence number ISN + 1).
//!
//! - [`FlowMeta::c2s`], client → server: the client bytes this connection has
//!   already consumed. [`Handoff::c2s`] holds stream offsets `[start, end)`; the
//!   first byte read from the restored socket is offset `end`. `acked` is the
//!   highest offset the old primary acknowledged to the client.
//! - [`FlowMeta::s2c`], server → client: the server bytes already sent.
//!   [`Handoff::s2c`] holds offsets `[start, end)`; the client acknowledged up to
//!   `acked`; the socket's send queue already holds `[acked, end)` and delivers
//!   them by itself; the application's next write is offset `end`.
//! - `start` may be above 0 when the service keeps only unacknowledged bytes
//!   (retention `unacked`). Applications that need the history run their service
//!   with retention `full`.
//!
//! # Wire protocol
//!
//! A Unix `SOCK_STREAM` socket, [`DEFAULT_SOCKET`] by default, mode 0600, in a
//! directory created 0700. Integers are big-endian.
//!
//! 1. Application → daemon, the hello: magic `CMHO`, `u16` version (1), `u32`
//!    length, then that many bytes of JSON `{"services": ["198.18.0.1:7000", ...]}`
//!    (at most [`MAX_HELLO`] bytes; unknown fields are refused).
//! 2. Daemon → application: one byte `0` when registered. Otherwise a line of
//!    text saying why (no `0` byte first), and the daemon closes the connection.
//!    The daemon also refuses peers whose `SO_PEERCRED` uid is neither 0 nor its
//!    own effective uid.
//! 3. Daemon → application, for each restored connection: one `sendmsg` of
//!    `[u32 header length][JSON FlowMeta]` carrying the TCP socket in an
//!    `SCM_RIGHTS` control message, then the raw c2s bytes, then the raw s2c bytes
//!    (`end - start` bytes each).
//!
//! Why the receiver finds the descriptor with the 4-byte prefix: Linux attaches
//! passed descriptors to the skb of the write that carried them, and a stream read
//! never runs past such an skb. In `unix_stream_read_generic`
//! (`net/unix/af_unix.c`), once a read consumes bytes of an skb with descriptors it
//! calls `unix_detach_fds` and stops (`if (scm.fp) break;`). The receiver reads
//! each earlier part with exact lengths, so its `recvmsg` of the 4-byte prefix
//! starts at the first byte of that skb and gets the descriptor. It still passes a
//! control buffer to every `recvmsg`, so a descriptor anywhere else is seen (and
//! refused) rather than silently closed by the kernel.
//!
//! The receiver checks everything: a header whose ranges are inconsistent or
//! disagree with the bytes that follow, no descriptor, a second descriptor, a
//! descriptor that is not a TCP socket, or a message cut short is an error, and
//! every descriptor received for that message is closed. Descriptors arrive with
//! `MSG_CMSG_CLOEXEC`.
//!
//! # Minimum kernel version
//! `SCM_RIGHTS` and `SO_PEERCRED` on Unix stream sockets are ancient; `SO_PROTOCOL`
//! (used to check the received descriptor) needs 2.6.32. Developed on 6.18.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, Read};
use std::mem::{self, MaybeUninit};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the daemon listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/connmirror/handoff.sock";
/// The first four bytes of a hello.
pub const MAGIC: [u8; 4] = *b"CMHO";
/// The protocol version this module speaks.
pub const VERSION: u16 = 1;
/// Largest hello JSON body the daemon accepts, in bytes.
pub const MAX_HELLO: u32 = 64 << 10;
/// Largest [`FlowMeta`] header an application accepts, in bytes.
pub const MAX_HEADER: u32 = 64 << 10;

/// How long the daemon waits for a whole hello, and an application for the reply.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one handoff may block on an application that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest refusal line an application reads.
const MAX_REPLY: u64 = 4096;
/// The reply byte that means "registered".
const REGISTERED: u8 = 0;
/// Descriptors one `recvmsg` makes room for: one more than a message may carry,
/// so that an extra one is reported rather than truncated away.
const RECV_FDS: usize = 4;

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
    /// Number of recorded bytes, `end - start`, once [`Recorded::check`] passed.
    fn len(self) -> u64 {
        self.end - self.start
    }

    /// Checks that the range is well formed; `dir` names it in the reason.
    fn check(self, dir: &str) -> Result<(), String> {
        let Self { start, end, acked } = self;
        if start > end {
            return Err(format!(
                "{dir} range [{start}, {end}) ends before it starts"
            ));
        }
        if acked > end {
            return Err(format!(
                "{dir} acknowledged offset {acked} is past its end {end}"
            ));
        }
        Ok(())
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
    fn check(&self) -> Result<(), String> {
        self.c2s.check("c2s")?;
        self.s2c.check("s2c")
    }
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
    fn check(&self) -> Result<(), String> {
        let Self { meta, c2s, s2c, .. } = self;
        meta.check()?;
        check_len("c2s", meta.c2s, c2s.len())?;
        check_len("s2c", meta.s2c, s2c.len())
    }
}

fn check_len(dir: &str, range: Recorded, len: usize) -> Result<(), String> {
    if range.len() == len as u64 {
        return Ok(());
    }
    let Recorded { start, end, .. } = range;
    Err(format!(
        "{dir} holds {len} bytes but its range [{start}, {end}) spans {}",
        end - start
    ))
}

/// Errors of both ends of the handoff socket.
#[derive(Debug, Error)]
pub enum HandoffError {
    /// A system call on the handoff socket (or its directory) failed.
    #[error("{call} {}: {error}", .path.display())]
    Syscall {
        call: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// Something other than a socket is in the way of the handoff socket.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// The path does not fit `sockaddr_un.sun_path`.
    #[error("socket path {} is longer than the {max} bytes sun_path holds", .path.display())]
    PathTooLong { path: PathBuf, max: usize },
    /// The daemon refused the application's hello.
    #[error("the daemon at {} refused registration: {reason}", .path.display())]
    Refused { path: PathBuf, reason: String },
    /// The daemon sent something this side cannot accept.
    #[error("malformed handoff message from the daemon at {}: {reason}", .path.display())]
    Protocol { path: PathBuf, reason: String },
    /// [`HandoffServer::deliver`] was given metadata that disagrees with itself.
    #[error("handoff of flow {id} is inconsistent: {reason}")]
    Inconsistent { id: u64, reason: String },
    /// No application registered for the service in time.
    #[error("no application registered for service {service} within {waited:?}")]
    NoApplication {
        service: SocketAddr,
        waited: Duration,
    },
    /// Sending to the last application registered for the service failed, and no
    /// other registered in time.
    #[error("handing flow {id} to the application registered for {service} on {}: {error}", .path.display())]
    Send {
        id: u64,
        service: SocketAddr,
        path: PathBuf,
        error: io::Error,
    },
}

/// `map_err` helper: a failed `call` on `path`.
fn syscall(call: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HandoffError {
    let path = path.to_path_buf();
    move |error| HandoffError::Syscall { call, path, error }
}

/// The body of a hello.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    services: Vec<SocketAddr>,
}

/// Why the daemon refused a hello; the text is the refusal line.
#[derive(Debug, Error)]
enum Rejection {
    #[error("peer uid {uid} is neither root nor the daemon's uid {euid}")]
    Uid { uid: u32, euid: u32 },
    #[error("wrong magic \"{}\", expected \"CMHO\"", .0.escape_ascii())]
    Magic([u8; 4]),
    #[error("unsupported protocol version {0}, this daemon speaks version {VERSION}")]
    Version(u16),
    #[error("hello of {0} bytes exceeds the maximum of {MAX_HELLO} bytes")]
    Oversize(u32),
    #[error("malformed hello JSON: {0}")]
    Json(serde_json::Error),
    #[error("hello registers no service")]
    NoService,
    #[error("reading the hello: {0}")]
    Read(io::Error),
}

/// The daemon's end: a listening Unix socket that applications register with.
///
/// Dropping it stops accepting, closes every application's connection (their
/// [`Application::next`] returns `Ok(None)`) and removes the socket file.
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
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
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
    /// `handoff.meta.service`, waiting up to `wait` for one to register.
    ///
    /// Applications registered for the same service take turns. One that fails
    /// (it exited, or did not read for 10 s) is dropped and the next one tried
    /// until `wait` is over. On failure the handoff comes back so the caller can
    /// reset the connection.
    pub fn deliver(
        &self,
        handoff: Handoff,
        wait: Duration,
    ) -> Result<(), (Box<Handoff>, HandoffError)> {
        let Self { shared, .. } = self;
        let FlowMeta { id, service, .. } = handoff.meta;
        if let Err(reason) = handoff.check() {
            return Err((Box::new(handoff), HandoffError::Inconsistent { id, reason }));
        }
        let deadline = Instant::now() + wait;
        let mut failure = None;
        while let Some(app) = shared.pick(service, deadline) {
            match app.send(&handoff) {
                Ok(()) => {
                    tracing::info!(id, %service, app = app.pid, "handed off");
                    return Ok(());
                }
                Err(source) => {
                    tracing::warn!(id, %service, app = app.pid, %source, "handoff to application failed; dropping it");
                    shared.forget(&app);
                    failure = Some(source);
                }
            }
        }
        let err = match failure {
            Some(source) => HandoffError::Send {
                id,
                service,
                path: shared.path.clone(),
                error: source,
            },
            None => HandoffError::NoApplication {
                service,
                waited: wait,
            },
        };
        Err((Box::new(handoff), err))
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
        // SAFETY: shutdown on a descriptor we own; no memory is passed.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
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
    let (addr, len) = sockaddr_un(path)?;
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(syscall("socket(AF_UNIX) for", path)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: socket(2) just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc < 0 {
        return Err(syscall("bind", path)(io::Error::last_os_error()));
    }
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(syscall("chmod", path))?;
    // SAFETY: listen(2) takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) } < 0 {
        return Err(syscall("listen", path)(io::Error::last_os_error()));
    }
    Ok(UnixListener::from(fd))
}

fn sockaddr_un(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), HandoffError> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    // One byte stays zero: the terminating NUL.
    let max = addr.sun_path.len() - 1;
    if bytes.len() > max {
        return Err(HandoffError::PathTooLong {
            path: path.to_path_buf(),
            max,
        });
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
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
            Ok(hello) => self.register(stream, pid, hello),
            Err(rejection) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pid, uid, %rejection, "handoff hello rejected");
                let line = format!("{rejection}\n");
                let _ = send_all(stream.as_fd(), line.as_bytes());
                discard_unread(&stream);
            }
        }
    }

    fn read_hello(&self, mut stream: &UnixStream, uid: u32) -> Result<Hello, Rejection> {
        if uid != 0 && uid != self.euid {
            return Err(Rejection::Uid {
                uid,
                euid: self.euid,
            });
        }
        stream
            .set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(Rejection::Read)?;
        let mut head = [0u8; 10];
        stream.read_exact(&mut head).map_err(Rejection::Read)?;
        let (magic, rest) = head.split_at(4);
        let (version, len) = rest.split_at(2);
        let magic: [u8; 4] = magic.try_into().expect("split at 4");
        if magic != MAGIC {
            return Err(Rejection::Magic(magic));
        }
        let version = u16::from_be_bytes(version.try_into().expect("2 bytes"));
        if version != VERSION {
            return Err(Rejection::Version(version));
        }
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes"));
        if len > MAX_HELLO {
            return Err(Rejection::Oversize(len));
        }
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body).map_err(Rejection::Read)?;
        let hello: Hello = serde_json::from_slice(&body).map_err(Rejection::Json)?;
        if hello.services.is_empty() {
            return Err(Rejection::NoService);
        }
        Ok(hello)
    }

    fn register(&self, stream: UnixStream, pid: i32, hello: Hello) {
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
            stream: Mutex::new(stream),
        });
        for service in &hello.services {
            let apps = registry.by_service.entry(*service).or_default();
            if !apps.iter().any(|a| a.id == app.id) {
                apps.push_back(Arc::clone(&app));
            }
        }
        drop(registry);
        tracing::info!(pid, services = ?hello.services, "application registered");
        self.registered.notify_all();
    }

    /// Whether an application is registered for `service` now.
    fn serves(&self, service: SocketAddr) -> bool {
        self.lock()
            .by_service
            .get(&service)
            .is_some_and(|apps| !apps.is_empty())
    }

    /// The next application for `service` (rotating), waiting until `deadline`.
    fn pick(&self, service: SocketAddr, deadline: Instant) -> Option<Arc<App>> {
        let mut registry = self.lock();
        loop {
            if let Some(apps) = registry.by_service.get_mut(&service)
                && let Some(app) = apps.pop_front()
            {
                apps.push_back(Arc::clone(&app));
                return Some(app);
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
    /// Writes one handoff message (see the module docs).
    fn send(&self, handoff: &Handoff) -> io::Result<()> {
        let Handoff {
            stream,
            meta,
            c2s,
            s2c,
        } = handoff;
        let header = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let mut first = Vec::with_capacity(4 + header.len());
        first.extend_from_slice(&(header.len() as u32).to_be_bytes());
        first.extend_from_slice(&header);
        let app = lock(&self.stream);
        let sent = send_with_fd(app.as_fd(), &first, stream.as_fd()).map_err(stalled)?;
        send_all(app.as_fd(), &first[sent..]).map_err(stalled)?;
        send_all(app.as_fd(), c2s).map_err(stalled)?;
        send_all(app.as_fd(), s2c).map_err(stalled)
    }
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
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred and `len` its size, as SO_PEERCRED expects.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}

/// `send(2)` all of `bytes`, without SIGPIPE when the peer is gone.
fn send_all(sock: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match n {
            n if n > 0 => bytes = &bytes[n as usize..],
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => retry_on_eintr(io::Error::last_os_error())?,
        }
    }
    Ok(())
}

/// Passes an `EINTR` (retry), returns every other error.
fn retry_on_eintr(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(())
    } else {
        Err(e)
    }
}

/// Space for a control message carrying `n` descriptors.
const fn fd_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE only does arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((n * mem::size_of::<RawFd>()) as u32) as usize }
}

/// A control buffer aligned for `cmsghdr`, large enough for [`RECV_FDS`].
#[repr(C, align(8))]
struct CmsgBuf([MaybeUninit<u8>; fd_space(RECV_FDS)]);

impl CmsgBuf {
    fn new() -> CmsgBuf {
        CmsgBuf([MaybeUninit::zeroed(); fd_space(RECV_FDS)])
    }
}

/// One `sendmsg(2)` of (a prefix of) `bytes` with `fd` attached; returns how many
/// bytes went.
fn send_with_fd(sock: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut control = CmsgBuf::new();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is an empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = fd_space(1) as _;
    // SAFETY: msg_control points to fd_space(1) bytes aligned for cmsghdr, so
    // CMSG_FIRSTHDR returns a header inside it with room for one descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(cmsg)
            .cast::<RawFd>()
            .write_unaligned(fd.as_raw_fd());
    }
    loop {
        // SAFETY: `msg` points to `iov` (valid for `bytes`) and to `control`,
        // both alive for the call; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        retry_on_eintr(io::Error::last_os_error())?;
    }
}

/// One `recvmsg(2)` into `buf`; descriptors that came with it are appended to
/// `fds` (close-on-exec). Returns the byte count, 0 at end of stream.
fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut control = CmsgBuf::new();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is an empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of::<CmsgBuf>() as _;
    let n = loop {
        // SAFETY: `msg` points to `iov` (valid for writes of `buf.len()` bytes)
        // and to `control`, both alive for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        retry_on_eintr(io::Error::last_os_error())?;
    };
    take_fds(&msg, fds);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(format!(
            "control message truncated (more than {RECV_FDS} descriptors, or other ancillary data)"
        )));
    }
    Ok(n)
}

/// Moves every `SCM_RIGHTS` descriptor of a received message into `fds`.
fn take_fds(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by recvmsg: msg_controllen covers only complete
    // control messages inside msg_control, which CMSG_FIRSTHDR/CMSG_NXTHDR walk.
    // Each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors that
    // the kernel installed in this process and that nothing else owns yet.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// The application's end: a registration with the daemon.
#[derive(Debug)]
pub struct Application {
    path: PathBuf,
    stream: UnixStream,
}

impl Application {
    /// Connects to the daemon's handoff socket and registers for `services`.
    pub fn connect(path: &Path, services: &[SocketAddr]) -> Result<Application, HandoffError> {
        let mut stream = UnixStream::connect(path).map_err(syscall("connect", path))?;
        let body = serde_json::to_vec(&Hello {
            services: services.to_vec(),
        })
        .expect("a list of socket addresses serializes");
        let mut hello = Vec::with_capacity(10 + body.len());
        hello.extend_from_slice(&MAGIC);
        hello.extend_from_slice(&VERSION.to_be_bytes());
        hello.extend_from_slice(&(body.len() as u32).to_be_bytes());
        hello.extend_from_slice(&body);
        // A daemon that refuses this user answers before reading the hello and
        // closes, so the hello's send may fail (EPIPE) while the refusal already
        // waits in our receive queue: read it either way, and report it first.
        let sent = send_all(stream.as_fd(), &hello);
        stream
            .set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(syscall("setsockopt(SO_RCVTIMEO) on", path))?;
        let mut first = [0u8; 1];
        match (stream.read_exact(&mut first), sent) {
            (Ok(()), _) if first[0] != REGISTERED => {
                return Err(refusal(path, first[0], &mut stream));
            }
            (_, Err(e)) => return Err(syscall("send hello to", path)(e)),
            (Err(e), Ok(())) => return Err(syscall("read hello reply from", path)(e)),
            (Ok(()), Ok(())) => {}
        }
        stream
            .set_read_timeout(None)
            .map_err(syscall("setsockopt(SO_RCVTIMEO) on", path))?;
        Ok(Application {
            path: path.to_path_buf(),
            stream,
        })
    }

    /// Blocks for the next restored connection; `Ok(None)` when the daemon closed
    /// the socket.
    ///
    /// Any error leaves the connection to the daemon out of step: drop this
    /// `Application` and connect again.
    // Not an Iterator: every item would be a Result, and a failed one ends the
    // registration, which `Iterator` cannot express.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Handoff>, HandoffError> {
        let mut fds = Vec::new();
        let mut prefix = [0u8; 4];
        let got = self.recv_exact(&mut prefix, &mut fds)?;
        if got == 0 && fds.is_empty() {
            return Ok(None);
        }
        self.expect_full("header length", got, prefix.len())?;
        let len = u32::from_be_bytes(prefix);
        if len > MAX_HEADER {
            return Err(self.protocol(format!(
                "header of {len} bytes exceeds the maximum of {MAX_HEADER} bytes"
            )));
        }
        let mut header = vec![0u8; len as usize];
        let got = self.recv_exact(&mut header, &mut fds)?;
        self.expect_full("header", got, header.len())?;
        let meta: FlowMeta = serde_json::from_slice(&header)
            .map_err(|e| self.protocol(format!("header is not a FlowMeta: {e}")))?;
        meta.check().map_err(|reason| self.protocol(reason))?;
        let c2s = self.recv_bytes("c2s", meta.c2s.len(), &mut fds)?;
        let s2c = self.recv_bytes("s2c", meta.s2c.len(), &mut fds)?;
        let stream = self.one_tcp_socket(fds, meta.id)?;
        Ok(Some(Handoff {
            stream,
            meta,
            c2s,
            s2c,
        }))
    }

    /// Receives until `buf` is full or the daemon closed; returns the count.
    fn recv_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, HandoffError> {
        let mut got = 0;
        while got < buf.len() {
            let n = recv_with_fds(self.stream.as_fd(), &mut buf[got..], fds)
                .map_err(syscall("recvmsg from", &self.path))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    /// Receives exactly `len` bytes of one direction's recording.
    fn recv_bytes(
        &self,
        what: &str,
        len: u64,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Vec<u8>, HandoffError> {
        let len = usize::try_from(len)
            .map_err(|_| self.protocol(format!("{what} of {len} bytes does not fit in memory")))?;
        // Grow as bytes arrive rather than trusting the header with one
        // allocation: a cut-short message then costs only what it carried.
        let mut bytes = Vec::with_capacity(len.min(1 << 20));
        let mut chunk = vec![0u8; len.min(1 << 16)];
        while bytes.len() < len {
            let want = (len - bytes.len()).min(chunk.len());
            let got = self.recv_exact(&mut chunk[..want], fds)?;
            bytes.extend_from_slice(&chunk[..got]);
            if got < want {
                self.expect_full(what, bytes.len(), len)?;
            }
        }
        Ok(bytes)
    }

    /// A truncation error unless `got == want`.
    fn expect_full(&self, what: &str, got: usize, want: usize) -> Result<(), HandoffError> {
        if got == want {
            return Ok(());
        }
        Err(self.protocol(format!(
            "the daemon closed the connection after {got} of {want} bytes of the {what}"
        )))
    }

    /// The single descriptor a message must carry, checked to be a TCP socket.
    fn one_tcp_socket(&self, fds: Vec<OwnedFd>, id: u64) -> Result<TcpStream, HandoffError> {
        let count = fds.len();
        let mut fds = fds.into_iter();
        let (Some(fd), None) = (fds.next(), fds.next()) else {
            return Err(self.protocol(format!(
                "flow {id} came with {count} descriptors, expected exactly one"
            )));
        };
        let ty = sockopt_int(fd.as_fd(), libc::SO_TYPE);
        let protocol = sockopt_int(fd.as_fd(), libc::SO_PROTOCOL);
        match (ty, protocol) {
            (Ok(libc::SOCK_STREAM), Ok(libc::IPPROTO_TCP)) => Ok(TcpStream::from(fd)),
            (Err(e), _) | (_, Err(e)) => Err(self.protocol(format!(
                "getsockopt(SO_TYPE/SO_PROTOCOL) on the descriptor of flow {id}: {e}"
            ))),
            (Ok(ty), Ok(protocol)) => Err(self.protocol(format!(
                "the descriptor of flow {id} is not a TCP socket (SO_TYPE {ty}, SO_PROTOCOL {protocol})"
            ))),
        }
    }

    fn protocol(&self, reason: String) -> HandoffError {
        HandoffError::Protocol {
            path: self.path.clone(),
            reason,
        }
    }
}

/// The daemon's refusal line, whose first byte `first` was already read.
fn refusal(path: &Path, first: u8, stream: &mut UnixStream) -> HandoffError {
    let mut line = vec![first];
    // The daemon closes after the line, so this ends at EOF (or times out).
    let _ = stream.take(MAX_REPLY).read_to_end(&mut line);
    let text = String::from_utf8_lossy(&line);
    HandoffError::Refused {
        path: path.to_path_buf(),
        reason: text.trim_end().to_owned(),
    }
}

/// An `int` socket option at `SOL_SOCKET`.
fn sockopt_int(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is an int and `len` its size, as these options expect.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}
