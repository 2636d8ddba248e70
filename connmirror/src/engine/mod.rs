//! The engine every capturing role runs: attach capture to interfaces, read
//! the ring buffer into the flow table (and the journal), serve metric scrapes,
//! and at the end detach, read what is left and write `report.json`. The
//! `mirror` role is this engine run on its own ([`crate::daemon::mirror`]); the
//! standby and the on-host agent run it with their own events beside it.
//!
//! With `--pin NAME` capture is pinned ([`crate::capture::pinning`]): SIGINT/SIGTERM leave
//! it attached with the unread records in the ring, and the next daemon started
//! with the same name takes the ring, the kernel's flow state and the links over
//! (hot restart). `--detach-all` removes what is pinned.
//!
//! The reader reads continuously, record by record, rather than collecting a
//! batch: the kernel's adaptive wakeups alone woke a reader only 20–100 times a
//! second under load, so the programs force a wakeup when a record takes the
//! backlog across a multiple of an eighth of the ring, and a short timer reads
//! whatever sits below that.
//!
//! Uses: [`crate::capture`], [`crate::flow`], [`crate::journal`],
//! [`crate::replication`] (the on-host outbox), [`crate::resume`] (live
//! replay's feed), [`crate::metrics`]. Must not
//! use: failover or the roles; its report takes a role's keys as a map.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::ValueEnum as _;
use connmirror_common::{Counter, Hook, Malformed, PayloadSkip, RecordHeader, RingFullPolicy};
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
        AttachPoint, Capture, CaptureConfig, Counters, DEFAULT_MAX_FLOWS, EgressHook, IngressHook,
        ReaderDeadline, parse_ring_size, parse_size,
    },
    flow::recovery::Journal,
    flow::stream::{Retention, StreamLimits},
    flow::{FlowReport, FlowTable},
    journal::{FSYNC_BUCKETS, FsyncPolicy, JournalConfig, JournalStats, ReadMode},
    metrics::{Exporter, Family, Histogram, MetricsArgs, Scrape},
    replication::channel::Outbox,
    resume::live::Live,
    service::{RetentionName, Service, ServiceAddr},
};

mod args;
pub use args::{IfaceSpec, JournalArgs, MirrorArgs, RetentionArg, RingFull};
mod report;
pub use report::{JournalSummary, ReaderStats, Report};
use report::{log_summary, report, write_report};
mod families;
use families::{iface_name, journal_families, kernel_families};
mod reader;
pub(crate) use reader::Reader;
mod kernel_flows;
use kernel_flows::KernelFlows;
mod trace;

/// Most records the event loop applies before it looks at its other events.
const READ_SLICE: usize = 4096;

/// How often the flow table prunes its quiet closed flows, and the kernel's
/// flow map follows the table ([`Reader::bound_flows`]).
const BOUND_EVERY: Duration = Duration::from_secs(1);

/// Every how many [`BOUND_EVERY`] rounds the kernel's flow map is walked
/// for what the table does not hold: an entry goes at the second walk that
/// finds it, 10 to 20 seconds on.
const SWEEP_ROUNDS: u64 = 10;

/// A running capture: the programs attached, the ring registered with the
/// reactor, the table (and journal) fed by the [`Reader`].
pub(crate) struct Engine {
    pub(crate) capture: Capture,
    pub(crate) reader: Reader,
    ring: AsyncFd<RingBuf<MapData>>,
    backlog: Backlog,
    /// Renewed as the ring is read ([`ReaderDeadline`]).
    deadline: ReaderDeadline,
    exporter: Exporter,
    report_path: Option<PathBuf>,
    /// Where capture attached, and why, for the report.
    attach: Vec<AttachPoint>,
    /// Services by id, as tracked.
    pub(crate) services: Vec<Service>,
    /// Whether capture was a pinned instance some earlier daemon left
    /// attached (a hot restart), rather than loaded afresh.
    pub(crate) took_over: bool,
}

/// What stopped [`Engine::next_event`].
pub(crate) enum Event<T> {
    /// SIGINT or SIGTERM.
    Stop,
    /// A message from the extra source (the standby's control socket).
    Message(T),
    /// A metrics scrape, to answer with [`Engine::families`] and the caller's own.
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

impl Engine {
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
            reader_timeout,
            dump_dir,
            report: report_path,
            retention,
            history_cap,
            memory_cap,
            max_flows,
            pin,
            trace_ebpf,
            detach_all: _,
            journal: journal_args,
            metrics,
            client_payload,
            recovers_flows,
        } = args;
        let report_path = report_path.or_else(|| dump_dir.as_ref().map(|d| d.join("report.json")));
        if let Some(dir) = &dump_dir {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let config = CaptureConfig {
            ring_size,
            on_ring_full: on_ring_full.into(),
            max_flows,
        };
        let recovers = recovers_flows || journal_args.dir.is_some();
        let (mut capture, took_over) = load_capture(&config, pin.as_deref(), recovers)?;
        if trace_ebpf {
            trace::forward(capture.trace()?)?;
        }
        let history = Retention::Full {
            cap: u64::from(history_cap),
        };
        let needs = ClientPayload {
            retention,
            dump: dump_dir.is_some(),
            services: client_payload,
        };
        let table = flow_table(retention, history, memory_cap, dump_dir);
        let tracked = tracked_services(&services);
        let mut attach = check_pins(&capture, &tracked, &ifaces, ingress, egress)?;
        let table = track_services(&mut capture, &tracked, &services, table, history, &needs)?;
        let timeout = (reader_timeout != 0).then(|| Duration::from_millis(reader_timeout));
        let deadline = capture.take_reader_deadline(timeout)?;
        attach_all(&mut capture, &mut attach)?;
        let (ring, backlog, exporter) = take_ring(&mut capture, &metrics)?;
        let (table, journal) = open_journal(&journal_args, table)?;
        let kernel_flows = KernelFlows::start(&capture)?;
        Ok(Self {
            capture,
            reader: Reader {
                table,
                stats: ReaderStats::default(),
                journal,
                captured: BTreeMap::new(),
                newest_ns: 0,
                outboxes: Vec::new(),
                live: None,
                kernel_flows,
            },
            ring,
            backlog,
            deadline,
            exporter,
            report_path,
            attach,
            services: tracked,
            took_over,
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
            capture,
            reader,
            ring,
            exporter,
            backlog,
            deadline,
            report_path,
            ..
        } = self;
        let Signals { sigint, sigterm } = signals;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut bound = tokio::time::interval(BOUND_EVERY);
        // A report lists every flow seen: closed flows then stay (the
        // memory cap still evicts them first).
        let prune = report_path.is_none();
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
                    // Cut short, or stopped at a record a program is still
                    // writing (the ring is not empty): stay ready, so the
                    // loop comes back at once after whatever else is due.
                    // Going to sleep there left the reader to the next
                    // wakeup while the ring filled behind that record.
                    if !reader.read_up_to(guard.get_inner_mut(), READ_SLICE)?
                        && backlog.bytes() == 0
                    {
                        guard.clear_ready();
                    }
                }
                _ = tick.tick() => {
                    reader.read_up_to(ring.get_mut(), READ_SLICE)?;
                    deadline.renew()?;
                }
                _ = bound.tick() => reader.bound_flows(capture, prune)?,
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
    pub(crate) fn read_ring(&mut self) -> anyhow::Result<()> {
        let Self { reader, ring, .. } = self;
        reader.read_all(ring.get_mut())
    }

    /// Detaches, reads what is left, closes the journal and writes the report,
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
            attach,
            ..
        } = self;
        drop(backlog);
        let mut ring = ring.into_inner();
        // A pinned instance stays attached; its unread records wait in the ring
        // for the next daemon. If its pins were removed meanwhile (`--detach-all`
        // while running), this daemon holds the last links: detach and read the rest.
        let kept = stays_attached(&capture).map(|instance| {
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
                reader.read_all(&mut ring)?;
            }
        }
        let Reader {
            mut table,
            mut stats,
            journal,
            live,
            ..
        } = reader;
        if let Some(live) = &live {
            reader::mark_divergent(&mut table, live);
        }
        stats.evicted = table.evicted();
        stats.pruned = table.pruned();
        stats.refused = table.refused();
        let journal = match journal {
            Some(journal) => Some(journal.close(&mut table).context("closing the journal")?),
            None => None,
        };
        let mut report = report(&capture, &mut table, stats)?;
        report.journal = journal.as_ref().map(JournalSummary::from);
        report.attach = attach;
        report.role = role;
        log_summary(&report);
        if let Some(path) = &report_path {
            write_report(path, &report)?;
        }
        Ok(report)
    }
}

/// The pinned instance `capture` belongs to, unless its pins were removed
/// (`--detach-all` while the daemon runs): what a stop leaves attached.
fn stays_attached(capture: &Capture) -> Option<&Instance> {
    capture.pinned().filter(|instance| instance.exists())
}

impl Engine {
    /// Whether capture stays attached when this daemon stops (`--pin`, and
    /// the instance not detached meanwhile).
    pub(crate) fn stays_attached(&self) -> bool {
        stays_attached(&self.capture).is_some()
    }
}

/// `--detach-all`: removes the pinned instance `--pin NAME`, or every instance.
/// Then removes the `--sync` rules of on-host agents that no longer run,
/// which would drop their services' outgoing segments for good.
pub(crate) fn detach_pinned(args: &MirrorArgs) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    pinning::detach_all(args.pin.as_deref(), &mut stdout)?;
    crate::hold::remove_orphaned(&mut stdout).context("removing orphaned --sync rules")
}

/// The flow table `mirror` starts with: `retention` by default (`history`
/// for `full`), dumps in `dump_dir`, at most `memory_cap` bytes retained.
fn flow_table(
    retention: RetentionArg,
    history: Retention,
    memory_cap: u32,
    dump_dir: Option<PathBuf>,
) -> FlowTable {
    FlowTable::new(
        StreamLimits {
            keep_delivered: 0,
            retention: match retention {
                RetentionArg::Unacked | RetentionArg::Restore => Retention::Unacked,
                RetentionArg::Full => history,
            },
            ..StreamLimits::default()
        },
        dump_dir,
    )
    .memory_cap(memory_cap as usize)
}

/// The services to track, numbered in the order they were given.
fn tracked_services(services: &[ServiceAddr]) -> Vec<Service> {
    (0u32..)
        .zip(services)
        .map(|(id, ServiceAddr(addr, _))| Service { id, addr: *addr })
        .collect()
}

/// Fails when a pinned instance tracks other services or attaches other
/// hooks than asked; returns where capture attaches on each interface, with
/// `auto` resolved ([`Capture::plan`]).
fn check_pins(
    capture: &Capture,
    tracked: &[Service],
    ifaces: &[IfaceSpec],
    ingress: IngressHook,
    egress: EgressHook,
) -> anyhow::Result<Vec<AttachPoint>> {
    capture.check_pinned_services(tracked)?;
    let named: Vec<_> = ifaces
        .iter()
        .map(|spec| (spec.name.as_str(), spec.ingress))
        .collect();
    let addrs: Vec<_> = tracked.iter().map(|service| service.addr).collect();
    let plan = capture.plan(&named, ingress, egress, &addrs)?;
    let asked: Vec<_> = plan
        .iter()
        .map(|point| (point.iface.as_str(), point.ingress_hook, point.egress_hook))
        .collect();
    capture.check_pinned_links(&asked)?;
    Ok(plan)
}

/// What decides whether a service's client → server payload is copied.
struct ClientPayload {
    /// `--retention`, for services that name none.
    retention: RetentionArg,
    /// `--dump-dir` writes both directions of every flow.
    dump: bool,
    /// The role needs these services' client payload whatever their retention.
    services: BTreeSet<SocketAddr>,
}

/// The payload the programs leave out of `service`'s records (`own`: the
/// retention it names; docs/configuration.md, "What capture copies"): its
/// client → server payload when its retention is `restore`, unless
/// `--dump-dir` writes it or the role needs it (replay, live replay; an
/// on-host agent's standby). A restore needs only the unacknowledged server
/// → client bytes and the client's sequence numbers, which header-only
/// records still carry. `unacked` keeps the client bytes the primary has
/// not acknowledged for a handoff, and `full` keeps them all.
fn payload_skip(needs: &ClientPayload, addr: &SocketAddr, own: Option<RetentionName>) -> u32 {
    let restore = match own {
        Some(retention) => retention == RetentionName::Restore,
        None => needs.retention == RetentionArg::Restore,
    };
    if restore && !needs.dump && !needs.services.contains(addr) {
        PayloadSkip::CLIENT_TO_SERVER
    } else {
        0
    }
}

/// Tracks every service in `capture`, giving `table` the retention a service
/// asked for on its own (`history` for `full`), and the programs the payload
/// it does not need.
fn track_services(
    capture: &mut Capture,
    tracked: &[Service],
    services: &[ServiceAddr],
    mut table: FlowTable,
    history: Retention,
    needs: &ClientPayload,
) -> anyhow::Result<FlowTable> {
    for (service, ServiceAddr(addr, own)) in tracked.iter().zip(services) {
        let skip = payload_skip(needs, addr, *own);
        capture.track_skipping(service, skip)?;
        table = match own {
            Some(RetentionName::Full) => table.service_retention(service.id, history),
            Some(RetentionName::Unacked | RetentionName::Restore) => {
                table.service_retention(service.id, Retention::Unacked)
            }
            None => table,
        };
        let client_payload = if skip == 0 { "copied" } else { "skipped" };
        tracing::info!(%service, client_payload, "tracking");
    }
    Ok(table)
}

/// Attaches the programs to every interface of `plan` with its hooks, and
/// logs each choice with its reason.
fn attach_all(capture: &mut Capture, plan: &mut [AttachPoint]) -> anyhow::Result<()> {
    if let Some(first) = plan.first() {
        tracing::info!("egress {} ({})", first.egress, first.egress_why);
    }
    for point in plan {
        let mode = capture.attach(&point.iface, point.ingress_hook, point.egress_hook)?;
        point.ingress = mode.strip_suffix("-ingress").unwrap_or(mode);
        tracing::info!(
            "{}: attach {} ({})",
            point.iface,
            point.ingress,
            point.ingress_why
        );
    }
    Ok(())
}

/// Takes the ring out of `capture` and registers it with the reactor, with a
/// view of its backlog; starts the metrics exporter in between, after the
/// capture, since a pinned instance in use is the clearer error.
fn take_ring(
    capture: &mut Capture,
    metrics: &MetricsArgs,
) -> anyhow::Result<(AsyncFd<RingBuf<MapData>>, Backlog, Exporter)> {
    let ring = capture.take_ring()?;
    let backlog = Backlog::map(&ring).context("watching the ring buffer's backlog")?;
    // After the capture: a pinned instance in use is the clearer error.
    let exporter = metrics.start()?;
    // SAFETY: the RingBuf owns the map fd and keeps it open, unchanged, until it
    // is dropped; it is only dropped after `into_inner` takes it back out.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(io::Error::from)
        .context("registering the ring buffer with the reactor")?;
    Ok((ring, backlog, exporter))
}

/// Opens (and recovers into `table`) the journal when one is configured, and
/// reopens the recovered flows' dump files.
fn open_journal(
    journal_args: &JournalArgs,
    mut table: FlowTable,
) -> anyhow::Result<(FlowTable, Option<Journal>)> {
    let Some(config) = journal_args.config() else {
        return Ok((table, None));
    };
    table = table.journal();
    let checkpoint = u64::from(journal_args.checkpoint_bytes);
    let journal = Journal::open(config, checkpoint, &mut table).context("opening the journal")?;
    table
        .continue_dumps()
        .context("reopening the recovered flows' dump files")?;
    Ok((table, Some(journal)))
}

/// Loads capture, pinned under `pin` when given; whether it took a pinned
/// instance over. Logs that, and warns when a restart would lose the flows
/// (`recovers`: the journal or the role gives them back).
fn load_capture(
    config: &CaptureConfig,
    pin: Option<&str>,
    recovers: bool,
) -> anyhow::Result<(Capture, bool)> {
    let Some(name) = pin else {
        return Ok((Capture::load(config)?, false));
    };
    let instance = Instance::new(name)?;
    if !recovers {
        tracing::warn!(
            "--pin without --journal: a restarted daemon keeps capture running but \
             knows nothing of the open flows, so it sees them as first seen mid-stream"
        );
    }
    let took_over = instance.map_path("RECORDS").exists();
    if took_over {
        tracing::info!(
            dir = %instance.dir().display(),
            "taking over the pinned instance: its ring, flows, services and counters; \
             the programs are replaced on the pinned links"
        );
    }
    Ok((Capture::load_pinned(config, instance)?, took_over))
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

impl Engine {
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

#[cfg(test)]
mod tests;
