//! Types and pure logic shared by the connmirror eBPF programs and userspace.
//!
//! Everything that crosses the kernel/user boundary is defined here exactly once:
//! the ring-buffer [`record`] layout, the keys and values of the BPF [`map`]s,
//! the per-CPU [`counter`] indices, and the packet [`parse`]r itself, which runs
//! unchanged inside the kernel (over `bpf_xdp_load_bytes` / `bpf_skb_load_bytes`)
//! and in userspace tests (over a byte slice).
#![no_std]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod counter;
#[cfg(any(test, feature = "std"))]
pub mod frame;
pub mod map;
pub mod options;
pub mod parse;
pub mod record;

pub use counter::{Counter, CounterInfo, Malformed};
pub use map::{FlowFlags, FlowKey, FlowValue, PayloadSkip, ServiceKey, ServiceMode, ServiceValue};
pub use record::{Direction, Hook, RecordHeader, RingFullPolicy};
