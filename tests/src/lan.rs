//! One LAN for cluster mode: a client, a primary and standbys, each in a
//! namespace of its own, joined by a bridge (in a namespace of its own too),
//! all in 198.18.2.0/24 and fd00:0:0:12::/64 (host N is 198.18.2.N and
//! fd00:0:0:12::N, N in hex). The service address (198.18.2.100) starts on the
//! primary's link and moves with each takeover: the new owner adds it and
//! announces it (gratuitous ARP, `--announce eth0`).
//!
//! ```text
//!  client .2    primary .10 (+ .100)    standby 0 .11    standby 1 .12
//!     eth0          eth0                   eth0             eth0
//!      └──────────────┴──── br0 (switch) ─────┴────────────────┘
//! ```
//!
//! [`Lan::behind_router`] puts the clients behind a router instead (for a
//! mirror on the path that is neither host): the router holds the LAN's .2,
//! the clients 198.18.3.2 and fd00:0:0:13::2 on a link of their own (the
//! router's `cl0`, .1 and ::1), and every host on the LAN routes those
//! prefixes through it.
//!
//! ```text
//!  client 198.18.3.2 ── cl0 router .2 ── br0 ── primary .10, standbys .11, ...
//! ```
//!
//! [`Lan::tapped`] adds a tap's box instead: every frame a host sends into the
//! switch is copied out of a switch link that is no bridge port (`m0`) to the
//! box's [`TAP_IF`]; the box's own `eth0` (.20) is an ordinary port.
//!
//! Dropping it deletes every namespace (and with them every link), then
//! lets the next topology run ([`crate::topology`]'s host lock).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::netns::Netns;
use crate::topology::{Family, HostLock};

/// The host numbers on the LAN: 198.18.2.N and fd00:0:0:12::N (hex).
const CLIENT: u8 = 2;
const PRIMARY: u8 = 10;
/// Standby `i` is `STANDBY + i`.
const STANDBY: u8 = 11;
const SERVICE: u8 = 100;
/// The tap's box ([`Lan::tapped`]).
const TAP: u8 = 20;

/// Every host's interface on the LAN.
pub const LAN_IF: &str = "eth0";

/// The tap's box's interface that receives the copies ([`Lan::tapped`]).
pub const TAP_IF: &str = "tap0";

/// The switch's link that stays down: copies redirected to it are lost
/// ([`Lan::lose_copies`]).
const BLACKHOLE: &str = "bh0";

/// The router's interface towards the clients ([`Lan::behind_router`]).
pub const ROUTER_CLIENT_IF: &str = "cl0";

/// The LAN. Fields drop in order: the hosts, the switch, then the lock.
pub struct Lan {
    /// The clients' namespace.
    pub client: Netns,
    /// The router between the clients and the LAN ([`Lan::behind_router`]).
    pub router: Option<Netns>,
    /// The tap's box ([`Lan::tapped`]).
    pub tap: Option<Netns>,
    /// The primary's.
    pub primary: Netns,
    /// The standbys', in order.
    pub standbys: Vec<Netns>,
    switch: Netns,
    _lock: HostLock,
}

impl Lan {
    /// A client, a primary and `standbys` standbys on one bridge.
    pub fn new(standbys: usize) -> Lan {
        crate::require_root();
        let lock = HostLock::acquire();
        let switch = Netns::new("lan-sw");
        switch.ip(["link", "add", "br0", "type", "bridge"]);
        switch.ip(["link", "set", "br0", "up"]);
        let host = |role: &str, number: u8, port: usize| attach(&switch, role, number, port);
        let client = host("client", CLIENT, 0);
        let primary = host("primary", PRIMARY, 1);
        add_addrs(&primary, LAN_IF, lan_addrs(SERVICE));
        let standbys = (0..standbys)
            .map(|i| host(&format!("standby{i}"), STANDBY + i as u8, 2 + i))
            .collect();
        Lan {
            client,
            router: None,
            tap: None,
            primary,
            standbys,
            switch,
            _lock: lock,
        }
    }

    /// [`Lan::new`] with the clients behind a router: the LAN's client
    /// namespace forwards, and the clients are one hop further.
    pub fn behind_router(standbys: usize) -> Lan {
        let mut lan = Lan::new(standbys);
        let clients = quiet_ipv6(Netns::new("client"));
        let router = std::mem::replace(&mut lan.client, clients);
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv6.conf.all.forwarding", "1");
        veth(&router, ROUTER_CLIENT_IF, (&lan.client, LAN_IF));
        add_addrs(
            &router,
            ROUTER_CLIENT_IF,
            ["198.18.3.1/24", "fd00:0:0:13::1/64"],
        );
        router.ip(["link", "set", ROUTER_CLIENT_IF, "up"]);
        add_addrs(&lan.client, LAN_IF, ["198.18.3.2/24", "fd00:0:0:13::2/64"]);
        lan.client.ip(["link", "set", LAN_IF, "up"]);
        lan.client
            .ip(["route", "add", "default", "via", "198.18.3.1"]);
        lan.client
            .ip(["-6", "route", "add", "default", "via", "fd00:0:0:13::1"]);
        for host in std::iter::once(&lan.primary).chain(&lan.standbys) {
            for family in [Family::V4, Family::V6] {
                let (prefix, via) = match family {
                    Family::V4 => ("198.18.3.0/24", "-4"),
                    Family::V6 => ("fd00:0:0:13::/64", "-6"),
                };
                let router_addr = lan_addr(family, CLIENT).to_string();
                host.ip([via, "route", "add", prefix, "via", &router_addr]);
            }
        }
        lan.router = Some(router);
        lan
    }

    /// [`Lan::new`] with a tap: every frame a host (client, primary,
    /// standby) sends into the switch is also copied (tc `u32 match u32 0 0
    /// action mirred egress mirror`, on its port's ingress) out of the
    /// switch's `m0`, which is no bridge port, to the tap's box. There
    /// [`TAP_IF`] receives the copies and nothing else; the box's own
    /// [`LAN_IF`] (198.18.2.20, fd00:0:0:12::14) is an ordinary, unmirrored
    /// port, for its replication channels.
    pub fn tapped(standbys: usize) -> Lan {
        let mut lan = Lan::new(standbys);
        let tap = attach(&lan.switch, "tap", TAP, 9);
        veth(&lan.switch, "m0", (&tap, TAP_IF));
        lan.switch.ip(["link", "set", "m0", "up"]);
        tc(&lan.switch, &["qdisc", "add", "dev", "m0", "clsact"]);
        // Left down: what is redirected to it is dropped ([`Lan::lose_copies`]).
        veth(&lan.switch, BLACKHOLE, (&lan.switch, "bh1"));
        tap.ip(["link", "set", TAP_IF, "up"]);
        for port in 0..2 + lan.standbys.len() {
            let dev = format!("h{port}");
            tc(&lan.switch, &["qdisc", "add", "dev", &dev, "clsact"]);
            tc(
                &lan.switch,
                &[
                    "filter", "add", "dev", &dev, "ingress", "u32", "match", "u32", "0", "0",
                    "action", "mirred", "egress", "mirror", "dev", "m0",
                ],
            );
        }
        lan.tap = Some(tap);
        lan
    }

    /// The tap loses the copies of every segment from or to `port` (a
    /// client's port) in `family` until [`Lan::keep_copies`]: filters on
    /// `m0`'s egress redirect them to a link that is down, which drops them
    /// (this kernel has no `gact`). The segments themselves are delivered.
    pub fn lose_copies(&self, family: Family, port: u16) {
        let (protocol, header) = match family {
            Family::V4 => ("ip", "ip"),
            Family::V6 => ("ipv6", "ip6"),
        };
        let port = port.to_string();
        for field in ["sport", "dport"] {
            tc(
                &self.switch,
                &[
                    "filter", "add", "dev", "m0", "egress", "protocol", protocol, "prio", "1",
                    "u32", "match", header, field, &port, "0xffff", "action", "mirred", "egress",
                    "redirect", "dev", BLACKHOLE,
                ],
            );
        }
    }

    /// Ends [`Lan::lose_copies`]: the tap gets every copy again.
    pub fn keep_copies(&self) {
        tc(
            &self.switch,
            &["filter", "del", "dev", "m0", "egress", "prio", "1"],
        );
    }

    /// The tap's box's own address ([`Lan::tapped`]).
    pub fn tap_addr(family: Family) -> IpAddr {
        lan_addr(family, TAP)
    }

    /// The clients' address behind the router ([`Lan::behind_router`]).
    pub fn routed_client_addr(family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 3, 2)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0x13, 0, 0, 0, 2)),
        }
    }

    /// The primary's own address in `family`.
    pub fn primary_addr(family: Family) -> IpAddr {
        lan_addr(family, PRIMARY)
    }

    /// Standby `i`'s address in `family`.
    pub fn standby_addr(family: Family, i: usize) -> IpAddr {
        lan_addr(family, STANDBY + i as u8)
    }

    /// The service at `port`, in `family`.
    pub fn service_in(family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(lan_addr(family, SERVICE), port)
    }

    /// The client's address (the router's, behind a router).
    pub fn client_ip() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, CLIENT)
    }

    /// The primary's own address.
    pub fn primary_ip() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, PRIMARY)
    }

    /// Standby `i`'s address.
    pub fn standby_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, STANDBY + i as u8)
    }

    /// The service address.
    pub fn service_ip() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, SERVICE)
    }

    /// The service at `port`.
    pub fn service(port: u16) -> SocketAddr {
        SocketAddr::from((Lan::service_ip(), port))
    }

    /// Takes `ns`'s link down: a host that died.
    pub fn cut(ns: &Netns) {
        ns.ip(["link", "set", LAN_IF, "down"]);
    }

    /// The switch's namespace (for captures of the whole LAN).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }
}

/// A veth pair: `end` in `from`, its peer named `peer` in `to`.
fn veth(from: &Netns, end: &str, (to, peer): (&Netns, &str)) {
    from.ip([
        "link",
        "add",
        end,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        to.name(),
    ]);
}

/// A new host `role`, number `number` on the LAN, on the switch's port
/// `h{port}`.
fn attach(switch: &Netns, role: &str, number: u8, port: usize) -> Netns {
    let ns = quiet_ipv6(Netns::new(role));
    let end = format!("h{port}");
    veth(switch, &end, (&ns, LAN_IF));
    switch.ip(["link", "set", &end, "master", "br0", "up"]);
    add_addrs(&ns, LAN_IF, lan_addrs(number));
    ns.ip(["link", "set", LAN_IF, "up"]);
    ns
}

/// Runs `tc ARGS` in `ns`; panics with its output when it fails.
fn tc(ns: &Netns, args: &[&str]) {
    crate::process::run_checked(ns.command("tc").args(args));
}

/// Host `number`'s address on the LAN in `family`.
fn lan_addr(family: Family, number: u8) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 2, number)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0x12, 0, 0, 0, number.into())),
    }
}

/// Host `number`'s addresses on the LAN, with their prefixes.
fn lan_addrs(number: u8) -> [String; 2] {
    [
        format!("{}/24", lan_addr(Family::V4, number)),
        format!("{}/64", lan_addr(Family::V6, number)),
    ]
}

/// Adds each of `addrs` (IPv6 ones without duplicate-address detection) to
/// `dev` in `ns`.
fn add_addrs(ns: &Netns, dev: &str, addrs: impl IntoIterator<Item = impl AsRef<str>>) {
    for addr in addrs {
        let addr = addr.as_ref();
        match addr.contains(':') {
            true => ns.ip(["-6", "addr", "add", addr, "dev", dev, "nodad"]),
            false => ns.ip(["addr", "add", addr, "dev", dev]),
        };
    }
}

/// `ns` with IPv6 duplicate-address detection and router solicitations off
/// for every interface made from now on, as [`crate::topology`] does.
fn quiet_ipv6(ns: Netns) -> Netns {
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0");
        ns.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0");
    }
    ns
}
