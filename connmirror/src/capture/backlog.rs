//! The ring buffer's backlog: bytes the kernel has written into the
//! `BPF_MAP_TYPE_RINGBUF` map that the reader has not consumed yet.
//!
//! A ring buffer map exposes two positions through `mmap` on its fd
//! (`kernel/bpf/ringbuf.c`, `ringbuf_map_mmap`): the consumer position in the
//! first page (writable by the consumer) and the producer position in the
//! second (read-only). Both only grow; their difference is the backlog,
//! record headers included. The mapping here is read-only, separate from the
//! reader's own, so it never moves the consumer position.
//!
//! # Minimum kernel version
//! 5.8 (ring buffer maps).

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// A read-only view of a ring buffer's consumer and producer positions.
#[derive(Debug)]
pub struct Backlog {
    pages: NonNull<libc::c_void>,
    page_size: usize,
}

// SAFETY: the mapping is read-only and only read through atomics.
unsafe impl Send for Backlog {}

impl Backlog {
    /// Maps the position pages of the ring buffer map behind `ring`.
    pub fn map(ring: &impl AsFd) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("sysconf(_SC_PAGESIZE) failed"))?;
        // SAFETY: a fresh shared read-only mapping of the map's first two pages;
        // the kernel allows PROT_READ over both (only writes are limited to page 0).
        let pages = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page_size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_fd().as_raw_fd(),
                0,
            )
        };
        if pages == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!("mmap of the ring buffer positions: {err}"),
            ));
        }
        let pages = NonNull::new(pages).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { pages, page_size })
    }

    /// Bytes written by the kernel and not yet consumed.
    pub fn bytes(&self) -> u64 {
        let consumer = self.position(0);
        let producer = self.position(self.page_size);
        producer.saturating_sub(consumer)
    }

    fn position(&self, offset: usize) -> u64 {
        // SAFETY: `offset` is 0 or one page into a two-page mapping; the
        // kernel keeps an 8-byte-aligned `unsigned long` position there and
        // updates it with release stores (`smp_store_release` in
        // `kernel/bpf/ringbuf.c`), paired with this acquire load.
        unsafe {
            let ptr = self
                .pages
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<AtomicU64>();
            (*ptr).load(Ordering::Acquire)
        }
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe { libc::munmap(self.pages.as_ptr(), 2 * self.page_size) };
    }
}
