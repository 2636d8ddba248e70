//! Loading and attaching the capture programs, and reading their maps.
//!
//! The object built from `connmirror-ebpf` is embedded in this binary. It holds an
//! XDP program for ingress (`xdp.frags`, so multi-buffer frames are seen whole) and
//! TC programs for ingress and egress, attached through TCX (kernel ≥ 6.6, see
//! `Documentation/networking/tcx` in the kernel tree). Records arrive in a
//! `BPF_MAP_TYPE_RINGBUF` map (kernel ≥ 5.8); see [`crate::engine`] for the reader.
//!
//! With [`Capture::load_pinned`] the maps, programs and links are pinned in the
//! BPF filesystem and outlive the process; see [`crate::capture::pinning`].
//!
//! # Minimum kernel version
//! 6.6 (TCX and `bpf_xdp_load_bytes`); developed on 6.18.

pub mod backlog;
pub mod pinning;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapInfo, PerCpuArray, RingBuf},
    pin::PinError,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use connmirror_common::{
    Counter, FlowKey, FlowValue, Hook, Malformed, RingFullPolicy, ServiceKey, ServiceValue,
    SyncLimit, counter::COUNTER_SLOTS,
};
use thiserror::Error;

use crate::{
    capture::pinning::{Instance, PINNED_MAPS, PinningError},
    service::{Service, socket_addr},
};

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
    /// The pinned instance cannot be used (see [`PinningError`]).
    #[error(transparent)]
    Pinning(#[from] PinningError),
    /// A pinned link could not be opened, taken over or pinned.
    #[error("{what} the pinned {hook} link of {iface} failed")]
    Link {
        /// Interface name.
        iface: String,
        /// Attach point.
        hook: &'static str,
        /// `opening`, `taking over`, `pinning`.
        what: &'static str,
        /// aya's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A program could not be pinned.
    #[error("pinning program {program} at {} failed", .path.display())]
    ProgramPin {
        /// Program name.
        program: &'static str,
        /// The pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: Box<PinError>,
    },
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

/// Loaded capture programs and their maps. Dropping it detaches every program,
/// unless they are pinned ([`Capture::load_pinned`]).
pub struct Capture {
    ebpf: Ebpf,
    /// With pins: the instance, and the links this process holds (pinned too).
    pins: Option<Pins>,
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

    fn load_with(config: &CaptureConfig, instance: Option<Instance>) -> Result<Self, CaptureError> {
        if !has_bpf_privilege() {
            return Err(CaptureError::Privilege);
        }
        let CaptureConfig {
            ring_size,
            on_ring_full,
        } = config;
        check_ring_size(*ring_size)?;
        let lock = match &instance {
            Some(instance) => {
                instance.prepare()?;
                let lock = instance.lock()?;
                check_pinned_maps(instance, *ring_size)?;
                Some(lock)
            }
            None => None,
        };
        // Wake the reader once an eighth of the ring waits; a timer drains the rest.
        let wakeup = u64::from(*ring_size / 8);
        let policy = *on_ring_full as u8;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("RECORDS", *ring_size)
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
        Ok(Self { ebpf, pins })
    }

    /// The pinned instance, with [`load_pinned`](Self::load_pinned).
    pub fn pinned(&self) -> Option<&Instance> {
        self.pins.as_ref().map(|pins| &pins.instance)
    }

    /// Fails when the pinned services map already holds other services than
    /// `services` (ids included): a restarted daemon must track what its
    /// predecessor tracked, or the kernel's flows and the journal would disagree.
    pub fn check_pinned_services(&self, services: &[Service]) -> Result<(), CaptureError> {
        let Some(Pins { instance, .. }) = &self.pins else {
            return Ok(());
        };
        let map: HashMap<_, ServiceKey, ServiceValue> = self.map("SERVICES")?;
        let mut pinned = map
            .iter()
            .map(|entry| {
                entry.map(|(key, value)| Service {
                    id: value.id,
                    addr: socket_addr(key.addr, key.family, key.port),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error("SERVICES"))?;
        if pinned.is_empty() {
            return Ok(());
        }
        pinned.sort_by_key(|service| service.id);
        let mut asked = services.to_vec();
        asked.sort_by_key(|service| service.id);
        if pinned == asked {
            return Ok(());
        }
        let describe = |services: &[Service]| {
            let names: Vec<String> = services.iter().map(ToString::to_string).collect();
            names.join(", ")
        };
        Err(PinningError::Services {
            name: instance.name().to_owned(),
            pinned: describe(&pinned),
            asked: describe(&asked),
        }
        .into())
    }

    /// Fails when links are pinned and they attach other interfaces or hooks
    /// than `asked` (interface, ingress, egress) would. `xdp` (native where
    /// possible) accepts a pinned native or generic XDP link.
    pub fn check_pinned_links(
        &self,
        asked: &[(&str, IngressHook, EgressHook)],
    ) -> Result<(), CaptureError> {
        let Some(Pins { instance, .. }) = &self.pins else {
            return Ok(());
        };
        let links = instance.links()?;
        if links.is_empty() {
            return Ok(());
        }
        let mut pinned: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for link in &links {
            pinned.entry(&link.iface).or_default().push(link.hook);
        }
        let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (iface, ingress, egress) in asked {
            let hooks = ingress_hook_name(*ingress)
                .into_iter()
                .chain((*egress == EgressHook::Tc).then_some("tc-egress"));
            wanted.entry(iface).or_default().extend(hooks);
        }
        wanted.retain(|_, hooks| !hooks.is_empty());
        for hooks in pinned.values_mut().chain(wanted.values_mut()) {
            hooks.sort_unstable();
            hooks.dedup();
        }
        // Sorted, `tc-egress` comes before any ingress hook name, so the hooks pair up.
        let fits = pinned.len() == wanted.len()
            && wanted.iter().all(|(iface, hooks)| {
                pinned.get(iface).is_some_and(|have| {
                    have.len() == hooks.len()
                        && hooks.iter().zip(have).all(|(want, have)| {
                            want == have || (*want == "xdp" && have.starts_with("xdp-"))
                        })
                })
            });
        if fits {
            return Ok(());
        }
        Err(PinningError::Interfaces {
            name: instance.name().to_owned(),
            pinned: describe_hooks(&pinned),
            asked: describe_hooks(&wanted),
        }
        .into())
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
            IngressHook::Xdp => match self.pinned_xdp_mode(iface) {
                Some(mode) => self.attach_xdp(iface, mode)?,
                None => self.attach_xdp_auto(iface)?,
            },
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

    /// The mode of an XDP link pinned for `iface`, if there is one.
    fn pinned_xdp_mode(&self, iface: &str) -> Option<XdpMode> {
        let Pins { instance, .. } = self.pins.as_ref()?;
        [
            ("xdp-native", XdpMode::Driver),
            ("xdp-generic", XdpMode::Skb),
        ]
        .into_iter()
        .find(|(hook, _)| instance.link_path(iface, hook).exists())
        .map(|(_, mode)| mode)
    }

    /// Attaches XDP to `iface`, or with pins, takes over the pinned link (the
    /// program is swapped in atomically) or pins the new one.
    fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<&'static str, CaptureError> {
        let name = match mode {
            XdpMode::Skb => "xdp-generic",
            _ => "xdp-native",
        };
        let pinned = self.open_pinned_link(iface, name)?;
        let pinning = self.pins.is_some();
        let program: &mut Xdp = self.program(XDP)?;
        let id = match pinned {
            Some((link, path)) => {
                let link =
                    XdpLink::try_from(link).map_err(link_error(iface, name, "taking over"))?;
                match program.attach_to_link(link) {
                    Err(err) if severed(&err) => {
                        unpin_severed(&path, iface, name)?;
                        program.attach(iface, mode)
                    }
                    result => result,
                }
            }
            None => program.attach(iface, mode),
        }
        .map_err(attach_error(XDP, iface, name))?;
        if pinning {
            let link = program
                .take_link(id)
                .map_err(attach_error(XDP, iface, name))?;
            let link = FdLink::try_from(link).map_err(link_error(iface, name, "pinning"))?;
            self.keep_link(iface, name, link)?;
        }
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
        let pinned = self.open_pinned_link(iface, mode)?;
        let pinning = self.pins.is_some();
        let program: &mut SchedClassifier = self.program(name)?;
        let id = match pinned {
            Some((link, path)) => {
                let link = SchedClassifierLink::try_from(link).map_err(link_error(
                    iface,
                    mode,
                    "taking over",
                ))?;
                match program.attach_to_link(link) {
                    Err(err) if severed(&err) => {
                        unpin_severed(&path, iface, mode)?;
                        program.attach(iface, attach_type)
                    }
                    result => result,
                }
            }
            None => program.attach(iface, attach_type),
        }
        .map_err(attach_error(name, iface, mode))?;
        if pinning {
            let link = program
                .take_link(id)
                .map_err(attach_error(name, iface, mode))?;
            let link = FdLink::try_from(link).map_err(link_error(iface, mode, "pinning"))?;
            self.keep_link(iface, mode, link)?;
        }
        Ok(mode)
    }

    /// The link pinned for `hook` on `iface` and its pin path, when pinning and
    /// there is one.
    fn open_pinned_link(
        &self,
        iface: &str,
        hook: &'static str,
    ) -> Result<Option<(FdLink, PathBuf)>, CaptureError> {
        let Some(Pins { instance, .. }) = &self.pins else {
            return Ok(None);
        };
        let path = instance.link_path(iface, hook);
        if !path.exists() {
            return Ok(None);
        }
        let link = PinnedLink::from_pin(&path).map_err(link_error(iface, hook, "opening"))?;
        tracing::info!(iface, hook, path = %path.display(), "taking over the pinned link");
        Ok(Some((FdLink::from(link), path)))
    }

    /// Holds `link` for as long as this capture lives, pinning it first unless
    /// it came from its pin.
    fn keep_link(
        &mut self,
        iface: &str,
        hook: &'static str,
        link: FdLink,
    ) -> Result<(), CaptureError> {
        let Some(Pins {
            instance, links, ..
        }) = &mut self.pins
        else {
            return Ok(());
        };
        let path = instance.link_path(iface, hook);
        let link = if path.exists() {
            link
        } else {
            link.pin(&path)
                .map_err(link_error(iface, hook, "pinning"))?
                .into()
        };
        links.push(link);
        Ok(())
    }

    /// The program `name`, loaded into the kernel on first use (and with pins,
    /// pinned, replacing the pin of an earlier daemon's program).
    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, CaptureError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
        P: Loadable + 'a,
    {
        let Self { ebpf, pins } = self;
        let program = ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        let program: &mut P = program.try_into().map_err(program_error(name))?;
        let loaded = program.load_once().map_err(program_error(name))?;
        if let (true, Some(Pins { instance, .. })) = (loaded, pins) {
            pin_program(program, name, &instance.program_path(name))?;
        }
        Ok(program)
    }

    /// Detaches every program from every interface (the maps stay readable).
    /// With pins, only links whose pins are gone detach: the others stay
    /// attached through their pins.
    pub fn detach(&mut self) -> Result<(), CaptureError> {
        if let Some(Pins { links, .. }) = &mut self.pins {
            links.clear();
        }
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

/// Wraps an attach failure with the program, interface and mode.
fn attach_error(
    program: &'static str,
    iface: &str,
    mode: &'static str,
) -> impl FnOnce(ProgramError) -> CaptureError {
    let iface = iface.to_owned();
    move |source| CaptureError::Attach {
        program,
        iface,
        mode,
        source: Box::new(source),
    }
}

/// Whether a link update failed because the link is severed: its interface
/// was deleted, and the kernel detached it (`ENOLINK` from `BPF_LINK_UPDATE`,
/// see `tcx_link_update` and `bpf_xdp_link_update` in the kernel).
fn severed(err: &ProgramError) -> bool {
    matches!(err, ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(crate::sys::errno::ENOLINK))
}

/// Removes the pin of a severed link, so a fresh link is attached and pinned
/// in its place. Segments on the interface between its deletion and now were
/// not captured: the connections through it broke with it.
fn unpin_severed(path: &Path, iface: &str, hook: &'static str) -> Result<(), CaptureError> {
    tracing::warn!(
        iface,
        hook,
        "the pinned link is severed (its interface was deleted); attaching a new one"
    );
    std::fs::remove_file(path).map_err(link_error(iface, hook, "unpinning"))
}

/// Wraps a failure to open, take over or pin a link.
fn link_error<E: std::error::Error + Send + Sync + 'static>(
    iface: &str,
    hook: &'static str,
    what: &'static str,
) -> impl FnOnce(E) -> CaptureError {
    let iface = iface.to_owned();
    move |source| CaptureError::Link {
        iface,
        hook,
        what,
        source: Box::new(source),
    }
}

/// Pins `program` at `path`, replacing an earlier daemon's pin there. The
/// links keep the earlier program until they are updated, so this is no gap.
fn pin_program<P: Loadable>(
    program: &mut P,
    name: &'static str,
    path: &Path,
) -> Result<(), CaptureError> {
    let pin_error = |source| CaptureError::ProgramPin {
        program: name,
        path: path.to_owned(),
        source: Box::new(source),
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(pin_error(PinError::SyscallError(aya::sys::SyscallError {
                call: "unlink",
                io_error: err,
            })));
        }
    }
    program.pin_at(path).map_err(pin_error)
}

/// The ingress hook name a link pin would carry; `xdp` for XDP in either mode.
fn ingress_hook_name(hook: IngressHook) -> Option<&'static str> {
    match hook {
        IngressHook::Xdp => Some("xdp"),
        IngressHook::XdpNative => Some("xdp-native"),
        IngressHook::XdpGeneric => Some("xdp-generic"),
        IngressHook::Tc => Some("tc-ingress"),
        IngressHook::None => None,
    }
}

/// `gw-c (tc-egress, tc-ingress), gw-s (...)`, or `nothing`.
fn describe_hooks(hooks: &BTreeMap<&str, Vec<&str>>) -> String {
    if hooks.is_empty() {
        return "nothing".to_owned();
    }
    let parts: Vec<String> = hooks
        .iter()
        .map(|(iface, hooks)| format!("{iface} ({})", hooks.join(", ")))
        .collect();
    parts.join(", ")
}

/// Fails when a map pinned under `instance` does not fit this binary's
/// programs: other key or value sizes (another connmirror version pinned it),
/// or a ring of another size than `ring_size`.
fn check_pinned_maps(instance: &Instance, ring_size: u32) -> Result<(), CaptureError> {
    let size = |n: usize| n as u32;
    // (map, key size, value size, max entries); 0: not checked.
    let expected: [(&'static str, u32, u32, u32); 4] = [
        ("RECORDS", 0, 0, 0),
        (
            "FLOWS",
            size(size_of::<FlowKey>()),
            size(size_of::<FlowValue>()),
            0,
        ),
        (
            "SERVICES",
            size(size_of::<ServiceKey>()),
            size(size_of::<ServiceValue>()),
            0,
        ),
        ("COUNTERS", 4, 8, COUNTER_SLOTS),
    ];
    for (map, key, value, entries) in expected {
        let path = instance.map_path(map);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(map_error(map))?;
        let layout = |field, pinned, expected| {
            if pinned == expected || expected == 0 && field == "max entries" {
                Ok(())
            } else {
                Err(PinningError::MapLayout {
                    name: instance.name().to_owned(),
                    map,
                    field,
                    pinned,
                    expected,
                })
            }
        };
        layout("key size", info.key_size(), key)?;
        layout("value size", info.value_size(), value)?;
        layout("max entries", info.max_entries(), entries)?;
        if map == "RECORDS" && info.max_entries() != ring_size {
            return Err(PinningError::RingSize {
                name: instance.name().to_owned(),
                pinned: info.max_entries(),
                asked: ring_size,
            }
            .into());
        }
    }
    Ok(())
}

/// Programs that are loaded into the kernel once, then attached many times.
trait Loadable {
    /// Loads the program unless it is loaded; true when it was loaded now.
    fn load_once(&mut self) -> Result<bool, ProgramError>;
    /// Pins the program at `path`.
    fn pin_at(&mut self, path: &Path) -> Result<(), PinError>;
}

impl Loadable for Xdp {
    fn load_once(&mut self) -> Result<bool, ProgramError> {
        if self.fd().is_ok() {
            Ok(false)
        } else {
            self.load().map(|()| true)
        }
    }

    fn pin_at(&mut self, path: &Path) -> Result<(), PinError> {
        self.pin(path)
    }
}

impl Loadable for SchedClassifier {
    fn load_once(&mut self) -> Result<bool, ProgramError> {
        if self.fd().is_ok() {
            Ok(false)
        } else {
            self.load().map(|()| true)
        }
    }

    fn pin_at(&mut self, path: &Path) -> Result<(), PinError> {
        self.pin(path)
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
    crate::sys::interface::index(iface).is_some()
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
mod tests;
