//! The application's end: register with the daemon, receive restored sockets.

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
    FlowMeta, HEADER_PREFIX, HELLO_TIMEOUT, Handoff, Hello, MAX_REPLY, REGISTERED, send_all,
};

/// Descriptors one `recvmsg` makes room for: `SCM_MAX_FD`, the most one
/// message can carry (`include/net/scm.h`). With room for all of them the
/// kernel never truncates the control data (`MSG_CTRUNC`), which would leave
/// the descriptors that did arrive unreachable through nix: every descriptor
/// is seen, and all but the one expected are refused and closed.
const RECV_FDS: usize = 253;

/// A registration with the daemon: where restored connections arrive.
#[derive(Debug)]
pub struct Application {
    path: PathBuf,
    stream: UnixStream,
}

impl Application {
    /// Connects to the daemon's handoff socket at `path` and registers for
    /// `services`; returns once the daemon accepted the registration.
    pub fn connect(path: &Path, services: &[SocketAddr]) -> Result<Application, Error> {
        let mut stream = UnixStream::connect(path).map_err(syscall("connect to", path))?;
        let hello = Hello {
            services: services.to_vec(),
        }
        .encode();
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
        Ok(Application {
            path: path.to_path_buf(),
            stream,
        })
    }

    /// Blocks for the next restored connection; `Ok(None)` when the daemon
    /// closed the socket.
    ///
    /// Everything is checked: a header whose ranges are inconsistent or
    /// disagree with the bytes that follow, no descriptor, a second descriptor,
    /// a descriptor that is not a TCP socket, or a message cut short is an
    /// error, and every descriptor received for that message is closed.
    /// Descriptors arrive close-on-exec.
    ///
    /// Any error leaves the connection to the daemon out of step: drop this
    /// `Application` and connect again.
    // Not an Iterator: every item would be a Result, and a failed one ends the
    // registration, which `Iterator` cannot express.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Handoff>, Error> {
        let mut fds = Vec::new();
        let mut prefix = [0u8; HEADER_PREFIX];
        let got = self.recv_exact(&mut prefix, &mut fds)?;
        if got == 0 && fds.is_empty() {
            return Ok(None);
        }
        self.expect_full("header length", got, prefix.len())?;
        let len = FlowMeta::decode_header_len(prefix).map_err(|e| self.protocol(e.to_string()))?;
        let mut header = vec![0u8; len];
        let got = self.recv_exact(&mut header, &mut fds)?;
        self.expect_full("header", got, header.len())?;
        let meta = FlowMeta::decode_header(&header).map_err(|e| self.protocol(e.to_string()))?;
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

    /// The single descriptor a message must carry, checked to be a TCP socket.
    fn one_tcp_socket(&self, fds: Vec<OwnedFd>, id: u64) -> Result<TcpStream, Error> {
        let count = fds.len();
        let mut fds = fds.into_iter();
        let (Some(fd), None) = (fds.next(), fds.next()) else {
            return Err(self.protocol(format!(
                "flow {id} came with {count} descriptors, expected exactly one"
            )));
        };
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

    fn protocol(&self, reason: String) -> Error {
        Error::Protocol {
            path: self.path.clone(),
            reason,
        }
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
