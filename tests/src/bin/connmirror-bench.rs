//! `cargo xtask bench [AREA]`: benchmarks over network namespaces.
//!
//! Usage: `connmirror-bench [AREA]`, AREA one of [`AREAS`] (no argument: `all`),
//! or `connmirror-bench report` (see [Results](#results)).
//!
//! # capture
//! One iperf3 stream (client → server) through the gateway of a
//! [`Topology`], for [`IPERF_SECONDS`] s, measured without a mirror (the baseline)
//! and with `connmirror mirror` on both gateway links in each attach configuration
//! docs/architecture.md asks to report ("Implementation notes"): native XDP,
//! generic XDP and TC on ingress alone, and the default (XDP ingress + TC egress,
//! which on a gateway captures each forwarded segment twice: once as it enters,
//! once as it leaves), and, as the everyday alternative, `tcpdump -w FILE`
//! capturing the same stream on the same gateway ([`Tcpdump`]). Every run gets a
//! fresh topology, so no run inherits another's interface state (a native XDP
//! program on a veth changes its peer's offloads). Baseline and configurations
//! are interleaved, [`REPEATS`] rounds when time allows, and the medians are
//! reported: speed is a ratio to the baseline of the same run.
//!
//! For each mirrored run: throughput, the ratio of the medians to the baseline's,
//! `ring_full` and `backpressure_drops` from `report.json`, gapped flows, and the
//! mirror's CPU use: `utime + stime` of the `connmirror` process
//! (`/proc/PID/stat`) over the iperf3 run, divided by its wall time, in % of one
//! core. That is the userspace daemon (reader and reassembly) including its
//! syscalls; the eBPF programs run in the softirq of the forwarding path and are
//! not in it. The mirror runs with `--report` only: dumping every stream to files
//! is a verification aid whose copy would dominate the measurement (a profile
//! showed 57 % of the mirror's time in the kernel's page-cache copy).
//! tcpdump runs as `tcpdump -i gw-c -n -w FILE tcp port 5201`: the client-side
//! link carries both directions, so every packet is written once, to a scratch
//! file on the workspace's disk that is deleted after the run; for it the table
//! gives the packets it reports as dropped by kernel, and its own CPU use.
//!
//! # failover
//! Restore time for 1, 100, 1,000 and 10,000 idle connections (the takeover
//! report's `restore` step, and the whole takeover), and the time from
//! spawning `connmirror takeover` to the first echoed byte a streaming client
//! verifies again, [`FIRST_BYTE_RUNS`] runs for each send-queue refill mode
//! (both are measured), as p50, p99 and max.
//!
//! # ownership
//! Automatic failover ([`OWNERSHIP_RUNS`] runs): from the primary's death to
//! the first byte the client receives from the standby, as p50, p99 and max,
//! against the issue's targets (p50 < 150 ms, p99 < 250 ms with 50 ms
//! heartbeats).
//!
//! Then on-host mode ([`ONHOST_ROUNDS`] rounds): one iperf3 stream's
//! throughput and [`PING_PONGS`] request/echo round trips with no mirror,
//! with the agent replicating asynchronously, and with `--sync`, the
//! throughputs as ratios to no mirror measured in the same run; then
//! [`ONHOST_KILLS`] failures at random moments per family, with `--sync`
//! and without ([`connmirror_tests::kills`]), each passing the e2e tests'
//! checks (`connmirror-bench onhost` runs this part alone).
//!
//! # resume
//! The client stall through an automatic failover against the connections'
//! age ([`RESUME_AGES`] s of traffic before the primary dies), for live replay
//! (`--resume IP:PORT=live:ADDR`) and for replay at takeover (`=replay:ADDR`),
//! [`RESUME_RUNS`] runs of each (mode, age), interleaved, as p50, p99 and max:
//! the primary and the standby run redis-server, and [`RESUME_CLIENTS`]
//! clients pipeline `INCR` on their own keys, verifying every reply. The
//! stall of a run is from the primary's death to the moment every client has
//! a new verified reply. A full run takes well over an hour:
//! `CONNMIRROR_BENCH_RESUME_RUNS=N` and `CONNMIRROR_BENCH_RESUME_AGES=2,30`
//! replace the runs and the ages, and the results say so.
//!
//! Then the cost on the protected path ([`RESUME_COST_ROUNDS`] rounds): the
//! requests per second of `redis-benchmark` ([`COST_LOAD`]) from the client
//! through the standby with no live instance (`--service IP:PORT` alone) and
//! with one (`--resume IP:PORT=live:ADDR`), alternated round by round, as the
//! ratio of the medians; after each live round, the divergent and unprotected
//! connections live replay counted.
//!
//! Then the whole takeover of [`TAKEOVER_CONNECTIONS`] idle connections
//! ([`TAKEOVER_RUNS`] runs of each mode, alternated): resumed by handoff to
//! the echo example, and by live replay into redis-server; a manual
//! `connmirror takeover` once every connection is ready (and, live,
//! protected), its report's steps, then one request on every connection.
//! Then the relay after takeover ([`splice`]): bulk throughput, relay CPU and
//! round trips of `copy_bidirectional` against splice(2) on real TCP sockets,
//! interleaved over rounds (`CONNMIRROR_BENCH_SPLICE_ROUNDS` replaces their
//! number). Then memory ([`cache::memory_growth`]): the standby's resident
//! set every 10 s while [`cache::MEMORY_CLIENTS`] connections stream for
//! [`MEMORY_SECONDS`] s (`CONNMIRROR_BENCH_RESUME_MEMORY_SECONDS` replaces
//! it), live replay and then replay at takeover, whose `=full` retention
//! keeps every byte: live replay's RSS at the end must be within 10 % of its
//! RSS at 10 s, while replay's grows. `CONNMIRROR_BENCH_RESUME_PARTS=cost` (or
//! `stall`, `takeover`, `splice`, `memory`, or a comma-separated list) runs
//! those parts alone and keeps the others' stored results.
//!
//! # mirror
//! The mirror as a box of its own ([`mirror_box`]): one iperf3 stream, then
//! [`PARALLEL`], through a router with and without `connmirror mirror --replicate-to` on
//! it ([`REPEATS`] rounds, interleaved, a fresh LAN per run), as a ratio of
//! the medians; the rate of a tapped LAN (the switch mirroring every port to
//! the tap's box, nothing capturing there); then the tap's mirror (`--on-ring-full
//! pass`, replicating to a standby) at each of [`TAP_FRACTIONS`] of that rate,
//! and the highest rate at which its report has no gapped flow.
//!
//! # fuzz
//! Not a benchmark, but recorded the same way: `connmirror-bench fuzz
//! [TARGET] [--time S] [--runs N]` (what `cargo xtask fuzz` runs, needing no
//! root) runs each fuzz target of `fuzz/` with cargo-fuzz from its corpus
//! until S seconds (600) or N executions (10 million), whichever comes
//! first ([`connmirror_tests::fuzzing`]), and records each target's run in
//! `bench/data/fuzz.json`, replacing that target's previous run only.
//!
//! # Results
//! Each area prints its table, stores its result as JSON in
//! `bench/data/AREA.json` (replacing that area's previous result), then rewrites
//! `bench/RESULTS.md` (one table per area) and the plots `bench/*.png` from every
//! stored area ([`Results`], [`plots`]). `connmirror-bench report` only does the
//! rewriting, from the stored data, and needs neither root nor the daemon.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use connmirror_common::Counter;
use connmirror_tests::cache::{self, CacheSetup, Resume};
use connmirror_tests::echo::{EchoClients, EchoOptions};
use connmirror_tests::etcd::{self, EtcdCluster};
use connmirror_tests::failover::{
    Program, configure_primary, detecting_standby_command, echo_primary, handoff_app, key_file,
    kill_primary, kill_primary_host, standby_command, start_agent, start_agent_with, takeover,
};
use connmirror_tests::lan::{LAN_IF, Lan, ROUTER_CLIENT_IF, TAP_IF};
use connmirror_tests::live;
use connmirror_tests::metrics::{self, Scrape};
use connmirror_tests::mirror::FlowStatus;
use connmirror_tests::onhost::{
    onhost_standby, onhost_standby_command, standby_listening, start_onhost_agent,
};
use connmirror_tests::plots;
use connmirror_tests::redis::{self, CounterResult};
use connmirror_tests::results::{
    CaptureResults, Capturer, ConfigRuns, CostTest, FailoverResults, FirstByte, FuzzResults,
    FuzzRun, HeartbeatResults, JournalResults, LiveRound, MemoryRuns, MirrorBoxResults,
    MirrorSample, OnHostKills, OnHostResults, OnHostRuns, OwnershipResults, RestoreSample, Results,
    ResumeCost, ResumeMemory, ResumeResults, ResumeRuns, ResumeTakeover, RunInfo, Sample,
    SoakResults, TakeoverRuns, TapStep, TcpdumpSample, median, output, parse_redis_benchmark_csv,
    quantile, write_atomically,
};
use connmirror_tests::splice;
use connmirror_tests::tcpdump::Tcpdump;
use connmirror_tests::{Family, Mirror, MirrorCommand, Netns, Topology, bench};

/// How to run this program, for messages.
const VIA: &str = "cargo xtask bench";
/// The areas this program knows, in the order `all` runs them.
const AREAS: &[&str] = &[
    "capture",
    "journal",
    "failover",
    "ownership",
    "resume",
    "heartbeats",
    "mirror",
];
/// Length of each iperf3 run.
const IPERF_SECONDS: u64 = 10;
/// The iperf3 server's port, the tracked service.
const IPERF_PORT: u16 = 5201;
/// Rounds of (baseline, every configuration).
const REPEATS: usize = 2;
/// A further round starts only if the benchmark's own runs (not the time spent
/// waiting for other tests to release the host) are expected to stay within this.
const TIME_BUDGET: Duration = Duration::from_secs(240);
/// Printed while another test run holds the host.
const HOST_BUSY: &str = "(waiting for another connmirror test or benchmark to release the host...)";
/// How long an iperf3 client may run beyond `-t` before it is killed.
const IPERF_GRACE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    live::main_with_cleanup(
        "the benchmark",
        "stopped early; the namespaces were removed, nothing was recorded",
        run,
    )
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "fuzz") {
        return fuzz(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "soak") {
        live::require_root("connmirror-bench", SOAK_VIA)?;
        live::require_connmirror_bin(SOAK_VIA)?;
        return soak(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "report") {
        ensure!(
            args.len() == 1,
            "`report` takes no further arguments; got {args:?}"
        );
        return publish(&Results::load(&data_dir())?);
    }
    let areas: Vec<&str> = match args.as_slice() {
        [] => AREAS.to_vec(),
        [a] if a == "all" => AREAS.to_vec(),
        [a] if AREAS.contains(&a.as_str()) => vec![a.as_str()],
        // The on-host part of `ownership` alone.
        [a] if a == "onhost" => vec!["onhost"],
        [a] => bail!(
            "unknown benchmark area {a:?}; valid areas: all, {} (or `report`: rewrite \
             RESULTS.md and the plots from bench/data)",
            AREAS.join(", ")
        ),
        _ => bail!(
            "expected at most one argument, the area (all, {}); got {args:?}",
            AREAS.join(", ")
        ),
    };
    let command = match args.first() {
        Some(a) if a != "all" => format!("{VIA} {a}"),
        _ => VIA.to_owned(),
    };
    // `cargo run` (what xtask uses) sets CARGO; without it the binary was started
    // by hand, and the record says so.
    let command = if std::env::var_os("CARGO").is_some() {
        format!("`{command}`")
    } else {
        format!(
            "`connmirror-bench {}` started directly (the program `{command}` runs after building)",
            args.join(" ")
        )
    };
    live::require_root("connmirror-bench", VIA)?;
    live::require_connmirror_bin(VIA)?;
    live::install_interrupt_handler()?;
    for area in areas {
        match area {
            "capture" => capture(&command)?,
            "journal" => journal(&command)?,
            "failover" => failover(&command)?,
            "ownership" => {
                ownership(&command)?;
                onhost(&command)?;
            }
            "onhost" => onhost(&command)?,
            "resume" => resume(&command)?,
            "heartbeats" => heartbeats(&command)?,
            "mirror" => mirror_box(&command)?,
            other => unreachable!("area {other} is listed but not implemented"),
        }
    }
    Ok(())
}

/// A configuration of the capture benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Config {
    /// Name in the table.
    name: &'static str,
    /// Name under its bar in the plot.
    short: &'static str,
    /// What captures.
    capture: Capture,
    note: &'static str,
    /// Run the mirror with `--journal` (fresh directory) and `--retention full`.
    journal: bool,
    /// Parallel iperf3 streams (`-P`).
    streams: u32,
}

/// What captures the stream in a [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    /// Nothing: the baseline.
    None,
    /// `connmirror mirror` with this `--ingress` and `--egress`.
    Mirror(&'static str, &'static str),
    /// `tcpdump -w FILE`, the everyday alternative.
    Tcpdump,
}

impl Capture {
    fn capturer(self) -> Capturer {
        match self {
            Capture::None => Capturer::None,
            Capture::Mirror(..) => Capturer::Mirror,
            Capture::Tcpdump => Capturer::Tcpdump,
        }
    }
}

/// The unmirrored baseline, first in every table of configurations.
const BASELINE: Config = Config {
    name: "baseline (no mirror)",
    short: "no capture",
    capture: Capture::None,
    note: "",
    journal: false,
    streams: 1,
};

/// Rows with several CPUs producing into the ring at once: the note of each says so.
const PARALLEL: u32 = 8;

const CONFIGS: [Config; 9] = [
    BASELINE,
    Config {
        name: "xdp-native in",
        short: "xdp-native in",
        capture: Capture::Mirror("xdp-native", "none"),
        note: "native XDP on a veth turns TSO off on its peer",
        journal: false,
        streams: 1,
    },
    Config {
        name: "xdp-generic in",
        short: "xdp-generic in",
        capture: Capture::Mirror("xdp-generic", "none"),
        note: "",
        journal: false,
        streams: 1,
    },
    Config {
        name: "tc in",
        short: "tc in",
        capture: Capture::Mirror("tc", "none"),
        note: "",
        journal: false,
        streams: 1,
    },
    Config {
        name: "xdp in + tc out",
        short: "xdp in + tc out",
        capture: Capture::Mirror("xdp", "tc"),
        note: "each forwarded segment captured twice (in on one link, out on the other)",
        journal: false,
        streams: 1,
    },
    Config {
        name: "default flags (auto: tc in on veth, no egress)",
        short: "default",
        capture: Capture::Mirror("auto", "auto"),
        note: "the attach points `auto` picks on this gateway's veths",
        journal: false,
        streams: 1,
    },
    Config {
        name: "`tcpdump -w` (no mirror)",
        short: "tcpdump -w",
        capture: Capture::Tcpdump,
        // The table states its drops from the run itself; no fixed claim here.
        note: "",
        journal: false,
        streams: 1,
    },
    Config {
        name: "baseline (no mirror), -P 8",
        short: "no capture -P 8",
        capture: Capture::None,
        note: "8 parallel streams (`iperf3 -P 8`)",
        journal: false,
        streams: PARALLEL,
    },
    Config {
        name: "default flags, -P 8",
        short: "default -P 8",
        capture: Capture::Mirror("auto", "auto"),
        note: "8 parallel streams (`iperf3 -P 8`); ratio against the -P 8 baseline",
        journal: false,
        streams: PARALLEL,
    },
];

fn capture(command: &str) -> Result<()> {
    ensure_iperf3()?;
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); CONFIGS.len()];
    println!(
        "capture benchmark: one iperf3 stream (eight in the -P 8 rows; client -> server through the gateway) for {IPERF_SECONDS} s, \
         without a mirror, with each attach configuration and under tcpdump -w, up to {REPEATS} \
         interleaved rounds \
         (about {} s per round).\n",
        CONFIGS.len() as u64 * (IPERF_SECONDS + 4)
    );
    let mut round_time = Duration::ZERO;
    let mut measuring = Duration::ZERO;
    let mut rounds = 0;
    for round in 1..=REPEATS {
        if round > 1 && measuring + round_time > TIME_BUDGET {
            println!(
                "skipping round {round}: another {:.0} s would exceed the {} s budget",
                round_time.as_secs_f64(),
                TIME_BUDGET.as_secs()
            );
            break;
        }
        round_time = Duration::ZERO;
        for (i, config) in CONFIGS.iter().enumerate() {
            live::interrupt_point()?;
            print!("[round {round}/{REPEATS}] {:<26} ", config.name);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            // Wait here, so that the budget counts only the run itself.
            live::wait_for_host(HOST_BUSY)?;
            let run_start = Instant::now();
            let sample = capture_run(config)?;
            round_time += run_start.elapsed();
            print!(
                "{:6.2} Gbit/s  retransmits {:>5}  host CPU {:3.0} %",
                sample.gbps, sample.retransmits, sample.host_busy
            );
            if let Some(m) = &sample.mirror {
                print!(
                    "  ring_full {:>6}  drops {:>6}  gapped {}/{}  mirror CPU {:5.1} %",
                    m.ring_full, m.drops, m.gapped_flows, m.flows, m.cpu_percent
                );
            }
            if let Some(t) = &sample.tcpdump {
                print!(
                    "  written {:>8}  dropped by kernel {:>8}  tcpdump CPU {:5.1} %",
                    t.captured, t.dropped, t.cpu_percent
                );
            }
            println!();
            for line in sample.mirror.iter().flat_map(|m| &m.gapped) {
                println!("    {line}");
            }
            samples[i].push(sample);
        }
        measuring += round_time;
        rounds = round;
    }

    let configs = CONFIGS
        .iter()
        .zip(samples)
        .map(|(config, runs)| ConfigRuns {
            name: config.name.to_owned(),
            short: config.short.to_owned(),
            capturer: config.capture.capturer(),
            note: config.note.to_owned(),
            streams: config.streams,
            runs,
        })
        .collect();
    let capture = CaptureResults {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        iperf: iperf_version()?,
        iperf_seconds: IPERF_SECONDS,
        rounds,
        configs,
    };
    record(Results {
        capture: Some(capture),
        ..Results::default()
    })
}

/// One measured iperf3 run: the client in `client` against the one-shot
/// server (and its namespace) on `service`, `streams` streams, offering at
/// most `gbps` when given.
struct IperfRun<'a> {
    client: &'a Netns,
    server: (Child, &'a Netns),
    service: std::net::SocketAddr,
    streams: u32,
    gbps: Option<f64>,
}

/// (Gbit/s, retransmits, capturer CPU in % of a core, host busy in %).
type Measured = (f64, u64, f64, f64);

impl IperfRun<'_> {
    /// Runs it, with the capturer's CPU from `cpu_seconds` (utime+stime so
    /// far) and the host's, then lets the server end on its own (`-1`) and
    /// both ends of every connection close, so a capturer sees every segment
    /// up to the last FIN or RST: the client's kernel still sends and
    /// retransmits after iperf3 exits, and a segment dropped for backpressure
    /// but not yet retransmitted would look like a hole. Also says whether
    /// the connections closed within 10 s.
    fn measure(self, cpu_seconds: impl Fn() -> Result<f64>) -> Result<(Measured, bool)> {
        let Self {
            client,
            server: (mut server, server_ns),
            service,
            streams,
            gbps,
        } = self;
        let result = (|| {
            wait_listening(server_ns, IPERF_PORT)?;
            let cpu_before = cpu_seconds()?;
            let host_before = host_cpu()?;
            let t0 = Instant::now();
            let json = iperf3_client_at(client, service.ip().to_string(), streams, gbps)?;
            let wall = t0.elapsed().as_secs_f64();
            let host_busy = host_before.busy_percent(&host_cpu()?);
            let cpu_percent = (cpu_seconds()? - cpu_before) / wall * 100.0;
            let (gbps, retransmits) = parse_iperf3(&json)?;
            Ok::<_, anyhow::Error>((gbps, retransmits, cpu_percent, host_busy))
        })();
        let quiet = result.is_ok()
            && wait_child(&mut server, Duration::from_secs(5), "iperf3 server").is_ok()
            && wait_closed(&[client, server_ns], IPERF_PORT, Duration::from_secs(10))?;
        let _ = server.kill();
        let _ = server.wait();
        Ok((result?, quiet))
    }
}

/// One run of one configuration on a fresh topology.
fn capture_run(config: &Config) -> Result<Sample> {
    live::wait_for_host(HOST_BUSY)?;
    let topo = Topology::new();
    let service = topo.service(Family::V4, IPERF_PORT);
    let capturer = Running::start(config, &topo, service)?;
    live::interrupt_point()?;

    let server = iperf3_server(&topo, service)?;
    let run = IperfRun {
        client: &topo.client,
        server: (server, &topo.server),
        service,
        streams: config.streams,
        gbps: None,
    };
    let ((gbps, retransmits, cpu_percent, host_busy), quiet) =
        run.measure(|| capturer.cpu_seconds())?;
    if !quiet {
        eprintln!("\n  note: the iperf3 connections did not close within 10 s of the test's end");
    }
    let mut sample = Sample {
        gbps,
        retransmits,
        host_busy,
        ..Sample::default()
    };
    capturer.finish(&mut sample, cpu_percent)?;
    Ok(sample)
}

/// What captures a run of the capture benchmark, running.
enum Running {
    None,
    /// The mirror and its pid.
    Mirror(Mirror, i32),
    /// tcpdump, writing to a scratch file.
    Tcpdump(Tcpdump),
}

impl Running {
    /// Starts what `config` captures with on the gateway of `topo`, tracking `service`.
    fn start(config: &Config, topo: &Topology, service: std::net::SocketAddr) -> Result<Running> {
        match config.capture {
            Capture::None => Ok(Running::None),
            Capture::Mirror(ingress, egress) => {
                let mut command = MirrorCommand::new()
                    .ifaces(topo.gateway_ifaces())
                    .service(service)
                    .ingress(ingress)
                    .egress(egress)
                    .without_dumps();
                if config.journal {
                    let dir = journal_dir().join("mirror");
                    let _ = std::fs::remove_dir_all(&dir);
                    command = command
                        .arg("--journal")
                        .arg(&dir.display().to_string())
                        .arg("--retention")
                        .arg("full");
                }
                let mirror = Mirror::start(&topo.gateway, &command);
                let pid = mirror_pid(&topo.gateway)?;
                Ok(Running::Mirror(mirror, pid))
            }
            Capture::Tcpdump => {
                let dir = scratch_dir("bench-tcpdump")?;
                // The client-side link carries both directions of the stream:
                // every packet is written once.
                let dev = topo.gateway_ifaces()[0];
                let port = IPERF_PORT.to_string();
                let tcpdump = Tcpdump::start(
                    &topo.gateway,
                    dev,
                    &dir.join("capture.pcap"),
                    &["tcp", "port", &port],
                )?;
                Ok(Running::Tcpdump(tcpdump))
            }
        }
    }

    /// utime+stime of the capturing process so far (0 without one).
    fn cpu_seconds(&self) -> Result<f64> {
        match self {
            Running::None => Ok(0.0),
            Running::Mirror(_, pid) => live::process_cpu_seconds(*pid),
            Running::Tcpdump(tcpdump) => live::process_cpu_seconds(tcpdump.pid()),
        }
    }

    /// Stops the capturing process and adds what it reported to `sample`.
    fn finish(self, sample: &mut Sample, cpu_percent: f64) -> Result<()> {
        match self {
            Running::None => {}
            Running::Mirror(mirror, _) => {
                sample.mirror = Some(mirror_sample(mirror, cpu_percent));
            }
            Running::Tcpdump(tcpdump) => {
                let stats = tcpdump.stop()?;
                sample.tcpdump = Some(TcpdumpSample {
                    captured: stats.captured,
                    dropped: stats.dropped,
                    file_bytes: stats.file_bytes,
                    cpu_percent,
                });
            }
        }
        Ok(())
    }
}

/// Stops `mirror` and reads its report.
fn mirror_sample(mirror: Mirror, cpu_percent: f64) -> MirrorSample {
    let attach = attach_modes(&mirror.stderr());
    let (report, _dir) = mirror.stop();
    let gapped: Vec<String> = report
        .flows
        .iter()
        .filter(|f| f.status == FlowStatus::Gapped)
        .map(|f| {
            format!(
                "gapped flow {} -> {}: kernel_gaps {}, rst {}; c2s delivered {} holes {:?}; \
                 s2c delivered {} holes {:?}",
                f.client,
                f.server,
                f.kernel_gaps,
                f.rst,
                f.c2s.delivered,
                f.c2s.holes,
                f.s2c.delivered,
                f.s2c.holes
            )
        })
        .collect();
    MirrorSample {
        ring_full: report.counter(Counter::RingFull),
        drops: report.counter(Counter::BackpressureDrops),
        gapped_flows: gapped.len(),
        gapped_reset: report
            .flows
            .iter()
            .filter(|f| f.status == FlowStatus::Gapped && f.rst)
            .count(),
        flows: report.flows.len(),
        gapped,
        cpu_percent,
        journal_bytes: report.journal.map_or(0, |j| j.bytes),
        attach,
    }
}

/// The pid of the one `connmirror` process in `ns`.
///
/// `ip netns exec` execs the program, so this is also the pid the fixture spawned
/// (which [`Mirror`] does not expose).
fn mirror_pid(ns: &Netns) -> Result<i32> {
    let pids: Vec<i32> = ns
        .pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "connmirror")
        })
        .collect();
    match pids[..] {
        [pid] => Ok(pid),
        _ => bail!(
            "expected one connmirror process in {}, found {pids:?}",
            ns.name()
        ),
    }
}

/// The ingress hooks from the mirror's `IF: attach HOOK (why)` log lines,
/// e.g. `xdp-native`.
fn attach_modes(stderr: &str) -> String {
    let mut modes: Vec<String> = stderr
        .lines()
        .filter_map(|l| {
            let at = l.find(": attach ")?;
            let value = l[at + ": attach ".len()..].split_whitespace().next()?;
            Some(value.to_owned())
        })
        .collect();
    modes.dedup();
    modes.join(",")
}

/// A one-shot iperf3 server on `service` in the topology's server namespace.
fn iperf3_server(topo: &Topology, service: std::net::SocketAddr) -> Result<std::process::Child> {
    iperf3_server_in(&topo.server, service)
}

/// A one-shot iperf3 server on `service` in `ns`.
fn iperf3_server_in(ns: &Netns, service: std::net::SocketAddr) -> Result<std::process::Child> {
    ns.command("iperf3")
        .args(["-s", "-1", "-B"])
        .arg(service.ip().to_string())
        .args(["-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn iperf3 server")
}

/// Waits until something listens on TCP `port` in `ns` (IPv4 or IPv6).
fn wait_listening(ns: &Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    // /proc/net/tcp{,6}: "sl local_address rem_address st ...", the address as
    // HEX:PORTHEX, the state 0A for LISTEN (include/net/tcp_states.h).
    let needle = format!(":{port:04X}");
    loop {
        let listening = ns.run(|| {
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .any(|text| {
                    text.lines().skip(1).any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3 && f[1].ends_with(&needle) && f[3] == "0A"
                    })
                })
        });
        if listening {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "iperf3 server in {} did not listen on port {port} within 10 s",
                ns.name()
            );
        }
        live::sleep(Duration::from_millis(20))?;
    }
}

/// TCP sockets on `port` (either end) in `ns` that are still open: not LISTEN,
/// TIME_WAIT or CLOSE.
fn open_connections(ns: &Netns, port: u16) -> usize {
    let needle = format!(":{port:04X}");
    ns.run(|| {
        ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|text| {
                text.lines()
                    .skip(1)
                    .filter(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3
                            && (f[1].ends_with(&needle) || f[2].ends_with(&needle))
                            && !matches!(f[3], "06" | "07" | "0A")
                    })
                    .count()
            })
            .sum()
    })
}

/// Waits until no connection on `port` is open in any of `namespaces`. `Ok(false)`
/// after `limit`.
fn wait_closed(namespaces: &[&Netns], port: u16, limit: Duration) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if namespaces.iter().all(|ns| open_connections(ns, port) == 0) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        live::sleep(Duration::from_millis(20))?;
    }
}

/// The first line of `/proc/stat`: time every CPU spent, by state, in ticks.
#[derive(Clone, Copy, Debug)]
struct HostCpu {
    total: u64,
    idle: u64,
}

impl HostCpu {
    /// The share of the time between `self` and `later` that was not idle, in %.
    fn busy_percent(&self, later: &HostCpu) -> f64 {
        let total = later.total.saturating_sub(self.total) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        if total > 0.0 {
            (total - idle) / total * 100.0
        } else {
            0.0
        }
    }
}

/// Reads the `cpu` line of `/proc/stat` (`proc_stat(5)`): user nice system idle
/// iowait irq softirq steal ...; idle and iowait count as idle. guest time is
/// already included in user, so only the first eight fields are summed.
fn host_cpu() -> Result<HostCpu> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = text.lines().next().unwrap_or("");
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    ensure!(f.len() == 8, "/proc/stat: unexpected first line {line:?}");
    Ok(HostCpu {
        total: f.iter().sum(),
        idle: f[3] + f[4],
    })
}

/// Runs the iperf3 client in `ns` with `streams` parallel streams and
/// returns its JSON output.
fn iperf3_client(ns: &Netns, server: String, streams: u32) -> Result<String> {
    iperf3_client_at(ns, server, streams, None)
}

/// [`iperf3_client`], offering at most `gbps` Gbit/s (`-b`) when given.
fn iperf3_client_at(ns: &Netns, server: String, streams: u32, gbps: Option<f64>) -> Result<String> {
    let mut client = ns.command("iperf3");
    client
        .args(["-c", &server, "-p", &IPERF_PORT.to_string()])
        .args(["-P", &streams.to_string()]);
    if let Some(gbps) = gbps {
        client.args(["-b", &format!("{:.0}", gbps * 1e9)]);
    }
    client.args([
        "-t",
        &IPERF_SECONDS.to_string(),
        "-J",
        "--connect-timeout",
        "5000",
    ]);
    let limit = Duration::from_secs(IPERF_SECONDS) + IPERF_GRACE;
    run_with_limit(&mut client, limit, "iperf3 client")
}

/// Runs `command` (`what`, for messages) to its end and returns its stdout;
/// kills it after `limit`, and fails unless it exits 0.
fn run_with_limit(command: &mut Command, limit: Duration, what: &str) -> Result<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    let stdout = read_in_background(child.stdout.take().expect("piped"));
    let stderr = read_in_background(child.stderr.take().expect("piped"));
    let status = wait_child(&mut child, limit, what)?;
    let stdout = stdout.join().expect("reader thread");
    let stderr = stderr.join().expect("reader thread");
    if !status.success() {
        bail!(
            "{what} exited with {status}: {}{}",
            stderr.trim(),
            stdout.trim()
        );
    }
    Ok(stdout)
}

fn read_in_background(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// Waits for `child`, at most `limit`; kills it on interrupt or timeout.
fn wait_child(child: &mut Child, limit: Duration, what: &str) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waitpid({what})"))?
        {
            return Ok(status);
        }
        let timed_out = Instant::now() >= deadline;
        if timed_out || live::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            live::interrupt_point()?;
            bail!("{what} did not finish within {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Receiver throughput in Gbit/s and the sender's retransmissions.
fn parse_iperf3(json: &str) -> Result<(f64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("iperf3 -J output is not JSON: {json:.200}"))?;
    if let Some(err) = v.get("error") {
        bail!("iperf3: {err}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!("iperf3 output lacks end.sum_received.bits_per_second: {json:.300}")
        })?;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, retransmits))
}

fn ensure_iperf3() -> Result<()> {
    let ok = Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        ok,
        "iperf3 is not installed; `cargo xtask setup` installs it"
    );
    Ok(())
}

/// The workspace root (this crate is `tests/` in it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `bench/` in the workspace: RESULTS.md and the plots.
fn bench_dir() -> PathBuf {
    workspace_root().join("bench")
}

/// `bench/data/`: each area's latest result.
fn data_dir() -> PathBuf {
    bench_dir().join("data")
}

/// Stores the areas `newer` holds in [`data_dir`], prints their tables, and
/// rewrites RESULTS.md and the plots from every stored area.
fn record(newer: Results) -> Result<()> {
    println!("\n{}", newer.sections());
    let mut results = Results::load(&data_dir())?;
    newer.save(&data_dir())?;
    results.update(newer);
    publish(&results)
}

/// Writes `bench/RESULTS.md` and the plots from `results`.
fn publish(results: &Results) -> Result<()> {
    let page = bench_dir().join("RESULTS.md");
    write_atomically(&page, results.render().as_bytes())?;
    let plots = plots::draw_all(results, &bench_dir())?;
    println!(
        "wrote {} and {} in {}",
        page.display(),
        plots.join(", "),
        bench_dir().display()
    );
    Ok(())
}

/// A fresh, empty `target/NAME` on the workspace's disk (not tmpfs).
fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// The first line of `iperf3 --version`.
fn iperf_version() -> Result<String> {
    let version = output("iperf3", &["--version"])?;
    Ok(version.lines().next().unwrap_or("").to_owned())
}

/// Where the journal benchmark writes: on the workspace's disk, not tmpfs.
fn journal_dir() -> PathBuf {
    workspace_root().join("target").join("bench-journal")
}

/// Bytes the journal append and recovery measurements write.
const JOURNAL_BYTES: u64 = 1 << 30;
/// Flows of the idle-flow memory measurement.
const IDLE_FLOWS: u32 = 100_000;

/// The mirrored configurations of the journal benchmark (the baseline first).
const JOURNAL_CONFIGS: [Config; 2] = [
    BASELINE,
    Config {
        name: "tc in, journal, full retention",
        short: "tc in + journal",
        capture: Capture::Mirror("tc", "none"),
        note: "",
        journal: true,
        streams: 1,
    },
];

/// `cargo xtask bench journal`: disk and journal rates, recovery time, idle-flow
/// memory, and mirrored throughput with every byte journaled.
fn journal(command: &str) -> Result<()> {
    ensure_iperf3()?;
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    let dir = journal_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let gib = JOURNAL_BYTES as f64 / f64::from(1 << 30);
    println!(
        "journal benchmark: disk rate, journal append rate and recovery on {}\n",
        dir.display()
    );
    bench::progress(&format!("dd {gib:.0} GiB conv=fdatasync ... "));
    let disk = bench::disk_write_rate(&dir, JOURNAL_BYTES)?;
    println!("{:.0} MB/s", disk / 1e6);
    bench::progress(&format!(
        "journal append {gib:.0} GiB (interval fsync) ... "
    ));
    let append = bench::journal_append_rate(&dir.join("append"), JOURNAL_BYTES)?;
    println!("{:.0} MB/s ({:.2} of dd)", append / 1e6, append / disk);
    bench::progress("journal recovery (read + replay) ... ");
    let (recovery, replayed) = bench::journal_recovery_time(&dir.join("append"))?;
    println!(
        "{:.2} s for {:.2} GB",
        recovery.as_secs_f64(),
        replayed as f64 / 1e9
    );
    let _ = std::fs::remove_dir_all(dir.join("append"));
    bench::progress("memory per idle flow (100,000 flows, RSS) ... ");
    let idle = bench::idle_flow_bytes(IDLE_FLOWS)?;
    println!("{idle:.0} bytes");

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); JOURNAL_CONFIGS.len()];
    for round in 1..=REPEATS {
        for (i, config) in JOURNAL_CONFIGS.iter().enumerate() {
            live::interrupt_point()?;
            bench::progress(&format!("[round {round}/{REPEATS}] {:<32} ", config.name));
            let sample = capture_run(config)?;
            println!("{:6.2} Gbit/s", sample.gbps);
            samples[i].push(sample);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let [baseline, journaled] = <[Vec<Sample>; 2]>::try_from(samples).expect("two configs");
    let journal = JournalResults {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        iperf: iperf_version()?,
        iperf_seconds: IPERF_SECONDS,
        rounds: REPEATS,
        bytes: JOURNAL_BYTES,
        disk_bps: disk,
        append_bps: append,
        recovery_seconds: recovery.as_secs_f64(),
        replayed_bytes: replayed,
        idle_flows: IDLE_FLOWS,
        idle_flow_bytes: idle,
        baseline,
        journaled,
    };
    record(Results {
        journal: Some(journal),
        ..Results::default()
    })
}

/// Connection counts of the restore-time benchmark.
const RESTORE_COUNTS: [usize; 4] = [1, 100, 1_000, 10_000];
/// Runs of the trigger-to-first-byte benchmark, per send-queue refill mode.
const FIRST_BYTE_RUNS: usize = 30;
/// The protected port of the failover benchmarks.
const FAILOVER_PORT: u16 = 7000;

/// `cargo xtask bench failover`: restore time against the number of
/// connections, and the time from the takeover trigger to the first byte the
/// client receives again.
fn failover(command: &str) -> Result<()> {
    let limit = connmirror_handoff::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    // This process holds the client ends; every other process its own share.
    let needed = RESTORE_COUNTS[3] as u64 + 1024;
    ensure!(
        limit >= needed,
        "the open-file hard limit is {limit}; the benchmark needs {needed}"
    );
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    println!("failover benchmark: restore time, and takeover trigger to first byte\n");
    let mut restores = Vec::new();
    for n in RESTORE_COUNTS {
        live::interrupt_point()?;
        bench::progress(&format!("restore {n:>6} idle connections ... "));
        let sample = restore_run(n)?;
        println!(
            "restore step {:8.1} ms, whole takeover {:8.1} ms",
            sample.restore_ms, sample.takeover_ms
        );
        restores.push(sample);
    }
    let mut first_byte = Vec::new();
    for mode in ["unsent", "sent"] {
        let mut times = Vec::new();
        for run in 1..=FIRST_BYTE_RUNS {
            live::interrupt_point()?;
            bench::progress(&format!(
                "[{mode} {run:>2}/{FIRST_BYTE_RUNS}] trigger to first byte ... "
            ));
            let ms = first_byte_run(mode)?;
            println!("{ms:8.1} ms");
            times.push(ms);
        }
        first_byte.push(FirstByte {
            mode: mode.to_owned(),
            ms: times,
        });
    }
    let failover = FailoverResults {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        restores,
        first_byte,
    };
    record(Results {
        failover: Some(failover),
        ..Results::default()
    })
}

/// The primary, the standby (with `extra` flags) and the handoff app, up.
fn failover_setup(topo: &Topology, extra: &[&str]) -> (Program, Mirror, Program) {
    let service = topo.service(Family::V4, FAILOVER_PORT);
    let primary = echo_primary(topo, service);
    let command = extra.iter().fold(
        standby_command(topo, &format!("{service}=full")).without_dumps(),
        |command, arg| command.arg(arg),
    );
    let standby = Mirror::start(&topo.gateway, &command);
    let app = handoff_app(topo, &standby, service);
    (primary, standby, app)
}

fn restore_run(n: usize) -> Result<RestoreSample> {
    let topo = Topology::new();
    let service = topo.service(Family::V4, FAILOVER_PORT);
    let (mut primary, standby, _app) = failover_setup(&topo, &[]);
    let conns = topo.client.run(|| {
        (0..n)
            .map(|_| std::net::TcpStream::connect(service))
            .collect::<std::io::Result<Vec<_>>>()
    });
    let conns = conns.with_context(|| format!("opening {n} connections"))?;
    // Every handshake must have reached the standby's table.
    live::sleep(Duration::from_millis(500 + n as u64 / 10))?;
    kill_primary(&topo, &mut primary);
    let report = takeover(&topo.gateway, &standby.control_socket(), &[]);
    drop(conns);
    let _ = standby.stop();
    ensure!(
        report.restored == n as u64,
        "{} of {n} connections restored: {report:?}",
        report.restored
    );
    let step = |name: &str| {
        report
            .steps
            .iter()
            .filter(|s| name.is_empty() || s.name == name)
            .map(|s| s.micros as f64 / 1e3)
            .sum::<f64>()
    };
    Ok(RestoreSample {
        connections: n,
        restore_ms: report.restore_seconds() * 1e3,
        takeover_ms: step(""),
    })
}

/// One echo stream of `service` at 1 MiB/s, once it verified its first 64 KiB
/// (30 s at most).
fn paced_stream(topo: &Topology, service: std::net::SocketAddr) -> Result<EchoClients> {
    let options = EchoOptions {
        rate: 1 << 20,
        ..EchoOptions::default()
    };
    let clients = EchoClients::start(&topo.client, service, 1, options);
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    Ok(clients)
}

/// Milliseconds from spawning `connmirror takeover` to the first new byte
/// the client verifies.
fn first_byte_run(mode: &str) -> Result<f64> {
    let topo = Topology::new();
    let service = topo.service(Family::V4, FAILOVER_PORT);
    let (mut primary, standby, _app) = failover_setup(&topo, &["--send-queue", mode]);
    let clients = paced_stream(&topo, service)?;
    kill_primary(&topo, &mut primary);
    live::sleep(Duration::from_millis(300))?;
    let before = clients.verified();
    let control = standby.control_socket();
    let elapsed = std::thread::scope(|s| {
        let start = Instant::now();
        let trigger = s.spawn(|| takeover(&topo.gateway, &control, &[]));
        while clients.verified() == before && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let elapsed = start.elapsed();
        let report = trigger.join().expect("takeover thread");
        (report.restored == 1).then_some(elapsed)
    });
    let results = clients.finish(Duration::from_secs(30));
    let _ = standby.stop();
    let elapsed = elapsed.context("the takeover did not restore the connection")?;
    ensure!(
        elapsed < Duration::from_secs(60),
        "no byte reached the client within 60 s of the takeover"
    );
    let failed: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
    ensure!(failed.is_empty(), "the stream broke: {failed:?}");
    Ok(elapsed.as_secs_f64() * 1e3)
}

/// Runs of the automatic-failover benchmark.
const OWNERSHIP_RUNS: usize = 50;
/// Runs of it with ownership in etcd.
const ETCD_RUNS: usize = 30;
/// `cargo xtask bench ownership`: from the primary's death to the first byte
/// the client receives from the standby, with automatic failure detection
/// at the default heartbeat settings, over [`OWNERSHIP_RUNS`] runs.
fn ownership(command: &str) -> Result<()> {
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    println!("ownership benchmark: primary death to resumed stream, automatic failover\n");
    let mut times = Vec::new();
    for run in 1..=OWNERSHIP_RUNS {
        live::interrupt_point()?;
        bench::progress(&format!(
            "[{run:>2}/{OWNERSHIP_RUNS}] death to first resumed byte ... "
        ));
        let ms = ownership_run(None)?;
        println!("{ms:8.1} ms");
        times.push(ms);
    }
    let etcd = EtcdCluster::start(3);
    let mut etcd_times = Vec::new();
    for run in 1..=ETCD_RUNS {
        live::interrupt_point()?;
        bench::progress(&format!(
            "[{run:>2}/{ETCD_RUNS}] with etcd: death to first resumed byte ... "
        ));
        let ms = ownership_run(Some((&etcd, run)))?;
        println!("{ms:8.1} ms");
        etcd_times.push(ms);
    }
    let ownership = OwnershipResults {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        ms: times,
        etcd_ms: etcd_times,
        interval_ms: connmirror::ownership::DEFAULT_INTERVAL_MS,
        etcd_interval_ms: connmirror::ownership::DEFAULT_INTERVAL_MS,
    };
    record(Results {
        ownership: Some(ownership),
        ..Results::default()
    })
}

/// One automatic failover; with `etcd`, in cluster mode on that etcd
/// cluster, under a cluster id of the run's own (each run's takeover leaves
/// its service owned by the standby).
fn ownership_run(etcd: Option<(&EtcdCluster, usize)>) -> Result<f64> {
    let topo = Topology::new();
    let family = Family::V4;
    let service = topo.service(family, FAILOVER_PORT);
    let dir = connmirror_tests::workdir::WorkDir::new("bench-ownership");
    let key = key_file(&dir);
    configure_primary(&topo, family, service);
    let mut primary = echo_primary(&topo, service);
    let (mut standby_flags, mut agent_flags) = (Vec::new(), Vec::new());
    if let Some((etcd, run)) = etcd {
        etcd.join(&topo.gateway, etcd::node_addr(0));
        etcd.join(&topo.server, etcd::node_addr(1));
        let id = format!("bench-{}-{run}", std::process::id());
        let cluster = ["--etcd", &etcd.endpoints(), "--cluster-id", &id].map(str::to_owned);
        standby_flags.extend(cluster.clone());
        agent_flags.extend(cluster);
    }
    let mut command =
        detecting_standby_command(&topo, family, service, &key).flag("--missed", &default_missed());
    for flag in &standby_flags {
        command = command.arg(flag);
    }
    let standby = Mirror::start(&topo.gateway, &command);
    let _app = handoff_app(&topo, &standby, service);
    let flags: Vec<&str> = agent_flags.iter().map(String::as_str).collect();
    let mut agent = start_agent_with(&topo, family, service, &key, &flags);
    let clients = paced_stream(&topo, service)?;
    let outage = clients.outage_after(
        || kill_primary_host(&topo, &mut primary, &mut agent),
        Duration::from_secs(3),
    );
    let results = clients.finish(Duration::from_secs(30));
    let _ = standby.stop();
    let outage = outage.map_err(anyhow::Error::msg)?;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
    ensure!(failed.is_empty(), "the stream broke: {failed:?}");
    Ok(outage.as_secs_f64() * 1e3)
}

/// Seconds of load in the heartbeat benchmark, unless
/// [`HEARTBEAT_SECONDS_VAR`] says otherwise.
const HEARTBEAT_SECONDS: usize = 600;
/// Replaces [`HEARTBEAT_SECONDS`]: a positive integer.
const HEARTBEAT_SECONDS_VAR: &str = "CONNMIRROR_BENCH_HEARTBEAT_SECONDS";
/// Replaces the heartbeat interval there (the default's,
/// [`connmirror::ownership::DEFAULT_INTERVAL_MS`]), in ms: 10 shows the
/// scheduling delays more finely than the interval chosen from them.
const HEARTBEAT_INTERVAL_VAR: &str = "CONNMIRROR_BENCH_HEARTBEAT_INTERVAL";

/// `cargo xtask bench heartbeats`: the gaps between the primary's
/// heartbeats at the standby while iperf3 -P 8 saturates the host and the
/// agent captures and replicates it (on-host), for [`HEARTBEAT_SECONDS`];
/// the standby runs `--failover auto`, so every death it declares is a
/// false takeover, counted.
fn heartbeats(command: &str) -> Result<()> {
    let mut overrides = Vec::new();
    let seconds = positive_var(HEARTBEAT_SECONDS_VAR, HEARTBEAT_SECONDS, &mut overrides)? as u64;
    let default = connmirror::ownership::DEFAULT_INTERVAL_MS as usize;
    let interval_ms = positive_var(HEARTBEAT_INTERVAL_VAR, default, &mut overrides)? as u64;
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    println!("heartbeat benchmark: gaps between heartbeats under {seconds} s of load\n");
    let (topo, service, _dir, key) = iperf_primary("bench-heartbeats")?;
    let family = Family::V4;
    let interval = interval_ms.to_string();
    let standby = Mirror::start(
        &topo.gateway,
        &onhost_standby_command(family, &service.to_string(), &key)
            .arg("--failover")
            .arg("auto")
            .arg("--heartbeat-interval")
            .arg(&interval),
    );
    let _agent = start_onhost_agent(&topo, family, service, &key, &["--interval", &interval]);
    standby.wait_log("armed: primary heard");
    let mut server = iperf3_server(&topo, service)?;
    wait_listening(&topo.server, IPERF_PORT)?;
    bench::progress(&format!("iperf3 -P 8 for {seconds} s ... "));
    let mut client = topo.client.command("iperf3");
    client
        .args([
            "-c",
            &service.ip().to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .args(["-P", "8", "-t", &seconds.to_string(), "-J"]);
    let limit = Duration::from_secs(seconds) + IPERF_GRACE;
    let json = run_with_limit(&mut client, limit, "iperf3 client");
    let _ = wait_child(&mut server, Duration::from_secs(5), "iperf3 server");
    let (gbps, _) = parse_iperf3(&json?)?;
    let scrape = connmirror_tests::metrics::scrape(
        &topo.gateway,
        connmirror_tests::metrics::DEFAULT_ENDPOINT,
    );
    let lost = standby.stderr().matches("primary lost").count();
    drop(standby.stop());
    let buckets = gap_buckets(&scrape)?;
    let gaps: u64 = buckets.iter().map(|&(_, n)| n).sum();
    println!("{gbps:.2} Gbit/s, {gaps} gaps, the primary declared lost {lost} times");
    record(Results {
        heartbeats: Some(HeartbeatResults {
            info: RunInfo {
                seconds: started.elapsed().as_secs_f64(),
                ..info
            },
            loaded_seconds: seconds,
            interval_ms,
            gbps,
            buckets,
            false_takeovers: Some(lost as u64),
        }),
        ..Results::default()
    })
}

/// The standby's `connmirror_heartbeat_gap_seconds` buckets, each with the
/// gaps in it alone (the exposition's are cumulative).
fn gap_buckets(scrape: &Scrape) -> Result<Vec<(f64, u64)>> {
    let cumulative = scrape.buckets("connmirror_heartbeat_gap_seconds");
    ensure!(
        !cumulative.is_empty(),
        "the standby exposed no heartbeat gaps"
    );
    let mut below = 0.0;
    Ok(cumulative
        .into_iter()
        .map(|(bound, total)| {
            let n = total - below;
            below = total;
            (bound, n as u64)
        })
        .collect())
}

/// One configuration of the on-host measurement.
struct OnHostMode {
    name: &'static str,
    /// The agent's extra flags, or `None` for no mirror at all (the baseline).
    flags: Option<&'static [&'static str]>,
    /// iperf3's parallel streams (`-P`).
    streams: u32,
}

/// The on-host measurement's configurations: one stream, then `-P 8`, each
/// with its baseline first.
const ONHOST_MODES: [OnHostMode; 6] = [
    OnHostMode {
        name: "no mirror",
        flags: None,
        streams: 1,
    },
    OnHostMode {
        name: "on-host, async replication",
        flags: Some(&[]),
        streams: 1,
    },
    OnHostMode {
        name: "on-host, `--sync`",
        flags: Some(&["--sync"]),
        streams: 1,
    },
    OnHostMode {
        name: "no mirror, -P 8",
        flags: None,
        streams: 8,
    },
    OnHostMode {
        name: "on-host, async replication, -P 8",
        flags: Some(&[]),
        streams: 8,
    },
    OnHostMode {
        name: "on-host, `--sync`, -P 8",
        flags: Some(&["--sync"]),
        streams: 8,
    },
];
/// Rounds of (every on-host configuration).
const ONHOST_ROUNDS: usize = 2;
/// Request/response round trips timed per run.
const PING_PONGS: usize = 100;

/// One on-host run: iperf3 throughput, request/response round trips, and
/// the segments `--sync` held (queued to the agent).
struct OnHostSample {
    gbps: f64,
    rtts_ms: Vec<f64>,
    held: u64,
    /// `--sync`: the median hold's bucket bound, in ms.
    hold_p50_ms: Option<f64>,
}

/// Part of `cargo xtask bench ownership`: throughput (client → primary, one
/// iperf3 stream) and request/response latency with the primary protected in
/// on-host mode, async and `--sync`, as ratios to no mirror in the same run.
fn onhost(command: &str) -> Result<()> {
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    println!("\non-host benchmark: throughput and latency, no mirror vs async vs --sync\n");
    let mut samples: Vec<Vec<OnHostSample>> = ONHOST_MODES.iter().map(|_| Vec::new()).collect();
    for round in 1..=ONHOST_ROUNDS {
        for (i, mode) in ONHOST_MODES.iter().enumerate() {
            live::interrupt_point()?;
            bench::progress(&format!("[{round}/{ONHOST_ROUNDS}] {} ... ", mode.name));
            let sample = onhost_run(mode)?;
            println!(
                "{:.2} Mbit/s, RTT p50 {:.2} ms, held {}",
                sample.gbps * 1e3,
                quantile(&sample.rtts_ms, 0.5),
                sample.held
            );
            samples[i].push(sample);
        }
    }
    let modes = ONHOST_MODES
        .iter()
        .zip(samples)
        .map(|(mode, runs)| OnHostRuns {
            name: mode.name.to_owned(),
            gbps: runs.iter().map(|s| s.gbps).collect(),
            rtts_ms: runs
                .iter()
                .flat_map(|s| s.rtts_ms.iter().copied())
                .collect(),
            held: runs.iter().map(|s| s.held).collect(),
            hold_p50_ms: runs.iter().filter_map(|s| s.hold_p50_ms).collect(),
        })
        .collect();
    let kills = onhost_kills()?;
    record(Results {
        onhost: Some(OnHostResults {
            info: RunInfo {
                seconds: started.elapsed().as_secs_f64(),
                ..info
            },
            rounds: ONHOST_ROUNDS,
            ping_pongs: PING_PONGS,
            modes,
            kills: Some(kills),
        }),
        ..Results::default()
    })
}

/// Kills per family and mode in the benchmark (the e2e tests run 5).
const ONHOST_KILLS: u64 = 20;

/// The on-host failures at random moments, [`ONHOST_KILLS`] per family
/// with `--sync` and without; a kill that fails a check stops the benchmark
/// with the reason.
fn onhost_kills() -> Result<OnHostKills> {
    let started = Instant::now();
    let mut kills = OnHostKills {
        seconds: 0.0,
        sync: Vec::new(),
        asynchronous: Vec::new(),
    };
    for (family, name) in [(Family::V4, "IPv4"), (Family::V6, "IPv6")] {
        live::wait_for_host(
            "(waiting for another connmirror test or benchmark to release the host...)",
        )?;
        bench::progress(&format!("{ONHOST_KILLS} --sync kills, {name} ... "));
        let sync = connmirror_tests::kills::sync_kills(family, ONHOST_KILLS);
        println!("every stream byte-exact, no RST");
        kills.sync.push((name.to_owned(), sync));
        bench::progress(&format!("{ONHOST_KILLS} async kills, {name} ... "));
        let asynchronous = connmirror_tests::kills::async_kills(family, ONHOST_KILLS);
        println!("every exposure within one batch of the loss");
        kills.asynchronous.push((name.to_owned(), asynchronous));
    }
    kills.seconds = started.elapsed().as_secs_f64();
    Ok(kills)
}

/// Once the host is free: a fresh IPv4 topology whose primary holds the
/// service address of iperf3's port, a scratch directory named `name`, and
/// a key file in it.
fn iperf_primary(
    name: &str,
) -> Result<(
    Topology,
    std::net::SocketAddr,
    connmirror_tests::workdir::WorkDir,
    PathBuf,
)> {
    live::wait_for_host(
        "(waiting for another connmirror test or benchmark to release the host...)",
    )?;
    let topo = Topology::new();
    let service = topo.service(Family::V4, IPERF_PORT);
    let dir = connmirror_tests::workdir::WorkDir::new(name);
    let key = key_file(&dir);
    configure_primary(&topo, Family::V4, service);
    Ok((topo, service, dir, key))
}

fn onhost_run(mode: &OnHostMode) -> Result<OnHostSample> {
    let (topo, service, _dir, key) = iperf_primary("bench-onhost")?;
    let family = Family::V4;
    let replication = match mode.flags {
        Some(extra) => {
            let standby = onhost_standby(&topo, family, &service.to_string(), &key);
            let agent = start_onhost_agent(&topo, family, service, &key, extra);
            let text = "replication channel established";
            connmirror_tests::process::wait_for_text(
                || standby.stderr(),
                text,
                Duration::from_secs(20),
            )
            .map_err(|stderr| anyhow::anyhow!("the standby never logged {text:?}:\n{stderr}"))?;
            Some((standby, agent))
        }
        None => None,
    };
    let mut server = iperf3_server(&topo, service)?;
    wait_listening(&topo.server, IPERF_PORT)?;
    let json = iperf3_client(&topo.client, service.ip().to_string(), mode.streams);
    let _ = wait_child(&mut server, Duration::from_secs(5), "iperf3 server");
    let (gbps, _) = parse_iperf3(&json?)?;
    let hold_p50_ms = replication.as_ref().and_then(|_| {
        let metrics = connmirror_tests::metrics::scrape(
            &topo.server,
            connmirror_tests::metrics::DEFAULT_ENDPOINT,
        );
        let p50 = metrics.histogram_quantile("connmirror_sync_hold_seconds", 0.5)?;
        Some(p50 * 1e3)
    });
    let _echo = echo_primary(&topo, service);
    let rtts_ms = ping_pong(&topo.client, service, PING_PONGS)?;
    let held = match &replication {
        Some(_) => {
            let metrics = connmirror_tests::metrics::scrape(
                &topo.server,
                connmirror_tests::metrics::DEFAULT_ENDPOINT,
            );
            metrics.count("connmirror_ebpf_sync_held_total")
        }
        None => 0,
    };
    drop(replication);
    Ok(OnHostSample {
        gbps,
        rtts_ms,
        held,
        hold_p50_ms,
    })
}

/// `n` sequential 64-byte writes to an echo server, each timed until its echo
/// is read back whole; milliseconds.
fn ping_pong(ns: &Netns, server: std::net::SocketAddr, n: usize) -> Result<Vec<f64>> {
    use std::io::{Read as _, Write as _};
    let mut stream = ns.run(|| {
        std::net::TcpStream::connect_timeout(&server, Duration::from_secs(10))
            .with_context(|| format!("connect to the echo server {server}"))
    })?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("read timeout")?;
    let request = [0x5au8; 64];
    let mut reply = [0u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        stream.write_all(&request).context("send a request")?;
        stream.read_exact(&mut reply).context("read its echo")?;
        rtts.push(t0.elapsed().as_secs_f64() * 1e3);
        ensure!(reply == request, "the echo differs from the request");
    }
    Ok(rtts)
}

/// Runs of each (mode, age) of the resume benchmark, unless
/// [`RESUME_RUNS_VAR`] says otherwise.
const RESUME_RUNS: usize = 20;
/// Seconds of traffic before the primary dies, unless [`RESUME_AGES_VAR`]
/// says otherwise.
const RESUME_AGES: [u64; 3] = [2, 30, 120];
/// Replaces [`RESUME_RUNS`]: a positive integer.
const RESUME_RUNS_VAR: &str = "CONNMIRROR_BENCH_RESUME_RUNS";
/// Replaces [`RESUME_AGES`]: seconds, comma-separated (`2,30`).
const RESUME_AGES_VAR: &str = "CONNMIRROR_BENCH_RESUME_AGES";
/// Clients of each run, one connection each.
const RESUME_CLIENTS: usize = 8;
/// The resumption modes compared.
const RESUME_MODES: [Resume; 2] = [Resume::Live, Resume::Replay];
/// How long every client may take to continue after the primary's death.
const RESUME_LIMIT: Duration = Duration::from_secs(60);
/// Replay's `--history-cap`: far above what any age records, so that no
/// connection is reset for its history.
const REPLAY_HISTORY_CAP: &str = "1G";
/// Replay's `--replay-timeout`, in ms: long enough for the oldest history.
const REPLAY_TIMEOUT_MS: &str = "60000";

/// What one run of the resume benchmark measured.
struct ResumeSample {
    stall: Duration,
    /// The takeover report's `resume` step.
    resume: Duration,
    /// Replies each connection had when the primary died (the mean).
    commands: u64,
}

/// The positive integer the environment variable `var` holds (noted in
/// `overrides`), or `default` when it is unset.
fn positive_var(var: &str, default: usize, overrides: &mut Vec<String>) -> Result<usize> {
    let Ok(value) = std::env::var(var) else {
        return Ok(default);
    };
    let n = (value.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .with_context(|| format!("{var}={value:?}: expected a positive integer"))?;
    overrides.push(format!("{var}={value}"));
    Ok(n)
}

/// The runs and the ages of the resume benchmark, and the environment
/// settings that replaced a default.
fn resume_plan() -> Result<(usize, Vec<u64>, Vec<String>)> {
    let mut overrides = Vec::new();
    let runs = positive_var(RESUME_RUNS_VAR, RESUME_RUNS, &mut overrides)?;
    let mut ages = RESUME_AGES.to_vec();
    if let Ok(value) = std::env::var(RESUME_AGES_VAR) {
        let parsed: Option<Vec<u64>> = (value.split(','))
            .map(|age| age.trim().parse().ok().filter(|&s: &u64| s > 0))
            .collect();
        ages = parsed.with_context(|| {
            format!("{RESUME_AGES_VAR}={value:?}: expected seconds, comma-separated (2,30)")
        })?;
        ages.sort_unstable();
        ages.dedup();
        overrides.push(format!("{RESUME_AGES_VAR}={value}"));
    }
    Ok((runs, ages, overrides))
}

/// Selects the parts of the resume benchmark: some of [`RESUME_PARTS`]
/// (comma-separated; the default is all of them).
const RESUME_PARTS_VAR: &str = "CONNMIRROR_BENCH_RESUME_PARTS";
/// Rounds of (no live instance, live instance) of the cost part, unless
/// [`RESUME_COST_ROUNDS_VAR`] says otherwise.
const RESUME_COST_ROUNDS: usize = 3;
/// Replaces [`RESUME_COST_ROUNDS`]: a positive integer.
const RESUME_COST_ROUNDS_VAR: &str = "CONNMIRROR_BENCH_RESUME_COST_ROUNDS";
/// The cost part's load, run from the client against the service: pipelined
/// 16 deep over 8 connections, fixed keys (no `-r`).
const COST_LOAD: [&str; 11] = [
    "redis-benchmark",
    "-P",
    "16",
    "-c",
    "8",
    "-n",
    "4000000",
    "-t",
    "set,get,incr",
    "-q",
    "--csv",
];
/// How long one redis-benchmark run may take before it is killed.
const COST_LIMIT: Duration = Duration::from_secs(180);

/// The parts of the resume benchmark, in the order they run.
const RESUME_PARTS: [&str; 5] = ["stall", "cost", "takeover", "splice", "memory"];

/// Seconds the memory part's connections stream, unless
/// [`MEMORY_SECONDS_VAR`] says otherwise: the issue's 60.
const MEMORY_SECONDS: usize = 60;
/// Replaces [`MEMORY_SECONDS`]: more than [`MEMORY_STEP`].
const MEMORY_SECONDS_VAR: &str = "CONNMIRROR_BENCH_RESUME_MEMORY_SECONDS";
/// Seconds between the memory part's RSS samples (the first is at this age).
const MEMORY_STEP: u64 = 10;

/// `cargo xtask bench resume`: the parts [`RESUME_PARTS_VAR`] selects (the
/// stall, the cost, the takeover, the splice and the memory); a part not run
/// keeps its stored result.
fn resume(command: &str) -> Result<()> {
    let parts = std::env::var(RESUME_PARTS_VAR).unwrap_or_else(|_| RESUME_PARTS.join(","));
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    ensure!(
        !parts.is_empty() && parts.iter().all(|p| RESUME_PARTS.contains(p)),
        "{RESUME_PARTS_VAR}={parts:?}: expected some of {}, comma-separated",
        RESUME_PARTS.join(",")
    );
    let stored = Results::load(&data_dir())?.resume;
    let stall = match parts.contains(&"stall") {
        true => resume_stall(command)?,
        false => stored.clone().with_context(|| {
            format!(
                "{RESUME_PARTS_VAR} leaves the stall part out, but bench/data/resume.json holds \
                 no stall result to keep; run the stall part first"
            )
        })?,
    };
    let cost = match parts.contains(&"cost") {
        true => Some(resume_cost(command)?),
        false => stored.as_ref().and_then(|r| r.cost.clone()),
    };
    let takeover = match parts.contains(&"takeover") {
        true => Some(resume_takeover(command)?),
        false => stored.as_ref().and_then(|r| r.takeover.clone()),
    };
    let splice = match parts.contains(&"splice") {
        true => Some(splice::measure(RunInfo::collect(
            command,
            &workspace_root(),
        )?)?),
        false => stored.as_ref().and_then(|r| r.splice.clone()),
    };
    let memory = match parts.contains(&"memory") {
        true => Some(resume_memory(command)?),
        false => stored.and_then(|r| r.memory),
    };
    record(Results {
        resume: Some(ResumeResults {
            cost,
            splice,
            takeover,
            memory,
            ..stall
        }),
        ..Results::default()
    })
}

/// The stall part: the client stall through an automatic failover against
/// the connections' age, live replay against replay at takeover, the modes
/// interleaved run by run.
fn resume_stall(command: &str) -> Result<ResumeResults> {
    let (runs, ages, overrides) = resume_plan()?;
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    println!(
        "resume benchmark: primary death to every client answered again, live replay vs \
         replay at takeover, {runs} runs at ages {ages:?} s\n"
    );
    let mut cells: Vec<ResumeRuns> = (RESUME_MODES.iter())
        .flat_map(|mode| {
            ages.iter().map(|&age_s| ResumeRuns {
                mode: mode.name().to_owned(),
                age_s,
                stall_ms: Vec::new(),
                resume_ms: Vec::new(),
                commands: Vec::new(),
            })
        })
        .collect();
    for (a, &age) in ages.iter().enumerate() {
        for run in 1..=runs {
            for (m, &mode) in RESUME_MODES.iter().enumerate() {
                live::interrupt_point()?;
                bench::progress(&format!(
                    "[{:<6} age {age:>3} s, {run:>2}/{runs}] death to every client answered ... ",
                    mode.name()
                ));
                let sample = resume_run(mode, Duration::from_secs(age))?;
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                println!(
                    "{:8.1} ms (resume step {:7.1} ms, {} commands per connection)",
                    ms(sample.stall),
                    ms(sample.resume),
                    sample.commands
                );
                let cell = &mut cells[m * ages.len() + a];
                cell.stall_ms.push(ms(sample.stall));
                cell.resume_ms.push(ms(sample.resume));
                cell.commands.push(sample.commands);
            }
        }
    }
    Ok(ResumeResults {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        clients: RESUME_CLIENTS,
        runs,
        ages,
        overrides,
        cells,
        cost: None,
        splice: None,
        takeover: None,
        memory: None,
    })
}

/// The memory part: the standby's RSS every [`MEMORY_STEP`] s while
/// [`cache::MEMORY_CLIENTS`] connections stream for [`MEMORY_SECONDS`] s
/// (or what [`MEMORY_SECONDS_VAR`] sets), live replay then replay at
/// takeover, each on a fresh topology.
fn resume_memory(command: &str) -> Result<ResumeMemory> {
    let mut overrides = Vec::new();
    let seconds = positive_var(MEMORY_SECONDS_VAR, MEMORY_SECONDS, &mut overrides)? as u64;
    ensure!(
        seconds > MEMORY_STEP,
        "{MEMORY_SECONDS_VAR}={seconds}: expected more than {MEMORY_STEP} seconds"
    );
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    let clients = cache::MEMORY_CLIENTS;
    println!(
        "resume benchmark, memory: the standby's RSS while {clients} connections stream for \
         {seconds} s, live replay vs replay at takeover (full history)\n"
    );
    let mut at_s: Vec<u64> = (MEMORY_STEP..seconds)
        .step_by(MEMORY_STEP as usize)
        .collect();
    at_s.push(seconds);
    let at: Vec<Duration> = at_s.iter().map(|&s| Duration::from_secs(s)).collect();
    let mut modes = Vec::new();
    for mode in RESUME_MODES {
        live::wait_for_host(HOST_BUSY)?;
        bench::progress(&format!(
            "[{:<6}] {seconds} s of streaming ... ",
            mode.name()
        ));
        let run = cache::memory_growth(Family::V4, mode, &at)?;
        let runs = MemoryRuns {
            mode: mode.name().to_owned(),
            at_s: at_s.clone(),
            rss_bytes: run.rss,
            commands: run.commands,
        };
        let mib = |bytes: &u64| format!("{:.1}", *bytes as f64 / f64::from(1 << 20));
        let rss: Vec<String> = runs.rss_bytes.iter().map(mib).collect();
        println!(
            "RSS {} MiB ({:+.1} %), {} commands",
            rss.join(", "),
            runs.growth() * 100.0,
            runs.commands
        );
        modes.push(runs);
    }
    Ok(ResumeMemory {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        clients,
        seconds,
        overrides,
        modes,
    })
}

/// The cost part: [`COST_LOAD`]'s requests per second through the standby
/// with no live instance and with one, alternated for the rounds
/// [`RESUME_COST_ROUNDS_VAR`] sets.
fn resume_cost(command: &str) -> Result<ResumeCost> {
    let mut overrides = Vec::new();
    let rounds = positive_var(RESUME_COST_ROUNDS_VAR, RESUME_COST_ROUNDS, &mut overrides)?;
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    let load = COST_LOAD.join(" ");
    println!(
        "resume benchmark, cost: `{load}` through the standby, no live instance vs live \
         instance, {rounds} rounds\n"
    );
    let mut tests: Vec<CostTest> = Vec::new();
    let mut live_rounds = Vec::new();
    for round in 1..=rounds {
        for live in [false, true] {
            live::interrupt_point()?;
            let name = if live { "live" } else { "no live" };
            bench::progress(&format!(
                "[{name:<7} {round:>2}/{rounds}] redis-benchmark ... "
            ));
            let (rps, counted) = cost_run(live)?;
            let shown: Vec<String> = rps.iter().map(|(t, r)| format!("{t} {r:.0}")).collect();
            match &counted {
                Some(c) => println!(
                    "{} req/s; {} diverged, {} unprotected",
                    shown.join(", "),
                    c.divergences,
                    c.unprotected_total()
                ),
                None => println!("{} req/s", shown.join(", ")),
            }
            live_rounds.extend(counted);
            for (test, rps) in rps {
                let position = tests.iter().position(|t| t.test == test);
                let entry = match position {
                    Some(i) => &mut tests[i],
                    None => {
                        tests.push(CostTest {
                            test,
                            no_live_rps: Vec::new(),
                            live_rps: Vec::new(),
                        });
                        tests.last_mut().expect("just pushed")
                    }
                };
                match live {
                    true => entry.live_rps.push(rps),
                    false => entry.no_live_rps.push(rps),
                }
            }
        }
    }
    ensure!(
        (tests.iter()).all(|t| t.live_rps.len() == rounds && t.no_live_rps.len() == rounds),
        "redis-benchmark did not report every test in every round: {tests:#?}"
    );
    Ok(ResumeCost {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        load,
        version: output("redis-benchmark", &["--version"])?,
        rounds,
        overrides,
        tests,
        live_rounds,
    })
}

/// Requests per second per redis-benchmark test, in the order it ran them.
type Rates = Vec<(String, f64)>;

/// One run of the cost part on a fresh topology: the standby with the live
/// instance or, stopping it first, without; [`COST_LOAD`] from the client.
/// Returns the requests per second per test and, with the live instance,
/// what live replay counted, read from the standby's /metrics before it stops.
fn cost_run(live: bool) -> Result<(Rates, Option<LiveRound>)> {
    live::wait_for_host(HOST_BUSY)?;
    let mut s = CacheSetup::new(Family::V4, redis::Server::Redis, "bench-resume-cost");
    let standby = if live {
        Mirror::start(&s.topo.gateway, &s.standby_command(Resume::Live))
    } else {
        s.instance.kill();
        let command = standby_command(&s.topo, &s.service_arg(Resume::Live));
        Mirror::start(&s.topo.gateway, &command)
    };
    let mut client = s.topo.client.command(COST_LOAD[0]);
    client.args(&COST_LOAD[1..]);
    client.args(["-h", &s.service.ip().to_string()]);
    client.args(["-p", &s.service.port().to_string()]);
    let rps = run_with_limit(&mut client, COST_LIMIT, "redis-benchmark")
        .and_then(|csv| parse_redis_benchmark_csv(&csv));
    let counted = live.then(|| {
        let scrape = metrics::scrape(&s.topo.gateway, metrics::DEFAULT_ENDPOINT);
        live_round(&scrape)
    });
    let _ = standby.stop();
    Ok((rps?, counted))
}

/// Live replay's counters in a scrape of the standby.
fn live_round(scrape: &Scrape) -> LiveRound {
    let prefix = "connmirror_live_unprotected_total{reason=\"";
    LiveRound {
        divergences: scrape.sum("connmirror_live_divergences_total"),
        unprotected: (scrape.samples.iter())
            .filter_map(|(series, &value)| {
                let reason = series.strip_prefix(prefix)?.strip_suffix("\"}")?;
                Some((reason.to_owned(), value as u64))
            })
            .collect(),
    }
}

/// The product's `--missed`, which the benchmarks measure with (the tests'
/// fixtures detect more slowly: [`connmirror_tests::failover::TEST_MISSED`]).
fn default_missed() -> String {
    connmirror::ownership::DEFAULT_MISSED.to_string()
}

/// The detecting standby resuming the service by `mode`; replay with the
/// whole history kept and time to replay it.
fn resume_standby(s: &CacheSetup, mode: Resume) -> Mirror {
    let command = (s.detecting_standby_command(mode)).flag("--missed", &default_missed());
    let command = match mode {
        Resume::Live => command,
        Resume::Replay => (command.arg("--history-cap").arg(REPLAY_HISTORY_CAP))
            .arg("--replay-timeout")
            .arg(REPLAY_TIMEOUT_MS),
    };
    Mirror::start(&s.topo.gateway, &command)
}

/// One run: Redis on a fresh topology, [`RESUME_CLIENTS`] clients for
/// `age`, then the primary's host dies and the standby takes over on
/// missed heartbeats.
fn resume_run(mode: Resume, age: Duration) -> Result<ResumeSample> {
    live::wait_for_host(HOST_BUSY)?;
    let mut s = CacheSetup::new(Family::V4, redis::Server::Redis, "bench-resume");
    let standby = resume_standby(&s, mode);
    let mut agent = start_agent(&s.topo, s.family, s.service, &s.key);
    standby.wait_log("armed: primary heard");
    let opened = Instant::now();
    let counters = s.counters(RESUME_CLIENTS, "resume");
    for counter in &counters {
        (counter.wait_progress(100, Duration::from_secs(30))).map_err(anyhow::Error::msg)?;
    }
    if mode == Resume::Live {
        s.wait_live(&standby, |live| live.protected == RESUME_CLIENTS as u64);
    }
    live::sleep(age.saturating_sub(opened.elapsed()))?;
    let commands = counters.iter().map(redis::Counter::replies).sum::<u64>();
    let death = Instant::now();
    kill_primary_host(&s.topo, &mut s.primary, &mut agent);
    let stall = match every_client_answered(&counters, death) {
        Err(err) if err.is::<live::Interrupted>() => return Err(err),
        stall => stall,
    };
    let results: Vec<CounterResult> = (counters.into_iter())
        .map(|c| c.finish(Duration::from_secs(30)))
        .collect();
    let (report, _dir) = standby.stop();
    let stall = stall.with_context(|| format!("the clients ended as {results:#?}"))?;
    for result in &results {
        result.continued(0).map_err(anyhow::Error::msg)?;
    }
    Ok(ResumeSample {
        stall,
        resume: resume_step(&report, mode)?,
        commands: commands / RESUME_CLIENTS as u64,
    })
}

/// The time from `death` until every one of `counters` has verified a reply
/// beyond what it had when the kill returned (the primary's link is down by
/// then, so any later reply comes from the standby), polled every 1 ms;
/// fails after [`RESUME_LIMIT`] or once a client broke.
fn every_client_answered(counters: &[redis::Counter], death: Instant) -> Result<Duration> {
    let killed = death.elapsed();
    if killed > Duration::from_millis(100) {
        println!("\n  note: killing the primary took {killed:?}");
    }
    let before: Vec<u64> = counters.iter().map(redis::Counter::replies).collect();
    let mut answered: Vec<Option<Duration>> = vec![None; counters.len()];
    while answered.iter().any(Option::is_none) {
        live::interrupt_point()?;
        for ((counter, &before), answered) in counters.iter().zip(&before).zip(&mut answered) {
            if answered.is_none() && counter.replies() > before {
                *answered = Some(death.elapsed());
            } else if answered.is_none() && counter.stopped() {
                bail!("{} broke after the primary died", counter.key());
            }
        }
        if death.elapsed() > RESUME_LIMIT {
            let waiting: Vec<&str> = (counters.iter().zip(&answered))
                .filter(|(_, answered)| answered.is_none())
                .map(|(counter, _)| counter.key())
                .collect();
            bail!("{waiting:?} had no new reply within {RESUME_LIMIT:?} of the primary's death");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(answered.into_iter().flatten().max().unwrap_or_default())
}

/// The `resume` step of the standby's one takeover, which must have been
/// started by missed heartbeats and resumed every client by `mode`.
fn resume_step(report: &connmirror_tests::Report, mode: Resume) -> Result<Duration> {
    let [takeover] = report.takeovers.as_slice() else {
        bail!("expected one takeover, got {:#?}", report.takeovers);
    };
    let resumed = match mode {
        Resume::Live => takeover.live,
        Resume::Replay => takeover.replayed,
    };
    let clients = RESUME_CLIENTS as u64;
    ensure!(
        takeover.trigger == "heartbeats-missed"
            && (takeover.restored, resumed, takeover.divergent) == (clients, clients, 0)
            && takeover.unrecoverable_total() == 0,
        "expected {clients} connections resumed by {} after missed heartbeats: {takeover:#?}",
        mode.name()
    );
    let micros = (takeover.steps.iter())
        .filter(|step| step.name == "resume")
        .map(|step| step.micros)
        .sum();
    Ok(Duration::from_micros(micros))
}

/// Idle connections of the takeover part, unless
/// [`TAKEOVER_CONNECTIONS_VAR`] says otherwise.
const TAKEOVER_CONNECTIONS: usize = 10_000;
/// Replaces [`TAKEOVER_CONNECTIONS`]: a positive integer.
const TAKEOVER_CONNECTIONS_VAR: &str = "CONNMIRROR_BENCH_RESUME_TAKEOVER_CONNECTIONS";
/// Runs of each mode of the takeover part, unless [`TAKEOVER_RUNS_VAR`] says
/// otherwise.
const TAKEOVER_RUNS: usize = 3;
/// Replaces [`TAKEOVER_RUNS`]: a positive integer.
const TAKEOVER_RUNS_VAR: &str = "CONNMIRROR_BENCH_RESUME_TAKEOVER_RUNS";
/// Open files the standby needs besides its connections' (a live standby
/// with 8 connections holds 34).
const STANDBY_SPARE_FILES: u64 = 128;
/// How long the connections may take to be ready before a takeover.
const TAKEOVER_READY_LIMIT: Duration = Duration::from_secs(180);
/// How long a checked connection may take to answer after the takeover.
const TAKEOVER_REPLY_LIMIT: Duration = Duration::from_secs(30);

/// How the takeover part resumes the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TakeoverMode {
    /// Handed to the echo example on the standby's handoff socket.
    Handoff,
    /// Spliced to the standby's redis-server, fed all along (live replay).
    Live,
}

impl TakeoverMode {
    const ALL: [TakeoverMode; 2] = [TakeoverMode::Handoff, TakeoverMode::Live];

    fn name(self) -> &'static str {
        match self {
            TakeoverMode::Handoff => "handoff",
            TakeoverMode::Live => "live",
        }
    }

    /// The request each checked connection sends after the takeover, and the
    /// exact reply it must get.
    fn probe(self) -> (&'static [u8], &'static [u8]) {
        match self {
            TakeoverMode::Handoff => (b"t", b"t"),
            TakeoverMode::Live => (b"PING\r\n", b"+PONG\r\n"),
        }
    }
}

/// What one run of the takeover part measured.
struct TakeoverSample {
    /// Every step of the takeover report.
    whole: Duration,
    /// Its `restore` and `leave-repair` steps.
    restore: Duration,
    /// Its `resume` step.
    resume: Duration,
    /// From the first connect to every connection ready.
    ready: Duration,
}

/// The takeover part: the whole takeover of many idle connections, resume
/// included, by handoff and by live replay, alternated run by run.
fn resume_takeover(command: &str) -> Result<ResumeTakeover> {
    let mut overrides = Vec::new();
    let n = positive_var(
        TAKEOVER_CONNECTIONS_VAR,
        TAKEOVER_CONNECTIONS,
        &mut overrides,
    )?;
    let runs = positive_var(TAKEOVER_RUNS_VAR, TAKEOVER_RUNS, &mut overrides)?;
    // This process holds the client ends; the standby the restored sockets
    // and the instance connections; each redis-server its clients.
    let limit = raise_open_files_to(3 * n as u64 + 4096, n as u64 + 1024)?;
    let standby_needs = 2 * n as u64 + STANDBY_SPARE_FILES;
    ensure!(
        limit >= standby_needs,
        "a live takeover of {n} connections needs about {standby_needs} open files in the \
         standby (two per connection, and {STANDBY_SPARE_FILES} of its own), over the hard \
         limit of {limit}, which this process cannot raise (it needs CAP_SYS_RESOURCE): set \
         {TAKEOVER_CONNECTIONS_VAR} to at most {}",
        (limit - STANDBY_SPARE_FILES) / 2
    );
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    println!(
        "resume benchmark, takeover: {n} idle connections, handoff vs live replay, {runs} runs\n"
    );
    let mut modes: Vec<TakeoverRuns> = (TakeoverMode::ALL.iter())
        .map(|mode| TakeoverRuns {
            mode: mode.name().to_owned(),
            takeover_ms: Vec::new(),
            restore_ms: Vec::new(),
            resume_ms: Vec::new(),
            ready_ms: Vec::new(),
        })
        .collect();
    for run in 1..=runs {
        for (mode, runs_of) in TakeoverMode::ALL.into_iter().zip(&mut modes) {
            live::interrupt_point()?;
            bench::progress(&format!(
                "[{:<7} {run:>2}/{runs}] takeover of {n} idle connections ... ",
                mode.name()
            ));
            let sample = takeover_run(mode, n)?;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "whole {:8.1} ms (restore {:7.1} ms, resume {:7.1} ms; ready after {:.1} s)",
                ms(sample.whole),
                ms(sample.restore),
                ms(sample.resume),
                sample.ready.as_secs_f64()
            );
            runs_of.takeover_ms.push(ms(sample.whole));
            runs_of.restore_ms.push(ms(sample.restore));
            runs_of.resume_ms.push(ms(sample.resume));
            runs_of.ready_ms.push(ms(sample.ready));
        }
    }
    for m in &modes {
        println!("{:<7} median {:8.1} ms", m.mode, median(&m.takeover_ms));
    }
    Ok(ResumeTakeover {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        connections: n,
        runs,
        checked: n,
        overrides,
        modes,
    })
}

/// Raises this process's open-file limit, soft and hard, to at least
/// `needed` (as root, past the inherited hard limit, when it has
/// CAP_SYS_RESOURCE): the daemon and the servers it starts inherit it, as
/// they would a unit's `LimitNOFILE`. Returns the limit it has; fails only
/// below `least`.
fn raise_open_files_to(needed: u64, least: u64) -> Result<u64> {
    let hard = connmirror_handoff::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    if hard >= needed {
        return Ok(hard);
    }
    let limit = libc::rlimit {
        rlim_cur: needed,
        rlim_max: needed,
    };
    // SAFETY: `limit` is a valid rlimit for the call to read.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        return Ok(needed);
    }
    let err = std::io::Error::last_os_error();
    ensure!(
        hard >= least,
        "the open-file hard limit is {hard}; the benchmark needs {least} (raising it to \
         {needed}: {err})"
    );
    println!("note: the open-file hard limit stays {hard} (raising it to {needed}: {err})");
    Ok(hard)
}

/// One run of the takeover part on a fresh topology.
fn takeover_run(mode: TakeoverMode, n: usize) -> Result<TakeoverSample> {
    live::wait_for_host(HOST_BUSY)?;
    match mode {
        TakeoverMode::Handoff => {
            let topo = Topology::new();
            let service = topo.service(Family::V4, FAILOVER_PORT);
            let (mut primary, standby, _app) = failover_setup(&topo, &[]);
            let primary = (&topo, &mut primary);
            measure_takeover(primary, standby, service, (mode, n), None)
        }
        TakeoverMode::Live => {
            let max = (n + 1000).to_string();
            let mut s =
                CacheSetup::redis_with(Family::V4, "bench-takeover", &["--maxclients", &max]);
            let command = s.standby_command(Resume::Live).without_dumps();
            let standby = Mirror::start(&s.topo.gateway, &command);
            let primary = (&s.topo, &mut s.primary);
            measure_takeover(primary, standby, s.service, (mode, n), Some(s.app.port()))
        }
    }
}

/// Opens `n` idle connections to `service` through `standby`, waits until
/// they are ready (`instance`: the live instance's port), kills the primary,
/// takes over by hand and checks every connection.
fn measure_takeover(
    (topo, primary): (&Topology, &mut Program),
    standby: Mirror,
    service: std::net::SocketAddr,
    (mode, n): (TakeoverMode, usize),
    instance: Option<u16>,
) -> Result<TakeoverSample> {
    let started = Instant::now();
    let conns = open_idle(&topo.client, service, n)?;
    let ready = wait_takeover_ready(&topo.gateway, n, instance);
    let ready = ready.map(|()| started.elapsed());
    let report = ready.as_ref().ok().map(|_| {
        kill_primary(topo, primary);
        takeover(&topo.gateway, &standby.control_socket(), &[])
    });
    let failed = report.as_ref().map(|_| check_probes(&conns, mode));
    drop(conns);
    let _ = standby.stop();
    let (ready, report) = (ready?, report.expect("taken over once ready"));
    takeover_sample(&report, (mode, n), ready, failed.unwrap_or_default())
}

/// `n` connections to `service` from `ns`, sending nothing.
fn open_idle(ns: &Netns, service: std::net::SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let conns = ns.run(|| {
        (0..n)
            .map(|_| TcpStream::connect_timeout(&service, Duration::from_secs(10)))
            .collect::<std::io::Result<Vec<_>>>()
    });
    conns.with_context(|| format!("opening {n} connections to {service}"))
}

/// Waits until the standby in `gateway` tracks `n` ready flows and, for live
/// replay (`instance` its port), has `n` connections protected with their
/// instance connections established (both ends of each on loopback).
fn wait_takeover_ready(gateway: &Netns, n: usize, instance: Option<u16>) -> Result<()> {
    let deadline = Instant::now() + TAKEOVER_READY_LIMIT;
    loop {
        let scrape = metrics::scrape(gateway, metrics::DEFAULT_ENDPOINT);
        let ready = scrape.sum_where("connmirror_flows", "readiness=\"ready\"");
        let (protected, established) = match instance {
            Some(port) => (
                scrape.sum_where("connmirror_live_connections", "state=\"protected\""),
                open_connections(gateway, port) / 2,
            ),
            None => (n as u64, n),
        };
        if (ready, protected, established) == (n as u64, n as u64, n) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {TAKEOVER_READY_LIMIT:?}: {ready} of {n} flows ready, {protected} \
                 protected, {established} instance connections; the standby's live metrics:\n{}",
                scrape.lines_of(&["connmirror_live_connections"]).join("\n")
            );
        }
        live::sleep(Duration::from_millis(200))?;
    }
}

/// Sends the mode's request on every connection, then reads each reply:
/// the connections that failed, with why.
fn check_probes(conns: &[TcpStream], mode: TakeoverMode) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let (request, reply) = mode.probe();
    let mut failed = Vec::new();
    let mut sent = vec![false; conns.len()];
    for (i, mut conn) in conns.iter().enumerate() {
        match conn.write_all(request) {
            Ok(()) => sent[i] = true,
            Err(err) => failed.push(format!("connection {i}: write: {err}")),
        }
    }
    let mut got = vec![0u8; reply.len()];
    for (i, mut conn) in conns.iter().enumerate().filter(|&(i, _)| sent[i]) {
        let read = (conn.set_read_timeout(Some(TAKEOVER_REPLY_LIMIT)))
            .and_then(|()| conn.read_exact(&mut got));
        match read {
            Ok(()) if got == reply => {}
            Ok(()) => failed.push(format!(
                "connection {i}: got {:?}, expected {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(reply)
            )),
            Err(err) => failed.push(format!("connection {i}: read: {err}")),
        }
    }
    failed
}

/// The run's times from the standby's takeover report, which must have
/// restored and resumed all `n` connections by `mode`, every one of them
/// answering its check afterwards.
fn takeover_sample(
    report: &connmirror::failover::takeover::TakeoverReport,
    (mode, n): (TakeoverMode, usize),
    ready: Duration,
    failed: Vec<String>,
) -> Result<TakeoverSample> {
    let resumed = match mode {
        TakeoverMode::Handoff => report.handed_off,
        TakeoverMode::Live => report.live,
    };
    let n64 = n as u64;
    ensure!(
        (report.restored, resumed, report.divergent) == (n64, n64, 0)
            && report.unrecoverable_total() == 0
            && report.errors.is_empty(),
        "expected {n} connections restored and resumed by {}: restored {}, resumed {resumed}, \
         divergent {}, unrecoverable {:?}, errors (first 5) {:?}",
        mode.name(),
        report.restored,
        report.divergent,
        report.unrecoverable,
        report.errors.iter().take(5).collect::<Vec<_>>()
    );
    ensure!(
        failed.is_empty(),
        "{} of {n} connections failed their check after the takeover; the first: {:?}",
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    let step = |names: &[&str]| {
        let micros = (report.steps.iter())
            .filter(|s| names.is_empty() || names.contains(&s.name.as_str()))
            .map(|s| s.micros)
            .sum();
        Duration::from_micros(micros)
    };
    Ok(TakeoverSample {
        whole: step(&[]),
        restore: step(&["restore", "leave-repair"]),
        resume: step(&["resume"]),
        ready,
    })
}

/// Offered rates of the tap benchmark, as fractions of the link's rate (1:
/// unlimited).
const TAP_FRACTIONS: [f64; 6] = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0];

/// Where the mirror box of a [`box_run`] sits.
#[derive(Clone, Copy, Debug)]
enum BoxPlacement {
    /// On the router between the clients and the LAN ([`Lan::behind_router`]).
    Router,
    /// On the tap's box of a mirroring switch ([`Lan::tapped`]).
    Tap,
}

/// `cargo xtask bench mirror`: a router's throughput with and without its
/// mirror, one stream and [`PARALLEL`] ([`REPEATS`] rounds, interleaved),
/// the tapped link's rate, then the
/// tap's mirror at each of [`TAP_FRACTIONS`] of that rate.
fn mirror_box(command: &str) -> Result<()> {
    ensure_iperf3()?;
    let info = RunInfo::collect(command, &workspace_root())?;
    let started = Instant::now();
    println!("mirror box benchmark: a router's mirror, then a tap's\n");
    // One stream, then PARALLEL: (without, with) the mirror.
    let mut router = [(vec![], vec![]), (vec![], vec![])];
    let mut tap_link = vec![];
    for round in 1..=REPEATS {
        for ((without, with), streams) in router.iter_mut().zip([1, PARALLEL]) {
            for mirrored in [false, true] {
                let what = if mirrored { "mirrored" } else { "no mirror" };
                bench::progress(&format!("router, round {round}, -P {streams}, {what} ... "));
                let sample = box_run(BoxPlacement::Router, mirrored, streams, None)?;
                println!("{:.2} Gbit/s", sample.gbps);
                match mirrored {
                    true => with.push(sample),
                    false => without.push(sample),
                }
            }
        }
        bench::progress(&format!("tapped link, round {round} ... "));
        let sample = box_run(BoxPlacement::Tap, false, 1, None)?;
        println!("{:.2} Gbit/s", sample.gbps);
        tap_link.push(sample);
    }
    let [
        (router_baseline, router_mirrored),
        (router_baseline_p8, router_mirrored_p8),
    ] = router;
    let link = median(&tap_link.iter().map(|s| s.gbps).collect::<Vec<_>>());
    let mut tap_steps = Vec::new();
    for fraction in TAP_FRACTIONS {
        let offered = (fraction < 1.0).then_some(fraction * link);
        bench::progress(&format!("tap's mirror at {:.0} % ... ", fraction * 100.0));
        let sample = box_run(BoxPlacement::Tap, true, 1, offered)?;
        let gapped = sample.mirror.as_ref().map_or(0, |m| m.gapped_flows);
        println!("{:.2} Gbit/s, {gapped} gapped flows", sample.gbps);
        tap_steps.push(TapStep {
            fraction,
            offered_gbps: offered.unwrap_or(0.0),
            sample,
        });
    }
    record(Results {
        mirror: Some(MirrorBoxResults {
            info: RunInfo {
                seconds: started.elapsed().as_secs_f64(),
                ..info
            },
            seconds: IPERF_SECONDS,
            router_baseline,
            router_mirrored,
            router_baseline_p8,
            router_mirrored_p8,
            tap_link,
            tap_steps,
        }),
        ..Results::default()
    })
}

/// One iperf3 run of `streams` streams, client → primary, on a fresh LAN
/// for `placement`, with the box's mirror (and a standby it replicates to)
/// when `mirrored`, offering at most `gbps` when given.
fn box_run(
    placement: BoxPlacement,
    mirrored: bool,
    streams: u32,
    gbps: Option<f64>,
) -> Result<Sample> {
    live::wait_for_host(HOST_BUSY)?;
    let lan = match placement {
        BoxPlacement::Router => Lan::behind_router(1),
        BoxPlacement::Tap => Lan::tapped(1),
    };
    let service = Lan::service_in(Family::V4, IPERF_PORT);
    let dir = connmirror_tests::workdir::WorkDir::new("bench-mirror");
    let key = key_file(&dir);
    let running = match mirrored {
        true => Some(start_box_mirror(&lan, placement, service, &key)?),
        false => None,
    };
    live::interrupt_point()?;
    let server = iperf3_server_in(&lan.primary, service)?;
    let run = IperfRun {
        client: &lan.client,
        server: (server, &lan.primary),
        service,
        streams,
        gbps,
    };
    let ((gbps, retransmits, cpu_percent, host_busy), _) = run.measure(|| match &running {
        Some((_, _, pid)) => live::process_cpu_seconds(*pid),
        None => Ok(0.0),
    })?;
    Ok(Sample {
        gbps,
        retransmits,
        host_busy,
        mirror: running.map(|(mirror, _standby, _)| mirror_sample(mirror, cpu_percent)),
        ..Sample::default()
    })
}

/// The standby (capturing nothing, receiving the box's stream) and the
/// box's mirror replicating to it, connected; with the mirror's pid.
fn start_box_mirror(
    lan: &Lan,
    placement: BoxPlacement,
    service: std::net::SocketAddr,
    key: &Path,
) -> Result<(Mirror, Mirror, i32)> {
    let standby_ip = Lan::standby_addr(Family::V4, 0);
    let heartbeats = std::net::SocketAddr::new(standby_ip, 7400).to_string();
    let replication = std::net::SocketAddr::new(standby_ip, 7402).to_string();
    let listen = [heartbeats, replication.clone()];
    let standby = Mirror::start(
        &lan.standbys[0],
        &standby_listening(LAN_IF, &service.to_string(), key, listen),
    );
    let key = key.display().to_string();
    let (host, command) = match placement {
        BoxPlacement::Router => (
            &lan.router,
            MirrorCommand::new().ifaces([ROUTER_CLIENT_IF, LAN_IF]),
        ),
        BoxPlacement::Tap => (
            &lan.tap,
            MirrorCommand::new().ifaces([TAP_IF]).on_ring_full("pass"),
        ),
    };
    let host = host.as_ref().expect("the LAN has the mirror's box");
    let mirror = Mirror::start(
        host,
        &command
            .service(service)
            .without_dumps()
            .arg("--replicate-to")
            .arg(&replication)
            .arg("--key")
            .arg(&key),
    );
    let text = "replication channel established";
    connmirror_tests::process::wait_for_text(|| standby.stderr(), text, Duration::from_secs(20))
        .map_err(|stderr| anyhow::anyhow!("the standby never logged {text:?}:\n{stderr}"))?;
    let pid = mirror_pid(host)?;
    Ok((mirror, standby, pid))
}

/// How `soak` is meant to be run.
const SOAK_VIA: &str = "cargo xtask soak";
/// Usage of the `soak` mode, for its errors.
const SOAK_USAGE: &str = "usage: connmirror-bench soak --minutes N";

/// `connmirror-bench soak --minutes N`: the chaos soak
/// ([`connmirror_tests::soak`]) for N minutes; records its summary, then
/// fails if it broke a promise.
fn soak(args: &[String]) -> Result<()> {
    let minutes: u64 = match args {
        [flag, n] if flag == "--minutes" => (n.parse().ok())
            .filter(|&n| n > 0)
            .with_context(|| format!("--minutes {n:?}: not a positive integer; {SOAK_USAGE}"))?,
        _ => bail!("{SOAK_USAGE}; got {args:?}"),
    };
    let command = format!("`{SOAK_VIA} --minutes {minutes}`");
    let mut info = RunInfo::collect(&command, &workspace_root())?;
    bench::progress(&format!("soaking for {minutes} minutes ...\n"));
    let summary = connmirror_tests::soak::run(connmirror_tests::soak::SoakOptions {
        cycles: u32::MAX,
        duration: Duration::from_secs(minutes * 60),
    });
    info.seconds = summary.seconds;
    record(Results {
        soak: Some(SoakResults {
            info,
            minutes,
            summary: summary.clone(),
        }),
        ..Results::default()
    })?;
    summary.assert_held();
    Ok(())
}

/// Usage of the `fuzz` mode, for its errors.
const FUZZ_USAGE: &str = "usage: connmirror-bench fuzz [TARGET] [--time SECONDS] [--runs N]";

/// `connmirror-bench fuzz`: see the module docs. Fails when a target
/// stopped on a crash, a hang or out-of-memory (after recording it).
fn fuzz(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let all = connmirror_tests::fuzzing::targets(&root)?;
    let (target, limits) = fuzz_args(args)?;
    let names = match target {
        Some(name) if all.contains(&name) => vec![name],
        Some(name) => bail!("no fuzz target {name:?}; the targets: {}", all.join(", ")),
        None => all,
    };
    let typed: Vec<&str> = std::iter::once("cargo xtask fuzz")
        .chain(args.iter().map(String::as_str))
        .collect();
    let command = format!("`{}`", typed.join(" "));
    let info = RunInfo::collect(&command, &root)?;
    let commit = match info.dirty {
        true => format!("{}+dirty", info.commit),
        false => info.commit.clone(),
    };
    bench::progress("building the fuzz targets (cargo fuzz build) ...\n");
    connmirror_tests::fuzzing::build(&root)?;
    let mut runs = Vec::new();
    for name in &names {
        bench::progress(&format!(
            "fuzzing {name} ({} s or {} runs) ... ",
            limits.seconds, limits.runs
        ));
        let out = connmirror_tests::fuzzing::run(&root, name, limits)?;
        println!(
            "{} runs in {} s: {}",
            out.executions, out.seconds, out.outcome
        );
        let corpus = root.join("fuzz/corpus").join(name);
        runs.push(FuzzRun {
            name: name.clone(),
            command: command.clone(),
            date: info.date.clone(),
            commit: commit.clone(),
            executions: out.executions,
            seconds: out.seconds,
            outcome: out.outcome,
            artifact: out.artifact,
            corpus_files: std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
        });
    }
    let failed: Vec<String> = (runs.iter())
        .filter(|run| run.outcome != "clean")
        .map(|run| {
            format!(
                "{}: {} ({})",
                run.name,
                run.outcome,
                root.join("target/fuzz-logs")
                    .join(format!("{}.log", run.name))
                    .display()
            )
        })
        .collect();
    let mut fuzz = Results::load(&data_dir())?.fuzz.unwrap_or_default();
    fuzz.update(FuzzResults { targets: runs });
    record(Results {
        fuzz: Some(fuzz),
        ..Results::default()
    })?;
    ensure!(failed.is_empty(), "fuzzing stopped: {}", failed.join("; "));
    Ok(())
}

/// `[TARGET] [--time S] [--runs N]`.
fn fuzz_args(args: &[String]) -> Result<(Option<String>, connmirror_tests::fuzzing::Limits)> {
    let mut limits = connmirror_tests::fuzzing::Limits {
        seconds: 600,
        runs: 10_000_000,
    };
    let mut target = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| -> Result<u64> {
            let text = args
                .next()
                .with_context(|| format!("{flag} needs a value; {FUZZ_USAGE}"))?;
            text.parse()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("{flag} {text:?}: not a positive integer; {FUZZ_USAGE}"))
        };
        match arg.as_str() {
            "--time" => limits.seconds = value("--time")?,
            "--runs" => limits.runs = value("--runs")?,
            flag if flag.starts_with('-') => bail!("unknown flag {flag:?}; {FUZZ_USAGE}"),
            name if target.is_none() => target = Some(name.to_owned()),
            extra => bail!("one target at most, got {extra:?} too; {FUZZ_USAGE}"),
        }
    }
    Ok((target, limits))
}
