//! Filesystem calls the BPF pinning needs: `flock(2)`, `mount(2)` and
//! `umount2(2)` of a BPF filesystem, and `statfs(2)` to recognise one.

use std::{
    ffi::CStr,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use super::{SyscallError, check};

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file holds
/// the lock (`EWOULDBLOCK`).
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> Result<bool, SyscallError> {
    // SAFETY: flock on an open descriptor has no memory-safety preconditions.
    match check(
        unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        "flock(LOCK_EX)",
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `mount("bpf", target, "bpf", 0, NULL)`: a new BPF filesystem at `target`.
pub fn mount_bpffs(target: &CStr) -> Result<(), SyscallError> {
    let source = c"bpf";
    // SAFETY: every pointer is a valid C string or null (no mount data).
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    check(rc, "mount(bpf)").map(drop)
}

/// `umount2(target, MNT_DETACH)`: detaches the filesystem mounted at `target`.
pub fn unmount(target: &CStr) -> Result<(), SyscallError> {
    // SAFETY: `target` is a valid C string.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    check(rc, "umount2(MNT_DETACH)").map(drop)
}

/// `statfs(path).f_type`: the magic number of the filesystem at `path`.
pub fn filesystem_type(path: &CStr) -> Result<i64, SyscallError> {
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a plain out-parameter, `path` a valid C string.
    check(unsafe { libc::statfs(path.as_ptr(), &mut stat) }, "statfs")?;
    Ok(stat.f_type as i64)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn a_second_open_file_does_not_get_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = std::fs::File::open(dir.path()).unwrap();
        let second = std::fs::File::open(dir.path()).unwrap();

        assert!(try_lock_exclusive(first.as_fd()).unwrap());
        assert!(!try_lock_exclusive(second.as_fd()).unwrap());
    }

    #[test]
    fn statfs_of_a_missing_path_names_the_call() {
        let err = filesystem_type(c"/nonexistent/connmirror").unwrap_err();
        assert_eq!(
            err.to_string(),
            "statfs: No such file or directory (os error 2)"
        );
    }
}
