//! Client ↔ gateway ↔ server, three namespaces joined by two veth pairs.
//!
//! ```text
//!  client                 gateway (forwards)                server
//!  eth0 ──── veth ──── gw-c                gw-s ──── veth ──── eth0
//!  198.18.0.2/24       198.18.0.1/24       198.18.1.1/24       198.18.1.2/24
//!  fd00:0:0:1::2/64    fd00:0:0:1::1/64    fd00:0:0:2::1/64    fd00:0:0:2::2/64
//! ```
//!
//! The mirror runs in the gateway and attaches to `gw-c` and `gw-s`.
//!
//! Hosts route only the other side's prefix through the gateway: no default
//! route exists anywhere, so nothing can leave for an address outside the test
//! prefixes. Duplicate-address detection is off in every namespace (`accept_dad
//! = 0`; global addresses also carry `nodad`), so the links are usable at once, and
//! router solicitations are off. Link-local addresses stay: a forwarding gateway
//! sends its neighbour solicitations from its link-local address
//! (`ndisc_send_ns()` gives up without one, and forwarded IPv6 then fails with
//! "No route to host").
//!
//! VLAN variant ([`Topology::with_vlan`]): every frame on the client link carries
//! an 802.1Q tag, in the frame bytes, in both directions. The test kernel has no
//! VLAN driver (`CONFIG_VLAN_8021Q` is off), so instead of `eth0.100` devices the
//! two ends of the link (`eth0` in the client, `gw-c` in the gateway) push and pop
//! the tag themselves; see [`crate::vlan`]. On the wire this is what a VLAN device
//! on each end would produce, and the mirror still attaches to `gw-c`.

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// The client's interface (the veth end, also the VLAN parent).
pub const CLIENT_IF: &str = "eth0";
/// The server's interface.
pub const SERVER_IF: &str = "eth0";
/// The gateway's veth end towards the client (also the VLAN parent).
pub const GATEWAY_CLIENT_IF: &str = "gw-c";
/// The gateway's veth end towards the server.
pub const GATEWAY_SERVER_IF: &str = "gw-s";

/// An address family of the test network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4: 198.18.0.0/24 on the client link, 198.18.1.0/24 on the server link.
    V4,
    /// IPv6: fd00:0:0:1::/64 on the client link, fd00:0:0:2::/64 on the server link.
    V6,
}

/// Lock file that makes topologies (and so the traffic and mirrors that use them)
/// run one at a time on this host, across test threads and test binaries: with 2
/// cores, two 200 MB transfers at once would starve each other and the mirror.
const HOST_LOCK: &str = "/tmp/connmirror-tests.lock";
/// How long a test waits for another test's topology to go away.
const HOST_LOCK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Three namespaces, client ↔ gateway ↔ server, configured for IPv4 and IPv6.
///
/// Dropping it deletes the three namespaces (and with them every interface).
/// Fields drop in declaration order: the namespaces go before the host lock is
/// released.
#[derive(Debug)]
pub struct Topology {
    /// The client's namespace.
    pub client: Netns,
    /// The forwarding namespace in between, where the mirror runs.
    pub gateway: Netns,
    /// The server's namespace.
    pub server: Netns,
    vlan: Option<u16>,
    _lock: HostLock,
}

impl Topology {
    /// The plain topology: untagged links.
    pub fn new() -> Topology {
        Topology::build(None)
    }

    /// The client link carries 802.1Q tag `id` on both ends.
    pub fn with_vlan(id: u16) -> Topology {
        Topology::build(Some(id))
    }

    fn build(vlan: Option<u16>) -> Topology {
        let lock = HostLock::acquire();
        let topo = Topology {
            client: Netns::new("client"),
            gateway: Netns::new("gw"),
            server: Netns::new("server"),
            vlan,
            _lock: lock,
        };
        let Topology {
            client,
            gateway,
            server,
            ..
        } = &topo;

        // Before any interface exists, so that every new device inherits them.
        for ns in [client, gateway, server] {
            for scope in ["all", "default"] {
                ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0");
                ns.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0");
            }
        }

        // Create each pair from the gateway with the peer directly in the host
        // namespace: no name ever appears in the caller's namespace.
        for (gw_if, host, host_if) in [
            (GATEWAY_CLIENT_IF, client, CLIENT_IF),
            (GATEWAY_SERVER_IF, server, SERVER_IF),
        ] {
            gateway.ip([
                "link",
                "add",
                gw_if,
                "type",
                "veth",
                "peer",
                "name",
                host_if,
                "netns",
                host.name(),
            ]);
        }
        if let Some(id) = vlan {
            crate::vlan::tag_link(client, CLIENT_IF, id);
            crate::vlan::tag_link(gateway, GATEWAY_CLIENT_IF, id);
        }

        for (ns, dev, v4, v6) in [
            (client, CLIENT_IF, "198.18.0.2/24", "fd00:0:0:1::2/64"),
            (
                gateway,
                GATEWAY_CLIENT_IF,
                "198.18.0.1/24",
                "fd00:0:0:1::1/64",
            ),
            (
                gateway,
                GATEWAY_SERVER_IF,
                "198.18.1.1/24",
                "fd00:0:0:2::1/64",
            ),
            (server, SERVER_IF, "198.18.1.2/24", "fd00:0:0:2::2/64"),
        ] {
            ns.ip(["addr", "add", v4, "dev", dev]);
            ns.ip(["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        }
        for (ns, dev) in topo.veths() {
            ns.ip(["link", "set", "dev", dev, "up"]);
        }

        gateway.sysctl("net.ipv4.ip_forward", "1");
        gateway.sysctl("net.ipv6.conf.all.forwarding", "1");

        client.ip(["route", "add", "198.18.1.0/24", "via", "198.18.0.1"]);
        client.ip([
            "-6",
            "route",
            "add",
            "fd00:0:0:2::/64",
            "via",
            "fd00:0:0:1::1",
        ]);
        server.ip(["route", "add", "198.18.0.0/24", "via", "198.18.1.1"]);
        server.ip([
            "-6",
            "route",
            "add",
            "fd00:0:0:1::/64",
            "via",
            "fd00:0:0:2::1",
        ]);
        topo
    }

    /// The 802.1Q VLAN id on the client link, if any.
    pub fn vlan(&self) -> Option<u16> {
        self.vlan
    }

    /// The client's address.
    pub fn client_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 2)),
        }
    }

    /// The server's address.
    pub fn server_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 2)),
        }
    }

    /// The server's address with `port`: a service to track or to listen on.
    pub fn service(&self, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_addr(family), port)
    }

    /// The gateway interfaces the mirror attaches to: the two veth ends (in the
    /// VLAN variant `gw-c` carries the tagged frames).
    pub fn gateway_ifaces(&self) -> [&'static str; 2] {
        [GATEWAY_CLIENT_IF, GATEWAY_SERVER_IF]
    }

    /// Every veth end with its namespace: client, both gateway ends, server.
    pub fn veths(&self) -> [(&Netns, &'static str); 4] {
        [
            (&self.client, CLIENT_IF),
            (&self.gateway, GATEWAY_CLIENT_IF),
            (&self.gateway, GATEWAY_SERVER_IF),
            (&self.server, SERVER_IF),
        ]
    }

    /// Turns TSO, GSO and GRO off on every veth end, so no skb larger than one
    /// MTU-sized segment crosses the gateway (a tiny ring must fit at least one).
    pub fn disable_segmentation_offloads(&self) {
        for (ns, dev) in self.veths() {
            ns.exec([
                "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
            ]);
        }
    }

    /// Names of the three namespaces.
    pub fn namespace_names(&self) -> [String; 3] {
        [
            self.client.name().to_owned(),
            self.gateway.name().to_owned(),
            self.server.name().to_owned(),
        ]
    }
}

impl Default for Topology {
    fn default() -> Topology {
        Topology::new()
    }
}

/// An exclusive `flock(2)` on [`HOST_LOCK`], released when dropped (the file is
/// closed).
#[derive(Debug)]
pub(crate) struct HostLock {
    _file: File,
}

impl HostLock {
    pub(crate) fn acquire() -> HostLock {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(HOST_LOCK)
            .unwrap_or_else(|e| panic!("open {HOST_LOCK}: {e}"));
        let deadline = Instant::now() + HOST_LOCK_TIMEOUT;
        loop {
            // SAFETY: flock on an open descriptor has no memory-safety preconditions.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return HostLock { _file: file };
            }
            let err = std::io::Error::last_os_error();
            assert!(
                err.kind() == std::io::ErrorKind::WouldBlock,
                "flock({HOST_LOCK}): {err}"
            );
            assert!(
                Instant::now() < deadline,
                "another connmirror test held {HOST_LOCK} for more than {HOST_LOCK_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}
