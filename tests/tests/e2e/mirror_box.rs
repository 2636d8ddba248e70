//! The mirror as a box of its own, neither the primary nor the standby:
//! `connmirror mirror --replicate-to` on a router on the clients' path
//! ([`Lan::behind_router`]), or on a box that only receives a switch's
//! mirrored frames ([`Lan::tapped`]); the standby, on the LAN beside the
//! primary, takes over from the box's stream.
//!
//! - The primary's agent only heartbeats to the standby (pair mode); the
//!   router captures both directions at ingress on its two links and
//!   streams the journal records to the standby's replica. The primary dies:
//!   the standby takes the service address (gratuitous ARP, or an
//!   unsolicited neighbour advertisement), rebuilds every connection from
//!   what the router streamed and hands it to its echo application. The
//!   same four client sockets go on, byte-exact both ways, and no RST
//!   reaches a client. The router survives the primary, so the records it
//!   captured before the death reach the standby before the standby
//!   declares it. IPv4 and IPv6.
//! - The same from a tap: every frame the hosts send into the switch is
//!   copied to the tap's interface, where the mirror captures with the
//!   `pass` policy (a tap cannot hold anything back) and forwards nothing.
//!   IPv4 and IPv6.
//! - The tap loses the copies of one connection's segments for a while (the
//!   switch's mirror port drops them; the segments are delivered): the
//!   standby finds that connection gapped by ACK analysis, and at the
//!   takeover resets it (the one RST a client sees), counts it under
//!   `gapped`, and restores the other three, byte-exact. IPv4 and IPv6.
//! - The mirror dies, silently (stopped, then killed): the standby declares
//!   it lost after its health interval × missed (50 ms × 4), says
//!   `unprotected: mirror lost` in its status and 0 in
//!   `connmirror_replication_connected`, and the traffic goes on undisturbed,
//!   byte-exact.
//! - A router's mirror pinned (`--pin`) under the `drop` policy dies
//!   (SIGKILL): its programs stay attached, the ring fills with no reader
//!   and segments are dropped, until `--reader-timeout` (5 s) after its last
//!   read; then a full ring passes them, counted in the pinned counters. The
//!   streams stall for the timeout, then go on byte-exact; the standby says
//!   `unprotected: mirror lost`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use connmirror_common::Counter;
use connmirror_tests::echo::{EchoClients, EchoOptions, assert_exact};
use connmirror_tests::failover::{
    HEARTBEAT_PORT, Program, echo_server_in, handoff_app_in, status_in,
};
use connmirror_tests::kills::{full, wait_until};
use connmirror_tests::lan::{LAN_IF, Lan, ROUTER_CLIENT_IF, TAP_IF};
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, scrape};
use connmirror_tests::mirror::{Mirror, MirrorCommand};
use connmirror_tests::onhost::{REPLICATION_PORT, standby_listening};
use connmirror_tests::pinning::PinnedInstance;
use connmirror_tests::topology::Family;
use connmirror_tests::wire::WireWatch;
use connmirror_tests::workdir::WorkDir;

const PORT: u16 = 7700;
/// A tap's mirror: it cannot hold segments back, so a full ring passes them.
const TAP_FLAGS: [&str; 2] = ["--on-ring-full", "pass"];

/// The LAN with its mirror box, and what runs on it. Fields drop in order:
/// the programs before the LAN.
struct Setup {
    standby: Mirror,
    _app: Program,
    mirror: Mirror,
    agent: Program,
    echo: Program,
    service: SocketAddr,
    lan: Lan,
    _dir: WorkDir,
}

/// Where the mirror runs: the LAN's router, or its tap.
#[derive(Clone, Copy)]
enum Placement {
    Router,
    Tap,
}

impl Setup {
    /// The LAN for `placement`, the echo server and the agent on the
    /// primary, the standby (fed only by replication) with its echo
    /// application, and the mirror box's mirror (with `mirror_flags`, pinned
    /// as `pin` if given), the standby armed and replicating.
    fn start(
        placement: Placement,
        family: Family,
        mirror_flags: &[&str],
        pin: Option<&PinnedInstance>,
    ) -> Setup {
        let lan = match placement {
            Placement::Router => Lan::behind_router(1),
            Placement::Tap => Lan::tapped(1),
        };
        let dir = WorkDir::new("router");
        let key = connmirror_tests::failover::key_file(&dir)
            .display()
            .to_string();
        let service = Lan::service_in(family, PORT);
        let standby_ip = Lan::standby_addr(family, 0);
        let heartbeats = SocketAddr::new(standby_ip, HEARTBEAT_PORT).to_string();
        let replication = SocketAddr::new(standby_ip, REPLICATION_PORT).to_string();
        let echo = echo_server_in(&lan.primary, service);
        let listen = [heartbeats.clone(), replication.clone()];
        let standby = Mirror::start(
            &lan.standbys[0],
            &standby_listening(LAN_IF, &full(service), Path::new(&key), listen)
                .arg("--announce")
                .arg(LAN_IF),
        );
        let app = handoff_app_in(&lan.standbys[0], &standby, service);
        let (host, ifaces) = match placement {
            Placement::Router => (&lan.router, vec![ROUTER_CLIENT_IF, LAN_IF]),
            Placement::Tap => (&lan.tap, vec![TAP_IF]),
        };
        let mut command = MirrorCommand::new()
            .ifaces(ifaces)
            .arg("--service")
            .arg(&full(service))
            .without_dumps()
            .arg("--replicate-to")
            .arg(&replication)
            .arg("--key")
            .arg(&key);
        for flag in mirror_flags {
            command = command.arg(flag);
        }
        if let Some(pin) = pin {
            command = command.pin(pin.name());
        }
        let mirror = Mirror::start(host.as_ref().expect("the mirror's box"), &command);
        let primary = Lan::primary_addr(family).to_string();
        let agent_args = [
            "agent",
            "--bind",
            &primary,
            "--key",
            &key,
            "--node-id",
            "primary",
            "--service",
            &service.to_string(),
            "--standby",
            &heartbeats,
        ];
        let agent = Program::start(
            &lan.primary,
            connmirror_tests::connmirror_bin(),
            agent_args.map(str::to_owned),
            "ready",
        );
        standby.wait_log("replication channel established");
        standby.wait_log("armed: primary heard");
        Setup {
            standby,
            _app: app,
            mirror,
            agent,
            echo,
            service,
            lan,
            _dir: dir,
        }
    }

    /// The standby's service state in `connmirror status`.
    fn state(&self) -> String {
        let status = status_in(&self.lan.standbys[0], &self.standby);
        status.services[0].state.clone()
    }
}

fn takeover(placement: Placement, family: Family, mirror_flags: &[&str]) {
    let mut r = Setup::start(placement, family, mirror_flags, None);
    let clients = EchoClients::start(&r.lan.client, r.service, 4, EchoOptions::default());
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("streams flow");
    let watch = WireWatch::start(&r.lan.client, LAN_IF);

    Lan::cut(&r.lan.primary);
    r.echo.kill();
    r.agent.kill();
    r.standby.wait_log("step=\"resume\"");
    let progressed = clients.wait_progress(32 << 10, Duration::from_secs(60));
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let Setup { standby, .. } = r;
    let (report, _dir) = standby.stop();

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
    takeover(Placement::Router, Family::V4, &[]);
}

#[test]
fn a_standby_takes_over_from_a_routers_mirror_with_the_same_client_sockets_v6() {
    takeover(Placement::Router, Family::V6, &[]);
}

#[test]
fn a_standby_takes_over_from_a_taps_mirror_with_the_same_client_sockets_v4() {
    takeover(Placement::Tap, Family::V4, &TAP_FLAGS);
}

#[test]
fn a_standby_takes_over_from_a_taps_mirror_with_the_same_client_sockets_v6() {
    takeover(Placement::Tap, Family::V6, &TAP_FLAGS);
}

fn mirror_death(family: Family) {
    let flags = ["--health-interval", "50", "--health-missed", "4"];
    let r = Setup::start(Placement::Router, family, &flags, None);
    let clients = EchoClients::start(&r.lan.client, r.service, 4, EchoOptions::default());
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("streams flow");
    assert_eq!(r.state(), "protected");
    let watch = WireWatch::start(&r.lan.client, LAN_IF);

    // A silent death first (no FIN: the process stops), then the process
    // goes, and its programs with it.
    let pid = r.mirror.pid() as i32;
    // SAFETY: kill has no memory-safety preconditions; the pid is the mirror's.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_until(
        || r.state() == "unprotected: mirror lost",
        "the standby declares the mirror lost",
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let metrics = scrape(&r.lan.standbys[0], DEFAULT_ENDPOINT);
    let progressed = clients.wait_progress(64 << 10, Duration::from_secs(60));
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let stderr = r.standby.stderr();

    progressed.expect("the traffic goes on without the mirror");
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    assert!(
        stderr.contains(
            "the mirror sent nothing for 200 ms (its health interval × missed): it is lost"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "the mirror is lost: the services are unprotected until a sender connects again"
        ),
        "{stderr}"
    );
    assert_eq!(metrics.get("connmirror_replication_connected"), 0.0);
}

#[test]
fn a_mirror_that_dies_leaves_the_standby_unprotected_and_the_traffic_undisturbed_v4() {
    mirror_death(Family::V4);
}

#[test]
fn a_mirror_that_dies_leaves_the_standby_unprotected_and_the_traffic_undisturbed_v6() {
    mirror_death(Family::V6);
}

fn pinned_mirror_death(family: Family) {
    let pin = PinnedInstance::new("router");
    let r = Setup::start(
        Placement::Router,
        family,
        &["--ring-size", "64K"],
        Some(&pin),
    );
    let clients = EchoClients::start(&r.lan.client, r.service, 4, EchoOptions::default());
    clients
        .wait_progress(32 << 10, Duration::from_secs(60))
        .expect("streams flow");
    let watch = WireWatch::start(&r.lan.client, LAN_IF);

    // SAFETY: kill has no memory-safety preconditions; the pid is the mirror's.
    unsafe { libc::kill(r.mirror.pid() as i32, libc::SIGKILL) };
    wait_until(
        || r.state() == "unprotected: mirror lost",
        "the standby declares the mirror lost",
    );
    // The ring (64 KiB) fills at once; the streams stall until the reader
    // timeout passes, then go on through the pinned programs.
    let progressed = clients.wait_progress(256 << 10, Duration::from_secs(60));
    let results = clients.finish(Duration::from_secs(60));
    let seen = watch.stop();
    let links = pin.files().into_iter().filter(|f| f.starts_with("link_"));

    progressed.expect("the traffic goes on past the dead mirror's pinned capture");
    assert_exact(&results);
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    assert_eq!(
        links.collect::<Vec<_>>(),
        [
            format!("link_tc-ingress_{ROUTER_CLIENT_IF}"),
            format!("link_tc-ingress_{LAN_IF}")
        ],
        "the capture stays attached"
    );
    assert!(pin.counter(Counter::BackpressureDrops) > 0);
    assert!(pin.counter(Counter::UnreadPasses) > 0);
}

#[test]
fn a_pinned_routers_mirror_that_dies_lets_the_traffic_pass_after_its_reader_timeout_v4() {
    pinned_mirror_death(Family::V4);
}

#[test]
fn a_pinned_routers_mirror_that_dies_lets_the_traffic_pass_after_its_reader_timeout_v6() {
    pinned_mirror_death(Family::V6);
}

fn tap_losing_copies(family: Family) {
    let r = Setup::start(Placement::Tap, family, &TAP_FLAGS, None);
    let kept = EchoClients::start(&r.lan.client, r.service, 3, EchoOptions::default());
    let lost = EchoClients::start(&r.lan.client, r.service, 1, EchoOptions::default());
    for clients in [&kept, &lost] {
        clients
            .wait_progress(32 << 10, Duration::from_secs(60))
            .expect("streams flow");
    }
    let lost_client = lost.locals()[0];
    r.lan.lose_copies(family, lost_client.port());
    let during = lost.wait_progress(64 << 10, Duration::from_secs(60));
    r.lan.keep_copies();
    during.expect("the stream flows while the tap loses its copies");
    kept.wait_progress(32 << 10, Duration::from_secs(60))
        .expect("the other streams flow");
    let watch = WireWatch::start(&r.lan.client, LAN_IF);

    Lan::cut(&r.lan.primary);
    let Setup {
        standby,
        mut echo,
        mut agent,
        ..
    } = r;
    echo.kill();
    agent.kill();
    standby.wait_log("step=\"resume\"");
    let progressed = kept.wait_progress(32 << 10, Duration::from_secs(60));
    let kept = kept.finish(Duration::from_secs(60));
    let lost = lost.finish(Duration::from_secs(10));
    let seen = watch.stop();
    let (report, _dir) = standby.stop();

    progressed.expect("the other streams go on from the standby");
    assert_exact(&kept);
    let error = lost[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("Connection reset by peer"), "{lost:#?}");
    assert_eq!(seen.rsts_received, vec![(r.service, lost_client)]);
    let takeover = &report.takeovers[0];
    assert_eq!(
        (takeover.restored, takeover.handed_off, takeover.reset),
        (3, 3, 1),
        "{takeover:#?}"
    );
    let reasons: Vec<(&str, u64)> = (takeover.unrecoverable.iter())
        .map(|(reason, n)| (reason.as_str(), *n))
        .collect();
    assert_eq!(reasons, [("gapped", 1)], "{takeover:#?}");
}

#[test]
fn a_tap_that_loses_copies_of_one_connection_resets_it_alone_at_takeover_v4() {
    tap_losing_copies(Family::V4);
}

#[test]
fn a_tap_that_loses_copies_of_one_connection_resets_it_alone_at_takeover_v6() {
    tap_losing_copies(Family::V6);
}
