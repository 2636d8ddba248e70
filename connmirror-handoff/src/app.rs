//! The application's end: register with the daemon, receive restored sockets
//! (one message per connection in version 1, bundles in version 2).

use std::collections::VecDeque;
use std::io::{self, IoSliceMut, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::cmsg_space;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockType, getsockopt, recvmsg, sockopt};

use crate::Error;
use crate::wire::{
    FlowMeta, HEADER_PREFIX, HELLO_TIMEOUT, Handoff, Hello, MAX_REPLY, REGISTERED, VERSION,
    decode_bundle_count, send_all,
};

/// Descriptors one `recvmsg` makes room for: `SCM_MAX_FD`, the most one
/// message can carry (`include/net/scm.h`). With room for all of them the
/// kernel never truncates the control data (`MSG_CTRUNC`), which would leave
/// the descriptors that did arrive unreachable through nix: every descriptor
/// is seen, and a message with more than its headers call for is refused,
/// all of them closed.
const RECV_FDS: usize = crate::wire::MAX_BUNDLE;

/// A registration with the daemon: where restored connections arrive.
#[derive(Debug)]
pub struct Application {
    path: PathBuf,
    stream: UnixStream,
    version: u16,
    /// Connections of the last bundle not yet returned by [`Application::next`].
    queue: VecDeque<Handoff>,
}

impl Application {
    /// Connects to the daemon's handoff socket at `path` and registers for
    /// `services`, speaking protocol [`VERSION`]; returns once the daemon
    /// accepted the registration.
    pub fn connect(path: &Path, services: &[SocketAddr]) -> Result<Application, Error> {
        Self::connect_with_version(path, services, VERSION)
    }

    /// [`Application::connect`] speaking protocol `version`: 1 receives one
    /// message per connection, as a daemon that predates version 2 sends
    /// them. The calls that receive work the same with either version.
    pub fn connect_with_version(
        path: &Path,
        services: &[SocketAddr],
        version: u16,
    ) -> Result<Application, Error> {
        let mut stream = UnixStream::connect(path).map_err(syscall("connect to", path))?;
        let hello = Hello {
            services: services.to_vec(),
        }
        .encode(version);
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
            (_, Err(e)) => return Err(syscall("send(hello) to", path)(e)),
            (Err(e), Ok(())) => return Err(syscall("recv(hello reply) from", path)(e)),
            (Ok(()), Ok(())) => {}
        }
        stream
            .set_read_timeout(None)
            .map_err(syscall("setsockopt(SO_RCVTIMEO) on", path))?;
        Ok(Self::registered(path, stream, version))
    }

    /// An application registered over `stream`, which speaks `version`.
    fn registered(path: &Path, stream: UnixStream, version: u16) -> Application {
        Application {
            path: path.to_path_buf(),
            stream,
            version,
            queue: VecDeque::new(),
        }
    }

    /// Blocks for the next restored connection; `Ok(None)` when the daemon
    /// closed the socket.
    ///
    /// The daemon sends connections in bundles of up to 253 (see
    /// [`crate::wire`]); this returns them one at a time, receiving the next
    /// bundle when the last one is used up. Every message is checked: a
    /// header whose ranges are inconsistent or disagree with the bytes that
    /// follow, a count of descriptors other than the count of headers, a
    /// descriptor that is not a TCP socket, or a message cut short is an
    /// error, and every descriptor received with that message is closed.
    /// Descriptors arrive close-on-exec.
    ///
    /// Any error leaves the connection to the daemon out of step: drop this
    /// `Application` and connect again.
    // Not an Iterator: every item would be a Result, and a failed one ends the
    // registration, which `Iterator` cannot express.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Handoff>, Error> {
        if self.queue.is_empty() {
            let Some(bundle) = self.receive()? else {
                return Ok(None);
            };
            self.queue = bundle.into();
        }
        Ok(self.queue.pop_front())
    }

    /// Blocks for the next restored connections, as many as arrived together
    /// (at least one, at most 253); `Ok(None)` when the daemon closed the
    /// socket. Returns first whatever [`Application::next`] left of the last
    /// bundle. Checked as [`Application::next`] checks.
    pub fn next_bundle(&mut self) -> Result<Option<Vec<Handoff>>, Error> {
        if !self.queue.is_empty() {
            return Ok(Some(self.queue.drain(..).collect()));
        }
        self.receive()
    }

    /// Receives and checks one message: a bundle (version 2) or a single
    /// connection (version 1). `Ok(None)` at end of stream.
    fn receive(&self) -> Result<Option<Vec<Handoff>>, Error> {
        let mut fds = Vec::new();
        let mut opening = [0u8; HEADER_PREFIX];
        let got = self.recv_exact(&mut opening, &mut fds)?;
        if got == 0 && fds.is_empty() {
            return Ok(None);
        }
        // Version 1 opens with the header's length, version 2 with the count.
        let (count, mut first_prefix) = if self.version == 1 {
            self.expect_full("header length", got, opening.len())?;
            (1, Some(opening))
        } else {
            self.expect_full("bundle count", got, opening.len())?;
            let count = decode_bundle_count(opening).map_err(|e| self.protocol(e))?;
            (count, None)
        };
        let mut metas = Vec::with_capacity(count);
        for _ in 0..count {
            let prefix = match first_prefix.take() {
                Some(prefix) => prefix,
                None => self.recv_prefix(&mut fds)?,
            };
            metas.push(self.recv_header(prefix, &mut fds)?);
        }
        let mut bytes = Vec::with_capacity(count);
        for meta in &metas {
            let c2s = self.recv_bytes("c2s", meta.c2s.len(), &mut fds)?;
            let s2c = self.recv_bytes("s2c", meta.s2c.len(), &mut fds)?;
            bytes.push((c2s, s2c));
        }
        let streams = self.tcp_sockets(fds, &metas)?;
        let handoffs =
            (streams.into_iter().zip(metas).zip(bytes)).map(|((stream, meta), (c2s, s2c))| {
                Handoff {
                    stream,
                    meta,
                    c2s,
                    s2c,
                }
            });
        Ok(Some(handoffs.collect()))
    }

    /// Receives a header's 4-byte length prefix.
    fn recv_prefix(&self, fds: &mut Vec<OwnedFd>) -> Result<[u8; HEADER_PREFIX], Error> {
        let mut prefix = [0u8; HEADER_PREFIX];
        let got = self.recv_exact(&mut prefix, fds)?;
        self.expect_full("header length", got, prefix.len())?;
        Ok(prefix)
    }

    /// Receives and checks the header whose length `prefix` gives.
    fn recv_header(
        &self,
        prefix: [u8; HEADER_PREFIX],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<FlowMeta, Error> {
        let len = FlowMeta::decode_header_len(prefix).map_err(|e| self.protocol(e))?;
        let mut header = vec![0u8; len];
        let got = self.recv_exact(&mut header, fds)?;
        self.expect_full("header", got, header.len())?;
        FlowMeta::decode_header(&header).map_err(|e| self.protocol(e))
    }

    /// Receives until `buf` is full or the daemon closed; returns the count.
    fn recv_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, Error> {
        let mut got = 0;
        while got < buf.len() {
            let n = recv_with_fds(self.stream.as_fd(), &mut buf[got..], fds)
                .map_err(syscall("recvmsg(SCM_RIGHTS) from", &self.path))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    /// Receives exactly `len` bytes of one direction's recording.
    fn recv_bytes(&self, what: &str, len: u64, fds: &mut Vec<OwnedFd>) -> Result<Vec<u8>, Error> {
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
    fn expect_full(&self, what: &str, got: usize, want: usize) -> Result<(), Error> {
        if got == want {
            return Ok(());
        }
        Err(self.protocol(format!(
            "the daemon closed the connection after {got} of {want} bytes of the {what}"
        )))
    }

    /// The descriptors a message carried, one per header in `metas` and each
    /// checked to be a TCP socket.
    fn tcp_sockets(&self, fds: Vec<OwnedFd>, metas: &[FlowMeta]) -> Result<Vec<TcpStream>, Error> {
        if fds.len() != metas.len() {
            let (count, id) = (fds.len(), metas[0].id);
            return Err(self.protocol(match metas.len() {
                1 => format!("flow {id} came with {count} descriptors, expected exactly one"),
                n => format!(
                    "a bundle of {n} flows (the first {id}) came with {count} descriptors, expected {n}"
                ),
            }));
        }
        (fds.into_iter().zip(metas))
            .map(|(fd, meta)| self.tcp_socket(fd, meta.id))
            .collect()
    }

    /// `fd`, the descriptor of flow `id`, checked to be a TCP socket.
    fn tcp_socket(&self, fd: OwnedFd, id: u64) -> Result<TcpStream, Error> {
        let ty = getsockopt(&fd, sockopt::SockType).map_err(io::Error::from);
        let protocol = so_protocol(fd.as_fd());
        match (ty, protocol) {
            (Ok(SockType::Stream), Ok(nix::libc::IPPROTO_TCP)) => Ok(TcpStream::from(fd)),
            (Err(e), _) | (_, Err(e)) => Err(self.protocol(format!(
                "getsockopt(SO_TYPE/SO_PROTOCOL) on the descriptor of flow {id}: {e}"
            ))),
            (Ok(ty), Ok(protocol)) => Err(self.protocol(format!(
                "the descriptor of flow {id} is not a TCP socket (SO_TYPE {ty:?}, SO_PROTOCOL {protocol})"
            ))),
        }
    }

    fn protocol(&self, reason: impl ToString) -> Error {
        Error::Protocol {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The handoff socket, for an event loop to wait on (`poll(2)`, `epoll(7)`).
/// Once it is readable, [`Application::next_bundle`] returns a message (it may
/// still block while the rest of that message arrives). An event loop uses
/// `next_bundle`, not [`Application::next`], which can leave connections
/// queued with nothing left to read on the socket.
impl AsFd for Application {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// `map_err` helper: a failed `call` on `path`.
fn syscall(call: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |error| Error::Syscall { call, path, error }
}

/// The daemon's refusal line, whose first byte `first` was already read.
fn refusal(path: &Path, first: u8, stream: &mut UnixStream) -> Error {
    let mut line = vec![first];
    // The daemon closes after the line, so this ends at EOF (or times out).
    let _ = stream.take(MAX_REPLY).read_to_end(&mut line);
    let text = String::from_utf8_lossy(&line);
    Error::Refused {
        path: path.to_path_buf(),
        reason: text.trim_end().to_owned(),
    }
}

/// One `recvmsg(2)` into `buf`; descriptors that came with it are appended to
/// `fds` (close-on-exec). Returns the byte count, 0 at end of stream.
fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut control = cmsg_space!([RawFd; RECV_FDS]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC;
    let (bytes, received) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut control), flags) {
            Ok(msg) => {
                let received: Option<Vec<RawFd>> = msg.cmsgs().ok().map(|cmsgs| {
                    cmsgs
                        .filter_map(|cmsg| match cmsg {
                            ControlMessageOwned::ScmRights(fds) => Some(fds),
                            _ => None,
                        })
                        .flatten()
                        .collect()
                });
                break (msg.bytes, received);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let Some(received) = received else {
        return Err(io::Error::other(
            "control message truncated (ancillary data other than descriptors)",
        ));
    };
    // SAFETY: the kernel installed each SCM_RIGHTS descriptor in this process
    // for this message, and nothing else owns it yet.
    fds.extend((received.into_iter()).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
    Ok(bytes)
}

/// `getsockopt(SO_PROTOCOL)`, which nix does not wrap.
fn so_protocol(fd: BorrowedFd<'_>) -> io::Result<nix::libc::c_int> {
    use nix::libc;
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is an int and `len` its size, as SO_PROTOCOL expects.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
