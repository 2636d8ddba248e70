//! Loading and attaching the capture programs, and reading their maps.
//!
//! The object built from `connmirror-ebpf` is embedded in this binary. It holds an
//! XDP program for ingress (`xdp.frags`, so multi-buffer frames are seen whole) and
//! TC programs for ingress and egress, attached through TCX (kernel ≥ 6.6, see
//! `Documentation/networking/tcx` in the kernel tree). Records arrive in a
//! `BPF_MAP_TYPE_RINGBUF` map (kernel ≥ 5.8); see [`crate::engine`] for the reader.
//! The same object holds traced copies of the three programs, attached only
//! with `--trace-ebpf` ([`Capture::trace`]).
//!
//! With [`Capture::load_pinned`] the maps, programs and links are pinned in the
//! BPF filesystem and outlive the process; see [`crate::capture::pinning`].
//!
//! # Minimum kernel version
//! 6.6 (TCX and `bpf_xdp_load_bytes`); developed on 6.18.
//!
//! # What capture/ holds
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | [`Capture`]: loading the object, with or without pins |
//! | `options.rs` | [`IngressHook`], [`EgressHook`], [`CaptureConfig`], [`parse_ring_size`], [`parse_size`] |
//! | `plan.rs` | [`AttachPoint`]: choosing the attach points (`auto`) and saying why |
//! | `trace.rs` | [`TraceLog`]: `--trace-ebpf`, the traced programs and their log lines |
//! | `attach.rs` | attaching, taking over pinned links, detaching, test runs |
//! | `maps.rs` | the maps: services, ring, [`Counters`], [`ReaderDeadline`], flows |
//! | `pin_checks.rs` | whether a pinned instance fits (maps, services, links) |
//! | `error.rs` | [`CaptureError`] |
//! | [`pinning`], [`backlog`] | the pinned instance's files; the ring's backlog |
//!
//! Uses: [`crate::service`] (the services tracked), [`crate::sys`] (interfaces,
//! errno, `mmap`). Must not use: the flow table, the journal, or any role.
//! Other modules use what is re-exported here and [`pinning`] and [`backlog`];
//! nothing reaches into the private files.

mod attach;
pub mod backlog;
mod error;
mod maps;
mod options;
mod pin_checks;
pub mod pinning;
mod plan;
mod trace;

pub use error::CaptureError;
pub use maps::{Counters, FlowWalker, ReaderDeadline};
pub use options::{
    CaptureConfig, DEFAULT_MAX_FLOWS, EgressHook, IngressHook, MIN_RING_SIZE, parse_ring_size,
    parse_size,
};
pub use plan::AttachPoint;
pub use trace::TraceLog;

use std::fmt;

use aya::{Ebpf, EbpfLoader, programs::links::FdLink};

use crate::capture::{
    options::check_ring_size,
    pin_checks::check_pinned_maps,
    pinning::{Instance, PINNED_MAPS},
};

/// The eBPF object, built by `build.rs` through aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/connmirror"));

/// Loaded capture programs and their maps. Dropping it detaches every program,
/// unless they are pinned ([`Capture::load_pinned`]).
pub struct Capture {
    ebpf: Ebpf,
    /// With pins: the instance, and the links this process holds (pinned too).
    pins: Option<Pins>,
    /// Attach the traced programs ([`Capture::trace`]) instead of the default ones.
    trace: bool,
}

/// A pinned instance, held locked, and the links taken from it or pinned into it.
struct Pins {
    instance: Instance,
    links: Vec<FdLink>,
    /// The instance directory, `flock`ed while this process uses it.
    _lock: std::fs::File,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Checks privileges and the ring size, then loads the object with `config`.
    pub fn load(config: &CaptureConfig) -> Result<Self, CaptureError> {
        Self::load_with(config, None)
    }

    /// Like [`load`](Self::load), with the maps pinned under `instance`: maps
    /// already pinned there (by an earlier daemon) are opened, after checking
    /// that their layout and ring size fit, instead of created. Programs and
    /// links are pinned as they are attached ([`attach`](Self::attach)).
    /// Mounts bpffs at `/sys/fs/bpf` if needed.
    pub fn load_pinned(config: &CaptureConfig, instance: Instance) -> Result<Self, CaptureError> {
        Self::load_with(config, Some(instance))
    }

    /// [`load`](Self::load), with pins when `instance` is given.
    fn load_with(config: &CaptureConfig, instance: Option<Instance>) -> Result<Self, CaptureError> {
        if !has_bpf_privilege() {
            return Err(CaptureError::Privilege);
        }
        let CaptureConfig {
            ring_size,
            on_ring_full,
            max_flows,
        } = config;
        check_ring_size(*ring_size)?;
        let lock = match &instance {
            Some(instance) => {
                instance.prepare()?;
                let lock = instance.lock()?;
                check_pinned_maps(instance, *ring_size, *max_flows)?;
                Some(lock)
            }
            None => None,
        };
        // Wake the reader when the backlog crosses an eighth of the ring; a timer drains the rest.
        let wakeup = u64::from(*ring_size / 8);
        let policy = *on_ring_full as u8;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("RECORDS", *ring_size)
            .map_max_entries("FLOWS", *max_flows)
            .override_global("RING_FULL_POLICY", &policy, true)
            .override_global("WAKEUP_BYTES", &wakeup, true);
        if let Some(instance) = &instance {
            for map in PINNED_MAPS {
                loader.map_pin_path(map, instance.map_path(map));
            }
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|err| CaptureError::Load(Box::new(err)))?;
        let pins = instance.zip(lock).map(|(instance, lock)| Pins {
            instance,
            links: Vec::new(),
            _lock: lock,
        });
        Ok(Self {
            ebpf,
            pins,
            trace: false,
        })
    }

    /// The pinned instance, with [`load_pinned`](Self::load_pinned).
    pub fn pinned(&self) -> Option<&Instance> {
        self.pins.as_ref().map(|pins| &pins.instance)
    }
}

/// Whether the effective capability set holds CAP_NET_ADMIN and either CAP_BPF or
/// CAP_SYS_ADMIN (the pre-5.8 way to load BPF).
fn has_bpf_privilege() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(caps) = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

#[cfg(test)]
mod tests;
