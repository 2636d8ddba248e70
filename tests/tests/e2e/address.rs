//! Making a service address local through netlink, announcing it on the link,
//! and the wire watcher that checks both (and counts resets).
//!
//! Two namespaces joined by one veth pair: `near` (`cm0`, 198.18.2.1,
//! fd00:0:0:3::1) plays the standby taking an address over, `far` (`cm1`,
//! 198.18.2.2, fd00:0:0:3::2) a client on the same link. `near` keeps IPv6
//! duplicate-address detection on (the kernel default), so an address added
//! without `IFA_F_NODAD` would stay tentative, and unbindable, for about a
//! second.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use connmirror::net::address::{AddressError, LocalAddress};
use connmirror::net::announce::{announce, mac_address};
use connmirror_tests::inject::link_mac;
use connmirror_tests::wire::{WireSeen, WireWatch};
use connmirror_tests::{Netns, require_root};

const NEAR_IF: &str = "cm0";
const FAR_IF: &str = "cm1";
const NEAR_V4: &str = "198.18.2.1";
const FAR_V4: &str = "198.18.2.2";
const NEAR_V6: &str = "fd00:0:0:3::1";
const FAR_V6: &str = "fd00:0:0:3::2";
const SERVICE_V4: &str = "198.18.5.5";
const SERVICE_V6: &str = "fd00:0:0:5::5";
const PORT: u16 = 7000;
/// The only ephemeral port the client namespace may use, so the reset's
/// destination is known in advance.
const CLIENT_PORT: u16 = 40123;

/// Two namespaces and the veth pair between them.
struct Link {
    near: Netns,
    far: Netns,
}

impl Link {
    fn new() -> Link {
        let link = Link {
            near: Netns::new("near"),
            far: Netns::new("far"),
        };
        let Link { near, far } = &link;
        for scope in ["all", "default"] {
            far.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0");
            for ns in [near, far] {
                ns.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0");
            }
        }
        near.ip([
            "link",
            "add",
            NEAR_IF,
            "type",
            "veth",
            "peer",
            "name",
            FAR_IF,
            "netns",
            far.name(),
        ]);
        for (ns, dev, v4, v6) in [
            (near, NEAR_IF, NEAR_V4, NEAR_V6),
            (far, FAR_IF, FAR_V4, FAR_V6),
        ] {
            ns.ip(["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip([
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.ip(["link", "set", "dev", dev, "up"]);
        }
        for (ns, dev) in [(near, NEAR_IF), (far, FAR_IF)] {
            wait_for_ipv6(ns, dev);
        }
        link
    }
}

/// Waits until IPv6 is configured on `dev`, shown by its `ff00::/8` multicast
/// route.
///
/// A veth gets its carrier when both ends are up, but the kernel reports that
/// through linkwatch, up to a second later (`linkwatch_fire_event()` in
/// net/core/link_watch.c); only then does addrconf configure the device
/// (`addrconf_notify(NETDEV_CHANGE)` in net/ipv6/addrconf.c) and add the
/// multicast route. Until that, IPv6 multicast to the device (the
/// advertisement to ff02::1) is dropped as `Ip6InNoRoutes`: seen here.
fn wait_for_ipv6(ns: &Netns, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let routes = ns.ip(["-6", "route", "show", "table", "local", "dev", dev]);
        if routes.lines().any(|l| l.starts_with("multicast ff00::/8 ")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}/{dev}: no IPv6 multicast route after 5 s: {routes}",
            ns.name()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn bind_in(ns: &Netns, addr: IpAddr) -> io::Result<TcpListener> {
    ns.run(|| TcpListener::bind(SocketAddr::new(addr, PORT)))
}

/// The trimmed `inet`/`inet6` lines of `ip addr show dev IF` that name `addr`.
fn listed(ns: &Netns, addr: IpAddr) -> Vec<String> {
    ns.ip(["addr", "show", "dev", NEAR_IF])
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("inet") && line.contains(&format!(" {addr}/")))
        .map(str::to_owned)
        .collect()
}

fn added_through_netlink_is_local_then_removed(addr: IpAddr, expected_line: &str) {
    let link = Link::new();
    assert_eq!(
        bind_in(&link.near, addr).unwrap_err().kind(),
        io::ErrorKind::AddrNotAvailable,
        "{addr} must not be local before the test adds it"
    );

    let local = link.near.run(|| LocalAddress::add(NEAR_IF, addr)).unwrap();
    assert!(local.added());
    // At once, no FREEBIND: the address is local (and for IPv6 not tentative).
    let listener = bind_in(&link.near, addr).unwrap();
    assert_eq!(listener.local_addr().unwrap(), SocketAddr::new(addr, PORT));
    drop(listener);
    assert_eq!(listed(&link.near, addr), [expected_line]);

    let again = link.near.run(|| LocalAddress::add(NEAR_IF, addr)).unwrap();
    assert!(!again.added());
    link.near.run(|| again.remove()).unwrap();
    assert_eq!(listed(&link.near, addr), [expected_line], "a no-op remove");

    link.near.run(|| local.remove()).unwrap();
    assert_eq!(listed(&link.near, addr), Vec::<String>::new());
    assert_eq!(
        bind_in(&link.near, addr).unwrap_err().kind(),
        io::ErrorKind::AddrNotAvailable
    );
}

#[test]
fn address_added_through_netlink_is_local_then_removed_v4() {
    require_root();
    added_through_netlink_is_local_then_removed(
        SERVICE_V4.parse().unwrap(),
        "inet 198.18.5.5/32 scope global cm0",
    );
}

#[test]
fn address_added_through_netlink_is_local_then_removed_v6() {
    require_root();
    added_through_netlink_is_local_then_removed(
        SERVICE_V6.parse().unwrap(),
        "inet6 fd00:0:0:5::5/128 scope global nodad",
    );
}

#[test]
fn adding_on_a_missing_interface_names_it() {
    require_root();
    let ns = Netns::new("noif");
    let err = ns
        .run(|| LocalAddress::add("nope0", SERVICE_V4.parse().unwrap()))
        .unwrap_err();
    assert!(matches!(err, AddressError::NoSuchInterface { .. }));
    assert_eq!(err.to_string(), r#"interface "nope0" does not exist"#);
}

#[test]
fn removing_an_address_deleted_behind_our_back_names_the_call() {
    require_root();
    let link = Link::new();
    let addr: IpAddr = SERVICE_V4.parse().unwrap();
    let local = link.near.run(|| LocalAddress::add(NEAR_IF, addr)).unwrap();
    link.near
        .ip(["addr", "del", "198.18.5.5/32", "dev", NEAR_IF]);
    let err = link.near.run(|| local.remove()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "netlink RTM_DELADDR 198.18.5.5/32 on cm0: Cannot assign requested address (os error 99)"
    );
}

/// A MAC address no interface has: `far`'s stale entry for the service address
/// before the announcement, as if the address still lived elsewhere.
const OLD_MAC: &str = "02:00:00:00:00:99";

/// What `near` announcing `addr` on its veth does at `far`: the frames its
/// watcher saw, `near`'s MAC, and `far`'s neighbour entry for `addr` afterwards.
fn announce_from_near(addr: IpAddr) -> (WireSeen, [u8; 6], String) {
    let link = Link::new();
    let Link { near, far } = &link;
    // A Linux receiver updates an existing entry only, and for ARP only once
    // `locktime` (1 s by default) has passed since its last update
    // (arp_process() in net/ipv4/arp.c).
    far.sysctl(&format!("net.ipv4.neigh.{FAR_IF}.locktime"), "0");
    let addr_text = addr.to_string();
    far.ip([
        "neigh", "add", &addr_text, "lladdr", OLD_MAC, "nud", "stale", "dev", FAR_IF,
    ]);
    let mac = link_mac(near, NEAR_IF);
    assert_eq!(near.run(|| mac_address(NEAR_IF)).unwrap(), mac);

    let watch = WireWatch::start(far, FAR_IF);
    near.run(|| announce(NEAR_IF, addr)).unwrap();
    let seen = watch.stop();
    let entry = far.ip(["neigh", "show", "to", &addr_text, "dev", FAR_IF]);
    (seen, mac, entry.trim().to_owned())
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[test]
fn announce_is_seen_by_the_peer_v4() {
    require_root();
    let (seen, mac, entry) = announce_from_near(SERVICE_V4.parse().unwrap());
    assert_eq!(seen.garps, [(SERVICE_V4.parse().unwrap(), mac)]);
    assert_eq!(seen.neighbour_adverts, []);
    assert_eq!(seen.dropped, 0);
    assert_eq!(
        entry,
        format!("{SERVICE_V4} lladdr {} STALE", mac_text(mac))
    );
}

#[test]
fn announce_is_seen_by_the_peer_v6() {
    require_root();
    let (seen, mac, entry) = announce_from_near(SERVICE_V6.parse().unwrap());
    assert_eq!(seen.neighbour_adverts, [(SERVICE_V6.parse().unwrap(), mac)]);
    assert_eq!(seen.garps, []);
    assert_eq!(seen.dropped, 0);
    assert_eq!(
        entry,
        format!("{SERVICE_V6} lladdr {} STALE", mac_text(mac))
    );
}

#[test]
fn connect_to_a_closed_port_is_reset_once() {
    require_root();
    let link = Link::new();
    let port = CLIENT_PORT.to_string();
    link.far
        .sysctl("net.ipv4.ip_local_port_range", &format!("{port} {port}"));
    let server = SocketAddr::new(NEAR_V4.parse().unwrap(), PORT);
    let client = SocketAddr::new(FAR_V4.parse().unwrap(), CLIENT_PORT);

    let at_client = WireWatch::start(&link.far, FAR_IF);
    let at_server = WireWatch::start(&link.near, NEAR_IF);
    let err = link.far.run(|| TcpStream::connect(server)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    let at_client = at_client.stop();
    let at_server = at_server.stop();

    assert_eq!(at_client.rsts_received, [(server, client)]);
    assert_eq!(at_client.rsts_sent, []);
    assert_eq!(at_server.rsts_sent, [(server, client)]);
    assert_eq!(at_server.rsts_received, []);
    assert_eq!((at_client.dropped, at_server.dropped), (0, 0));
}
