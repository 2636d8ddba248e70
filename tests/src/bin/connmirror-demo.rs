//! `cargo xtask demo`: the whole story in about twenty seconds.
//!
//! Builds client ↔ standby ↔ primary out of network namespaces. The primary
//! runs an echo server (`connmirror-handoff/examples/echo.rs`) and `connmirror agent`
//! (authenticated heartbeats every 50 ms); the standby runs `connmirror
//! standby` (capture on both links, failure detection) and the same echo
//! program registered for handoff. Four clients stream random data through the
//! echo server and verify every byte that comes back, while a live line shows
//! the bytes, the rate and who serves them. Midway the primary dies (its link
//! goes down, its server and agent are killed); the standby notices the missing
//! heartbeats, takes every connection over with `TCP_REPAIR`, and the same
//! client sockets go on. A summary gives the bytes verified, the failover time
//! and the takeover's steps and counters.
//!
//! Exits 0 when every byte was verified with no error, 1 otherwise, 130 when
//! interrupted (SIGINT/SIGTERM). The namespaces are removed in every case.
//!
//! Needs root, `CONNMIRROR_BIN` and `CONNMIRROR_ECHO_EXAMPLE` (set by
//! `cargo xtask demo`).

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use connmirror_tests::echo::{EchoClients, EchoOptions, EchoResult};
use connmirror_tests::failover::{
    configure_primary, detecting_standby, echo_primary, handoff_app, key_file, kill_primary_host,
    start_agent, status_of,
};
use connmirror_tests::live;
use connmirror_tests::metrics::{self, Scrape};
use connmirror_tests::topology::{CLIENT_IF, Family, Topology};
use connmirror_tests::wire::WireWatch;
use connmirror_tests::workdir::WorkDir;

/// How to run this program, for error messages.
const VIA: &str = "cargo xtask demo";
/// The protected service's port.
const PORT: u16 = 7000;
/// Streaming connections.
const CONNECTIONS: usize = 4;
/// Bytes per second each connection writes.
const RATE: u64 = 4 << 20;
/// When the primary dies, after the stream starts.
const KILL_AT: Duration = Duration::from_secs(5);
/// How long the stream runs in all.
const STREAM_TIME: Duration = Duration::from_secs(12);
/// How long after the kill the outage is measured (the standby needs ~0.2 s).
const FAILOVER_WINDOW: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    live::main_with_cleanup(
        "the demo",
        "stopped early; the namespaces were removed",
        run,
    )
}

fn run() -> Result<()> {
    let started = Instant::now();
    live::require_root("connmirror-demo", VIA)?;
    live::require_connmirror_bin(VIA)?;
    live::install_interrupt_handler()?;
    println!(
        "connmirror demo: {CONNECTIONS} clients stream through an echo server; the server's \
         host dies after {} s; the standby takes the connections over.\n",
        KILL_AT.as_secs()
    );
    live::wait_for_host(
        "      (waiting for another connmirror test or benchmark to release the host...)",
    )?;
    step(1, "Creating namespaces client <-> standby <-> primary");
    let topo = Topology::new();
    println!("      {}", topo.namespace_names().join(", "));
    let family = Family::V4;
    let service = topo.service(family, PORT);
    let dir = WorkDir::new("demo");
    let key = key_file(&dir);
    configure_primary(&topo, family, service);
    live::interrupt_point()?;

    step(
        2,
        &format!("Starting the primary: echo server on {service}"),
    );
    let mut primary = echo_primary(&topo, service);
    step(
        3,
        "Starting the standby: connmirror standby (capture, heartbeats) + echo app",
    );
    let standby = detecting_standby(&topo, family, service, &key);
    let _app = handoff_app(&topo, &standby, service);
    let mut agent = start_agent(&topo, family, service, &key);
    println!("      connmirror agent on the primary sends authenticated heartbeats every 50 ms");
    live::interrupt_point()?;

    step(
        4,
        &format!("Streaming: {CONNECTIONS} connections, each byte echoed and verified"),
    );
    let options = EchoOptions {
        rate: RATE,
        ..EchoOptions::default()
    };
    let clients = EchoClients::start(&topo.client, service, CONNECTIONS, options);
    let watch = WireWatch::start(&topo.client, CLIENT_IF);
    let failover = stream(&topo, &standby, &clients, &mut primary, &mut agent)?;

    step(6, "Stopping the clients and checking every byte");
    let results = clients.finish(Duration::from_secs(30));
    let seen = watch.stop();
    let (status, text) = metrics::get(&topo.gateway, metrics::DEFAULT_ENDPOINT, "/metrics");
    anyhow::ensure!(
        status == "HTTP/1.1 200 OK",
        "the standby's /metrics said {status}"
    );
    let scrape = Scrape::parse(text);
    let (report, _dir) = standby.stop();
    let takeover = report
        .takeovers
        .first()
        .context("the standby ran no takeover")?;
    summary(
        &results,
        failover,
        takeover,
        seen.rsts_received.len(),
        &report,
    )?;
    print_metrics(&scrape);
    println!(
        "\nResult: OK. Every byte verified across the primary's death ({:.0} s in all).",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Streams for [`STREAM_TIME`] with a live line, killing the primary at
/// [`KILL_AT`]. Returns the failover time as the clients lived it: the
/// longest stretch after the kill with no new verified byte.
fn stream(
    topo: &Topology,
    standby: &connmirror_tests::mirror::Mirror,
    clients: &EchoClients,
    primary: &mut connmirror_tests::failover::Program,
    agent: &mut connmirror_tests::failover::Program,
) -> Result<Duration> {
    let start = Instant::now();
    let mut line = Line::new();
    live_until(&mut line, start, KILL_AT, clients, "primary")?;
    line.finish();
    step(
        5,
        "Killing the primary: link down, echo server and agent SIGKILLed",
    );
    let kill = || kill_primary_host(topo, primary, agent);
    let outage = clients
        .outage_after(kill, FAILOVER_WINDOW)
        .map_err(anyhow::Error::msg)?;
    let status = status_of(topo, standby);
    let server = format!("standby (role {}, epoch {})", status.role, status.epoch);
    live_until(&mut line, start, STREAM_TIME, clients, &server)?;
    line.finish();
    Ok(outage)
}

/// Shows the live line until `until` after `start`.
fn live_until(
    line: &mut Line,
    start: Instant,
    until: Duration,
    clients: &EchoClients,
    server: &str,
) -> Result<()> {
    while start.elapsed() < until {
        live::interrupt_point()?;
        line.show(start.elapsed(), clients.verified(), server);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The live progress line: redrawn in place on a terminal, every 2 s otherwise.
struct Line {
    tty: bool,
    last: Instant,
    last_bytes: u64,
    drawn: bool,
}

impl Line {
    fn new() -> Line {
        Line {
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            last_bytes: 0,
            drawn: false,
        }
    }

    fn show(&mut self, elapsed: Duration, verified: u64, server: &str) {
        let period = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(2)
        };
        if self.last.elapsed() < period {
            return;
        }
        let secs = self.last.elapsed().as_secs_f64();
        let rate = (verified - self.last_bytes) as f64 * 8.0 / secs / 1e6;
        self.last = Instant::now();
        self.last_bytes = verified;
        let text = format!(
            "      {:>4.1} s  echoed and verified {:>8.2} MB  {rate:>7.1} Mbit/s  server: {server}",
            elapsed.as_secs_f64(),
            verified as f64 / 1e6
        );
        let mut err = std::io::stderr().lock();
        let _ = match self.tty {
            true => write!(err, "\r{text}\x1b[K"),
            false => writeln!(err, "{text}"),
        };
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.tty && self.drawn {
            eprintln!();
        }
        self.drawn = false;
    }
}

fn summary(
    results: &[EchoResult],
    failover: Duration,
    takeover: &connmirror::failover::takeover::TakeoverReport,
    rsts: usize,
    report: &connmirror_tests::mirror::Report,
) -> Result<()> {
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let verified: u64 = results.iter().map(|r| r.verified).sum();
    let exact = results
        .iter()
        .filter(|r| r.error.is_none() && r.sent == r.verified && r.sent_sha256 == r.received_sha256)
        .count();
    println!("\nSummary");
    println!(
        "  bytes: {:.2} MB sent, {:.2} MB echoed back and verified; {exact} of {} connections \
         byte-exact (sha256 both ways), same sockets throughout",
        sent as f64 / 1e6,
        verified as f64 / 1e6,
        results.len()
    );
    println!(
        "  failover: the clients went {:.0} ms without a new byte (trigger: {}, epoch {})",
        failover.as_secs_f64() * 1e3,
        takeover.trigger,
        takeover.epoch
    );
    let steps: Vec<String> = (takeover.steps.iter())
        .map(|s| format!("{} {:.1} ms", s.name, s.micros as f64 / 1e3))
        .collect();
    println!("  takeover steps: {}", steps.join(", "));
    println!(
        "  restored {} (handed off {}), unrecoverable {}, RSTs seen by the clients: {rsts}",
        takeover.restored,
        takeover.handed_off,
        takeover.unrecoverable_total()
    );
    if let Some(hb) = report.standby.and_then(|s| s.heartbeats) {
        println!(
            "  heartbeats: {} accepted, {} rejected; kernel: {} packets tracked, {} client \
             segments held back while quiesced",
            hb.accepted,
            hb.rejected(),
            report.counters.get("packets_tracked").copied().unwrap_or(0),
            report.counters.get("quiesce_drops").copied().unwrap_or(0)
        );
    }
    for r in results.iter().filter(|r| r.error.is_some()) {
        println!(
            "  connection {}: {}",
            r.local,
            r.error.as_deref().unwrap_or("")
        );
    }
    if exact != results.len() || rsts != 0 {
        bail!(
            "{} connection(s) broke or a RST reached a client",
            results.len() - exact
        );
    }
    Ok(())
}

/// Key lines of the standby's `/metrics`, scraped just before it stopped.
fn print_metrics(scrape: &Scrape) {
    println!(
        "  metrics (the standby's http://{}/metrics, as Prometheus scrapes them):",
        metrics::DEFAULT_ENDPOINT
    );
    let key = [
        "connmirror_failovers_total",
        "connmirror_restored_connections_total",
        "connmirror_restore_seconds_sum",
        "connmirror_captured_bytes_total",
        "connmirror_heartbeats_received_total",
        "connmirror_heartbeats_rejected_total",
        "connmirror_ebpf_ring_full_total",
        "connmirror_ebpf_quiesce_drops_total",
        "connmirror_replication_lag_bytes",
    ];
    for line in scrape.lines_of(&key) {
        println!("    {line}");
    }
}

fn step(n: u32, what: &str) {
    println!("[{n}/6] {what}");
}
