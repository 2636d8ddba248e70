//! Replay resumption end to end, with a real, unmodified server: Redis.
//!
//! The primary runs redis-server on the service address; the standby runs a
//! fresh instance on loopback. Two clients pipeline `INCR` on their own keys
//! and check every reply. The primary dies; on takeover the standby replays
//! each connection's recorded commands into its instance and compares the
//! output with what the primary had sent. One key was set to 1000 in the
//! standby's instance beforehand: its replay diverges at the first reply, so
//! that connection (only) is reset and counted; the other continues exactly.

use std::net::SocketAddr;
use std::time::Duration;

use connmirror_tests::failover::{manual_failover, standby_command};
use connmirror_tests::mirror::Mirror;
use connmirror_tests::redis::{self, Counter};
use connmirror_tests::topology::{CLIENT_IF, Family, Topology};
use connmirror_tests::wire::WireWatch;

const PORT: u16 = 7000;
/// Where the standby's Redis instance listens.
const STANDBY_PORT: u16 = 7001;

fn replay(family: Family) {
    connmirror_tests::require_root();
    let topo = Topology::new();
    let service = topo.service(family, PORT);
    let app: SocketAddr = match family {
        Family::V4 => SocketAddr::from(([127, 0, 0, 1], STANDBY_PORT)),
        Family::V6 => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, STANDBY_PORT)),
    };
    let mut primary = redis::server(&topo.server, service);
    let _standby_redis = redis::server(&topo.gateway, app);
    assert_eq!(
        redis::command(&topo.gateway, app, "SET diverges 1000\r\n"),
        "+OK\r\n"
    );
    let command = standby_command(&topo, &format!("{service}=full"))
        .without_dumps()
        .arg("--resume")
        .arg(&format!("{service}=replay:{app}"));
    let standby = Mirror::start(&topo.gateway, &command);
    let good = Counter::start(&topo.client, service, "continues");
    let bad = Counter::start(&topo.client, service, "diverges");
    for counter in [&good, &bad] {
        counter
            .wait_progress(500, Duration::from_secs(30))
            .expect("replies before the failover");
    }
    let watch = WireWatch::start(&topo.client, CLIENT_IF);

    let report = manual_failover(&topo, &mut primary, &standby);
    good.wait_progress(500, Duration::from_secs(60))
        .expect("the replayed connection continues");
    let bad = bad.wait_failure(Duration::from_secs(30));
    let good = good.finish(Duration::from_secs(30));
    let seen = watch.stop();
    let (final_report, _dir) = standby.stop();

    assert_eq!((report.restored, report.replayed), (1, 1), "{report:#?}");
    assert_eq!(report.divergent, 1, "{report:#?}");
    assert_eq!(report.unrecoverable_total(), 0, "{report:#?}");
    assert_eq!(report.errors.len(), 1);
    // ":1\r\n" recorded, ":1001\r\n" replayed: they part at the third byte.
    assert!(
        report.errors[0].ends_with(
            "replayed output differs from the recorded server bytes at offset 2 \
             (expected 0x0d, got 0x30)"
        ),
        "{:?}",
        report.errors
    );
    assert_eq!(good.write_error, None);
    assert_eq!(good.read_error, None);
    assert_eq!(good.replies, good.sent, "every command answered, in order");
    assert!(bad.was_reset(), "{bad:?}");
    assert_eq!(
        seen.rsts_received.len(),
        1,
        "only the divergent connection is reset"
    );
    assert_eq!(seen.rsts_received[0].0, service);
    assert_eq!(final_report.takeovers, vec![report]);
}

#[test]
fn replay_continues_a_redis_session_and_resets_the_divergent_one_v4() {
    replay(Family::V4);
}

#[test]
fn replay_continues_a_redis_session_and_resets_the_divergent_one_v6() {
    replay(Family::V6);
}
