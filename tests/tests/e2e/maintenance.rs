//! Planned maintenance: `connmirror migrate --to NODE` with no failure at all.
//!
//! Four echo streams run through an inline standby to the primary's
//! unmodified echo server. The operator asks the primary's agent (`agent
//! --control`) to move them to the standby. The standby quiesces the
//! service, the agent takes the server's sockets (`pidfd_getfd`), dumps them
//! with `TCP_REPAIR`, the standby rebuilds them and hands them to its echo
//! application, and the primary's sockets are let go without a segment; the
//! agent steps down under the standby's higher epoch. With the maintenance
//! done, the primary's agent comes back `--recovering` and the operator moves
//! the same connections back with `connmirror migrate --to primary` on the
//! standby. Then the primary fails for real, and the standby restores the
//! same connections again from its flow table, which followed them back
//! (rebased from the dumps). Every stream stays byte-exact through the two
//! moves and the failover, and no RST reaches a client.
//!
//! Before that, a `Prepare` forged with the wrong key (from the clients'
//! namespace, with the highest counter), a migration to a node that is not
//! the standby, and one while no application is registered on the standby's
//! handoff socket are refused with their exact errors, counted, and change
//! nothing: the real migration after them works.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use connmirror::daemon::status::StatusReport;
use connmirror::failover::migrate::{self, Prepare};
use connmirror::key::Key;
use connmirror_tests::failover::{
    HEARTBEAT_PORT, Moved, assert_migrated, assert_moved, configure_primary, control_cli,
    detecting_standby_command, four_streams_once_armed, gateway_addrs, handoff_app,
    kill_primary_host, migrate, move_to_standby, primary_setup, recovering_agent, resumed_lines,
    start_agent_with, status, status_of,
};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, scrape};
use connmirror_tests::mirror::Mirror;
use connmirror_tests::netns::Netns;
use connmirror_tests::topology::{CLIENT_IF, Family, Topology};
use connmirror_tests::wire::WireWatch;

const PORT: u16 = 7100;

/// Sends a `Prepare` signed with the wrong key to the standby from the
/// clients' namespace, with the highest counter there is; returns what came
/// back before the standby closed the connection.
fn forged_prepare(topo: &Topology, family: Family, service: SocketAddr) -> Vec<u8> {
    let standby = SocketAddr::new(gateway_addrs(family).1, HEARTBEAT_PORT);
    topo.client.run(|| {
        let mut stream = TcpStream::connect(standby).expect("connect to the standby");
        let prepare = Prepare {
            node_id: "primary".into(),
            to: "standby".into(),
            counter: u64::MAX,
            epoch: 9,
            services: vec![service],
        };
        let wrong = Key::from_bytes(b"not the shared key, 32 bytes....");
        migrate::write_frame(&mut stream, &wrong, &prepare).expect("send the frame");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("SO_RCVTIMEO");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("the standby closes");
        answer
    })
}

/// Established TCP connections of `service` in `ns` (`ss`).
fn established(ns: &Netns, service: SocketAddr) -> Vec<String> {
    let out = ns
        .command("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .expect("run ss");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = match service {
        SocketAddr::V4(_) => service.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some(local.as_str()))
        .map(str::to_owned)
        .collect()
}

/// `connmirror status --json` on the agent's control socket.
fn agent_status(topo: &Topology, control: &std::path::Path) -> StatusReport {
    let json = status(&topo.server, control, true);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("status JSON: {e}\n{json}"))
}

fn round_trip(family: Family) {
    let setup = primary_setup(family, PORT, "maintenance");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let command = detecting_standby_command(topo, family, service, key)
        .arg("--failback")
        .arg("manual")
        .arg("--keep-sockets");
    let standby = Mirror::start(&topo.gateway, &command);
    let control = setup.dir.path().join("agent-control.sock");
    let control_flag = control.display().to_string();
    let mut agent = start_agent_with(topo, family, service, key, &["--control", &control_flag]);
    let clients = four_streams_once_armed(topo, &standby, service, "streams flow to the primary");
    let watch = WireWatch::start(&topo.client, CLIENT_IF);
    let on_primary = established(&topo.server, service);
    let serving_primary = agent_status(topo, &control);

    let forged = forged_prepare(topo, family, service);
    standby.wait_log(
        "planned migration refused: reading a migration request: \
         frame with a MAC that does not verify (wrong key or forged)",
    );
    let (refused_ok, _, refused) =
        control_cli(&topo.server, "migrate", &control, &["--to", "nobody"]);
    let takeover = control_cli(&topo.server, "takeover", &control, &[]);
    let (no_app_ok, _, no_app) =
        control_cli(&topo.server, "migrate", &control, &["--to", "standby"]);
    let standby_app = handoff_app(topo, &standby, service);
    let before = clients.verified();
    let Moved {
        report: away,
        stepped,
        resumed: resumed_away,
    } = move_to_standby(topo, &control, &agent, &standby_app, &clients, 4);
    let serving = status_of(topo, &standby);
    let left_on_primary = established(&topo.server, service);
    let released = agent_status(topo, &control);
    let primary_metrics = scrape(&topo.server, DEFAULT_ENDPOINT);
    let standby_metrics = scrape(&topo.gateway, DEFAULT_ENDPOINT);

    // The maintenance is over: the primary's address and agent come back.
    agent.kill();
    configure_primary(topo, family, service);
    let (mut agent, mut primary_app) =
        recovering_agent(topo, setup.dir.path(), key, family, service);
    standby.wait_log("the primary is recovering; failback policy is manual");
    let back = migrate(
        &topo.gateway,
        &standby.control_socket(),
        &["--to", "primary"],
    );
    let owner = agent.wait_line("owner again", Duration::from_secs(30));
    let resumed_back = resumed_lines(&primary_app, 4);
    clients
        .wait_progress(256 << 10, Duration::from_secs(60))
        .expect("the streams go on at the primary");

    // Later the primary fails for real: the standby still protects the
    // connections that came back, because its flow table followed them.
    kill_primary_host(topo, &mut primary_app, &mut agent);
    let resumed_again = resumed_lines(&standby_app, 4);
    clients
        .wait_progress(256 << 10, Duration::from_secs(60))
        .expect("the streams go on at the standby after the failure");
    let after_failure = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let (_report, _dir2) = standby.stop();

    assert_eq!(on_primary.len(), 4, "{on_primary:?}");
    assert_eq!(
        (serving_primary.role.as_str(), serving_primary.epoch),
        ("primary", 1)
    );
    assert_eq!(serving_primary.services[0].state, "serving");
    assert_eq!(
        (released.role.as_str(), released.epoch),
        ("stepped-down", 1)
    );
    assert_eq!(released.services[0].state, "released");
    let peer = released.peer.expect("the standby heard");
    assert_eq!(
        (peer.ownership.node_id.as_str(), peer.ownership.epoch),
        ("standby", 2)
    );
    assert_eq!(
        forged,
        Vec::<u8>::new(),
        "the standby answers no forged frame"
    );
    assert!(!refused_ok);
    let standby_at = SocketAddr::new(gateway_addrs(family).0, HEARTBEAT_PORT);
    assert_eq!(
        refused.trim(),
        format!(
            "error: the node refused: the standby at {standby_at} will not take them: \
             this is node \"standby\", not \"nobody\""
        )
    );
    assert!(!no_app_ok);
    assert_eq!(
        no_app.trim(),
        format!(
            "error: the node refused: the standby at {standby_at} will not take them: \
             no application is registered on the handoff socket for {service}"
        )
    );
    assert!(!takeover.0);
    assert_eq!(
        takeover.2.trim(),
        "error: the node refused: this is an agent: `connmirror takeover` asks the standby's \
         control socket"
    );
    assert_eq!(
        (away.to.as_str(), away.peer, away.moved, away.epoch),
        ("standby", standby_at, 4, 1),
        "{away:?}"
    );
    assert_eq!(away.services, vec![service]);
    assert_eq!(away.errors, Vec::<String>::new());
    assert_eq!(stepped, "stepped down: standby holds epoch 2");
    assert_eq!((serving.role.as_str(), serving.epoch), ("owner", 2));
    assert_eq!(serving.services[0].state, "taken-over");
    assert_eq!(left_on_primary, Vec::<String>::new());
    assert_eq!(primary_metrics.count("connmirror_stepped_down"), 1);
    for (series, n) in [
        ("connmirror_planned_migrations_total{outcome=\"taken\"}", 1),
        (
            "connmirror_planned_migrations_total{outcome=\"refused\"}",
            3,
        ),
        ("connmirror_failovers_total{trigger=\"migration\"}", 1),
        (
            "connmirror_failovers_total{trigger=\"heartbeats-missed\"}",
            0,
        ),
        ("connmirror_restored_connections_total", 4),
        ("connmirror_handed_off_connections_total", 4),
        ("connmirror_reset_connections_total", 0),
    ] {
        assert_eq!(standby_metrics.count(series), n, "{series}");
    }
    assert_moved(&back, "primary", 4, 2);
    assert_eq!(owner, "owner again at epoch 3 (yielded by standby)");
    assert_migrated(&results, before, &resumed_back, &seen);
    for (series, n) in [
        (
            "connmirror_failovers_total{trigger=\"heartbeats-missed\"}",
            1,
        ),
        ("connmirror_restored_connections_total", 8),
        ("connmirror_reset_connections_total", 0),
    ] {
        assert_eq!(after_failure.count(series), n, "{series}");
    }
    assert_eq!(after_failure.sum("connmirror_unrecoverable_flows_total"), 0);
    for r in &results {
        let prefix = format!("resumed {} c2s=", r.local);
        let line = (resumed_again.iter())
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix:?} not in {resumed_again:?}"));
        assert!(
            !line.starts_with(&format!("{prefix}0 ")),
            "{line}: no history after the rebase"
        );
    }
    for r in &results {
        let line = format!("resumed {} c2s=0 s2c=0", r.local);
        assert!(
            resumed_away.contains(&line),
            "{line:?} not in {resumed_away:?}"
        );
    }
}

#[test]
fn migrate_to_moves_live_connections_to_the_standby_and_back_with_no_failure_v4() {
    round_trip(Family::V4);
}

#[test]
fn migrate_to_moves_live_connections_to_the_standby_and_back_with_no_failure_v6() {
    round_trip(Family::V6);
}
