//! On-host mode: the agent captures on the primary's own link (the default
//! attach points: TC ingress and egress on a veth) and replicates the journal over the encrypted,
//! authenticated channel to a standby that captures nothing. With `--sync`
//! a failover loses no byte; without it, what is lost is at most the
//! replication lag the agent reported; a wrong key is refused and counted;
//! planned maintenance moves the live connections to the standby.

use std::path::{Path, PathBuf};
use std::time::Duration;

use connmirror_common::Counter;
use connmirror_tests::echo::{EchoClients, EchoOptions, assert_exact};
use connmirror_tests::failover::{
    Moved, PrimarySetup, Program, assert_migrated, assert_moved, gateway_addrs, handoff_app,
    manual_failover, move_to_standby, primary_setup, status, status_in, status_of, the_takeover,
};
use connmirror_tests::kills::{self, FULL, fail_over, full, protected, wait_replicating};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, promtool_check, scrape};
use connmirror_tests::mirror::Mirror;
use connmirror_tests::onhost::{
    REPLICATION_PORT, onhost_standby, onhost_standby_command, per_standby, replication_addr,
    second_standby, second_standby_addrs, second_standby_flags, start_onhost_agent,
    start_pinned_onhost_agent,
};
use connmirror_tests::pinning::PinnedInstance;
use connmirror_tests::topology::{CLIENT_IF, Family, Topology};
use connmirror_tests::wire::WireWatch;

const PORT: u16 = 7000;
/// `--sync`, and a standby that boots after the connections began: the
/// agent's checkpoint gives it every flow, the primary's segments wait for
/// its acknowledgments, and after the primary dies every echo stream goes on
/// byte-exact, with no RST.
#[test]
fn sync_failover_from_a_late_standby_loses_no_byte_v4() {
    sync_failover_from_a_late_standby(Family::V4);
}

#[test]
fn sync_failover_from_a_late_standby_loses_no_byte_v6() {
    sync_failover_from_a_late_standby(Family::V6);
}

fn sync_failover_from_a_late_standby(family: Family) {
    let mut setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let mut agent = start_onhost_agent(topo, family, service, key, &["--sync", FULL[0], FULL[1]]);
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    let standby = onhost_standby(topo, family, &full(service), key);
    let _app = handoff_app(topo, &standby, service);
    wait_replicating(&standby);
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("streams flow under --sync once the standby holds them");
    let agent_scrape = scrape(&topo.server, DEFAULT_ENDPOINT);
    let before = status_of(topo, &standby);
    let table = status(&topo.gateway, &standby.control_socket(), false);
    let standby_scrape = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    let (results, seen, report) = fail_over(&mut setup, &mut agent, clients, watch, standby);

    promtool_check(&agent_scrape.text);
    promtool_check(&standby_scrape.text);
    let to = replication_addr(family);
    assert!(agent_scrape.count("connmirror_ebpf_sync_held_total") > 0);
    assert_eq!(
        agent_scrape.count(&per_standby("connmirror_replication_connected", to)),
        1
    );
    assert_eq!(
        agent_scrape.count(&per_standby("connmirror_replication_connects_total", to)),
        1
    );
    assert!(agent_scrape.get(&per_standby("connmirror_replica_lag_bytes", to)) >= 0.0);
    assert_eq!(standby_scrape.count("connmirror_replication_connected"), 1);
    assert!(standby_scrape.count("connmirror_replication_applied_bytes_total") > 0);
    assert_eq!(
        standby_scrape.count("connmirror_replication_refused_total"),
        0
    );
    assert_eq!(before.flows.get("ready"), Some(&4), "{before:?}");
    assert!(before.replication_lag.is_some(), "{before:?}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("lag       ") && l.ends_with(" s")),
        "{table}"
    );
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    let takeover = the_takeover(&report, "heartbeats-missed");
    assert_eq!((takeover.restored, takeover.handed_off), (4, 4));
    assert_eq!(takeover.unrecoverable_total(), 0);
    assert_eq!(
        report.counter(Counter::PacketsTracked),
        0,
        "the standby captured nothing"
    );
}

/// Two standbys: the agent replicates under `--sync` to the on-host standby
/// in the gateway and to a second one in the clients' namespace (its own
/// address, ports and sockets; `--failover manual`). Both hold the four
/// echo flows, the agent shows both connected under their `standby`
/// label; then the primary host dies and the gateway's standby takes over:
/// every stream goes on byte-exact, with no RST, and the second standby
/// never took over.
#[test]
fn two_standbys_hold_every_flow_and_a_failover_loses_no_byte_v4() {
    two_standbys(Family::V4);
}

#[test]
fn two_standbys_hold_every_flow_and_a_failover_loses_no_byte_v6() {
    two_standbys(Family::V6);
}

fn two_standbys(family: Family) {
    let mut setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let standby = onhost_standby(topo, family, &full(service), key);
    let _app = handoff_app(topo, &standby, service);
    let second = second_standby(topo, family, &full(service), key);
    let second_flags = second_standby_flags(topo, family);
    let flags: Vec<&str> = ["--sync", FULL[0], FULL[1]]
        .into_iter()
        .chain(second_flags.iter().map(String::as_str))
        .collect();
    let mut agent = start_onhost_agent(topo, family, service, key, &flags);
    wait_replicating(&standby);
    wait_replicating(&second);
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    clients
        .wait_progress(64 << 10, Duration::from_secs(60))
        .expect("streams flow under --sync to two standbys");
    let agent_scrape = scrape(&topo.server, DEFAULT_ENDPOINT);
    let first_status = status_of(topo, &standby);
    let second_status = status_in(&topo.client, &second);
    let first_scrape = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let second_scrape = scrape(&topo.client, DEFAULT_ENDPOINT);
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    let addrs = [
        replication_addr(family),
        second_standby_addrs(topo, family).1,
    ];

    let (results, seen, report) = fail_over(&mut setup, &mut agent, clients, watch, standby);
    let (second_report, _dir) = second.stop();

    promtool_check(&agent_scrape.text);
    for to in addrs {
        let series = |name| per_standby(name, to);
        assert_eq!(
            agent_scrape.count(&series("connmirror_replication_connected")),
            1
        );
        assert_eq!(
            agent_scrape.count(&series("connmirror_replication_connects_total")),
            1
        );
        assert!(agent_scrape.count(&series("connmirror_replication_sent_bytes_total")) > 0);
    }
    assert_eq!(agent_scrape.sum("connmirror_replication_connected"), 2);
    assert_eq!(agent_scrape.count("connmirror_sync_fallbacks_total"), 0);
    assert!(agent_scrape.count("connmirror_sync_released_total") > 0);
    for (what, status, scrape) in [
        ("the gateway's standby", &first_status, &first_scrape),
        ("the second standby", &second_status, &second_scrape),
    ] {
        assert_eq!(status.flows.get("ready"), Some(&4), "{what}: {status:?}");
        assert_eq!(status.takeovers, 0, "{what}");
        assert_eq!(
            scrape.count("connmirror_replication_connected"),
            1,
            "{what}"
        );
        assert!(
            scrape.count("connmirror_replication_applied_bytes_total") > 0,
            "{what}"
        );
    }
    assert_exact(&results);
    // The agent's channel to the second standby leaves from the kernel's
    // choice of source address, the service address, which the gateway's
    // standby owns after the takeover: it resets what the second standby
    // still sends on that channel. That RST reaches the clients' namespace
    // but no client connection.
    let to_clients: Vec<_> = (seen.rsts_received.iter())
        .filter(|(_, to)| *to != addrs[1])
        .collect();
    assert_eq!(to_clients, Vec::<&_>::new(), "no RST may reach a client");
    let takeover = the_takeover(&report, "heartbeats-missed");
    assert_eq!((takeover.restored, takeover.handed_off), (4, 4));
    assert_eq!(takeover.unrecoverable_total(), 0);
    assert_eq!(
        second_report.takeovers.len(),
        0,
        "the second standby only logs"
    );
}

/// `--sync`: the primary host dies at a random moment of four echo streams
/// (bytes both ways), [`KILLS`] times per family, each time in a fresh
/// topology. Every time, every stream goes on from the standby byte-exact,
/// with no RST: the standby held everything the clients had been told.
#[test]
fn sync_kills_at_random_moments_lose_nothing_v4() {
    sync_kills(Family::V4);
}

#[test]
fn sync_kills_at_random_moments_lose_nothing_v6() {
    sync_kills(Family::V6);
}

/// Kills per family in `cargo xtask test` (`cargo xtask bench onhost` runs
/// 20).
const KILLS: u64 = 5;

fn sync_kills(family: Family) {
    kills::sync_kills(family, KILLS);
}

/// `--sync` with the standby gone: the agent holds for `--sync-timeout`,
/// then releases what it holds and replicates asynchronously (the exact log
/// line, the counter, the gauge), the streams go on; when a standby is back
/// and has caught up, the agent holds again (log line, counter, gauge), and
/// every stream stays byte-exact.
#[test]
fn sync_without_a_standby_falls_back_then_holds_again_v4() {
    let family = Family::V4;
    let setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let timeout = ["--sync-timeout", "1500"];
    let flags = ["--sync", timeout[0], timeout[1], FULL[0], FULL[1]];
    let (standby, app, agent) = protected(&setup, family, &flags);
    let clients = EchoClients::start(&topo.client, service, 2, EchoOptions::default());
    let progress = |what: &str| progress(&clients, what);
    progress("streams flow under --sync");

    drop(app);
    drop(standby.stop());
    let holding = scrape(&topo.server, DEFAULT_ENDPOINT);
    agent.wait_stderr(FALLBACK, Duration::from_secs(20));
    let fallen = scrape(&topo.server, DEFAULT_ENDPOINT);
    progress("the streams go on, unheld, without a standby");
    let standby = onhost_standby(topo, family, &full(service), key);
    let _app = handoff_app(topo, &standby, service);
    agent.wait_stderr(RESUMED, Duration::from_secs(30));
    let back = scrape(&topo.server, DEFAULT_ENDPOINT);
    progress("the streams go on, held again");
    let results = clients.finish(Duration::from_secs(60));
    let stderr = agent.stderr();
    drop(standby.stop());

    assert_eq!(holding.get("connmirror_sync_holding"), 1.0, "held at first");
    assert_eq!(holding.count("connmirror_sync_fallbacks_total"), 0);
    let line = (stderr.lines())
        .find(|l| l.contains(FALLBACK))
        .expect("a fallback line");
    let held = line.split(FALLBACK).nth(1).expect("after the prefix");
    let (count, rest) = held.split_once(' ').expect("a count");
    assert!(count.parse::<u64>().is_ok(), "{line}");
    assert_eq!(
        rest, "held segments and replicating asynchronously until it catches up",
        "{line}"
    );
    assert_eq!(fallen.count("connmirror_sync_fallbacks_total"), 1);
    assert_eq!(fallen.get("connmirror_sync_holding"), 0.0);
    assert_eq!(fallen.get("connmirror_sync_held_segments"), 0.0);
    assert_eq!(back.count("connmirror_sync_resumptions_total"), 1);
    assert_eq!(back.count("connmirror_sync_fallbacks_total"), 1);
    assert_eq!(back.get("connmirror_sync_holding"), 1.0);
    assert!(back.count("connmirror_sync_passed_total") > 0);
    assert_exact(&results);
}

/// `--sync` when the agent itself dies (SIGKILL) while it holds segments:
/// its rules stay, and with no agent on the queue the kernel drops what
/// they match, so not one echoed byte reaches a client until a new agent
/// runs; the new agent replaces the stale rules, and every stream goes on
/// byte-exact. (`--failover manual`: the standby must not take over when
/// the agent's heartbeats stop.)
#[test]
fn sync_lets_nothing_out_while_the_agent_is_dead_v4() {
    let family = Family::V4;
    let setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let (standby, _app) = manual_standby(&setup, family);
    let flags = ["--sync", FULL[0], FULL[1]];
    let mut agent = start_onhost_agent(topo, family, service, key, &flags);
    wait_replicating(&standby);
    let clients = EchoClients::start(&topo.client, service, 2, EchoOptions::default());
    let progress = |what: &str| progress(&clients, what);
    progress("streams flow under --sync");

    let (before, dead) = verified_while_dead(&clients, &mut agent);
    let chain = topo
        .server
        .command("iptables")
        .args(["-w", "-t", "mangle", "-S"])
        .output()
        .expect("run iptables");
    let agent = start_onhost_agent(topo, family, service, key, &flags);
    progress("the streams go on with a new agent");
    let results = clients.finish(Duration::from_secs(60));
    let stderr = agent.stderr();
    drop(agent);
    let (report, _dir) = standby.stop();

    assert_eq!(dead, before, "echoed bytes reached a client with no agent");
    assert!(
        String::from_utf8_lossy(&chain.stdout).contains("-j NFQUEUE --queue-num 7403"),
        "the dead agent's rule stays: {chain:?}"
    );
    assert!(
        stderr.contains("--sync: holding each outgoing segment"),
        "{stderr}"
    );
    assert_exact(&results);
    assert_eq!(report.takeovers.len(), 0);
}

/// `--sync --pin`: the agent dies (SIGKILL) while it holds segments, and not
/// one echoed byte reaches a client until an agent started again with the
/// same `--pin` takes the pinned capture over, starts from the four flows
/// the standby holds, and holds again. Then the primary host dies: every
/// stream goes on from the standby byte-exact, with no RST, so the
/// restarted agent's stream kept all the standby knew. (`--failover
/// manual`, so the standby does not take over while the agent is down.)
#[test]
fn a_pinned_agent_restarted_holds_again_and_loses_nothing_v4() {
    pinned_agent_restart(Family::V4);
}

#[test]
fn a_pinned_agent_restarted_holds_again_and_loses_nothing_v6() {
    pinned_agent_restart(Family::V6);
}

fn pinned_agent_restart(family: Family) {
    let pin = PinnedInstance::new("onhost");
    let mut setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let (standby, _app) = manual_standby(&setup, family);
    let flags = ["--sync", FULL[0], FULL[1]];
    let mut agent = start_pinned_onhost_agent(topo, family, service, key, &pin, &flags);
    wait_replicating(&standby);
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    let progress = |what: &str| progress(&clients, what);
    progress("streams flow under --sync");

    let (before, dead) = verified_while_dead(&clients, &mut agent);
    let mut agent = start_pinned_onhost_agent(topo, family, service, key, &pin, &flags);
    progress("the streams go on with the restarted agent");
    let restarted = scrape(&topo.server, DEFAULT_ENDPOINT);
    let stderr = agent.stderr();
    let watch = WireWatch::start(&topo.client, CLIENT_IF);
    agent.kill();
    let takeover = manual_failover(topo, &mut setup.primary, &standby);
    progress("every stream continues after the failover");
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    drop(standby.stop());

    assert_eq!(dead, before, "echoed bytes reached a client with no agent");
    assert!(stderr.contains("took a pinned capture over"), "{stderr}");
    assert!(
        stderr.contains("resuming from the standby's flows flows=4"),
        "{stderr}"
    );
    assert_eq!(restarted.get("connmirror_sync_holding"), 1.0);
    assert!(restarted.count("connmirror_sync_released_total") > 0);
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    assert_eq!((takeover.restored, takeover.handed_off), (4, 4));
    assert_eq!(takeover.unrecoverable_total(), 0);
}

/// `--sync --pin`, stopped on purpose (SIGTERM): the agent keeps its rules
/// with the pinned capture and says so, and the kernel drops the echoes
/// while no agent runs. `connmirror mirror --detach-all --pin NAME` removes
/// the instance and the orphaned rules, a line each, and the streams go on
/// unheld, byte-exact.
#[test]
fn detach_all_removes_a_stopped_pinned_agents_rules_v4() {
    let family = Family::V4;
    let pin = PinnedInstance::new("onhost");
    let setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let command = onhost_standby_command(family, &full(service), key);
    let standby = Mirror::start(&topo.gateway, &command.arg("--failover").arg("manual"));
    let flags = ["--sync"];
    let mut agent = start_pinned_onhost_agent(topo, family, service, key, &pin, &flags);
    wait_replicating(&standby);
    let clients = EchoClients::start(&topo.client, service, 2, EchoOptions::default());
    let progress = |what: &str| progress(&clients, what);
    progress("streams flow under --sync");

    let pid = agent.id();
    agent.terminate();
    std::thread::sleep(Duration::from_millis(300));
    let before = clients.verified();
    std::thread::sleep(Duration::from_secs(1));
    let dead = clients.verified();
    let kept = mangle_rules(topo);
    let detach = (topo
        .server
        .command_host_mounts(connmirror_tests::connmirror_bin()))
    .args(["mirror", "--detach-all", "--pin", pin.name()])
    .output()
    .expect("run connmirror mirror --detach-all");
    progress("the streams go on unheld");
    let results = clients.finish(Duration::from_secs(60));
    drop(standby.stop());

    let stderr = agent.stderr();
    assert!(
        stderr.contains("--sync: rules kept with the pinned capture"),
        "{stderr}"
    );
    assert_eq!(dead, before, "echoed bytes reached a client with no agent");
    let chain = format!("CONNMIRROR-SYNC-7403-{pid}");
    assert!(kept.contains(&format!("-N {chain}")), "{kept}");
    let stdout = String::from_utf8_lossy(&detach.stdout);
    assert!(detach.status.success(), "{detach:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with(&format!("removed {}: ", pin.dir().display())));
    for (line, tool) in lines[1..].iter().zip(["iptables", "ip6tables"]) {
        assert_eq!(
            *line,
            format!(
                "removed {tool} chain {chain} of an agent no longer running: its services' \
                 segments go out unheld"
            )
        );
    }
    assert!(!mangle_rules(topo).contains("CONNMIRROR"));
    assert_exact(&results);
}

/// `iptables -t mangle -S` in the primary's namespace.
fn mangle_rules(topo: &Topology) -> String {
    let output = (topo.server.command("iptables"))
        .args(["-w", "-t", "mangle", "-S"])
        .output()
        .expect("run iptables");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A standby (full retention) that takes over only by hand (`--failover
/// manual`: not when the agent's heartbeats stop), and its handoff app.
fn manual_standby(setup: &PrimarySetup, family: Family) -> (Mirror, Program) {
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let command = onhost_standby_command(family, &full(service), key);
    let standby = Mirror::start(&topo.gateway, &command.arg("--failover").arg("manual"));
    let app = handoff_app(topo, &standby, service);
    (standby, app)
}

/// Kills `agent` (SIGKILL); what `clients` had verified 300 ms later, and
/// 1 s after that.
fn verified_while_dead(clients: &EchoClients, agent: &mut Program) -> (u64, u64) {
    agent.kill();
    std::thread::sleep(Duration::from_millis(300));
    let before = clients.verified();
    std::thread::sleep(Duration::from_secs(1));
    (before, clients.verified())
}

/// The agent's log line when `--sync` falls back (`--sync-timeout 1500`),
/// up to the number of segments it released.
const FALLBACK: &str = "--sync: no acknowledgment from the standby for 1500 ms: releasing ";
/// The agent's log line when `--sync` holds again.
const RESUMED: &str = "--sync: the standby caught up: holding again";

/// Without `--sync`, [`KILLS`] times per family: the replication stream is
/// blocked at the standby's host for a random while (its packets dropped,
/// so the agent's batches wait unacknowledged), then the primary's link goes
/// down (the failure) and the agent's exposure for the service is read right
/// then. "Lost" is what the client's kernel holds as delivered that the
/// standby's copy lacks: client bytes the primary acknowledged past the
/// standby's client stream, plus echoed bytes the client received past the
/// standby's server stream. The exposure matches it within one batch
/// ([`kills::async_kill`]; default retention, so the agent leaves
/// acknowledged bytes out of its batches).
#[test]
fn async_kills_lose_what_the_exposure_said_v4() {
    async_kills(Family::V4);
}

#[test]
fn async_kills_lose_what_the_exposure_said_v6() {
    async_kills(Family::V6);
}

fn async_kills(family: Family) {
    kills::async_kills(family, KILLS);
}

/// Waits until every echo stream verified 16 KiB more; panics saying `what`
/// did not happen.
fn progress(clients: &EchoClients, what: &str) {
    (clients.wait_progress(16 << 10, Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// An agent whose key file differs from the standby's: the standby refuses
/// the handshake (exact error, counted), the agent says why and counts it,
/// and nothing is replicated.
#[test]
fn replication_under_a_wrong_key_is_refused_and_counted() {
    let family = Family::V4;
    let setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let standby = Mirror::start(
        &topo.gateway,
        &onhost_standby_command(family, &full(service), key),
    );
    let wrong = wrong_key(setup.dir.path());
    let agent = start_onhost_agent(topo, family, service, &wrong, &FULL);
    let gateway = gateway_addrs(family).0;
    standby.wait_log("failed authentication under the shared key");
    agent.wait_stderr(
        &format!(
            "replication handshake with {gateway}:{REPLICATION_PORT} refused: the standby \
             closed the connection (the two hosts' --key files differ?)"
        ),
        Duration::from_secs(20),
    );
    let standby_scrape = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let agent_scrape = scrape(&topo.server, DEFAULT_ENDPOINT);
    let stderr = standby.stderr();
    let (report, _dir) = standby.stop();

    let refused = stderr
        .lines()
        .find(|l| l.contains("replication handshake with"))
        .expect("a refusal line");
    assert!(
        refused.ends_with(
            "refused: its first handshake message failed authentication under the shared key \
             (the two hosts' --key files differ?)"
        ),
        "{refused}"
    );
    assert!(
        refused.contains("replication handshake with 198.18.1."),
        "the peer is the primary, on the gateway's server link: {refused}"
    );
    assert!(standby_scrape.count("connmirror_replication_refused_total") >= 1);
    assert_eq!(
        standby_scrape.count("connmirror_replication_accepted_total"),
        0
    );
    assert_eq!(
        standby_scrape.count("connmirror_replication_applied_bytes_total"),
        0
    );
    let to = replication_addr(family);
    let series = |name| per_standby(name, to);
    assert!(agent_scrape.count(&series("connmirror_replication_handshake_failures_total")) >= 1);
    assert_eq!(
        agent_scrape.count(&series("connmirror_replication_connects_total")),
        0
    );
    assert_eq!(
        agent_scrape.count(&series("connmirror_replication_connected")),
        0
    );
    assert_eq!(report.takeovers.len(), 0);
}

/// A second key file, of the right mode and length but other bytes.
fn wrong_key(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("wrong-key");
    std::fs::write(&path, b"another key, also 32 bytes long!").expect("write the key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Waits until `standby` has the agent's replication channel and has heard
/// its heartbeats.
/// Planned maintenance in on-host mode: `connmirror migrate --to standby` on
/// the agent quiesces the service on the primary's own capture (in a real
/// deployment the standby is not on the path), the standby rebuilds the four
/// echo connections from the agent's dumps and hands them to its
/// application, the primary lets its copies go and steps down; every stream
/// goes on byte-exact, with no RST.
#[test]
fn a_planned_migration_moves_on_host_connections_to_the_standby_v4() {
    let family = Family::V4;
    let setup = primary_setup(family, PORT, "onhost");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let standby = onhost_standby(topo, family, &full(service), key);
    let app = handoff_app(topo, &standby, service);
    let control = setup.dir.path().join("agent-control.sock");
    let flags = [
        "--control",
        &control.display().to_string(),
        FULL[0],
        FULL[1],
    ];
    let mut agent = start_onhost_agent(topo, family, service, key, &flags);
    wait_replicating(&standby);
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    clients
        .wait_progress(64 << 10, Duration::from_secs(60))
        .expect("streams flow to the primary");
    let watch = WireWatch::start(&topo.client, CLIENT_IF);
    let before = clients.verified();

    let Moved {
        report: moved,
        stepped,
        resumed,
    } = move_to_standby(topo, &control, &agent, &app, &clients, 4);
    let agent_scrape = scrape(&topo.server, DEFAULT_ENDPOINT);
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    agent.kill();
    let (report, _dir) = standby.stop();

    assert_moved(&moved, "standby", 4, 1);
    assert_eq!(stepped, "stepped down: standby holds epoch 2");
    assert!(
        agent_scrape.count("connmirror_ebpf_quiesce_drops_total") > 0,
        "the primary's own capture dropped no client segment while it dumped"
    );
    assert_migrated(&results, before, &resumed, &seen);
    let takeover = the_takeover(&report, "migration");
    assert_eq!((takeover.restored, takeover.handed_off), (4, 4));
    assert_eq!(
        report.counter(Counter::PacketsTracked),
        0,
        "the standby captured nothing"
    );
}
