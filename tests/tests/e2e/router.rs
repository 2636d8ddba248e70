//! The mirror as a box of its own: a router on the clients' path runs
//! `connmirror mirror --replicate-to`, and the standby, on the LAN beside
//! the primary, takes over from the router's stream ([`Lan::behind_router`]).
//!
//! The primary's agent only heartbeats to the standby (pair mode); the
//! router captures both directions at ingress on its two links and streams
//! the journal records to the standby's replica. The primary dies: the
//! standby takes the service address (gratuitous ARP), rebuilds every
//! connection from what the router streamed and hands it to its echo
//! application. The same four client sockets go on, byte-exact both ways,
//! and no RST reaches a client. The router survives the primary, so the
//! records it captured before the death reach the standby before the
//! standby declares it. IPv4 and IPv6 (the address moves by an unsolicited
//! neighbour advertisement).

use std::net::SocketAddr;
use std::time::Duration;

use connmirror_tests::echo::{EchoClients, EchoOptions, assert_exact};
use connmirror_tests::failover::{HEARTBEAT_PORT, Program, echo_server_in, handoff_app_in};
use connmirror_tests::kills::full;
use connmirror_tests::lan::{LAN_IF, Lan, ROUTER_CLIENT_IF};
use connmirror_tests::mirror::{Mirror, MirrorCommand};
use connmirror_tests::onhost::REPLICATION_PORT;
use connmirror_tests::topology::Family;
use connmirror_tests::wire::WireWatch;
use connmirror_tests::workdir::WorkDir;

const PORT: u16 = 7700;

fn router_mirror(family: Family) {
    let lan = Lan::behind_router(1);
    let router = lan.router.as_ref().expect("a router");
    let dir = WorkDir::new("router");
    let key = connmirror_tests::failover::key_file(&dir);
    let key_arg = key.display().to_string();
    let service = Lan::service_in(family, PORT);
    let standby_ip = Lan::standby_addr(family, 0);
    let heartbeats = SocketAddr::new(standby_ip, HEARTBEAT_PORT).to_string();
    let replication = SocketAddr::new(standby_ip, REPLICATION_PORT).to_string();
    let mut echo = echo_server_in(&lan.primary, service);

    let standby = Mirror::start(
        &lan.standbys[0],
        &MirrorCommand::standby()
            .iface(LAN_IF)
            .arg("--service")
            .arg(&full(service))
            .ingress("none")
            .egress("none")
            .without_dumps()
            .arg("--heartbeat-listen")
            .arg(&heartbeats)
            .arg("--replication-listen")
            .arg(&replication)
            .arg("--key")
            .arg(&key_arg)
            .arg("--announce")
            .arg(LAN_IF),
    );
    let _app = handoff_app_in(&lan.standbys[0], &standby, service);
    let mirror = Mirror::start(
        router,
        &MirrorCommand::new()
            .ifaces([ROUTER_CLIENT_IF, LAN_IF])
            .arg("--service")
            .arg(&full(service))
            .without_dumps()
            .arg("--replicate-to")
            .arg(&replication)
            .arg("--key")
            .arg(&key_arg),
    );
    let agent_args = [
        "agent",
        "--bind",
        &Lan::primary_addr(family).to_string(),
        "--key",
        &key_arg,
        "--node-id",
        "primary",
        "--service",
        &service.to_string(),
        "--standby",
        &heartbeats,
    ];
    let mut agent = Program::start(
        &lan.primary,
        connmirror_tests::connmirror_bin(),
        agent_args.map(str::to_owned),
        "ready",
    );
    standby.wait_log("replication channel established");
    standby.wait_log("armed: primary heard");
    let clients = EchoClients::start(&lan.client, service, 4, EchoOptions::default());
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("streams flow");
    let watch = WireWatch::start(&lan.client, LAN_IF);

    Lan::cut(&lan.primary);
    echo.kill();
    agent.kill();
    standby.wait_log("step=\"resume\"");
    let progressed = clients.wait_progress(32 << 10, Duration::from_secs(60));
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let (report, _dir) = standby.stop();
    drop(mirror);

    progressed.expect("the streams go on from the standby");
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    let takeover = &report.takeovers[0];
    assert_eq!(takeover.trigger, "heartbeats-missed");
    assert_eq!(
        (takeover.restored, takeover.handed_off),
        (4, 4),
        "{takeover:#?}"
    );
    assert_eq!(takeover.unrecoverable_total(), 0, "{takeover:#?}");
}

#[test]
fn a_standby_takes_over_from_a_routers_mirror_with_the_same_client_sockets_v4() {
    router_mirror(Family::V4);
}

#[test]
fn a_standby_takes_over_from_a_routers_mirror_with_the_same_client_sockets_v6() {
    router_mirror(Family::V6);
}
