//! Cluster mode (`--etcd`): ownership lives in a real three-member etcd
//! cluster on a management LAN of its own ([`EtcdCluster`]); the primary's
//! agent heartbeats to two standbys, and etcd decides which of them acts on
//! a detection.
//!
//! - Both standbys detect the same death at the same moment: exactly one
//!   wins the transaction and takes over; the other logs who won.
//! - A standby cut off from etcd never takes over, even with the primary
//!   dead and a better priority; the other one does, and the echo streams go
//!   on byte-exact with no RST.
//! - etcd's leader dies with the primary: the takeover completes once a new
//!   leader is elected, under one owner.
//! - etcd over TLS with user authentication: the right credentials work, a
//!   wrong password is refused by name.
//! - Two failures in a row on one LAN: echo streams (handoff) and
//!   redis-server sessions (live replay) keep the same client sockets
//!   through epochs 1 → 2 → 3.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use connmirror::ownership::{DEFAULT_INTERVAL_MS, DEFAULT_MISSED};
use connmirror::resume::live::ServiceProtection;

use connmirror_tests::echo::{EchoClients, EchoOptions, assert_exact};
use connmirror_tests::etcd::{ELECTION_TIMEOUT_MS, EtcdCluster, MGMT_IF, node_addr};
use connmirror_tests::failover::{
    HEARTBEAT_PORT, PrimarySetup, Program, echo_server_in, gateway_addrs, handoff_app,
    handoff_app_in, kill_primary_host, primary_setup, start_agent_with, status_in,
};
use connmirror_tests::kills::{full, wait_until};
use connmirror_tests::lan::{LAN_IF, Lan};
use connmirror_tests::mirror::{Mirror, MirrorCommand};
use connmirror_tests::netns::Netns;
use connmirror_tests::onhost::{REPLICATION_PORT, onhost_standby_command, start_onhost_agent};
use connmirror_tests::redis::{self, Counter, CounterResult};
use connmirror_tests::topology::{CLIENT_IF, Family};
use connmirror_tests::wire::WireWatch;
use connmirror_tests::workdir::WorkDir;

const PORT: u16 = 7600;
/// The live-replayed redis service's port, in the two-failures test.
const LIVE_PORT: u16 = 7601;
/// Where each standby's own redis instance listens, in its namespace.
const INSTANCE: &str = "127.0.0.1:7701";
/// The etcd request timeout the daemons get here (`--etcd-timeout`).
const ETCD_TIMEOUT_MS: u64 = 300;

/// The primary's topology, a three-member etcd cluster, and every node of
/// the topology joined to etcd's LAN: the gateway (standby `a`), the
/// client's namespace (standby `b`, detection only) and the primary.
/// Fields drop in order: the etcd cluster goes before the topology.
struct Cluster {
    etcd: EtcdCluster,
    setup: PrimarySetup,
}

impl Cluster {
    fn new(role: &str) -> Cluster {
        let setup = primary_setup(Family::V4, PORT, role);
        let etcd = EtcdCluster::start(3);
        let topo = &setup.topo;
        for (host, ns) in [&topo.gateway, &topo.client, &topo.server]
            .into_iter()
            .enumerate()
        {
            etcd.join(ns, node_addr(host as u8));
        }
        Cluster { etcd, setup }
    }

    /// The flags every daemon of the cluster gets.
    fn etcd_flags(&self, node: &str) -> Vec<String> {
        [
            "--etcd",
            &self.etcd.endpoints(),
            "--etcd-timeout",
            &ETCD_TIMEOUT_MS.to_string(),
            "--node-id",
            node,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Standby `b` in the client's namespace: detection only (it captures
    /// and restores nothing), listening for heartbeats on the client's
    /// address; `--failover auto`, so it claims in etcd like `a`.
    fn standby_b(&self, priority: u32) -> Mirror {
        let (topo, key, service) = (&self.setup.topo, &self.setup.key, self.setup.service);
        let mut command = MirrorCommand::standby()
            .iface(CLIENT_IF)
            .arg("--service")
            .arg(&service.to_string())
            .ingress("none")
            .egress("none")
            .without_dumps()
            .arg("--heartbeat-listen")
            .arg(&b_heartbeats().to_string())
            .arg("--key")
            .arg(&key.display().to_string())
            .arg("--priority")
            .arg(&priority.to_string());
        for flag in self.etcd_flags("b") {
            command = command.arg(&flag);
        }
        Mirror::start(&topo.client, &command)
    }

    /// Standby `a`: the on-host standby in the gateway, with its handoff
    /// application.
    fn standby_a(&self, priority: u32) -> (Mirror, Program) {
        let (topo, key, service) = (&self.setup.topo, &self.setup.key, self.setup.service);
        let mut command = onhost_standby_command(Family::V4, &full(service), key)
            .arg("--priority")
            .arg(&priority.to_string())
            .arg("--advertise")
            .arg(&gateway_addrs(Family::V4).0.to_string());
        for flag in self.etcd_flags("a") {
            command = command.arg(&flag);
        }
        let standby = Mirror::start(&topo.gateway, &command);
        let app = handoff_app(topo, &standby, service);
        (standby, app)
    }

    /// The owner record of the service in etcd, as JSON.
    fn owner(&self) -> serde_json::Value {
        etcd_owner(&self.etcd, self.setup.service)
    }

    /// `connmirror status --cluster`, from the gateway.
    fn status(&self) -> String {
        let mut cmd = self
            .setup
            .topo
            .gateway
            .command(connmirror_tests::connmirror_bin());
        cmd.args(["status", "--cluster", "--etcd", &self.etcd.endpoints()]);
        connmirror_tests::process::run_checked(&mut cmd)
    }

    /// Waits until [`Cluster::status`] prints `expected` (registrations
    /// follow within a second); panics with what it printed last.
    fn wait_status(&self, expected: &str) {
        self.wait_status_where(expected, |status| status == expected);
    }

    /// Waits until [`Cluster::status`] satisfies `done` (`what` names it);
    /// what it printed then.
    fn wait_status_where(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "status --cluster:\n{status}\nexpected:\n{what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The primary's agent in cluster mode, heartbeating to standby `b` too
    /// when `to_b`; on-host when `onhost`, replicating to `a` under `--sync`
    /// (asynchronously, a failover may lose what was not replicated yet, and
    /// these tests check the streams byte-exact).
    fn start_agent(&self, onhost: bool, to_b: bool) -> Program {
        let (topo, key, service) = (&self.setup.topo, &self.setup.key, self.setup.service);
        let mut flags = self.agent_flags(to_b);
        if onhost {
            flags.push("--sync".to_owned());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        match onhost {
            true => start_onhost_agent(topo, Family::V4, service, key, &flags),
            false => start_agent_with(topo, Family::V4, service, key, &flags),
        }
    }

    /// The agent's cluster flags, with heartbeats to standby `b` too when
    /// `to_b`.
    fn agent_flags(&self, to_b: bool) -> Vec<String> {
        let mut flags = self.etcd_flags("primary");
        // The harness gives `--node-id primary` already.
        flags.truncate(flags.len() - 2);
        if to_b {
            flags.extend(["--standby".to_owned(), b_heartbeats().to_string()]);
        }
        flags
    }
}

/// Where standby `b` listens for heartbeats: the client's address.
fn b_heartbeats() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 2], HEARTBEAT_PORT))
}

/// Both standbys detect the primary's death at the same moment (same
/// interval, same priority, the same heartbeats stop): both claim, exactly
/// one wins epoch 2 in etcd and takes over, and the other logs who won and
/// stays a standby.
#[test]
fn two_standbys_detect_together_and_exactly_one_takes_over_v4() {
    let mut cluster = Cluster::new("cluster");
    let (a, _app) = cluster.standby_a(0);
    let b = cluster.standby_b(0);
    let (topo, service) = (&cluster.setup.topo, cluster.setup.service);
    let mut agent = cluster.start_agent(false, true);
    a.wait_log("armed: primary heard");
    b.wait_log("armed: primary heard");
    assert_eq!(
        cluster.owner(),
        serde_json::json!({"node_id": "primary", "epoch": 1})
    );
    // b's record settles once it hears the primary; its lease is renewed
    // every second from then on, but the unchanged record is not written
    // again (each write is a revision etcd keeps).
    cluster.wait_status_where("b watching the primary", |s| {
        s.contains("standby b  priority 0  heartbeats")
    });
    let b_record = "/connmirror/connmirror/nodes/b";
    let before = mod_revision(&cluster.etcd, b_record);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(mod_revision(&cluster.etcd, b_record), before);

    kill_primary_host(topo, &mut cluster.setup.primary, &mut agent);
    let outcome = |m: &Mirror| {
        let log = m.stderr();
        (
            log.contains("won the services in etcd"),
            log.contains("lost the takeover in etcd"),
        )
    };
    wait_until(
        || outcome(&a) != (false, false) && outcome(&b) != (false, false),
        "both standbys' claims decided",
    );
    let owner = cluster.owner();
    let (winner, loser) = match owner["node_id"].as_str() {
        Some("a") => (&a, &b),
        Some("b") => (&b, &a),
        other => panic!("owner {other:?} in etcd"),
    };
    assert_eq!(owner["epoch"], 2, "{owner}");
    for standby in [&a, &b] {
        assert!(
            standby
                .stderr()
                .contains("primary lost: claiming its services in etcd"),
            "{}",
            standby.stderr()
        );
    }
    assert_eq!(outcome(winner), (true, false));
    assert_eq!(outcome(loser), (false, true));
    let winner_id = owner["node_id"].as_str().unwrap();
    let why = format!("staying a standby owner=\"{winner_id}\" epoch=2");
    assert!(loser.stderr().contains(&why), "{}", loser.stderr());
    // Standby a captures nothing here and b has no replica: neither winner
    // protects what it took over, so the loser hears nobody.
    let loser_id = if winner_id == "a" { "b" } else { "a" };
    cluster.wait_status(&format!(
        "{service}  owner {winner_id}  epoch 2  unprotected\n  \
         standby {loser_id}  priority 0  not-watching  lag -\n"
    ));
}

/// Standby `b` (priority 0: it would claim first) loses its link to etcd;
/// then the primary dies. `b` keeps asking and never takes over; `a`
/// (priority 1) wins epoch 2, and the echo streams go on from it byte-exact
/// with no RST.
#[test]
fn a_standby_cut_off_from_etcd_does_not_take_over_and_the_other_does_v4() {
    let mut cluster = Cluster::new("cluster");
    let (a, _app) = cluster.standby_a(1);
    let b = cluster.standby_b(0);
    let (topo, service) = (&cluster.setup.topo, cluster.setup.service);
    let mut agent = cluster.start_agent(true, true);
    a.wait_log("replication channel established");
    b.wait_log("armed: primary heard");
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("streams flow");
    // The agent reports a's replication, b only hears the heartbeats.
    let status = cluster.wait_status_where("a replicating, b hearing the heartbeats", |s| {
        s.contains("replicating") && s.contains("heartbeats")
    });
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(
        lines[..2],
        [
            format!("{service}  owner primary  epoch 1  protected").as_str(),
            "  standby b  priority 0  heartbeats  lag -",
        ],
        "{status}"
    );
    assert!(
        lines[2].starts_with("  standby a  priority 1  replicating  lag ")
            && lines[2].ends_with(" B"),
        "{status}"
    );
    assert_eq!(lines.len(), 3, "{status}");
    topo.client.ip(["link", "set", MGMT_IF, "down"]);
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    kill_primary_host(topo, &mut cluster.setup.primary, &mut agent);
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("every stream continues after the failover");
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    b.wait_log("not taking over without etcd's quorum");

    assert_eq!(
        cluster.owner(),
        serde_json::json!({"node_id": "a", "epoch": 2})
    );
    assert!(
        !b.stderr().contains("won the services in etcd"),
        "{}",
        b.stderr()
    );
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    let (report, _dir) = a.stop();
    let takeover = &report.takeovers[0];
    assert_eq!(
        (takeover.epoch, takeover.restored, takeover.handed_off),
        (2, 4, 4)
    );
}

/// etcd's leader dies together with the primary: the claim fails while etcd
/// has no leader and is tried again; the takeover completes under one owner,
/// with no owner for no longer than the election timeout plus one retry
/// (an etcd request's timeout plus 100 ms).
#[test]
fn the_takeover_completes_when_etcds_leader_dies_with_the_primary_v4() {
    let mut cluster = Cluster::new("cluster");
    let (a, _app) = cluster.standby_a(0);
    let (topo, service) = (&cluster.setup.topo, cluster.setup.service);
    let mut agent = cluster.start_agent(true, false);
    a.wait_log("replication channel established");
    let clients = EchoClients::start(&topo.client, service, 4, EchoOptions::default());
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("streams flow");
    let leader = cluster.etcd.leader();

    cluster.etcd.kill(leader);
    let killed = Instant::now();
    kill_primary_host(topo, &mut cluster.setup.primary, &mut agent);
    wait_until(
        || a.stderr().contains("won the services in etcd"),
        "the takeover is won",
    );
    let won = killed.elapsed();
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("every stream continues after the failover");
    let results = clients.finish(Duration::from_secs(60));

    assert_eq!(
        cluster.owner(),
        serde_json::json!({"node_id": "a", "epoch": 2})
    );
    assert_exact(&results);
    // Detection (the default 3 × 25 ms, checked every 12.5 ms) + the
    // election + one retry; generous for a loaded 2-core host, but bounded
    // by what etcd is configured for.
    let detection = DEFAULT_MISSED as u64 * DEFAULT_INTERVAL_MS + DEFAULT_INTERVAL_MS / 2;
    let bound =
        Duration::from_millis(detection + ELECTION_TIMEOUT_MS + ETCD_TIMEOUT_MS + 100 + 1000);
    eprintln!("won {won:?} after the leader's death (bound {bound:?})");
    assert!(
        won < bound,
        "won {won:?} after the leader died; bound {bound:?}\n{}",
        a.stderr()
    );
}

/// etcd over TLS with client certificates and user authentication: an agent
/// given the CA, its certificate and the right password records itself as
/// the owner; with a wrong password it refuses to start and says etcd
/// refused it (not that etcd is unreachable).
#[test]
fn an_agent_logs_in_over_tls_and_a_wrong_password_is_refused_by_name() {
    let etcd = EtcdCluster::start_with(1, true);
    let pki = etcd.pki().expect("TLS");
    etcd.etcdctl(&["user", "add", "root", "--new-user-password", "s3cret"]);
    etcd.etcdctl(&["auth", "enable"]);
    let ns = Netns::new("agent");
    etcd.join(&ns, node_addr(0));
    let dir = WorkDir::new("cluster");
    let key = connmirror_tests::failover::key_file(&dir);
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::write(&good, "s3cret\n").unwrap();
    std::fs::write(&bad, "guess\n").unwrap();
    let (key, endpoints) = (key.display().to_string(), etcd.endpoints());
    let (ca, cert, client_key) = (
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let args = |password: &std::path::Path| {
        [
            "agent",
            "--node-id",
            "primary",
            "--key",
            &key,
            "--service",
            "198.18.8.100:7000",
            "--standby",
            "198.18.8.254:7400",
            "--metrics",
            "off",
            "--etcd",
            &endpoints,
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &client_key,
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &password.display().to_string(),
        ]
        .map(str::to_owned)
    };

    let mut refused = ns.command(connmirror_tests::connmirror_bin());
    refused.args(args(&bad));
    let refused =
        connmirror_tests::process::output_with_timeout(&mut refused, Duration::from_secs(30));
    let bin = connmirror_tests::connmirror_bin();
    let mut running = Program::start(&ns, bin, args(&good), "ready");
    let owner = etcd.etcdctl(&[
        "--user",
        "root:s3cret",
        "get",
        "--print-value-only",
        "/connmirror/connmirror/services/198.18.8.100:7000",
    ]);
    running.terminate();

    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cluster mode (--etcd): etcd refused the request ({}): etcdserver: authentication failed, invalid user ID or password",
            etcd.endpoints()
        )),
        "{stderr}"
    );
    assert_eq!(owner.trim(), r#"{"node_id":"primary","epoch":1}"#);
}

/// Two failures in a row, on one LAN: the primary's agent replicates to
/// standbys `a` and `b` under `--sync` (etcd decides; `a` is preferred).
/// Two services run: a streaming echo resumed by handoff, and a real
/// redis-server resumed by live replay into each standby's own instance.
/// The primary dies: `a` wins epoch 2, takes over, and protects the
/// connections it restored (it captures them, holds their segments until
/// `b` has them, replicates to `b` starting with a checkpoint, and
/// heartbeats to `b`); `b`'s instance goes on, compared now with `a`'s
/// output. Then `a` dies: `b` wins epoch 3 and takes over from what `a`
/// replicated. The same four echo sockets stream throughout, byte-exact
/// both ways, the same two redis sockets get every reply right, and no RST
/// reaches a client.
#[test]
fn two_failures_in_a_row_keep_the_same_client_sockets_v4() {
    let lan = Lan::new(2);
    let etcd = EtcdCluster::start(3);
    for (host, ns) in std::iter::once(&lan.primary)
        .chain(&lan.standbys)
        .enumerate()
    {
        etcd.join(ns, node_addr(host as u8));
    }
    let dir = WorkDir::new("cluster");
    let key = connmirror_tests::failover::key_file(&dir);
    let service = Lan::service(PORT);
    let mut echo = echo_server_in(&lan.primary, service);
    let live = Lan::service(LIVE_PORT);
    let mut redis = redis::server(&lan.primary, live);
    let standby = |i: usize, node: &str| {
        let ip = Lan::standby_ip(i);
        let mut command = MirrorCommand::standby()
            .iface(LAN_IF)
            .arg("--service")
            .arg(&full(service))
            .arg("--service")
            .arg(&live.to_string())
            .arg("--resume")
            .arg(&format!("{live}=live:{INSTANCE}"))
            .without_dumps()
            .arg("--heartbeat-listen")
            .arg(&format!("{ip}:{HEARTBEAT_PORT}"))
            .arg("--replication-listen")
            .arg(&format!("{ip}:{REPLICATION_PORT}"))
            .arg("--key")
            .arg(&key.display().to_string())
            .arg("--announce")
            .arg(LAN_IF)
            .arg("--priority")
            .arg(&i.to_string())
            .arg("--etcd")
            .arg(&etcd.endpoints())
            .arg("--etcd-timeout")
            .arg(&ETCD_TIMEOUT_MS.to_string())
            .arg("--node-id")
            .arg(node);
        command = command.arg("--egress").arg("tc").arg("--sync");
        let standby = Mirror::start(&lan.standbys[i], &command);
        let app = handoff_app_in(&lan.standbys[i], &standby, service);
        (standby, app)
    };
    let a_instance = redis::server(&lan.standbys[0], INSTANCE.parse().unwrap());
    let _b_instance = redis::server(&lan.standbys[1], INSTANCE.parse().unwrap());
    let (a, mut a_app) = standby(0, "a");
    let (b, _b_app) = standby(1, "b");
    let mut agent_args: Vec<String> = [
        "agent",
        "--bind",
        &Lan::primary_ip().to_string(),
        "--key",
        &key.display().to_string(),
        "--node-id",
        "primary",
        "--service",
        &service.to_string(),
        "--service",
        &live.to_string(),
        "--iface",
        LAN_IF,
        "--retention",
        "full",
        "--sync",
        "--etcd",
        &etcd.endpoints(),
    ]
    .map(str::to_owned)
    .to_vec();
    for i in 0..2 {
        let ip = Lan::standby_ip(i);
        agent_args.extend(["--standby".to_owned(), format!("{ip}:{HEARTBEAT_PORT}")]);
        agent_args.extend([
            "--replicate-to".to_owned(),
            format!("{ip}:{REPLICATION_PORT}"),
        ]);
    }
    let mut agent = Program::start(
        &lan.primary,
        connmirror_tests::connmirror_bin(),
        agent_args,
        "ready",
    );
    for standby in [&a, &b] {
        standby.wait_log("replication channel established");
        standby.wait_log("armed: primary heard");
    }
    let clients = EchoClients::start(&lan.client, service, 4, EchoOptions::default());
    let counters: Vec<Counter> = (0..2)
        .map(|i| Counter::start(&lan.client, live, &format!("twice-{i}")))
        .collect();
    progress(&clients, &counters, "streams flow");
    let watch = WireWatch::start(&lan.client, LAN_IF);
    // The redis clients are answered and quiet when the primary dies, so
    // both standbys hold the same bytes of them (see docs/cluster.md: a
    // batch the primary sent to `a` and not yet to `b` leaves `b`'s copy
    // of a live connection gapped once `a` owns it).
    for counter in &counters {
        counter
            .pause(Duration::from_secs(30))
            .expect("every command answered");
    }

    Lan::cut(&lan.primary);
    echo.kill();
    redis.kill();
    agent.kill();
    for counter in &counters {
        counter.resume();
    }
    a.wait_log("protecting the services taken over");
    assert!(a.stderr().contains("sync=true"), "{}", a.stderr());
    b.wait_log("armed: primary heard node=\"a\" epoch=2");
    progress(&clients, &counters, "the streams go on from a");
    wait_until(
        || {
            b.stderr()
                .matches("replication channel established")
                .count()
                >= 2
        },
        "a replicates to b",
    );
    progress(&clients, &counters, "a's stream reaches b");
    let protected = wait_live_protected(&lan.standbys[1], &b, live, 2);
    assert_eq!(
        etcd_owner(&etcd, service),
        serde_json::json!({"node_id": "a", "epoch": 2})
    );

    Lan::cut(&lan.standbys[0]);
    // SAFETY: kill has no memory-safety preconditions; the pid is a's.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    a_app.kill();
    drop(a_instance);
    let progressed = clients.wait_progress(32 << 10, Duration::from_secs(60));
    for counter in &counters {
        counter
            .wait_progress(500, Duration::from_secs(60))
            .expect("every redis session goes on from b");
    }
    let replies: Vec<CounterResult> = (counters.into_iter())
        .map(|c| c.finish(Duration::from_secs(30)))
        .collect();
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let (report, _dir) = b.stop();
    let takeover = &report.takeovers[0];
    assert_eq!(
        (
            takeover.epoch,
            takeover.restored,
            takeover.handed_off,
            takeover.live
        ),
        (3, 6, 4, 2),
        "{takeover:#?}"
    );
    assert_eq!(takeover.unrecoverable_total(), 0, "{takeover:#?}");
    progressed.expect("the streams go on from b");
    assert_eq!(
        (protected.protected, protected.divergent),
        (2, 0),
        "{protected:?}"
    );
    for result in &replies {
        if let Err(problem) = result.continued(0) {
            panic!("{problem}");
        }
    }

    assert_eq!(
        etcd_owner(&etcd, service),
        serde_json::json!({"node_id": "b", "epoch": 3})
    );
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    drop(a);
}

/// Waits until every echo stream and redis session made progress; panics
/// saying `what` did not.
fn progress(clients: &EchoClients, counters: &[Counter], what: &str) {
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect(what);
    for counter in counters {
        counter
            .wait_progress(200, Duration::from_secs(60))
            .expect(what);
    }
}

/// Waits (at most 20 s) until the live replay of `service` on `standby`
/// (in `ns`) protects `n` connections; their protection then.
fn wait_live_protected(
    ns: &Netns,
    standby: &Mirror,
    service: SocketAddr,
    n: u64,
) -> ServiceProtection {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_in(ns, standby);
        let live = (status.services.iter())
            .find(|s| s.addr == service)
            .and_then(|s| s.live.clone())
            .expect("a live service");
        if live.protected == n || Instant::now() > deadline {
            return live;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The revision `key` was last written at, in etcd (panics when absent:
/// an expired lease removes it).
fn mod_revision(etcd: &EtcdCluster, key: &str) -> u64 {
    let out = etcd.etcdctl(&["get", key, "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("etcdctl JSON");
    (json["kvs"][0]["mod_revision"].as_u64()).unwrap_or_else(|| panic!("{key} in {out}"))
}

/// The owner record of `service` in etcd, as JSON.
fn etcd_owner(etcd: &EtcdCluster, service: SocketAddr) -> serde_json::Value {
    let key = format!("/connmirror/connmirror/services/{service}");
    let out = etcd.etcdctl(&["get", "--print-value-only", &key]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{key}: {e}: {out:?}"))
}
