//! Automatic failure detection and fencing: the primary's `connmirror agent` sends
//! authenticated heartbeats; the standby takes over by itself once they stop,
//! and forged, unauthenticated or replayed heartbeats are counted and change
//! nothing. A primary that comes back hears the standby's higher epoch and
//! steps down (releases the service address), with no RST reaching a client.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use connmirror::key::Key;
use connmirror::ownership::heartbeat::{self, Kind, Ownership};
use connmirror_tests::echo::assert_exact;
use connmirror_tests::failover::{
    HEARTBEAT_PORT, KEY, agent_addr, configure_primary, detecting_standby,
    detecting_standby_command, echo_primary, four_streams_once_armed, gateway_addrs, handoff_app,
    kill_primary_host, primary_setup, start_agent, status, status_of, the_takeover,
};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, promtool_check, scrape};
use connmirror_tests::mirror::Mirror;
use connmirror_tests::topology::{CLIENT_IF, Family, SERVER_IF, Topology};
use connmirror_tests::traffic::SplitMix64;
use connmirror_tests::wire::WireWatch;

const PORT: u16 = 7000;
const CLUSTER: &str = "connmirror";

fn automatic_failover(family: Family) {
    let mut setup = primary_setup(family, PORT, "ownership");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let standby = detecting_standby(topo, family, service, key);
    let _app = handoff_app(topo, &standby, service);
    let mut agent = start_agent(topo, family, service, key);
    let clients =
        four_streams_once_armed(topo, &standby, service, "streams flow before the failure");
    let before = status_of(topo, &standby);
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    kill_primary_host(topo, &mut setup.primary, &mut agent);
    clients
        .wait_progress(64 << 10, Duration::from_secs(60))
        .expect("every stream continues with no manual trigger");
    // The old primary comes back: link up, server and agent restarted under
    // its old epoch. The standby's heartbeats carry the higher epoch.
    topo.server.ip(["link", "set", "dev", SERVER_IF, "up"]);
    configure_primary(topo, family, service);
    let _primary_again = echo_primary(topo, service);
    let returned = start_agent(topo, family, service, key);
    let stepped = returned.wait_line("stepped down", Duration::from_secs(20));
    let addresses = topo.server.ip(["addr", "show", "dev", SERVER_IF]);
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect("streams go on while the old primary is back");
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let after = status_of(topo, &standby);
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

    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    let takeover = the_takeover(&report, "heartbeats-missed");
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

/// Clients that each send a message, wait for its echo and check it, over
/// and over: between two round trips a connection is idle, so a standby
/// that starts while they are paused first sees each direction at the same
/// point of the echo.
struct PingPong {
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    idle: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Result<u64, String>>>,
}

impl PingPong {
    fn start(topo: &Topology, service: SocketAddr, n: usize) -> PingPong {
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let idle = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|i| {
                let stream = topo.client.run(|| {
                    TcpStream::connect_timeout(&service, Duration::from_secs(5)).expect("connect")
                });
                let (paused, stop) = (paused.clone(), stop.clone());
                let (rounds, idle) = (rounds.clone(), idle.clone());
                thread::spawn(move || ping_pong(stream, i as u64, &paused, &stop, &rounds, &idle))
            })
            .collect();
        PingPong {
            paused,
            stop,
            rounds,
            idle,
            threads,
        }
    }

    /// Waits until `more` round trips past the current count are done.
    fn wait_rounds(&self, more: u64, timeout: Duration) {
        let target = self.rounds.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + timeout;
        while self.rounds.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "round trips stalled at {target}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pauses every client between two round trips.
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.idle.load(Ordering::SeqCst) < self.threads.len() as u64 {
            assert!(Instant::now() < deadline, "clients did not pause");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Stops the clients; each one's round trips, or its error.
    fn finish(self) -> Vec<Result<u64, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.resume();
        (self.threads.into_iter())
            .map(|t| t.join().expect("client thread"))
            .collect()
    }
}

/// One client: messages of 8 to 256 bytes from its own seed, each echo
/// compared byte for byte. Small, because a connection restored without its
/// handshake does not know the window scaling (see `--mid-stream`).
fn ping_pong(
    mut stream: TcpStream,
    seed: u64,
    paused: &AtomicBool,
    stop: &AtomicBool,
    rounds: &AtomicU64,
    idle: &AtomicU64,
) -> Result<u64, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut random = SplitMix64::new(seed + 1);
    let mut done = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if paused.load(Ordering::SeqCst) {
            idle.fetch_add(1, Ordering::SeqCst);
            while paused.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            idle.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let mut message = vec![0u8; 8 * (1 + (random.next_u64() % 32) as usize)];
        random.fill(&mut message);
        let mut echo = vec![0u8; message.len()];
        (stream.write_all(&message))
            .and_then(|()| stream.read_exact(&mut echo))
            .map_err(|e| format!("round trip {done}: {e}"))?;
        if echo != message {
            return Err(format!("round trip {done}: the echo differs"));
        }
        done += 1;
        rounds.fetch_add(1, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(10));
    }
    Ok(done)
}

/// A standby started after the connections began: it solicits the agent's
/// ownership (the agent logs it), arms, and on the primary's death restores
/// the connections it only ever saw mid-stream (`--mid-stream restore`),
/// flagged as such, with every round trip exact before and after.
fn late_standby(family: Family) {
    let mut setup = primary_setup(family, PORT, "ownership");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let mut agent = start_agent(topo, family, service, key);
    let clients = PingPong::start(topo, service, 4);
    clients.wait_rounds(40, Duration::from_secs(20));
    clients.pause();
    let command = detecting_standby_command(topo, family, service, key)
        .arg("--primary")
        .arg(&agent_addr(family).to_string())
        .arg("--mid-stream")
        .arg("restore");
    let standby = Mirror::start(&topo.gateway, &command);
    let _app = handoff_app(topo, &standby, service);
    standby.wait_log("armed: primary heard");
    agent.wait_stderr("solicited by the standby", Duration::from_secs(10));
    clients.resume();
    clients.wait_rounds(40, Duration::from_secs(20));
    let before = status_of(topo, &standby);
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    kill_primary_host(topo, &mut setup.primary, &mut agent);
    standby.wait_log("step=\"resume\"");
    clients.wait_rounds(20, Duration::from_secs(60));
    let results = clients.finish();
    let seen = watch.stop();
    let (report, _dir) = standby.stop();

    assert_eq!(before.flows.get("no-handshake"), Some(&4), "{before:#?}");
    for result in &results {
        assert!(matches!(result, Ok(n) if *n > 0), "{results:?}");
    }
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    let takeover = the_takeover(&report, "heartbeats-missed");
    assert_eq!(
        (takeover.restored, takeover.handed_off, takeover.mid_stream),
        (4, 4, 4),
        "{takeover:#?}"
    );
    assert_eq!(takeover.unrecoverable_total(), 0, "{takeover:#?}");
}

#[test]
fn a_late_standby_solicits_ownership_and_restores_connections_seen_mid_stream_v4() {
    late_standby(Family::V4);
}

#[test]
fn a_late_standby_solicits_ownership_and_restores_connections_seen_mid_stream_v6() {
    late_standby(Family::V6);
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
    let mut setup = primary_setup(family, PORT, "ownership");
    let (topo, key, service) = (&setup.topo, &setup.key, setup.service);
    let standby = detecting_standby(topo, family, service, key);
    let mut agent = start_agent(topo, family, service, key);
    standby.wait_log("armed: primary heard");
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

    send_from(topo, target, &forged);
    send_from(topo, target, &replayed);
    thread::sleep(Duration::from_millis(300));
    let lost_while_alive = standby.stderr().contains("primary lost");
    let standby_metrics = scrape(&topo.gateway, DEFAULT_ENDPOINT);
    let agent_metrics = scrape(&topo.server, DEFAULT_ENDPOINT);
    kill_primary_host(topo, &mut setup.primary, &mut agent);
    // Forgeries keep coming while the primary is dead: they must not keep it alive.
    send_from(topo, target, &forged);
    send_from(topo, target, &replayed);
    standby.wait_log("takeover");
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
    assert_eq!(
        standby_metrics.count("connmirror_heartbeat_gap_seconds_count"),
        received - 1,
        "a gap per valid heartbeat after the first; forgeries and replays make none"
    );
    promtool_check(&standby_metrics.text);
    assert_eq!(agent_metrics.get("connmirror_epoch"), 1.0);
    assert_eq!(agent_metrics.get("connmirror_stepped_down"), 0.0);
}
