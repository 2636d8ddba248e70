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
//! Dropping it deletes every namespace (and with them every link), then
//! lets the next topology run ([`crate::topology`]'s host lock).

use std::net::{Ipv4Addr, SocketAddr};

use crate::netns::Netns;
use crate::topology::HostLock;

/// Every host's interface on the LAN.
pub const LAN_IF: &str = "eth0";

/// The LAN. Fields drop in order: the hosts, the switch, then the lock.
pub struct Lan {
    /// The clients' namespace.
    pub client: Netns,
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
            switch.ip([
                "link",
                "add",
                &end,
                "type",
                "veth",
                "peer",
                "name",
                LAN_IF,
                "netns",
                ns.name(),
            ]);
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
            primary,
            standbys,
            switch,
            _lock: lock,
        }
    }

    /// The client's address.
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
