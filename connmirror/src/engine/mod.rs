//! The `mirror` role: attach capture to interfaces, drain the ring buffer into the
//! flow table, and on SIGINT/SIGTERM detach, drain what is left and report.
//!
//! With `--pin NAME` capture is pinned ([`crate::capture::pinning`]): SIGINT/SIGTERM leave
//! it attached with the unread records in the ring, and the next daemon started
//! with the same name takes the ring, the kernel's flow state and the links over
//! (hot restart). `--detach-all` removes what is pinned.
//!
//! The reader drains continuously, record by record, rather than collecting a
//! batch: the kernel's adaptive wakeups alone woke a reader only 20–100 times a
//! second under load (DESIGN.md), so the programs force a wakeup once an eighth of
//! the ring is waiting, and a short timer drains whatever sits below that.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::ValueEnum as _;
use connmirror_common::{Counter, Hook, Malformed, RecordHeader, RingFullPolicy};
use prometheus_client::registry::Unit;
use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    capture::backlog::Backlog,
    capture::pinning::{self, Instance},
    capture::{
        Capture, CaptureConfig, Counters, EgressHook, IngressHook, parse_ring_size, parse_size,
    },
    flow::recovery::Journal,
    flow::stream::{Retention, StreamLimits},
    flow::{FlowReport, FlowTable},
    journal::{FSYNC_BUCKETS, FsyncPolicy, JournalConfig, JournalStats, ReadMode},
    metrics::{Exporter, Family, Histogram, MetricsArgs, Scrape},
    replication::channel::Outbox,
    service::{RetentionName, Service, ServiceAddr},
};

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
    /// retention (`IP:PORT=full`, `IP:PORT=unacked`; default: --retention).
    /// Repeat for several.
    #[arg(
        long = "service",
        value_name = "IP:PORT[=RETENTION]",
        required_unless_present = "detach_all"
    )]
    pub services: Vec<ServiceAddr>,
    /// Ingress attach point for interfaces that do not name their own: `xdp` is
    /// native XDP where the driver supports it, else generic XDP; `xdp-native`
    /// and `xdp-generic` force one; `tc` uses TCX. On virtual links (veth)
    /// generic XDP or TC is much faster than native XDP.
    #[arg(long, value_enum, default_value = "xdp")]
    pub ingress: IngressHook,
    /// Egress attach point.
    #[arg(long, value_enum, default_value = "tc")]
    pub egress: EgressHook,
    /// Ring-buffer size: a power of two, at least 64K (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size, default_value = "16M")]
    pub ring_size: u32,
    /// When the ring is full: `drop` the segment so TCP retransmits it (no hole,
    /// for path deployments), or `pass` it and mark its flow as gapped.
    #[arg(long, value_enum, default_value = "drop")]
    pub on_ring_full: RingFull,
    /// Write each direction of each flow to a file here (for verification; it
    /// costs a copy of every byte), and report.json on exit [default: none].
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Write the exit report (counters and flows, JSON) to this file
    /// [default: DIR/report.json with --dump-dir, else none].
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Which bytes each flow keeps: `unacked` (what the receiver has not
    /// acknowledged: enough to restore) or `full` (the whole history up to
    /// --history-cap per direction, for replay; past it a flow is marked
    /// handoff-only, never truncated silently).
    #[arg(long, value_enum, default_value = "unacked")]
    pub retention: RetentionArg,
    /// Most history bytes per direction under `--retention full` (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64M")]
    pub history_cap: u32,
    /// Most bytes all flows may hold together; past it the flows idle longest
    /// are evicted (counted and logged) rather than the process growing.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "1G")]
    pub memory_cap: u32,
    /// Pin programs, links and maps under /sys/fs/bpf/connmirror/NAME so capture
    /// outlives the daemon: SIGINT/SIGTERM leave it attached, and a daemon started
    /// again with the same NAME (and the same --iface, --service and --ring-size)
    /// takes it over without missing a segment. Use a name per instance: bpffs is
    /// shared by every network namespace.
    #[arg(long, value_name = "NAME")]
    pub pin: Option<String>,
    /// Detach and remove everything pinned (the instance --pin NAME, or every
    /// instance under /sys/fs/bpf/connmirror), print what went, and exit.
    #[arg(long, conflicts_with_all = ["ifaces", "services"])]
    pub detach_all: bool,
    /// Journal settings.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// `--retention` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RetentionArg {
    /// Keep bytes until the receiver acknowledges them.
    Unacked,
    /// Keep the whole history (up to --history-cap).
    Full,
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
    /// journal bytes (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "256M")]
    pub checkpoint_bytes: u32,
    /// Start a new segment file once the active one holds this many bytes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64M")]
    pub segment_bytes: u32,
}

impl JournalArgs {
    /// The storage configuration, when a journal directory was given.
    fn config(&self) -> Option<JournalConfig> {
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
                         (xdp, xdp-native, xdp-generic, tc, none)"
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

/// Most records the event loop applies before it looks at its other events.
const DRAIN_SLICE: usize = 4096;

/// Records decoded by userspace.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReaderStats {
    /// Records read from the ring.
    pub records: u64,
    /// Records rejected by [`RecordHeader::decode`].
    pub decode_errors: u64,
    /// Flows evicted under the memory cap.
    pub evicted: u64,
}

/// Everything `report.json` holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Kernel counters by name, summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    /// Malformed frames by reason.
    pub malformed: BTreeMap<&'static str, u64>,
    /// Userspace reader counts.
    pub userspace: ReaderStats,
    /// Every flow seen.
    pub flows: Vec<FlowReport>,
    /// Journal counters, with `--journal`.
    pub journal: Option<JournalSummary>,
    /// What the role running the engine adds (a standby's takeovers and
    /// refusals), as top-level keys of `report.json`: the engine does not know
    /// the roles' types.
    #[serde(flatten)]
    pub role: serde_json::Map<String, serde_json::Value>,
}

/// What the journal wrote during the run.
#[derive(Clone, Copy, Debug, Serialize)]
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

impl From<&JournalStats> for JournalSummary {
    fn from(stats: &JournalStats) -> Self {
        Self {
            records: stats.records,
            bytes: stats.bytes_appended,
            fsyncs: stats.fsyncs,
            max_fsync_us: stats.max_fsync.as_micros() as u64,
        }
    }
}

/// Runs the mirror until SIGINT or SIGTERM (or with `--detach-all`, removes
/// what is pinned).
pub async fn run(args: MirrorArgs) -> anyhow::Result<()> {
    if args.detach_all {
        return detach_pinned(&args);
    }
    let mut mirror = Mirror::start(args)?;
    // Handlers first: a SIGINT sent the moment `ready` appears must already
    // detach cleanly rather than kill the process.
    let mut signals = Signals::install()?;
    announce_ready()?;
    while let Event::Scrape(scrape) = mirror.next_event(&mut signals, None::<&mut Never>).await? {
        scrape.answer(mirror.families());
    }
    mirror.finish(serde_json::Map::new())?;
    Ok(())
}

/// A running capture: the programs attached, the ring registered with the
/// reactor, the table (and journal) fed by the [`Reader`].
pub(crate) struct Mirror {
    pub(crate) capture: Capture,
    pub(crate) reader: Reader,
    ring: AsyncFd<RingBuf<MapData>>,
    backlog: Backlog,
    exporter: Exporter,
    report_path: Option<PathBuf>,
    /// Services by id, as tracked.
    pub(crate) services: Vec<Service>,
}

/// What stopped [`Mirror::next_event`].
pub(crate) enum Event<T> {
    /// SIGINT or SIGTERM.
    Stop,
    /// A message from the extra source (the standby's control socket).
    Message(T),
    /// A metrics scrape, to answer with [`Mirror::families`] and the caller's own.
    Scrape(Scrape),
}

/// An event source that never yields (plain `mirror` has none).
pub(crate) enum Never {}

/// A source of events besides the ring and the signals.
pub(crate) trait EventSource<T> {
    /// The next event; pending forever once the source is closed.
    fn next(&mut self) -> impl Future<Output = T>;
}

impl EventSource<Never> for Never {
    async fn next(&mut self) -> Never {
        std::future::pending().await
    }
}

impl Mirror {
    /// Loads the programs, tracks the services, attaches to every interface and
    /// opens (and recovers) the journal.
    pub(crate) fn start(args: MirrorArgs) -> anyhow::Result<Self> {
        let MirrorArgs {
            ifaces,
            services,
            ingress,
            egress,
            ring_size,
            on_ring_full,
            dump_dir,
            report: report_path,
            retention,
            history_cap,
            memory_cap,
            pin,
            detach_all: _,
            journal: journal_args,
            metrics,
        } = args;
        let report_path = report_path.or_else(|| dump_dir.as_ref().map(|d| d.join("report.json")));
        if let Some(dir) = &dump_dir {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let config = CaptureConfig {
            ring_size,
            on_ring_full: on_ring_full.into(),
        };
        let mut capture = load_capture(&config, pin.as_deref(), journal_args.dir.is_some())?;
        let history = Retention::Full {
            cap: u64::from(history_cap),
        };
        let mut table = FlowTable::new(
            StreamLimits {
                keep_delivered: 0,
                retention: match retention {
                    RetentionArg::Unacked => Retention::Unacked,
                    RetentionArg::Full => history,
                },
                ..StreamLimits::default()
            },
            dump_dir.clone(),
        )
        .memory_cap(memory_cap as usize);
        let tracked: Vec<Service> = (0u32..)
            .zip(&services)
            .map(|(id, ServiceAddr(addr, _))| Service { id, addr: *addr })
            .collect();
        capture.check_pinned_services(&tracked)?;
        let asked: Vec<_> = ifaces
            .iter()
            .map(|spec| (spec.name.as_str(), spec.ingress.unwrap_or(ingress), egress))
            .collect();
        capture.check_pinned_links(&asked)?;
        for (service, ServiceAddr(_, own)) in tracked.iter().zip(services) {
            capture.track(service)?;
            table = match own {
                Some(RetentionName::Full) => table.service_retention(service.id, history),
                Some(RetentionName::Unacked) => {
                    table.service_retention(service.id, Retention::Unacked)
                }
                None => table,
            };
            tracing::info!(%service, "tracking");
        }
        for (name, ingress, egress) in asked {
            let mode = capture.attach(name, ingress, egress)?;
            tracing::info!(iface = name, ingress = mode, egress = ?egress, "attached");
        }
        let ring = capture.take_ring()?;
        let backlog = Backlog::map(&ring).context("watching the ring buffer's backlog")?;
        // After the capture: a pinned instance in use is the clearer error.
        let exporter = metrics.start()?;
        // SAFETY: the RingBuf owns the map fd and keeps it open, unchanged, until it
        // is dropped; it is only dropped after `into_inner` takes it back out.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)
            .context("registering the ring buffer with the reactor")?;
        let journal = match journal_args.config() {
            Some(config) => {
                table = table.journal();
                let checkpoint = u64::from(journal_args.checkpoint_bytes);
                let journal =
                    Journal::open(config, checkpoint, &mut table).context("opening the journal")?;
                table
                    .continue_dumps()
                    .context("reopening the recovered flows' dump files")?;
                Some(journal)
            }
            None => None,
        };
        Ok(Self {
            capture,
            reader: Reader {
                table,
                stats: ReaderStats::default(),
                journal,
                captured: BTreeMap::new(),
                newest_ns: 0,
                outbox: None,
            },
            ring,
            backlog,
            exporter,
            report_path,
            services: tracked,
        })
    }

    /// Drains the ring whenever it signals or a 5 ms timer ticks, until a signal
    /// or a message from `source` arrives.
    pub(crate) async fn next_event<T, S: EventSource<T>>(
        &mut self,
        signals: &mut Signals,
        mut source: Option<&mut S>,
    ) -> anyhow::Result<Event<T>> {
        let Self {
            reader,
            ring,
            exporter,
            ..
        } = self;
        let Signals { sigint, sigterm } = signals;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let message = async {
            match source.as_mut() {
                Some(source) => source.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(message);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("polling the ring buffer")?;
                    // Cut short: stay ready, so the loop comes back at once
                    // after whatever else is due.
                    if !reader.drain_up_to(guard.get_inner_mut(), DRAIN_SLICE)? {
                        guard.clear_ready();
                    }
                }
                _ = tick.tick() => {
                    reader.drain_up_to(ring.get_mut(), DRAIN_SLICE)?;
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                message = &mut message => return Ok(Event::Message(message)),
                scrape = exporter.next() => return Ok(Event::Scrape(scrape)),
            }
        }
        tracing::info!("signal received: stopping");
        Ok(Event::Stop)
    }

    /// Bytes waiting in the ring buffer now.
    pub(crate) fn ring_backlog(&self) -> u64 {
        self.backlog.bytes()
    }

    /// Applies every record already in the ring.
    pub(crate) fn drain(&mut self) -> anyhow::Result<()> {
        let Self { reader, ring, .. } = self;
        reader.drain(ring.get_mut())
    }

    /// Detaches, drains what is left, closes the journal and writes the report,
    /// with `role`'s keys added at its top level.
    pub(crate) fn finish(
        self,
        role: serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<Report> {
        let Self {
            mut capture,
            mut reader,
            ring,
            backlog,
            report_path,
            ..
        } = self;
        drop(backlog);
        let mut ring = ring.into_inner();
        // A pinned instance stays attached; its unread records wait in the ring
        // for the next daemon. If its pins were removed meanwhile (`--detach-all`
        // while running), this daemon holds the last links: detach and drain.
        let kept = capture
            .pinned()
            .filter(|instance| instance.exists())
            .map(|instance| {
                (
                    instance.dir().display().to_string(),
                    instance.name().to_owned(),
                )
            });
        match kept {
            Some((dir, name)) => tracing::info!(
                "capture stays attached (pinned at {dir}); \
                 `connmirror mirror --detach-all --pin {name}` removes it"
            ),
            None => {
                capture.detach()?;
                reader.drain(&mut ring)?;
            }
        }
        let Reader {
            mut table,
            mut stats,
            journal,
            ..
        } = reader;
        stats.evicted = table.evicted();
        let journal = match journal {
            Some(journal) => Some(journal.close(&mut table).context("closing the journal")?),
            None => None,
        };
        let mut report = report(&capture, &mut table, stats)?;
        report.journal = journal.as_ref().map(JournalSummary::from);
        report.role = role;
        log_summary(&report);
        if let Some(path) = &report_path {
            write_report(path, &report)?;
        }
        Ok(report)
    }
}

/// `--detach-all`: removes the pinned instance `--pin NAME`, or every instance.
pub(crate) fn detach_pinned(args: &MirrorArgs) -> anyhow::Result<()> {
    pinning::detach_all(args.pin.as_deref(), &mut io::stdout().lock())
}

/// Loads capture, pinned under `pin` when given. Logs whether a pinned
/// instance is taken over, and warns when a restart would lose the flows.
fn load_capture(
    config: &CaptureConfig,
    pin: Option<&str>,
    journal: bool,
) -> anyhow::Result<Capture> {
    let Some(name) = pin else {
        return Ok(Capture::load(config)?);
    };
    let instance = Instance::new(name)?;
    if !journal {
        tracing::warn!(
            "--pin without --journal: a restarted daemon keeps capture running but \
             knows nothing of the open flows, so it sees them as first seen mid-stream"
        );
    }
    if instance.map_path("RECORDS").exists() {
        tracing::info!(
            dir = %instance.dir().display(),
            "taking over the pinned instance: its ring, flows, services and counters; \
             the programs are replaced on the pinned links"
        );
    }
    Ok(Capture::load_pinned(config, instance)?)
}

/// Tells scripts the programs are attached: the line `ready` on stdout.
pub(crate) fn announce_ready() -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// The signals that stop the mirror.
pub(crate) struct Signals {
    pub(crate) sigint: tokio::signal::unix::Signal,
    pub(crate) sigterm: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the SIGINT and SIGTERM handlers.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }
}

/// What the ring feeds: the flow table, the reader's counts and the journal.
pub(crate) struct Reader {
    pub(crate) table: FlowTable,
    stats: ReaderStats,
    journal: Option<Journal>,
    /// Segments and payload bytes by interface index and direction.
    captured: BTreeMap<(u32, &'static str), Captured>,
    /// `ts_ns` of the newest record applied.
    newest_ns: u64,
    /// On-host mode: where the journal records also go (to the standby).
    pub(crate) outbox: Option<Outbox>,
}

/// Segments and payload bytes captured on one interface in one direction.
#[derive(Clone, Copy, Debug, Default)]
struct Captured {
    packets: u64,
    bytes: u64,
}

impl Reader {
    /// Applies every record waiting in the ring, then hands the changes to the
    /// journal (group commit happens there).
    pub(crate) fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        self.drain_up_to(ring, usize::MAX).map(drop)
    }

    /// Like [`drain`](Self::drain), stopping after `limit` records; returns
    /// whether it stopped there (records may still wait). The event loop
    /// drains in such slices so that a ring refilled as fast as it is read
    /// never starves the loop's other work (acknowledgments, scrapes), and
    /// the changes reach the journal (and the standby) slice by slice.
    pub(crate) fn drain_up_to(
        &mut self,
        ring: &mut RingBuf<MapData>,
        limit: usize,
    ) -> anyhow::Result<bool> {
        let Self {
            table,
            stats,
            journal,
            captured,
            newest_ns,
            outbox,
        } = self;
        let mut left = limit;
        while left > 0 {
            let Some(item) = ring.next() else { break };
            left -= 1;
            stats.records += 1;
            match RecordHeader::decode(&item) {
                Ok((header, chunk)) => {
                    count_capture(captured, &header);
                    *newest_ns = (*newest_ns).max(header.ts_ns);
                    table
                        .record(&header, chunk)
                        .context("writing a dump file")?
                }
                Err(err) => {
                    stats.decode_errors += 1;
                    if stats.decode_errors.is_power_of_two() {
                        tracing::warn!(%err, count = stats.decode_errors, "undecodable record");
                    }
                }
            }
        }
        let records = table.take_records();
        if let Some(outbox) = outbox {
            // The ring was just drained: nothing of it waits any more.
            outbox.ship(&records, 0);
        }
        if let Some(journal) = journal {
            (journal.write(&records, table)).context("writing the journal")?;
        }
        Ok(left == 0)
    }
}

/// Counts one record in its interface's and direction's totals: a segment at
/// its first chunk, and every chunk's payload.
fn count_capture(captured: &mut BTreeMap<(u32, &'static str), Captured>, header: &RecordHeader) {
    let direction = match Hook::from_u8(header.hook) {
        Some(Hook::TcEgress) => "egress",
        _ => "ingress",
    };
    let entry = captured.entry((header.ifindex, direction)).or_default();
    entry.packets += u64::from(header.chunk_offset == 0);
    entry.bytes += u64::from(header.chunk_len);
}

impl Mirror {
    /// Sets the capture mode ([`connmirror_common::ServiceMode`] bits) of
    /// every service in `services`.
    pub(crate) fn set_modes(&mut self, services: &[Service], mode: u32) -> anyhow::Result<()> {
        for service in services {
            (self.capture.set_mode(service, mode))
                .with_context(|| format!("setting the mode of {service}"))?;
        }
        Ok(())
    }

    /// The capture's metrics at this instant: kernel counters, what the reader
    /// applied by interface, flows by readiness, the journal and the backlog.
    pub(crate) fn families(&self) -> Vec<Family> {
        let Self {
            capture,
            reader,
            backlog,
            ..
        } = self;
        let mut families = reader.families(backlog);
        match capture.counters() {
            Ok(counters) => families.extend(kernel_families(&counters)),
            Err(err) => tracing::warn!("reading the kernel counters for metrics: {err}"),
        }
        families
    }
}

impl Reader {
    fn families(&self, backlog: &Backlog) -> Vec<Family> {
        let Self {
            table,
            stats,
            journal,
            captured,
            newest_ns,
            ..
        } = self;
        let mut packets = Family::counter(
            "captured_packets",
            "Segments of protected services applied from the ring, by interface and direction.",
            None,
        );
        let mut bytes = Family::counter(
            "captured",
            "Payload bytes of protected services applied from the ring, by interface and direction.",
            Some(Unit::Bytes),
        );
        for ((ifindex, direction), n) in captured {
            let labels = || {
                vec![
                    ("iface", iface_name(*ifindex)),
                    ("direction", (*direction).into()),
                ]
            };
            packets = packets.count(labels(), n.packets);
            bytes = bytes.count(labels(), n.bytes);
        }
        let mut flows = Family::gauge("flows", "Open flows tracked, by readiness.", None);
        for (readiness, n) in table.readiness_counts() {
            flows = flows.set(vec![("readiness", readiness.into())], n as f64);
        }
        let lag = backlog.bytes();
        let lag_seconds = match lag {
            0 => 0.0,
            _ => monotonic_ns().saturating_sub(*newest_ns) as f64 / 1e9,
        };
        let mut families = vec![
            packets,
            bytes,
            flows,
            Family::counter("ring_records", "Records read from the ring buffer.", None)
                .count(Vec::new(), stats.records),
            Family::counter("ring_decode_errors", "Ring records that did not decode.", None)
                .count(Vec::new(), stats.decode_errors),
            Family::counter("flows_evicted", "Flows evicted under the memory cap.", None)
                .count(Vec::new(), table.evicted()),
            Family::gauge(
                "replication_lag",
                "Bytes the kernel wrote into the ring that the daemon has not applied (and journaled) yet.",
                Some(Unit::Bytes),
            )
            .set(Vec::new(), lag as f64),
            Family::gauge(
                "replication_lag",
                "Age of the newest applied record while records wait in the ring; 0 when caught up.",
                Some(Unit::Seconds),
            )
            .set(Vec::new(), lag_seconds),
        ];
        if let Some(journal) = journal {
            families.extend(journal_families(journal.stats()));
        }
        families
    }
}

fn journal_families(stats: &JournalStats) -> [Family; 3] {
    let latency = &stats.fsync_latency;
    let bounds = FSYNC_BUCKETS.iter().map(Duration::as_secs_f64);
    let histogram = Histogram {
        buckets: bounds.chain([f64::INFINITY]).zip(latency.counts).collect(),
        sum: latency.sum.as_secs_f64(),
        count: latency.count(),
    };
    [
        Family::counter("journal_records", "Records appended to the journal.", None)
            .count(Vec::new(), stats.records),
        Family::counter(
            "journal_written",
            "Bytes appended to the journal, framing included.",
            Some(Unit::Bytes),
        )
        .count(Vec::new(), stats.bytes_appended),
        Family::histogram(
            "journal_fsync",
            "Latency of fdatasync on journal segments.",
            Some(Unit::Seconds),
        )
        .observe(Vec::new(), histogram),
    ]
}

/// The eBPF programs' per-CPU counters, summed, one family each, and the
/// malformed frames by reason.
fn kernel_families(counters: &Counters) -> Vec<Family> {
    let mut families: Vec<Family> = (Counter::ALL.iter())
        .map(|&counter| {
            let (name, unit) = match counter {
                Counter::BytesCaptured => ("ebpf_captured", Some(Unit::Bytes)),
                other => (kernel_name(other), None),
            };
            Family::counter(name, counter_help(counter), unit)
                .count(Vec::new(), counters.get(counter))
        })
        .collect();
    let mut malformed = Family::counter(
        "malformed_packets",
        "Frames the eBPF parser refused (passed untouched), by reason.",
        None,
    );
    for reason in Malformed::ALL {
        malformed = malformed.count(
            vec![("reason", reason.name().into())],
            counters.malformed(reason),
        );
    }
    families.push(malformed);
    families
}

/// `ebpf_` and the counter's name, as a `'static` metric name.
fn kernel_name(counter: Counter) -> &'static str {
    match counter {
        Counter::PacketsSeen => "ebpf_packets_seen",
        Counter::PacketsTracked => "ebpf_packets_tracked",
        Counter::BytesCaptured => "ebpf_captured",
        Counter::Records => "ebpf_records",
        Counter::RingFull => "ebpf_ring_full",
        Counter::BackpressureDrops => "ebpf_backpressure_drops",
        Counter::GapsMarked => "ebpf_gaps_marked",
        Counter::NotTcp => "ebpf_not_tcp",
        Counter::Fragments => "ebpf_fragments",
        Counter::Oversize => "ebpf_oversize",
        Counter::CopyFailed => "ebpf_copy_failed",
        Counter::QuiesceDrops => "ebpf_quiesce_drops",
        Counter::FenceDrops => "ebpf_fence_drops",
        Counter::SyncHeld => "ebpf_sync_held",
    }
}

fn counter_help(counter: Counter) -> &'static str {
    match counter {
        Counter::PacketsSeen => "Frames the capture programs ran on.",
        Counter::PacketsTracked => "TCP segments of a protected service.",
        Counter::BytesCaptured => "Payload bytes written into the ring buffer.",
        Counter::Records => "Records written into the ring buffer.",
        Counter::RingFull => {
            "Ring-full events: reservations that failed because the ring was full."
        }
        Counter::BackpressureDrops => {
            "Segments dropped under --on-ring-full drop (TCP retransmits them)."
        }
        Counter::GapsMarked => {
            "Segments passed uncaptured under --on-ring-full pass (their flow is gapped)."
        }
        Counter::NotTcp => "Frames that are not TCP over IPv4/IPv6, passed untouched.",
        Counter::Fragments => "IP fragments, passed untouched.",
        Counter::Oversize => "Tracked segments too large to copy in one pass.",
        Counter::CopyFailed => "Tracked segments whose payload the kernel refused to copy.",
        Counter::QuiesceDrops => {
            "Client segments dropped while their service was quiesced for a takeover."
        }
        Counter::FenceDrops => "Segments from a fenced (taken-over) primary, dropped.",
        Counter::SyncHeld => {
            "Outgoing segments held (dropped, TCP resends them) until the standby acknowledged the journal up to them (on-host --sync)."
        }
    }
}

/// The interface's name, or `if<index>` once it is gone.
fn iface_name(ifindex: u32) -> String {
    crate::sys::interface::name(ifindex).unwrap_or_else(|| format!("if{ifindex}"))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    crate::sys::process::monotonic_ns()
}

fn report(
    capture: &Capture,
    table: &mut FlowTable,
    userspace: ReaderStats,
) -> anyhow::Result<Report> {
    let counters = capture.counters()?;
    for (key, gaps) in capture.flow_gaps()? {
        table.kernel_gaps(&key, gaps);
    }
    let flows = table.report().context("flushing dump files")?;
    Ok(Report {
        counters: named_counters(&counters),
        malformed: Malformed::ALL
            .iter()
            .map(|reason| (reason.name(), counters.malformed(*reason)))
            .collect(),
        userspace,
        flows,
        journal: None,
        role: serde_json::Map::new(),
    })
}

fn named_counters(counters: &Counters) -> BTreeMap<&'static str, u64> {
    Counter::ALL
        .iter()
        .map(|counter| (counter.name(), counters.get(*counter)))
        .collect()
}

fn log_summary(report: &Report) {
    let Report {
        counters,
        malformed,
        userspace,
        flows,
        journal,
        ..
    } = report;
    tracing::info!(?counters, "kernel counters");
    if let Some(journal) = journal {
        tracing::info!(?journal, "journal");
    }
    tracing::info!(?malformed, "malformed frames");
    tracing::info!(
        records = userspace.records,
        decode_errors = userspace.decode_errors,
        "reader"
    );
    for flow in flows {
        tracing::info!(
            server = %flow.server,
            client = %flow.client,
            status = ?flow.status,
            c2s = flow.c2s.delivered,
            s2c = flow.s2c.delivered,
            "flow"
        );
    }
}

/// Writes the report atomically (temporary file beside it, fsync, rename).
fn write_report(path: &Path, report: &Report) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec_pretty(report).context("serialising the report")?;
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    tracing::info!(path = %path.display(), "report written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iface_specs_take_an_optional_ingress_attach_point() {
        assert_eq!(
            "gw-c".parse(),
            Ok(IfaceSpec {
                name: "gw-c".to_owned(),
                ingress: None
            })
        );
        assert_eq!(
            "gw-s:xdp-generic".parse(),
            Ok(IfaceSpec {
                name: "gw-s".to_owned(),
                ingress: Some(IngressHook::XdpGeneric)
            })
        );
        assert_eq!(
            "gw-s:fast".parse::<IfaceSpec>(),
            Err(
                "\"fast\" is not an ingress attach point (xdp, xdp-native, xdp-generic, tc, none)"
                    .to_owned()
            )
        );
        assert_eq!(
            ":tc".parse::<IfaceSpec>(),
            Err("\":tc\" names no interface".to_owned())
        );
    }
}
