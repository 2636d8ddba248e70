//! Failures at random moments in on-host mode, shared by the e2e tests
//! (`cargo xtask test`, 5 kills per family) and `cargo xtask bench onhost`
//! (20 per family, with the outcome of each in bench/RESULTS.md).
//!
//! - [`sync_kill`]: under `--sync`, the primary host dies at a random moment
//!   of four echo streams; every stream must go on from the standby
//!   byte-exact, with no RST.
//! - [`async_kill`]: without it, the replication stream is blocked for a
//!   random while, then the primary dies; the exposure the agent showed just
//!   before must match what the restored flow lacked, within one batch, with
//!   acknowledged bytes left out of the agent's batches.
//!
//! Each kill asserts what it checks (a failure panics with the reason) and
//! returns what it measured. The moments come from a seed printed first,
//! so that a failure can be told apart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::echo::{EchoClients, EchoOptions, EchoResult, assert_exact};
use crate::failover::{
    PrimarySetup, Program, handoff_app, kill_primary_host, primary_setup, status, status_of,
    the_takeover,
};
use crate::metrics::{DEFAULT_ENDPOINT, scrape};
use crate::mirror::{Mirror, Report};
use crate::onhost::{
    Probe, REPLICATION_PORT, onhost_standby, per_standby, replication_addr, start_onhost_agent,
};
use crate::topology::{CLIENT_IF, Family, SERVER_IF, Topology};
use crate::wire::{WireSeen, WireWatch};

/// The service port of every kill.
const PORT: u16 = 7000;
/// The echo handoff resumes from the history: both ends keep all of it.
pub const FULL: [&str; 2] = ["--retention", "full"];
/// One batch of the async probe's flow: the agent drains its ring at least
/// every 5 ms, and the probe moves about 1 MiB/s both ways together.
pub const ONE_BATCH: u64 = 16 << 10;

/// `SERVICE=full`, the standby's side of [`FULL`].
pub fn full(service: SocketAddr) -> String {
    format!("{service}=full")
}

/// What one `--sync` kill measured (it passed every check).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncKill {
    /// Traffic before the kill, in milliseconds.
    pub delay_ms: u64,
    /// Bytes the four streams echoed byte-exact, before and after.
    pub verified: u64,
    /// Segments the agent had released by the kill.
    pub released: u64,
}

/// What one async kill measured (it passed every check).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AsyncKill {
    /// How long replication was blocked before the failure, in milliseconds.
    pub blocked_ms: u64,
    /// The exposure /metrics showed just before, in bytes.
    pub exposure: u64,
    /// What the restored flow lacked of what the client held, in bytes.
    pub lost: u64,
    /// The replication lag the agent reported, in bytes.
    pub lag: u64,
}

/// `kills` `--sync` kills in `family`, each after up to 1.5 s of traffic.
pub fn sync_kills(family: Family, kills: u64) -> Vec<SyncKill> {
    at_random(kills, |random| {
        sync_kill(family, Duration::from_millis(random % 1500))
    })
}

/// `kills` async kills in `family`, replication blocked 0.3–1 s each.
pub fn async_kills(family: Family, kills: u64) -> Vec<AsyncKill> {
    at_random(kills, |random| {
        async_kill(family, Duration::from_millis(300 + random % 700))
    })
}

/// Under `--sync`, the primary host dies `delay` into four echo streams.
pub fn sync_kill(family: Family, delay: Duration) -> SyncKill {
    eprintln!("kill after {delay:?} of traffic");
    let mut setup = primary_setup(family, PORT, "onhost");
    let (standby, _app, mut agent) = protected(&setup, family, &["--sync", FULL[0], FULL[1]]);
    let (topo, service) = (&setup.topo, setup.service);
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    clients
        .wait_progress(16 << 10, Duration::from_secs(60))
        .expect("streams flow under --sync");
    let watch = WireWatch::start(&topo.client, CLIENT_IF);
    std::thread::sleep(delay);
    let agent_scrape = scrape(&topo.server, DEFAULT_ENDPOINT);

    let (results, seen, report) = fail_over(&mut setup, &mut agent, clients, watch, standby);

    let released = agent_scrape.count("connmirror_sync_released_total");
    assert!(released > 0);
    assert_eq!(
        agent_scrape.count("connmirror_sync_hold_seconds_count"),
        released,
        "every released segment's hold time observed"
    );
    assert_eq!(agent_scrape.count("connmirror_sync_fallbacks_total"), 0);
    assert_eq!(agent_scrape.get("connmirror_sync_holding"), 1.0);
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    let takeover = the_takeover(&report, "heartbeats-missed");
    assert_eq!((takeover.restored, takeover.handed_off), (4, 4));
    assert_eq!(takeover.unrecoverable_total(), 0);
    SyncKill {
        delay_ms: delay.as_millis() as u64,
        verified: results.iter().map(|r| r.verified).sum(),
        released,
    }
}

/// Without `--sync`: the replication stream is blocked at the standby's
/// host for `blocked` (its packets dropped, so the agent's batches wait
/// unacknowledged), then the primary's link goes down (the failure) and the
/// agent's exposure for the service is read right then. "Lost" is what the
/// client's kernel holds as delivered that the standby's copy lacks: client
/// bytes the primary acknowledged past the standby's client stream, plus
/// echoed bytes the client received past the standby's server stream. The
/// exposure matches it within [`ONE_BATCH`]. Both ends keep the default
/// retention, so the agent leaves acknowledged bytes out of its batches.
pub fn async_kill(family: Family, blocked: Duration) -> AsyncKill {
    eprintln!("replication blocked for {blocked:?}");
    let mut setup = primary_setup(family, PORT, "onhost");
    let control = setup.dir.path().join("agent-control.sock");
    let path = control.display().to_string();
    // The default retention: the agent leaves out of its batches the bytes
    // acknowledged before they were shipped, and the exposure still holds.
    let flags = ["--control", &path];
    let spec = setup.service.to_string();
    let (standby, _app, mut agent) = protected_as(&setup, family, &spec, &flags);
    let (topo, service) = (&setup.topo, setup.service);
    let mut probe = Probe::start(&topo.client, service, 512 << 10);
    wait_until(|| probe.received() >= 64 << 10, "the probe's echo flows");
    let before = status_of(topo, &standby);
    let block = Blocked::replication(topo, family);
    std::thread::sleep(blocked);

    topo.server.ip(["link", "set", "dev", SERVER_IF, "down"]);
    let client = probe.freeze();
    let agent_scrape = scrape(&topo.server, DEFAULT_ENDPOINT);
    let table = status(&topo.server, &control, false);
    agent.kill();
    setup.primary.kill();
    drop(block);
    wait_until(
        || status_of(topo, &standby).takeovers == 1,
        "the standby takes over",
    );
    let (report, _dir) = standby.stop();

    let to = replication_addr(family);
    let series =
        format!("connmirror_replication_exposure_bytes{{service=\"{service}\",standby=\"{to}\"}}");
    let exposure = agent_scrape.get(&series) as u64;
    let lag = agent_scrape.get(&per_standby("connmirror_replica_lag_bytes", to)) as u64;
    let elided = agent_scrape.count(&per_standby(
        "connmirror_replication_elided_bytes_total",
        to,
    ));
    let flow = (report.flows.iter())
        .find(|f| f.client == probe.local())
        .unwrap_or_else(|| panic!("the probe's flow is not in {:#?}", report.flows));
    let lost_c2s = client.acked.saturating_sub(flow.c2s.delivered);
    let lost_s2c = client.received.saturating_sub(flow.s2c.delivered);
    let lost = lost_c2s + lost_s2c;
    eprintln!(
        "exposure {exposure} bytes, lag {lag}; client sent {}, primary acked {}, client \
         received {}; standby holds c2s {} s2c {}; lost {lost_c2s} + {lost_s2c}",
        client.sent, client.acked, client.received, flow.c2s.delivered, flow.s2c.delivered
    );
    assert!(elided > 0, "no acknowledged byte was left out");
    assert_eq!(before.takeovers, 0, "no takeover before the failure");
    assert_eq!(report.takeovers.len(), 1);
    assert_eq!(report.takeovers[0].trigger, "heartbeats-missed");
    assert!(
        lost >= 64 << 10,
        "blocking replication for {blocked:?} lost only {lost} bytes"
    );
    assert!(
        exposure.abs_diff(lost) <= ONE_BATCH,
        "exposure {exposure} bytes, lost {lost}: more than one batch apart"
    );
    // The lag counts record bytes as shipped, without the payload left out
    // because acknowledged first, so it no longer bounds the loss: it only
    // shows that batches waited.
    assert!(lag > 0, "a lag of 0 while replication was blocked");
    assert!(
        table.contains(&format!("service   {service} serving\n  exposure ")),
        "{table}"
    );
    AsyncKill {
        blocked_ms: blocked.as_millis() as u64,
        exposure,
        lost,
        lag,
    }
}

/// Drops the replication channel's packets at the standby's host while it
/// lives (its `INPUT` chain): the agent's batches then wait, unacknowledged.
struct Blocked<'t> {
    topo: &'t Topology,
    tool: &'static str,
}

impl<'t> Blocked<'t> {
    fn replication(topo: &'t Topology, family: Family) -> Blocked<'t> {
        let tool = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let blocked = Blocked { topo, tool };
        blocked.rule("-I");
        blocked
    }

    fn rule(&self, op: &str) {
        let port = REPLICATION_PORT.to_string();
        let args = [op, "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"];
        crate::process::run_checked(self.topo.gateway.command(self.tool).args(args));
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.rule("-D");
    }
}

/// A seed for the random moments, printed by each run so that a failure
/// can be told apart from another.
fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos() as u64
}

/// Runs `kill` `kills` times, each with the next number of a random seed's
/// sequence (the seed is printed, so a failure can be told apart).
fn at_random<T>(kills: u64, mut kill: impl FnMut(u64) -> T) -> Vec<T> {
    let seed = random_seed();
    (0..kills)
        .map(|round| {
            eprintln!("seed {seed}, kill {round}");
            kill(splitmix(seed, round))
        })
        .collect()
}

/// The `round`th number of `seed`'s splitmix64 sequence.
fn splitmix(seed: u64, round: u64) -> u64 {
    let mut x = seed.wrapping_add((round + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Kills the primary host (its link, its server, the agent) and lets the
/// echo streams go on from the standby: what they did, what the clients saw
/// on the wire, and the standby's report once stopped.
pub fn fail_over(
    setup: &mut PrimarySetup,
    agent: &mut Program,
    clients: EchoClients,
    watch: WireWatch,
    standby: Mirror,
) -> (Vec<EchoResult>, WireSeen, Report) {
    kill_primary_host(&setup.topo, &mut setup.primary, agent);
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("every stream continues after the failover");
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let (report, _dir) = standby.stop();
    (results, seen, report)
}

/// A standby (full retention), its handoff application and an on-host
/// agent with `flags`, once the agent replicates to the standby.
pub fn protected(
    setup: &PrimarySetup,
    family: Family,
    flags: &[&str],
) -> (Mirror, Program, Program) {
    protected_as(setup, family, &full(setup.service), flags)
}

/// [`protected`] with the standby's `--service` value `spec`.
fn protected_as(
    setup: &PrimarySetup,
    family: Family,
    spec: &str,
    flags: &[&str],
) -> (Mirror, Program, Program) {
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let standby = onhost_standby(topo, family, spec, key);
    let app = handoff_app(topo, &standby, service);
    let agent = start_onhost_agent(topo, family, service, key, flags);
    wait_replicating(&standby);
    (standby, app, agent)
}

/// Waits until `standby` has the agent's replication channel and heartbeats.
pub fn wait_replicating(standby: &Mirror) {
    standby.wait_log("replication channel established");
    standby.wait_log("armed: primary heard");
}

/// Polls `done` every 20 ms for up to 30 s; panics naming `what` after.
pub fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
