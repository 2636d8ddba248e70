//! Benchmark results as data, and the `bench/RESULTS.md` page made from them.
//!
//! `connmirror-bench` stores each area's latest run as JSON in
//! `bench/data/AREA.json` ([`Results::save`]), then rewrites `bench/RESULTS.md`
//! from every stored area ([`Results::render`]): one table per area, each stating
//! its command, date, commit, kernel and CPU. Running one area therefore keeps the
//! other areas' latest results. The plots beside the page come from the same data
//! ([`crate::plots`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

mod fuzz;
mod mirror_box;
mod soak;
pub use fuzz::{FuzzResults, FuzzRun};
pub use mirror_box::{MirrorBoxResults, TapStep};
pub use soak::SoakResults;

/// Where and how one area was run: what every table states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The command, as typed (`cargo xtask bench`, or a note that the binary ran directly).
    pub command: String,
    /// When the area started, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// `git rev-parse --short HEAD` of the workspace.
    pub commit: String,
    /// Whether files outside `bench/` had uncommitted changes.
    pub dirty: bool,
    /// `uname -r`.
    pub kernel: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// Cores this process could use.
    pub cores: usize,
    /// How long the area took.
    pub seconds: f64,
}

impl RunInfo {
    /// The facts of a run of `command` starting now in the workspace at `root`
    /// (`seconds` is filled in when it ends).
    pub fn collect(command: &str, root: &Path) -> Result<RunInfo> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("read /proc/cpuinfo")?;
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let root = root.display().to_string();
        let commit = output("git", &["-C", &root, "rev-parse", "--short", "HEAD"])
            .unwrap_or_else(|_| "unknown".to_owned());
        // bench/ itself changes as the areas of one run are recorded.
        let dirty = output(
            "git",
            &["-C", &root, "status", "--porcelain", "--", ".", ":!bench"],
        )
        .is_ok_and(|s| !s.is_empty());
        Ok(RunInfo {
            command: command.to_owned(),
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?,
            commit,
            dirty,
            kernel: output("uname", &["-r"])?,
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            seconds: 0.0,
        })
    }

    /// The bullet list under an area's heading, `method` last.
    pub(crate) fn render(&self, method: &str) -> String {
        let RunInfo {
            command,
            date,
            commit,
            dirty,
            kernel,
            cpu,
            cores,
            seconds,
        } = self;
        let dirty = if *dirty {
            " (with uncommitted changes)"
        } else {
            ""
        };
        let mut s = String::new();
        let _ = writeln!(s, "- command: {command}");
        let _ = writeln!(s, "- date: {date} (the area took {seconds:.0} s)");
        let _ = writeln!(s, "- commit: {commit}{dirty}");
        let _ = writeln!(s, "- kernel: {kernel}");
        let _ = writeln!(
            s,
            "- CPU: {cpu}, {cores} cores; links: veth pairs between network namespaces"
        );
        let _ = writeln!(s, "- method: {method}");
        s
    }
}

/// The trimmed stdout of a short command; fails unless it exits 0.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
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

/// Requests per second per test from `redis-benchmark --csv` output: a header
/// line starting with `"test","rps"`, then one `"NAME","RPS",...` line per test.
pub fn parse_redis_benchmark_csv(csv: &str) -> Result<Vec<(String, f64)>> {
    let mut lines = csv.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines.next().unwrap_or_default();
    ensure!(
        header.starts_with("\"test\",\"rps\""),
        "not redis-benchmark --csv output (header {header:?}): {csv:.300}"
    );
    let tests: Vec<(String, f64)> = lines
        .map(|line| {
            let mut fields = line.split(',').map(|f| f.trim_matches('"'));
            let (test, rps) = (fields.next().unwrap_or_default(), fields.next());
            let rps = (rps.and_then(|r| r.parse().ok()))
                .filter(|&r: &f64| r > 0.0)
                .with_context(|| format!("no requests per second in {line:?}"))?;
            Ok((test.to_owned(), rps))
        })
        .collect::<Result<_>>()?;
    ensure!(
        !tests.is_empty(),
        "redis-benchmark reported no test: {csv:.300}"
    );
    Ok(tests)
}

/// What captured the traffic in one configuration of the capture benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capturer {
    /// Nothing: the unmirrored baseline.
    None,
    /// `connmirror mirror`.
    Mirror,
    /// `tcpdump -w FILE`.
    Tcpdump,
}

/// One iperf3 run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The receiver's rate.
    pub gbps: f64,
    /// The sender's retransmissions.
    pub retransmits: u64,
    /// Share of all CPUs' time not idle during the run, in %.
    pub host_busy: f64,
    /// Only for mirrored runs.
    pub mirror: Option<MirrorSample>,
    /// Only for runs under tcpdump.
    pub tcpdump: Option<TcpdumpSample>,
}

/// What the mirror reported for one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorSample {
    /// The `ring_full` counter.
    pub ring_full: u64,
    /// The `backpressure_drops` counter.
    pub drops: u64,
    /// Flows `report.json` classifies as gapped.
    pub gapped_flows: usize,
    /// Of those, the ones that ended with a RST.
    pub gapped_reset: usize,
    /// Flows in `report.json`.
    pub flows: usize,
    /// utime+stime of the mirror over the iperf3 run / wall time, in % of one core.
    pub cpu_percent: f64,
    /// Journal bytes written, with `--journal`.
    pub journal_bytes: u64,
    /// One line per gapped flow, for the log.
    pub gapped: Vec<String>,
    /// Ingress hooks the mirror logged when it attached (`IF: attach HOOK (why)`).
    pub attach: String,
}

/// What tcpdump reported for one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpdumpSample {
    /// Packets written to the file.
    pub captured: u64,
    /// Packets the kernel dropped before tcpdump read them.
    pub dropped: u64,
    /// Size of the pcap file (deleted after the run).
    pub file_bytes: u64,
    /// utime+stime of tcpdump over the iperf3 run / wall time, in % of one core.
    pub cpu_percent: f64,
}

/// One configuration of the capture benchmark and its runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigRuns {
    /// Name in the table.
    pub name: String,
    /// Name under its bar in the plot.
    pub short: String,
    /// What captured.
    pub capturer: Capturer,
    /// Printed in the notes column.
    pub note: String,
    /// Parallel iperf3 streams (`-P`); results from before it was recorded
    /// ran one.
    #[serde(default = "one_stream")]
    pub streams: u32,
    /// One per round.
    pub runs: Vec<Sample>,
}

/// The stream count of results recorded before [`ConfigRuns::streams`].
fn one_stream() -> u32 {
    1
}

impl ConfigRuns {
    /// The median throughput over the rounds.
    pub fn median_gbps(&self) -> f64 {
        median(&self.runs.iter().map(|s| s.gbps).collect::<Vec<_>>())
    }
}

/// `cargo xtask bench capture`: throughput per attach point and under tcpdump.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// `iperf3 --version`, first line.
    pub iperf: String,
    /// `iperf3 -t`.
    pub iperf_seconds: u64,
    /// Rounds run (each runs every configuration once).
    pub rounds: usize,
    /// The baseline first.
    pub configs: Vec<ConfigRuns>,
}

impl CaptureResults {
    /// The median throughput of the unmirrored baseline with as many
    /// parallel streams as `config`: each configuration's ratio is against it.
    pub fn baseline_gbps(&self, config: &ConfigRuns) -> f64 {
        self.configs
            .iter()
            .find(|c| c.capturer == Capturer::None && c.streams == config.streams)
            .map_or(f64::NAN, ConfigRuns::median_gbps)
    }
}

/// `cargo xtask bench journal`: the journal against the disk, and journaled
/// mirroring against none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// `iperf3 --version`, first line.
    pub iperf: String,
    /// `iperf3 -t`.
    pub iperf_seconds: u64,
    /// Rounds of (baseline, journaled).
    pub rounds: usize,
    /// Bytes `dd` and the journal append wrote.
    pub bytes: u64,
    /// `dd bs=1M conv=fdatasync`, bytes per second.
    pub disk_bps: f64,
    /// Journal append, bytes per second.
    pub append_bps: f64,
    /// Reading and replaying that journal.
    pub recovery_seconds: f64,
    /// Payload bytes recovery replayed.
    pub replayed_bytes: u64,
    /// Idle flows in the memory measurement.
    pub idle_flows: u32,
    /// Resident memory per idle flow.
    pub idle_flow_bytes: f64,
    /// iperf3 without a mirror.
    pub baseline: Vec<Sample>,
    /// iperf3 mirrored with every byte journaled.
    pub journaled: Vec<Sample>,
}

/// One restore-time run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreSample {
    /// Idle connections restored.
    pub connections: usize,
    /// The takeover report's `restore` step.
    pub restore_ms: f64,
    /// Every step of the takeover.
    pub takeover_ms: f64,
}

/// Takeover trigger to first byte, for one send-queue refill mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FirstByte {
    /// `--send-queue` value.
    pub mode: String,
    /// One per run, in milliseconds.
    pub ms: Vec<f64>,
}

/// `cargo xtask bench failover`: restore time and takeover to first byte.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailoverResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// One per connection count, ascending.
    pub restores: Vec<RestoreSample>,
    /// One per send-queue refill mode.
    pub first_byte: Vec<FirstByte>,
}

/// `cargo xtask bench ownership`: primary death to the first resumed byte.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OwnershipResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// One per run, in milliseconds.
    pub ms: Vec<f64>,
    /// The same with ownership in a three-member etcd cluster (the standby
    /// wins the takeover in etcd first): one per run, in milliseconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_ms: Vec<f64>,
    /// The heartbeat interval of the pair runs, in ms (3 missed); runs
    /// recorded before it was saved used 50.
    #[serde(default = "fifty")]
    pub interval_ms: u64,
    /// The heartbeat interval of the etcd runs; runs recorded before it was
    /// saved used 20.
    #[serde(default = "twenty")]
    pub etcd_interval_ms: u64,
}

/// What [`OwnershipResults::interval_ms`] was before it was saved.
fn fifty() -> u64 {
    50
}

/// What [`OwnershipResults::etcd_interval_ms`] was before it was saved.
fn twenty() -> u64 {
    20
}

/// `cargo xtask bench heartbeats`: how late heartbeats come while the host
/// is saturated, as the standby's `connmirror_heartbeat_gap_seconds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// How long the load ran, in seconds.
    pub loaded_seconds: u64,
    /// The agent's heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// iperf3's throughput meanwhile (the load), Gbit/s.
    pub gbps: f64,
    /// The gaps between consecutive heartbeats: (bucket upper bound in
    /// seconds, gaps in that bucket), ending with `+Inf`.
    #[serde(with = "infinite_bounds")]
    pub buckets: Vec<(f64, u64)>,
    /// Deaths the standby declared (`--failover auto`: each started a
    /// takeover of a live primary); `None` for runs recorded at `--failover
    /// manual`, before it was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_takeovers: Option<u64>,
}

/// Histogram buckets whose last bound is `+Inf`, in JSON: it has no
/// infinity (serde_json writes `null`), so `+Inf` is written `null` and
/// `null` read back as `+Inf`.
mod infinite_bounds {
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    /// Writes each infinite bound as `null`.
    pub fn serialize<S: Serializer>(buckets: &[(f64, u64)], s: S) -> Result<S::Ok, S::Error> {
        let written: Vec<(Option<f64>, u64)> = (buckets.iter())
            .map(|&(bound, n)| (bound.is_finite().then_some(bound), n))
            .collect();
        written.serialize(s)
    }

    /// Reads `null` bounds as `+Inf`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, u64)>, D::Error> {
        let read = Vec::<(Option<f64>, u64)>::deserialize(d)?;
        Ok((read.into_iter())
            .map(|(bound, n)| (bound.unwrap_or(f64::INFINITY), n))
            .collect())
    }
}

/// `cargo xtask bench ownership`, on-host part: throughput and round trips
/// with no mirror, with asynchronous replication and with `--sync`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnHostResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// Rounds of every configuration, interleaved.
    pub rounds: usize,
    /// Request/echo round trips timed per run.
    pub ping_pongs: usize,
    /// One per configuration, the baseline (no mirror) first.
    pub modes: Vec<OnHostRuns>,
    /// The failures at random moments (absent from runs before they were
    /// part of the benchmark).
    #[serde(default)]
    pub kills: Option<OnHostKills>,
}

/// The on-host failures at random moments of `cargo xtask bench onhost`
/// ([`crate::kills`]): every kill passed its checks, or the benchmark
/// stopped with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnHostKills {
    /// Seconds they took, all together.
    pub seconds: f64,
    /// `--sync` kills per family ("IPv4", "IPv6").
    pub sync: Vec<(String, Vec<crate::kills::SyncKill>)>,
    /// Async kills per family.
    pub asynchronous: Vec<(String, Vec<crate::kills::AsyncKill>)>,
}

/// The runs of one on-host configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnHostRuns {
    /// The configuration.
    pub name: String,
    /// iperf3 throughput per run, Gbit/s.
    pub gbps: Vec<f64>,
    /// Every round trip of every run, in milliseconds.
    pub rtts_ms: Vec<f64>,
    /// Segments `--sync` held (dropped until acknowledged), per run.
    pub held: Vec<u64>,
    /// `--sync`: the bucket bound of the median hold per run, in ms
    /// (`connmirror_sync_hold_seconds`); empty for other modes and older runs.
    #[serde(default)]
    pub hold_p50_ms: Vec<f64>,
}

/// `cargo xtask bench resume`: the client stall through an automatic
/// failover against the connections' age, for live replay and for replay at
/// takeover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumeResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// Clients per run, one connection each.
    pub clients: usize,
    /// Runs per (mode, age).
    pub runs: usize,
    /// Seconds of traffic before the primary died, ascending.
    pub ages: Vec<u64>,
    /// The environment settings that replaced the default runs or ages
    /// (`CONNMIRROR_BENCH_RESUME_RUNS=5`); empty with the defaults.
    pub overrides: Vec<String>,
    /// One per (mode, age): live replay's ages in order, then replay's.
    pub cells: Vec<ResumeRuns>,
    /// The cost part, when it has run; it carries its own [`RunInfo`], as
    /// either part can be run alone (`CONNMIRROR_BENCH_RESUME_PARTS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<ResumeCost>,
    /// The splice part, when it has run: relaying a resumed connection with
    /// splice(2) against `copy_bidirectional`; its own [`RunInfo`] too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splice: Option<crate::splice::SpliceResults>,
    /// The takeover part, when it has run; its own [`RunInfo`] too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<ResumeTakeover>,
    /// The memory part, when it has run (older results have none); its own
    /// [`RunInfo`] too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ResumeMemory>,
}

/// `cargo xtask bench resume`, memory part: the standby's resident set while
/// many connections stream, live replay against replay at takeover (whose
/// `=full` retention keeps every byte).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumeMemory {
    /// Where and how it ran.
    pub info: RunInfo,
    /// Connections streaming through the standby, one per client.
    pub clients: usize,
    /// Seconds they streamed.
    pub seconds: u64,
    /// The environment settings that replaced a default
    /// (`CONNMIRROR_BENCH_RESUME_MEMORY_SECONDS=20`); empty with the defaults.
    pub overrides: Vec<String>,
    /// One per mode: live replay, then replay.
    pub modes: Vec<MemoryRuns>,
}

/// One mode's run of the memory part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryRuns {
    /// The `--resume` mode: `live` or `replay`.
    pub mode: String,
    /// When each sample was taken, in seconds from the clients' start.
    pub at_s: Vec<u64>,
    /// The standby's resident set size (`VmRSS`) at each of `at_s`, in bytes.
    pub rss_bytes: Vec<u64>,
    /// Commands answered over every connection by the last sample.
    pub commands: u64,
}

impl MemoryRuns {
    /// The last sample's growth over the first, as a fraction of the first.
    pub fn growth(&self) -> f64 {
        match (self.rss_bytes.first(), self.rss_bytes.last()) {
            (Some(&first), Some(&last)) if first > 0 => (last as f64 - first as f64) / first as f64,
            _ => f64::NAN,
        }
    }
}

/// `cargo xtask bench resume`, takeover part: the whole takeover of many
/// idle connections, resume included, by handoff and by live replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumeTakeover {
    /// Where and how it ran.
    pub info: RunInfo,
    /// Idle connections open through the standby in every run.
    pub connections: usize,
    /// Runs of each mode; the modes alternate run by run.
    pub runs: usize,
    /// Connections each run checked after the takeover (one request each).
    pub checked: usize,
    /// The environment settings that replaced a default
    /// (`CONNMIRROR_BENCH_RESUME_TAKEOVER_RUNS=5`); empty with the defaults.
    pub overrides: Vec<String>,
    /// One per mode: handoff, then live replay.
    pub modes: Vec<TakeoverRuns>,
}

/// The runs of one resumption mode of the takeover part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TakeoverRuns {
    /// `handoff` or `live`.
    pub mode: String,
    /// Per run: every step of the takeover report, in milliseconds.
    pub takeover_ms: Vec<f64>,
    /// Per run: the report's `restore` and `leave-repair` steps.
    pub restore_ms: Vec<f64>,
    /// Per run: the report's `resume` step.
    pub resume_ms: Vec<f64>,
    /// Per run: from the first client's connect to every connection ready
    /// (tracked by the standby and, for live replay, protected with its
    /// instance connection open), in milliseconds.
    pub ready_ms: Vec<f64>,
}

/// `cargo xtask bench resume`, cost part: requests per second through the
/// standby with no live instance and with one, alternated round by round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumeCost {
    /// Where and how it ran.
    pub info: RunInfo,
    /// The load, as run from the client namespace, without host and port
    /// (`redis-benchmark -P 16 -c 8 -n 4000000 -t set,get,incr -q --csv`).
    pub load: String,
    /// `redis-benchmark --version`.
    pub version: String,
    /// Rounds of (no live instance, live instance).
    pub rounds: usize,
    /// The environment settings that replaced the default rounds
    /// (`CONNMIRROR_BENCH_RESUME_COST_ROUNDS=5`); empty with the default.
    pub overrides: Vec<String>,
    /// One per redis-benchmark test, in the order it ran them.
    pub tests: Vec<CostTest>,
    /// One per live round, in order: what live replay counted.
    pub live_rounds: Vec<LiveRound>,
}

/// The requests per second of one redis-benchmark test, per round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostTest {
    /// The test's name as redis-benchmark prints it (`SET`).
    pub test: String,
    /// Per round, with no live instance (`--service IP:PORT` alone).
    pub no_live_rps: Vec<f64>,
    /// Per round, with the live instance (`--resume IP:PORT=live:ADDR`).
    pub live_rps: Vec<f64>,
}

impl CostTest {
    /// The median with the live instance over the median without.
    pub fn ratio(&self) -> f64 {
        median(&self.live_rps) / median(&self.no_live_rps)
    }
}

/// Live replay's counters at the end of one live round, from the standby's
/// `/metrics` just before it stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveRound {
    /// `connmirror_live_divergences_total`: connections whose instance
    /// produced a byte the primary did not send.
    pub divergences: u64,
    /// `connmirror_live_unprotected_total` by reason, the reasons counted.
    pub unprotected: std::collections::BTreeMap<String, u64>,
}

impl LiveRound {
    /// Connections that became unprotected, for any reason.
    pub fn unprotected_total(&self) -> u64 {
        self.unprotected.values().sum()
    }
}

/// The runs of one resumption mode at one connection age.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumeRuns {
    /// The `--resume` mode: `live` or `replay`.
    pub mode: String,
    /// Seconds of traffic before the primary died.
    pub age_s: u64,
    /// Per run: from the primary's death to the moment every client had a
    /// new verified reply, in milliseconds.
    pub stall_ms: Vec<f64>,
    /// Per run: the takeover report's `resume` step, in milliseconds.
    pub resume_ms: Vec<f64>,
    /// Per run: replies each connection had verified when the primary died
    /// (the mean over the clients): the history replay has to go through.
    pub commands: Vec<u64>,
}

/// The latest result of every area that has one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    /// `bench/data/capture.json`.
    pub capture: Option<CaptureResults>,
    /// `bench/data/journal.json`.
    pub journal: Option<JournalResults>,
    /// `bench/data/failover.json`.
    pub failover: Option<FailoverResults>,
    /// `bench/data/ownership.json`.
    pub ownership: Option<OwnershipResults>,
    /// `bench/data/onhost.json`.
    pub onhost: Option<OnHostResults>,
    /// `bench/data/resume.json`.
    pub resume: Option<ResumeResults>,
    /// `bench/data/heartbeats.json`.
    pub heartbeats: Option<HeartbeatResults>,
    /// `bench/data/mirror.json`.
    pub mirror: Option<MirrorBoxResults>,
    /// `bench/data/fuzz.json`.
    pub fuzz: Option<FuzzResults>,
    /// `bench/data/soak.json`.
    pub soak: Option<SoakResults>,
}

impl Results {
    /// Reads every `AREA.json` in `dir`; a missing file is an area not run yet.
    pub fn load(dir: &Path) -> Result<Results> {
        Ok(Results {
            capture: load(&dir.join("capture.json"))?,
            journal: load(&dir.join("journal.json"))?,
            failover: load(&dir.join("failover.json"))?,
            ownership: load(&dir.join("ownership.json"))?,
            onhost: load(&dir.join("onhost.json"))?,
            resume: load(&dir.join("resume.json"))?,
            heartbeats: load(&dir.join("heartbeats.json"))?,
            mirror: load(&dir.join("mirror.json"))?,
            fuzz: load(&dir.join("fuzz.json"))?,
            soak: load(&dir.join("soak.json"))?,
        })
    }

    /// Writes every area this holds to `dir/AREA.json`, replacing what was there.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let Results {
            capture,
            journal,
            failover,
            ownership,
            onhost,
            resume,
            heartbeats,
            mirror,
            fuzz,
            soak,
        } = self;
        save(&dir.join("capture.json"), capture)?;
        save(&dir.join("journal.json"), journal)?;
        save(&dir.join("failover.json"), failover)?;
        save(&dir.join("ownership.json"), ownership)?;
        save(&dir.join("onhost.json"), onhost)?;
        save(&dir.join("resume.json"), resume)?;
        save(&dir.join("heartbeats.json"), heartbeats)?;
        save(&dir.join("mirror.json"), mirror)?;
        save(&dir.join("fuzz.json"), fuzz)?;
        save(&dir.join("soak.json"), soak)
    }

    /// Takes the areas `newer` holds, keeping the others.
    pub fn update(&mut self, newer: Results) {
        let older = std::mem::take(self);
        // A struct literal, so that an area added to `Results` must be named here.
        *self = Results {
            capture: newer.capture.or(older.capture),
            journal: newer.journal.or(older.journal),
            failover: newer.failover.or(older.failover),
            ownership: newer.ownership.or(older.ownership),
            onhost: newer.onhost.or(older.onhost),
            resume: newer.resume.or(older.resume),
            heartbeats: newer.heartbeats.or(older.heartbeats),
            mirror: newer.mirror.or(older.mirror),
            fuzz: newer.fuzz.or(older.fuzz),
            soak: newer.soak.or(older.soak),
        };
    }

    /// The whole `RESULTS.md`: a header, then one section per area with a table
    /// and, where there is one, its plot.
    pub fn render(&self) -> String {
        String::from(HEADER) + &self.sections()
    }

    /// The sections of the areas this holds, without the page's header.
    pub fn sections(&self) -> String {
        let mut s = String::new();
        let sections = [
            self.capture.as_ref().map(render_capture),
            self.journal.as_ref().map(render_journal),
            self.failover.as_ref().map(render_failover),
            self.ownership.as_ref().map(render_ownership),
            self.onhost.as_ref().map(render_onhost),
            self.heartbeats.as_ref().map(render_heartbeats),
            self.mirror.as_ref().map(mirror_box::render),
            self.fuzz.as_ref().map(fuzz::render),
            self.soak.as_ref().map(soak::render),
            self.resume.as_ref().map(render_resume),
        ];
        for section in sections.into_iter().flatten() {
            s.push('\n');
            s.push_str(&section);
        }
        s
    }
}

/// The top of `RESULTS.md`.
const HEADER: &str = "# Benchmark results

Written by `cargo xtask bench [AREA]` from the data it stores in [data/](data/) (each
area's latest run; running one area keeps the others), with the plots beside this page.
Do not edit it by hand: `cargo run -p connmirror-tests --bin connmirror-bench -- report`
rewrites it, and the plots, from the data.

Absolute numbers are noisy: the benchmarks run on a 2-core VM shared with other engineers'
builds and tests, which run at the same time (see host CPU busy). Speed is therefore given
as ratios within one run (mirrored against unmirrored throughput, measured interleaved in
the same run); compare those, not absolute rates across runs or machines.
";

fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn save<T: Serialize>(path: &Path, value: &Option<T>) -> Result<()> {
    let Some(value) = value else { return Ok(()) };
    let text = serde_json::to_string_pretty(value).context("encode results as JSON")?;
    write_atomically(path, format!("{text}\n").as_bytes())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader
/// never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The value at quantile `q` (nearest rank) of `values`.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median_of<T>(items: &[T], value: impl Fn(&T) -> f64) -> f64 {
    median(&items.iter().map(value).collect::<Vec<_>>())
}

/// The iperf3 method shared by the capture and journal areas.
fn iperf_method(iperf: &str, seconds: u64, rounds: usize) -> String {
    format!(
        "one {iperf} stream (`-t {seconds}`, client -> server through the gateway, receiver's \
         rate), each run on a fresh client/gateway/server topology; baseline and configurations \
         interleaved, {rounds} round(s); Gbit/s, ring_full, drops and CPU are medians over the \
         rounds, gapped flows are summed over them, ratio = median / baseline median of the \
         same run. Mirror defaults otherwise (16 MiB ring, `--on-ring-full drop`, `--report` \
         only, no stream dumps). Mirror CPU = utime+stime of the connmirror process over the \
         iperf3 run / wall time (100 % = one core); it excludes the eBPF programs, which run in \
         the forwarding softirq. Host CPU busy = share of all cores' time not idle during the \
         iperf3 run (/proc/stat)."
    )
}

fn render_capture(r: &CaptureResults) -> String {
    let method = iperf_method(&r.iperf, r.iperf_seconds, r.rounds)
        + " `tcpdump -w` is `tcpdump -i gw-c -n -w FILE tcp port 5201` in the gateway \
           (the client-side link carries both directions of the stream, so every packet is \
           written once), default snap length and buffer, writing to a scratch file on the \
           workspace's disk that is deleted after the run; its drops are the packets it reports \
           as dropped by kernel, its CPU is tcpdump's utime+stime.";
    let mut s = String::from("## Capture: throughput per attach point, and tcpdump\n\n");
    s.push_str(&r.info.render(&method));
    s.push('\n');
    s.push_str(&capture_table(r));
    s.push_str("\n![Throughput per configuration](throughput.png)\n");
    s
}

/// One row per configuration, medians over the rounds.
fn capture_table(r: &CaptureResults) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| config | Gbit/s | ratio | ring_full | drops | gapped flows | capturer CPU % | notes |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for config in &r.configs {
        let runs = &config.runs;
        let gbps = config.median_gbps();
        let per_run: Vec<String> = runs.iter().map(|s| format!("{:.2}", s.gbps)).collect();
        let mut notes = vec![
            format!("runs: {} Gbit/s", per_run.join(", ")),
            format!(
                "retransmits {:.0}",
                median_of(runs, |s| s.retransmits as f64)
            ),
            format!("host CPU busy {:.0} %", median_of(runs, |s| s.host_busy)),
        ];
        let cells = match config.capturer {
            Capturer::None => "– | – | – | –".to_owned(),
            Capturer::Mirror => mirror_cells(runs, &mut notes),
            Capturer::Tcpdump => tcpdump_cells(runs, &mut notes),
        };
        if !config.note.is_empty() {
            notes.push(config.note.clone());
        }
        let _ = writeln!(
            t,
            "| {} | {gbps:.2} | {:.2} | {cells} | {} |",
            config.name,
            gbps / r.baseline_gbps(config),
            notes.join("; ")
        );
    }
    t
}

/// ring_full, drops, gapped flows and CPU of mirrored runs.
fn mirror_cells(runs: &[Sample], notes: &mut Vec<String>) -> String {
    let m: Vec<&MirrorSample> = runs.iter().filter_map(|s| s.mirror.as_ref()).collect();
    let gapped: usize = m.iter().map(|m| m.gapped_flows).sum();
    let gapped_reset: usize = m.iter().map(|m| m.gapped_reset).sum();
    let flows: usize = m.iter().map(|m| m.flows).sum();
    if let Some(first) = m.first().filter(|m| !m.attach.is_empty()) {
        notes.push(format!("attached as {}", first.attach));
    }
    if gapped > 0 {
        notes.push(format!(
            "{gapped_reset} of the {gapped} gapped flows ended with a RST \
             (iperf3's server resets its data connection)"
        ));
    }
    format!(
        "{:.0} | {:.0} | {gapped} of {flows} | {:.0}",
        median_of(&m, |m| m.ring_full as f64),
        median_of(&m, |m| m.drops as f64),
        median_of(&m, |m| m.cpu_percent)
    )
}

/// Drops and CPU of runs under tcpdump (it has no ring_full or flows).
fn tcpdump_cells(runs: &[Sample], notes: &mut Vec<String>) -> String {
    let t: Vec<&TcpdumpSample> = runs.iter().filter_map(|s| s.tcpdump.as_ref()).collect();
    let dropped = median_of(&t, |t| t.dropped as f64);
    let captured = median_of(&t, |t| t.captured as f64);
    notes.push(format!(
        "{captured:.0} packets written, {:.1} % dropped by kernel, {:.2} GB file",
        dropped / (dropped + captured) * 100.0,
        median_of(&t, |t| t.file_bytes as f64) / 1e9
    ));
    format!(
        "– | {dropped:.0} | – | {:.0}",
        median_of(&t, |t| t.cpu_percent)
    )
}

fn render_journal(r: &JournalResults) -> String {
    let method = format!(
        "dd, the journal append and recovery write and read {:.0} GiB in `target/` on the \
         workspace's disk; the mirrored rows are {}",
        r.bytes as f64 / f64::from(1 << 30),
        iperf_method(&r.iperf, r.iperf_seconds, r.rounds)
    );
    let mut s = String::from("## Journal: append rate, recovery, memory, journaled throughput\n\n");
    s.push_str(&r.info.render(&method));
    s.push('\n');
    s.push_str(&journal_table(r));
    s
}

fn journal_table(r: &JournalResults) -> String {
    let gib = r.bytes as f64 / f64::from(1 << 30);
    let mut t = String::new();
    let _ = writeln!(t, "| measurement | value | ratio / notes |");
    let _ = writeln!(t, "| --- | ---: | --- |");
    let _ = writeln!(
        t,
        "| disk: `dd bs=1M conv=fdatasync`, {gib:.0} GiB | {:.0} MB/s | baseline |",
        r.disk_bps / 1e6
    );
    let _ = writeln!(
        t,
        "| journal append, {gib:.0} GiB of 64 KiB records, `--fsync interval` | {:.0} MB/s | {:.2} of dd (target ≥ 0.90) |",
        r.append_bps / 1e6,
        r.append_bps / r.disk_bps
    );
    let _ = writeln!(
        t,
        "| recovery of that journal (read + replay) | {:.2} s | {:.0} MB/s over {:.2} GB |",
        r.recovery_seconds,
        r.replayed_bytes as f64 / 1e6 / r.recovery_seconds,
        r.replayed_bytes as f64 / 1e9
    );
    let _ = writeln!(
        t,
        "| memory per idle tracked flow ({} flows, RSS growth) | {:.0} bytes | target < 1024 |",
        thousands(r.idle_flows as usize),
        r.idle_flow_bytes
    );
    let base = median_of(&r.baseline, |s| s.gbps);
    let _ = writeln!(
        t,
        "| iperf3, no mirror | {base:.2} Gbit/s | runs: {} Gbit/s |",
        gbps_list(&r.baseline)
    );
    let mirrored = median_of(&r.journaled, |s| s.gbps);
    let m: Vec<&MirrorSample> = r
        .journaled
        .iter()
        .filter_map(|s| s.mirror.as_ref())
        .collect();
    let journal_rate = m
        .iter()
        .map(|m| m.journal_bytes as f64 / r.iperf_seconds as f64)
        .fold(0.0, f64::max);
    let gapped: usize = m.iter().map(|m| m.gapped_flows).sum();
    let ring_full: u64 = m.iter().map(|m| m.ring_full).sum();
    let _ = writeln!(
        t,
        "| iperf3 mirrored (tc ingress), every byte journaled, full retention | {mirrored:.2} Gbit/s | {:.2} of no mirror; journal ~{:.0} MB/s = {:.2} of the disk's rate; gapped flows {gapped}; ring_full {ring_full} (backpressure); runs: {} Gbit/s |",
        mirrored / base,
        journal_rate / 1e6,
        journal_rate / r.disk_bps,
        gbps_list(&r.journaled)
    );
    t
}

fn gbps_list(samples: &[Sample]) -> String {
    let runs: Vec<String> = samples.iter().map(|s| format!("{:.2}", s.gbps)).collect();
    runs.join(", ")
}

/// `n` with a comma every three digits (10,000).
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render_failover(r: &FailoverResults) -> String {
    let method = "IPv4, a fresh client/standby/primary topology per run; the primary runs the \
                  echo example, the standby `connmirror standby` (TC ingress on both links) with \
                  the echo example registered for handoff. The primary dies (link down, then \
                  SIGKILL) and `connmirror takeover` is run 300 ms later. Restore = the takeover \
                  report's `restore` and `leave-repair` steps (plan, build every socket in repair \
                  mode on all cores; then, after the address step, leave repair); takeover = all steps, handoff included; one run per connection \
                  count. First byte = from spawning `connmirror takeover` to the first echoed \
                  byte the streaming client (1 MiB/s each way) verifies, polled every 0.2 ms.";
    let mut s = String::from("## Failover: restore time and takeover to first byte\n\n");
    s.push_str(&r.info.render(method));
    s.push('\n');
    s.push_str(&failover_table(r));
    s.push_str("\n![Restore time against connections](restore.png)\n");
    s
}

/// Restores and first-byte times in one table: each row one measurement,
/// p50/p99/max over its runs (one run: the value in every column).
fn failover_table(r: &FailoverResults) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| measurement | runs | p50 (ms) | p99 (ms) | max (ms) |");
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: |");
    for sample in &r.restores {
        let n = thousands(sample.connections);
        let plural = if sample.connections == 1 { "" } else { "s" };
        let _ = writeln!(
            t,
            "| restore step, {n} idle connection{plural} | 1 | {:.1} | – | – |",
            sample.restore_ms
        );
        let _ = writeln!(
            t,
            "| whole takeover, {n} idle connection{plural} | 1 | {:.1} | – | – |",
            sample.takeover_ms
        );
    }
    for first in &r.first_byte {
        let _ = writeln!(
            t,
            "| trigger → first byte, `--send-queue {}` | {} | {:.1} | {:.1} | {:.1} |",
            first.mode,
            first.ms.len(),
            quantile(&first.ms, 0.5),
            quantile(&first.ms, 0.99),
            quantile(&first.ms, 1.0)
        );
    }
    t
}

fn render_ownership(r: &OwnershipResults) -> String {
    let method = format!(
        "IPv4, a fresh client/standby/primary topology per run: the primary runs the \
         echo example and `connmirror agent` (heartbeats every {} ms), the standby \
         `connmirror standby --heartbeat-listen` (3 missed heartbeats, `--failover \
         auto`) with the echo example registered for handoff. One client streams 1 MiB/s \
         each way and verifies every byte. The primary dies (link down, server and agent \
         SIGKILLed); the time is the longest stretch after that with no new verified \
         byte at the client over the 3 s after the death (polled every 0.2 ms), i.e. \
         from the last byte the primary delivered to the first the standby did. \
         The etcd rows run the same with a three-member etcd cluster (50 ms raft \
         heartbeat, 500 ms election timeout) on a LAN of its own, agent and standby \
         given `--etcd`: the standby takes over only once it has won the service \
         in an etcd transaction. Those runs use {} ms heartbeats (3 missed: a \
         death is declared after {} ms).",
        r.interval_ms,
        r.etcd_interval_ms,
        3 * r.etcd_interval_ms
    );
    let mut s =
        String::from("## Ownership: automatic failover, primary death to resumed stream\n\n");
    s.push_str(&r.info.render(&method));
    s.push('\n');
    let _ = writeln!(
        s,
        "| ownership | runs | p50 (ms) | p99 (ms) | max (ms) | target |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | --- |");
    let rows = [
        ("pair", &r.ms, "p50 < 150, p99 < 250"),
        ("etcd (3 members)", &r.etcd_ms, "p99 < 250"),
    ];
    for (ownership, ms, target) in rows.into_iter().filter(|(_, ms, _)| !ms.is_empty()) {
        let _ = writeln!(
            s,
            "| {ownership} | {} | {:.1} | {:.1} | {:.1} | {target} |",
            ms.len(),
            quantile(ms, 0.5),
            quantile(ms, 0.99),
            quantile(ms, 1.0)
        );
    }
    s.push_str(
        "\n![Failover latency CDF](failover-cdf.png)\n\nThe plot also shows the failover \
         area's takeover trigger → first byte samples (a manual `connmirror takeover`, no \
         failure detection).\n",
    );
    s
}

fn render_onhost(r: &OnHostResults) -> String {
    let method = format!(
        "IPv4, a fresh client/gateway/primary topology per run, {} rounds of the {} \
         configurations interleaved, medians reported. On-host: the primary runs `connmirror \
         agent --iface eth0 --replicate-to GATEWAY:7402` (the default attach points, which \
         on a veth are TC ingress and egress; `unacked` retention, so the agent leaves out of \
         its batches the bytes acknowledged before they were shipped) and the gateway `connmirror standby \
         --replication-listen` with no capture of its own. Throughput: iperf3 client → \
         primary, one stream, then `-P 8`; each ratio is to the no-mirror row of the same \
         stream count. Latency: {} sequential 64-byte request/echo round trips to the echo \
         example on the primary, timed at the client. Held: `ebpf_sync_held` on the primary \
         (segments the netfilter POSTROUTING program captured and queued to the agent, which \
         released each once the standby acknowledged the journal up to it); hold p50: the \
         upper bound of the bucket of `connmirror_sync_hold_seconds` that holds the median \
         hold, scraped after the iperf3 run, median of the runs.",
        r.rounds,
        r.modes.len(),
        r.ping_pongs
    );
    let mut s =
        String::from("## Ownership, on-host mode: throughput and latency with replication\n\n");
    s.push_str(&r.info.render(&method));
    s.push('\n');
    let _ = writeln!(
        s,
        "| configuration | Mbit/s (runs) | ratio to no mirror | RTT p50 (ms) | RTT p99 (ms) | segments held | hold p50 (ms, ≤) |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut baseline = f64::NAN;
    for mode in &r.modes {
        if mode.name.starts_with("no mirror") {
            baseline = median(&mode.gbps);
        }
        let runs: Vec<String> = mode
            .gbps
            .iter()
            .map(|g| format!("{:.1}", g * 1e3))
            .collect();
        let mut held = mode.held.clone();
        held.sort_unstable();
        let hold = match mode.hold_p50_ms.is_empty() {
            true => "–".to_owned(),
            false => format!("{:.2}", median(&mode.hold_p50_ms)),
        };
        let _ = writeln!(
            s,
            "| {} | {:.1} ({}) | {:.4} | {:.3} | {:.3} | {} | {hold} |",
            mode.name,
            median(&mode.gbps) * 1e3,
            runs.join(", "),
            median(&mode.gbps) / baseline,
            quantile(&mode.rtts_ms, 0.5),
            quantile(&mode.rtts_ms, 0.99),
            held.get(held.len() / 2).copied().unwrap_or(0),
        );
    }
    if let Some(kills) = &r.kills {
        s.push('\n');
        s.push_str(&render_kills(kills));
    }
    s
}

/// The kills' table: each row a mode and family whose every kill passed.
fn render_kills(k: &OnHostKills) -> String {
    let mut s = format!(
        "Failures at random moments ({:.0} s in all; `connmirror_tests::kills`, the e2e tests' \
         kills run 20 times per family). `--sync`: the primary host dies (link down, server \
         and agent SIGKILLed) 0–1.5 s into four bidirectional echo streams; a kill passes if \
         every stream goes on from the standby sha256-exact, no RST reaches a client, and the \
         takeover restores and hands off all four. Async: replication is blocked 0.3–1 s, \
         then the primary dies; a kill passes if the exposure /metrics showed just before is \
         within one batch ({} bytes) of what the restored flow lacked (both ends at the \
         default retention, so acknowledged bytes are left out of the batches).\n\n",
        k.seconds,
        crate::kills::ONE_BATCH
    );
    let _ = writeln!(s, "| mode | family | kills passed | measured |");
    let _ = writeln!(s, "| --- | --- | ---: | --- |");
    for (family, kills) in &k.sync {
        let delays: Vec<u64> = kills.iter().map(|k| k.delay_ms).collect();
        let _ = writeln!(
            s,
            "| `--sync` | {family} | {} | killed {}–{} ms into the streams; {:.1} MiB echoed \
             byte-exact in all |",
            kills.len(),
            delays.iter().min().unwrap_or(&0),
            delays.iter().max().unwrap_or(&0),
            kills.iter().map(|k| k.verified).sum::<u64>() as f64 / f64::from(1 << 20),
        );
    }
    for (family, kills) in &k.asynchronous {
        let gap = kills.iter().map(|k| k.exposure.abs_diff(k.lost));
        let lost: Vec<u64> = kills.iter().map(|k| k.lost).collect();
        let _ = writeln!(
            s,
            "| async | {family} | {} | lost {}–{} bytes; exposure − lost at most {} bytes |",
            kills.len(),
            lost.iter().min().unwrap_or(&0),
            lost.iter().max().unwrap_or(&0),
            gap.max().unwrap_or(0),
        );
    }
    s
}

/// Live replay's target, on the p99 stall at every age, in milliseconds.
const LIVE_P99_TARGET_MS: f64 = 250.0;

fn render_resume(r: &ResumeResults) -> String {
    let method = format!(
        "IPv4, a fresh client/standby/primary topology per run: the primary runs redis-server \
         on the service address and `connmirror agent` (heartbeats at the default interval \
         of the commit measured: 50 ms before 2026-12-05, 25 ms since); the standby \
         runs `connmirror standby --heartbeat-listen` (3 missed heartbeats, `--failover auto`, \
         TC ingress on both links) and its own redis-server on loopback, resumed either by live \
         replay (`--service IP:PORT --resume IP:PORT=live:127.0.0.1:7001`) or by replay at \
         takeover (`--service IP:PORT=full --resume IP:PORT=replay:127.0.0.1:7001 \
         --history-cap 1G --replay-timeout 60000`). {} clients, one connection each, pipeline \
         `INCR` on their own keys (20 commands every 10 ms) and verify every reply; the age is \
         how long they ran before the primary died (link down, then redis-server and the agent \
         SIGKILLed). The stall is timed from just before that kill to the moment every client \
         has verified a new reply: the longest of the clients' times to their first reply \
         beyond what they had when the kill returned, polled every 1 ms. A run fails if a \
         client is not answered within 60 s, breaks, or does not get every command answered. \
         Resume step: the `resume` step of the standby's takeover report. Quantiles are \
         nearest-rank: below 100 runs, p99 is the max.",
        r.clients
    );
    let mut s = String::from("## Resume: stall against connection age\n\n");
    s.push_str(&r.info.render(&method));
    let ages: Vec<String> = r.ages.iter().map(|a| format!("{a} s")).collect();
    let set: Vec<String> = r.overrides.iter().map(|o| format!("`{o}`")).collect();
    let how = if set.is_empty() {
        "the defaults".to_owned()
    } else {
        format!(
            "set by {}, instead of the defaults (docs/benchmarks.md)",
            set.join(" ")
        )
    };
    let _ = writeln!(
        s,
        "- runs: {} per mode and age; ages: {} ({how})",
        r.runs,
        ages.join(", ")
    );
    s.push('\n');
    s.push_str(&resume_table(r));
    let met = (r.cells.iter())
        .filter(|c| c.mode == "live")
        .all(|c| meets_live_target(&c.stall_ms));
    let _ = writeln!(
        s,
        "\nTarget: live replay's p99 stall under {LIVE_P99_TARGET_MS:.0} ms at every age run: {}.",
        verdict(met)
    );
    if let Some(cost) = &r.cost {
        s.push('\n');
        s.push_str(&render_resume_cost(cost));
    }
    if let Some(splice) = &r.splice {
        s.push('\n');
        s.push_str(&crate::splice::render(splice));
    }
    if let Some(takeover) = &r.takeover {
        s.push('\n');
        s.push_str(&render_resume_takeover(takeover));
    }
    if let Some(memory) = &r.memory {
        s.push('\n');
        s.push_str(&render_resume_memory(memory));
    }
    s
}

/// Live replay's memory target: its RSS at the end within this fraction of
/// its RSS at the first sample (and replay's full history growing past it).
const MEMORY_GROWTH_TARGET: f64 = 0.10;

/// Whether a mode's run meets the memory target: live replay stays within
/// [`MEMORY_GROWTH_TARGET`], replay's full history grows past it.
fn meets_memory_target(run: &MemoryRuns) -> bool {
    match run.mode.as_str() {
        "live" => run.growth().abs() <= MEMORY_GROWTH_TARGET,
        _ => run.growth() > MEMORY_GROWTH_TARGET,
    }
}

/// The memory part of the resume section: its own run facts and one row per
/// mode.
fn render_resume_memory(m: &ResumeMemory) -> String {
    let method = format!(
        "IPv4, a fresh client/standby/primary topology per mode: the primary runs \
         redis-server on the service address; the standby (`connmirror standby`, TC ingress \
         on both links, no dump files, no failure detection) runs its own redis-server on \
         loopback, resumed by live replay (`--service IP:PORT --resume \
         IP:PORT=live:127.0.0.1:7001`) or by replay at takeover (`--service IP:PORT=full \
         --resume IP:PORT=replay:127.0.0.1:7001`, which keeps every byte of history). {} \
         clients, one connection each, pipeline `INCR` on their own 203-byte keys, 20 \
         commands every 100 ms each (about 4.2 MB/s of client bytes in all), and verify \
         every reply. The standby's resident set size (`VmRSS` of /proc/PID/status) is \
         sampled every 10 s from the clients' start. A run fails unless every command is \
         answered and, live, every connection is protected at the end.",
        m.clients
    );
    let mut s = format!(
        "### Resume: memory, {} connections streaming for {} s\n\n",
        m.clients, m.seconds
    );
    s.push_str(&m.info.render(&method));
    let how = if m.overrides.is_empty() {
        "the default".to_owned()
    } else {
        let set: Vec<String> = m.overrides.iter().map(|o| format!("`{o}`")).collect();
        format!("set by {}, instead of the default", set.join(" "))
    };
    let _ = writeln!(s, "- length: {} s ({how})", m.seconds);
    s.push('\n');
    s.push_str(&memory_table(m));
    let met = !m.modes.is_empty() && m.modes.iter().all(meets_memory_target);
    let pct = MEMORY_GROWTH_TARGET * 100.0;
    let _ = writeln!(
        s,
        "\nTarget: live replay's RSS at the end within {pct:.0} % of its RSS at the first \
         sample, while replay's full history grows: {}.",
        verdict(met)
    );
    s
}

/// One row per mode: the RSS at the first and the last sample, the growth,
/// every sample, the commands answered, and the target.
fn memory_table(m: &ResumeMemory) -> String {
    let at = m.modes.first().map_or(&[][..], |run| &run.at_s[..]);
    let (first_s, last_s) = (at.first().unwrap_or(&0), at.last().unwrap_or(&0));
    let mut t = format!(
        "| resumption | RSS at {first_s} s (MiB) | RSS at {last_s} s (MiB) | growth | RSS at each sample (MiB) | commands answered | target |\n\
         | --- | ---: | ---: | ---: | --- | ---: | --- |\n",
    );
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let pct = MEMORY_GROWTH_TARGET * 100.0;
    for run in &m.modes {
        let (name, target) = match run.mode.as_str() {
            "live" => ("live replay", format!("within ±{pct:.0} %")),
            "replay" => (
                "replay at takeover (full history)",
                format!("> +{pct:.0} %"),
            ),
            other => (other, "–".to_owned()),
        };
        let samples: Vec<String> = (run.at_s.iter().zip(&run.rss_bytes))
            .map(|(at, &bytes)| format!("{at} s: {:.1}", mib(bytes)))
            .collect();
        let first = run.rss_bytes.first().copied().unwrap_or(0);
        let last = run.rss_bytes.last().copied().unwrap_or(0);
        let _ = writeln!(
            t,
            "| {name} | {:.1} | {:.1} | {:+.1} % | {} | {} | {target}: {} |",
            mib(first),
            mib(last),
            run.growth() * 100.0,
            samples.join(", "),
            thousands(run.commands as usize),
            verdict(meets_memory_target(run)),
        );
    }
    t
}

/// The whole takeover's target, handoff and live replay alike, in milliseconds.
const TAKEOVER_TARGET_MS: f64 = 500.0;

/// The takeover part of the resume section: its own run facts and one row
/// per mode.
fn render_resume_takeover(t: &ResumeTakeover) -> String {
    let n = thousands(t.connections);
    let checked = match t.checked == t.connections {
        true => "every connection".to_owned(),
        false => format!(
            "{} of the connections (evenly spread)",
            thousands(t.checked)
        ),
    };
    let method = format!(
        "IPv4, a fresh client/standby/primary topology per run, the two modes alternating run \
         by run. Handoff: the primary runs the echo example, the standby `connmirror standby \
         --service IP:PORT=full` (TC ingress on both links) with the echo example registered \
         on its handoff socket. Live replay: the primary runs redis-server on the service \
         address, the standby `--service IP:PORT --resume IP:PORT=live:127.0.0.1:7001` with \
         its own redis-server on loopback (both with `--maxclients` above the connection \
         count). The client opens {n} connections through the standby and sends nothing; \
         the run waits (no fixed sleep) until the standby's /metrics shows {n} flows \
         `connmirror_flows{{readiness=\"ready\"}}` and, for live replay, {n} \
         `connmirror_live_connections{{state=\"protected\"}}` with {n} instance connections \
         established in its namespace (`ready` is that wait, from the first connect). The \
         primary dies (link down, then SIGKILL), and `connmirror takeover` runs by hand. \
         Whole takeover = the sum of every step of its report (quiesce to resume); restore = \
         its `restore` and `leave-repair` steps; resume = its `resume` step (handing every \
         socket to the echo example, or taking every live instance connection and splicing \
         it). Every takeover must restore and resume all {n} connections. Then {checked} \
         sends one request (a byte the echo example must echo; `PING`, which the instance \
         must answer `+PONG`), each checked exactly."
    );
    let mut s = format!("### Resume: whole takeover, {n} idle connections\n\n");
    s.push_str(&t.info.render(&method));
    let how = if t.overrides.is_empty() {
        "the defaults".to_owned()
    } else {
        let set: Vec<String> = t.overrides.iter().map(|o| format!("`{o}`")).collect();
        format!("set by {}, instead of the defaults", set.join(" "))
    };
    let _ = writeln!(s, "- runs: {} of each mode ({how})", t.runs);
    s.push('\n');
    s.push_str(&takeover_table(t));
    let met = (t.modes.iter()).all(|m| median(&m.takeover_ms) < TAKEOVER_TARGET_MS);
    let _ = writeln!(
        s,
        "\nTarget: the whole takeover of {n} idle connections, resume included, under \
         {TAKEOVER_TARGET_MS:.0} ms (median) for every mode: {}.",
        verdict(met)
    );
    s
}

/// One row per mode: the whole takeover per run, its median and max, the
/// median restore and resume steps and readiness, and the target.
fn takeover_table(t: &ResumeTakeover) -> String {
    let mut s = String::from(
        "| resumption | runs: whole takeover (ms) | median (ms) | max (ms) | restore step, median (ms) | resume step, median (ms) | ready, median (s) | target |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for m in &t.modes {
        let runs: Vec<String> = m.takeover_ms.iter().map(|ms| format!("{ms:.1}")).collect();
        let name = match m.mode.as_str() {
            "handoff" => "handoff (echo example)",
            "live" => "live replay (redis-server)",
            other => other,
        };
        let whole = median(&m.takeover_ms);
        let _ = writeln!(
            s,
            "| {name} | {} | {whole:.1} | {:.1} | {:.1} | {:.1} | {:.1} | < {TAKEOVER_TARGET_MS:.0}: {} |",
            runs.join(", "),
            quantile(&m.takeover_ms, 1.0),
            median(&m.restore_ms),
            median(&m.resume_ms),
            median(&m.ready_ms) / 1e3,
            verdict(whole < TAKEOVER_TARGET_MS),
        );
    }
    s
}

/// The live instance's target: its requests per second over those without
/// it, for every test.
const COST_RATIO_TARGET: f64 = 0.9;

/// The cost part of the resume section: its own run facts, a table per
/// test, and what live replay counted in each live round.
fn render_resume_cost(c: &ResumeCost) -> String {
    let method = format!(
        "IPv4, a fresh client/standby/primary topology per run: the primary runs redis-server \
         on the service address; the standby (`connmirror standby`, TC ingress on both links, \
         no failure detection, no failover) captures the same traffic in both configurations, \
         which differ only in the live instance: `--service IP:PORT` alone (resume by handoff, \
         the default; the standby's redis-server is stopped and nothing listens on the handoff \
         side) against `--service IP:PORT --resume IP:PORT=live:127.0.0.1:7001` with its \
         redis-server on loopback. The client runs `{} -h SERVICE -p 7000` ({}), fixed keys \
         (no `-r`), each run bounded by a timeout; the two configurations alternate round by \
         round. The ratio is the median requests per second with the live instance over the \
         median without it. After each live round, before the standby stops, \
         `connmirror_live_divergences_total` and `connmirror_live_unprotected_total` are read \
         from its /metrics: 8 connections run INCR on one key, and the standby's instance sees \
         their commands in the order they were captured, which need not be the primary's \
         order, so INCR replies can differ (a divergent connection goes on on the primary; a \
         takeover would reset it).",
        c.load, c.version
    );
    let mut s =
        String::from("### Resume: cost on the protected path, live instance against none\n\n");
    s.push_str(&c.info.render(&method));
    let how = if c.overrides.is_empty() {
        "the default".to_owned()
    } else {
        let set: Vec<String> = c.overrides.iter().map(|o| format!("`{o}`")).collect();
        format!("set by {}, instead of the default", set.join(" "))
    };
    let _ = writeln!(s, "- rounds: {} of each configuration ({how})", c.rounds);
    s.push('\n');
    s.push_str(&cost_table(c));
    s.push('\n');
    s.push_str(&live_rounds_table(&c.live_rounds));
    let met = c.tests.iter().all(|t| t.ratio() >= COST_RATIO_TARGET);
    let divergences: u64 = c.live_rounds.iter().map(|r| r.divergences).sum();
    let unprotected: u64 = c.live_rounds.iter().map(LiveRound::unprotected_total).sum();
    let _ = writeln!(
        s,
        "\nTarget: live / no live ≥ {COST_RATIO_TARGET} for every test: {}. Over the {} live \
         rounds, {divergences} connections diverged and {unprotected} became unprotected.",
        verdict(met),
        c.live_rounds.len()
    );
    s
}

/// One row per test: the median requests per second of each configuration,
/// the runs, and the ratio against [`COST_RATIO_TARGET`].
fn cost_table(c: &ResumeCost) -> String {
    let mut t = String::from(
        "| test | no live instance (req/s, median) | live instance (req/s, median) | live / no live | runs (no live; live) | target |\n\
         | --- | ---: | ---: | ---: | --- | --- |\n",
    );
    let runs = |rps: &[f64]| -> String {
        let runs: Vec<String> = rps.iter().map(|r| thousands(r.round() as usize)).collect();
        runs.join(", ")
    };
    for test in &c.tests {
        let ratio = test.ratio();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {ratio:.2} | {}; {} | ≥ {COST_RATIO_TARGET}: {} |",
            test.test,
            thousands(median(&test.no_live_rps).round() as usize),
            thousands(median(&test.live_rps).round() as usize),
            runs(&test.no_live_rps),
            runs(&test.live_rps),
            verdict(ratio >= COST_RATIO_TARGET),
        );
    }
    t
}

/// One row per live round: the connections live replay found divergent or
/// left unprotected (by reason).
fn live_rounds_table(rounds: &[LiveRound]) -> String {
    let mut t = String::from(
        "| live round | connections diverged | connections unprotected |\n| ---: | ---: | --- |\n",
    );
    for (n, round) in rounds.iter().enumerate() {
        let reasons: Vec<String> = (round.unprotected.iter())
            .filter(|&(_, &count)| count > 0)
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        let unprotected = match reasons.is_empty() {
            true => "0".to_owned(),
            false => format!("{} ({})", round.unprotected_total(), reasons.join(", ")),
        };
        let _ = writeln!(t, "| {} | {} | {unprotected} |", n + 1, round.divergences);
    }
    t
}

/// Whether a live-replay stall sample meets [`LIVE_P99_TARGET_MS`].
fn meets_live_target(stall_ms: &[f64]) -> bool {
    quantile(stall_ms, 0.99) < LIVE_P99_TARGET_MS
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// One row per (mode, age): the stall's p50, p99 and max over the runs, and
/// the median resume step.
fn resume_table(r: &ResumeResults) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| resumption | age | runs | commands per connection at death | stall p50 (ms) | stall p99 (ms) | stall max (ms) | resume step p50 (ms) | target |"
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for cell in &r.cells {
        let (mode, target) = match cell.mode.as_str() {
            "live" => {
                let met = verdict(meets_live_target(&cell.stall_ms));
                (
                    "live replay",
                    format!("p99 < {LIVE_P99_TARGET_MS:.0}: {met}"),
                )
            }
            "replay" => ("replay at takeover", "–".to_owned()),
            other => (other, "–".to_owned()),
        };
        let commands = median_of(&cell.commands, |&c| c as f64);
        let _ = writeln!(
            t,
            "| {mode} | {} s | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {target} |",
            cell.age_s,
            cell.stall_ms.len(),
            thousands(commands.round() as usize),
            quantile(&cell.stall_ms, 0.5),
            quantile(&cell.stall_ms, 0.99),
            quantile(&cell.stall_ms, 1.0),
            median(&cell.resume_ms),
        );
    }
    t
}

/// Candidate detection settings: (interval ms, missed), fastest first. A
/// run shows those whose interval is at least its own: below it, every gap
/// is longer than the interval by construction.
const DETECTION_SETTINGS: [(u64, u64); 7] = [
    (10, 3),
    (20, 2),
    (20, 3),
    (25, 2),
    (25, 3),
    (50, 3),
    (100, 3),
];

fn render_heartbeats(r: &HeartbeatResults) -> String {
    let (interval, seconds) = (r.interval_ms, r.loaded_seconds);
    let failover = match r.false_takeovers {
        Some(_) => "auto",
        None => "manual",
    };
    let method = format!(
        "IPv4, one client/gateway/primary topology. The primary runs the echo example and \
         `connmirror agent --interval {interval}` in on-host mode (capturing and replicating \
         asynchronously to the standby); the gateway runs `connmirror standby \
         --heartbeat-listen ... --heartbeat-interval {interval} --missed 3 --failover \
         {failover}`. Load: iperf3 -P 8 client → primary for {seconds} s, so the two cores \
         are shared by iperf3, the forwarding softirqs, the agent and the standby. The gaps \
         are the standby's `connmirror_heartbeat_gap_seconds` (time between consecutive \
         valid heartbeats), scraped at the end. A setting `--heartbeat-interval I --missed \
         M` declares the primary lost after about I × M without a heartbeat (checked every \
         I/2): each gap longer than that would have been a false takeover."
    );
    let mut s = String::from("## Heartbeats: lateness under load\n\n");
    s.push_str(&r.info.render(&method));
    let total: u64 = r.buckets.iter().map(|&(_, n)| n).sum();
    let _ = writeln!(
        s,
        "\n{total} gaps while iperf3 moved {:.1} Gbit/s.\n",
        r.gbps
    );
    if let Some(n) = r.false_takeovers {
        let _ = writeln!(
            s,
            "False takeovers in the {} s loaded run (deaths the standby declared at \
             `--heartbeat-interval {} --missed 3`): {n}.\n",
            r.loaded_seconds, r.interval_ms
        );
    }
    let _ = writeln!(s, "| gap ≤ (ms) | gaps | cumulative |");
    let _ = writeln!(s, "| ---: | ---: | ---: |");
    let mut seen = 0;
    for &(bound, n) in &r.buckets {
        seen += n;
        let bound = match bound.is_finite() {
            true => format!("{:.0}", bound * 1e3),
            false => "+Inf".to_owned(),
        };
        let share = seen as f64 / total.max(1) as f64 * 100.0;
        let _ = writeln!(s, "| {bound} | {n} | {share:.4} % |");
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "| setting | declares lost after (ms) | gaps longer (false takeovers) | detection (ms, I × M to I × M + I/2) |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    for (interval, missed) in DETECTION_SETTINGS
        .into_iter()
        .filter(|s| s.0 >= r.interval_ms)
    {
        let after = interval * missed;
        let longer: u64 = (r.buckets.iter())
            .filter(|&&(bound, _)| bound * 1e3 > after as f64 + 1e-9)
            .map(|&(_, n)| n)
            .sum::<u64>();
        let _ = writeln!(
            s,
            "| `--heartbeat-interval {interval} --missed {missed}` | {after} | ≤ {longer} | {after}–{} |",
            after + interval / 2
        );
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run's facts with fixed values.
    pub(crate) fn info() -> RunInfo {
        RunInfo {
            command: "`cargo xtask bench`".into(),
            date: "2026-11-26 04:00 UTC".into(),
            commit: "abc1234".into(),
            dirty: false,
            kernel: "6.18.44".into(),
            cpu: "AMD EPYC".into(),
            cores: 2,
            seconds: 61.4,
        }
    }

    fn run(gbps: f64) -> Sample {
        Sample {
            gbps,
            retransmits: 10,
            host_busy: 70.0,
            ..Sample::default()
        }
    }

    /// A capture result: baseline 8 and 6 Gbit/s, tc 4 and 2, tcpdump 7.
    pub(crate) fn capture() -> CaptureResults {
        let mirrored = |gbps| Sample {
            mirror: Some(MirrorSample {
                flows: 2,
                cpu_percent: 12.0,
                attach: "tc-ingress".into(),
                ..MirrorSample::default()
            }),
            ..run(gbps)
        };
        let dumped = Sample {
            tcpdump: Some(TcpdumpSample {
                captured: 900,
                dropped: 100,
                file_bytes: 2_500_000_000,
                cpu_percent: 40.0,
            }),
            ..run(7.0)
        };
        let config = |name: &str, capturer, runs| ConfigRuns {
            name: name.into(),
            short: name.into(),
            capturer,
            note: String::new(),
            streams: 1,
            runs,
        };
        CaptureResults {
            info: info(),
            iperf: "iperf 3.12".into(),
            iperf_seconds: 10,
            rounds: 2,
            configs: vec![
                config("baseline", Capturer::None, vec![run(8.0), run(6.0)]),
                config(
                    "tc in",
                    Capturer::Mirror,
                    vec![mirrored(4.0), mirrored(2.0)],
                ),
                config("tcpdump -w", Capturer::Tcpdump, vec![dumped]),
                ConfigRuns {
                    streams: 8,
                    ..config("baseline -P 8", Capturer::None, vec![run(10.0)])
                },
                ConfigRuns {
                    streams: 8,
                    ..config("tc in -P 8", Capturer::Mirror, vec![mirrored(9.0)])
                },
            ],
        }
    }

    /// A failover result over 1 and 10,000 connections.
    pub(crate) fn failover() -> FailoverResults {
        FailoverResults {
            info: info(),
            restores: vec![
                RestoreSample {
                    connections: 1,
                    restore_ms: 0.1,
                    takeover_ms: 0.4,
                },
                RestoreSample {
                    connections: 10_000,
                    restore_ms: 220.0,
                    takeover_ms: 1222.0,
                },
            ],
            first_byte: vec![FirstByte {
                mode: "unsent".into(),
                ms: vec![8.0, 9.0, 30.0],
            }],
        }
    }

    /// Each setting's false takeovers are the gaps in the buckets past its
    /// I × M: an upper bound, since a bucket spans its whole range.
    #[test]
    fn the_heartbeat_section_counts_the_gaps_each_setting_would_have_taken_for_a_death() {
        let r = HeartbeatResults {
            info: info(),
            loaded_seconds: 600,
            interval_ms: 10,
            gbps: 12.5,
            false_takeovers: Some(0),
            buckets: vec![
                (0.01, 100),
                (0.02, 50),
                (0.05, 3),
                (0.1, 1),
                (f64::INFINITY, 0),
            ],
        };
        let text = render_heartbeats(&r);
        assert!(
            text.contains("\n154 gaps while iperf3 moved 12.5 Gbit/s.\n"),
            "{text}"
        );
        assert!(text.contains("| 50 | 3 | 99.3506 % |"), "{text}");
        assert!(
            text.contains(
                "False takeovers in the 600 s loaded run (deaths the standby declared at \
                 `--heartbeat-interval 10 --missed 3`): 0.\n"
            ),
            "{text}"
        );
        for row in [
            "| `--heartbeat-interval 10 --missed 3` | 30 | ≤ 4 | 30–35 |",
            "| `--heartbeat-interval 20 --missed 3` | 60 | ≤ 1 | 60–70 |",
            "| `--heartbeat-interval 50 --missed 3` | 150 | ≤ 0 | 150–175 |",
        ] {
            assert!(text.contains(row), "{row} in {text}");
        }
    }

    /// An ownership result of 1..=100 ms.
    pub(crate) fn ownership() -> OwnershipResults {
        OwnershipResults {
            info: info(),
            ms: (1..=100).map(f64::from).collect(),
            etcd_ms: (101..=130).map(f64::from).collect(),
            interval_ms: 25,
            etcd_interval_ms: 25,
        }
    }

    /// A resume result at 2 and 120 s: live replay 1..=20 ms and 100..=2000
    /// ms (over its target), replay 10 ms to 3 s.
    pub(crate) fn resume() -> ResumeResults {
        let cell = |mode: &str, age_s, stall_ms: Vec<f64>| ResumeRuns {
            mode: mode.into(),
            age_s,
            resume_ms: stall_ms.iter().map(|ms| ms / 10.0).collect(),
            commands: vec![age_s * 1_000; stall_ms.len()],
            stall_ms,
        };
        ResumeResults {
            info: info(),
            clients: 8,
            runs: 20,
            ages: vec![2, 120],
            overrides: vec!["CONNMIRROR_BENCH_RESUME_AGES=2,120".into()],
            cells: vec![
                cell("live", 2, (1..=20).map(f64::from).collect()),
                cell(
                    "live",
                    120,
                    (1..=20).map(|ms| f64::from(ms) * 100.0).collect(),
                ),
                cell("replay", 2, vec![10.0, 30.0, 20.0]),
                cell("replay", 120, vec![3000.0]),
            ],
            cost: None,
            splice: None,
            takeover: None,
            memory: None,
        }
    }

    /// A cost result of 3 rounds: SET keeps 0.95 of its rate with the live
    /// instance, INCR 0.8; the second live round saw 2 divergences and one
    /// connection unprotected for lag.
    pub(crate) fn resume_cost() -> ResumeCost {
        let lagged = [
            ("instance-lag".to_owned(), 1),
            ("instance-down".to_owned(), 0),
        ];
        ResumeCost {
            info: info(),
            load: "redis-benchmark -P 16 -c 8 -n 200000 -t set,incr -q --csv".into(),
            version: "redis-benchmark 7.0.15".into(),
            rounds: 3,
            overrides: vec!["CONNMIRROR_BENCH_RESUME_COST_ROUNDS=3".into()],
            tests: vec![
                CostTest {
                    test: "SET".into(),
                    no_live_rps: vec![100_000.0, 300_000.0, 200_000.0],
                    live_rps: vec![190_000.0, 90_000.0, 400_000.0],
                },
                CostTest {
                    test: "INCR".into(),
                    no_live_rps: vec![100_000.0, 100_000.0, 100_000.0],
                    live_rps: vec![80_000.0, 80_000.0, 80_000.0],
                },
            ],
            live_rounds: vec![
                LiveRound::default(),
                LiveRound {
                    divergences: 2,
                    unprotected: lagged.into_iter().collect(),
                },
                LiveRound::default(),
            ],
        }
    }

    /// A takeover result of 10,000 connections, 3 runs per mode: handoff
    /// over its target, live replay within it.
    pub(crate) fn resume_takeover() -> ResumeTakeover {
        let runs = |mode: &str, takeover_ms: Vec<f64>| TakeoverRuns {
            mode: mode.into(),
            restore_ms: takeover_ms.iter().map(|ms| ms / 4.0).collect(),
            resume_ms: takeover_ms.iter().map(|ms| ms / 2.0).collect(),
            ready_ms: vec![2_500.0, 3_000.0, 2_000.0],
            takeover_ms,
        };
        ResumeTakeover {
            info: info(),
            connections: 10_000,
            runs: 3,
            checked: 10_000,
            overrides: Vec::new(),
            modes: vec![
                runs("handoff", vec![1_600.0, 1_400.0, 1_500.0]),
                runs("live", vec![300.0, 520.0, 200.0]),
            ],
        }
    }

    /// A memory result of 60 s: live replay flat (+5 %), replay doubling.
    pub(crate) fn resume_memory() -> ResumeMemory {
        let run = |mode: &str, rss_mib: [u64; 3]| MemoryRuns {
            mode: mode.into(),
            at_s: vec![10, 30, 60],
            rss_bytes: rss_mib.iter().map(|mib| mib << 20).collect(),
            commands: 1_200_000,
        };
        ResumeMemory {
            info: info(),
            clients: 100,
            seconds: 60,
            overrides: Vec::new(),
            modes: vec![run("live", [40, 41, 42]), run("replay", [100, 150, 200])],
        }
    }

    /// The memory table: RSS at the first and last samples, the growth and
    /// each mode's target (live within 10 %, replay growing); the section
    /// follows the others and is judged on both modes.
    #[test]
    fn resume_memory_judges_live_flat_and_replay_growing() {
        let mut memory = resume_memory();
        let rows: Vec<String> = (memory_table(&memory).lines()).map(String::from).collect();
        assert_eq!(
            rows,
            [
                "| resumption | RSS at 10 s (MiB) | RSS at 60 s (MiB) | growth | RSS at each sample (MiB) | commands answered | target |",
                "| --- | ---: | ---: | ---: | --- | ---: | --- |",
                "| live replay | 40.0 | 42.0 | +5.0 % | 10 s: 40.0, 30 s: 41.0, 60 s: 42.0 | 1,200,000 | within ±10 %: met |",
                "| replay at takeover (full history) | 100.0 | 200.0 | +100.0 % | 10 s: 100.0, 30 s: 150.0, 60 s: 200.0 | 1,200,000 | > +10 %: met |",
            ]
        );
        let target = "Target: live replay's RSS at the end within 10 % of its RSS at the first \
                      sample, while replay's full history grows";
        let page = |memory: &ResumeMemory| {
            Results {
                resume: Some(ResumeResults {
                    memory: Some(memory.clone()),
                    takeover: Some(resume_takeover()),
                    ..resume()
                }),
                ..Results::default()
            }
            .render()
        };
        let met = page(&memory);
        let section = &met[met
            .find("### Resume: memory, 100 connections streaming for 60 s")
            .expect("memory section")..];
        assert!(!section.contains("### Resume: whole takeover"), "last");
        assert!(section.contains("- length: 60 s (the default)"));
        assert!(section.contains(&format!("{target}: met.")), "{section}");
        memory.modes[0].rss_bytes[2] = 45 << 20;
        assert!(page(&memory).contains(&format!("{target}: missed.")));
    }

    /// A `resume.json` written before the memory part existed loads, with
    /// no memory result, and renders without its section.
    #[test]
    fn resume_json_without_memory_loads() {
        let mut json = serde_json::to_value(resume()).unwrap();
        assert_eq!(json.as_object_mut().unwrap().remove("memory"), None);
        let old: ResumeResults = serde_json::from_value(json).unwrap();
        assert_eq!(old, resume());
        let page = Results {
            resume: Some(old),
            ..Results::default()
        }
        .render();
        assert!(page.contains("## Resume: stall against connection age"));
        assert!(!page.contains("### Resume: memory"));
    }

    /// The takeover table: every run, the median judged against 500 ms per
    /// mode, the steps' medians; the verdict misses when one mode does.
    #[test]
    fn resume_takeover_judges_each_mode_on_its_median() {
        let page = Results {
            resume: Some(ResumeResults {
                takeover: Some(resume_takeover()),
                ..resume()
            }),
            ..Results::default()
        }
        .render();

        let section = &page[page
            .find("### Resume: whole takeover, 10,000 idle")
            .unwrap()..];
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            rows[2..],
            [
                "| handoff (echo example) | 1600.0, 1400.0, 1500.0 | 1500.0 | 1600.0 | 375.0 | 750.0 | 2.5 | < 500: missed |",
                "| live replay (redis-server) | 300.0, 520.0, 200.0 | 300.0 | 520.0 | 75.0 | 150.0 | 2.5 | < 500: met |",
            ]
        );
        assert!(section.contains("- runs: 3 of each mode (the defaults)"));
        assert!(section.contains("Then every connection sends one request"));
        assert!(section.contains(
            "Target: the whole takeover of 10,000 idle connections, resume included, under \
             500 ms (median) for every mode: missed."
        ));
    }

    /// The cost table: medians, the ratio judged against 0.9 per test, the
    /// counts of every live round, and the verdict over all of them.
    #[test]
    fn resume_cost_judges_each_test_and_reports_divergences() {
        let cost = resume_cost();
        let rows: Vec<String> = cost_table(&cost)
            .lines()
            .skip(2)
            .map(String::from)
            .collect();
        assert_eq!(
            rows,
            [
                "| SET | 200,000 | 190,000 | 0.95 | 100,000, 300,000, 200,000; 190,000, 90,000, 400,000 | ≥ 0.9: met |",
                "| INCR | 100,000 | 80,000 | 0.80 | 100,000, 100,000, 100,000; 80,000, 80,000, 80,000 | ≥ 0.9: missed |",
            ]
        );
        let rounds: Vec<String> = (live_rounds_table(&cost.live_rounds).lines())
            .skip(2)
            .map(String::from)
            .collect();
        assert_eq!(
            rounds,
            [
                "| 1 | 0 | 0 |",
                "| 2 | 2 | 1 (1 instance-lag) |",
                "| 3 | 0 | 0 |"
            ]
        );
        let page = Results {
            resume: Some(ResumeResults {
                cost: Some(cost),
                ..resume()
            }),
            ..Results::default()
        }
        .render();
        let stall = page
            .find("## Resume: stall against connection age")
            .unwrap();
        let section = &page[page
            .find("### Resume: cost on the protected path")
            .expect("cost section")..];
        assert!(
            stall < page.len() - section.len(),
            "the cost follows the stall"
        );
        for line in [
            "- rounds: 3 of each configuration (set by `CONNMIRROR_BENCH_RESUME_COST_ROUNDS=3`, \
             instead of the default)",
            "Target: live / no live ≥ 0.9 for every test: missed. Over the 3 live rounds, 2 \
             connections diverged and 1 became unprotected.",
        ] {
            assert!(section.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        assert!(section.contains(
            "`redis-benchmark -P 16 -c 8 -n 200000 -t set,incr -q --csv -h SERVICE -p 7000`"
        ));
    }

    /// The resume table: one row per (mode, age), live replay's target
    /// judged on its p99; the page states the runs, the ages and what set them.
    #[test]
    fn resume_table_judges_live_replay_on_its_p99() {
        let table = resume_table(&resume());
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| live replay | 2 s | 20 | 2,000 | 10.0 | 20.0 | 20.0 | 1.1 | p99 < 250: met |",
                "| live replay | 120 s | 20 | 120,000 | 1000.0 | 2000.0 | 2000.0 | 105.0 | p99 < 250: missed |",
                "| replay at takeover | 2 s | 3 | 2,000 | 20.0 | 30.0 | 30.0 | 2.0 | – |",
                "| replay at takeover | 120 s | 1 | 120,000 | 3000.0 | 3000.0 | 3000.0 | 300.0 | – |",
            ]
        );
        let page = Results {
            resume: Some(resume()),
            ..Results::default()
        }
        .render();
        let section = &page[page
            .find("## Resume: stall against connection age")
            .unwrap()..];
        for line in [
            "- runs: 20 per mode and age; ages: 2 s, 120 s (set by \
             `CONNMIRROR_BENCH_RESUME_AGES=2,120`, instead of the defaults (docs/benchmarks.md))",
            "Target: live replay's p99 stall under 250 ms at every age run: missed.",
        ] {
            assert!(section.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        assert!(section.contains("- method: IPv4, a fresh client/standby/primary topology"));
    }

    /// redis-benchmark 7's `--csv` lines become (test, requests per second);
    /// anything else is an error.
    #[test]
    fn redis_benchmark_csv_parses() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\"\n\
                   \"SET\",\"840336.12\",\"0.135\",\"0.024\"\n\
                   \"INCR\",\"881057.25\",\"0.128\",\"0.024\"\n";
        assert_eq!(
            parse_redis_benchmark_csv(csv).unwrap(),
            [
                ("SET".to_owned(), 840336.12),
                ("INCR".to_owned(), 881057.25)
            ]
        );
        assert!(parse_redis_benchmark_csv("SET: 100.00 requests per second\n").is_err());
        assert!(parse_redis_benchmark_csv("\"test\",\"rps\"\n").is_err());
        assert!(parse_redis_benchmark_csv("\"test\",\"rps\"\n\"SET\",\"x\"\n").is_err());
    }

    /// Nearest-rank quantiles and the median, exactly.
    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    /// Each row of the capture table: the median, the ratio to the baseline's
    /// median, and the capturer's own columns.
    #[test]
    fn capture_table_has_ratios_to_the_baseline() {
        let table = capture_table(&capture());
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 7, "{table}");
        assert_eq!(
            rows[2],
            "| baseline | 7.00 | 1.00 | – | – | – | – | runs: 8.00, 6.00 Gbit/s; retransmits 10; host CPU busy 70 % |"
        );
        assert_eq!(
            rows[3],
            "| tc in | 3.00 | 0.43 | 0 | 0 | 0 of 4 | 12 | runs: 4.00, 2.00 Gbit/s; retransmits 10; host CPU busy 70 %; attached as tc-ingress |"
        );
        assert_eq!(
            rows[4],
            "| tcpdump -w | 7.00 | 1.00 | – | 100 | – | 40 | runs: 7.00 Gbit/s; retransmits 10; host CPU busy 70 %; 900 packets written, 10.0 % dropped by kernel, 2.50 GB file |"
        );
        // Parallel streams are judged against the baseline with as many.
        assert_eq!(
            rows[6],
            "| tc in -P 8 | 9.00 | 0.90 | 0 | 0 | 0 of 2 | 12 | runs: 9.00 Gbit/s; retransmits 10; host CPU busy 70 %; attached as tc-ingress |"
        );
    }

    /// The failover table: one row per restore measurement and per refill mode.
    #[test]
    fn failover_table_lists_restores_and_quantiles() {
        let table = failover_table(&failover());
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| restore step, 1 idle connection | 1 | 0.1 | – | – |",
                "| whole takeover, 1 idle connection | 1 | 0.4 | – | – |",
                "| restore step, 10,000 idle connections | 1 | 220.0 | – | – |",
                "| whole takeover, 10,000 idle connections | 1 | 1222.0 | – | – |",
                "| trigger → first byte, `--send-queue unsent` | 3 | 9.0 | 30.0 | 30.0 |",
            ]
        );
    }

    /// Every section states the command, date, commit, kernel and CPU, and the
    /// areas without data are left out.
    #[test]
    fn page_states_how_each_area_ran() {
        let results = Results {
            ownership: Some(ownership()),
            ..Results::default()
        };
        let page = results.render();
        assert!(page.starts_with("# Benchmark results\n"));
        assert!(!page.contains("## Capture"));
        let section = &page[page.find("## Ownership").expect("ownership section")..];
        for line in [
            "- command: `cargo xtask bench`",
            "- date: 2026-11-26 04:00 UTC (the area took 61 s)",
            "- commit: abc1234",
            "- kernel: 6.18.44",
            "- CPU: AMD EPYC, 2 cores; links: veth pairs between network namespaces",
            "| pair | 100 | 50.0 | 99.0 | 100.0 | p50 < 150, p99 < 250 |",
            "| etcd (3 members) | 30 | 115.0 | 130.0 | 130.0 | p99 < 250 |",
            "![Failover latency CDF](failover-cdf.png)",
        ] {
            assert!(section.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
    }

    /// The heartbeat area's last bucket (`+Inf`) survives a save and a load:
    /// JSON has no infinity.
    #[test]
    fn heartbeat_buckets_keep_their_infinite_bound_through_json() {
        let buckets = vec![(0.01, 5), (2.0, 1), (f64::INFINITY, 0)];
        let r = HeartbeatResults {
            info: info(),
            loaded_seconds: 600,
            interval_ms: 10,
            gbps: 11.5,
            buckets: buckets.clone(),
            false_takeovers: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("[null,0]"), "{json}");
        let back: HeartbeatResults = serde_json::from_str(&json).unwrap();
        assert_eq!(back.buckets, buckets);
    }

    /// Saved areas load back equal; a newer result replaces only its own area.
    #[test]
    fn areas_round_trip_and_update_separately() {
        let dir = std::env::temp_dir().join(format!("cm-results-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut stored = Results {
            capture: Some(capture()),
            ownership: Some(ownership()),
            resume: Some(ResumeResults {
                cost: Some(resume_cost()),
                memory: Some(resume_memory()),
                ..resume()
            }),
            ..Results::default()
        };
        stored.save(&dir).unwrap();
        assert_eq!(Results::load(&dir).unwrap(), stored);
        let mut newer = ownership();
        newer.ms = vec![5.0];
        stored.update(Results {
            ownership: Some(newer.clone()),
            ..Results::default()
        });
        assert_eq!(stored.capture, Some(capture()));
        assert_eq!(stored.resume.as_ref().unwrap().cost, Some(resume_cost()));
        assert_eq!(stored.ownership, Some(newer));
        std::fs::write(dir.join("journal.json"), "{").unwrap();
        let err = Results::load(&dir).unwrap_err();
        assert_eq!(
            format!("{err}"),
            format!("parse {}", dir.join("journal.json").display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
