//! The TCP sockets of this network namespace, as an `inet_diag` dump lists
//! them (sock_diag(7), what `ss` uses), and the descriptors processes hold
//! for them.
//!
//! A planned migration ([`crate::failover::migrate`]) moves connections that an
//! unmodified server on the primary owns. [`take_established`] finds each
//! established connection of a service in the namespace's tables, the
//! process holding its socket through `/proc/PID/fd` (a `socket:[INODE]`
//! link), and duplicates that descriptor with `pidfd_getfd(2)` (Linux 5.6;
//! needs `CAP_SYS_PTRACE` over the process, which root has). The duplicate is
//! the same socket: what the agent does to it (`TCP_REPAIR`, the save, the
//! silent let-go) the server's own descriptor sees.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd as _, OwnedFd};

use crate::sys::{SyscallError, pidfd, sock_diag};

/// One TCP socket of the namespace (see [`sock_diag::TcpSocket`]).
pub use crate::sys::sock_diag::TcpSocket as Entry;
/// The `TCP_*` states a caller compares [`Entry::state`] with.
pub use crate::sys::sock_diag::{CLOSE, ESTABLISHED, LISTEN, TIME_WAIT};

/// Every TCP socket of this network namespace, IPv4 and IPv6, from an
/// `inet_diag` dump ([`sock_diag::tcp_sockets`]). A dump that fails is logged
/// and contributes nothing.
pub fn entries() -> Vec<Entry> {
    sock_diag::tcp_sockets().unwrap_or_else(|err| {
        tracing::warn!(%err, "listing the TCP sockets");
        Vec::new()
    })
}

/// What [`take_established`] found.
#[derive(Debug, Default)]
pub struct Taken {
    /// A duplicate of each established connection's socket.
    pub sockets: Vec<TcpStream>,
    /// One message per established connection that could not be taken.
    pub errors: Vec<String>,
}

/// Duplicates the socket of every established connection whose local end is
/// one of `services`, from whichever process holds it (see the module docs).
pub fn take_established(services: &[SocketAddr]) -> io::Result<Taken> {
    let mut wanted: BTreeMap<u64, Entry> = (sock_diag::tcp_sockets().map_err(io::Error::from)?)
        .into_iter()
        .filter(|e| e.state == ESTABLISHED && services.contains(&e.local) && e.inode != 0)
        .map(|e| (e.inode, e))
        .collect();
    let mut taken = Taken::default();
    let procs = std::fs::read_dir("/proc")
        .map_err(|e| io::Error::new(e.kind(), format!("reading /proc: {e}")))?;
    for pid in procs
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.parse::<i32>().ok())
    {
        if wanted.is_empty() {
            break;
        }
        for (fd, inode) in socket_fds(pid) {
            let Some(entry) = wanted.remove(&inode) else {
                continue;
            };
            match duplicate(pid, fd) {
                Ok(fd) => taken.sockets.push(TcpStream::from(fd)),
                Err(err) => taken.errors.push(format!(
                    "{} ↔ {}: fd {fd} of pid {pid}: {err}",
                    entry.local, entry.remote
                )),
            }
        }
    }
    taken.errors.extend(
        wanted
            .values()
            .map(|e| format!("{} ↔ {}: no process holds its socket", e.local, e.remote)),
    );
    Ok(taken)
}

/// (fd, socket inode) of every socket `pid` holds; nothing if it is gone.
fn socket_fds(pid: i32) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    (dir.flatten())
        .filter_map(|d| {
            let fd = d.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(d.path()).ok()?;
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some((fd, inode.parse().ok()?))
        })
        .collect()
}

/// `pidfd_getfd(pidfd_open(pid), fd)`.
fn duplicate(pid: i32, fd: i32) -> Result<OwnedFd, SyscallError> {
    pidfd::get_fd(pidfd::open(pid)?.as_fd(), fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_held_here_is_taken_and_is_the_same_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let service = listener.local_addr().unwrap();
        let client = TcpStream::connect(service).unwrap();
        let (server, _) = listener.accept().unwrap();

        let taken = take_established(&[service]).unwrap();

        assert_eq!(taken.errors, Vec::<String>::new());
        assert_eq!(taken.sockets.len(), 1);
        let dup = &taken.sockets[0];
        assert_eq!(dup.peer_addr().unwrap(), client.local_addr().unwrap());
        std::io::Write::write_all(&mut &client, b"ping").unwrap();
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut &*dup, &mut got).unwrap();
        assert_eq!(&got, b"ping");
        drop(server);
    }
}
