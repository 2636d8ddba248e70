//! The syscall layer: every raw `libc` call the daemon makes, behind safe
//! functions whose errors name the call (as aya's `sys/` does).
//!
//! Each file is one family of calls: [`sockopt`] (`setsockopt(2)` /
//! `getsockopt(2)` with typed options), [`socket`] (socket, bind, connect,
//! send, peek and queue-length ioctls of one socket), [`pidfd`]
//! (`pidfd_open(2)`, `pidfd_getfd(2)`), [`sock_diag`] (the namespace's TCP
//! sockets over `NETLINK_SOCK_DIAG`, sock_diag(7)), [`nfqueue`] (the
//! netfilter queue over `NETLINK_NETFILTER`, nfnetlink_queue), [`interface`]
//! (`if_nametoindex(3)`, `SIOCGIFHWADDR`), [`packet`] (`AF_PACKET` sockets,
//! packet(7)), [`pipe`] (`pipe2(2)`, `splice(2)`), [`mmap`] (shared
//! read-only mappings), [`fs`] (`flock(2)`,
//! `mount(2)`, `statfs(2)`) and [`process`] (`setns(2)`, `setrlimit(2)`,
//! `geteuid(2)`, `clock_gettime(2)`).
//!
//! The contract: nothing above this module calls `libc` (constants callers
//! need, like errno values, are re-exported from [`errno`]); every function
//! here returns [`SyscallError`] naming the failed call, and callers add what
//! they know (the connection, the interface) around it. Nothing here knows a
//! connmirror concept. The kernel documents these calls in the man pages named
//! on each function, and the TCP repair options in include/uapi/linux/tcp.h
//! and net/ipv4/tcp.c (`do_tcp_setsockopt()`).
//!
//! Uses: `libc`, `netlink-sys` and `netlink-packet-sock-diag` only.

use std::io;

use thiserror::Error;

pub mod fs;
pub mod interface;
pub mod mmap;
pub mod nfqueue;
pub mod packet;
pub mod pidfd;
pub mod pipe;
pub mod process;
pub mod sock_diag;
pub mod socket;
pub mod sockopt;

/// A failed system call: which one, and what the kernel said.
///
/// Reads like `setsockopt(TCP_REPAIR_WINDOW): Invalid argument (os error 22)`.
#[derive(Debug, Error)]
#[error("{call}: {io_error}")]
pub struct SyscallError {
    /// The call, with the option or request it was made for, e.g.
    /// `setsockopt(TCP_REPAIR)` or `ioctl(SIOCOUTQ)`.
    pub call: &'static str,
    /// What it returned.
    #[source]
    pub io_error: io::Error,
}

impl SyscallError {
    /// `call` failed with `errno`.
    pub fn last_os_error(call: &'static str) -> SyscallError {
        SyscallError {
            call,
            io_error: io::Error::last_os_error(),
        }
    }

    /// The raw errno, if the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error.raw_os_error()
    }
}

impl From<SyscallError> for io::Error {
    /// Keeps the call's name in the message and the error's kind.
    fn from(err: SyscallError) -> io::Error {
        io::Error::new(err.io_error.kind(), err)
    }
}

/// `Ok(rc)` if `rc` is not negative, else the call's [`SyscallError`].
fn check<T: Default + PartialOrd>(rc: T, call: &'static str) -> Result<T, SyscallError> {
    match rc < T::default() {
        true => Err(SyscallError::last_os_error(call)),
        false => Ok(rc),
    }
}

/// errno values callers compare [`SyscallError::raw_os_error`] against
/// (include/uapi/asm-generic/errno*.h).
pub mod errno {
    pub use libc::{EEXIST, EINVAL, ENODEV, ENOLINK, EPERM, EWOULDBLOCK};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_names_the_call() {
        let err = SyscallError {
            call: "setsockopt(TCP_REPAIR_WINDOW)",
            io_error: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(
            err.to_string(),
            "setsockopt(TCP_REPAIR_WINDOW): Invalid argument (os error 22)"
        );
        let io = io::Error::from(err);
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            io.to_string(),
            "setsockopt(TCP_REPAIR_WINDOW): Invalid argument (os error 22)"
        );
    }
}
