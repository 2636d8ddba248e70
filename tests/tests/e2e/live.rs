//! Live replay end to end (`--resume IP:PORT=live:ADDR`), inline and on-host,
//! with real, unmodified servers: Redis, and memcached.
//!
//! The primary runs redis-server on the service address; the standby runs its
//! own instance on loopback, which live replay feeds every client byte as it
//! is captured and whose output it compares with the primary's all along.
//! Eight clients pipeline `INCR` on their own keys and check every reply. A
//! ninth uses a key preset to 1000 in the standby's instance only: its first
//! reply differs, and the test waits for `divergent` to show in status and
//! metrics, long before anything fails. Each client carries more bytes than
//! the standby's `--history-cap` before the primary dies, which replay at
//! takeover could not continue. The standby takes over on missed
//! heartbeats: the eight continue on the same sockets with every reply right,
//! and only the divergent connection is reset, with one RST on the wire.
//!
//! A second test does the same on-host: the agent on the primary captures
//! and replicates, and the standby feeds its instance from the replicated
//! journal. Memcached goes through the same failover with eight clients. The
//! last test kills the standby's instance: its connections become
//! `unprotected: instance-down`, a new connection is tried and counted the
//! same way, and the primary's traffic goes on undisturbed. Another runs the
//! standby with `--journal`: after the divergence shows and the standby stops
//! cleanly, `connmirror journal inspect` names the divergent connection, with
//! the offset and both bytes, and no other. A standby hot-restarted with
//! `--pin` on its journal counts the connections it recovered as
//! `unprotected: mid-stream`: live replay never saw them open. The last
//! test measures the standby's memory: flat with live replay while 100
//! connections stream, growing with replay's full history.

use std::net::SocketAddr;
use std::time::Duration;

use connmirror_tests::cache::{CacheSetup as Setup, Resume, live_of, memory_growth};
use connmirror_tests::failover::{Program, kill_primary_host, start_agent, status};
use connmirror_tests::journal::{self, Way};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, scrape};
use connmirror_tests::mirror::{Mirror, Report};
use connmirror_tests::onhost::{onhost_standby_command, start_onhost_agent};
use connmirror_tests::pinning::PinnedInstance;
use connmirror_tests::redis::{self, Counter, CounterResult, Server};
use connmirror_tests::topology::{CLIENT_IF, Family};
use connmirror_tests::wire::{WireSeen, WireWatch};
use connmirror_tests::workdir::WorkDir;

/// Clients that must continue.
const CLIENTS: usize = 8;
/// Clients that must continue in the on-host test.
const ONHOST_CLIENTS: usize = 4;
/// Commands each client has answered before the primary dies: at 13 bytes
/// each (`INCR live-0\r\n`), more client bytes than [`HISTORY_CAP`].
const BEFORE: u64 = 6_000;
/// The standby's `--history-cap`: replay at takeover resets a connection
/// past it; live replay does not need the history at all.
const HISTORY_CAP: &str = "64K";

/// The standby, resuming the service by live replay, with detection on.
fn live_standby(s: &Setup) -> Mirror {
    let command = s
        .detecting_standby_command(Resume::Live)
        .arg("--history-cap")
        .arg(HISTORY_CAP);
    Mirror::start(&s.topo.gateway, &command)
}

/// The `connmirror_live_connections` series of `state` (and `reason`).
fn connections(s: &Setup, state: &str, reason: &str) -> String {
    format!(
        "connmirror_live_connections{{service=\"{}\",state=\"{state}\",reason=\"{reason}\"}}",
        s.service
    )
}

/// Every command answered in order, and nothing failed.
#[track_caller]
fn assert_continued(results: &[CounterResult], before: u64) {
    for result in results {
        if let Err(problem) = result.continued(before) {
            panic!("{problem}");
        }
    }
}

/// What a failover of live connections left behind.
struct Failover {
    /// The connections that had to continue.
    results: Vec<CounterResult>,
    /// The divergent one, if there was one.
    divergent: Option<CounterResult>,
    seen: WireSeen,
    report: Report,
}

/// Waits until each of `good` answered [`BEFORE`] commands, calls
/// `at_rest` with every client (to look at the standby, or to pause the
/// clients; [`Counter::resume`] follows the kill), kills the
/// primary's host (link, server, agent), and waits until every one of
/// `good` goes on through the automatic takeover.
fn fail_over(
    s: &mut Setup,
    standby: Mirror,
    agent: &mut Program,
    good: Vec<Counter>,
    divergent: Option<Counter>,
    at_rest: impl FnOnce(&Setup, &Mirror, &[&Counter]),
) -> Failover {
    for counter in &good {
        counter
            .wait_progress(BEFORE, Duration::from_secs(120))
            .expect("replies before the failover");
    }
    let all: Vec<&Counter> = good.iter().chain(&divergent).collect();
    at_rest(s, &standby, &all);
    let watch = WireWatch::start(&s.topo.client, CLIENT_IF);
    kill_primary_host(&s.topo, &mut s.primary, agent);
    for counter in good.iter().chain(&divergent) {
        counter.resume();
    }
    for counter in &good {
        counter
            .wait_progress(500, Duration::from_secs(60))
            .expect("every connection continues after the automatic takeover");
    }
    let divergent = divergent.map(|c| c.wait_failure(Duration::from_secs(30)));
    let results = (good.into_iter())
        .map(|c| c.finish(Duration::from_secs(30)))
        .collect();
    let seen = watch.stop();
    let (report, _dir) = standby.stop();
    Failover {
        results,
        divergent,
        seen,
        report,
    }
}

impl Failover {
    /// One automatic takeover that spliced `live` connections to the
    /// instance and reset `divergent` ones; every other connection went on
    /// exactly, and only the divergent ones saw a RST.
    #[track_caller]
    fn assert_live(&self, live: usize, service: SocketAddr) {
        let Failover {
            results,
            divergent,
            seen,
            report,
        } = self;
        assert_eq!(report.takeovers.len(), 1, "{:#?}", report.takeovers);
        let takeover = &report.takeovers[0];
        let n = divergent.iter().count() as u64;
        assert_eq!(takeover.trigger, "heartbeats-missed");
        assert_eq!(
            (takeover.restored, takeover.live, takeover.divergent),
            (live as u64, live as u64, n),
            "{takeover:#?}"
        );
        assert_eq!(takeover.unrecoverable_total(), 0, "{takeover:#?}");
        assert_continued(results, BEFORE);
        if let Some(divergent) = divergent {
            assert!(divergent.was_reset(), "{divergent:?}");
            assert_eq!(takeover.errors.len(), 1);
            assert!(
                takeover.errors[0].ends_with(&format!("divergent: {DIVERGED}")),
                "{:?}",
                takeover.errors
            );
        }
        // Connections, not packets: a client segment already in flight when
        // the divergent connection was reset draws a second RST for it (the
        // clients that went on were checked above).
        let mut reset = seen.rsts_received.clone();
        reset.sort();
        reset.dedup();
        let rsts: Vec<SocketAddr> = reset.iter().map(|(from, _)| *from).collect();
        assert_eq!(
            rsts,
            vec![service; n as usize],
            "only a divergent connection is reset: {:?}",
            seen.rsts_received
        );
    }
}

fn failover(family: Family) {
    let mut s = Setup::new(family, Server::Redis, "live");
    assert_eq!(
        redis::command(&s.topo.gateway, s.app, "SET diverges 1000\r\n"),
        "+OK\r\n"
    );
    let standby = live_standby(&s);
    let mut agent = start_agent(&s.topo, family, s.service, &s.key);
    standby.wait_log("armed: primary heard");
    let good = s.counters(CLIENTS, "live");
    let bad = Counter::start(&s.topo.client, s.service, "diverges");

    // ":1\r\n" from the primary, ":1001\r\n" from the instance: flagged at
    // the first reply, with no failover in sight.
    let flagged = s.wait_live(&standby, |live| live.divergent == 1);
    let metrics = scrape(&s.topo.gateway, DEFAULT_ENDPOINT);
    let mut before = None;
    let mut table = String::new();
    let failover = fail_over(
        &mut s,
        standby,
        &mut agent,
        good,
        Some(bad),
        |s, standby, _| {
            before = Some(s.wait_live(standby, |live| live.protected == CLIENTS as u64));
            table = status(&s.topo.gateway, &standby.control_socket(), false);
        },
    );

    assert_eq!((flagged.divergent, flagged.unprotected.len()), (1, 0));
    assert_eq!(metrics.count("connmirror_live_divergences_total"), 1);
    assert_eq!(metrics.count(&connections(&s, "divergent", "")), 1);
    let before = before.expect("looked at rest");
    assert_eq!(
        (before.protected, before.divergent),
        (CLIENTS as u64, 1),
        "{before:?}"
    );
    assert!(
        table.contains(&format!(
            "\n  live    {CLIENTS} protected, 0 opening, 1 divergent, lag "
        )),
        "{table}"
    );
    failover.assert_live(CLIENTS, s.service);
}

#[test]
fn live_replay_continues_redis_sessions_past_the_history_cap_and_resets_the_divergent_one_v4() {
    failover(Family::V4);
}

#[test]
fn live_replay_continues_redis_sessions_past_the_history_cap_and_resets_the_divergent_one_v6() {
    failover(Family::V6);
}

fn instance_down(family: Family) {
    let mut s = Setup::new(family, Server::Redis, "live-down");
    let standby = live_standby(&s);
    let watch = WireWatch::start(&s.topo.client, CLIENT_IF);
    let counters: Vec<Counter> = ["a", "b"]
        .iter()
        .map(|key| Counter::start(&s.topo.client, s.service, key))
        .collect();
    for counter in &counters {
        counter
            .wait_progress(200, Duration::from_secs(30))
            .expect("replies while the instance runs");
    }
    let protected = s.wait_live(&standby, |live| live.protected == 2);

    s.instance.kill();
    let down = s.wait_live(&standby, |live| live.protected == 0);
    for counter in &counters {
        counter
            .wait_progress(500, Duration::from_secs(30))
            .expect("the primary's traffic goes on");
    }
    let late = Counter::start(&s.topo.client, s.service, "c");
    late.wait_progress(200, Duration::from_secs(30))
        .expect("a new connection is served by the primary");
    let retried = s.wait_live(&standby, |live| live.unprotected.values().sum::<u64>() == 3);
    let metrics = scrape(&s.topo.gateway, DEFAULT_ENDPOINT);
    let results: Vec<CounterResult> = (counters.into_iter().chain([late]))
        .map(|c| c.finish(Duration::from_secs(30)))
        .collect();
    let seen = watch.stop();
    let _ = standby.stop();

    assert_eq!(protected.unprotected.len(), 0, "{protected:?}");
    let reason = |n| [("instance-down".to_owned(), n)].into();
    assert_eq!(down.unprotected, reason(2), "{down:?}");
    assert_eq!((retried.protected, retried.unprotected), (0, reason(3)));
    let unprotected = "connmirror_live_unprotected_total{reason=\"instance-down\"}";
    assert_eq!(metrics.count(unprotected), 3);
    assert_eq!(
        metrics.count(&connections(&s, "unprotected", "instance-down")),
        3
    );
    assert_continued(&results, 200);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
}

#[test]
fn a_killed_instance_leaves_its_connections_unprotected_and_the_primary_undisturbed_v4() {
    instance_down(Family::V4);
}

#[test]
fn a_killed_instance_leaves_its_connections_unprotected_and_the_primary_undisturbed_v6() {
    instance_down(Family::V6);
}

/// What the standby logs, its takeover reports and `journal inspect` shows
/// of the divergent connection: `:1\r\n` from the primary, `:1001\r\n`
/// from the instance.
const DIVERGED: &str =
    "the instance's output differs from the primary's at offset 2 (primary 0x0d, instance 0x30)";

/// A standby with `--journal` journals the divergence: once `connmirror
/// status` shows it and the standby stopped cleanly, `journal inspect` names
/// the divergent connection (the one whose client sent `INCR diverges`) with
/// the offset and both bytes, and no other connection; `report.json` agrees.
fn journaled_divergence(family: Family) {
    const GOOD: usize = 3;
    let s = Setup::new(family, Server::Redis, "live-journal");
    assert_eq!(
        redis::command(&s.topo.gateway, s.app, "SET diverges 1000\r\n"),
        "+OK\r\n"
    );
    let dir = WorkDir::new("live-journal");
    let command = (s.standby_command(Resume::Live))
        .arg("--journal")
        .arg(&dir.path().display().to_string());
    let standby = Mirror::start(&s.topo.gateway, &command);
    let good = s.counters(GOOD, "journaled");
    let bad = Counter::start(&s.topo.client, s.service, "diverges");
    for counter in &good {
        counter
            .wait_progress(200, Duration::from_secs(30))
            .expect("replies while the standby journals");
    }
    let flagged = s.wait_live(&standby, |live| live.divergent == 1);
    let (report, _scratch) = standby.stop();
    let results: Vec<CounterResult> = (good.into_iter())
        .map(|c| c.finish(Duration::from_secs(30)))
        .collect();
    drop(bad.finish(Duration::from_secs(30)));

    assert_eq!((flagged.protected, flagged.divergent), (GOOD as u64, 1));
    assert_continued(&results, 200);
    let inspection = journal::inspect(dir.path());
    assert_eq!(inspection.flows.len(), GOOD + 1, "{:#?}", inspection.flows);
    let divergent: Vec<u64> = (inspection.flows.iter())
        .filter(|flow| flow.divergence.is_some())
        .map(|flow| flow.id)
        .collect();
    let [id] = divergent[..] else {
        panic!("one divergent flow, not {divergent:?}");
    };
    for flow in &inspection.flows {
        let c2s = journal::dump(dir.path(), flow.id, Way::C2s);
        let key = if flow.id == id {
            "diverges"
        } else {
            "journaled-"
        };
        let sent = format!("INCR {key}");
        let head = String::from_utf8_lossy(&c2s[..c2s.len().min(24)]);
        assert!(
            c2s.starts_with(sent.as_bytes()),
            "flow {}: {head:?}",
            flow.id
        );
    }
    let table = journal::run(&["inspect", &dir.path().display().to_string()]);
    assert!(table.status.success(), "{table:?}");
    let stdout = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("flow ")).collect();
    assert_eq!(
        lines,
        [format!("flow {id} divergent: {DIVERGED}")],
        "{stdout}"
    );
    let reported: Vec<(u64, String)> = (report.flows.iter())
        .filter_map(|f| Some((f.id, divergence_text(f.divergence?))))
        .collect();
    assert_eq!(reported, [(id, DIVERGED.to_owned())]);
}

/// A divergence in the words the standby uses.
fn divergence_text(d: connmirror_tests::mirror::Divergence) -> String {
    format!(
        "the instance's output differs from the primary's at offset {} \
         (primary {:#04x}, instance {:#04x})",
        d.offset, d.primary, d.instance
    )
}

#[test]
fn a_standby_with_a_journal_journals_the_divergence_and_journal_inspect_shows_it_v4() {
    journaled_divergence(Family::V4);
}

#[test]
fn a_standby_with_a_journal_journals_the_divergence_and_journal_inspect_shows_it_v6() {
    journaled_divergence(Family::V6);
}

/// On-host: the agent captures on the primary and replicates; the standby,
/// capturing nothing, feeds its instance from the replicated journal. The
/// clients pause before the primary dies, so that the asynchronous
/// replication holds every byte they were answered (what async mode loses
/// otherwise is the on-host tests' subject, not this one's).
fn onhost_failover(family: Family) {
    let mut s = Setup::new(family, Server::Redis, "live-onhost");
    assert_eq!(
        redis::command(&s.topo.gateway, s.app, "SET diverges 1000\r\n"),
        "+OK\r\n"
    );
    let mut agent = start_onhost_agent(&s.topo, family, s.service, &s.key, &[]);
    let command = onhost_standby_command(family, &s.service.to_string(), &s.key)
        .arg("--resume")
        .arg(&s.resume_arg(Resume::Live))
        .arg("--history-cap")
        .arg(HISTORY_CAP);
    let standby = Mirror::start(&s.topo.gateway, &command);
    standby.wait_log("replication channel established");
    standby.wait_log("armed: primary heard");
    let good = s.counters(ONHOST_CLIENTS, "onhost");
    let bad = Counter::start(&s.topo.client, s.service, "diverges");
    let flagged = s.wait_live(&standby, |live| live.divergent == 1);
    let mut quiet = None;
    let failover = fail_over(
        &mut s,
        standby,
        &mut agent,
        good,
        Some(bad),
        |s, standby, all| {
            for counter in all {
                counter
                    .pause(Duration::from_secs(30))
                    .expect("every command answered");
            }
            quiet = Some(s.wait_status(standby, |status| {
                let live = live_of(status);
                status.replication_lag.is_some_and(|lag| lag.bytes == 0) && live.lag_bytes == 0
            }));
        },
    );

    assert_eq!(flagged.divergent, 1, "{flagged:?}");
    let live = live_of(&quiet.expect("looked at rest"));
    assert_eq!((live.protected, live.divergent), (ONHOST_CLIENTS as u64, 1));
    failover.assert_live(ONHOST_CLIENTS, s.service);
}

#[test]
fn live_replay_from_an_onhost_agent_continues_redis_sessions_v4() {
    onhost_failover(Family::V4);
}

#[test]
fn live_replay_from_an_onhost_agent_continues_redis_sessions_v6() {
    onhost_failover(Family::V6);
}

/// The other real server: memcached (text protocol, `incr`), eight clients
/// through an automatic failover past the history cap.
fn memcached_failover(family: Family) {
    let mut s = Setup::new(family, Server::Memcached, "live-memcached");
    let standby = live_standby(&s);
    let mut agent = start_agent(&s.topo, family, s.service, &s.key);
    standby.wait_log("armed: primary heard");
    let clients = s.counters(CLIENTS, "cache");
    let mut before = None;
    let failover = fail_over(
        &mut s,
        standby,
        &mut agent,
        clients,
        None,
        |s, standby, _| {
            before = Some(s.wait_live(standby, |live| live.protected == CLIENTS as u64));
        },
    );

    let before = before.expect("looked at rest");
    assert_eq!(
        (before.divergent, before.unprotected.len()),
        (0, 0),
        "{before:?}"
    );
    failover.assert_live(CLIENTS, s.service);
}

#[test]
fn live_replay_continues_memcached_sessions_past_the_history_cap_v4() {
    memcached_failover(Family::V4);
}

#[test]
fn live_replay_continues_memcached_sessions_past_the_history_cap_v6() {
    memcached_failover(Family::V6);
}

/// A standby hot-restarted (`--pin`) on its journal recovers the open
/// connections, but live replay never saw them open and can never feed
/// them: status and /metrics count each `unprotected: mid-stream` (where
/// they were shown nowhere before), and the primary's traffic goes on.
fn pin_restart(family: Family) {
    const RESTARTED: usize = 2;
    let s = Setup::new(family, Server::Redis, "live-restart");
    let pin = PinnedInstance::new("live-restart");
    let dir = WorkDir::new("live-restart");
    let command = (s.standby_command(Resume::Live).without_dumps())
        .pin(pin.name())
        .arg("--journal")
        .arg(&dir.path().display().to_string());
    let standby = Mirror::start(&s.topo.gateway, &command);
    let counters = s.counters(RESTARTED, "restart");
    for counter in &counters {
        counter
            .wait_progress(200, Duration::from_secs(30))
            .expect("replies before the restart");
    }
    let before = s.wait_live(&standby, |live| live.protected == RESTARTED as u64);
    let _ = standby.stop();
    let standby = Mirror::start(&s.topo.gateway, &command);
    let after = s.wait_live(&standby, |live| !live.unprotected.is_empty());
    let metrics = scrape(&s.topo.gateway, DEFAULT_ENDPOINT);
    for counter in &counters {
        let more = counter.replies() + 200;
        counter
            .wait_progress(more, Duration::from_secs(30))
            .expect("the primary's traffic goes on");
    }
    let results: Vec<CounterResult> = (counters.into_iter())
        .map(|c| c.finish(Duration::from_secs(30)))
        .collect();
    let _ = standby.stop();

    assert_eq!(before.unprotected.len(), 0, "{before:?}");
    let mid_stream = [("mid-stream".to_owned(), RESTARTED as u64)].into();
    assert_eq!((after.protected, after.opening), (0, 0), "{after:?}");
    assert_eq!(after.unprotected, mid_stream, "{after:?}");
    let counted = "connmirror_live_unprotected_total{reason=\"mid-stream\"}";
    assert_eq!(metrics.count(counted), RESTARTED as u64);
    let shown = connections(&s, "unprotected", "mid-stream");
    assert_eq!(metrics.count(&shown), RESTARTED as u64);
    assert_continued(&results, 200);
}

#[test]
fn a_pin_restart_counts_the_recovered_connections_unprotected_mid_stream_v4() {
    pin_restart(Family::V4);
}

#[test]
fn a_pin_restart_counts_the_recovered_connections_unprotected_mid_stream_v6() {
    pin_restart(Family::V6);
}

/// When the memory test's two RSS samples are taken, from the clients' start.
const MEMORY_AT: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(20)];

/// Live replay's memory is bounded by the connections' lag, not their age:
/// the standby's RSS stays within 10 % while 100 connections stream, where
/// replay's full retention grows with every byte. (The run is 60 s,
/// `cargo xtask bench resume`'s memory part; `cargo xtask test` takes 20,
/// with about 4 MB/s of client bytes.)
#[test]
fn live_replay_memory_stays_flat_while_full_history_grows_v4() {
    let rss = |resume: Resume| {
        let run = memory_growth(Family::V4, resume, &MEMORY_AT).expect("the memory run");
        eprintln!(
            "{}: RSS {:?} bytes, {} commands answered",
            resume.name(),
            run.rss,
            run.commands
        );
        <[u64; 2]>::try_from(run.rss).expect("two samples")
    };
    let [early, late] = rss(Resume::Live);
    assert!(
        late <= early + early / 10,
        "live replay's RSS grew from {early} to {late} bytes"
    );
    let [full_early, full_late] = rss(Resume::Replay);
    assert!(
        full_late > full_early + full_early / 10,
        "full history's RSS went from {full_early} to {full_late} bytes"
    );
}
