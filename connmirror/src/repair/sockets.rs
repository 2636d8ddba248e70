//! The TCP sockets of this network namespace, as `/proc/net/tcp` and
//! `/proc/net/tcp6` list them, and the descriptors processes hold for them.
//!
//! A planned migration ([`crate::failover::migrate`]) moves connections that an
//! unmodified server on the primary owns. [`take_established`] finds each
//! established connection of a service in the namespace's tables, the
//! process holding its socket through `/proc/PID/fd` (a `socket:[INODE]`
//! link), and duplicates that descriptor with `pidfd_getfd(2)` (Linux 5.6;
//! needs `CAP_SYS_PTRACE` over the process, which root has). The duplicate is
//! the same socket: what the agent does to it (`TCP_REPAIR`, the dump, the
//! silent let-go) the server's own descriptor sees.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd as _, OwnedFd};

/// One line of `/proc/net/tcp*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The local end.
    pub local: SocketAddr,
    /// The remote end.
    pub remote: SocketAddr,
    /// The `st` column (`TCP_ESTABLISHED` is 1, include/net/tcp_states.h).
    pub state: u8,
    /// The socket's inode (0 for a `TIME-WAIT` entry, which has no socket).
    pub inode: u64,
}

/// `TCP_ESTABLISHED`.
pub const ESTABLISHED: u8 = 1;
/// `TCP_TIME_WAIT`.
pub const TIME_WAIT: u8 = 6;
/// `TCP_CLOSE`.
pub const CLOSE: u8 = 7;

impl Entry {
    /// Whether the socket is neither closed nor in `TIME-WAIT`.
    pub fn is_live(&self) -> bool {
        self.state != TIME_WAIT && self.state != CLOSE
    }
}

/// Every TCP socket of this network namespace, IPv4 and IPv6. A table that
/// cannot be read (no IPv6) contributes nothing.
pub fn entries() -> Vec<Entry> {
    let mut all = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            all.extend(text.lines().skip(1).filter_map(parse_line));
        }
    }
    all
}

/// One `/proc/net/tcp*` line (`tcp4_seq_show()` / `tcp6_seq_show()`).
pub fn parse_line(line: &str) -> Option<Entry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, remote, state, inode) = (
        fields.get(1)?,
        fields.get(2)?,
        fields.get(3)?,
        fields.get(9)?,
    );
    Some(Entry {
        local: parse_addr(local)?,
        remote: parse_addr(remote)?,
        state: u8::from_str_radix(state, 16).ok()?,
        inode: inode.parse().ok()?,
    })
}

/// `ADDR:PORT` as `/proc/net/tcp*` prints it: the address as 32-bit words in
/// hex, each the raw network-order word read as a host integer
/// (`seq_printf("%08X")`), the port in hex.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let hex = addr.get(8 * i..8 * i + 8)?;
        u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
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
    let mut wanted: BTreeMap<u64, Entry> = (entries().into_iter())
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
                    "{} ↔ {}: pidfd_getfd of fd {fd} in pid {pid}: {err}",
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
fn duplicate(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a descriptor we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags, and returns a
    // new descriptor.
    let dup = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        )
    };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_getfd returned a descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let v4 = "   0: 020112C6:1B58 020012C6:9D78 01 00000000:00000000 00:00000000 00000000     0        0 81234 1 0000000000000000 20 4 30 10 -1";
        let closed = "   1: 020112C6:1B58 020012C6:9D79 07 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1";
        let v6 = "   0: 000000FD020000000000000002000000:1B58 000000FD010000000000000002000000:9D78 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 20 4 30 10 -1";

        let v4 = parse_line(v4).unwrap();
        let closed = parse_line(closed).unwrap();
        let v6 = parse_line(v6).unwrap();

        assert_eq!(v4.local, "198.18.1.2:7000".parse().unwrap());
        assert_eq!(v4.remote, "198.18.0.2:40312".parse().unwrap());
        assert_eq!(
            (v4.state, v4.inode, v4.is_live()),
            (ESTABLISHED, 81234, true)
        );
        assert_eq!((closed.state, closed.is_live()), (CLOSE, false));
        assert_eq!(v6.local, "[fd00:0:0:2::2]:7000".parse().unwrap());
        assert_eq!(v6.remote, "[fd00:0:0:1::2]:40312".parse().unwrap());
        assert_eq!(parse_line("  sl  local_address rem_address"), None);
    }

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
