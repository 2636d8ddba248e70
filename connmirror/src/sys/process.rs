//! Calls about the calling process or thread: its network namespace
//! (`setns(2)`), its effective uid (`geteuid(2)`) and the monotonic clock
//! (`clock_gettime(2)`). The open-file limit is `connmirror_handoff`'s
//! `raise_open_files_limit`, which the daemon and applications share.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use super::{SyscallError, check};

/// `setns(netns, CLONE_NEWNET)`: moves the calling thread into the network
/// namespace `netns` refers to (an open `/proc/.../ns/net`).
pub fn enter_netns(netns: BorrowedFd<'_>) -> Result<(), SyscallError> {
    // SAFETY: setns only changes this thread's network namespace.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    check(rc, "setns(CLONE_NEWNET)").map(drop)
}

/// The effective uid of this process (`geteuid(2)` cannot fail).
pub fn euid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; CLOCK_MONOTONIC always
    // exists, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_ns() >= before + 2_000_000);
    }

    #[test]
    fn entering_a_file_that_is_no_namespace_names_the_call() {
        let file = tempfile::tempfile().unwrap();

        let err = enter_netns(std::os::fd::AsFd::as_fd(&file)).unwrap_err();

        assert_eq!(
            err.to_string(),
            "setns(CLONE_NEWNET): Invalid argument (os error 22)"
        );
    }
}
