//! Failback and fencing on the standby's side. After an automatic failover
//! the old primary comes back:
//!
//! - announcing itself `--recovering`, to a standby with `--failback drain`:
//!   the restored connections stay on the standby, byte-exact, until they
//!   close; a new connection reaches the primary; the primary owns the
//!   services again under the next epoch; no RST reaches a client;
//! - announcing itself recovering to a standby with `--failback migrate`, or
//!   with `manual` and an operator running `connmirror migrate --to primary`:
//!   the live connections move to the primary (`TCP_REPAIR` dump on the
//!   standby, restore by the agent, handoff to the primary's echo app),
//!   every stream byte-exact, no RST;
//! - claiming a higher epoch outright (after the restored connections closed,
//!   and having rebooted): the standby steps down (releases the service
//!   address, protects the service again) and new connections reach the
//!   primary.
//!
//! In the drain tests the returning primary's namespace keeps its stale TCP
//! sockets (a host that did not reboot): its retransmissions on the drained
//! connections must be fenced per flow, or they would draw RSTs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use connmirror::daemon::status::StatusReport;
use connmirror_tests::echo::{EchoClients, EchoOptions, EchoResult, assert_exact};
use connmirror_tests::failover::{
    Program, agent_addr, assert_migrated, assert_moved, control_cli, detecting_standby_command,
    echo_server_in, forget_tcp_state, four_streams_once_armed, handoff_app, kill_primary_host,
    migrate, primary_handoff_app, primary_returns, primary_setup, recovering_agent,
    recovering_agent_with, resumed_lines, start_agent, start_agent_with, status_of,
};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, scrape};
use connmirror_tests::mirror::Mirror;
use connmirror_tests::topology::{CLIENT_IF, Family, Topology};
use connmirror_tests::wire::{WireSeen, WireWatch};
use connmirror_tests::workdir::WorkDir;

const PORT: u16 = 7000;

/// A standby that took the service over from a dead primary, serving four
/// restored echo streams through its handoff application.
///
/// Fields drop in declaration order: the clients and programs before the
/// namespaces they run in, the key's directory last.
struct Failed {
    watch: WireWatch,
    clients: EchoClients,
    _app: Program,
    /// The echo example listening on the service in the standby's namespace
    /// ([`failed_over_listening`]).
    _listener: Option<Program>,
    standby: Mirror,
    service: SocketAddr,
    topo: Topology,
    key: PathBuf,
    /// Holds the key file; scratch space for the test.
    dir: WorkDir,
}

fn failed_over(family: Family, failback: &str) -> Failed {
    failed_over_with(family, &["--failback", failback], false)
}

/// [`failed_over`], with the echo example also listening on the service in
/// the standby's namespace (`ip_nonlocal_bind`, before the restored sockets
/// take the port): once the standby owns the address it serves new
/// connections there.
fn failed_over_listening(family: Family, failback: &str) -> Failed {
    failed_over_with(family, &["--failback", failback], true)
}

/// [`failed_over`] with these standby flags, and a listener at the standby
/// when `listen`.
fn failed_over_with(family: Family, flags: &[&str], listen: bool) -> Failed {
    let mut setup = primary_setup(family, PORT, "failback");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let command = (flags.iter()).fold(
        detecting_standby_command(topo, family, service, key),
        |command, flag| command.arg(flag),
    );
    let standby = Mirror::start(&topo.gateway, &command);
    let app = handoff_app(topo, &standby, service);
    let listener = listen.then(|| {
        let sysctl = match family {
            Family::V4 => "net.ipv4.ip_nonlocal_bind",
            Family::V6 => "net.ipv6.ip_nonlocal_bind",
        };
        topo.gateway.sysctl(sysctl, "1");
        echo_server_in(&topo.gateway, service)
    });
    let mut agent = start_agent(topo, family, service, key);
    let clients =
        four_streams_once_armed(topo, &standby, service, "streams flow before the failure");
    let watch = WireWatch::start(&topo.client, CLIENT_IF);
    kill_primary_host(topo, &mut setup.primary, &mut agent);
    clients
        .wait_progress(64 << 10, Duration::from_secs(60))
        .expect("every stream continues on the standby");
    Failed {
        watch,
        clients,
        _app: app,
        _listener: listener,
        standby,
        service,
        topo: setup.topo,
        key: setup.key,
        dir: setup.dir,
    }
}

/// One new echo connection, run until it moved 64 KiB both ways.
fn fresh_connection(topo: &Topology, service: SocketAddr) -> EchoResult {
    let fresh = EchoClients::start(&topo.client, service, 1, EchoOptions::default());
    fresh
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect("a new connection flows");
    let mut results = fresh.finish(Duration::from_secs(30));
    results.pop().expect("one result")
}

/// Polls the standby's status until `done` holds (at most 10 s).
fn wait_status(
    topo: &Topology,
    standby: &Mirror,
    done: impl Fn(&StatusReport) -> bool,
) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = status_of(topo, standby);
        if done(&status) || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn drain_failback(family: Family) {
    let failed = failed_over(family, "drain");
    let (topo, key, service) = (&failed.topo, &failed.key, failed.service);

    let primary = primary_returns(topo, family, service);
    let agent = start_agent_with(topo, family, service, key, &["--recovering"]);
    let owner = agent.wait_line("owner again", Duration::from_secs(20));
    failed.standby.wait_log("failback complete");
    let draining = status_of(topo, &failed.standby);
    failed
        .clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect("the restored streams go on at the standby");
    let fresh = fresh_connection(topo, service);
    let accepted = primary.wait_line("accepted", Duration::from_secs(10));
    let results = failed.clients.finish(Duration::from_secs(60));
    let seen = failed.watch.stop();
    let drained = wait_status(topo, &failed.standby, |s| {
        s.services[0].state == "protected"
    });
    let metrics = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let (report, _dir) = failed.standby.stop();

    assert_eq!(owner, "owner again at epoch 3 (yielded by standby)");
    assert_eq!((draining.role.as_str(), draining.epoch), ("standby", 3));
    assert_eq!(draining.services[0].state, "draining");
    assert_exact(&results);
    assert_exact(std::slice::from_ref(&fresh));
    assert_eq!(
        accepted,
        format!("accepted {}", fresh.local),
        "the primary served the new connection"
    );
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    assert_eq!(drained.services[0].state, "protected", "{drained:#?}");
    assert!(drained.peer.expect("the primary is heard").alive);
    assert_eq!(
        metrics.count("connmirror_failbacks_total{policy=\"drain\"}"),
        1
    );
    assert_eq!(metrics.get("connmirror_draining_connections"), 0.0);
    assert_eq!(metrics.get("connmirror_epoch"), 3.0);
    assert_eq!(report.takeovers.len(), 1, "{:#?}", report.takeovers);
    let takeover = &report.takeovers[0];
    assert_eq!((takeover.restored, takeover.handed_off), (4, 4));
    assert_eq!(takeover.flows.len(), 4);
}

#[test]
fn drain_keeps_restored_streams_on_the_standby_and_sends_new_connections_to_the_primary_v4() {
    drain_failback(Family::V4);
}

#[test]
fn drain_keeps_restored_streams_on_the_standby_and_sends_new_connections_to_the_primary_v6() {
    drain_failback(Family::V6);
}

/// The primary comes back rebooted (no stale sockets on the 4-tuples it
/// takes back): its link, addresses, echo listener, its agent announcing
/// itself recovering with a handoff socket, and the echo example registered
/// there. Returns (agent, handoff application, listener).
fn recovering_primary(failed: &Failed, family: Family) -> (Program, Program, Program) {
    let (topo, service) = (&failed.topo, failed.service);
    forget_tcp_state(topo);
    let listener = primary_returns(topo, family, service);
    let (agent, app) = recovering_agent(topo, failed.dir.path(), &failed.key, family, service);
    (agent, app, listener)
}

/// How the streams ended after they moved back to the primary.
struct Back {
    /// The agent's `owner again` line.
    owner: String,
    /// The primary application's `resumed` lines, one per connection.
    resumed: Vec<String>,
    /// Every stream's result.
    results: Vec<EchoResult>,
    /// What the clients' link carried meanwhile.
    seen: WireSeen,
}

/// Once the connections are moving back to the primary: waits for `agent` to
/// own the services again and for `app` to resume the connections of every
/// group of `clients`, then for the streams to verify 256 KiB more at the
/// primary; finishes them.
#[track_caller]
fn back_at_the_primary(
    agent: &Program,
    app: &Program,
    clients: Vec<EchoClients>,
    watch: WireWatch,
) -> Back {
    let owner = agent.wait_line("owner again", Duration::from_secs(30));
    let resumed = resumed_lines(app, clients.iter().map(EchoClients::len).sum());
    let mut results = Vec::new();
    for group in clients {
        group
            .wait_progress(256 << 10, Duration::from_secs(60))
            .expect("the streams go on at the primary");
        results.extend(group.finish(Duration::from_secs(60)));
    }
    let seen = watch.stop();
    Back {
        owner,
        resumed,
        results,
        seen,
    }
}

/// Failback by migration moves the connections the standby restored and one
/// its own listener accepted while it owned the service.
fn migrate_failback(family: Family) {
    let failed = failed_over_listening(family, "migrate");
    let (topo, service) = (&failed.topo, failed.service);
    let accepted = EchoClients::start(&topo.client, service, 1, EchoOptions::default());
    (accepted.wait_progress(64 << 10, Duration::from_secs(30)))
        .expect("a new connection flows at the standby");
    let before = failed.clients.verified() + accepted.verified();
    let (agent, app, _listener) = recovering_primary(&failed, family);
    let groups = vec![failed.clients, accepted];
    let back = back_at_the_primary(&agent, &app, groups, failed.watch);
    assert_eq!(back.results.len(), 5);
    let after = status_of(topo, &failed.standby);
    let lo = topo.gateway.ip(["addr", "show", "dev", "lo"]);
    let metrics = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let (_report, _dir2) = failed.standby.stop();

    assert_eq!(back.owner, "owner again at epoch 3 (yielded by standby)");
    assert_migrated(&back.results, before, &back.resumed, &back.seen);
    assert_eq!((after.role.as_str(), after.epoch), ("standby", 3));
    assert_eq!(after.services[0].state, "protected");
    assert!(
        !lo.contains(&format!(" {}/", service.ip())),
        "the standby still has the service address:\n{lo}"
    );
    assert_eq!(
        metrics.count("connmirror_failbacks_total{policy=\"migrate\"}"),
        1
    );
}

#[test]
fn migrate_moves_live_connections_back_to_the_primary_byte_exact_v4() {
    migrate_failback(Family::V4);
}

#[test]
fn migrate_moves_live_connections_back_to_the_primary_byte_exact_v6() {
    migrate_failback(Family::V6);
}

/// `connmirror migrate --to primary`, by hand: the standby's policy is
/// `manual` (with `--keep-sockets`), so the recovering primary waits until
/// the operator moves the connections. A first try, before the primary's
/// application registered, is refused by the agent before it rebuilds
/// anything, and the standby keeps serving every connection.
fn migrate_to(family: Family) {
    let failed = failed_over_with(family, &["--failback", "manual", "--keep-sockets"], false);
    let before = failed.clients.verified();
    let (topo, key, service) = (&failed.topo, &failed.key, failed.service);
    forget_tcp_state(topo);
    let _listener = primary_returns(topo, family, service);
    let wait = ["--handoff-wait", "300"];
    let agent = recovering_agent_with(topo, failed.dir.path(), key, family, service, &wait);
    failed
        .standby
        .wait_log("the primary is recovering; failback policy is manual");
    let waiting = status_of(topo, &failed.standby);
    let control = failed.standby.control_socket();
    let (no_app_ok, _, no_app) =
        control_cli(&topo.gateway, "migrate", &control, &["--to", "primary"]);
    let refused = status_of(topo, &failed.standby);
    let app = primary_handoff_app(topo, failed.dir.path(), service);
    let report = migrate(&topo.gateway, &control, &["--to", "primary"]);
    let back = back_at_the_primary(&agent, &app, vec![failed.clients], failed.watch);
    let (unknown_ok, _, unknown_err) =
        control_cli(&topo.gateway, "migrate", &control, &["--to", "nobody"]);
    let (_report, _dir2) = failed.standby.stop();

    assert_eq!((waiting.role.as_str(), waiting.epoch), ("owner", 2));
    assert!(!no_app_ok);
    assert_eq!(
        no_app.trim(),
        format!(
            "error: the node refused: migrating to {}: no application registered on the \
             handoff socket for {service} within 300ms",
            agent_addr(family)
        )
    );
    assert_eq!((refused.role.as_str(), refused.epoch), ("owner", 2));
    assert_moved(&report, "primary", 4, 2);
    assert_eq!(report.services, vec![service]);
    assert_eq!(back.owner, "owner again at epoch 3 (yielded by standby)");
    assert_migrated(&back.results, before, &back.resumed, &back.seen);
    assert!(!unknown_ok);
    assert_eq!(
        unknown_err.trim(),
        "error: the node refused: node \"nobody\" was never heard from: its agent must run (with --handoff)"
    );
}

#[test]
fn migrate_to_moves_live_connections_on_request_v4() {
    migrate_to(Family::V4);
}

#[test]
fn migrate_to_moves_live_connections_on_request_v6() {
    migrate_to(Family::V6);
}

fn step_down(family: Family) {
    let failed = failed_over(family, "manual");
    let (topo, key, service) = (&failed.topo, &failed.key, failed.service);
    let results = failed.clients.finish(Duration::from_secs(60));
    let owning = status_of(topo, &failed.standby);

    // A crashed host reboots with no TCP state; the namespace kept its
    // kernel, whose orphaned sockets would retransmit to the clients.
    forget_tcp_state(topo);
    let primary = primary_returns(topo, family, service);
    // Client segments forwarded while the primary was down reach it as soon as
    // its link is up; having no sockets, it answers each with a RST. The
    // standby still owns the service and fences them; once it has stepped
    // down it no longer would, so the higher epoch comes after they passed.
    std::thread::sleep(Duration::from_secs(1));
    let agent = start_agent_with(topo, family, service, key, &["--epoch", "5"]);
    failed
        .standby
        .wait_log("stepped down: a higher epoch owns the services");
    let after = status_of(topo, &failed.standby);
    let lo = topo.gateway.ip(["addr", "show", "dev", "lo"]);
    let fresh = fresh_connection(topo, service);
    let accepted = primary.wait_line("accepted", Duration::from_secs(10));
    let seen = failed.watch.stop();
    let metrics = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let (_report, _dir) = failed.standby.stop();

    assert_exact(&results);
    assert_eq!((owning.role.as_str(), owning.epoch), ("owner", 2));
    assert_eq!((after.role.as_str(), after.epoch), ("standby", 5));
    assert_eq!(after.services[0].state, "protected");
    assert!(
        !lo.contains(&format!(" {}/", service.ip())),
        "the standby still has the service address:\n{lo}"
    );
    assert_exact(std::slice::from_ref(&fresh));
    assert_eq!(accepted, format!("accepted {}", fresh.local));
    assert!(
        !agent.stderr().contains("stepped down"),
        "the higher epoch must not step down:\n{}",
        agent.stderr()
    );
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    assert_eq!(metrics.count("connmirror_step_downs_total"), 1);
    assert_eq!(metrics.get("connmirror_epoch"), 5.0);
}

#[test]
fn the_standby_steps_down_when_a_higher_epoch_claims_its_services_v4() {
    step_down(Family::V4);
}

#[test]
fn the_standby_steps_down_when_a_higher_epoch_claims_its_services_v6() {
    step_down(Family::V6);
}
