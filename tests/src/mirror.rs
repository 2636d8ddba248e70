//! The `connmirror mirror` process under test, and the report it writes.
//!
//! The mirror runs in the gateway namespace (`ip netns exec NS connmirror mirror
//! ...`), prints `ready` on stdout once every program is attached, and on SIGINT
//! detaches, drains its ring buffer, writes `DIR/report.json` and exits 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use connmirror::daemon::standby::StandbySummary;
use connmirror::failover::takeover::TakeoverReport;
use connmirror_common::{Counter, Malformed};
use serde::Deserialize;

use crate::digest::Digest;
use crate::netns::Netns;
use crate::process::{
    output_with_timeout, spawn_logged, try_wait_for, wait_for_line, wait_with_timeout,
};
use crate::topology::{Family, Topology};
use crate::workdir::WorkDir;

/// How long the mirror may take to load and attach its programs.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the mirror may take, after SIGINT, to drain and write its report.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// File name of a standby's control socket in its scratch directory.
const CONTROL_SOCKET: &str = "control.sock";
/// File name of a standby's handoff socket in its scratch directory.
const HANDOFF_SOCKET: &str = "handoff.sock";

/// The arguments of `connmirror mirror`, minus `--dump-dir` and `--report` (the
/// fixtures own them).
#[derive(Clone, Debug, Default)]
pub struct MirrorCommand {
    /// `standby` instead of `mirror`.
    standby: bool,
    args: Vec<String>,
    /// Pass `--report` only, so the mirror writes no stream files.
    no_dumps: bool,
    /// Pass neither `--report` nor `--dump-dir`: the mirror keeps no flow
    /// past its close (a report would list every flow seen).
    no_report: bool,
    /// `--dump-dir` chosen by the test (kept across mirrors), instead of one in
    /// the mirror's own scratch directory.
    dump_dir: Option<PathBuf>,
    /// Run in the host's mount namespace ([`Netns::command_host_mounts`]).
    host_mounts: bool,
}

impl MirrorCommand {
    /// `connmirror mirror` with no arguments yet.
    pub fn new() -> MirrorCommand {
        MirrorCommand::default()
    }

    /// `connmirror standby` instead of `mirror`, with its control and handoff
    /// sockets in the scratch directory (see [`Mirror::control_socket`]).
    pub fn standby() -> MirrorCommand {
        MirrorCommand {
            standby: true,
            ..MirrorCommand::default()
        }
    }

    /// `--iface IF`.
    pub fn iface(self, name: &str) -> MirrorCommand {
        self.arg("--iface").arg(name)
    }

    /// `--iface IF` for each of `names`.
    pub fn ifaces<'a>(self, names: impl IntoIterator<Item = &'a str>) -> MirrorCommand {
        names.into_iter().fold(self, MirrorCommand::iface)
    }

    /// `--service IP:PORT` (IPv6 as `[addr]:port`).
    pub fn service(self, service: SocketAddr) -> MirrorCommand {
        self.arg("--service").arg(&service.to_string())
    }

    /// `--ingress auto|xdp|xdp-native|xdp-generic|tc|none`.
    pub fn ingress(self, mode: &str) -> MirrorCommand {
        self.arg("--ingress").arg(mode)
    }

    /// `--egress auto|tc|none`.
    pub fn egress(self, mode: &str) -> MirrorCommand {
        self.arg("--egress").arg(mode)
    }

    /// `--ring-size BYTES` (accepts K/M suffixes).
    pub fn ring_size(self, size: &str) -> MirrorCommand {
        self.arg("--ring-size").arg(size)
    }

    /// `--on-ring-full drop|pass`.
    pub fn on_ring_full(self, policy: &str) -> MirrorCommand {
        self.arg("--on-ring-full").arg(policy)
    }

    /// Only `--report`, no `--dump-dir`: the mirror reassembles but writes no
    /// stream files (benchmarks, where the dump's copy would be measured too).
    pub fn without_dumps(mut self) -> MirrorCommand {
        self.no_dumps = true;
        self
    }

    /// Neither `--report` nor `--dump-dir`, as a daemon runs in production:
    /// closed flows are pruned. Stop it with [`Mirror::stop_unreported`].
    pub fn without_report(mut self) -> MirrorCommand {
        self.no_report = true;
        self
    }

    /// `--dump-dir DIR` with a directory the test owns, so consecutive mirrors
    /// (a restart) write the same dump files. The report lands there too.
    pub fn dump_dir(mut self, dir: &Path) -> MirrorCommand {
        self.dump_dir = Some(dir.to_owned());
        self
    }

    /// `--pin NAME`, run in the host's mount namespace so the pins land in the
    /// host's bpffs and outlive the mirror (see [`Netns::command_host_mounts`]).
    pub fn pin(mut self, name: &str) -> MirrorCommand {
        self.host_mounts = true;
        self.arg("--pin").arg(name)
    }

    /// `--pin NAME` under `ip netns exec`, whose private mount namespace has no
    /// bpffs (for the test of the error this gives).
    pub fn pin_in_private_mounts(self, name: &str) -> MirrorCommand {
        self.arg("--pin").arg(name)
    }

    /// The command that runs `program` inside `ns` as this mirror should run.
    fn command_in(&self, ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if self.host_mounts {
            ns.command_host_mounts(program)
        } else {
            ns.command(program)
        }
    }

    /// Any other argument.
    pub fn arg(mut self, arg: &str) -> MirrorCommand {
        self.args.push(arg.to_owned());
        self
    }

    /// `flag value`, replacing the value `flag` was given before, if any.
    pub fn flag(mut self, flag: &str, value: &str) -> MirrorCommand {
        match self.args.iter().position(|a| a == flag) {
            Some(at) if at + 1 < self.args.len() => self.args[at + 1] = value.to_owned(),
            _ => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
        self
    }

    /// `mirror <args> --dump-dir DIR`, or `--report DIR/report.json` without dumps:
    /// the report lands in the same place either way. [`dump_dir`](Self::dump_dir)
    /// replaces `dump_dir`.
    fn argv(&self, dump_dir: &Path) -> Vec<String> {
        let dump_dir = self.dump_dir.as_deref().unwrap_or(dump_dir);
        let mut argv = vec![if self.standby { "standby" } else { "mirror" }.to_owned()];
        argv.extend(self.args.iter().cloned());
        if self.standby {
            let dir = dump_dir.parent().expect("dump dir inside the scratch dir");
            for (flag, name) in [("--control", CONTROL_SOCKET), ("--handoff", HANDOFF_SOCKET)] {
                argv.push(flag.to_owned());
                argv.push(dir.join(name).display().to_string());
            }
        }
        if self.no_report {
            return argv;
        }
        if self.no_dumps {
            argv.push("--report".to_owned());
            argv.push(dump_dir.join("report.json").display().to_string());
        } else {
            argv.push("--dump-dir".to_owned());
            argv.push(dump_dir.display().to_string());
        }
        argv
    }
}

/// A running mirror. Stop it with [`Mirror::stop`]; dropping it instead kills it
/// (SIGKILL), as happens when a test panics.
#[derive(Debug)]
pub struct Mirror {
    child: Option<Child>,
    what: String,
    /// `None` only after [`Mirror::stop`] handed it out.
    dir: Option<WorkDir>,
    /// The `--dump-dir` the command chose, if it chose one.
    dump_dir: Option<PathBuf>,
}

impl Mirror {
    /// Starts `connmirror` ([`crate::connmirror_bin`]) inside `ns` and waits until it
    /// prints `ready`. Panics with its stderr if it exits first or takes longer than
    /// [`READY_TIMEOUT`].
    pub fn start(ns: &Netns, command: &MirrorCommand) -> Mirror {
        let bin = crate::connmirror_bin();
        let dir = WorkDir::new("mirror");
        let dump_dir = dir.path().join("dump");
        std::fs::create_dir(&dump_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", dump_dir.display()));
        let stderr_path = dir.path().join("mirror.stderr");
        let mut cmd = command.command_in(ns, &bin);
        cmd.args(command.argv(&dump_dir));
        let (child, what, lines) = spawn_logged(&mut cmd, &stderr_path);
        let mut mirror = Mirror {
            child: Some(child),
            what,
            dir: Some(dir),
            dump_dir: command.dump_dir.clone(),
        };
        match wait_for_line(&lines, READY_TIMEOUT, |line| line.trim() == "ready") {
            Ok(_) => mirror,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "`{}` did not print `ready` within {READY_TIMEOUT:?}; stderr:\n{}",
                    mirror.what,
                    mirror.stderr()
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let child = mirror.child.as_mut().expect("running");
                let status = try_wait_for(child, Duration::from_secs(5));
                panic!(
                    "`{}` closed stdout without printing `ready` (exit: {status:?}); stderr:\n{}",
                    mirror.what,
                    mirror.stderr()
                )
            }
        }
    }

    /// The daemon's process id (for tests that pause it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The standby's `--control` socket.
    pub fn control_socket(&self) -> PathBuf {
        self.dir().join(CONTROL_SOCKET)
    }

    /// The standby's `--handoff` socket.
    pub fn handoff_socket(&self) -> PathBuf {
        self.dir().join(HANDOFF_SOCKET)
    }

    /// The directory passed as `--dump-dir`.
    pub fn dump_dir(&self) -> PathBuf {
        match &self.dump_dir {
            Some(dir) => dir.clone(),
            None => self.dir().join("dump"),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("scratch dir").path()
    }

    /// Waits (at most 30 s) until the daemon's log says `text`; panics with
    /// the log otherwise.
    pub fn wait_log(&self, text: &str) {
        let timeout = Duration::from_secs(30);
        if let Err(stderr) = crate::process::wait_for_text(|| self.stderr(), text, timeout) {
            panic!("`{}` never logged {text:?}; stderr:\n{stderr}", self.what);
        }
    }

    /// Everything the mirror wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir().join("mirror.stderr")).unwrap_or_default()
    }

    /// Sends SIGINT, waits (at most [`STOP_TIMEOUT`]) for exit status 0, and parses
    /// `report.json`. Returns the report and the mirror's scratch directory, which
    /// holds the dump files the report names (they are deleted when it drops).
    pub fn stop(mut self) -> (Report, WorkDir) {
        self.interrupt();
        let path = self.dump_dir().join("report.json");
        let report = Report::read(&path)
            .unwrap_or_else(|e| panic!("{e}; mirror stderr:\n{}", self.stderr()));
        (report, self.dir.take().expect("scratch dir"))
    }
}

impl Mirror {
    /// Sends SIGINT and waits (at most [`STOP_TIMEOUT`]) for exit status 0,
    /// for a mirror started [`without_report`](MirrorCommand::without_report).
    /// Returns its log.
    pub fn stop_unreported(mut self) -> String {
        self.interrupt();
        self.stderr()
    }

    /// Waits (at most `timeout`) for the mirror to exit on its own, as on a
    /// fatal error; returns its exit status and its log.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = wait_with_timeout(&mut child, timeout, &self.what);
        (status, self.stderr())
    }

    /// SIGINT, then exit status 0 within [`STOP_TIMEOUT`].
    fn interrupt(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill has no memory-safety preconditions; the pid is our child,
        // not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = wait_with_timeout(&mut child, STOP_TIMEOUT, &self.what);
        assert!(
            status.success(),
            "`{}` exited with {status} after SIGINT; stderr:\n{}",
            self.what,
            self.stderr()
        );
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
            if thread::panicking() {
                eprintln!("mirror stderr:\n{}", self.stderr());
            }
        }
    }
}

/// A fresh topology serving `port` over IPv4 with segmentation offloads off
/// (every skb is one MTU-sized segment, so each fits the ring), and a mirror on
/// both gateway links with the smallest ring (64 KiB) and `policy` when it is
/// full. Returns (topology, service, mirror).
pub fn tiny_ring_mirror(port: u16, policy: &str) -> (Topology, SocketAddr, Mirror) {
    let topo = Topology::new();
    topo.disable_segmentation_offloads();
    let service = topo.service(Family::V4, port);
    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service)
            .ring_size("64K")
            .on_ring_full(policy),
    );
    (topo, service, mirror)
}

/// How a mirror that was expected to fail ended.
#[derive(Debug)]
pub struct MirrorExit {
    /// The mirror's exit status.
    pub status: ExitStatus,
    /// Everything the mirror printed on stdout.
    pub stdout: String,
    /// Everything the mirror printed on stderr.
    pub stderr: String,
}

impl MirrorExit {
    /// Runs `[wrapper...] connmirror <command> --dump-dir DIR` inside `ns` to
    /// completion (at most `timeout`). `wrapper` is a program and its arguments
    /// that take the command line to run (e.g. `setpriv ...`); empty for none.
    /// `dump_dir` is passed as `--dump-dir`.
    pub fn run(
        ns: &Netns,
        wrapper: &[&str],
        command: &MirrorCommand,
        dump_dir: &Path,
        timeout: Duration,
    ) -> MirrorExit {
        let bin = crate::connmirror_bin();
        let mut cmd: Command = match wrapper.split_first() {
            None => command.command_in(ns, &bin),
            Some((program, rest)) => {
                let mut cmd = ns.command(program);
                cmd.args(rest).arg(&bin);
                cmd
            }
        };
        cmd.args(command.argv(dump_dir));
        let out = output_with_timeout(&mut cmd, timeout);
        MirrorExit {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The lines of stderr that start with `error: `.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect()
    }
}

/// `report.json`, as the mirror writes it on shutdown.
#[derive(Clone, Debug, Deserialize)]
pub struct Report {
    /// Kernel counters summed over CPUs, by [`Counter::name`].
    pub counters: BTreeMap<String, u64>,
    /// Malformed-frame counters, by [`Malformed::name`].
    pub malformed: BTreeMap<String, u64>,
    /// What userspace counted while reading the ring.
    pub userspace: Userspace,
    /// Where capture attached on each interface, and why.
    #[serde(default)]
    pub attach: Vec<AttachPoint>,
    /// Every flow seen.
    pub flows: Vec<Flow>,
    /// Journal counters, when the mirror ran with `--journal`.
    #[serde(default)]
    pub journal: Option<JournalSummary>,
    /// Takeovers a standby ran.
    #[serde(default)]
    pub takeovers: Vec<TakeoverReport>,
    /// What a standby's sockets rejected.
    #[serde(default)]
    pub standby: Option<StandbySummary>,
}

/// Where capture attached on one interface, and why (report.json `attach`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AttachPoint {
    /// The interface.
    pub iface: String,
    /// The ingress hook as attached: `xdp-native`, `xdp-generic`, `tc` or `none`.
    pub ingress: String,
    /// Why that ingress hook.
    pub ingress_why: String,
    /// The egress hook: `tc` or `none`.
    pub egress: String,
    /// Why that egress hook.
    pub egress_why: String,
}

/// What the mirror's journal wrote (report.json `journal`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct JournalSummary {
    /// Records appended.
    pub records: u64,
    /// Bytes appended, framing included.
    pub bytes: u64,
    /// `fdatasync` calls on segment files.
    pub fsyncs: u64,
    /// Slowest `fdatasync`, in microseconds.
    pub max_fsync_us: u64,
}

/// What userspace counted while reading the ring.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct Userspace {
    /// Records read from the ring.
    pub records: u64,
    /// Records that failed to decode.
    pub decode_errors: u64,
}

/// One TCP connection the mirror saw.
#[derive(Clone, Debug, Deserialize)]
pub struct Flow {
    /// Journal-wide flow id.
    pub id: u64,
    /// Whether a restore could rebuild the flow now.
    pub readiness: Readiness,
    /// Present with `missing-bytes` only.
    #[serde(default)]
    pub ranges: Vec<MissingRange>,
    /// The service's address.
    pub server: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
    /// Id of the service the flow matched (the `SERVICES` map's value).
    pub service_id: u32,
    /// Where the flow's capture stands.
    pub status: FlowStatus,
    /// Both SYNs were seen, so the streams' origins are known exactly.
    pub handshake: bool,
    /// A RST was seen.
    pub rst: bool,
    /// Segments the kernel forwarded uncaptured (`pass` policy).
    pub kernel_gaps: u64,
    /// Live replay's first divergence on the flow (a standby's report, and
    /// `journal inspect` of its journal).
    #[serde(default)]
    pub divergence: Option<Divergence>,
    /// Client → server stream.
    pub c2s: DirectionDump,
    /// Server → client stream.
    pub s2c: DirectionDump,
}

/// Where live replay's instance first differed from the primary.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct Divergence {
    /// Server → client stream offset of the byte.
    pub offset: u64,
    /// The byte the primary sent.
    pub primary: u8,
    /// The byte the instance produced.
    pub instance: u8,
}

impl Flow {
    /// Asserts the capture of this flow is exactly what the peers of `x` sent:
    /// both dumps hash to the sent data, every byte delivered, no hole, no
    /// conflicting byte, both directions complete (FIN reached).
    pub fn assert_byte_exact(&self, x: &crate::Exchange) {
        for (name, dump, sender) in [("c2s", &self.c2s, &x.client), ("s2c", &self.s2c, &x.server)] {
            assert_eq!(dump.delivered, sender.sent_bytes, "{name}: {self:#?}");
            assert!(dump.holes.is_empty(), "{name}: {self:#?}");
            assert_eq!(dump.conflicting_bytes, 0, "{name}: {self:#?}");
            assert!(dump.complete, "{name}: {self:#?}");
            assert_eq!(dump.sha256(), sender.sent, "{name} dump {:?}", dump.file);
        }
    }
}

/// A flow's state when the mirror stopped.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    /// FIN seen and every byte delivered both ways with no gap.
    Complete,
    /// Still open, nothing missing so far.
    Open,
    /// Ended by a RST; every byte the receivers acknowledged is present.
    Reset,
    /// The kernel forwarded a segment uncaptured, or a hole was given up.
    Gapped,
}

/// One direction of a flow, as dumped.
#[derive(Clone, Debug, Deserialize)]
pub struct DirectionDump {
    /// Absolute path of the file holding the reassembled bytes (`None` when the
    /// mirror ran without `--dump-dir`, and always in `journal inspect`).
    pub file: Option<PathBuf>,
    /// Where the dump file stops because a hole was given up.
    pub dump_stopped_at: Option<u64>,
    /// Bytes reassembled in order.
    pub delivered: u64,
    /// FIN seen and every byte before it present.
    pub complete: bool,
    /// Ranges not captured, as stream offsets `[start, end)`, including bytes
    /// still in flight.
    pub holes: Vec<[u64; 2]>,
    /// The part of `holes` the receiver acknowledged: bytes it has that the
    /// capture lacks. Nonempty means the flow is gapped.
    pub missing: Vec<[u64; 2]>,
    /// Marks of the segments this side sent.
    pub state: TcpState,
    /// Full retention went over its cap: the history is incomplete, so the flow
    /// can be handed off but not replayed.
    pub handoff_only: bool,
    /// Payload bytes held in memory (retained plus out of order).
    pub retained: u64,
    /// Highest stream offset the receiver acknowledged.
    pub acked: u64,
    /// Overlapping bytes that differed from the first copy.
    pub conflicting_bytes: u64,
}

impl DirectionDump {
    /// SHA-256 of the dump file; panics when the mirror wrote none.
    pub fn sha256(&self) -> Digest {
        let file = self.file.as_ref().unwrap_or_else(|| {
            panic!("no dump file in the report (mirror ran without --dump-dir): {self:?}")
        });
        Digest::of_file(file)
    }
}

impl Report {
    /// Reads and parses `path`, checking that every [`Counter::ALL`] and
    /// [`Malformed::ALL`] name is present.
    pub fn read(path: &Path) -> Result<Report, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Report::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses report JSON; see [`Report::read`].
    pub fn parse(text: &str) -> Result<Report, String> {
        let report: Report = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let missing: Vec<&str> = Counter::ALL
            .iter()
            .map(|c| c.name())
            .filter(|name| !report.counters.contains_key(*name))
            .chain(
                Malformed::ALL
                    .iter()
                    .map(|m| m.name())
                    .filter(|name| !report.malformed.contains_key(*name)),
            )
            .collect();
        if missing.is_empty() {
            Ok(report)
        } else {
            Err(format!("report lacks counters {missing:?}"))
        }
    }

    /// Asserts what the `drop` policy guarantees: every full-ring event was a
    /// backpressure drop (TCP resends the segment), none a gap.
    pub fn assert_drop_policy_held(&self) {
        assert_eq!(
            self.counter(Counter::BackpressureDrops),
            self.counter(Counter::RingFull),
            "{:?}",
            self.counters
        );
        assert_eq!(self.counter(Counter::GapsMarked), 0, "{:?}", self.counters);
    }

    /// A kernel counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter.name()]
    }

    /// A malformed-frame counter, summed over CPUs.
    pub fn malformed(&self, reason: Malformed) -> u64 {
        self.malformed[reason.name()]
    }

    /// The sum of all malformed-frame counters.
    pub fn malformed_total(&self) -> u64 {
        Malformed::ALL.iter().map(|&m| self.malformed(m)).sum()
    }
}

/// Whether a restore could rebuild a flow now.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// Every byte a restore would need is present.
    Ready,
    /// Bytes a restore needs are missing; [`Flow::ranges`] says which.
    MissingBytes,
    /// No handshake was seen (the flow started before capture): no ISNs or
    /// options.
    NoHandshake,
    /// Both FINs or a RST were seen: nothing to restore.
    Closed,
}

/// One missing range (`readiness: missing-bytes`), as stream offsets.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MissingRange {
    /// `c2s` or `s2c`.
    pub dir: String,
    /// First missing stream offset.
    pub start: u64,
    /// One past the last missing stream offset.
    pub end: u64,
}

/// The TCP marks of the segments one side sent.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct TcpState {
    /// The SYN (or SYN-ACK) this side sent, when it was seen.
    pub syn: Option<SynState>,
    /// One past the highest sequence number sent (data, SYN and FIN count):
    /// `snd_nxt`.
    pub next_seq: Option<u32>,
    /// Highest acknowledgment number sent: the peer's bytes this side has.
    pub ack: Option<u32>,
    /// Last advertised window, raw.
    pub window: u16,
    /// Last advertised window, scaled by this side's shift when both sides
    /// negotiated window scaling.
    pub window_scaled: u32,
    /// Highest TSval sent (in sequence-space order).
    pub tsval: Option<u32>,
    /// TSecr of the segment that carried [`tsval`](Self::tsval).
    pub tsecr: Option<u32>,
    /// A FIN was sent.
    pub fin: bool,
    /// A RST was sent.
    pub rst: bool,
}

/// What one side announced in its SYN.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct SynState {
    /// Initial sequence number.
    pub isn: u32,
    /// Maximum segment size.
    pub mss: Option<u16>,
    /// Window scale shift this side applies to the windows it advertises.
    pub window_scale: Option<u8>,
    /// SACK permitted.
    pub sack_permitted: bool,
    /// Timestamps offered.
    pub timestamps: bool,
}
