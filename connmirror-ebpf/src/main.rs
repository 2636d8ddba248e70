//! connmirror capture programs: XDP on ingress, TC (TCX) on ingress or egress,
//! and a socket filter that on-host `--sync` runs at netfilter POSTROUTING
//! through the xtables `bpf` match.
//!
//! Every program runs the same per-packet path, top to bottom:
//! parse → classify → copy → count → verdict. It never logs, keeps its counters in
//! a per-CPU array, and reads the packet only through `bpf_xdp_load_bytes` /
//! `bpf_skb_load_bytes`, which check bounds and reach the non-linear part of
//! multi-buffer XDP frames and GSO skbs.
#![no_std]
#![no_main]
// aya's program macros wrap each program in a function of their own and drop
// its doc comment; the comments stay on the functions below for readers.
#![allow(missing_docs)]

mod capture;
mod packet;
// The `--trace-ebpf` programs: separate, so these carry no logging.
mod trace;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, socket_filter, xdp},
    programs::{SkBuffContext, TcContext, XdpContext},
};
use connmirror_common::Hook;

use crate::{
    capture::{Verdict, capture, hold},
    packet::{Kernel, SkbPacket, XdpPacket},
};

/// XDP ingress capture. `frags` lets it see multi-buffer frames whole.
#[xdp(frags)]
pub fn connmirror_xdp(ctx: XdpContext) -> u32 {
    let pkt = Kernel(XdpPacket::new(&ctx));
    match capture(&pkt, Hook::Xdp, pkt.0.ifindex()) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// TC egress capture. Passive: it returns "next" (`TC_ACT_UNSPEC`) so later programs run.
#[classifier]
pub fn connmirror_tc_egress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, Hook::TcEgress)
}

/// TC ingress capture, for links where TC beats XDP (docs/architecture.md, "Implementation notes").
#[classifier]
pub fn connmirror_tc_ingress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, Hook::TcIngress)
}

/// On-host `--sync`, at netfilter POSTROUTING (an xtables `bpf` match in
/// front of an `NFQUEUE` target): captures each outgoing segment of a
/// protected flow and "matches" it (1) so that netfilter queues it to the
/// agent, which holds it until the standby has it. 0 lets the packet go on.
#[socket_filter]
pub fn connmirror_sync_hold(ctx: SkBuffContext) -> i64 {
    let pkt = Kernel(SkbPacket::new(&ctx.skb));
    i64::from(hold(&pkt, pkt.0.ifindex()))
}

#[inline(always)]
fn tc_verdict(ctx: &TcContext, hook: Hook) -> i32 {
    let pkt = Kernel(SkbPacket::new(&ctx.skb));
    match capture(&pkt, hook, pkt.0.ifindex()) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
