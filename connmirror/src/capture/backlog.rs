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

use std::{io, os::fd::AsFd};

use crate::sys::mmap::{self, SharedReadOnly};

/// A read-only view of a ring buffer's consumer and producer positions.
#[derive(Debug)]
pub struct Backlog {
    pages: SharedReadOnly,
    page_size: usize,
}

impl Backlog {
    /// Maps the position pages of the ring buffer map behind `ring`: both
    /// pages read-only (the kernel allows `PROT_READ` over both; only writes
    /// are limited to page 0).
    pub fn map(ring: &impl AsFd) -> io::Result<Self> {
        let page_size = mmap::page_size()?;
        let pages = SharedReadOnly::map(ring.as_fd(), 2 * page_size).map_err(|e| {
            io::Error::new(
                e.io_error.kind(),
                format!("mmap of the ring buffer positions: {}", e.io_error),
            )
        })?;
        Ok(Self { pages, page_size })
    }

    /// Bytes written by the kernel and not yet consumed. The kernel updates
    /// both positions with release stores (`smp_store_release` in
    /// `kernel/bpf/ringbuf.c`), paired with the acquire loads here.
    pub fn bytes(&self) -> u64 {
        let consumer = self.pages.load_u64(0);
        let producer = self.pages.load_u64(self.page_size);
        producer.saturating_sub(consumer)
    }
}
