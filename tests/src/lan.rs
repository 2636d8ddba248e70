//! One LAN for cluster mode: a client, a primary and standbys, each in a
//! namespace of its own, joined by a bridge (in a namespace of its own too),
//! all in 198.18.2.0/24. The service address (198.18.2.100) starts on the
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
//! the clients 198.18.3.2 on a link of their own (the router's `cl0`,
//! 198.18.3.1), and every host on the LAN routes 198.18.3.0/24 through it.
//!
//! ```text
//!  client 198.18.3.2 ── cl0 router .2 ── br0 ── primary .10, standbys .11, ...
//! ```
//!
//! Dropping it deletes every namespace (and with them every link), then
//! lets the next topology run ([`crate::topology`]'s host lock).

use std::net::{Ipv4Addr, SocketAddr};

use crate::netns::Netns;
use crate::topology::HostLock;

/// Every host's interface on the LAN.
pub const LAN_IF: &str = "eth0";

/// The router's interface towards the clients ([`Lan::behind_router`]).
pub const ROUTER_CLIENT_IF: &str = "cl0";

/// The LAN. Fields drop in order: the hosts, the switch, then the lock.
pub struct Lan {
    /// The clients' namespace.
    pub client: Netns,
    /// The router between the clients and the LAN ([`Lan::behind_router`]).
    pub router: Option<Netns>,
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
        let host = |role: &str, ip: Ipv4Addr, port: usize| {
            let ns = Netns::new(role);
            let end = format!("h{port}");
            veth(&switch, &end, &ns);
            switch.ip(["link", "set", &end, "master", "br0", "up"]);
            ns.ip(["addr", "add", &format!("{ip}/24"), "dev", LAN_IF]);
            ns.ip(["link", "set", LAN_IF, "up"]);
            ns
        };
        let client = host("client", Lan::client_ip(), 0);
        let primary = host("primary", Lan::primary_ip(), 1);
        primary.ip([
            "addr",
            "add",
            &format!("{}/24", Lan::service_ip()),
            "dev",
            LAN_IF,
        ]);
        let standbys = (0..standbys)
            .map(|i| host(&format!("standby{i}"), Lan::standby_ip(i), 2 + i))
            .collect();
        Lan {
            client,
            router: None,
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
        let router = std::mem::replace(&mut lan.client, Netns::new("client"));
        router.sysctl("net.ipv4.ip_forward", "1");
        veth(&router, ROUTER_CLIENT_IF, &lan.client);
        router.ip(["addr", "add", "198.18.3.1/24", "dev", ROUTER_CLIENT_IF]);
        router.ip(["link", "set", ROUTER_CLIENT_IF, "up"]);
        lan.client
            .ip(["addr", "add", "198.18.3.2/24", "dev", LAN_IF]);
        lan.client.ip(["link", "set", LAN_IF, "up"]);
        lan.client
            .ip(["route", "add", "default", "via", "198.18.3.1"]);
        let via = Lan::client_ip().to_string();
        for host in std::iter::once(&lan.primary).chain(&lan.standbys) {
            host.ip(["route", "add", "198.18.3.0/24", "via", &via]);
        }
        lan.router = Some(router);
        lan
    }

    /// The client's address (the router's, behind a router).
    pub fn client_ip() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 2)
    }

    /// The primary's own address.
    pub fn primary_ip() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 10)
    }

    /// Standby `i`'s address.
    pub fn standby_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 11 + i as u8)
    }

    /// The service address.
    pub fn service_ip() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 100)
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

/// A veth pair: `end` in `from`, its peer [`LAN_IF`] in `to`.
fn veth(from: &Netns, end: &str, to: &Netns) {
    from.ip([
        "link",
        "add",
        end,
        "type",
        "veth",
        "peer",
        "name",
        LAN_IF,
        "netns",
        to.name(),
    ]);
}
