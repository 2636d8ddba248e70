//! The `standby` role (inline mode): the mirror on both of the standby's
//! interfaces, plus a control socket that triggers a takeover of the services
//! ([`crate::failover::takeover`]) and a handoff socket that applications register on
//! ([`crate::resume::handoff`]).
//!
//! After a takeover the standby owns the services under a higher epoch.
//! Two things end that ownership:
//!
//! - **step-down** (fencing): a verified heartbeat claims one of its services
//!   under a still higher epoch. The standby stops serving at once: it
//!   releases the service addresses, puts the services back to capture
//!   (unfenced) and protects them again. Lower epochs are ignored (their
//!   sender steps down instead, [`crate::daemon::agent`]).
//! - **failback**: the old primary's agent announces itself `Recovering`. Under
//!   `--failback drain` the standby keeps serving the connections it restored
//!   until they close, with per-flow policy routes ([`crate::failover::drain`]), releases
//!   the addresses so new connections reach the primary, protects the
//!   services again, and sends `Yield` until the primary claims the next
//!   epoch. Under `--failback migrate` it moves the live connections to the
//!   primary's agent first ([`crate::failover::migrate`]), then yields the same way.
//!   Under `--failback manual` it only logs the return; `connmirror migrate
//!   --to NODE` (a control request) runs the migration by hand.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use connmirror_common::ServiceMode;

use crate::{
    daemon::control::{ControlServer, DEFAULT_CONTROL, Pending, Request, Response},
    daemon::status::{ServiceStatus, StatusReport},
    engine::{
        Event, EventSource, Mirror, MirrorArgs, RetentionArg, Signals, announce_ready,
        detach_pinned,
    },
    failover::drain::{self, Drain},
    failover::migrate::{self, Batch, MigrateReport, Prepare, Prepared, Receipt},
    failover::takeover::{self, Kept, MidStream, Resume, TakeoverConfig, TakeoverReport, Trigger},
    metrics::Family,
    net::address,
    ownership::detector::{Detected, Detector, DetectorConfig, Policy},
    ownership::heartbeat::{self, Key, Kind, Message, Ownership},
    repair::restore::QueueMode,
    repair::save,
    replication::replica::Replica,
    resume::handoff::{self, HandoffServer},
    service::{RetentionName, Service},
};

/// Command-line arguments of `connmirror standby`.
#[derive(Clone, Debug, clap::Args)]
pub struct StandbyArgs {
    /// Capture settings (the standby mirrors both of its links; with ingress
    /// capture on both, `--egress none` avoids seeing each segment twice).
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Control socket (created mode 0600) that `connmirror takeover` talks to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
    /// Handoff socket (created mode 0600) that applications register on to
    /// receive restored connections (see the `connmirror::resume::handoff` API).
    #[arg(long, value_name = "PATH", default_value = handoff::DEFAULT_SOCKET)]
    pub handoff: PathBuf,
    /// How a service's restored connections continue: `IP:PORT=handoff` (to an
    /// application on the handoff socket; the default) or
    /// `IP:PORT=replay:APP_IP:APP_PORT` (replay the recorded client bytes into a
    /// standby instance of an unmodified, deterministic server listening there,
    /// verify its output, then splice; needs `--service IP:PORT=full`).
    #[arg(long = "resume", value_name = "IP:PORT=handoff|replay:ADDR")]
    pub resume: Vec<ResumeSpec>,
    /// Flows first seen mid-stream (no handshake captured): `reset` them, or
    /// `restore` them with conservative options (MSS 536, no window scaling, no
    /// SACK). Neither side's window-scale shift is known then, so the restored
    /// ends misread each other's windows: fine for small exchanges, while bulk
    /// transfers crawl through drops and retransmissions.
    #[arg(long, value_enum, default_value = "reset")]
    pub mid_stream: MidStream,
    /// Interface the service addresses are added to at takeover (as /32 or /128).
    #[arg(long, value_name = "IF", default_value = "lo")]
    pub address_iface: String,
    /// Send gratuitous ARP (IPv4) / unsolicited neighbour advertisements (IPv6)
    /// for the service addresses on this interface after a takeover. Repeat for
    /// several; for L2 topologies.
    #[arg(long = "announce", value_name = "IF")]
    pub announce: Vec<String>,
    /// Announcements per address and interface, 100 ms apart.
    #[arg(long, default_value_t = 3)]
    pub announce_count: u32,
    /// Threads that rebuild sockets in parallel [default: the number of CPUs].
    #[arg(long)]
    pub restore_workers: Option<usize>,
    /// How bytes the client has not acknowledged go back into the restored send
    /// queue: `unsent` (written right after repair mode, while the clients are
    /// still quiesced, so they go out at once) or `sent` (queued in repair mode
    /// as already sent: they wait for the restored socket's retransmission
    /// timer, which has no RTT sample yet; seconds, measured).
    #[arg(long, value_enum, default_value = "unsent")]
    pub send_queue: QueueArg,
    /// Milliseconds a restored socket waits for an application to take it on
    /// the handoff socket before it is reset.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub handoff_wait: u64,
    /// Milliseconds a replay may take to reproduce the recorded output.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub replay_timeout: u64,
    /// Failure detection.
    #[command(flatten)]
    pub detection: DetectionArgs,
    /// On-host mode: accept the primary agent's replication channel on this
    /// TCP address (the agent's `--replicate-to`), authenticated with
    /// `--key`, and take over from the journal it streams. The standby then
    /// needs no capture of its own (`--ingress none --egress none`).
    #[arg(long, value_name = "IP:PORT", requires = "key")]
    pub replication_listen: Option<SocketAddr>,
    /// What to do when the old primary returns and announces itself
    /// recovering: `drain` (keep the restored connections here until they
    /// close, send new ones to the primary, yield ownership), `migrate` (move
    /// them to the primary live, then yield; applications must `shutdown()`
    /// before `close()`, see `connmirror::failover::migrate`) or `manual` (log it and
    /// keep serving).
    #[arg(long, value_enum, default_value = "manual")]
    pub failback: Failback,
    /// Keep a duplicate of each socket handed to an application, so that
    /// `connmirror migrate --to NODE` can move it later (implied by
    /// `--failback migrate`). Applications must then `shutdown()` before
    /// `close()`: closing one descriptor no longer ends the connection.
    #[arg(long)]
    pub keep_sockets: bool,
    /// Routing table for the drained connections' local routes (`--failback
    /// drain`; see `connmirror::failover::drain`).
    #[arg(long, value_name = "ID", default_value_t = drain::DEFAULT_TABLE)]
    pub drain_table: u32,
}

/// `--failback` values: how services go back to a returning primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Failback {
    /// Restored connections stay until they close; new ones go to the primary.
    Drain,
    /// Restored connections move to the primary live (`TCP_REPAIR` dump and
    /// restore; the primary's agent needs `--handoff`).
    Migrate,
    /// Log the return; ownership stays here.
    Manual,
}

/// Failure-detection flags of `connmirror standby`.
#[derive(Clone, Debug, clap::Args)]
pub struct DetectionArgs {
    /// Listen for the primary agent's heartbeats on this UDP address (e.g.
    /// `0.0.0.0:7400`). Without it the standby only takes over by hand.
    #[arg(long, value_name = "IP:PORT", requires = "key")]
    pub heartbeat_listen: Option<SocketAddr>,
    /// Shared key file (mode 0600, at least 16 bytes), the agent's `--key`;
    /// required with --heartbeat-listen.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The cluster's id; heartbeats of other clusters are dropped.
    #[arg(long, value_name = "ID", default_value = "connmirror")]
    pub cluster_id: String,
    /// This node's id, in the heartbeats it sends once it owns services.
    #[arg(long, value_name = "ID", default_value = "standby")]
    pub node_id: String,
    /// The agent's heartbeat interval, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub heartbeat_interval: u64,
    /// Heartbeats missed in a row before the primary is declared lost.
    #[arg(long, default_value_t = 3)]
    pub missed: u32,
    /// On a lost primary: `auto` takes over at once, `manual` only logs it.
    #[arg(long, value_enum, default_value = "auto")]
    pub failover: Policy,
    /// The primary agent's UDP address (its host and `--port`). The standby
    /// solicits the agent's ownership there when it starts, and arms as soon
    /// as the answer arrives instead of at the next heartbeat [default: wait
    /// for the heartbeats].
    #[arg(long, value_name = "IP:PORT", requires = "heartbeat_listen")]
    pub primary: Option<SocketAddr>,
}

impl DetectionArgs {
    /// The detector's settings, or `None` without `--heartbeat-listen`.
    fn config(&self) -> anyhow::Result<Option<DetectorConfig>> {
        let (Some(listen), Some(key)) = (self.heartbeat_listen, &self.key) else {
            return Ok(None);
        };
        anyhow::ensure!(self.missed > 0, "--missed must be at least 1");
        Ok(Some(DetectorConfig {
            listen,
            key: Key::load(key)?,
            cluster_id: self.cluster_id.clone(),
            interval: Duration::from_millis(self.heartbeat_interval.max(1)),
            missed: self.missed,
            policy: self.failover,
            solicit: self.primary,
            node_id: self.node_id.clone(),
        }))
    }
}

/// `--send-queue` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueArg {
    /// Queued in repair mode: counted as sent.
    Sent,
    /// Written after leaving repair mode: sent at once.
    Unsent,
}

/// A `--resume` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeSpec(pub SocketAddr, pub Resume);

impl FromStr for ResumeSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (service, how) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not IP:PORT=handoff or IP:PORT=replay:ADDR"))?;
        let service: SocketAddr = service
            .parse()
            .map_err(|_| format!("{service:?} is not an IP:PORT service address"))?;
        let resume = match how.split_once(':') {
            None if how == "handoff" => Resume::Handoff,
            Some(("replay", app)) => Resume::Replay(
                app.parse()
                    .map_err(|_| format!("{app:?} is not an IP:PORT application address"))?,
            ),
            _ => return Err(format!("{how:?} is not `handoff` or `replay:IP:PORT`")),
        };
        Ok(Self(service, resume))
    }
}

impl StandbyArgs {
    fn takeover_config(&self) -> TakeoverConfig {
        let workers = self.restore_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        });
        TakeoverConfig {
            address_iface: self.address_iface.clone(),
            announce: self.announce.clone(),
            announce_count: self.announce_count,
            workers: workers.max(1),
            mid_stream: self.mid_stream,
            queue: match self.send_queue {
                QueueArg::Sent => QueueMode::Sent,
                QueueArg::Unsent => QueueMode::Unsent,
            },
            resume: self
                .resume
                .iter()
                .map(|ResumeSpec(s, r)| (*s, *r))
                .collect(),
            handoff_wait: Duration::from_millis(self.handoff_wait),
            replay_timeout: Duration::from_millis(self.replay_timeout),
            keep: (self.failback == Failback::Migrate || self.keep_sockets).then(Kept::default),
        }
    }

    /// Every `--resume` must name a `--service`.
    fn check(&self) -> anyhow::Result<()> {
        let services: BTreeSet<SocketAddr> = self.mirror.services.iter().map(|s| s.0).collect();
        for ResumeSpec(service, _) in &self.resume {
            anyhow::ensure!(
                services.contains(service),
                "--resume names {service}, which is not a --service"
            );
        }
        Ok(())
    }
}

/// Runs the standby until SIGINT or SIGTERM.
pub async fn run(args: StandbyArgs) -> anyhow::Result<()> {
    if args.mirror.detach_all {
        return detach_pinned(&args.mirror);
    }
    args.check()?;
    match connmirror_handoff::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(err) => tracing::warn!(%err, "raising the open-file limit"),
    }
    let config = args.takeover_config();
    let detection = args.detection.config()?;
    let key = detection.as_ref().map(|d| d.key.clone());
    let needs_handoff = args
        .mirror
        .services
        .iter()
        .any(|s| !matches!(config.resume.get(&s.0), Some(Resume::Replay(_))));
    let replica = match (args.replication_listen, &args.detection.key) {
        (Some(listen), Some(key)) => {
            let full = full_retention(&args.mirror);
            Some(Replica::start(listen, Key::load(key)?, full)?)
        }
        _ => None,
    };
    let ifaces: Vec<String> = args.mirror.ifaces.iter().map(|i| i.name.clone()).collect();
    let mut mirror = Mirror::start(args.mirror)?;
    let handoff = match needs_handoff {
        true => Some(Arc::new(
            HandoffServer::bind(&args.handoff).context("opening the handoff socket")?,
        )),
        false => None,
    };
    let control = ControlServer::bind(&args.control).context("opening the control socket")?;
    let detector = match detection {
        Some(config) => Some(
            Detector::start(config)
                .await
                .context("binding the heartbeat socket")?,
        ),
        None => None,
    };
    let prune = tokio::time::interval(PRUNE_INTERVAL);
    let migrations = match args.detection.heartbeat_listen {
        Some(listen) => Some(
            (tokio::net::TcpListener::bind(listen).await)
                .with_context(|| format!("listening for planned migrations on TCP {listen}"))?,
        ),
        None => None,
    };
    let mut sources = Sources {
        control,
        detector,
        prune,
        migrations,
    };
    let mut signals = Signals::install()?;
    announce_ready()?;
    let mut standby = Standby {
        config,
        handoff,
        taken: BTreeMap::new(),
        reports: Vec::new(),
        epoch: 0,
        node_id: args.detection.node_id.clone(),
        cluster_id: args.detection.cluster_id.clone(),
        replica,
        failback: args.failback,
        drain_table: args.drain_table,
        ifaces,
        drains: Vec::new(),
        handed_back: None,
        failbacks: 0,
        migrations: 0,
        key,
        step_downs: 0,
        recovering_seen: false,
        recovering_at: BTreeMap::new(),
        migration_counter: 0,
        migrations_in: 0,
        migrations_refused: 0,
    };
    loop {
        match mirror.next_event(&mut signals, Some(&mut sources)).await? {
            Event::Stop => break,
            Event::Scrape(scrape) => scrape.answer(standby.families(&mirror, &sources)),
            Event::Message(StandbyEvent::Control(pending)) => {
                standby
                    .serve(&mut mirror, sources.detector.as_ref(), pending)
                    .await
            }
            Event::Message(StandbyEvent::PrimaryLost(ownership)) => {
                standby.primary_lost(&mut mirror, ownership).await
            }
            Event::Message(StandbyEvent::Claim(message, from)) => {
                standby.claimed(&mut mirror, message, from).await
            }
            Event::Message(StandbyEvent::Prune) => standby.prune(),
            Event::Message(StandbyEvent::Migration(stream, from)) => {
                standby.migrated_in(&mut mirror, stream, from).await
            }
        }
        if let Some(detector) = &sources.detector {
            standby.publish(detector);
        }
    }
    for drain in &mut standby.drains {
        if let Err(err) = drain.clear() {
            tracing::warn!("removing the drain routes: {err:#}");
        }
    }
    let summary = StandbySummary {
        control_rejected: sources.control.rejected(),
        handoff_rejected: standby.handoff.as_ref().map_or(0, |h| h.rejected()),
        heartbeats: sources.detector.as_ref().map(Detector::stats),
    };
    mirror.finish(report_section(standby.reports, summary))?;
    Ok(())
}

/// The service addresses whose flows keep their whole history (a replica
/// never releases their bytes).
fn full_retention(mirror: &MirrorArgs) -> BTreeSet<SocketAddr> {
    (mirror.services.iter())
        .filter(|s| match s.1 {
            Some(retention) => retention == RetentionName::Full,
            None => mirror.retention == RetentionArg::Full,
        })
        .map(|s| s.0)
        .collect()
}

/// What wakes the standby besides the ring and the signals.
enum StandbyEvent {
    /// A request on the control socket.
    Control(Pending),
    /// The failure detector lost the primary (policy `auto`).
    PrimaryLost(Ownership),
    /// A verified message concerning what this node owns (see
    /// [`Detector::claim`]), and where it came from.
    Claim(Message, SocketAddr),
    /// Time to drop the routes of drained connections that closed.
    Prune,
    /// The primary opened a planned migration ([`crate::failover::migrate`]).
    Migration(std::net::TcpStream, SocketAddr),
}

/// How often drained connections are checked for having closed.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// The control socket and, with `--heartbeat-listen`, the failure detector.
struct Sources {
    control: ControlServer,
    detector: Option<Detector>,
    prune: tokio::time::Interval,
    /// Planned migrations from the primary, on TCP at the heartbeat address.
    migrations: Option<tokio::net::TcpListener>,
}

impl EventSource<StandbyEvent> for Sources {
    async fn next(&mut self) -> StandbyEvent {
        let Self {
            control,
            detector,
            prune,
            migrations,
        } = self;
        let Some(detector) = detector.as_mut() else {
            return StandbyEvent::Control(control.next().await);
        };
        tokio::select! {
            pending = control.next() => StandbyEvent::Control(pending),
            detected = detector.next() => match detected {
                Detected::Lost(ownership) => StandbyEvent::PrimaryLost(ownership),
                Detected::Claim(message, from) => StandbyEvent::Claim(message, from),
            },
            _ = prune.tick() => StandbyEvent::Prune,
            accepted = migrate::accept(migrations.as_ref()) => match accepted {
                Ok((stream, from)) => StandbyEvent::Migration(stream, from),
                Err(err) => {
                    tracing::warn!(%err, "accepting a migration");
                    StandbyEvent::Prune
                }
            },
        }
    }
}

/// The standby's takeover state.
struct Standby {
    config: TakeoverConfig,
    handoff: Option<Arc<HandoffServer>>,
    /// Services already taken over, with the takeover's index in `reports`.
    taken: BTreeMap<SocketAddr, usize>,
    reports: Vec<TakeoverReport>,
    /// The highest ownership epoch seen or held.
    epoch: u64,
    /// Ours, for the heartbeats we send once we own services.
    node_id: String,
    cluster_id: String,
    /// On-host mode: the flows the agent replicates.
    replica: Option<Replica>,
    /// The `--failback` policy.
    failback: Failback,
    /// Routing table for drained connections.
    drain_table: u32,
    /// The capture interfaces: drained connections are fenced on them.
    ifaces: Vec<String>,
    /// Connections still served here after a `drain` failback.
    drains: Vec<Drain>,
    /// Services handed back, announced with `Yield` until the primary claims
    /// a higher epoch.
    handed_back: Option<Ownership>,
    /// Failbacks run (drain, migrate) and step-downs, for the metrics.
    failbacks: u64,
    migrations: u64,
    /// The shared key (with `--heartbeat-listen`): migrations are signed with it.
    key: Option<Key>,
    step_downs: u64,
    /// Whether a `Recovering` primary was already logged under `manual`.
    recovering_seen: bool,
    /// Where each recovering node's agent was last heard from.
    recovering_at: BTreeMap<String, SocketAddr>,
    /// The highest planned-migration counter accepted.
    migration_counter: u64,
    /// Planned migrations taken in, and refused.
    migrations_in: u64,
    migrations_refused: u64,
}

impl Standby {
    async fn serve(&mut self, mirror: &mut Mirror, detector: Option<&Detector>, pending: Pending) {
        let Pending { request, reply } = pending;
        let trigger = Trigger {
            name: "manual",
            epoch: self.epoch + 1,
        };
        let response = match request {
            Request::Status => Response::Status(Box::new(self.status(mirror, detector))),
            Request::Migrate { to, services } => {
                match self.migrate_to(mirror, detector, &to, services).await {
                    Ok(report) => Response::Migrate(report),
                    Err(err) => {
                        tracing::error!("migration failed: {err:#}");
                        Response::Error(format!("{err:#}"))
                    }
                }
            }
            Request::Takeover { services } => {
                match self.takeover(mirror, services, trigger).await {
                    Ok(report) => Response::Takeover(report),
                    Err(err) => {
                        tracing::error!("takeover failed: {err:#}");
                        Response::Error(format!("{err:#}"))
                    }
                }
            }
        };
        // The requester may have gone; the takeover stands either way.
        let _ = reply.send(response);
    }

    /// The detector lost the primary: take over every service it owned that
    /// this standby protects, under the next epoch.
    async fn primary_lost(&mut self, mirror: &mut Mirror, ownership: Ownership) {
        self.epoch = self.epoch.max(ownership.epoch);
        let trigger = Trigger {
            name: "heartbeats-missed",
            epoch: self.epoch + 1,
        };
        let owned: Vec<SocketAddr> = (ownership.services.iter())
            .filter(|s| {
                mirror.services.iter().any(|t| t.addr == **s) && !self.taken.contains_key(s)
            })
            .copied()
            .collect();
        if owned.is_empty() {
            tracing::warn!(
                node = ownership.node_id,
                "primary lost, but none of its services is left to take over"
            );
            return;
        }
        if let Err(err) = self.takeover(mirror, Some(owned), trigger).await {
            tracing::error!("automatic takeover failed: {err:#}");
        }
    }

    async fn takeover(
        &mut self,
        mirror: &mut Mirror,
        asked: Option<Vec<SocketAddr>>,
        trigger: Trigger,
    ) -> anyhow::Result<TakeoverReport> {
        let services = self.select(&mirror.services, asked)?;
        if let Some(replica) = &self.replica {
            let flows = replica.restore_into(&mut mirror.reader.table, &services);
            tracing::info!(flows, "replicated flows put in the table for the takeover");
        }
        tracing::info!(services = ?services.iter().map(|s| s.addr).collect::<Vec<_>>(), trigger = trigger.name, "takeover");
        let report = takeover::run(
            mirror,
            &self.config,
            self.handoff.clone(),
            &services,
            trigger,
        )
        .await?;
        self.taken_over(&services, &report);
        Ok(report)
    }

    /// Records a takeover (or an adopted migration) of `services`: they are
    /// served here under the report's epoch.
    fn taken_over(&mut self, services: &[Service], report: &TakeoverReport) {
        self.epoch = report.epoch;
        for service in services {
            self.taken.insert(service.addr, self.reports.len());
        }
        self.reports.push(report.clone());
    }

    /// What this node owns, once it took services over: announced to the
    /// old primary so that it steps down.
    fn ownership(&self) -> Option<Ownership> {
        (!self.taken.is_empty()).then(|| Ownership {
            services: self.taken.keys().copied().collect(),
            ..self.ownership_record()
        })
    }

    /// Our ownership record, with no services.
    fn ownership_record(&self) -> Ownership {
        Ownership {
            node_id: self.node_id.clone(),
            cluster_id: self.cluster_id.clone(),
            epoch: self.epoch,
            services: Vec::new(),
            macs: Vec::new(),
            policy: "auto".into(),
            applications: Vec::new(),
        }
    }

    /// Tells the detector what to send the primary: our ownership while we
    /// own services, `Yield` while handing them back, else nothing.
    fn publish(&self, detector: &Detector) {
        match (self.ownership(), &self.handed_back) {
            (Some(owned), _) => detector.announce(owned),
            (None, Some(yielded)) => detector.hand_back(yielded.clone()),
            (None, None) => detector.withdraw(),
        }
    }

    /// A verified message about services we own or hand back, from `from`.
    async fn claimed(&mut self, mirror: &mut Mirror, message: Message, from: SocketAddr) {
        let theirs = &message.ownership;
        match message.kind {
            Kind::Heartbeat if self.taken.is_empty() && self.handed_back.is_some() => {
                self.epoch = self.epoch.max(theirs.epoch);
                self.handed_back = None;
                tracing::info!(
                    owner = theirs.node_id,
                    epoch = theirs.epoch,
                    "failback complete: the primary owns the services again"
                );
            }
            Kind::Heartbeat => self.step_down(mirror, theirs),
            Kind::Recovering => self.recovering(mirror, theirs, from).await,
            Kind::Solicit | Kind::Yield => {}
        }
    }

    /// The services of ours that `theirs` names.
    fn ours_in(&self, mirror: &Mirror, theirs: &Ownership) -> Vec<Service> {
        (mirror.services.iter())
            .filter(|s| self.taken.contains_key(&s.addr) && theirs.services.contains(&s.addr))
            .copied()
            .collect()
    }

    /// A higher epoch claims services we serve: stop serving them at once
    /// (two hosts never serve one address) and protect them again.
    fn step_down(&mut self, mirror: &mut Mirror, theirs: &Ownership) {
        let services = self.ours_in(mirror, theirs);
        if services.is_empty() || theirs.epoch <= self.epoch {
            return;
        }
        self.epoch = theirs.epoch;
        self.step_downs += 1;
        if let Err(err) = self.release(mirror, &services) {
            tracing::error!("stepping down: {err:#}");
        }
        tracing::warn!(
            owner = theirs.node_id,
            epoch = theirs.epoch,
            services = ?services.iter().map(|s| s.addr).collect::<Vec<_>>(),
            "stepped down: a higher epoch owns the services"
        );
    }

    /// Stops serving `services`: their addresses leave this host, their
    /// segments are captured again (unfenced), and they count as protected.
    fn release(&mut self, mirror: &mut Mirror, services: &[Service]) -> anyhow::Result<()> {
        let mut ips: Vec<_> = services.iter().map(|s| s.addr.ip()).collect();
        ips.sort();
        ips.dedup();
        for ip in ips {
            let removed = address::release(ip)?;
            tracing::info!(%ip, removed, "service address released");
        }
        for service in services {
            self.taken.remove(&service.addr);
            mirror
                .capture
                .set_mode(service, 0)
                .with_context(|| format!("protecting {service} again"))?;
        }
        Ok(())
    }

    /// The old primary announced itself recovering (its agent at `from`):
    /// hand its services back under the `--failback` policy.
    async fn recovering(&mut self, mirror: &mut Mirror, theirs: &Ownership, from: SocketAddr) {
        self.recovering_at.insert(theirs.node_id.clone(), from);
        let services = self.ours_in(mirror, theirs);
        if services.is_empty() {
            return;
        }
        if self.failback == Failback::Manual {
            if !std::mem::replace(&mut self.recovering_seen, true) {
                tracing::warn!(
                    node = theirs.node_id,
                    "the primary is recovering; failback policy is manual: ownership stays here"
                );
            }
            return;
        }
        if self.failback == Failback::Migrate {
            match self
                .migrate_back(mirror, &services, from, &theirs.node_id)
                .await
            {
                Ok(receipt) => tracing::info!(
                    node = theirs.node_id,
                    epoch = self.epoch,
                    moved = receipt.restored,
                    "failback (migrate): connections moved to the primary"
                ),
                Err(err) => tracing::error!("failback (migrate) failed: {err:#}"),
            }
            return;
        }
        match self.drain_back(mirror, &services) {
            Ok(flows) => tracing::info!(
                node = theirs.node_id,
                epoch = self.epoch,
                flows,
                "failback (drain): restored connections stay here until they close; new ones go to the primary"
            ),
            Err(err) => tracing::error!("failback (drain) failed: {err:#}"),
        }
    }

    /// `connmirror migrate --to NODE`: moves the connections of `asked` (every
    /// service taken over when `None`) to the agent of `to`, heard recovering
    /// or as the primary, whatever the `--failback` policy.
    async fn migrate_to(
        &mut self,
        mirror: &mut Mirror,
        detector: Option<&Detector>,
        to: &str,
        asked: Option<Vec<SocketAddr>>,
    ) -> anyhow::Result<MigrateReport> {
        let peer = detector.and_then(Detector::peer);
        let agent = (self.recovering_at.get(to).copied())
            .or_else(|| {
                peer.filter(|p| p.ownership.node_id == to)
                    .map(|p| p.address)
            })
            .with_context(|| {
                format!("node {to:?} was never heard from: its agent must run (with --handoff)")
            })?;
        let addrs = asked.unwrap_or_else(|| self.taken.keys().copied().collect());
        anyhow::ensure!(!addrs.is_empty(), "no service is taken over here");
        let services: Vec<Service> = (addrs.iter())
            .map(|addr| {
                anyhow::ensure!(
                    self.taken.contains_key(addr),
                    "service {addr} is not taken over here"
                );
                mirror
                    .services
                    .iter()
                    .find(|s| s.addr == *addr)
                    .copied()
                    .with_context(|| format!("service {addr} is not protected by this standby"))
            })
            .collect::<anyhow::Result<_>>()?;
        let epoch = self.epoch;
        let receipt = self.migrate_back(mirror, &services, agent, to).await?;
        tracing::info!(to, %agent, moved = receipt.restored, "migrated on request");
        Ok(MigrateReport {
            to: to.to_owned(),
            peer: agent,
            services: addrs,
            moved: receipt.restored,
            errors: receipt.errors,
            epoch,
        })
    }

    /// `--failback migrate`: quiesce `services`, dump their restored
    /// connections and send them to the agent at `agent` ([`migrate`]); once
    /// it took them, let ours go silently, release the services and yield.
    /// On failure every connection stays here, served as before.
    async fn migrate_back(
        &mut self,
        mirror: &mut Mirror,
        services: &[Service],
        agent: SocketAddr,
        to: &str,
    ) -> anyhow::Result<Receipt> {
        let (Some(kept), Some(key)) = (self.config.keep.clone(), self.key.clone()) else {
            anyhow::bail!(
                "this standby keeps no sockets to migrate: start it with --failback migrate or --keep-sockets"
            );
        };
        let addrs: Vec<SocketAddr> = services.iter().map(|s| s.addr).collect();
        let sockets = take_kept(&kept, &addrs);
        let quiesced = ServiceMode::QUIESCED | ServiceMode::FENCED;
        mirror.set_modes(services, quiesced)?;
        let batch = Batch {
            node_id: self.node_id.clone(),
            to: to.to_owned(),
            counter: heartbeat::initial_counter(),
            epoch: self.epoch,
            plans: Vec::new(),
        };
        let progress = unseen_progress(&sockets);
        let (sockets, sent) = tokio::task::spawn_blocking(move || {
            let sent = migrate::send(agent, &key, &sockets, batch);
            (sockets, sent)
        })
        .await
        .context("the migration task")?;
        let (receipt, plans) = match sent {
            Ok(sent) => sent,
            Err(err) => {
                kept.lock().expect("kept sockets").extend(sockets);
                mirror.set_modes(services, ServiceMode::FENCED | ServiceMode::OWNED)?;
                return Err(err);
            }
        };
        drop(sockets);
        for error in &receipt.errors {
            tracing::warn!(error, "the primary could not take a connection");
        }
        let followed = (plans.iter())
            .filter(|plan| {
                let (received, acked) = progress
                    .get(&(plan.server, plan.client))
                    .copied()
                    .unwrap_or_default();
                mirror.reader.table.rebase(plan, received, acked)
            })
            .count();
        tracing::info!(
            followed,
            of = plans.len(),
            "migrated connections rebased in the flow table: capture follows them again"
        );
        self.release(mirror, services)?;
        self.migrations += 1;
        self.handed_back = Some(Ownership {
            services: addrs,
            ..self.ownership_record()
        });
        Ok(receipt)
    }

    /// A planned migration from the primary at `from`: logs and counts it.
    async fn migrated_in(&mut self, mirror: &mut Mirror, stream: TcpStream, from: SocketAddr) {
        match self.take_migration(mirror, stream).await {
            Ok(report) => {
                self.migrations_in += 1;
                tracing::info!(
                    %from,
                    restored = report.restored,
                    failed = report.errors.len(),
                    epoch = report.epoch,
                    "planned migration: the primary's connections are served here"
                );
            }
            Err(err) => {
                self.migrations_refused += 1;
                tracing::warn!(%from, "planned migration refused: {err:#}");
            }
        }
    }

    /// Serves one planned migration ([`crate::failover::migrate`]): checks its
    /// [`Prepare`], quiesces and fences the services, answers, takes the
    /// [`Batch`]'s connections over ([`takeover::adopt`]) and sends the
    /// receipt. If the primary goes away before its batch, the services are
    /// protected again and nothing changed.
    async fn take_migration(
        &mut self,
        mirror: &mut Mirror,
        stream: TcpStream,
    ) -> anyhow::Result<TakeoverReport> {
        let key = self.key.clone().context("no key")?;
        let k = key.clone();
        let (stream, prepare) = on_stream(stream, move |s| {
            migrate::read_frame::<Prepare>(s, &k).context("reading a migration request")
        })
        .await?;
        let counter = prepare.counter;
        let services = match self.check_prepare(mirror, &prepare) {
            Ok(services) => services,
            Err(reason) => {
                let refused = Prepared {
                    counter,
                    refused: Some(reason.clone()),
                };
                let k = key.clone();
                let _ =
                    on_stream(stream, move |s| Ok(migrate::write_frame(s, &k, &refused)?)).await;
                anyhow::bail!(reason);
            }
        };
        mirror.set_modes(&services, ServiceMode::QUIESCED | ServiceMode::FENCED)?;
        let k = key.clone();
        let exchanged = on_stream(stream, move |s| {
            let ready = Prepared {
                counter,
                refused: None,
            };
            migrate::write_frame(s, &k, &ready).context("answering the migration request")?;
            let batch: Batch = migrate::read_frame(s, &k).context("reading the batch")?;
            anyhow::ensure!(
                batch.counter == counter,
                "batch {} in migration {counter}",
                batch.counter
            );
            Ok(batch)
        })
        .await
        .and_then(|(stream, batch)| {
            let addrs: Vec<SocketAddr> = services.iter().map(|s| s.addr).collect();
            match batch.plans.iter().find(|p| !addrs.contains(&p.server)) {
                Some(p) => anyhow::bail!(
                    "the batch has a connection of {}, not a service it named",
                    p.server
                ),
                None => Ok((stream, batch)),
            }
        });
        let (stream, batch) = match exchanged {
            Ok(exchanged) => exchanged,
            Err(err) => {
                mirror.set_modes(&services, 0)?;
                return Err(err);
            }
        };
        let trigger = Trigger {
            name: "migration",
            epoch: self.epoch.max(prepare.epoch) + 1,
        };
        let handoff = self.handoff.clone();
        let report = takeover::adopt(
            mirror,
            &self.config,
            handoff,
            &services,
            batch.plans,
            trigger,
        )
        .await?;
        self.taken_over(&services, &report);
        let receipt = Receipt {
            counter,
            restored: report.restored,
            errors: report.errors.clone(),
            refused: None,
        };
        if let Err(err) = on_stream(stream, move |s| {
            Ok(migrate::write_frame(s, &key, &receipt)?)
        })
        .await
        {
            tracing::warn!(
                "sending the migration receipt (the primary's copies stay behind the fence): {err:#}"
            );
        }
        Ok(report)
    }

    /// The services of a planned migration's [`Prepare`], or why not.
    fn check_prepare(
        &mut self,
        mirror: &Mirror,
        prepare: &Prepare,
    ) -> Result<Vec<Service>, String> {
        let (to, from) = (&prepare.to, &prepare.node_id);
        migrate::check_frame(
            to,
            from,
            prepare.counter,
            &self.node_id,
            &mut self.migration_counter,
        )?;
        if prepare.services.is_empty() {
            return Err("the request names no service".into());
        }
        (prepare.services.iter())
            .map(|addr| {
                let service = (mirror.services.iter())
                    .find(|s| s.addr == *addr)
                    .ok_or_else(|| format!("service {addr} is not protected here"))?;
                if self.taken.contains_key(addr) {
                    return Err(format!("service {addr} is already served here"));
                }
                if let Some(Resume::Replay(_)) = self.config.resume.get(addr) {
                    return Err(format!(
                        "service {addr} resumes by replay here: migrated connections need an application on the handoff socket"
                    ));
                }
                if !self.handoff.as_ref().is_some_and(|h| h.serves(*addr)) {
                    return Err(format!(
                        "no application is registered on the handoff socket for {addr}"
                    ));
                }
                Ok(*service)
            })
            .collect()
    }

    /// `--failback drain`: keep delivering the restored connections of
    /// `services` here, then release them and yield ownership.
    fn drain_back(&mut self, mirror: &mut Mirror, services: &[Service]) -> anyhow::Result<usize> {
        let addrs: Vec<SocketAddr> = services.iter().map(|s| s.addr).collect();
        let flows: Vec<drain::FlowEnds> = (self.reports.iter())
            .flat_map(|r| &r.flows)
            .filter(|(server, _)| addrs.contains(server))
            .copied()
            .collect();
        let drain = Drain::install(&flows, self.drain_table, &self.ifaces)
            .context("routing the drained connections")?;
        self.drains.push(drain);
        self.release(mirror, services)?;
        self.failbacks += 1;
        self.handed_back = Some(Ownership {
            services: addrs,
            ..self.ownership_record()
        });
        Ok(flows.len())
    }

    /// Drops the routes of drained connections that closed.
    fn prune(&mut self) {
        for drain in &mut self.drains {
            if let Err(err) = drain.prune() {
                tracing::warn!("pruning drained connections: {err:#}");
            }
        }
        self.drains.retain(|d| !d.is_done());
    }

    /// Connections still served here after a drain.
    fn draining(&self) -> usize {
        self.drains.iter().map(Drain::remaining).sum()
    }

    /// The standby's metrics: the mirror's, heartbeats, rejected requests,
    /// takeovers and the epoch.
    fn families(&self, mirror: &Mirror, sources: &Sources) -> Vec<Family> {
        let mut families = mirror.families();
        if let Some(detector) = &sources.detector {
            families.extend(detector.stats().families());
        }
        let handoff_rejected = self.handoff.as_ref().map_or(0, |h| h.rejected());
        families.extend([
            Family::counter(
                "control_rejected",
                "Control requests refused (malformed, oversize, another user's).",
                None,
            )
            .count(Vec::new(), sources.control.rejected()),
            Family::counter("handoff_rejected", "Handoff registrations refused.", None)
                .count(Vec::new(), handoff_rejected),
            Family::gauge("epoch", "The highest ownership epoch held or seen.", None)
                .set(Vec::new(), self.epoch as f64),
            Family::counter(
                "failbacks",
                "Services handed back to a recovering primary, by policy.",
                None,
            )
            .count(vec![("policy", "drain".into())], self.failbacks)
            .count(vec![("policy", "migrate".into())], self.migrations),
            Family::counter(
                "planned_migrations",
                "Planned migrations from the primary (connmirror migrate on its agent), by outcome.",
                None,
            )
            .count(vec![("outcome", "taken".into())], self.migrations_in)
            .count(vec![("outcome", "refused".into())], self.migrations_refused),
            Family::counter(
                "step_downs",
                "Times this node stopped serving because a higher epoch claimed its services.",
                None,
            )
            .count(Vec::new(), self.step_downs),
            Family::gauge(
                "draining_connections",
                "Restored connections still served here after a drain failback.",
                None,
            )
            .set(Vec::new(), self.draining() as f64),
        ]);
        families.extend(takeover::families(&self.reports));
        if let Some(replica) = &self.replica {
            families.extend(replica.families());
        }
        families
    }

    /// The node's status for `connmirror status`.
    fn status(&self, mirror: &Mirror, detector: Option<&Detector>) -> StatusReport {
        let services = (mirror.services.iter())
            .map(|s| ServiceStatus {
                addr: s.addr,
                state: if self.taken.contains_key(&s.addr) {
                    "taken-over".into()
                } else if self.drains.iter().any(|d| d.serves(s.addr)) {
                    "draining".into()
                } else {
                    "protected".into()
                },
            })
            .collect();
        let counts = match &self.replica {
            Some(replica) if self.taken.is_empty() => replica.readiness_counts(),
            _ => mirror.reader.table.readiness_counts(),
        };
        let flows = (counts.into_iter())
            .map(|(readiness, n)| (readiness.to_owned(), n))
            .collect();
        let peer = detector.and_then(Detector::peer);
        StatusReport {
            role: if self.taken.is_empty() {
                "standby"
            } else {
                "owner"
            }
            .into(),
            epoch: self
                .epoch
                .max(peer.as_ref().map_or(0, |p| p.ownership.epoch)),
            peer,
            heartbeats: detector.map(Detector::stats),
            services,
            flows,
            replication_lag: self.replica.as_ref().and_then(Replica::lag),
            takeovers: self.reports.len(),
        }
    }

    /// The services a request names (all not yet taken over when it names none).
    fn select(
        &self,
        tracked: &[Service],
        asked: Option<Vec<SocketAddr>>,
    ) -> anyhow::Result<Vec<Service>> {
        let Some(asked) = asked else {
            let left: Vec<Service> = (tracked.iter())
                .filter(|s| !self.taken.contains_key(&s.addr))
                .copied()
                .collect();
            anyhow::ensure!(!left.is_empty(), "every service was already taken over");
            return Ok(left);
        };
        asked
            .into_iter()
            .map(|addr| {
                anyhow::ensure!(
                    !self.taken.contains_key(&addr),
                    "service {addr} was already taken over"
                );
                tracked
                    .iter()
                    .find(|s| s.addr == addr)
                    .copied()
                    .with_context(|| format!("service {addr} is not protected by this standby"))
            })
            .collect()
    }
}

/// Runs `f` on `stream` on a blocking thread and gives the stream back with
/// its result (a migration's frames are blocking reads and writes).
async fn on_stream<T: Send + 'static>(
    mut stream: TcpStream,
    f: impl FnOnce(&mut TcpStream) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<(TcpStream, T)> {
    tokio::task::spawn_blocking(move || f(&mut stream).map(|out| (stream, out)))
        .await
        .context("the migration task")?
}

/// How far each socket's connection went while this host served it
/// uncaptured: (`tcpi_bytes_received`, `tcpi_bytes_acked`) by (local, peer),
/// for [`crate::flow::FlowTable::rebase`]. Read once the services are
/// quiesced, before the dump (letting a socket go resets its counters).
fn unseen_progress(sockets: &[TcpStream]) -> BTreeMap<(SocketAddr, SocketAddr), (u64, u64)> {
    (sockets.iter())
        .filter_map(|s| {
            let info = save::tcp_info(s).ok()?;
            let ends = (s.local_addr().ok()?, s.peer_addr().ok()?);
            Some((ends, (info.tcpi_bytes_received, info.tcpi_bytes_acked)))
        })
        .collect()
}

/// Takes the kept sockets of `services` that are still established; the
/// others (their connections ended) are dropped.
fn take_kept(kept: &Kept, services: &[SocketAddr]) -> Vec<TcpStream> {
    let mut all = kept.lock().expect("kept sockets");
    let (ours, others): (Vec<TcpStream>, Vec<TcpStream>) = std::mem::take(&mut *all)
        .into_iter()
        .partition(|s| s.local_addr().is_ok_and(|a| services.contains(&a)));
    *all = others;
    ours.into_iter()
        .filter(|s| save::tcp_info(s).is_ok_and(|i| i.tcpi_state == TCP_ESTABLISHED))
        .collect()
}

/// `TCP_ESTABLISHED` in `tcpi_state` (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// Messages a standby refused, per socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StandbySummary {
    /// Control requests rejected (malformed, oversize, another user's).
    pub control_rejected: u64,
    /// Handoff registrations rejected.
    pub handoff_rejected: u64,
    /// Heartbeats received, by outcome (with `--heartbeat-listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeats: Option<crate::ownership::heartbeat::HeartbeatStats>,
}

/// The standby's keys in `report.json`: its takeovers (when there were any)
/// and what its sockets refused.
fn report_section(
    takeovers: Vec<TakeoverReport>,
    summary: StandbySummary,
) -> serde_json::Map<String, serde_json::Value> {
    let mut section = serde_json::Map::new();
    if !takeovers.is_empty() {
        section.insert("takeovers".into(), serde_json::json!(takeovers));
    }
    section.insert("standby".into(), serde_json::json!(summary));
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_specs_name_a_service_and_a_mode() {
        assert_eq!(
            "198.18.1.2:7000=handoff".parse(),
            Ok(ResumeSpec(
                "198.18.1.2:7000".parse().unwrap(),
                Resume::Handoff
            ))
        );
        assert_eq!(
            "[fd00::2]:7000=replay:[::1]:7001".parse(),
            Ok(ResumeSpec(
                "[fd00::2]:7000".parse().unwrap(),
                Resume::Replay("[::1]:7001".parse().unwrap())
            ))
        );
        assert_eq!(
            "198.18.1.2:7000=copy".parse::<ResumeSpec>(),
            Err("\"copy\" is not `handoff` or `replay:IP:PORT`".to_owned())
        );
        assert_eq!(
            "198.18.1.2:7000=replay:nowhere".parse::<ResumeSpec>(),
            Err("\"nowhere\" is not an IP:PORT application address".to_owned())
        );
        assert_eq!(
            "7000=handoff".parse::<ResumeSpec>(),
            Err("\"7000\" is not an IP:PORT service address".to_owned())
        );
    }
}
