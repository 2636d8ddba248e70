//! Reading and writing the maps the capture programs share with the daemon:
//! the services tracked (and their modes), the ring buffer, the kernel
//! counters, the reader's deadline and the kernel's flow state.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use connmirror_common::{
    Counter, FlowFlags, FlowKey, FlowValue, Malformed, ServiceKey, ServiceValue,
    counter::COUNTER_SLOTS,
};

use crate::{
    capture::{Capture, CaptureError, error::map_error},
    service::Service,
    sys::process::monotonic_ns,
};

impl Capture {
    /// Adds `service` to the services map so its segments are captured, from the
    /// next packet on: the map is shared with the running programs, so services
    /// can be added and removed while capture runs.
    pub fn track(&mut self, service: &Service) -> Result<(), CaptureError> {
        self.track_skipping(service, 0)
    }

    /// Like [`track`](Self::track), leaving out of the records the payload
    /// `skip` names ([`PayloadSkip`](connmirror_common::PayloadSkip) bits).
    pub fn track_skipping(&mut self, service: &Service, skip: u32) -> Result<(), CaptureError> {
        let value = ServiceValue {
            id: service.id,
            mode: 0,
            skip,
        };
        self.set_value(service, value)
    }

    /// Sets `service`'s [`ServiceMode`](connmirror_common::ServiceMode) bits (zero: capture),
    /// keeping the payload it skips. The programs read
    /// the map on every packet, so the next segment already sees the new mode:
    /// this is how a takeover quiesces clients and fences the old primary.
    pub fn set_mode(&mut self, service: &Service, mode: u32) -> Result<(), CaptureError> {
        let map: HashMap<_, ServiceKey, ServiceValue> = self.map("SERVICES")?;
        let skip = match map.get(&service.key(), 0) {
            Ok(value) => value.skip,
            Err(aya::maps::MapError::KeyNotFound) => 0,
            Err(err) => return Err(map_error("SERVICES")(err)),
        };
        let value = ServiceValue {
            id: service.id,
            mode,
            skip,
        };
        self.set_value(service, value)
    }

    fn set_value(&mut self, service: &Service, value: ServiceValue) -> Result<(), CaptureError> {
        let mut map: HashMap<_, ServiceKey, ServiceValue> = self.map_mut("SERVICES")?;
        map.insert(service.key(), value, 0)
            .map_err(map_error("SERVICES"))
    }

    /// Removes `service` from the services map: its segments pass uncaptured from
    /// the next packet on. Flows already in the kernel's flow map stay there
    /// until the daemon forgets them ([`forget_flows`](Self::forget_flows)).
    pub fn untrack(&mut self, service: &Service) -> Result<(), CaptureError> {
        let mut map: HashMap<_, ServiceKey, ServiceValue> = self.map_mut("SERVICES")?;
        map.remove(&service.key()).map_err(map_error("SERVICES"))
    }

    /// Takes the ring buffer out of the object, for the reader.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map("RECORDS")
            .ok_or(CaptureError::MissingMap("RECORDS"))?;
        RingBuf::try_from(map).map_err(map_error("RECORDS"))
    }

    /// Takes the reader's deadline out of the object and sets it `timeout`
    /// from now (`None`: no deadline, the `drop` policy drops for ever). Set
    /// it before attaching; then [`ReaderDeadline::renew`] keeps it ahead.
    pub fn take_reader_deadline(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<ReaderDeadline, CaptureError> {
        let map = self
            .ebpf
            .take_map("READER")
            .ok_or(CaptureError::MissingMap("READER"))?;
        let map = Array::try_from(map).map_err(map_error("READER"))?;
        let mut deadline = ReaderDeadline {
            map,
            timeout_ns: timeout.map(|t| t.as_nanos() as u64),
            renewed_ns: 0,
        };
        deadline.set(monotonic_ns())?;
        Ok(deadline)
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

    /// Gap counts of every flow still in the kernel's flow map.
    pub fn flow_gaps(&self) -> Result<StdHashMap<FlowKey, u32>, CaptureError> {
        let map: HashMap<_, FlowKey, FlowValue> = self.map("FLOWS")?;
        map.iter()
            .map(|entry| entry.map(|(key, value)| (key, value.gaps)))
            .collect::<Result<_, _>>()
            .map_err(map_error("FLOWS"))
    }

    /// Removes `keys` from the kernel's flow map: flows the daemon no longer
    /// holds (closed and pruned, or evicted). Returns how many were there.
    pub fn forget_flows(&mut self, keys: &[FlowKey]) -> Result<usize, CaptureError> {
        let mut map: HashMap<_, FlowKey, FlowValue> = self.map_mut("FLOWS")?;
        let mut removed = 0;
        for key in keys {
            match map.remove(key) {
                Ok(()) => removed += 1,
                Err(err) if is_missing(&err) => {}
                Err(err) => return Err(map_error("FLOWS")(err)),
            }
        }
        Ok(removed)
    }

    /// Marks `keys` refused in the kernel's flow map
    /// ([`FlowFlags::REFUSED`]): the programs pass their segments
    /// uncaptured from the next one on. A key the map no longer holds is
    /// left out. Returns how many were marked.
    pub fn refuse_flows(&mut self, keys: &[FlowKey]) -> Result<usize, CaptureError> {
        const BPF_EXIST: u64 = 2;
        let mut map: HashMap<_, FlowKey, FlowValue> = self.map_mut("FLOWS")?;
        let mut marked = 0;
        for key in keys {
            let mut value = match map.get(key, 0) {
                Ok(value) => value,
                Err(err) if is_missing(&err) => continue,
                Err(err) => return Err(map_error("FLOWS")(err)),
            };
            value.flags |= FlowFlags::REFUSED;
            match map.insert(key, value, BPF_EXIST) {
                Ok(()) => marked += 1,
                Err(err) if is_missing(&err) => {}
                Err(err) => return Err(map_error("FLOWS")(err)),
            }
        }
        Ok(marked)
    }

    /// A handle of its own on the kernel's flow map, for a thread that walks
    /// it off the event loop ([`FlowWalker::walk`]).
    pub fn flow_walker(&self) -> Result<FlowWalker, CaptureError> {
        let map = self
            .ebpf
            .map("FLOWS")
            .ok_or(CaptureError::MissingMap("FLOWS"))?;
        let aya::maps::Map::HashMap(data) = map else {
            return Err(CaptureError::MissingMap("FLOWS"));
        };
        let id = data.info().map_err(map_error("FLOWS"))?.id();
        let data = MapData::from_id(id).map_err(map_error("FLOWS"))?;
        let map = HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_error("FLOWS"))?;
        Ok(FlowWalker { map })
    }

    /// The map `name`, read-only, as `M`.
    pub(super) fn map<'a, M>(&'a self, name: &'static str) -> Result<M, CaptureError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map(name).ok_or(CaptureError::MissingMap(name))?;
        M::try_from(map).map_err(map_error(name))
    }

    /// The map `name`, writable, as `M`.
    pub(super) fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, CaptureError>
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

/// How long the ring's reader may go without reading before the programs
/// count it gone: past its deadline a full ring passes segments under the
/// `drop` policy too (counted as [`Counter::UnreadPasses`], the flows
/// gapped), so a pinned capture whose daemon died or stopped does not hold
/// the traffic back for ever. The daemon renews it as it reads.
pub struct ReaderDeadline {
    map: Array<MapData, u64>,
    /// `None`: no deadline.
    timeout_ns: Option<u64>,
    /// When it was last set (`CLOCK_MONOTONIC` ns).
    renewed_ns: u64,
}

impl ReaderDeadline {
    /// Moves the deadline to the timeout from now, if a tenth of the timeout
    /// has gone by since it was last moved (one map write per tenth).
    pub fn renew(&mut self) -> Result<(), CaptureError> {
        let now = monotonic_ns();
        match self.timeout_ns {
            Some(timeout) if now.saturating_sub(self.renewed_ns) >= timeout / 10 => self.set(now),
            _ => Ok(()),
        }
    }

    fn set(&mut self, now: u64) -> Result<(), CaptureError> {
        let deadline = self.timeout_ns.map_or(0, |timeout| now + timeout);
        self.map.set(0, deadline, 0).map_err(map_error("READER"))?;
        self.renewed_ns = now;
        Ok(())
    }
}

/// The kernel's flow map, walked whole (one or two system calls per entry:
/// about 130 ms for 131,072 entries, so not on the event loop).
pub struct FlowWalker {
    map: HashMap<MapData, FlowKey, FlowValue>,
}

impl FlowWalker {
    /// Counts the entries, and removes those the daemon does not hold
    /// (`holds` says no) that were already `suspects` at the previous walk:
    /// refused flows that began to close ([`FlowFlags::CLOSING`]), and flows
    /// whose records the daemon ignored. Refused flows still open stay.
    /// `suspects` becomes this walk's. Returns (entries found, removed).
    pub fn walk(
        &mut self,
        holds: impl Fn(&FlowKey) -> bool,
        suspects: &mut HashSet<FlowKey>,
    ) -> Result<(usize, usize), CaptureError> {
        let mut found = HashSet::new();
        let mut entries = 0;
        for entry in self.map.iter() {
            let (key, value) = match entry {
                Ok(entry) => entry,
                // Removed while the walk passed it.
                Err(err) if is_missing(&err) => continue,
                Err(err) => return Err(map_error("FLOWS")(err)),
            };
            entries += 1;
            let refused = value.flags & FlowFlags::REFUSED != 0;
            if !holds(&key) && (!refused || value.flags & FlowFlags::CLOSING != 0) {
                found.insert(key);
            }
        }
        let gone: HashSet<FlowKey> = found.intersection(suspects).copied().collect();
        *suspects = found.difference(&gone).copied().collect();
        let mut removed = 0;
        for key in &gone {
            match self.map.remove(key) {
                Ok(()) => removed += 1,
                Err(err) if is_missing(&err) => {}
                Err(err) => return Err(map_error("FLOWS")(err)),
            }
        }
        Ok((entries - removed, removed))
    }
}

/// Whether a map call failed because the key is not there (`ENOENT`).
fn is_missing(err: &aya::maps::MapError) -> bool {
    match err {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(err) => err.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
