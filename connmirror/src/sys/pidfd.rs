//! `pidfd_open(2)` and `pidfd_getfd(2)` (Linux 5.6): a duplicate of another
//! process's descriptor. `pidfd_getfd` needs `PTRACE_MODE_ATTACH_REALCREDS`
//! over the target (`CAP_SYS_PTRACE`, which root has). libc has no wrappers,
//! so both go through `syscall(2)`.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

use super::{SyscallError, check};

/// `pidfd_open(pid, 0)`: a descriptor referring to process `pid`.
pub fn open(pid: i32) -> Result<OwnedFd, SyscallError> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor.
    let raw = check(
        unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) },
        "pidfd_open",
    )?;
    // SAFETY: pidfd_open returned a descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// `pidfd_getfd(pidfd, fd, 0)`: a close-on-exec duplicate of descriptor `fd`
/// of the process `pidfd` refers to (the same open file, as `dup(2)` gives).
pub fn get_fd(pidfd: BorrowedFd<'_>, fd: i32) -> Result<OwnedFd, SyscallError> {
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags, and returns a
    // new descriptor.
    let raw = check(
        unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) },
        "pidfd_getfd",
    )?;
    // SAFETY: pidfd_getfd returned a descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use super::*;

    #[test]
    fn a_descriptor_of_this_process_is_duplicated() {
        let file = tempfile::tempfile().unwrap();
        let pidfd = open(std::process::id() as i32).unwrap();

        let dup = get_fd(pidfd.as_fd(), file.as_raw_fd()).unwrap();

        let same = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_ne!(dup.as_raw_fd(), file.as_raw_fd());
        assert_eq!(same(dup.as_raw_fd()), same(file.as_raw_fd()));
    }

    #[test]
    fn a_closed_descriptor_fails_naming_the_call() {
        let pidfd = open(std::process::id() as i32).unwrap();

        let err = get_fd(pidfd.as_fd(), -1).unwrap_err();

        assert_eq!(
            err.to_string(),
            "pidfd_getfd: Bad file descriptor (os error 9)"
        );
    }
}
