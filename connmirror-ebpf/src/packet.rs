//! [`Packet`] over the kernel's bounds-checked load helpers.

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{XdpContext, sk_buff::SkBuff},
};
use connmirror_common::parse::Packet;

/// A kernel packet context that copies bytes out through a bounds-checked helper.
pub trait LoadInto {
    /// Total length of the frame, including any non-linear part.
    fn frame_len(&self) -> usize;

    /// Copies `len` bytes at `offset` into `dst`; false when they are not all
    /// inside the packet.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes.
    unsafe fn load_into(&self, offset: usize, dst: *mut u8, len: u32) -> bool;
}

/// Adapts a [`LoadInto`] context to the shared parser's [`Packet`].
pub struct Kernel<S>(pub S);

impl<S: LoadInto> Packet for Kernel<S> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.frame_len()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: `buf` holds exactly N bytes.
        unsafe { self.0.load_into(offset, buf.as_mut_ptr(), N as u32) }.then_some(buf)
    }
}

/// An XDP frame, including the fragments of a multi-buffer frame.
pub struct XdpPacket<'a> {
    ctx: &'a XdpContext,
    len: usize,
}

impl<'a> XdpPacket<'a> {
    /// Wraps the context; `bpf_xdp_get_buff_len` gives the length across fragments.
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        // SAFETY: the helper only reads the context it is given.
        let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
        Self { ctx, len }
    }

    /// The receiving interface.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }
}

impl LoadInto for XdpPacket<'_> {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    unsafe fn load_into(&self, offset: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the caller guarantees `dst` holds `len` bytes; the helper checks the packet side.
        unsafe { bpf_xdp_load_bytes(self.ctx.ctx, offset as u32, dst.cast(), len) == 0 }
    }
}

/// A socket buffer, including the paged part of a GSO skb: at TC it starts
/// at the Ethernet header, at a netfilter hook (the xtables `bpf` match of
/// on-host `--sync`) at the IP header.
pub struct SkbPacket<'a> {
    skb: &'a SkBuff,
}

impl<'a> SkbPacket<'a> {
    /// Wraps the context's skb (`TcContext::skb`, `SkBuffContext::skb`).
    #[inline(always)]
    pub fn new(skb: &'a SkBuff) -> Self {
        Self { skb }
    }

    /// The interface the skb is on.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is the context pointer the kernel passed in.
        unsafe { (*self.skb.skb).ifindex }
    }
}

impl LoadInto for SkbPacket<'_> {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.skb.len() as usize
    }

    #[inline(always)]
    unsafe fn load_into(&self, offset: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for XDP; `bpf_skb_load_bytes` checks the skb side.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset as u32, dst.cast(), len) == 0 }
    }
}
