//! 802.1Q tagging of a link without the kernel's VLAN driver.
//!
//! The test kernel is built without `CONFIG_VLAN_8021Q`, so `ip link add ... type
//! vlan` fails with "Unknown device type". The fixtures tag a link instead with
//! two tiny TC programs attached through TCX (kernel ≥ 6.6, `BPF_PROG_ATTACH`
//! with `BPF_TCX_INGRESS` / `BPF_TCX_EGRESS`):
//!
//! - on egress, `bpf_skb_vlan_push(skb, ETH_P_8021Q, id)` sets the skb's VLAN tag.
//!   TC egress runs early in `__dev_queue_xmit`; later, `validate_xmit_vlan()`
//!   (net/core/dev.c) moves the tag into the frame bytes because the device has
//!   VLAN transmit offload turned off (`ethtool -K IF txvlan off`). The peer veth
//!   therefore receives a frame with the 4-byte tag after the MAC addresses,
//!   exactly as from a VLAN device on top of it: native XDP (`veth_xdp_rcv_skb`)
//!   and generic XDP (which runs before `skb_vlan_untag`) both see the tag in the
//!   frame data;
//! - on ingress, `__netif_receive_skb_core` has already moved the tag from the
//!   frame into skb metadata (`skb_vlan_untag`, core code, present without the
//!   VLAN driver), and `bpf_skb_vlan_pop` clears it. Without that, a frame with a
//!   non-zero VLAN id and no VLAN device to take it is marked `PACKET_OTHERHOST`
//!   and never reaches IP.
//!
//! Both programs return `TCX_NEXT` (-1), so programs attached after them on the
//! same hook (the mirror's TC capture) still run.
//!
//! The programs are hand-assembled eBPF (five instructions each), so the fixtures
//! need no compiler for the BPF target. They stay attached until the interface is
//! deleted (with its namespace).

use std::ffi::CString;
use std::io;

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;
const BPF_FUNC_SKB_VLAN_POP: i32 = 19;
/// `TCX_NEXT`: let the next program on the hook decide.
const TCX_NEXT: i32 = -1;
/// `htons(ETH_P_8021Q)` as the helper takes it (a `__be16` in a register).
const ETH_P_8021Q_BE: i32 = 0x8100u16.to_be() as i32;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// `rDST = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const fn mov64_imm(dst: u8, imm: i32) -> Insn {
    Insn {
        code: 0xb7,
        regs: dst,
        off: 0,
        imm,
    }
}

/// `call helper` (BPF_JMP | BPF_CALL).
const fn call(helper: i32) -> Insn {
    Insn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: helper,
    }
}

/// `exit` (BPF_JMP | BPF_EXIT).
const EXIT: Insn = Insn {
    code: 0x95,
    regs: 0,
    off: 0,
    imm: 0,
};

/// The `BPF_PROG_LOAD` part of `union bpf_attr` up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_ifindex: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised `repr(C)` prefix of `union
    // bpf_attr` and its size is passed along; the kernel zero-extends the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads `insns` as a SCHED_CLS program and attaches it through TCX to `ifname`
/// in the calling thread's namespace.
fn attach(ifname: &str, attach_type: u32, insns: &[Insn], name: &str) -> io::Result<()> {
    let license = CString::new("GPL").expect("no NUL");
    let mut log = vec![0u8; 4096];
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
        let log = String::from_utf8_lossy(&log);
        io::Error::new(
            e.kind(),
            format!(
                "bpf(BPF_PROG_LOAD {name}): {e}; verifier: {}",
                log.trim_end_matches('\0')
            ),
        )
    })? as i32;
    let ifname_c = CString::new(ifname).expect("no NUL");
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(ifname_c.as_ptr()) };
    let result = if ifindex == 0 {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("if_nametoindex({ifname}): {}", io::Error::last_os_error()),
        ))
    } else {
        let mut attach = ProgAttachAttr {
            target_ifindex: ifindex,
            attach_bpf_fd: fd as u32,
            attach_type,
            ..ProgAttachAttr::default()
        };
        bpf(BPF_PROG_ATTACH, &mut attach).map(drop).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("bpf(BPF_PROG_ATTACH {name} to {ifname}): {e}"),
            )
        })
    };
    // SAFETY: `fd` is the program fd we own; the attachment holds its own reference.
    unsafe { libc::close(fd) };
    result
}

/// Makes `ifname` in `ns` a link that carries 802.1Q tag `id`: every frame it
/// sends is tagged, every tagged frame it receives is untagged before IP sees it.
/// Turns VLAN transmit/receive offload off so the tag is in the frame data.
pub fn tag_link(ns: &Netns, ifname: &str, id: u16) {
    ns.exec(["ethtool", "-K", ifname, "txvlan", "off", "rxvlan", "off"]);
    let push = [
        mov64_imm(2, ETH_P_8021Q_BE),
        mov64_imm(3, i32::from(id)),
        call(BPF_FUNC_SKB_VLAN_PUSH),
        mov64_imm(0, TCX_NEXT),
        EXIT,
    ];
    let pop = [call(BPF_FUNC_SKB_VLAN_POP), mov64_imm(0, TCX_NEXT), EXIT];
    ns.run(|| {
        attach(ifname, BPF_TCX_EGRESS, &push, "cmt_vlan_push")
            .and_then(|()| attach(ifname, BPF_TCX_INGRESS, &pop, "cmt_vlan_pop"))
    })
    .unwrap_or_else(|e| panic!("tagging {ifname} in {} with VLAN {id}: {e}", ns.name()));
}
