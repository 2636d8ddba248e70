//! The journal on a full disk. The journal stops the daemon with a clear
//! error naming the file and the cause; it never leaves a record that
//! recovery would misread. A pinned capture holds the data path meanwhile as
//! its ring-full policy says (`drop`: backpressure, nothing lost), and a
//! daemon restarted once space returns recovers the journal and goes on.

use std::time::{Duration, Instant};

use connmirror_common::Counter;
use connmirror_tests::disk::SmallDisk;
use connmirror_tests::echo::{EchoClients, EchoOptions, assert_exact};
use connmirror_tests::failover::echo_primary;
use connmirror_tests::journal;
use connmirror_tests::mirror::Readiness;
use connmirror_tests::pinning::PinnedInstance;
use connmirror_tests::{Family, Mirror, MirrorCommand, Topology, require_root_and_bin};

const PORT: u16 = 7000;
/// Echo connections through the gateway.
const CLIENTS: usize = 4;
/// The journal's disk, and what the filler leaves free on it.
const DISK: &str = "8m";
const LEFT_FREE: u64 = 1 << 20;
/// The ring: small, so the echo streams fill it within a second or two
/// while no daemon reads it.
const RING: &str = "256K";
/// How long the daemon may take to hit the full disk, and the echo streams
/// to move on once it runs again.
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_full_disk_stops_the_journal_clearly_capture_holds_and_a_restart_recovers_v4() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let _server = echo_primary(&topo, service);
    let disk = SmallDisk::mount("journal-disk", DISK);
    let filler = disk.fill(LEFT_FREE);
    let dir = disk.path().join("journal");
    let pin = PinnedInstance::new("diskfull");
    let command = MirrorCommand::new()
        .ifaces(topo.gateway_ifaces())
        .service(service)
        .pin(pin.name())
        .arg("--journal")
        .arg(&dir.display().to_string())
        .ring_size(RING)
        .arg("--reader-timeout")
        .arg("0")
        .without_report();
    let mirror = Mirror::start(&topo.gateway, &command);
    let clients = EchoClients::start(&topo.client, service, CLIENTS, EchoOptions::default());

    // 1. The disk fills: the daemon stops with the file and the cause.
    let (status, log) = mirror.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{log}");
    let error: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{log}");
    eprintln!("{}", error[0]);
    let segment = format!("error: writing the journal: write {}/seg-", dir.display());
    assert!(
        error[0].starts_with(&segment)
            && error[0].ends_with(".cmj: No space left on device (os error 28)")
            && error[0].matches("os error").count() == 1,
        "{log}"
    );

    // 2. Meanwhile the pinned capture holds the traffic (`drop`, no reader
    // deadline): segments wait in TCP's retransmissions, none is lost.
    let deadline = Instant::now() + TIMEOUT;
    while pin.counter(Counter::BackpressureDrops) == 0 {
        assert!(Instant::now() < deadline, "the ring never filled");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pin.counter(Counter::UnreadPasses), 0);
    assert_eq!(pin.counter(Counter::GapsMarked), 0);

    // What the failed daemon left reads back: at most a torn tail, which
    // recovery cuts.
    let left = journal::inspect(&dir);
    eprintln!(
        "left by the failed daemon: {:?}, torn tail {:?}",
        left.segments, left.truncated_tail
    );
    assert_eq!(left.flows.len(), CLIENTS, "{left:#?}");

    // 3. Space returns: a new daemon recovers the journal and goes on.
    std::fs::remove_file(&filler).expect("remove the filler");
    let mirror = Mirror::start(&topo.gateway, &command);
    mirror.wait_log("journal recovered");
    clients
        .wait_progress(256 << 10, TIMEOUT)
        .expect("the echo streams go on");
    assert_exact(&clients.finish(TIMEOUT));
    let log = mirror.stop_unreported();
    assert!(!log.contains("ERROR") && !log.contains("error:"), "{log}");

    // 4. The journal reads back strictly, its torn tail cut: every flow
    // there, none misread.
    let inspection = journal::inspect(&dir);
    assert_eq!(inspection.truncated_tail, None);
    assert_eq!(inspection.flows.len(), CLIENTS, "{inspection:#?}");
    // Each flow known from its handshake on. The records the failed daemon
    // had read from the ring but not yet written are lost: a flow that
    // still needed bytes among them is `missing-bytes` (a takeover would
    // reset it), never restored from a stream with a hole.
    for flow in &inspection.flows {
        assert!(flow.handshake, "{flow:#?}");
        assert_ne!(flow.readiness, Readiness::NoHandshake, "{flow:#?}");
        assert_eq!(
            flow.readiness == Readiness::MissingBytes,
            !flow.ranges.is_empty()
        );
    }
    let _ = pin.detach_all();
}
