//! Failover end to end: clients stream through the standby to the primary's
//! echo server; the primary dies mid-stream; `connmirror takeover` rebuilds
//! every connection with TCP_REPAIR and hands it to the echo example on the
//! standby; each client's same socket goes on, byte-exact both ways, and no RST
//! ever reaches a client.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use connmirror_tests::echo::{EchoClients, EchoOptions, EchoResult, assert_exact};
use connmirror_tests::failover::{echo_primary, handoff_app, manual_failover, standby_command};
use connmirror_tests::inject::link_mac;
use connmirror_tests::mirror::Mirror;
use connmirror_tests::topology::{CLIENT_IF, Family, GATEWAY_CLIENT_IF, Topology};
use connmirror_tests::wire::WireWatch;

/// The protected port.
const PORT: u16 = 7000;
/// Gratuitous ARPs / neighbour advertisements per address (`--announce-count`).
const ANNOUNCEMENTS: usize = 3;

/// One failover run's knobs.
#[derive(Clone, Copy, Debug)]
struct Run {
    family: Family,
    conns: usize,
    /// Bytes per second each connection writes.
    rate: u64,
    /// `TCP_MAXSEG` on the clients.
    mss: Option<u32>,
    /// TCP timestamps on the client (the primary's server follows the client).
    timestamps: bool,
}

impl Run {
    fn new(family: Family) -> Run {
        Run {
            family,
            conns: 4,
            rate: 2 << 20,
            mss: None,
            timestamps: true,
        }
    }
}

/// The standby for `service`: TC ingress capture on both links, full
/// retention (the echo app needs the client bytes the primary had not echoed
/// yet), announcements on the client link.
fn standby(topo: &Topology, service: SocketAddr) -> Mirror {
    let command = standby_command(topo, &format!("{service}=full"))
        .without_dumps()
        .arg("--announce")
        .arg(GATEWAY_CLIENT_IF)
        .arg("--announce-count")
        .arg(&ANNOUNCEMENTS.to_string());
    Mirror::start(&topo.gateway, &command)
}

fn assert_streams_exact(results: &[EchoResult], conns: usize) {
    assert_eq!(results.len(), conns);
    assert_exact(results);
}

/// The whole story: stream, kill the primary, take over, stream on, check.
fn failover(run: Run) {
    connmirror_tests::require_root();
    let topo = Topology::new();
    if !run.timestamps {
        topo.client.sysctl("net.ipv4.tcp_timestamps", "0");
    }
    let service = topo.service(run.family, PORT);
    let mut primary = echo_primary(&topo, service);
    let standby = standby(&topo, service);
    let app = handoff_app(&topo, &standby, service);
    let options = EchoOptions {
        rate: run.rate,
        mss: run.mss,
        ..EchoOptions::default()
    };
    let clients = EchoClients::start(&topo.client, service, run.conns, options);
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect("streams flow before the failover");
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    let report = manual_failover(&topo, &mut primary, &standby);
    clients
        .wait_progress(64 << 10, Duration::from_secs(60))
        .expect("every stream continues after the takeover");
    let results = clients.finish(Duration::from_secs(60));
    thread::sleep(Duration::from_millis(300));
    let seen = watch.stop();
    let (final_report, _dir) = standby.stop();

    assert_streams_exact(&results, run.conns);
    assert_eq!(report.services, vec![service]);
    assert_eq!(report.restored, run.conns as u64, "{report:#?}");
    assert_eq!(report.handed_off, run.conns as u64);
    assert_eq!(report.unrecoverable_total(), 0, "{report:#?}");
    assert_eq!((report.reset, report.divergent), (0, 0));
    let steps: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        steps,
        [
            "quiesce",
            "fence",
            "drain",
            "restore",
            "address",
            "leave-repair",
            "unquiesce",
            "announce",
            "resume"
        ]
    );
    assert_eq!(seen.dropped, 0, "the watcher saw every frame");
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
    let mac = link_mac(&topo.gateway, GATEWAY_CLIENT_IF);
    match service {
        SocketAddr::V4(v4) => assert_eq!(seen.garps, vec![(*v4.ip(), mac); ANNOUNCEMENTS]),
        SocketAddr::V6(v6) => {
            assert_eq!(seen.neighbour_adverts, vec![(*v6.ip(), mac); ANNOUNCEMENTS])
        }
    }
    let resumed = app.lines();
    let resumed: Vec<&String> = resumed
        .iter()
        .filter(|l| l.starts_with("resumed "))
        .collect();
    assert_eq!(
        resumed.len(),
        run.conns,
        "one `resumed` line per handoff: {resumed:?}"
    );
    assert_eq!(final_report.takeovers, vec![report]);
}

#[test]
fn streams_continue_byte_exact_after_takeover_v4() {
    failover(Run::new(Family::V4));
}

#[test]
fn streams_continue_byte_exact_after_takeover_v6() {
    failover(Run::new(Family::V6));
}

#[test]
fn streams_continue_without_timestamps_and_with_a_small_mss_v4() {
    failover(Run {
        mss: Some(536),
        timestamps: false,
        ..Run::new(Family::V4)
    });
}

#[test]
fn streams_continue_without_timestamps_and_with_a_small_mss_v6() {
    failover(Run {
        mss: Some(600),
        timestamps: false,
        ..Run::new(Family::V6)
    });
}

#[test]
fn a_thousand_connections_all_survive_v4() {
    failover(Run {
        conns: 1000,
        rate: 8 << 10,
        ..Run::new(Family::V4)
    });
}

#[test]
fn a_thousand_connections_all_survive_v6() {
    failover(Run {
        conns: 1000,
        rate: 8 << 10,
        ..Run::new(Family::V6)
    });
}
