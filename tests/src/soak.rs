//! The chaos soak: protected traffic through failover after failover, with
//! faults in between, and checks after every cycle. `cargo xtask soak
//! --minutes N` runs it for N minutes (`connmirror-bench soak`, which records
//! the summary in bench/RESULTS.md); `cargo xtask test` runs two cycles
//! (`soak::` in the end-to-end tests).
//!
//! The pair is the failback tests' (`failback::`): the primary serves the echo
//! example with its agent, the standby captures inline on the gateway, detects
//! by heartbeats, takes over automatically and hands the connections back by
//! migration (`--failback migrate`) once the primary returns. Traffic never
//! pauses:
//! - four long echo streams, resumed by handoff at every takeover and moved
//!   back at every failback, verified byte for byte all along;
//! - short echo connections, one after the other (connect, 8 KiB each way,
//!   the client's FIN, the server's), each verified.
//!
//! Each cycle:
//! 1. waits until the standby protects (its peer alive at the epoch), then
//!    restarts it on its pinned capture and journal (`--pin`, a hot
//!    restart in the middle of the traffic) and waits again;
//! 2. bursts of forged heartbeats and forged control requests, which the
//!    standby must reject, every one;
//! 3. heartbeats delayed (the agent stopped with SIGSTOP for less than the
//!    detection window, then SIGCONT), then dropped for as long (an iptables
//!    rule at the standby): no takeover may follow;
//! 4. the primary host dies (its link down, the echo server and the agent
//!    killed); the standby takes over on its own;
//! 5. the primary returns rebooted (no TCP state), recovering; the standby
//!    migrates the connections back to it;
//! 6. records the standby's RSS and open files, and what moved.
//!
//! At the end: every stream byte-exact, no RST to any of them on the client's
//! link, the short connections all verified, and the summary.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache::resident_bytes;
use crate::echo::{EchoClients, EchoOptions, EchoResult, assert_exact};
use crate::failover::{
    HEARTBEAT_PORT, PrimarySetup, Program, detecting_standby_command, echo_server_in,
    forget_tcp_state, four_streams_once_armed_with, handoff_app, kill_primary_host,
    primary_returns, primary_setup, recovering_agent, resumed_lines, start_agent, status_of,
};
use crate::metrics::{DEFAULT_ENDPOINT, Scrape, scrape};
use crate::mirror::{Mirror, MirrorCommand};
use crate::netns::Netns;
use crate::pinning::PinnedInstance;
use crate::process::run_checked;
use crate::topology::{CLIENT_IF, Family, Topology};
use crate::traffic::SplitMix64;
use crate::wire::WireWatch;
use crate::workdir::WorkDir;

const PORT: u16 = 7000;
/// The standby's detection: heartbeats every 25 ms, the primary lost after 20
/// missed (500 ms), so a 200 ms stall of the agent is no death.
const INTERVAL_MS: &str = "25";
const MISSED: &str = "20";
/// The standby's `--reader-timeout`.
const READER_TIMEOUT_MS: &str = "30000";
/// How long the agent is stopped to delay its heartbeats.
const DELAY: Duration = Duration::from_millis(200);
/// Forged heartbeats sent per cycle.
const FORGED: u64 = 50;
/// Bytes each short connection sends (and reads back).
const SHORT_BYTES: usize = 8 << 10;
/// The pause before each short connection: a few hundred a second, which
/// the server's TIME_WAIT buckets and the two cores keep up with.
const SHORT_PAUSE: Duration = Duration::from_millis(2);
/// How long each step may take before the soak fails.
const STEP: Duration = Duration::from_secs(60);
/// Longest a short connection may take: a takeover or a migration holds a
/// client's segments for well under a second, and TCP's retransmissions
/// after two losses in a row still come within 4 s. A client left waiting
/// this long was stranded (a failback left its connection behind).
pub const STALLED: Duration = Duration::from_secs(20);

/// Most bytes each long stream sends in a soak: three quarters of the
/// standby's default `--history-cap` (64 MiB). Past the cap a flow keeps only
/// what its receiver has not acknowledged (`handoff_only`), so a primary
/// that dies holding client bytes it acknowledged but did not answer yet can
/// no longer be resumed byte-exact: the echo application closes such a
/// connection, as documented. A stream's whole history must stay under it.
const STREAM_BYTES: u64 = 48 << 20;

/// Each long stream's rate for a soak of `duration`: the default 64 KiB/s,
/// or less so that it sends at most [`STREAM_BYTES`].
fn stream_rate(duration: Duration) -> u64 {
    let default = EchoOptions::default().rate;
    default.min(STREAM_BYTES / duration.as_secs().max(1))
}

/// How long the soak runs.
#[derive(Clone, Copy, Debug)]
pub struct SoakOptions {
    /// Stop after this many cycles.
    pub cycles: u32,
    /// Or once this long has passed (a cycle under way completes).
    pub duration: Duration,
}

/// One cycle's outcome, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cycle {
    /// 1, 2, ...
    pub cycle: u32,
    /// The epoch the standby took over at.
    pub takeover_epoch: u64,
    /// Connections the takeover restored.
    pub restored: u64,
    /// Connections it reset: short ones caught opening or closing.
    pub reset: u64,
    /// Flows it could not restore, by reason (`closing`, `no-handshake`...).
    pub unrecoverable: BTreeMap<String, u64>,
    /// Stream bytes verified by the end of the cycle, all streams together.
    pub verified_bytes: u64,
    /// Short connections verified by the end of the cycle.
    pub short_connections: u64,
    /// Short connections failed by the end of the cycle (must stay 0).
    #[serde(default)]
    pub short_failures: u64,
    /// Short connections reset while closing, by the end of the cycle: at
    /// most the takeovers' `closing` flows so far.
    #[serde(default)]
    pub short_reset_closing: u64,
    /// The standby's resident memory and open files after the cycle.
    pub standby_rss: u64,
    /// Open files of the standby.
    pub standby_fds: u64,
    /// How long the cycle took.
    pub seconds: f64,
    /// How long the standby's hot restart left the ring unread.
    #[serde(default)]
    pub restart_seconds: f64,
}

/// What a soak did, as `cargo xtask soak` records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SoakSummary {
    /// Every cycle, in order.
    pub cycles: Vec<Cycle>,
    /// Automatic takeovers (one per cycle).
    pub failovers: u64,
    /// Failbacks by migration (one per cycle).
    pub failbacks: u64,
    /// Long streams verified byte-exact to their end.
    pub streams: u64,
    /// Short connections verified.
    pub short_connections: u64,
    /// Short connections that failed (refused, reset, or wrong bytes).
    pub short_failures: u64,
    /// The longest a short connection took, in seconds (below [`STALLED`]).
    #[serde(default)]
    pub slowest_short_seconds: f64,
    /// Bytes verified: the streams' echoes and the short connections'.
    pub verified_bytes: u64,
    /// RSTs the clients' link carried to the long streams (must be 0).
    pub rsts_to_streams: u64,
    /// RSTs it carried to other connections (short ones caught opening).
    pub rsts_to_others: u64,
    /// Forged heartbeats sent, and the standby's count of those it rejected.
    pub forged_sent: u64,
    /// The standby's rejected heartbeats.
    pub forged_rejected: u64,
    /// Takeovers the heartbeat delays caused (must be 0).
    pub false_takeovers: u64,
    /// How long the soak ran.
    pub seconds: f64,
    /// Namespaces and pins still there after it (must be none).
    #[serde(default)]
    pub leftovers: Vec<String>,
    /// The faults of each cycle, in order ([`FAULTS`]); empty in a summary
    /// recorded before they were listed.
    #[serde(default)]
    pub faults: Vec<String>,
}

/// The faults of each cycle, in order, as a summary records them.
pub const FAULTS: [&str; 7] = [
    "a standby hot restart (--pin, --journal)",
    "50 forged heartbeats",
    "50 forged control requests",
    "heartbeats delayed 200 ms (SIGSTOP of the agent)",
    "heartbeats dropped 200 ms (iptables at the standby)",
    "the primary host killed (link down, SIGKILL), an automatic takeover",
    "the primary back, recovering: a failback by migration",
];

impl SoakSummary {
    /// The standby's highest resident memory after a cycle.
    pub fn peak_rss(&self) -> u64 {
        self.cycles.iter().map(|c| c.standby_rss).max().unwrap_or(0)
    }

    /// The standby's highest open-file count after a cycle.
    pub fn peak_fds(&self) -> u64 {
        self.cycles.iter().map(|c| c.standby_fds).max().unwrap_or(0)
    }

    /// Panics unless the soak kept every promise: streams exact (checked as
    /// they finished), no RST to them, every forged heartbeat rejected, no
    /// false takeover, no short connection lost, resources flat.
    pub fn assert_held(&self) {
        assert_eq!(self.rsts_to_streams, 0, "{self:#?}");
        assert_eq!(self.forged_rejected, self.forged_sent, "{self:#?}");
        assert_eq!(self.false_takeovers, 0, "{self:#?}");
        assert_eq!(self.short_failures, 0, "{self:#?}");
        assert!(
            self.slowest_short_seconds < STALLED.as_secs_f64(),
            "a short connection stalled: {self:#?}"
        );
        assert_eq!(self.leftovers, Vec::<String>::new(), "{self:#?}");
        assert_eq!(self.failovers, self.cycles.len() as u64, "{self:#?}");
        let mut closing = 0;
        for cycle in &self.cycles {
            closing += cycle.unrecoverable.get("closing").copied().unwrap_or(0);
            check_cycle(cycle, closing);
        }
        let (first, last) = self.ends(|c| c.standby_fds);
        assert!(last <= first + 8, "open files grew: {self:#?}");
        let (first, last) = self.ends(|c| c.standby_rss);
        assert!(last <= first + (32 << 20), "RSS grew: {self:#?}");
    }

    /// The median of `of` over the first [`ENDS`] cycles and over the last
    /// ones: the standby restarts every cycle, so one cycle's sample swings
    /// by tens of MiB (what its recovery and the traffic of the moment
    /// allocated) and a growth shows only across many.
    fn ends(&self, of: impl Fn(&Cycle) -> u64) -> (u64, u64) {
        let median = |cycles: &[Cycle]| {
            let mut values: Vec<u64> = cycles.iter().map(&of).collect();
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(0)
        };
        let n = self.cycles.len().min(ENDS);
        let (first, last) = (&self.cycles[..n], &self.cycles[self.cycles.len() - n..]);
        (median(first), median(last))
    }
}

/// Cycles at each end of a soak whose median RSS and open files are compared.
const ENDS: usize = 10;

/// The pair under test and its traffic.
struct Soak {
    setup: PrimarySetup,
    /// `None` only while it restarts.
    standby: Option<Mirror>,
    /// Its command: pinned, with a journal.
    command: MirrorCommand,
    /// The standby's handoff application (registered again after a restart).
    standby_app: Option<Program>,
    /// The pinned instance the standby restarts on.
    pin: PinnedInstance,
    /// Holds the standby's journal.
    _journal: WorkDir,
    agent: Program,
    /// The primary's handoff application, once it came back.
    primary_app: Option<Program>,
    /// The echo example listening on the service address in the standby's
    /// namespace (`ip_nonlocal_bind`): once the standby owns the address it
    /// serves the new connections.
    _standby_listener: Program,
    clients: EchoClients,
    short: ShortConnections,
    watch: WireWatch,
}

/// Runs the soak; panics at the first broken promise.
pub fn run(options: SoakOptions) -> SoakSummary {
    let start = Instant::now();
    let mut soak = Soak::start(options.duration);
    let mut cycles = Vec::new();
    let mut forged = (0, 0);
    let mut false_takeovers = 0;
    let mut closing = 0;
    while cycles.is_empty()
        || cycles.len() < options.cycles as usize && start.elapsed() < options.duration
    {
        let n = cycles.len() as u32 + 1;
        let began = Instant::now();
        let epoch = 2 * u64::from(n);
        soak.wait_protected(epoch - 1);
        let restart = soak.restart_standby();
        soak.wait_protected(epoch - 1);
        forged.0 += 2 * FORGED;
        forged.1 += soak.forge_heartbeats() + soak.forge_control_requests();
        false_takeovers += soak.delay_heartbeats() + soak.drop_heartbeats();
        let takeover = soak.fail_over(epoch);
        soak.fail_back(epoch + 1);
        let mut cycle = soak.record(n, epoch, takeover, began);
        cycle.restart_seconds = restart;
        eprintln!("soak: {cycle:?}");
        closing += cycle.unrecoverable.get("closing").copied().unwrap_or(0);
        check_cycle(&cycle, closing);
        cycles.push(cycle);
    }
    let (names, pin) = (soak.topo().namespace_names(), soak.pin.dir());
    let mut summary = soak.finish(cycles, forged, false_takeovers, start);
    summary.leftovers = leftovers(&names, &pin);
    summary
}

/// What is still there of the namespaces `names` and the pinned instance
/// `pin` once the soak dropped them.
fn leftovers(names: &[String], pin: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output();
    let listed = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut left: Vec<String> = (names.iter())
        .filter(|name| {
            listed
                .lines()
                .any(|line| line.split_whitespace().next() == Some(name))
        })
        .map(|name| format!("namespace {name}"))
        .collect();
    if pin.exists() {
        left.push(format!("pinned instance {}", pin.display()));
    }
    left
}

impl Soak {
    /// The pair, the standby armed, four streams and the short connections
    /// flowing, the clients' link watched.
    fn start(duration: Duration) -> Soak {
        let setup = primary_setup(Family::V4, PORT, "soak");
        let (topo, service) = (&setup.topo, setup.service);
        // No report: the standby prunes closed flows, as in production.
        // Pinned, with a journal: it restarts on both every cycle.
        let pin = PinnedInstance::new("soak");
        let journal = WorkDir::new("soak-journal");
        let command = detecting_standby_command(topo, Family::V4, service, &setup.key)
            .without_report()
            .pin(pin.name())
            .arg("--journal")
            .arg(&journal.path().display().to_string())
            .arg("--failback")
            .arg("migrate")
            // Above what a restart takes, its journal's recovery included
            // (docs/configuration.md, "Hot restart"): no gap while it runs.
            .arg("--reader-timeout")
            .arg(READER_TIMEOUT_MS)
            .arg("--heartbeat-interval")
            .arg(INTERVAL_MS)
            .flag("--missed", MISSED);
        let standby = Mirror::start(&topo.gateway, &command);
        let standby_app = handoff_app(topo, &standby, service);
        topo.gateway.sysctl("net.ipv4.ip_nonlocal_bind", "1");
        let standby_listener = echo_server_in(&topo.gateway, service);
        let agent = start_agent(topo, Family::V4, service, &setup.key);
        let options = EchoOptions {
            rate: stream_rate(duration),
            ..EchoOptions::default()
        };
        let what = "streams before the soak";
        let clients = four_streams_once_armed_with(topo, &standby, service, options, what);
        let short = ShortConnections::start(&topo.client, service);
        let watch = WireWatch::start(&topo.client, CLIENT_IF);
        Soak {
            setup,
            standby: Some(standby),
            command,
            standby_app: Some(standby_app),
            pin,
            _journal: journal,
            agent,
            primary_app: None,
            _standby_listener: standby_listener,
            clients,
            short,
            watch,
        }
    }

    fn topo(&self) -> &Topology {
        &self.setup.topo
    }

    fn standby(&self) -> &Mirror {
        self.standby.as_ref().expect("the standby runs")
    }

    /// Stops the standby (SIGTERM: its pinned capture stays) and starts it
    /// again on the same pins and journal, with its handoff application;
    /// returns how long no daemon read the ring, in seconds.
    fn restart_standby(&mut self) -> f64 {
        let began = Instant::now();
        self.standby_app = None;
        let old = self.standby.take().expect("the standby runs");
        old.stop_unreported();
        let standby = Mirror::start(&self.topo().gateway, &self.command);
        standby.wait_log("journal recovered");
        let down = began.elapsed().as_secs_f64();
        self.standby_app = Some(handoff_app(self.topo(), &standby, self.setup.service));
        self.standby = Some(standby);
        down
    }

    /// Sends [`FORGED`] malformed requests to the standby's control socket;
    /// returns how many more it rejected.
    fn forge_control_requests(&self) -> u64 {
        let name = "connmirror_control_rejected_total";
        let before = self.scrape().count(name);
        for i in 0..FORGED {
            let mut stream = UnixStream::connect(self.standby().control_socket())
                .expect("connect to the control socket");
            let request = format!("{{\"command\":\"forged-{i}\"}}\n");
            stream
                .write_all(request.as_bytes())
                .expect("send a forged request");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("read the answer");
            assert!(answer.starts_with("{\"error\":"), "{answer}");
        }
        self.scrape().count(name) - before
    }

    /// Waits until the standby protects the service, hearing the primary
    /// alive at `epoch`.
    fn wait_protected(&self, epoch: u64) {
        let deadline = Instant::now() + STEP;
        loop {
            let status = status_of(self.topo(), self.standby());
            let alive =
                (status.peer.as_ref()).is_some_and(|p| p.alive && p.ownership.epoch == epoch);
            if status.role == "standby" && status.services[0].state == "protected" && alive {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never protected again: {status:#?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends [`FORGED`] datagrams of random bytes to the standby's heartbeat
    /// port; returns how many more heartbeats it rejected.
    fn forge_heartbeats(&self) -> u64 {
        let before = rejected(&self.scrape());
        let target = SocketAddr::from(([198, 18, 0, 1], HEARTBEAT_PORT));
        self.topo().client.run(|| {
            let socket = UdpSocket::bind("198.18.0.2:0").expect("bind a UDP socket");
            let mut rng = SplitMix64::new(before);
            for i in 0..FORGED {
                let datagram: Vec<u8> = (0..40 + i % 200).map(|_| rng.next_u64() as u8).collect();
                socket
                    .send_to(&datagram, target)
                    .expect("send a forged heartbeat");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = rejected(&self.scrape()) - before;
            if now >= FORGED || Instant::now() > deadline {
                return now;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent for [`DELAY`] (its heartbeats come late), then lets
    /// it go on; returns the takeovers that followed (0 expected).
    fn delay_heartbeats(&self) -> u64 {
        let before = failovers(&self.scrape());
        let pid = self.agent.pid() as i32;
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        thread::sleep(DELAY);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        thread::sleep(Duration::from_secs(1));
        failovers(&self.scrape()) - before
    }

    /// Drops the heartbeats at the standby (an iptables rule in its `INPUT`
    /// chain) for [`DELAY`]; returns the takeovers that followed (0 expected).
    fn drop_heartbeats(&self) -> u64 {
        let before = failovers(&self.scrape());
        let rule = |op: &str| {
            let port = HEARTBEAT_PORT.to_string();
            let args = [op, "INPUT", "-p", "udp", "--dport", &port, "-j", "DROP"];
            run_checked(self.topo().gateway.command("iptables").args(args));
        };
        rule("-I");
        thread::sleep(DELAY);
        rule("-D");
        thread::sleep(Duration::from_secs(1));
        failovers(&self.scrape()) - before
    }

    /// The primary host dies; waits until the standby owns the service at
    /// `epoch` and the streams moved on. Returns what the takeover did.
    fn fail_over(&mut self, epoch: u64) -> Takeover {
        let before = self.scrape();
        let Soak { setup, agent, .. } = self;
        kill_primary_host(&setup.topo, &mut setup.primary, agent);
        self.primary_app = None;
        let deadline = Instant::now() + STEP;
        while status_of(self.topo(), self.standby()).role != "owner" {
            assert!(
                Instant::now() < deadline,
                "no takeover after the primary died"
            );
            thread::sleep(Duration::from_millis(50));
        }
        (self.clients.wait_progress(64 << 10, STEP)).expect("the streams go on at the standby");
        let after = self.scrape();
        let status = status_of(self.topo(), self.standby());
        assert_eq!(status.epoch, epoch, "{status:#?}");
        let count = |name: &str| after.count(name) - before.count(name);
        let prefix = "connmirror_unrecoverable_flows_total{reason=\"";
        let unrecoverable = (after.samples.keys())
            .filter_map(|series| series.strip_prefix(prefix).map(|rest| (series, rest)))
            .map(|(series, rest)| (rest.trim_end_matches("\"}").to_owned(), count(series)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Takeover {
            restored: count("connmirror_restored_connections_total"),
            reset: count("connmirror_reset_connections_total"),
            unrecoverable,
        }
    }

    /// The primary returns rebooted and recovering; waits until its agent
    /// owns the service at `epoch` and the four streams resumed there.
    fn fail_back(&mut self, epoch: u64) {
        let (topo, service) = (&self.setup.topo, self.setup.service);
        forget_tcp_state(topo);
        let listener = primary_returns(topo, Family::V4, service);
        let (agent, app) = recovering_agent(
            topo,
            self.setup.dir.path(),
            &self.setup.key,
            Family::V4,
            service,
        );
        let owner = agent.wait_line("owner again", STEP);
        assert_eq!(
            owner,
            format!("owner again at epoch {epoch} (yielded by standby)")
        );
        let resumed = resumed_lines(&app, 4);
        assert_eq!(resumed.len(), 4);
        (self.clients.wait_progress(64 << 10, STEP)).expect("the streams go on at the primary");
        self.agent = agent;
        self.setup.primary = listener;
        self.primary_app = Some(app);
    }

    /// The cycle's record.
    fn record(&self, n: u32, epoch: u64, takeover: Takeover, began: Instant) -> Cycle {
        let pid = self.standby().pid();
        Cycle {
            cycle: n,
            takeover_epoch: epoch,
            restored: takeover.restored,
            reset: takeover.reset,
            unrecoverable: takeover.unrecoverable,
            verified_bytes: self.clients.verified(),
            short_connections: self.short.completed(),
            short_failures: self.short.failed(),
            short_reset_closing: self.short.reset_closing(),
            standby_rss: resident_bytes(pid).expect("the standby's RSS"),
            standby_fds: open_files(pid),
            seconds: began.elapsed().as_secs_f64(),
            restart_seconds: 0.0,
        }
    }

    fn scrape(&self) -> Scrape {
        scrape(&self.topo().gateway, DEFAULT_ENDPOINT)
    }

    /// Stops the traffic, checks it, and sums up.
    fn finish(
        self,
        cycles: Vec<Cycle>,
        forged: (u64, u64),
        false_takeovers: u64,
        start: Instant,
    ) -> SoakSummary {
        let streams: Vec<SocketAddr> = self.clients.locals();
        let results: Vec<EchoResult> = self.clients.finish(STEP);
        assert_exact(&results);
        let (short, short_failures, slowest) = self.short.stop();
        let seen = self.watch.stop();
        let to_streams = (seen.rsts_received.iter())
            .filter(|(_, dst)| streams.contains(dst))
            .count();
        let verified: u64 = results.iter().map(|r| r.verified).sum();
        SoakSummary {
            failovers: cycles.len() as u64,
            failbacks: cycles.len() as u64,
            cycles,
            streams: results.len() as u64,
            short_connections: short,
            short_failures,
            slowest_short_seconds: slowest.as_secs_f64(),
            verified_bytes: 2 * verified + short * 2 * SHORT_BYTES as u64,
            rsts_to_streams: to_streams as u64,
            rsts_to_others: (seen.rsts_received.len() - to_streams) as u64,
            forged_sent: forged.0,
            forged_rejected: forged.1,
            false_takeovers,
            seconds: start.elapsed().as_secs_f64(),
            leftovers: Vec::new(),
            faults: FAULTS.map(String::from).to_vec(),
        }
    }
}

/// Panics unless no short connection failed (one reset while it closed
/// counts among the `closing` flows the takeovers so far left out: `closing`
/// of them), and the cycle's takeover restored the four streams and left
/// out only short connections caught at their ends: closing, or seen only
/// after their handshake (a last ACK). Each of those is reset when its
/// sequence numbers are known, so the resets are at most the flows left out.
fn check_cycle(cycle: &Cycle, closing: u64) {
    assert_eq!(
        cycle.short_failures, 0,
        "no short connection lost: {cycle:?}"
    );
    assert!(
        cycle.short_reset_closing <= closing,
        "short connections reset while closing, {closing} closing flows so far: {cycle:?}"
    );
    assert!(cycle.restored >= 4, "the four streams restored: {cycle:?}");
    let left_out: u64 = cycle.unrecoverable.values().sum();
    assert!(cycle.reset <= left_out, "the resets add up: {cycle:?}");
    for reason in cycle.unrecoverable.keys() {
        assert!(
            ["closing", "no-handshake"].contains(&reason.as_str()),
            "{cycle:?}"
        );
    }
}

/// What a takeover did, from the standby's counters.
struct Takeover {
    restored: u64,
    reset: u64,
    unrecoverable: BTreeMap<String, u64>,
}

/// Heartbeats the standby rejected, every reason together.
fn rejected(scrape: &Scrape) -> u64 {
    (scrape.samples.iter())
        .filter(|(series, _)| series.starts_with("connmirror_heartbeats_rejected_total"))
        .map(|(_, n)| *n as u64)
        .sum()
}

/// Takeovers the standby ran, every trigger together.
fn failovers(scrape: &Scrape) -> u64 {
    (scrape.samples.iter())
        .filter(|(series, _)| series.starts_with("connmirror_failovers_total"))
        .map(|(_, n)| *n as u64)
        .sum()
}

/// Open files of process `pid`.
fn open_files(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir).map_or(0, |entries| entries.count() as u64)
}

/// Short echo connections, one after the other on a thread in the client's
/// namespace, until stopped: connect, write [`SHORT_BYTES`] of known bytes,
/// read them back, close. Each waits out a failover (SYNs and data are
/// retransmitted), so none should fail.
struct ShortConnections {
    stop: Arc<AtomicBool>,
    counts: Arc<ShortCounts>,
    thread: JoinHandle<()>,
}

/// What the short connections did so far.
#[derive(Default)]
struct ShortCounts {
    /// Verified whole (their echo back), however they closed.
    completed: AtomicU64,
    /// Failed before their echo was back whole.
    failed: AtomicU64,
    /// Of the completed, those reset while closing ([`Ended::ResetClosing`]).
    reset_closing: AtomicU64,
    /// The longest one took, in microseconds, however it ended.
    slowest_us: AtomicU64,
}

impl ShortConnections {
    fn start(ns: &Netns, service: SocketAddr) -> ShortConnections {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(ShortCounts::default());
        let file = std::fs::File::open(ns.path()).expect("open the client's namespace");
        let (flag, counted) = (Arc::clone(&stop), Arc::clone(&counts));
        let thread = thread::spawn(move || {
            // SAFETY: `file` is an open namespace file; setns changes only
            // this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let mut seed = 1;
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(SHORT_PAUSE);
                let began = Instant::now();
                let outcome = short_connection(service, seed);
                counted.took(began.elapsed());
                counted.count(seed, outcome);
                seed += 1;
            }
        });
        ShortConnections {
            stop,
            counts,
            thread,
        }
    }

    fn completed(&self) -> u64 {
        self.counts.completed.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }

    fn reset_closing(&self) -> u64 {
        self.counts.reset_closing.load(Ordering::Relaxed)
    }

    /// Stops after the connection under way; returns (verified, failed,
    /// the longest one took).
    fn stop(self) -> (u64, u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let counts = Arc::clone(&self.counts);
        self.thread.join().expect("short connections");
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let slowest = Duration::from_micros(load(&counts.slowest_us));
        (load(&counts.completed), load(&counts.failed), slowest)
    }
}

impl ShortCounts {
    /// Notes that a connection took `elapsed`.
    fn took(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.slowest_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Counts how connection `seed` went.
    fn count(&self, seed: u64, outcome: std::io::Result<Ended>) {
        match outcome {
            Ok(ended) => {
                self.completed.fetch_add(1, Ordering::Relaxed);
                if ended == Ended::ResetClosing {
                    self.reset_closing.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                eprintln!("soak: short connection {seed}: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How a short connection that got its whole echo back ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The server's FIN, as asked.
    Closed,
    /// A RST while it closed: a takeover came between the two FINs, and a
    /// flow that is closing is reset, not restored (`closing`).
    ResetClosing,
}

/// One short connection with bytes from `seed`; an error says where it
/// failed and from which port, to find the connection in a capture.
fn short_connection(service: SocketAddr, seed: u64) -> std::io::Result<Ended> {
    let mut stream = TcpStream::connect_timeout(&service, STEP).map_err(at("connect", None))?;
    let local = stream.local_addr().ok();
    stream.set_read_timeout(Some(STEP))?;
    let mut rng = SplitMix64::new(seed);
    let sent: Vec<u8> = (0..SHORT_BYTES).map(|_| rng.next_u64() as u8).collect();
    stream.write_all(&sent).map_err(at("write", local))?;
    let mut back = vec![0u8; SHORT_BYTES];
    stream
        .read_exact(&mut back)
        .map_err(at("read the echo", local))?;
    if back != sent {
        return Err(at("check", local)(std::io::Error::other(
            "the echo differs from what was sent",
        )));
    }
    // The server closes first: its side waits in TIME_WAIT, so the client's
    // port is free again at once (28,000 of them would run out in seconds).
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(Ended::Closed),
        Ok(_) => Err(at("close", local)(std::io::Error::other(
            "bytes after the echo",
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(Ended::ResetClosing),
        Err(e) => Err(at("wait for the server's FIN", local)(e)),
    }
}

/// Adds to an error the step `what` of the connection from `local`.
fn at(what: &'static str, local: Option<SocketAddr>) -> impl Fn(std::io::Error) -> std::io::Error {
    move |e| {
        let from = local.map_or_else(String::new, |a| format!(" from {a}"));
        std::io::Error::new(e.kind(), format!("{what}{from}: {e}"))
    }
}
