//! `cargo xtask bench [AREA]`: benchmarks over network namespaces.
//!
//! Usage: `connmirror-bench [AREA]`, AREA one of [`AREAS`] (no argument: `all`).
//!
//! # capture
//! One iperf3 stream (client → server) through the gateway of a
//! [`Topology`], for [`IPERF_SECONDS`] s, measured without a mirror (the baseline)
//! and with `connmirror mirror` on both gateway links in each attach configuration
//! DESIGN.md asks to report ("Attach point matters more than the copy"): native XDP,
//! generic XDP and TC on ingress alone, and the default (XDP ingress + TC egress,
//! which on a gateway captures each forwarded segment twice: once as it enters,
//! once as it leaves). Every run gets a fresh topology, so no run inherits another's
//! interface state (a native XDP program on a veth changes its peer's offloads).
//! Baseline and configurations are interleaved, [`REPEATS`] rounds when time
//! allows, and the medians are reported.
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
//!
//! # failover
//! Restore time for 1, 100, 1,000 and 10,000 idle connections (the takeover
//! report's `restore` step, and the whole takeover), and the time from
//! spawning `connmirror takeover` to the first echoed byte a streaming client
//! verifies again, [`FIRST_BYTE_RUNS`] runs for each send-queue refill mode
//! (DESIGN.md asks to measure both), as p50, p99 and max.
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
//! throughputs as ratios to no mirror measured in the same run
//! (`connmirror-bench onhost` runs this part alone).
//!
//! Each area prints its table and adds a section to `bench/RESULTS.md` (newest
//! first, below its header).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use connmirror_common::Counter;
use connmirror_tests::echo::{EchoClients, EchoOptions};
use connmirror_tests::failover::{
    Program, configure_primary, detecting_standby, echo_primary, handoff_app, key_file,
    kill_primary, standby_command, start_agent, takeover,
};
use connmirror_tests::live;
use connmirror_tests::mirror::FlowStatus;
use connmirror_tests::onhost::{onhost_standby, start_onhost_agent};
use connmirror_tests::{Family, Mirror, MirrorCommand, Netns, Topology, bench};

/// How to run this program, for messages.
const VIA: &str = "cargo xtask bench";
/// The areas this program knows, in the order `all` runs them.
const AREAS: &[&str] = &["capture", "journal", "failover", "ownership"];
/// Length of each iperf3 run.
const IPERF_SECONDS: u64 = 10;
/// The iperf3 server's port, the tracked service.
const IPERF_PORT: u16 = 5201;
/// Rounds of (baseline, every configuration).
const REPEATS: usize = 2;
/// A further round starts only if the whole benchmark is expected to stay within this.
const TIME_BUDGET: Duration = Duration::from_secs(180);
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
    let areas: Vec<&str> = match args.as_slice() {
        [] => AREAS.to_vec(),
        [a] if a == "all" => AREAS.to_vec(),
        [a] if AREAS.contains(&a.as_str()) => vec![a.as_str()],
        // The on-host part of `ownership` alone.
        [a] if a == "onhost" => vec!["onhost"],
        [a] => bail!(
            "unknown benchmark area {a:?}; valid areas: all, {}",
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
            other => unreachable!("area {other} is listed but not implemented"),
        }
    }
    Ok(())
}

/// An attach configuration of the capture benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Config {
    /// Name in the table.
    name: &'static str,
    /// `--ingress` and `--egress`, or `None` for no mirror.
    hooks: Option<(&'static str, &'static str)>,
    note: &'static str,
    /// Run the mirror with `--journal` (fresh directory) and `--retention full`.
    journal: bool,
}

const CONFIGS: [Config; 5] = [
    Config {
        name: "baseline (no mirror)",
        hooks: None,
        note: "",
        journal: false,
    },
    Config {
        name: "xdp-native in",
        hooks: Some(("xdp-native", "none")),
        note: "native XDP on a veth turns TSO off on its peer",
        journal: false,
    },
    Config {
        name: "xdp-generic in",
        hooks: Some(("xdp-generic", "none")),
        note: "",
        journal: false,
    },
    Config {
        name: "tc in",
        hooks: Some(("tc", "none")),
        note: "",
        journal: false,
    },
    Config {
        name: "default: xdp in + tc out",
        hooks: Some(("xdp", "tc")),
        note: "each forwarded segment captured twice (in on one link, out on the other)",
        journal: false,
    },
];

/// One iperf3 run.
#[derive(Clone, Debug, Default)]
struct Sample {
    gbps: f64,
    retransmits: u64,
    /// Share of all CPUs' time not idle during the run, in %.
    host_busy: f64,
    /// Only for mirrored runs.
    mirror: Option<MirrorSample>,
}

#[derive(Clone, Debug, Default)]
struct MirrorSample {
    ring_full: u64,
    drops: u64,
    gapped_flows: usize,
    /// Of those, the ones that ended with a RST.
    gapped_reset: usize,
    flows: usize,
    cpu_percent: f64,
    /// Journal bytes written, with `--journal`.
    journal_bytes: u64,
    /// One line per gapped flow, for the log.
    gapped: Vec<String>,
    /// `ingress=` values the mirror logged when it attached (native or generic).
    attach: String,
}

fn capture(command: &str) -> Result<()> {
    ensure_iperf3()?;
    let started = Instant::now();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); CONFIGS.len()];
    println!(
        "capture benchmark: one iperf3 stream (client -> server through the gateway) for {IPERF_SECONDS} s, \
         without a mirror and with each attach configuration, up to {REPEATS} interleaved rounds \
         (about {} s per round).\n",
        CONFIGS.len() as u64 * (IPERF_SECONDS + 4)
    );
    let mut round_time = Duration::ZERO;
    let mut rounds = 0;
    for round in 1..=REPEATS {
        if round > 1 && started.elapsed() + round_time > TIME_BUDGET {
            println!(
                "skipping round {round}: another {:.0} s would exceed the {} s budget",
                round_time.as_secs_f64(),
                TIME_BUDGET.as_secs()
            );
            break;
        }
        let round_start = Instant::now();
        for (i, config) in CONFIGS.iter().enumerate() {
            live::interrupt_point()?;
            print!("[round {round}/{REPEATS}] {:<26} ", config.name);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let sample = capture_run(config)?;
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
            println!();
            for line in sample.mirror.iter().flat_map(|m| &m.gapped) {
                println!("    {line}");
            }
            samples[i].push(sample);
        }
        round_time = round_start.elapsed();
        rounds = round;
    }

    let table = capture_table(&samples);
    println!("\n{table}");
    let section = capture_section(command, rounds, &table)?;
    let results = results_path();
    insert_section(&results, &section)?;
    println!(
        "recorded in {} ({:.0} s in all)",
        results.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One run of one configuration on a fresh topology.
fn capture_run(config: &Config) -> Result<Sample> {
    live::wait_for_host(
        "(waiting for another connmirror test or benchmark to release the host...)",
    )?;
    let topo = Topology::new();
    let service = topo.service(Family::V4, IPERF_PORT);
    let mirror = match config.hooks {
        None => None,
        Some((ingress, egress)) => {
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
            Some((mirror, pid))
        }
    };
    live::interrupt_point()?;

    let mut server = topo
        .server
        .command("iperf3")
        .args(["-s", "-1", "-B"])
        .arg(service.ip().to_string())
        .args(["-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn iperf3 server")?;
    let result = (|| {
        wait_listening(&topo.server, IPERF_PORT)?;
        let cpu_before = match &mirror {
            Some((_, pid)) => live::process_cpu_seconds(*pid)?,
            None => 0.0,
        };
        let host_before = host_cpu()?;
        let t0 = Instant::now();
        let json = iperf3_client(&topo.client, service.ip().to_string())?;
        let wall = t0.elapsed().as_secs_f64();
        let host_busy = host_before.busy_percent(&host_cpu()?);
        let cpu_after = match &mirror {
            Some((_, pid)) => live::process_cpu_seconds(*pid)?,
            None => 0.0,
        };
        let (gbps, retransmits) = parse_iperf3(&json)?;
        let cpu_percent = (cpu_after - cpu_before) / wall * 100.0;
        Ok::<_, anyhow::Error>((gbps, retransmits, cpu_percent, host_busy))
    })();
    // Let the server end on its own (`-1`) and both ends of both connections close,
    // so the mirror sees every segment up to the last FIN or RST: the client's kernel
    // still sends and retransmits after iperf3 exits, and a segment dropped for
    // backpressure but not yet retransmitted would look like a hole.
    let quiet = result.is_ok()
        && wait_child(&mut server, Duration::from_secs(5), "iperf3 server").is_ok()
        && wait_closed(
            &[&topo.client, &topo.server],
            IPERF_PORT,
            Duration::from_secs(10),
        )?;
    let _ = server.kill();
    let _ = server.wait();
    let (gbps, retransmits, cpu_percent, host_busy) = result?;
    if !quiet {
        eprintln!("\n  note: the iperf3 connections did not close within 10 s of the test's end");
    }

    let mirror = match mirror {
        None => None,
        Some((mirror, _)) => {
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
            Some(MirrorSample {
                ring_full: report.counter(Counter::RingFull),
                drops: report.counter(Counter::BackpressureDrops),
                gapped_flows: report
                    .flows
                    .iter()
                    .filter(|f| f.status == FlowStatus::Gapped)
                    .count(),
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
            })
        }
    };
    Ok(Sample {
        gbps,
        retransmits,
        host_busy,
        mirror,
    })
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

/// The `ingress=` values from the mirror's "attached" log lines, e.g. `xdp-native`.
fn attach_modes(stderr: &str) -> String {
    let mut modes: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("attached"))
        .filter_map(|l| {
            let at = l.find("ingress=")?;
            let value = l[at + "ingress=".len()..].split_whitespace().next()?;
            Some(value.trim_matches('"').to_owned())
        })
        .collect();
    modes.dedup();
    modes.join(",")
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

/// Runs the iperf3 client in `ns` and returns its JSON output.
fn iperf3_client(ns: &Netns, server: String) -> Result<String> {
    let mut child = ns
        .command("iperf3")
        .args(["-c", &server, "-p", &IPERF_PORT.to_string()])
        .args([
            "-t",
            &IPERF_SECONDS.to_string(),
            "-J",
            "--connect-timeout",
            "5000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn iperf3 client")?;
    let stdout = read_in_background(child.stdout.take().expect("piped"));
    let stderr = read_in_background(child.stderr.take().expect("piped"));
    let limit = Duration::from_secs(IPERF_SECONDS) + IPERF_GRACE;
    let status = wait_child(&mut child, limit, "iperf3 client")?;
    let stdout = stdout.join().expect("reader thread");
    let stderr = stderr.join().expect("reader thread");
    if !status.success() {
        bail!(
            "iperf3 client exited with {status}: {}{}",
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_u64(values: impl Iterator<Item = u64>) -> f64 {
    let mut v: Vec<f64> = values.map(|x| x as f64).collect();
    median(&mut v)
}

/// The Markdown table: one row per configuration, medians over the rounds.
fn capture_table(samples: &[Vec<Sample>]) -> String {
    let mut baseline: Vec<f64> = samples[0].iter().map(|s| s.gbps).collect();
    let baseline = median(&mut baseline);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| config | Gbit/s | ratio | ring_full | drops | gapped flows | mirror CPU % | notes |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (config, runs) in CONFIGS.iter().zip(samples) {
        let mut gbps: Vec<f64> = runs.iter().map(|s| s.gbps).collect();
        let per_run = gbps
            .iter()
            .map(|g| format!("{g:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let gbps = median(&mut gbps);
        let retrans = median_u64(runs.iter().map(|s| s.retransmits));
        let mut busy: Vec<f64> = runs.iter().map(|s| s.host_busy).collect();
        let busy = median(&mut busy);
        let mirrored: Vec<&MirrorSample> = runs.iter().filter_map(|s| s.mirror.as_ref()).collect();
        let mut notes = vec![
            format!("runs: {per_run} Gbit/s"),
            format!("retransmits {retrans:.0}"),
            format!("host CPU busy {busy:.0} %"),
        ];
        if mirrored.is_empty() {
            let _ = writeln!(
                t,
                "| {} | {gbps:.2} | 1.00 | – | – | – | – | {} |",
                config.name,
                notes.join("; ")
            );
            continue;
        }
        let ring_full = median_u64(mirrored.iter().map(|m| m.ring_full));
        let drops = median_u64(mirrored.iter().map(|m| m.drops));
        let gapped: usize = mirrored.iter().map(|m| m.gapped_flows).sum();
        let gapped_reset: usize = mirrored.iter().map(|m| m.gapped_reset).sum();
        let flows: usize = mirrored.iter().map(|m| m.flows).sum();
        let mut cpu: Vec<f64> = mirrored.iter().map(|m| m.cpu_percent).collect();
        let cpu = median(&mut cpu);
        let attach = &mirrored[0].attach;
        if !attach.is_empty() {
            notes.push(format!("attached as {attach}"));
        }
        if gapped > 0 {
            notes.push(format!(
                "{gapped_reset} of the {gapped} gapped flows ended with a RST \
                 (iperf3's server resets its data connection)"
            ));
        }
        if !config.note.is_empty() {
            notes.push(config.note.to_owned());
        }
        let _ = writeln!(
            t,
            "| {} | {gbps:.2} | {:.2} | {ring_full:.0} | {drops:.0} | {gapped} of {flows} | {cpu:.0} | {} |",
            config.name,
            gbps / baseline,
            notes.join("; ")
        );
    }
    t
}

/// The RESULTS.md section: heading, how it was run, on what, the table.
fn capture_section(command: &str, rounds: usize, table: &str) -> Result<String> {
    let iperf = output("iperf3", &["--version"])?;
    let iperf = iperf.lines().next().unwrap_or("").to_owned();
    let mut s = section_header(command, "capture")?;
    let _ = writeln!(
        s,
        "- method: one {iperf} stream (`-t {IPERF_SECONDS}`, client -> server through the gateway, \
         receiver's rate), each run on a fresh client/gateway/server topology; \
         baseline and configurations interleaved, {rounds} round(s); Gbit/s, ring_full, drops and \
         CPU are medians over the rounds, gapped flows are summed over them, ratio = median / \
         baseline median. Mirror defaults otherwise (16 MiB ring, `--on-ring-full drop`). \
         Mirror CPU = utime+stime of the connmirror process over the iperf3 run / wall time \
         (100 % = one core); it excludes the eBPF programs, which run in the forwarding softirq. \
         Host CPU busy = share of all cores' time not idle during the iperf3 run (/proc/stat)."
    );
    let _ = writeln!(s);
    s.push_str(table);
    Ok(s)
}

/// The start of a results section for `area`: title, command, commit,
/// machine and kernel.
fn section_header(command: &str, area: &str) -> Result<String> {
    let date = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?;
    let kernel = output("uname", &["-r"])?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("read /proc/cpuinfo")?;
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let root = workspace_root();
    let commit = output(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    )
    .unwrap_or_else(|_| "unknown".to_owned());
    let dirty = output(
        "git",
        &["-C", &root.display().to_string(), "status", "--porcelain"],
    )
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false);
    let mut s = String::new();
    let _ = writeln!(s, "## {date}: {area}");
    let _ = writeln!(s);
    let _ = writeln!(s, "- command: {command}");
    let _ = writeln!(
        s,
        "- commit: {commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- machine: {cpu}, {cores} cores; links: veth pairs between network namespaces"
    );
    let _ = writeln!(s, "- kernel: {kernel}");
    Ok(s)
}

/// The workspace root (this crate is `tests/` in it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn results_path() -> PathBuf {
    workspace_root().join("bench").join("RESULTS.md")
}

/// Inserts `section` into the results file below its header (before the first
/// `## ` entry: the file lists the newest first), creating the file if needed.
fn insert_section(path: &Path, section: &str) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmark results\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let at = text
        .match_indices("\n## ")
        .next()
        .map_or(text.len(), |(i, _)| i + 1);
    let (head, tail) = text.split_at(at);
    let mut out = head.trim_end().to_owned();
    out.push_str("\n\n");
    out.push_str(section.trim_end());
    out.push('\n');
    if !tail.is_empty() {
        out.push('\n');
        out.push_str(tail);
    }
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, &out).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// The trimmed stdout of a short command; fails unless it exits 0.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Where the journal benchmark writes: on the workspace's disk, not tmpfs.
fn journal_dir() -> PathBuf {
    workspace_root().join("target").join("bench-journal")
}

/// Bytes the journal append and recovery measurements write.
const JOURNAL_BYTES: u64 = 1 << 30;

/// The mirrored configurations of the journal benchmark (the baseline first).
const JOURNAL_CONFIGS: [Config; 2] = [
    Config {
        name: "baseline (no mirror)",
        hooks: None,
        note: "",
        journal: false,
    },
    Config {
        name: "tc in, journal, full retention",
        hooks: Some(("tc", "none")),
        note: "",
        journal: true,
    },
];

/// `cargo xtask bench journal`: disk and journal rates, recovery time, idle-flow
/// memory, and mirrored throughput with every byte journaled.
fn journal(command: &str) -> Result<()> {
    ensure_iperf3()?;
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
    let idle = bench::idle_flow_bytes(100_000)?;
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
    let table = journal_table(disk, append, recovery, replayed, idle, &samples);
    println!("\n{table}");
    let section = capture_section(command, REPEATS, &table)?.replacen(": capture", ": journal", 1);
    insert_section(&results_path(), &section)?;
    println!("recorded in {}", results_path().display());
    Ok(())
}

fn journal_table(
    disk: f64,
    append: f64,
    recovery: Duration,
    replayed: u64,
    idle: f64,
    samples: &[Vec<Sample>],
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| measurement | value | ratio / notes |");
    let _ = writeln!(t, "| --- | ---: | --- |");
    let _ = writeln!(
        t,
        "| disk: `dd bs=1M conv=fdatasync`, 1 GiB | {:.0} MB/s | baseline |",
        disk / 1e6
    );
    let _ = writeln!(
        t,
        "| journal append, 1 GiB of 64 KiB records, `--fsync interval` | {:.0} MB/s | {:.2} of dd (target ≥ 0.90) |",
        append / 1e6,
        append / disk
    );
    let _ = writeln!(
        t,
        "| recovery of that journal (read + replay) | {:.2} s | {:.0} MB/s over {:.2} GB |",
        recovery.as_secs_f64(),
        replayed as f64 / 1e6 / recovery.as_secs_f64(),
        replayed as f64 / 1e9
    );
    let _ = writeln!(
        t,
        "| memory per idle tracked flow (100,000 flows, RSS growth) | {idle:.0} bytes | target < 1024 |"
    );
    let mut base: Vec<f64> = samples[0].iter().map(|s| s.gbps).collect();
    let base = median(&mut base);
    let _ = writeln!(
        t,
        "| iperf3, no mirror | {base:.2} Gbit/s | runs: {:?} |",
        gbps_list(&samples[0])
    );
    let mut mirrored: Vec<f64> = samples[1].iter().map(|s| s.gbps).collect();
    let mirrored = median(&mut mirrored);
    let journal_rate = samples[1]
        .iter()
        .filter_map(|s| s.mirror.as_ref())
        .map(|m| m.journal_bytes as f64 / IPERF_SECONDS as f64)
        .fold(0.0, f64::max);
    let gapped: usize = samples[1]
        .iter()
        .filter_map(|s| s.mirror.as_ref())
        .map(|m| m.gapped_flows)
        .sum();
    let ring_full: u64 = samples[1]
        .iter()
        .filter_map(|s| s.mirror.as_ref())
        .map(|m| m.ring_full)
        .sum();
    let _ = writeln!(
        t,
        "| iperf3 mirrored (tc ingress), every byte journaled, full retention | {mirrored:.2} Gbit/s | {:.2} of no mirror; journal ~{:.0} MB/s = {:.2} of the disk's rate; gapped flows {gapped}; ring_full {ring_full} (backpressure); runs: {:?} |",
        mirrored / base,
        journal_rate / 1e6,
        journal_rate / disk,
        gbps_list(&samples[1])
    );
    t
}

fn gbps_list(samples: &[Sample]) -> Vec<String> {
    samples.iter().map(|s| format!("{:.2}", s.gbps)).collect()
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
    let limit = connmirror::restore::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    // This process holds the client ends; every other process its own share.
    let needed = RESTORE_COUNTS[3] as u64 + 1024;
    ensure!(
        limit >= needed,
        "the open-file hard limit is {limit}; the benchmark needs {needed}"
    );
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
        restores.push((n, sample));
    }
    let mut first_bytes = Vec::new();
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
        first_bytes.push((mode, times));
    }
    let table = failover_table(&restores, &first_bytes);
    println!("\n{table}");
    let method = "- method: IPv4, a fresh client/standby/primary topology per run; the primary \
                  runs the echo example, the standby `connmirror standby` (TC ingress on both \
                  links) with the echo example registered for handoff. The primary dies (link \
                  down, then SIGKILL) and `connmirror takeover` is run 300 ms later. Restore = \
                  the takeover report's `restore` step (plan, build every socket in repair mode \
                  on all cores, leave repair); takeover = all steps, handoff included. First \
                  byte = from spawning `connmirror takeover` to the first echoed byte the \
                  streaming client (1 MiB/s each way) verifies, polled every 0.2 ms.";
    let section = section_header(command, "failover")? + method + "\n\n" + &table;
    insert_section(&results_path(), &section)?;
    println!("recorded in {}", results_path().display());
    Ok(())
}

/// One restore-time run.
struct RestoreSample {
    restore_ms: f64,
    takeover_ms: f64,
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
        restore_ms: step("restore"),
        takeover_ms: step(""),
    })
}

/// Milliseconds from spawning `connmirror takeover` to the first new byte
/// the client verifies.
fn first_byte_run(mode: &str) -> Result<f64> {
    let topo = Topology::new();
    let service = topo.service(Family::V4, FAILOVER_PORT);
    let (mut primary, standby, _app) = failover_setup(&topo, &["--send-queue", mode]);
    let options = EchoOptions {
        rate: 1 << 20,
        ..EchoOptions::default()
    };
    let clients = EchoClients::start(&topo.client, service, 1, options);
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
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

/// The value at quantile `q` (nearest rank) of `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn failover_table(restores: &[(usize, RestoreSample)], first_bytes: &[(&str, Vec<f64>)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| connections | restore step (ms) | whole takeover (ms) |"
    );
    let _ = writeln!(s, "| ---: | ---: | ---: |");
    for (n, sample) in restores {
        let _ = writeln!(
            s,
            "| {n} | {:.1} | {:.1} |",
            sample.restore_ms, sample.takeover_ms
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| send-queue refill | runs | trigger → first byte p50 (ms) | p99 (ms) | max (ms) |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for (mode, times) in first_bytes {
        let _ = writeln!(
            s,
            "| `--send-queue {mode}` | {} | {:.1} | {:.1} | {:.1} |",
            times.len(),
            quantile(times, 0.5),
            quantile(times, 0.99),
            quantile(times, 1.0)
        );
    }
    s
}

/// Runs of the automatic-failover benchmark.
const OWNERSHIP_RUNS: usize = 50;

/// `cargo xtask bench ownership`: from the primary's death to the first byte
/// the client receives from the standby, with automatic failure detection
/// (50 ms heartbeats, 3 missed), over [`OWNERSHIP_RUNS`] runs.
fn ownership(command: &str) -> Result<()> {
    println!("ownership benchmark: primary death to resumed stream, automatic failover\n");
    let mut times = Vec::new();
    for run in 1..=OWNERSHIP_RUNS {
        live::interrupt_point()?;
        bench::progress(&format!(
            "[{run:>2}/{OWNERSHIP_RUNS}] death to first resumed byte ... "
        ));
        let ms = ownership_run()?;
        println!("{ms:8.1} ms");
        times.push(ms);
    }
    let mut table = String::new();
    let _ = writeln!(table, "| runs | p50 (ms) | p99 (ms) | max (ms) | target |");
    let _ = writeln!(table, "| ---: | ---: | ---: | ---: | --- |");
    let _ = writeln!(
        table,
        "| {} | {:.1} | {:.1} | {:.1} | p50 < 150, p99 < 250 |",
        times.len(),
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        quantile(&times, 1.0)
    );
    println!("\n{table}");
    let method = "- method: IPv4, a fresh client/standby/primary topology per run: the primary \
                  runs the echo example and `connmirror agent` (heartbeats every 50 ms), the \
                  standby `connmirror standby --heartbeat-listen` (3 missed heartbeats, \
                  `--failover auto`) with the echo example registered for handoff. One client \
                  streams 1 MiB/s each way and verifies every byte. The primary dies (link \
                  down, server and agent SIGKILLed); the time is the longest stretch after \
                  that with no new verified byte at the client over the 3 s after the death \
                  (polled every 0.2 ms), i.e. from the last byte the primary delivered to \
                  the first the standby did.";
    let section = section_header(command, "ownership")? + method + "\n\n" + &table;
    insert_section(&results_path(), &section)?;
    println!("recorded in {}", results_path().display());
    Ok(())
}

fn ownership_run() -> Result<f64> {
    let topo = Topology::new();
    let family = Family::V4;
    let service = topo.service(family, FAILOVER_PORT);
    let dir = connmirror_tests::workdir::WorkDir::new("bench-ownership");
    let key = key_file(&dir);
    configure_primary(&topo, family, service);
    let mut primary = echo_primary(&topo, service);
    let standby = detecting_standby(&topo, family, service, &key);
    let _app = handoff_app(&topo, &standby, service);
    let mut agent = start_agent(&topo, family, service, &key);
    let options = EchoOptions {
        rate: 1 << 20,
        ..EchoOptions::default()
    };
    let clients = EchoClients::start(&topo.client, service, 1, options);
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    let outage = clients.outage_after(
        || {
            kill_primary(&topo, &mut primary);
            agent.kill();
        },
        Duration::from_secs(3),
    );
    let results = clients.finish(Duration::from_secs(30));
    let _ = standby.stop();
    let outage = outage.map_err(anyhow::Error::msg)?;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
    ensure!(failed.is_empty(), "the stream broke: {failed:?}");
    Ok(outage.as_secs_f64() * 1e3)
}

/// One configuration of the on-host measurement.
struct OnHostMode {
    name: &'static str,
    /// The agent's extra flags, or `None` for no mirror at all (the baseline).
    flags: Option<&'static [&'static str]>,
    /// `net.ipv4.tcp_rto_min_us` on the primary and the client: a segment
    /// `--sync` holds goes again only when a retransmission timer fires, and
    /// with one segment in flight those wait at least this long.
    rto_min: Option<&'static str>,
}

/// The on-host measurement's configurations, the baseline first.
const ONHOST_MODES: [OnHostMode; 4] = [
    OnHostMode {
        name: "no mirror",
        flags: None,
        rto_min: None,
    },
    OnHostMode {
        name: "on-host, async replication",
        flags: Some(&[]),
        rto_min: None,
    },
    OnHostMode {
        name: "on-host, `--sync`",
        flags: Some(&["--sync"]),
        rto_min: None,
    },
    OnHostMode {
        name: "on-host, `--sync`, `tcp_rto_min_us` 5000 on primary and client",
        flags: Some(&["--sync"]),
        rto_min: Some("5000"),
    },
];
/// Rounds of (every on-host configuration).
const ONHOST_ROUNDS: usize = 2;
/// Request/response round trips timed per run.
const PING_PONGS: usize = 100;

/// One on-host run: iperf3 throughput, request/response round trips, and
/// the segments `--sync` held.
struct OnHostSample {
    gbps: f64,
    rtts_ms: Vec<f64>,
    held: u64,
}

/// Part of `cargo xtask bench ownership`: throughput (client → primary, one
/// iperf3 stream) and request/response latency with the primary protected in
/// on-host mode, async and `--sync`, as ratios to no mirror in the same run.
fn onhost(command: &str) -> Result<()> {
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
    let table = onhost_table(&samples);
    println!("\n{table}");
    let method = format!(
        "- method: IPv4, a fresh client/gateway/primary topology per run, {ONHOST_ROUNDS} \
         rounds of the {} configurations interleaved, medians reported. On-host: the \
         primary runs `connmirror agent --iface eth0:xdp-generic --replicate-to \
         GATEWAY:7402` (generic XDP ingress, TC egress, `unacked` retention) and the gateway \
         `connmirror standby --replication-listen` with no capture of its own. Throughput: \
         one iperf3 stream client → primary for {IPERF_SECONDS} s. Latency: {PING_PONGS} \
         sequential 64-byte request/echo round trips to the echo example on the primary, \
         timed at the client. `held`: `ebpf_sync_held` on the primary after both (segments \
         the TC egress program dropped until the standby acknowledged the journal up to \
         them; TCP resent each). The last configuration lowers the minimum retransmission \
         timeout in the primary's and the client's namespaces (`sysctl \
         net.ipv4.tcp_rto_min_us=5000`, default 200000): a held segment goes again only \
         when a retransmission timer fires. Lowering it on the primary alone changed \
         nothing measurable (204 ms round trips): the exchange waited for the client's \
         timer.",
        ONHOST_MODES.len()
    );
    let section = section_header(command, "ownership (on-host mode)")? + &method + "\n\n" + &table;
    insert_section(&results_path(), &section)?;
    println!("recorded in {}", results_path().display());
    Ok(())
}

fn onhost_table(samples: &[Vec<OnHostSample>]) -> String {
    let gbps = |s: &[OnHostSample]| median(&mut s.iter().map(|s| s.gbps).collect::<Vec<_>>());
    let baseline = gbps(&samples[0]);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| configuration | Mbit/s (runs) | ratio to no mirror | RTT p50 (ms) | RTT p99 (ms) | segments held |"
    );
    let _ = writeln!(table, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (mode, runs) in ONHOST_MODES.iter().zip(samples) {
        let rtts: Vec<f64> = runs
            .iter()
            .flat_map(|s| s.rtts_ms.iter().copied())
            .collect();
        let list: Vec<String> = runs
            .iter()
            .map(|s| format!("{:.1}", s.gbps * 1e3))
            .collect();
        let _ = writeln!(
            table,
            "| {} | {:.1} ({}) | {:.4} | {:.3} | {:.3} | {} |",
            mode.name,
            gbps(runs) * 1e3,
            list.join(", "),
            gbps(runs) / baseline,
            quantile(&rtts, 0.5),
            quantile(&rtts, 0.99),
            median_u64(runs.iter().map(|s| s.held)),
        );
    }
    table
}

fn onhost_run(mode: &OnHostMode) -> Result<OnHostSample> {
    live::wait_for_host(
        "(waiting for another connmirror test or benchmark to release the host...)",
    )?;
    let topo = Topology::new();
    let family = Family::V4;
    let service = topo.service(family, IPERF_PORT);
    let dir = connmirror_tests::workdir::WorkDir::new("bench-onhost");
    let key = key_file(&dir);
    configure_primary(&topo, family, service);
    if let Some(rto) = mode.rto_min {
        topo.server.sysctl("net.ipv4.tcp_rto_min_us", rto);
        topo.client.sysctl("net.ipv4.tcp_rto_min_us", rto);
    }
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
    let mut server = topo
        .server
        .command("iperf3")
        .args(["-s", "-1", "-B"])
        .arg(service.ip().to_string())
        .args(["-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn iperf3 server")?;
    wait_listening(&topo.server, IPERF_PORT)?;
    let json = iperf3_client(&topo.client, service.ip().to_string());
    let _ = wait_child(&mut server, Duration::from_secs(5), "iperf3 server");
    let (gbps, _) = parse_iperf3(&json?)?;
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
