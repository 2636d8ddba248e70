//! Loading and attaching the capture programs, and reading their maps.
//!
//! The object built from `connmirror-ebpf` is embedded in this binary. It holds an
//! XDP program for ingress (`xdp.frags`, so multi-buffer frames are seen whole) and
//! TC programs for ingress and egress, attached through TCX (kernel ≥ 6.6, see
//! `Documentation/networking/tcx` in the kernel tree). Records arrive in a
//! `BPF_MAP_TYPE_RINGBUF` map (kernel ≥ 5.8); see [`crate::mirror`] for the reader.
//!
//! # Minimum kernel version
//! 6.6 (TCX and `bpf_xdp_load_bytes`); developed on 6.18.

use std::{collections::HashMap as StdHashMap, ffi::CString, fmt, str::FromStr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode,
    },
};
use connmirror_common::{
    Counter, FlowKey, FlowValue, Hook, Malformed, RingFullPolicy, ServiceKey, ServiceValue,
    SyncLimit, counter::COUNTER_SLOTS,
};
use thiserror::Error;

use crate::service::Service;

/// The eBPF object, built by `build.rs` through aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/connmirror"));

/// Smallest ring accepted: one full chunk record must fit many times over, or a
/// burst can never make progress under the `drop` policy.
pub const MIN_RING_SIZE: u32 = 64 << 10;

/// How capture hooks ingress on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// XDP in driver (native) mode where the driver supports it, else generic
    /// mode. On a virtual link (veth) native XDP turns TSO off on the peer and
    /// costs ~80 % of the throughput (bench/RESULTS.md): a warning says so, and
    /// `xdp-generic` or `tc` is the better choice there.
    Xdp,
    /// XDP in driver mode only; fails where the driver lacks it.
    XdpNative,
    /// XDP in generic (skb) mode.
    XdpGeneric,
    /// TC (TCX) ingress.
    Tc,
    /// No ingress capture.
    None,
}

/// How capture hooks egress on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressHook {
    /// TC (TCX) egress.
    Tc,
    /// No egress capture.
    None,
}

/// Load-time settings of the capture programs.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Ring-buffer size in bytes: a power of two, at least [`MIN_RING_SIZE`].
    pub ring_size: u32,
    /// What to do with a tracked segment when the ring is full.
    pub on_ring_full: RingFullPolicy,
}

/// Failures of loading, attaching or reading the capture programs.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// The process lacks the capabilities to load BPF programs.
    #[error("connmirror mirror needs CAP_BPF and CAP_NET_ADMIN (run as root)")]
    Privilege,
    /// The named interface does not exist.
    #[error("interface \"{0}\" does not exist")]
    NoInterface(String),
    /// The ring size is unusable.
    #[error(
        "ring size {size} is invalid: it must be a power of two of at least {min} bytes \
         (a smaller ring cannot hold a burst, so backpressure would stall every flow)"
    )]
    RingSize {
        /// Requested size.
        size: u32,
        /// [`MIN_RING_SIZE`].
        min: u32,
    },
    /// Loading the object (maps, BTF, relocations) failed.
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// The verifier or the kernel rejected a program; the error carries the log.
    #[error("loading program {program} failed")]
    Program {
        /// Program name.
        program: &'static str,
        /// The kernel's answer, with the verifier log when there is one.
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to {iface} ({mode}) failed")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        iface: String,
        /// Attach point and mode.
        mode: &'static str,
        /// The kernel's answer.
        #[source]
        source: Box<ProgramError>,
    },
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map the programs need is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// Reading or writing a map failed.
    #[error("map {map} operation failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

const XDP: &str = "connmirror_xdp";
const TC_INGRESS: &str = "connmirror_tc_ingress";
const TC_EGRESS: &str = "connmirror_tc_egress";

/// Loaded capture programs and their maps. Dropping it detaches every program.
pub struct Capture {
    ebpf: Ebpf,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Checks privileges and the ring size, then loads the object with `config`.
    pub fn load(config: &CaptureConfig) -> Result<Self, CaptureError> {
        if !has_bpf_privilege() {
            return Err(CaptureError::Privilege);
        }
        let CaptureConfig {
            ring_size,
            on_ring_full,
        } = config;
        check_ring_size(*ring_size)?;
        // Wake the reader once an eighth of the ring waits; a timer drains the rest.
        let wakeup = u64::from(*ring_size / 8);
        let ebpf = EbpfLoader::new()
            .map_max_entries("RECORDS", *ring_size)
            .override_global("RING_FULL_POLICY", &(*on_ring_full as u8), true)
            .override_global("WAKEUP_BYTES", &wakeup, true)
            .load(OBJECT)
            .map_err(|err| CaptureError::Load(Box::new(err)))?;
        Ok(Self { ebpf })
    }

    /// Adds `service` to the services map so its segments are captured, from the
    /// next packet on: the map is shared with the running programs, so services
    /// can be added and removed while capture runs.
    pub fn track(&mut self, service: &Service) -> Result<(), CaptureError> {
        self.set_mode(service, 0)
    }

    /// Sets `service`'s [`ServiceMode`](connmirror_common::ServiceMode) bits (zero: capture). The programs read
    /// the map on every packet, so the next segment already sees the new mode:
    /// this is how a takeover quiesces clients and fences the old primary.
    pub fn set_mode(&mut self, service: &Service, mode: u32) -> Result<(), CaptureError> {
        let mut map: HashMap<_, ServiceKey, ServiceValue> = self.map_mut("SERVICES")?;
        let value = ServiceValue {
            id: service.id,
            mode,
        };
        map.insert(service.key(), value, 0)
            .map_err(map_error("SERVICES"))
    }

    /// Removes `service` from the services map: its segments pass uncaptured from
    /// the next packet on. Flows already in the kernel's flow map age out (LRU).
    pub fn untrack(&mut self, service: &Service) -> Result<(), CaptureError> {
        let mut map: HashMap<_, ServiceKey, ServiceValue> = self.map_mut("SERVICES")?;
        map.remove(&service.key()).map_err(map_error("SERVICES"))
    }

    /// Attaches the programs to `iface` as asked; returns how ingress was attached.
    pub fn attach(
        &mut self,
        iface: &str,
        ingress: IngressHook,
        egress: EgressHook,
    ) -> Result<&'static str, CaptureError> {
        if !interface_exists(iface) {
            return Err(CaptureError::NoInterface(iface.to_owned()));
        }
        let ingress_mode = match ingress {
            IngressHook::Xdp => self.attach_xdp_auto(iface)?,
            IngressHook::XdpNative => self.attach_xdp(iface, XdpMode::Driver)?,
            IngressHook::XdpGeneric => self.attach_xdp(iface, XdpMode::Skb)?,
            IngressHook::Tc => self.attach_tc(iface, TcAttachType::Ingress)?,
            IngressHook::None => "none",
        };
        if egress == EgressHook::Tc {
            self.attach_tc(iface, TcAttachType::Egress)?;
        }
        Ok(ingress_mode)
    }

    fn attach_xdp_auto(&mut self, iface: &str) -> Result<&'static str, CaptureError> {
        match self.attach_xdp(iface, XdpMode::Driver) {
            Ok(mode) => {
                if is_virtual(iface) {
                    tracing::warn!(
                        iface,
                        "native XDP on a virtual link turns TSO off on its peer and \
                         costs most of the throughput; prefer --iface {iface}:xdp-generic \
                         or --iface {iface}:tc"
                    );
                }
                Ok(mode)
            }
            Err(err) => {
                tracing::warn!(iface, error = %err, "native XDP unavailable, using generic XDP");
                self.attach_xdp(iface, XdpMode::Skb)
            }
        }
    }

    fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<&'static str, CaptureError> {
        let name = match mode {
            XdpMode::Skb => "xdp-generic",
            _ => "xdp-native",
        };
        let program: &mut Xdp = self.program(XDP)?;
        program
            .attach(iface, mode)
            .map_err(|source| CaptureError::Attach {
                program: XDP,
                iface: iface.to_owned(),
                mode: name,
                source: Box::new(source),
            })?;
        Ok(name)
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        attach_type: TcAttachType,
    ) -> Result<&'static str, CaptureError> {
        let (name, mode) = match attach_type {
            TcAttachType::Egress => (TC_EGRESS, "tc-egress"),
            _ => (TC_INGRESS, "tc-ingress"),
        };
        let program: &mut SchedClassifier = self.program(name)?;
        program
            .attach(iface, attach_type)
            .map_err(|source| CaptureError::Attach {
                program: name,
                iface: iface.to_owned(),
                mode,
                source: Box::new(source),
            })?;
        Ok(mode)
    }

    /// The program `name`, loaded into the kernel on first use.
    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, CaptureError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
        P: Loadable + 'a,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        let program: &mut P = program.try_into().map_err(program_error(name))?;
        program.load_once().map_err(program_error(name))?;
        Ok(program)
    }

    /// Detaches every program from every interface (the maps stay readable).
    pub fn detach(&mut self) -> Result<(), CaptureError> {
        for name in [XDP, TC_INGRESS, TC_EGRESS] {
            let Some(program) = self.ebpf.program_mut(name) else {
                continue;
            };
            let result = match program {
                aya::programs::Program::Xdp(p) if p.fd().is_ok() => p.unload(),
                aya::programs::Program::SchedClassifier(p) if p.fd().is_ok() => p.unload(),
                _ => Ok(()),
            };
            result.map_err(program_error(name))?;
        }
        Ok(())
    }

    /// Runs the program for `hook` once on `frame` with `BPF_PROG_TEST_RUN`
    /// (kernel ≥ 4.12; no interface needed) and returns its verdict: the XDP
    /// action, or the TC return code as `i32`. For tests and diagnostics.
    pub fn test_run(&mut self, hook: Hook, frame: &[u8]) -> Result<i32, CaptureError> {
        let options = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        let (name, result) = match hook {
            Hook::Xdp => (XDP, self.program::<Xdp>(XDP)?.test_run(options)),
            Hook::TcIngress => (
                TC_INGRESS,
                self.program::<SchedClassifier>(TC_INGRESS)?
                    .test_run(options),
            ),
            Hook::TcEgress => (
                TC_EGRESS,
                self.program::<SchedClassifier>(TC_EGRESS)?
                    .test_run(options),
            ),
        };
        result
            .map(|run| run.return_value as i32)
            .map_err(program_error(name))
    }

    /// Takes the ring buffer out of the object, for the reader.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map("RECORDS")
            .ok_or(CaptureError::MissingMap("RECORDS"))?;
        RingBuf::try_from(map).map_err(map_error("RECORDS"))
    }

    /// The kernel counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let map: PerCpuArray<_, u64> = self.map("COUNTERS")?;
        let mut slots = vec![0u64; COUNTER_SLOTS as usize];
        for (slot, total) in slots.iter_mut().enumerate() {
            let values = map.get(&(slot as u32), 0).map_err(map_error("COUNTERS"))?;
            *total = values.iter().sum();
        }
        Ok(Counters { slots })
    }

    /// Sets how far the standby holds `key`'s journal (on-host `--sync`): the
    /// TC egress program lets the primary's segments of that flow through up
    /// to `limit` from the next packet on.
    pub fn set_sync_limit(&mut self, key: &FlowKey, limit: SyncLimit) -> Result<(), CaptureError> {
        let mut map: HashMap<_, FlowKey, SyncLimit> = self.map_mut("SYNC_LIMITS")?;
        map.insert(key, limit, 0).map_err(map_error("SYNC_LIMITS"))
    }

    /// Forgets `key`'s sync limit (the flow closed); absent is not an error.
    pub fn remove_sync_limit(&mut self, key: &FlowKey) -> Result<(), CaptureError> {
        let mut map: HashMap<_, FlowKey, SyncLimit> = self.map_mut("SYNC_LIMITS")?;
        match map.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_error("SYNC_LIMITS")),
        }
    }

    /// Gap counts of every flow still in the kernel's LRU flow map.
    pub fn flow_gaps(&self) -> Result<StdHashMap<FlowKey, u32>, CaptureError> {
        let map: HashMap<_, FlowKey, FlowValue> = self.map("FLOWS")?;
        map.iter()
            .map(|entry| entry.map(|(key, value)| (key, value.gaps)))
            .collect::<Result<_, _>>()
            .map_err(map_error("FLOWS"))
    }

    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, CaptureError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map(name).ok_or(CaptureError::MissingMap(name))?;
        M::try_from(map).map_err(map_error(name))
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, CaptureError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(CaptureError::MissingMap(name))?;
        M::try_from(map).map_err(map_error(name))
    }
}

/// Wraps a map failure with the map's name.
fn map_error(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map {
        map,
        source: Box::new(source),
    }
}

/// Wraps a program failure (including a verifier rejection and its log) with the program's name.
fn program_error(program: &'static str) -> impl FnOnce(ProgramError) -> CaptureError {
    move |source| CaptureError::Program {
        program,
        source: Box::new(source),
    }
}

/// Programs that are loaded into the kernel once, then attached many times.
trait Loadable {
    fn load_once(&mut self) -> Result<(), ProgramError>;
}

impl Loadable for Xdp {
    fn load_once(&mut self) -> Result<(), ProgramError> {
        if self.fd().is_ok() {
            Ok(())
        } else {
            self.load()
        }
    }
}

impl Loadable for SchedClassifier {
    fn load_once(&mut self) -> Result<(), ProgramError> {
        if self.fd().is_ok() {
            Ok(())
        } else {
            self.load()
        }
    }
}

/// Kernel counters summed over CPUs, by slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    slots: Vec<u64>,
}

impl Counters {
    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.slots
            .get(counter.index() as usize)
            .copied()
            .unwrap_or(0)
    }

    /// The malformed-packet count for `reason`.
    pub fn malformed(&self, reason: Malformed) -> u64 {
        self.slots
            .get(reason.index() as usize)
            .copied()
            .unwrap_or(0)
    }
}

fn interface_exists(iface: &str) -> bool {
    let Ok(name) = CString::new(iface) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Whether `iface` is a virtual link: sysfs shows no backing device for it
/// (`/sys/class/net/IF/device` exists only for hardware NICs).
fn is_virtual(iface: &str) -> bool {
    !std::path::Path::new("/sys/class/net")
        .join(iface)
        .join("device")
        .exists()
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

/// A ring size the kernel accepts (a power of two) and that holds a burst
/// (at least [`MIN_RING_SIZE`]).
fn check_ring_size(size: u32) -> Result<(), CaptureError> {
    if !size.is_power_of_two() || size < MIN_RING_SIZE {
        return Err(CaptureError::RingSize {
            size,
            min: MIN_RING_SIZE,
        });
    }
    Ok(())
}

/// Parses a ring size ([`parse_size`]) and checks it as [`Capture::load`]
/// does, so that `--ring-size` and its configuration key reject a bad size
/// before anything starts.
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    check_ring_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

/// Parses sizes such as `65536`, `64K`, `16M` or `1G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let value = u64::from_str(digits).map_err(|_| format!("{text:?} is not a size"))?;
    u32::try_from(value << shift)
        .ok()
        .filter(|_| value.leading_zeros() >= shift)
        .ok_or_else(|| format!("{text} is larger than 4 GiB - 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_suffixes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(
            parse_size("4G"),
            Err("4G is larger than 4 GiB - 1".to_owned())
        );
        assert_eq!(parse_size("x"), Err("\"x\" is not a size".to_owned()));
    }

    #[test]
    fn ring_sizes_are_powers_of_two_of_at_least_64k() {
        assert_eq!(parse_ring_size("64K"), Ok(65536));
        assert_eq!(
            parse_ring_size("12K"),
            Err(
                "ring size 12288 is invalid: it must be a power of two of at least 65536 bytes \
                 (a smaller ring cannot hold a burst, so backpressure would stall every flow)"
                    .to_owned()
            )
        );
        assert_eq!(parse_ring_size("32K").map_err(|_| ()), Err(()));
    }
}
