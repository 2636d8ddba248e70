//! The traced programs (`connmirror mirror --trace-ebpf`): the same capture
//! path as the default programs, then one aya-log line per TCP segment saying
//! what capture decided with it, for users debugging why a segment was or was
//! not captured.
//!
//! This is the one exception to "no logging in the per-packet path", and it
//! stays out of that path: these are separate programs, loaded and attached
//! only with `--trace-ebpf`. The default programs (`main.rs`) never call
//! anything here. A traced segment costs a second parse and classification and
//! a formatted record in the `AYA_LOGS` ring, which userspace turns into a log
//! line (aya-log): microseconds per segment, far too slow for production.
//!
//! The lines, one per TCP segment (addresses as the segment carries them):
//!
//! ```text
//! tc-ingress if 3: tracked service 0 client-to-server 198.18.0.2:40000 > 198.18.1.2:7000 seq 1000 len 5: pass
//! tc-ingress if 3: untracked 198.18.0.2:40001 > 198.18.1.2:7001 seq 1000 len 5: pass
//! ```

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::info;
use connmirror_common::{
    Direction, Hook,
    map::FAMILY_V4,
    parse::{self, Parsed, Segment},
};

use crate::{
    capture::{Verdict, capture, classify},
    packet::{Kernel, LoadInto, SkbPacket, XdpPacket},
};

/// Traced XDP ingress capture.
#[xdp(frags)]
pub fn connmirror_xdp_trace(ctx: XdpContext) -> u32 {
    let pkt = Kernel(XdpPacket::new(&ctx));
    match traced(&ctx, &pkt, Hook::Xdp, pkt.0.ifindex()) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// Traced TC egress capture.
#[classifier]
pub fn connmirror_tc_egress_trace(ctx: TcContext) -> i32 {
    tc_traced(&ctx, Hook::TcEgress)
}

/// Traced TC ingress capture.
#[classifier]
pub fn connmirror_tc_ingress_trace(ctx: TcContext) -> i32 {
    tc_traced(&ctx, Hook::TcIngress)
}

#[inline(always)]
fn tc_traced(ctx: &TcContext, hook: Hook) -> i32 {
    let pkt = Kernel(SkbPacket::new(&ctx.skb));
    match traced(ctx, &pkt, hook, pkt.0.ifindex()) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// Runs the capture path, then logs its decision for a TCP segment. Each is a
/// function of its own (a BPF-to-BPF call), so that their stack frames follow
/// one another instead of adding up past the verifier's 512 bytes.
#[inline(always)]
fn traced<C: EbpfContext, S: LoadInto>(
    ctx: &C,
    pkt: &Kernel<S>,
    hook: Hook,
    ifindex: u32,
) -> Verdict {
    let verdict = captured(pkt, hook, ifindex);
    logged(ctx, pkt, hook, ifindex, matches!(verdict, Verdict::Drop));
    verdict
}

/// The default programs' capture path, in a frame of its own.
#[inline(never)]
fn captured<S: LoadInto>(pkt: &Kernel<S>, hook: Hook, ifindex: u32) -> Verdict {
    capture(pkt, hook, ifindex)
}

/// Parses the segment again and logs the decision (`drop`: whether the
/// verdict was [`Verdict::Drop`]), in a frame of its own.
#[inline(never)]
fn logged<C: EbpfContext, S: LoadInto>(
    ctx: &C,
    pkt: &Kernel<S>,
    hook: Hook,
    ifindex: u32,
    drop: bool,
) {
    let verdict = if drop { Verdict::Drop } else { Verdict::Pass };
    if let Ok(Parsed::Tcp(seg)) = parse::parse(pkt) {
        log(ctx, &seg, hook, ifindex, &verdict);
    }
}

/// One line: the hook, tracked (with the service and direction) or not, the
/// segment's addresses, sequence number and payload length, and the verdict.
#[inline(always)]
fn log<C: EbpfContext>(ctx: &C, seg: &Segment, hook: Hook, ifindex: u32, verdict: &Verdict) {
    let hook = match hook {
        Hook::Xdp => "xdp",
        Hook::TcIngress => "tc-ingress",
        Hook::TcEgress => "tc-egress",
        Hook::Netfilter => "netfilter",
    };
    let verdict = match verdict {
        Verdict::Pass => "pass",
        Verdict::Drop => "drop",
    };
    let (sport, dport, seq, len) = (seg.src_port, seg.dst_port, seg.seq, seg.payload_len);
    let v4 = seg.family == FAMILY_V4;
    let (src4, dst4) = (first4(&seg.src_addr), first4(&seg.dst_addr));
    let (src6, dst6) = (seg.src_addr, seg.dst_addr);
    match classify(seg) {
        Some((direction, service)) => {
            let id = service.id;
            let direction = match direction {
                Direction::ClientToServer => "client-to-server",
                Direction::ServerToClient => "server-to-client",
            };
            if v4 {
                info!(
                    ctx,
                    "{} if {}: tracked service {} {} {:i}:{} > {:i}:{} seq {} len {}: {}",
                    hook,
                    ifindex,
                    id,
                    direction,
                    src4,
                    sport,
                    dst4,
                    dport,
                    seq,
                    len,
                    verdict
                );
            } else {
                info!(
                    ctx,
                    "{} if {}: tracked service {} {} [{:i}]:{} > [{:i}]:{} seq {} len {}: {}",
                    hook,
                    ifindex,
                    id,
                    direction,
                    src6,
                    sport,
                    dst6,
                    dport,
                    seq,
                    len,
                    verdict
                );
            }
        }
        None if v4 => info!(
            ctx,
            "{} if {}: untracked {:i}:{} > {:i}:{} seq {} len {}: {}",
            hook,
            ifindex,
            src4,
            sport,
            dst4,
            dport,
            seq,
            len,
            verdict
        ),
        None => info!(
            ctx,
            "{} if {}: untracked [{:i}]:{} > [{:i}]:{} seq {} len {}: {}",
            hook,
            ifindex,
            src6,
            sport,
            dst6,
            dport,
            seq,
            len,
            verdict
        ),
    }
}

/// The IPv4 address in the first four bytes of a segment's address field.
#[inline(always)]
fn first4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}
