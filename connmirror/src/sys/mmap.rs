//! Shared read-only mappings of a descriptor (`mmap(2)`), read through
//! atomics: how the ring buffer's positions are watched
//! (`ringbuf_map_mmap()` in kernel/bpf/ringbuf.c).

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use super::{SyscallError, check};

/// The size of a page (`sysconf(_SC_PAGESIZE)`).
pub fn page_size() -> Result<usize, SyscallError> {
    // SAFETY: sysconf has no preconditions.
    let size = check(
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) },
        "sysconf(_SC_PAGESIZE)",
    )?;
    Ok(size as usize)
}

/// `mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0)`, unmapped on drop.
#[derive(Debug)]
pub struct SharedReadOnly {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and only read through atomics.
unsafe impl Send for SharedReadOnly {}

impl SharedReadOnly {
    /// Maps the first `len` bytes of `fd`.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> Result<SharedReadOnly, SyscallError> {
        // SAFETY: a fresh shared read-only mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SyscallError::last_os_error("mmap"));
        }
        let ptr = NonNull::new(ptr).expect("mmap without MAP_FIXED never returns NULL");
        Ok(SharedReadOnly { ptr, len })
    }

    /// An acquire load of the 8-byte value at `offset`, which another party
    /// (the kernel) updates with release stores.
    ///
    /// # Panics
    ///
    /// If `offset` is not 8-byte aligned or the value is not inside the
    /// mapping.
    pub fn load_u64(&self, offset: usize) -> u64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "offset {offset}"
        );
        // SAFETY: checked above: an aligned 8-byte value inside the mapping,
        // which lives as long as `self` (mappings are page-aligned).
        unsafe {
            let ptr = self
                .ptr
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<AtomicU64>();
            (*ptr).load(Ordering::Acquire)
        }
    }
}

impl Drop for SharedReadOnly {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn a_file_is_read_through_the_mapping() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&7u64.to_ne_bytes()).unwrap();
        file.write_all(&[0; 8]).unwrap();

        let map = SharedReadOnly::map(file.as_fd(), 16).unwrap();

        assert_eq!((map.load_u64(0), map.load_u64(8)), (7, 0));
        assert!(page_size().unwrap() >= 4096);
    }

    #[test]
    fn mapping_a_socket_names_the_call() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = SharedReadOnly::map(socket.as_fd(), 4096).unwrap_err();
        assert_eq!(err.call, "mmap");
    }
}
