//! Hot restart: with `--pin NAME` capture outlives the daemon. A mirror stopped
//! in the middle of a 200 MB stream leaves its programs attached; while no
//! daemon reads, the ring fills and the `drop` policy drops segments, which TCP
//! retransmits; the next mirror with the same name takes the ring, the kernel's
//! flow state and the links over, recovers the flow from the journal, and
//! continues the dump files: the stream ends byte-exact. `--detach-all` then
//! leaves nothing pinned and no link behind; a restart with other settings is
//! refused with the reason; a link severed by deleting its interface is
//! replaced; `--detach-all` on a running daemon makes it detach when it stops.
//!
//! Run through `sudo -E cargo xtask test` (root, and `CONNMIRROR_BIN`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use connmirror_common::Counter;
use connmirror_tests::mirror::FlowStatus;
use connmirror_tests::pinning::{PinnedInstance, links_running};
use connmirror_tests::{
    Family, Mirror, MirrorCommand, MirrorExit, Netns, Topology, WorkDir, bidirectional,
    require_root_and_bin,
};

const PORT: u16 = 7000;
/// Bytes each way.
const STREAM: u64 = 200_000_000;
/// Small enough that a second without a reader fills it many times over.
const RING: &str = "4M";
/// How long no daemon reads: the ring fills and segments are dropped.
const GAP: Duration = Duration::from_secs(1);
/// Backpressure makes TCP back off; 200 MB each way can take a while.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(600);
/// Time for the last ACKs to cross the gateway before the mirror stops.
const SETTLE: Duration = Duration::from_millis(300);
const MIDPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// The gateway mirror on both links (TC ingress and egress), pinned as `pin`,
/// journaled in `journal`, dumping into `dumps`, with `drop` on a small ring.
fn pinned_mirror(
    topo: &Topology,
    pin: &PinnedInstance,
    journal: &Path,
    dumps: &Path,
) -> MirrorCommand {
    MirrorCommand::new()
        .ifaces(topo.gateway_ifaces())
        .ingress("tc")
        .egress("tc")
        .service(topo.service(Family::V4, PORT))
        .ring_size(RING)
        .on_ring_full("drop")
        .pin(pin.name())
        .arg("--journal")
        .arg(&journal.display().to_string())
        .dump_dir(dumps)
}

/// The file names pinned by a mirror attached as [`pinned_mirror`] does.
fn expected_pins() -> Vec<&'static str> {
    vec![
        "link_tc-egress_gw-c",
        "link_tc-egress_gw-s",
        "link_tc-ingress_gw-c",
        "link_tc-ingress_gw-s",
        "map_COUNTERS",
        "map_FLOWS",
        "map_LAYOUT",
        "map_RECORDS",
        "map_SERVICES",
        "prog_connmirror_tc_egress",
        "prog_connmirror_tc_ingress",
    ]
}

/// What `--detach-all --pin NAME` prints after a [`pinned_mirror`].
fn removed_line(pin: &PinnedInstance) -> String {
    format!(
        "removed {}: 4 links (gw-c tc-egress, gw-c tc-ingress, gw-s tc-egress, \
         gw-s tc-ingress), 2 programs, 5 maps\n",
        pin.dir().display()
    )
}

/// As root with the binary: a fresh topology, its IPv4 service on [`PORT`], and
/// a pinned instance named `name`. Returns (topology, service, instance).
fn topology_and_pin(name: &str) -> (Topology, SocketAddr, PinnedInstance) {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    (topo, service, PinnedInstance::new(name))
}

/// Runs `--detach-all --pin NAME` for `pin`: it must succeed and print `expected`.
#[track_caller]
fn assert_detach_all_prints(pin: &PinnedInstance, expected: &str) {
    let out = pin.detach_all();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

/// Waits until the client → server dump in `dumps` holds `bytes`.
fn wait_for_dump(dumps: &Path, bytes: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let size = c2s_dump(dumps)
            .and_then(|path| std::fs::metadata(path).ok())
            .map_or(0, |m| m.len());
        if size >= bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the c2s dump in {} held {size} of {bytes} bytes after {timeout:?}",
            dumps.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn c2s_dump(dumps: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dumps)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "c2s"))
}

#[test]
fn a_hot_restart_in_the_middle_of_a_200mb_stream_stays_byte_exact() {
    let (topo, service, pin) = topology_and_pin("restart");
    let journal = WorkDir::new("journal");
    let dumps = WorkDir::new("dumps");
    let command = pinned_mirror(&topo, &pin, journal.path(), dumps.path());
    let first = Mirror::start(&topo.gateway, &command);

    let (x, before, after, second_log) = thread::scope(|s| {
        let stream = s.spawn(|| bidirectional(&topo, service, STREAM, TRAFFIC_TIMEOUT));
        wait_for_dump(dumps.path(), STREAM / 2, MIDPOINT_TIMEOUT);
        let (before, first_dir) = first.stop();
        let first_log = std::fs::read_to_string(first_dir.path().join("mirror.stderr"))
            .expect("the first mirror's stderr");
        assert!(
            first_log.contains(&format!(
                "capture stays attached (pinned at {}); `connmirror mirror --detach-all \
                 --pin {}` removes it",
                pin.dir().display(),
                pin.name()
            )),
            "{first_log}"
        );
        assert_eq!(pin.files(), expected_pins());
        let first_programs = pin.program_ids();
        assert_eq!(
            links_running(&first_programs).len(),
            4,
            "{first_programs:?}"
        );
        thread::sleep(GAP);
        let second = Mirror::start(&topo.gateway, &command);
        // The new daemon's programs replaced the old ones on the same links.
        let second_programs = pin.program_ids();
        assert!(first_programs.is_disjoint(&second_programs));
        assert_eq!(links_running(&second_programs).len(), 4);
        assert_eq!(links_running(&first_programs).len(), 0);
        let x = stream.join().expect("the stream thread panicked");
        thread::sleep(SETTLE);
        let log = second.stderr();
        let (after, _second_dir) = second.stop();
        (x, before, after, log)
    });

    println!(
        "{STREAM} bytes each way across a hot restart in {:.2?}; ring full {} times \
         before the restart, {} in all",
        x.elapsed,
        before.counter(Counter::RingFull),
        after.counter(Counter::RingFull)
    );
    // The peers got what was sent.
    assert_eq!(x.client.sent_bytes, STREAM);
    assert_eq!(x.server.sent_bytes, STREAM);
    assert_eq!(x.server.received, x.client.sent);
    assert_eq!(x.client.received, x.server.sent);
    // The first mirror stopped mid-stream.
    assert_eq!(before.flows.len(), 1, "{:#?}", before.flows);
    assert_eq!(before.flows[0].status, FlowStatus::Open);
    assert!(
        before.flows[0].c2s.delivered < STREAM,
        "{:#?}",
        before.flows
    );
    // The second took the pinned capture over and the flow from the journal.
    for link in [
        "gw-c tc-ingress",
        "gw-c tc-egress",
        "gw-s tc-ingress",
        "gw-s tc-egress",
    ] {
        let (iface, hook) = link.split_once(' ').unwrap();
        assert!(
            second_log.contains(&format!(
                "taking over the pinned link iface=\"{iface}\" hook=\"{hook}\""
            )) || second_log.contains(&format!(
                "taking over the pinned link iface={iface} hook={hook}"
            )),
            "no takeover of {link} in the second mirror's log:\n{second_log}"
        );
    }
    assert!(second_log.contains("journal recovered"), "{second_log}");
    // The counters are pinned too: they span both daemons, and the ring filled
    // while none read, so the drop path ran; every full-ring event was a drop.
    assert!(
        after.counter(Counter::RingFull) > before.counter(Counter::RingFull),
        "no ring-full event after the first mirror stopped: {:?} then {:?}",
        before.counters,
        after.counters
    );
    after.assert_drop_policy_held();
    assert_eq!(before.userspace.decode_errors, 0);
    assert_eq!(after.userspace.decode_errors, 0);
    // The recorded flow is byte-exact, from the handshake to both FINs.
    assert_eq!(after.flows.len(), 1, "{:#?}", after.flows);
    let flow = &after.flows[0];
    assert_eq!((flow.server, flow.client), (service, x.client.addr));
    assert_eq!(flow.status, FlowStatus::Complete, "{flow:#?}");
    assert!(flow.handshake, "{flow:#?}");
    assert_eq!(flow.kernel_gaps, 0);
    assert_eq!(flow.c2s.dump_stopped_at, None, "{flow:#?}");
    assert_eq!(flow.s2c.dump_stopped_at, None, "{flow:#?}");
    flow.assert_byte_exact(&x);

    // Capture is still attached through the pins until --detach-all: the
    // kernel holds the four links with no daemon running.
    assert_eq!(pin.files(), expected_pins());
    let programs = pin.program_ids();
    assert_eq!(programs.len(), 2, "{:?}", pin.files());
    let links = links_running(&programs);
    assert_eq!(
        links.len(),
        4,
        "links running the pinned programs: {links:?}"
    );
    assert_detach_all_prints(&pin, &removed_line(&pin));
    assert!(!pin.dir().exists(), "{:?}", pin.files());
    wait_for_no_links(&programs);
    assert_detach_all_prints(
        &pin,
        &format!("nothing pinned under {}\n", pin.dir().display()),
    );
}

/// Runs `command` and expects it to fail at once with `error`.
fn refused(topo: &Topology, command: MirrorCommand, error: &str) {
    refused_in(&topo.gateway, command, error);
}

/// [`refused`], in `ns`.
fn refused_in(ns: &Netns, command: MirrorCommand, error: &str) {
    let dir = WorkDir::new("refused");
    let exit = MirrorExit::run(ns, &[], &command, dir.path(), Duration::from_secs(60));
    assert!(!exit.status.success(), "{exit:?}");
    assert_eq!(exit.error_lines(), vec![error], "{}", exit.stderr);
}

#[test]
fn a_restart_with_other_settings_than_the_pinned_ones_is_refused_with_the_reason() {
    let (topo, service, pin) = topology_and_pin("mismatch");
    let journal = WorkDir::new("journal");
    let dumps = WorkDir::new("dumps");
    let mirror = Mirror::start(
        &topo.gateway,
        &pinned_mirror(&topo, &pin, journal.path(), dumps.path()),
    );
    let other_journal = WorkDir::new("journal");
    refused(
        &topo,
        pinned_mirror(&topo, &pin, other_journal.path(), dumps.path()),
        &format!(
            "error: pinned instance {} is in use by another running connmirror (one daemon \
             per instance: stop it first, or pick another --pin name)",
            pin.name()
        ),
    );
    let _ = mirror.stop();
    let (name, hint) = (
        pin.name(),
        format!(
            "or remove the instance first with `connmirror mirror --detach-all --pin {}`",
            pin.name()
        ),
    );
    let base = || {
        MirrorCommand::new()
            .pin(name)
            .on_ring_full("drop")
            .egress("tc")
    };

    refused(
        &topo,
        base()
            .ifaces(topo.gateway_ifaces())
            .ingress("tc")
            .service(service)
            .ring_size("8M"),
        &format!(
            "error: pinned instance {name} has a ring of 4194304 bytes but this daemon asks \
             for 8388608 (--ring-size); start it with --ring-size 4194304, {hint}"
        ),
    );
    refused(
        &topo,
        base()
            .ifaces(topo.gateway_ifaces())
            .ingress("tc")
            .service(service)
            .ring_size(RING)
            .arg("--max-flows")
            .arg("1000"),
        &format!(
            "error: pinned instance {name} tracks at most 131072 flows but this daemon asks \
             for 1000 (--max-flows); start it with --max-flows 131072, {hint}"
        ),
    );
    refused(
        &topo,
        base()
            .ifaces(topo.gateway_ifaces())
            .ingress("tc")
            .service(topo.service(Family::V4, PORT + 1))
            .ring_size(RING),
        &format!(
            "error: pinned instance {name} tracks 198.18.1.2:7000 (id 0) but this daemon \
             asks for 198.18.1.2:7001 (id 0); start it with the same --service flags in the \
             same order, {hint}"
        ),
    );
    refused(
        &topo,
        base()
            .iface("gw-c")
            .ingress("xdp-generic")
            .service(service)
            .ring_size(RING),
        &format!(
            "error: pinned instance {name} captures on gw-c (tc-egress, tc-ingress), gw-s \
             (tc-egress, tc-ingress) but this daemon asks for gw-c (tc-egress, xdp-generic); \
             start it with the same --iface, --ingress and --egress, {hint}"
        ),
    );
    // The pin itself is refused, whatever else the command asks for.
    let on_gw_c = |pinned: MirrorCommand| pinned.iface("gw-c").service(service);
    refused(
        &topo,
        on_gw_c(MirrorCommand::new().pin("../escape")),
        "error: pin name \"../escape\" is invalid: use 1 to 64 letters, digits, '-', '_' \
         or '.', not starting with '.'",
    );
    refused(
        &topo,
        on_gw_c(MirrorCommand::new().pin_in_private_mounts(name)),
        "error: /sys/fs/bpf is not a BPF filesystem in this mount namespace, which is not \
         the host's (`ip netns exec` makes one and remounts /sys): pins made here would \
         vanish when this process exits. Run connmirror in the host's mount namespace \
         (e.g. `nsenter --net=/run/netns/NAME connmirror ...`), or bind-mount the host's \
         /sys/fs/bpf into this one",
    );
    // Nothing the refused daemons did changed the pinned instance.
    assert_eq!(pin.files(), expected_pins());
    assert_detach_all_prints(&pin, &removed_line(&pin));
    assert!(!pin.dir().exists(), "{:?}", pin.files());
}

/// Creates the veth pair `d0`/`d1` in `ns`, both up.
fn veth_pair(ns: &Netns) {
    ns.ip(["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(["link", "set", "d0", "up"]);
    ns.ip(["link", "set", "d1", "up"]);
}

/// As root with the binary: a namespace `name` with a [`veth_pair`], a pinned
/// instance `name`, and the mirror that pins it with TC ingress on `d0`.
/// Returns (namespace, instance, mirror command).
fn pinned_on_veth(name: &str) -> (Netns, PinnedInstance, MirrorCommand) {
    require_root_and_bin();
    let ns = Netns::new(name);
    veth_pair(&ns);
    let pin = PinnedInstance::new(name);
    let command = MirrorCommand::new()
        .pin(pin.name())
        .iface("d0")
        .ingress("tc")
        .egress("tc")
        .service("198.18.1.2:7000".parse().unwrap());
    (ns, pin, command)
}

/// What `--detach-all --pin NAME` prints after a mirror [`pinned_on_veth`].
fn removed_d0_line(pin: &PinnedInstance) -> String {
    format!(
        "removed {}: 2 links (d0 tc-egress, d0 tc-ingress), 2 programs, 5 maps\n",
        pin.dir().display()
    )
}

#[test]
fn a_restart_onto_an_instance_of_an_older_record_layout_is_refused_with_the_way_out() {
    let (ns, pin, command) = pinned_on_veth("layout");
    let _ = Mirror::start(&ns, &command).stop();
    // What a connmirror of record layout 1 left: the same maps, no LAYOUT.
    std::fs::remove_file(pin.dir().join("map_LAYOUT")).expect("unpin map_LAYOUT");

    refused_in(
        &ns,
        command.clone(),
        &format!(
            "error: pinned instance {name} writes ring records of layout 1 but this binary \
             reads layout 2: an older or newer connmirror pinned it; remove it first with \
             `connmirror mirror --detach-all --pin {name}`",
            name = pin.name()
        ),
    );
    assert_detach_all_prints(
        &pin,
        &format!(
            "removed {}: 2 links (d0 tc-egress, d0 tc-ingress), 2 programs, 4 maps\n",
            pin.dir().display()
        ),
    );
    // The way out works: a fresh instance starts.
    let _ = Mirror::start(&ns, &command).stop();
    assert_detach_all_prints(&pin, &removed_d0_line(&pin));
}

#[test]
fn a_pinned_link_severed_by_deleting_its_interface_is_replaced_on_restart() {
    let (ns, pin, command) = pinned_on_veth("severed");
    let _ = Mirror::start(&ns, &command).stop();
    ns.ip(["link", "del", "d0"]);
    veth_pair(&ns);

    let mirror = Mirror::start(&ns, &command);
    let log = mirror.stderr();
    let _ = mirror.stop();

    for hook in ["tc-ingress", "tc-egress"] {
        assert!(
            log.contains(&format!(
                "the pinned link is severed (its interface was deleted); attaching a new one \
                 iface=\"d0\" hook=\"{hook}\""
            )),
            "{log}"
        );
    }
    let links = links_running(&pin.program_ids());
    assert_eq!(
        links.len(),
        2,
        "links running the pinned programs: {links:?}"
    );
    assert_detach_all_prints(&pin, &removed_d0_line(&pin));
}

/// Waits (bounded) until no link runs one of `programs`: the kernel frees an
/// unpinned, closed link from a workqueue (`bpf_link_put`).
fn wait_for_no_links(programs: &std::collections::BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !links_running(programs).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let links = links_running(programs);
    assert!(links.is_empty(), "links still running: {links:?}");
}

#[test]
fn detach_all_on_a_running_daemon_makes_it_detach_when_it_stops() {
    let (ns, pin, command) = pinned_on_veth("stop-for-good");
    let mirror = Mirror::start(&ns, &command);
    let programs = pin.program_ids();

    assert_detach_all_prints(&pin, &removed_d0_line(&pin));
    // The running daemon still holds the links: capture goes on until it stops.
    assert_eq!(links_running(&programs).len(), 2);
    let log = mirror.stderr();
    let (_report, dir) = mirror.stop();
    let log = log + &std::fs::read_to_string(dir.path().join("mirror.stderr")).unwrap();

    assert!(!log.contains("capture stays attached"), "{log}");
    wait_for_no_links(&programs);
    assert!(!pin.dir().exists());
}
