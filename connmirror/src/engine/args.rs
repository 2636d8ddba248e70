//! The engine's command-line arguments, which every role that captures flattens into its own: interfaces, services, attach points, ring, journal and retention.

use super::*;

/// Command-line arguments of `connmirror mirror`.
#[derive(Clone, Debug, clap::Args)]
pub struct MirrorArgs {
    /// Interface to capture on, optionally with its own ingress attach point
    /// (`IF:xdp-generic`, `IF:tc`, ...; default: --ingress). Repeat for several; a
    /// gateway names both of its links.
    #[arg(
        long = "iface",
        value_name = "IF[:INGRESS]",
        required_unless_present = "detach_all"
    )]
    pub ifaces: Vec<IfaceSpec>,
    /// Protected service as IP:PORT or [IPv6]:PORT, optionally with its own
    /// retention (`IP:PORT=full`, `IP:PORT=unacked`, `IP:PORT=restore`;
    /// default: --retention).
    /// Repeat for several.
    #[arg(
        long = "service",
        value_name = "IP:PORT[=RETENTION]",
        required_unless_present = "detach_all"
    )]
    pub services: Vec<ServiceAddr>,
    /// Ingress attach point for interfaces that do not name their own: `auto`
    /// picks per interface by its driver (TC on virtual links such as veth,
    /// where native XDP turns TSO off on the peer; native XDP on NICs whose
    /// drivers run it well; TC on other NICs) and logs why; `xdp` is native
    /// XDP where the driver supports it, else generic XDP; `xdp-native` and
    /// `xdp-generic` force one; `tc` uses TCX.
    #[arg(long, value_enum, default_value = "auto")]
    pub ingress: IngressHook,
    /// Egress attach point: `auto` leaves it off when ingress capture already
    /// sees every forwarded segment (every interface that is up has it, and no
    /// service address is local: a gateway), else uses TC; the log says which.
    #[arg(long, value_enum, default_value = "auto")]
    pub egress: EgressHook,
    /// Ring-buffer size: a power of two, at least 64K (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size, default_value = "16M")]
    pub ring_size: u32,
    /// When the ring is full: `drop` the segment so TCP retransmits it (no hole,
    /// for path deployments), or `pass` it and mark its flow as gapped.
    #[arg(long, value_enum, default_value = "drop")]
    pub on_ring_full: RingFull,
    /// Under `--on-ring-full drop`: once no daemon has read the ring for this
    /// many milliseconds (it died, or is stopped), a full ring passes segments
    /// instead of dropping them, and marks their flows gapped, so capture
    /// left attached (`--pin`) never stops the traffic it sits on. Longer
    /// than a hot restart takes; 0: drop for ever.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub reader_timeout: u64,
    /// Write each direction of each flow to a file here (for verification; it
    /// costs a copy of every byte), and report.json on exit [default: none].
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Write the exit report (counters and flows, JSON) to this file
    /// [default: DIR/report.json with --dump-dir, else none].
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Which bytes each flow keeps: `unacked` (what the receiver has not
    /// acknowledged: enough to restore), `full` (the whole history up to
    /// --history-cap per direction, for replay; past it a flow is marked
    /// handoff-only, never truncated silently) or `restore` (the server's
    /// unacknowledged bytes only: client → server payload is not copied).
    #[arg(long, value_enum, default_value = "unacked")]
    pub retention: RetentionArg,
    /// Most history bytes per direction under `--retention full` (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64M")]
    pub history_cap: u32,
    /// Most bytes all flows may hold together; past it the flows idle longest
    /// that are not ready are evicted (counted and logged), and when only
    /// ready flows are left, new flows are refused protection (counted and
    /// logged) rather than the process growing or a ready flow lost.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "1G")]
    pub memory_cap: u32,
    /// Most flows the kernel tracks at once (about 112 bytes of kernel
    /// memory each, allocated at load). Past it, new flows pass unprotected
    /// (counted as flows_untracked); a tracked flow is never evicted. A
    /// closed flow leaves the map within two seconds of its last segment
    /// (with --report or --dump-dir, which list every flow seen, once the
    /// memory cap evicts it).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..),
          default_value_t = DEFAULT_MAX_FLOWS)]
    pub max_flows: u32,
    /// Pin programs, links and maps under /sys/fs/bpf/connmirror/NAME so capture
    /// outlives the daemon: SIGINT/SIGTERM leave it attached, and a daemon started
    /// again with the same NAME (and the same --iface, --service, --ring-size and
    /// --max-flows) takes it over without missing a segment. Use a name per instance: bpffs is
    /// shared by every network namespace.
    #[arg(long, value_name = "NAME")]
    pub pin: Option<String>,
    /// Trace capture in the kernel: attach traced copies of the programs that
    /// log, for every TCP segment they see, whether it was tracked (service,
    /// direction) or not, its addresses, sequence number and length, and the
    /// verdict; the daemon logs each line (target `connmirror::ebpf`). For
    /// debugging why a segment was or was not captured. Costly: each segment
    /// is parsed twice and formatted into a log record (microseconds each,
    /// and a log line per segment), so never in production; without this
    /// flag the programs carry no logging at all.
    #[arg(long)]
    pub trace_ebpf: bool,
    /// Detach and remove everything pinned (the instance --pin NAME, or every
    /// instance under /sys/fs/bpf/connmirror) and the --sync rules of on-host
    /// agents no longer running (in this network namespace), print what went,
    /// and exit.
    #[arg(long, conflicts_with_all = ["ifaces", "services"])]
    pub detach_all: bool,
    /// Journal settings.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Services whose client → server payload is copied into the ring whatever
    /// their retention: set by the role, not the command line (the standby's
    /// replayed and live-replayed services; every service of an on-host
    /// agent, whose standby decides what it needs).
    #[arg(skip)]
    pub client_payload: BTreeSet<SocketAddr>,
    /// The role gives a taken-over pinned instance its open flows back
    /// itself (an on-host agent, from its standby): `--pin` needs no
    /// `--journal` then. Set by the role, not the command line.
    #[arg(skip)]
    pub recovers_flows: bool,
}
/// `--retention` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RetentionArg {
    /// Keep bytes until the receiver acknowledges them.
    Unacked,
    /// Keep the whole history (up to --history-cap).
    Full,
    /// Keep only what a restore needs: the server's unacknowledged bytes.
    /// Client → server payload is not even copied into the ring (a restored
    /// socket expects the client's bytes from the primary's last
    /// acknowledgment on, and the client sends them again).
    Restore,
}
/// Journal flags of `connmirror mirror`.
#[derive(Clone, Debug, clap::Args)]
pub struct JournalArgs {
    /// Keep a durable journal of every flow in this directory (append-only
    /// segment files, length + CRC32C framed); recovered on start. Read it with
    /// `connmirror journal inspect DIR`.
    #[arg(long = "journal", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// When journal records reach the disk. `never`: the kernel decides (a host
    /// crash loses what the page cache held; a daemon crash loses nothing
    /// written). `interval`: group commit, fdatasync every --fsync-interval or
    /// --fsync-bytes (a host crash loses at most that window). `always`:
    /// fdatasync per record (nothing acknowledged is lost; slowest).
    #[arg(long, default_value = "interval", value_parser = ["never", "interval", "always"])]
    pub fsync: String,
    /// Group-commit interval in milliseconds for `--fsync interval`.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub fsync_interval: u64,
    /// Group-commit byte count for `--fsync interval` (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "4M")]
    pub fsync_bytes: u32,
    /// At recovery, skip (and count) damaged records in sealed segments instead
    /// of stopping with an error that names the file and offset.
    #[arg(long)]
    pub salvage: bool,
    /// Write a checkpoint and delete the older segments after this many
    /// journal bytes (suffixes K, M, G), and no sooner than the flows' held
    /// bytes were journaled again, since a checkpoint rewrites them.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "256M")]
    pub checkpoint_bytes: u32,
    /// Append to the journal with direct I/O (`O_DIRECT`), bypassing the page
    /// cache, where the filesystem supports it (else the log says so and the
    /// page cache is used). It spares the cache and a copy, and appended
    /// nearer the disk's rate in the journal benchmark, but the mirrored
    /// stream ran slower with it on a 2-core host: each write waits for the
    /// disk on the writer thread (docs/benchmarks.md).
    #[arg(long)]
    pub journal_direct: bool,
    /// Start a new segment file once the active one holds this many bytes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64M")]
    pub segment_bytes: u32,
}
impl JournalArgs {
    /// The storage configuration, when a journal directory was given.
    pub(super) fn config(&self) -> Option<JournalConfig> {
        let dir = self.dir.as_ref()?;
        let fsync = match self.fsync.as_str() {
            "never" => FsyncPolicy::Never,
            "always" => FsyncPolicy::Always,
            _ => FsyncPolicy::Interval {
                every: Duration::from_millis(self.fsync_interval),
                bytes: u64::from(self.fsync_bytes),
            },
        };
        let read_mode = if self.salvage {
            ReadMode::Salvage
        } else {
            ReadMode::Strict
        };
        Some(JournalConfig {
            fsync,
            read_mode,
            segment_bytes: u64::from(self.segment_bytes),
            direct_io: self.journal_direct,
            ..JournalConfig::new(dir)
        })
    }
}
/// An `--iface` value: an interface name, optionally `:INGRESS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSpec {
    /// Interface name.
    pub name: String,
    /// Ingress attach point for this interface, overriding `--ingress`.
    pub ingress: Option<IngressHook>,
}
impl FromStr for IfaceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, ingress) = match text.split_once(':') {
            Some((name, hook)) => {
                let hook = IngressHook::from_str(hook, false).map_err(|_| {
                    format!(
                        "{hook:?} is not an ingress attach point \
                         (auto, xdp, xdp-native, xdp-generic, tc, none)"
                    )
                })?;
                (name, Some(hook))
            }
            None => (text, None),
        };
        if name.is_empty() {
            return Err(format!("{text:?} names no interface"));
        }
        Ok(Self {
            name: name.to_owned(),
            ingress,
        })
    }
}
/// `--on-ring-full` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RingFull {
    /// Drop the segment (backpressure).
    Drop,
    /// Forward the segment and mark the flow as gapped.
    Pass,
}
impl From<RingFull> for RingFullPolicy {
    fn from(value: RingFull) -> Self {
        match value {
            RingFull::Drop => RingFullPolicy::Drop,
            RingFull::Pass => RingFullPolicy::Pass,
        }
    }
}
