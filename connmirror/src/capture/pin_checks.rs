//! Whether a pinned instance fits this daemon: its maps' layout and ring size,
//! the services it tracks and the hooks its links attach. A restarted daemon
//! must take over what its predecessor ran, not something else.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapInfo};
use connmirror_common::{
    FlowKey, FlowValue, ServiceKey, ServiceValue, counter::COUNTER_SLOTS, record::RECORD_LAYOUT,
};

use crate::{
    capture::{
        Capture, CaptureError, EgressHook, IngressHook, Pins,
        error::map_error,
        pinning::{Instance, PinningError},
    },
    service::{Service, socket_addr},
};

impl Capture {
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
                .chain((*egress != EgressHook::None).then_some("tc-egress"));
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
}

/// The ingress hook name a link pin would carry; `xdp` for XDP in either mode.
fn ingress_hook_name(hook: IngressHook) -> Option<&'static str> {
    match hook {
        IngressHook::Xdp | IngressHook::Auto => Some("xdp"),
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
/// programs: records of another layout, other key or value sizes (another
/// connmirror version pinned it), a ring of another size than `ring_size`,
/// or a flow map of another size than `max_flows`.
pub(super) fn check_pinned_maps(
    instance: &Instance,
    ring_size: u32,
    max_flows: u32,
) -> Result<(), CaptureError> {
    check_record_layout(instance)?;
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
        let (pinned, name) = (info.max_entries(), instance.name().to_owned());
        if map == "RECORDS" && pinned != ring_size {
            let asked = ring_size;
            return Err(PinningError::RingSize {
                name,
                pinned,
                asked,
            }
            .into());
        }
        if map == "FLOWS" && pinned != max_flows {
            let asked = max_flows;
            return Err(PinningError::MaxFlows {
                name,
                pinned,
                asked,
            }
            .into());
        }
    }
    Ok(())
}

/// Fails when the ring pinned under `instance` is written by programs of
/// another [`RECORD_LAYOUT`]: the `LAYOUT` map's entry count says which, and
/// a ring pinned without it is layout 1.
fn check_record_layout(instance: &Instance) -> Result<(), CaptureError> {
    if !instance.map_path("RECORDS").exists() {
        return Ok(());
    }
    let path = instance.map_path("LAYOUT");
    let pinned = match path.exists() {
        true => MapInfo::from_pin(&path)
            .map_err(map_error("LAYOUT"))?
            .max_entries(),
        false => 1,
    };
    if pinned == RECORD_LAYOUT {
        return Ok(());
    }
    Err(PinningError::RecordLayout {
        name: instance.name().to_owned(),
        pinned,
        expected: RECORD_LAYOUT,
    }
    .into())
}
