//! Automatic failure detection and fencing: the primary's `connmirror agent` sends
//! authenticated heartbeats; the standby takes over by itself once they stop,
//! and forged, unauthenticated or replayed heartbeats are counted and change
//! nothing. A primary that comes back hears the standby's higher epoch and
//! steps down (releases the service address), with no RST reaching a client.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use connmirror::heartbeat::{self, Key, Kind, Ownership};
use connmirror_tests::echo::{EchoClients, EchoOptions};
use connmirror_tests::failover::{
    HEARTBEAT_PORT, KEY, Program, configure_primary, detecting_standby, echo_primary,
    gateway_addrs, handoff_app, key_file, kill_primary, start_agent, status, status_of,
};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, scrape};
use connmirror_tests::mirror::Mirror;
use connmirror_tests::topology::{CLIENT_IF, Family, SERVER_IF, Topology};
use connmirror_tests::wire::WireWatch;
use connmirror_tests::workdir::WorkDir;

const PORT: u16 = 7000;
const CLUSTER: &str = "connmirror";

/// Waits until the standby's log says `text`.
fn wait_log(standby: &Mirror, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !standby.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the standby never logged {text:?}; stderr:\n{}",
            standby.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A topology whose primary serves the echo example, its addresses in
/// place, and the shared key file.
struct Setup {
    _dir: WorkDir,
    key: PathBuf,
    topo: Topology,
    service: SocketAddr,
    primary: Program,
}

fn setup(family: Family) -> Setup {
    connmirror_tests::require_root();
    let dir = WorkDir::new("ownership");
    let key = key_file(&dir);
    let topo = Topology::new();
    let service = topo.service(family, PORT);
    configure_primary(&topo, family, service);
    let primary = echo_primary(&topo, service);
    Setup {
        _dir: dir,
        key,
        topo,
        service,
        primary,
    }
}

fn automatic_failover(family: Family) {
    let Setup {
        _dir,
        key,
        topo,
        service,
        mut primary,
    } = setup(family);
    let standby = detecting_standby(&topo, family, service, &key);
    let _app = handoff_app(&topo, &standby, service);
    let mut agent = start_agent(&topo, family, service, &key);
    wait_log(&standby, "armed: primary heard");
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect("streams flow before the failure");
    let before = status_of(&topo, &standby);
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    kill_primary(&topo, &mut primary);
    agent.kill();
    clients
        .wait_progress(64 << 10, Duration::from_secs(60))
        .expect("every stream continues with no manual trigger");
    // The old primary comes back: link up, server and agent restarted under
    // its old epoch. The standby's heartbeats carry the higher epoch.
    topo.server.ip(["link", "set", "dev", SERVER_IF, "up"]);
    configure_primary(&topo, family, service);
    let _primary_again = echo_primary(&topo, service);
    let returned = start_agent(&topo, family, service, &key);
    let stepped = returned.wait_line("stepped down", Duration::from_secs(20));
    let addresses = topo.server.ip(["addr", "show", "dev", SERVER_IF]);
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect("streams go on while the old primary is back");
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let after = status_of(&topo, &standby);
    let table = status(&topo.gateway, &standby.control_socket(), false);
    let (report, _dir) = standby.stop();

    assert_eq!((before.role.as_str(), before.epoch), ("standby", 1));
    let peer = before.peer.expect("the primary is heard");
    assert_eq!(
        (peer.ownership.node_id.as_str(), peer.alive),
        ("primary", true)
    );
    assert_eq!(peer.ownership.services, vec![service]);
    assert_eq!(before.services[0].state, "protected");
    assert_eq!(before.flows.get("ready"), Some(&4));
    assert_eq!((after.role.as_str(), after.epoch), ("owner", 2));
    assert_eq!(after.services[0].state, "taken-over");
    assert!(!after.peer.expect("last heard").alive);
    assert_eq!(after.takeovers, 1);
    assert!(
        table.starts_with("role      owner\nepoch     2\npeer      primary at "),
        "{table}"
    );
    assert_eq!(stepped, "stepped down: standby holds epoch 2");
    assert!(
        !addresses.contains(&format!(" {}/", service.ip())),
        "the old primary still has the service address:\n{addresses}"
    );

    for r in &results {
        assert_eq!(r.error, None, "connection {}", r.local);
        assert_eq!((r.verified, r.received_sha256), (r.sent, r.sent_sha256));
    }
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    assert_eq!(report.takeovers.len(), 1, "{:#?}", report.takeovers);
    let takeover = &report.takeovers[0];
    assert_eq!(takeover.trigger, "heartbeats-missed");
    assert_eq!(takeover.epoch, 2, "the primary held epoch 1");
    assert_eq!((takeover.restored, takeover.handed_off), (4, 4));
    assert_eq!(takeover.unrecoverable_total(), 0);
    let heartbeats = report.standby.expect("standby summary").heartbeats;
    let heartbeats = heartbeats.expect("heartbeat stats");
    assert!(heartbeats.accepted > 0);
    assert_eq!(heartbeats.rejected(), 0);
}

#[test]
fn standby_takes_over_when_heartbeats_stop_and_the_returning_primary_steps_down_v4() {
    automatic_failover(Family::V4);
}

#[test]
fn standby_takes_over_when_heartbeats_stop_and_the_returning_primary_steps_down_v6() {
    automatic_failover(Family::V6);
}

/// Sends `count` copies of `datagram` from the clients' namespace to `to`.
fn send_from(topo: &Topology, to: SocketAddr, datagrams: &[Vec<u8>]) {
    topo.client.run(|| {
        let any: SocketAddr = match to {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
        };
        let socket = UdpSocket::bind(any).expect("bind");
        for datagram in datagrams {
            socket.send_to(datagram, to).expect("send");
            thread::sleep(Duration::from_millis(2));
        }
    });
}

#[test]
fn forged_and_replayed_heartbeats_are_counted_and_change_nothing() {
    let family = Family::V4;
    let Setup {
        _dir,
        key,
        topo,
        service,
        mut primary,
    } = setup(family);
    let standby = detecting_standby(&topo, family, service, &key);
    let mut agent = start_agent(&topo, family, service, &key);
    wait_log(&standby, "armed: primary heard");
    let target = SocketAddr::new(gateway_addrs(family).1, HEARTBEAT_PORT);
    // What a forger would send: the primary's ownership, under a higher epoch.
    let claim = Ownership {
        node_id: "primary".into(),
        cluster_id: CLUSTER.into(),
        epoch: 99,
        services: vec![service],
        ..Ownership::default()
    };
    let wrong_key = Key::from_bytes(b"not the shared key, but 32 bytes");
    let forged: Vec<Vec<u8>> = (0..20)
        .map(|i| heartbeat::seal(&wrong_key, Kind::Heartbeat, u64::MAX - i, &claim))
        .chain((0..10).map(|i| vec![i as u8; 64]))
        .collect();
    // Authentic bytes with a counter the agent has long passed: a replay.
    let right_key = Key::from_bytes(KEY);
    let replayed: Vec<Vec<u8>> = (1..=10)
        .map(|i| heartbeat::seal(&right_key, Kind::Heartbeat, i, &claim))
        .collect();

    send_from(&topo, target, &forged);
    send_from(&topo, target, &replayed);
    thread::sleep(Duration::from_millis(300));
    let lost_while_alive = standby.stderr().contains("primary lost");
    let standby_metrics = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let agent_metrics = scrape(&topo.server, DEFAULT_ENDPOINT);
    kill_primary(&topo, &mut primary);
    agent.kill();
    // Forgeries keep coming while the primary is dead: they must not keep it alive.
    send_from(&topo, target, &forged);
    send_from(&topo, target, &replayed);
    wait_log(&standby, "takeover");
    let (report, _dir) = standby.stop();

    assert!(
        !lost_while_alive,
        "forgeries made the standby lose a live primary"
    );
    assert_eq!(report.takeovers.len(), 1);
    assert_eq!(report.takeovers[0].trigger, "heartbeats-missed");
    assert_eq!(
        report.takeovers[0].epoch, 2,
        "the forged epoch 99 was never believed"
    );
    let heartbeats = report.standby.expect("summary").heartbeats.expect("stats");
    assert_eq!(heartbeats.forged, 2 * 30, "{heartbeats:?}");
    assert_eq!(heartbeats.replayed, 2 * 10, "{heartbeats:?}");
    assert_eq!(heartbeats.malformed, 0, "{heartbeats:?}");
    let rejected =
        |reason: &str| format!("connmirror_heartbeats_rejected_total{{reason=\"{reason}\"}}");
    assert_eq!(standby_metrics.count(&rejected("forged")), 30);
    assert_eq!(standby_metrics.count(&rejected("replayed")), 10);
    assert_eq!(standby_metrics.count(&rejected("malformed")), 0);
    let received = standby_metrics.count("connmirror_heartbeats_received_total");
    let sent = agent_metrics.count("connmirror_heartbeats_sent_total");
    assert!(
        received > 0 && received <= sent,
        "the standby verified {received} of the agent's {sent} heartbeats"
    );
    assert_eq!(agent_metrics.get("connmirror_epoch"), 1.0);
    assert_eq!(agent_metrics.get("connmirror_stepped_down"), 0.0);
}
