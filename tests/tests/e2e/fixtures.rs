//! The fixtures themselves, without the mirror: the topology forwards exact data
//! in both directions for each address family and the VLAN variant, and every
//! namespace is gone once its guard drops, even when the test panics.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::time::Duration;

use connmirror_tests::process::{run_checked, wait_with_timeout};
use connmirror_tests::{Family, Netns, Topology, bidirectional, require_root};

const STREAM_BYTES: u64 = 200_000_000;
const PORT: u16 = 7000;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(300);

fn listed_namespaces() -> String {
    run_checked(Command::new("ip").args(["netns", "list"]))
}

fn forwards_streams_byte_exact(topo: &Topology, family: Family) {
    let service = topo.service(family, PORT);

    let x = bidirectional(topo, service, STREAM_BYTES, TRAFFIC_TIMEOUT);

    println!(
        "{family:?} vlan={:?}: {STREAM_BYTES} bytes each way in {:.2?} ({:.2} Gbit/s both ways together)",
        topo.vlan(),
        x.elapsed,
        x.throughput_bytes_per_sec() * 8.0 / 1e9
    );
    assert_eq!(x.client.sent_bytes, STREAM_BYTES);
    assert_eq!(x.server.sent_bytes, STREAM_BYTES);
    assert_eq!(x.server.received_bytes, STREAM_BYTES);
    assert_eq!(x.client.received_bytes, STREAM_BYTES);
    assert_eq!(x.server.received, x.client.sent);
    assert_eq!(x.client.received, x.server.sent);
    assert_ne!(
        x.client.sent, x.server.sent,
        "directions must carry different data"
    );
    assert_eq!(x.client.addr.ip(), topo.client_addr(family));
    assert_eq!(x.server.addr, service);
}

#[test]
fn gateway_forwards_200mb_bidirectional_streams_byte_exact_v4() {
    require_root();
    let topo = Topology::new();
    forwards_streams_byte_exact(&topo, Family::V4);
}

#[test]
fn gateway_forwards_200mb_bidirectional_streams_byte_exact_v6() {
    require_root();
    let topo = Topology::new();
    forwards_streams_byte_exact(&topo, Family::V6);
}

#[test]
fn gateway_forwards_200mb_bidirectional_streams_byte_exact_vlan_v4() {
    require_root();
    let topo = Topology::with_vlan(100);
    // Frames leaving either end of the client link carry tag 100 in their bytes
    // (the filter reads the frame, not skb metadata).
    let tagged = "ether[12:2] = 0x8100 and ether[14:2] & 0x0fff = 100";
    let client_tap = Tap::start(&topo.client, "eth0", tagged);
    let gateway_tap = Tap::start(&topo.gateway, "gw-c", tagged);

    forwards_streams_byte_exact(&topo, Family::V4);

    client_tap.expect_all_frames();
    gateway_tap.expect_all_frames();
}

/// How many frames a [`Tap`] waits for.
const TAP_FRAMES: u64 = 20;

/// `tcpdump -Q out -c 20 FILTER` on one interface.
struct Tap {
    child: std::process::Child,
}

impl Tap {
    fn start(ns: &Netns, dev: &str, filter: &str) -> Tap {
        let child = ns
            .command("tcpdump")
            .args([
                "-i",
                dev,
                "-Q",
                "out",
                "-nn",
                "-c",
                &TAP_FRAMES.to_string(),
                filter,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        // From here on, drop kills and reaps tcpdump on every path.
        let mut tap = Tap { child };
        // tcpdump says "listening on" once its filter is attached.
        let stderr = tap.child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("tcpdump did not start listening within 10 s");
            if line.contains("listening on") {
                // Keep draining stderr so tcpdump never blocks on it.
                std::thread::spawn(move || for _ in rx {});
                return tap;
            }
        }
    }

    /// Panics unless tcpdump matched its [`TAP_FRAMES`] frames (it exits 0 then);
    /// waits at most 10 s.
    fn expect_all_frames(mut self) {
        let what = format!("tcpdump waiting for {TAP_FRAMES} matching frames");
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(10), &what);
        assert!(status.success(), "{what}: {status}");
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Harmless once tcpdump has exited: kill fails, wait returns the status.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn namespaces_and_their_processes_are_gone_after_a_panicking_test() {
    require_root();
    let mut names = Vec::new();
    let mut pid = 0;

    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let topo = Topology::with_vlan(100);
        names.extend(topo.namespace_names());
        let child = topo
            .gateway
            .command("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        pid = child.id() as i32;
        std::mem::forget(child); // the guard, not the test, must end it
        panic!("deliberate");
    }));

    assert!(outcome.is_err());
    assert_eq!(names.len(), 3);
    let listed = listed_namespaces();
    for name in &names {
        assert!(!listed.contains(name.as_str()), "{name} survived: {listed}");
    }
    // Reap the killed child, then check it is gone.
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}

#[test]
fn netns_run_creates_sockets_inside_the_namespace() {
    require_root();
    let ns = Netns::new("probe");

    let links = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").expect("read"));

    // Only the namespace's loopback is listed, none of the caller's interfaces.
    let names: Vec<&str> = links
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"]);
}
