//! Choosing the attach points when the command line leaves them to connmirror
//! (`--ingress auto` and `--egress auto`, the defaults), and saying why.
//!
//! Ingress, per interface, by its driver (`ETHTOOL_GDRVINFO`, as `ethtool -i`
//! prints it): TC on virtual links, where native XDP costs more than it saves
//! (on a veth it turns TSO off on the peer, ~80 % of the throughput in
//! bench/RESULTS.md; virtio_net turns the guest's receive offloads off);
//! native XDP on NICs whose drivers run it well; TC on other NICs.
//!
//! Egress: on a gateway, ingress capture on every link sees each forwarded
//! segment once, and TC egress would see it a second time for nothing. Egress
//! is left off only when that holds: every interface that is up (loopback
//! aside) has ingress capture, and no service address is local (a local
//! service's segments leave through egress without passing any ingress hook).
//!
//! A pinned instance's links win over both rules: a restarted daemon takes
//! over what its predecessor attached.

use std::{collections::BTreeSet, net::SocketAddr};

use serde::Serialize;

use crate::{
    capture::{Capture, CaptureError, EgressHook, IngressHook, Pins},
    sys::interface,
};

/// Where capture attaches on one interface, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachPoint {
    /// The interface.
    pub iface: String,
    /// The ingress hook as attached (`xdp-native`, `xdp-generic`, `tc`,
    /// `none`); before attaching, the one chosen.
    pub ingress: &'static str,
    /// Why that ingress hook.
    pub ingress_why: String,
    /// The egress hook (`tc` or `none`).
    pub egress: &'static str,
    /// Why that egress hook.
    pub egress_why: String,
    /// The ingress hook to attach ([`IngressHook::Auto`] resolved).
    #[serde(skip)]
    pub ingress_hook: IngressHook,
    /// The egress hook to attach ([`EgressHook::Auto`] resolved).
    #[serde(skip)]
    pub egress_hook: EgressHook,
}

/// Drivers of virtual links, with the name the log uses and what native XDP
/// would cost there.
const VIRTUAL: &[(&str, &str, &str)] = &[
    ("veth", "veth", "native XDP would turn TSO off on the peer"),
    (
        "virtio_net",
        "virtio_net",
        "native XDP would turn the guest's receive offloads off",
    ),
    ("bridge", "bridge", VIRTUAL_COST),
    ("802.1Q VLAN Driver", "vlan", VIRTUAL_COST),
    ("macvlan", "macvlan", VIRTUAL_COST),
    ("ipvlan", "ipvlan", VIRTUAL_COST),
    ("tun", "tun", VIRTUAL_COST),
    ("dummy", "dummy", VIRTUAL_COST),
    ("bonding", "bond", VIRTUAL_COST),
    ("team", "team", VIRTUAL_COST),
    ("vxlan", "vxlan", VIRTUAL_COST),
    ("geneve", "geneve", VIRTUAL_COST),
    ("netkit", "netkit", VIRTUAL_COST),
    ("ifb", "ifb", VIRTUAL_COST),
    ("vrf", "vrf", VIRTUAL_COST),
    ("wireguard", "wireguard", VIRTUAL_COST),
];

/// What native XDP costs on most virtual links.
const VIRTUAL_COST: &str = "a virtual link, where XDP runs without driver support";

/// Drivers whose native XDP runs at line rate with offloads kept.
const NATIVE_XDP: &[&str] = &[
    "mlx5_core",
    "mlx4_en",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "nfp",
    "qede",
    "ena",
    "gve",
    "sfc",
    "mana",
    "idpf",
];

/// The ingress hook `auto` picks for an interface driven by `driver`, and why.
pub(super) fn auto_ingress(driver: &str) -> (IngressHook, String) {
    if let Some((_, name, cost)) = VIRTUAL.iter().find(|(d, ..)| *d == driver) {
        return (IngressHook::Tc, format!("{name}: {cost}"));
    }
    if NATIVE_XDP.contains(&driver) {
        return (
            IngressHook::Xdp,
            format!("{driver}: a NIC whose driver runs native XDP"),
        );
    }
    (
        IngressHook::Tc,
        format!("{driver}: native XDP not known to run well with this driver"),
    )
}

/// Whether `driver` drives a virtual link (see [`VIRTUAL`]).
pub(super) fn is_virtual(driver: &str) -> bool {
    VIRTUAL.iter().any(|(d, ..)| *d == driver)
}

/// The egress hook `auto` picks: `none` when ingress on `captured` sees
/// every forwarded segment (every interface in `up` has ingress capture) and
/// no service is local (`local`); else `tc`. With why.
pub(super) fn auto_egress(
    captured: &BTreeSet<&str>,
    up: &[String],
    local: Option<SocketAddr>,
) -> (EgressHook, String) {
    if let Some(service) = local {
        return (
            EgressHook::Tc,
            format!("service {service} is local: its segments leave through egress only"),
        );
    }
    let missed: Vec<&str> = up
        .iter()
        .map(String::as_str)
        .filter(|name| *name != "lo" && !captured.contains(name))
        .collect();
    if !missed.is_empty() {
        return (
            EgressHook::Tc,
            format!(
                "{} up without ingress capture: what it forwards out of a captured link is \
                 seen only at egress",
                missed.join(", ")
            ),
        );
    }
    let links: Vec<&str> = captured.iter().copied().collect();
    (
        EgressHook::None,
        format!(
            "ingress on every link ({}) sees each forwarded segment once, and no service \
             address is local",
            links.join(", ")
        ),
    )
}

/// How the log and the report name an ingress hook.
pub(super) fn ingress_name(hook: IngressHook) -> &'static str {
    match hook {
        IngressHook::Auto | IngressHook::Xdp => "xdp",
        IngressHook::XdpNative => "xdp-native",
        IngressHook::XdpGeneric => "xdp-generic",
        IngressHook::Tc => "tc",
        IngressHook::None => "none",
    }
}

/// How the log and the report name an egress hook.
fn egress_name(hook: EgressHook) -> &'static str {
    match hook {
        EgressHook::Auto => "auto",
        EgressHook::Tc => "tc",
        EgressHook::None => "none",
    }
}

impl Capture {
    /// The attach points for `ifaces` (each with the ingress hook it names, if
    /// any), `ingress` for the others, and `egress`, with `auto` resolved.
    /// `services` are the tracked addresses (a local one keeps TC egress).
    pub fn plan(
        &self,
        ifaces: &[(&str, Option<IngressHook>)],
        ingress: IngressHook,
        egress: EgressHook,
        services: &[SocketAddr],
    ) -> Result<Vec<AttachPoint>, CaptureError> {
        let pinned = self.pinned_hooks()?;
        let mut points: Vec<AttachPoint> = ifaces
            .iter()
            .map(|(iface, own)| {
                let (hook, why) = match (own, ingress) {
                    (Some(IngressHook::Auto), _) | (None, IngressHook::Auto) => {
                        self.auto_ingress_for(iface, &pinned)
                    }
                    (Some(hook), _) => (
                        *hook,
                        format!("asked: --iface {iface}:{}", ingress_name(*hook)),
                    ),
                    (None, hook) => (hook, format!("asked: --ingress {}", ingress_name(hook))),
                };
                AttachPoint {
                    iface: (*iface).to_owned(),
                    ingress: ingress_name(hook),
                    ingress_why: why,
                    egress: "",
                    egress_why: String::new(),
                    ingress_hook: hook,
                    egress_hook: egress,
                }
            })
            .collect();
        let (hook, why) = match egress {
            EgressHook::Auto if !pinned.is_empty() => {
                let tc = pinned.iter().any(|(_, hook)| *hook == "tc-egress");
                let hook = if tc { EgressHook::Tc } else { EgressHook::None };
                (hook, "pinned: the instance's links".to_owned())
            }
            EgressHook::Auto => auto_egress_for(&points, services)?,
            hook => (hook, format!("asked: --egress {}", egress_name(hook))),
        };
        for point in &mut points {
            point.egress_hook = hook;
            point.egress = egress_name(hook);
            point.egress_why.clone_from(&why);
        }
        Ok(points)
    }

    /// `auto` ingress for `iface`: the pinned link's hook, else by driver.
    fn auto_ingress_for(
        &self,
        iface: &str,
        pinned: &[(String, &'static str)],
    ) -> (IngressHook, String) {
        let pin = pinned
            .iter()
            .find(|(name, hook)| name == iface && *hook != "tc-egress");
        if let Some((_, hook)) = pin {
            let hook = match *hook {
                "xdp-native" => IngressHook::XdpNative,
                "xdp-generic" => IngressHook::XdpGeneric,
                _ => IngressHook::Tc,
            };
            return (hook, "pinned: the instance's link".to_owned());
        }
        match interface::driver(iface) {
            Ok(driver) => auto_ingress(&driver),
            Err(err) => (IngressHook::Tc, format!("driver unknown ({err})")),
        }
    }

    /// The pinned instance's links as (interface, hook); none without pins.
    fn pinned_hooks(&self) -> Result<Vec<(String, &'static str)>, CaptureError> {
        let Some(Pins { instance, .. }) = &self.pins else {
            return Ok(Vec::new());
        };
        Ok(instance
            .links()?
            .into_iter()
            .map(|link| (link.iface, link.hook))
            .collect())
    }
}

/// `auto` egress for `points` (ingress resolved): looks up which interfaces
/// are up and which services are local, then [`auto_egress`].
fn auto_egress_for(
    points: &[AttachPoint],
    services: &[SocketAddr],
) -> Result<(EgressHook, String), CaptureError> {
    let captured: BTreeSet<&str> = points
        .iter()
        .filter(|point| point.ingress_hook != IngressHook::None)
        .map(|point| point.iface.as_str())
        .collect();
    let mut up = Vec::new();
    for name in interface::names().map_err(CaptureError::Interfaces)? {
        if interface::is_up(&name).map_err(CaptureError::Interfaces)? {
            up.push(name);
        }
    }
    let mut local = None;
    for service in services {
        if interface::address_is_local(service.ip()).map_err(CaptureError::Interfaces)? {
            local = Some(*service);
            break;
        }
    }
    Ok(auto_egress(&captured, &up, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_links_get_tc_and_say_why() {
        assert_eq!(
            auto_ingress("veth"),
            (
                IngressHook::Tc,
                "veth: native XDP would turn TSO off on the peer".to_owned()
            )
        );
        assert_eq!(
            auto_ingress("802.1Q VLAN Driver"),
            (
                IngressHook::Tc,
                "vlan: a virtual link, where XDP runs without driver support".to_owned()
            )
        );
        assert!(is_virtual("bridge") && !is_virtual("mlx5_core"));
    }

    #[test]
    fn nics_get_native_xdp_only_where_the_driver_does_it_well() {
        assert_eq!(
            auto_ingress("mlx5_core"),
            (
                IngressHook::Xdp,
                "mlx5_core: a NIC whose driver runs native XDP".to_owned()
            )
        );
        assert_eq!(
            auto_ingress("e1000"),
            (
                IngressHook::Tc,
                "e1000: native XDP not known to run well with this driver".to_owned()
            )
        );
    }

    #[test]
    fn egress_is_off_only_when_ingress_sees_every_forwarded_segment() {
        let captured: BTreeSet<&str> = ["gw-c", "gw-s"].into();
        let up = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            auto_egress(&captured, &up(&["lo", "gw-c", "gw-s"]), None),
            (
                EgressHook::None,
                "ingress on every link (gw-c, gw-s) sees each forwarded segment once, and no \
                 service address is local"
                    .to_owned()
            )
        );
        assert_eq!(
            auto_egress(&captured, &up(&["lo", "gw-c", "gw-s", "eth9"]), None).0,
            EgressHook::Tc
        );
        let local: SocketAddr = "198.18.1.2:7000".parse().unwrap();
        assert_eq!(
            auto_egress(&captured, &up(&["gw-c", "gw-s"]), Some(local)),
            (
                EgressHook::Tc,
                "service 198.18.1.2:7000 is local: its segments leave through egress only"
                    .to_owned()
            )
        );
    }
}
