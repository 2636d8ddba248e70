//! Churn: short connections at 10,000 a second for a minute from several
//! client addresses, then 100,000 idle ones, against a real Redis behind the
//! mirror (nine instances: a process may open only 20,000 files here, so
//! eight hold the idle connections, one per holder process). The flow table, the kernel's flow map and the daemon's memory stay
//! bounded: closed flows are pruned from both, a full kernel map refuses new
//! flows rather than evict one, and at the memory cap new flows are refused
//! protection rather than a ready one evicted. Traffic never suffers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use connmirror_tests::cache::resident_bytes;
use connmirror_tests::churn::{Client, Holder, add_client_addrs};
use connmirror_tests::failover::Program;
use connmirror_tests::metrics::{DEFAULT_ENDPOINT, Scrape, scrape, scrape_settled};
use connmirror_tests::topology::CLIENT_IF;
use connmirror_tests::{Family, Mirror, MirrorCommand, Topology, redis, require_root};

const PORT: u16 = 6379;
/// Client addresses the connections come from.
const SOURCES: u8 = 8;
/// Short connections opened a second.
const RATE: u64 = 10_000;
/// For how long.
const CHURN: Duration = Duration::from_secs(60);
/// The churn stops opening connections after this long, whatever its rate.
const CHURN_LIMIT: Duration = Duration::from_secs(150);
/// Redis instances holding the idle connections, each with one holder
/// process: a process may open at most 20,000 files here.
const HOLDERS: u16 = 8;
/// Idle connections each holder keeps open.
const HELD: u64 = 12_500;
/// Idle connections held open after the churn.
const IDLE: u64 = HOLDERS as u64 * HELD;
/// `--max-flows`: fewer than the idle connections, so the kernel map fills.
const MAX_FLOWS: u64 = 65_536;
/// `--memory-cap`: reached before the kernel map is full.
const MEMORY_CAP: &str = "24M";
/// The daemon's resident memory may not pass this at any point: its ring
/// (16 MiB), its memory cap (24 MiB), and room for the program itself.
const RSS_LIMIT: u64 = 160 << 20;
/// How long the metrics may take to settle.
const SETTLE: Duration = Duration::from_secs(30);
/// How long the kernel's map may take to be counted again (a walk every ten
/// seconds), or to lose the refused flows once they closed (two walks).
const SWEPT: Duration = Duration::from_secs(45);

const FLOWS: &str = "connmirror_kernel_flows";
const PRUNED: &str = "connmirror_flows_pruned_total";
const REFUSED: &str = "connmirror_flows_refused_total";
const EVICTED: &str = "connmirror_flows_evicted_total";
const UNTRACKED: &str = "connmirror_ebpf_flows_untracked_total";
const READY: &str = "connmirror_flows{readiness=\"ready\"}";
const NO_HANDSHAKE: &str = "connmirror_flows{readiness=\"no-handshake\"}";
const SWEPT_TOTAL: &str = "connmirror_kernel_flows_swept_total";

/// The flows the table holds, every readiness together.
fn table_flows(scrape: &Scrape) -> u64 {
    (scrape.samples.iter())
        .filter(|(series, _)| series.starts_with("connmirror_flows{"))
        .map(|(_, value)| *value as u64)
        .sum()
}

/// The highest values seen while something ran.
#[derive(Debug, Default)]
struct Peaks {
    /// The mirror's resident memory.
    rss: u64,
    /// Flows in the kernel's map.
    kernel: u64,
    /// Flows in the table.
    table: u64,
}

/// Runs `f`, sampling the mirror's resident memory and both flow counts
/// every second meanwhile; returns what `f` returned and the peaks.
fn sampled<T>(topo: &Topology, mirror: &Mirror, f: impl FnOnce() -> T) -> (T, Peaks) {
    let stop = AtomicBool::new(false);
    let pid = mirror.pid();
    thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peaks = Peaks::default();
            while !stop.load(Ordering::Relaxed) {
                let now = scrape(&topo.gateway, DEFAULT_ENDPOINT);
                peaks.rss = peaks
                    .rss
                    .max(resident_bytes(pid).expect("the mirror's RSS"));
                peaks.kernel = peaks.kernel.max(now.get(FLOWS) as u64);
                peaks.table = peaks.table.max(table_flows(&now));
                thread::sleep(Duration::from_secs(1));
            }
            peaks
        });
        let value = f();
        stop.store(true, Ordering::Relaxed);
        (value, sampler.join().expect("sampler"))
    })
}

#[test]
fn short_connections_then_idle_ones_at_the_caps_keep_flows_and_memory_bounded_v4() {
    require_root();
    let topo = Topology::new();
    let sources = add_client_addrs(&topo.client, CLIENT_IF, SOURCES);
    topo.server.sysctl("net.core.somaxconn", "4096");
    let service = topo.service(Family::V4, PORT);
    let idle: Vec<SocketAddr> = (1..=HOLDERS)
        .map(|i| topo.service(Family::V4, PORT + i))
        .collect();
    let extra = ["--maxclients", "13000", "--tcp-backlog", "4096"];
    let _redis: Vec<Program> = (std::iter::once(&service).chain(&idle))
        .map(|addr| redis::server_with(&topo.server, *addr, &extra))
        .collect();
    let mirror = Mirror::start(
        &topo.gateway,
        &idle
            .iter()
            .fold(MirrorCommand::new().service(service), |c, a| c.service(*a))
            .ifaces(topo.gateway_ifaces())
            .arg("--max-flows")
            .arg(&MAX_FLOWS.to_string())
            .arg("--memory-cap")
            .arg(MEMORY_CAP)
            .without_report(),
    );
    let client = Client::new(&topo.client);

    // 1. Churn: every connection completes, and once quiet every flow is
    // gone from the table and from the kernel's map.
    let total = RATE * CHURN.as_secs();
    let (churn, peaks) = sampled(&topo, &mirror, || {
        client.churn(service, &sources, RATE, total, CHURN_LIMIT)
    });
    eprintln!(
        "churn: {} connections in {:.1} s ({:.0}/s); peaks: {peaks:?}",
        churn.completed,
        churn.elapsed.as_secs_f64(),
        churn.rate(),
    );
    assert_eq!(churn.failed, 0, "{:?}", churn.errors);
    // The kernel's map is counted as a thread walks it, every ten seconds.
    let quiet = scrape_settled(&topo.gateway, SWEPT, |s| {
        s.count(PRUNED) == churn.completed && s.get(FLOWS) == 0.0
    });
    assert_eq!(table_flows(&quiet), 0, "{}", quiet.text);
    for counter in [REFUSED, EVICTED, UNTRACKED] {
        assert_eq!(quiet.count(counter), 0, "{counter}");
    }
    assert!(peaks.rss < RSS_LIMIT, "{peaks:?}");
    assert!(peaks.kernel < MAX_FLOWS / 2, "{peaks:?}");

    // 2. Idle connections past both caps: the kernel map fills and refuses
    // the rest; at the memory cap the table refuses protection; no ready
    // flow is evicted, and every connection still works.
    let bin = Path::new(env!("CARGO_BIN_EXE_connmirror-hold"));
    let (mut holders, peaks) = sampled(&topo, &mirror, || {
        (idle.iter())
            .map(|addr| Holder::start(&topo.client, bin, *addr, &sources, HELD))
            .collect::<Vec<_>>()
    });
    eprintln!("idle: peaks while opening: {peaks:?}");
    assert!(peaks.rss < RSS_LIMIT, "{peaks:?}");
    let untracked = 3 * (IDLE - MAX_FLOWS);
    let full = scrape_settled(&topo.gateway, SWEPT, |s| {
        s.count(UNTRACKED) >= untracked && s.get(FLOWS) as u64 == MAX_FLOWS
    });
    let (ready, refused) = (full.get(READY) as u64, full.count(REFUSED));
    eprintln!("idle: {ready} ready, {refused} refused, {untracked} untracked segments");
    assert_eq!(full.get(FLOWS) as u64, MAX_FLOWS, "{}", full.text);
    // Each untracked connection's SYN, SYN-ACK and ACK, once each.
    assert_eq!(full.count(UNTRACKED), untracked);
    assert_eq!(ready + refused, MAX_FLOWS, "{}", full.text);
    assert!(refused > 0 && ready > 0, "{}", full.text);
    assert_eq!(full.count(EVICTED), 0);
    for holder in &mut holders {
        holder.ping(100);
    }
    let after = scrape_settled(&topo.gateway, SETTLE, |s| s.get(READY) as u64 == ready);
    assert_eq!(table_flows(&after), ready, "{}", after.text);
    assert_eq!(after.count(REFUSED), refused, "a refused flow counts once");
    let rss = resident_bytes(mirror.pid()).expect("the mirror's RSS");
    assert!(rss < RSS_LIMIT, "RSS {rss} with the idle connections");

    // 3. Closing them all lets every tracked flow go.
    holders.into_iter().for_each(Holder::close);

    // A connection whose FINs passed untracked (the kernel map was full)
    // can show up at its last ACK as a flow first seen mid-stream: pruned
    // after two quiet minutes, longer than this test waits.
    let gone = scrape_settled(&topo.gateway, SWEPT, |s| {
        let flows = table_flows(s);
        let first_seen_mid_stream = s.samples.get(NO_HANDSHAKE).map_or(0, |n| *n as u64);
        s.get(FLOWS) as u64 == flows
            && flows == first_seen_mid_stream
            && s.count(SWEPT_TOTAL) >= refused
    });
    eprintln!(
        "closed: {}",
        gone.lines_of(&[FLOWS, "connmirror_flows", PRUNED, REFUSED, SWEPT_TOTAL])
            .join("; ")
    );
    assert!(table_flows(&gone) <= IDLE / 1000, "{}", gone.text);
    assert_eq!(gone.count(REFUSED), refused);
    assert_eq!(gone.count(EVICTED), 0);
    let log = mirror.stop_unreported();
    assert!(
        log.contains("memory cap reached with only ready flows left: new flows are refused"),
        "{log}"
    );
}
