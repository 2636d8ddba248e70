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
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use connmirror_common::ServiceMode;

use crate::{
    capture::parse_size,
    daemon::control::{ControlServer, DEFAULT_CONTROL, Pending, Request, Response},
    daemon::protection::{Links, Protection, hold, queued},
    daemon::status::{ServiceStatus, StatusReport},
    engine::{
        Engine, Event, EventSource, MirrorArgs, RetentionArg, Signals, announce_ready,
        detach_pinned,
    },
    failover::drain::{self, Drain},
    failover::migrate::{self, MigrateReport, Prepare, Prepared, Receipt, Transfer},
    failover::takeover::{self, Kept, MidStream, Resume, TakeoverConfig, TakeoverReport, Trigger},
    flow::record::Record,
    key::Key,
    metrics::Family,
    net::address,
    ownership::detector::{Detected, Detector, DetectorConfig, Policy},
    ownership::heartbeat::{self, Kind, Message, Ownership},
    repair::restore::QueueMode,
    repair::{save, sockets},
    replication::channel::LinkEvent,
    replication::replica::{self, Replica},
    resume::handoff::{self, HandoffServer},
    resume::live::Live,
    service::{RetentionName, Service},
};

mod args;
mod cluster;
pub use args::{DetectionArgs, Failback, QueueArg, ResumeSpec, StandbyArgs};
mod handover;
mod migration;
mod report;

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
        .any(|s| matches!(config.resume.get(&s.0), None | Some(Resume::Handoff)));
    let replica = start_replica(&args, config.live.as_ref())?;
    let (membership, claimed) = cluster::Membership::join_if_asked(&args).await?;
    let ifaces: Vec<String> = args.mirror.ifaces.iter().map(|i| i.name.clone()).collect();
    let protects = membership.is_some() && replica.is_some() && captures(&args.mirror);
    let sync = args.sync_args();
    let mut mirror = start_engine(args.mirror, &config, protects)?;
    let handoff = match needs_handoff {
        true => Some(Arc::new(
            HandoffServer::bind(&args.handoff).context("opening the handoff socket")?,
        )),
        false => None,
    };
    let mut sources =
        Sources::open(&args.control, detection, args.detection.heartbeat_listen).await?;
    sources.claimed = claimed;
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
        membership,
        protecting: Vec::new(),
        protects,
        sync,
    };
    serve(&mut standby, &mut mirror, &mut sources, &mut signals).await?;
    if let Some(commit) = sources.protection.take().and_then(|p| p.commit) {
        commit.close(false);
    }
    finish(standby, mirror, &sources)
}

/// Starts the engine: the client's bytes copied for the services that need
/// them (replay feeds the standby instance; a node that protects what it
/// takes over copies them for every service, since the standbys left decide
/// how they resume), and live replay fed, if any. A node that protects
/// starts with its services `OWNED` (uncaptured): until a takeover the
/// replica has their flows.
fn start_engine(
    mut mirror_args: MirrorArgs,
    config: &TakeoverConfig,
    protects: bool,
) -> anyhow::Result<Engine> {
    mirror_args.client_payload = match protects {
        true => mirror_args.services.iter().map(|s| s.0).collect(),
        false => (config.resume.iter())
            .filter(|(_, resume)| matches!(resume, Resume::Live(_) | Resume::Replay(_)))
            .map(|(service, _)| *service)
            .collect(),
    };
    let mut mirror = Engine::start(mirror_args)?;
    if protects {
        let services = mirror.services.clone();
        (mirror.set_modes(&services, ServiceMode::OWNED))
            .context("cluster mode: setting the services' capture mode")?;
    }
    if let Some(live) = &config.live {
        attach_live(&mut mirror, live);
    }
    Ok(mirror)
}

/// Whether the standby captures on any of its interfaces (at ingress or
/// egress): in cluster mode it then protects what it takes over.
fn captures(mirror: &MirrorArgs) -> bool {
    use crate::capture::{EgressHook, IngressHook};
    let ingress =
        (mirror.ifaces.iter()).any(|i| i.ingress.unwrap_or(mirror.ingress) != IngressHook::None);
    ingress || mirror.egress != EgressHook::None
}

/// The on-host replica, when the standby listens for replication: it feeds
/// live replay, if any, with every record it receives.
fn start_replica(args: &StandbyArgs, live: Option<&Live>) -> anyhow::Result<Option<Replica>> {
    let (Some(listen), Some(key)) = (args.replication_listen, &args.detection.key) else {
        return Ok(None);
    };
    let full = full_retention(&args.mirror);
    let mut whole = full.clone();
    whole.extend(args.live_services());
    let sink = live
        .cloned()
        .map(|live| Arc::new(move |records: &[Record]| live.feed(records)) as replica::Sink);
    let key = Key::load(key)?;
    Ok(Some(Replica::start(listen, key, full, whole, sink)?))
}

/// Feeds live replay from the engine's reader. Flows recovered from the
/// journal (a `--pin` restart) were open before live replay: it can never
/// feed them, and says so.
fn attach_live(mirror: &mut Engine, live: &Live) {
    let table = &mut mirror.reader.table;
    let services = mirror.services.iter();
    live.recovered(
        services
            .flat_map(|s| table.takeover(s.id))
            .map(|f| (f.id, f.key)),
    );
    table.collect_records();
    mirror.reader.live = Some(live.clone());
}

/// Answers the standby's events until SIGINT or SIGTERM.
async fn serve(
    standby: &mut Standby,
    mirror: &mut Engine,
    sources: &mut Sources,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    loop {
        match mirror.next_event(signals, Some(sources)).await? {
            Event::Stop => break,
            Event::Scrape(scrape) => scrape.answer(standby.families(mirror, sources)),
            Event::Message(StandbyEvent::Control(pending)) => {
                standby
                    .serve(mirror, sources.detector.as_ref(), pending)
                    .await
            }
            Event::Message(StandbyEvent::PrimaryLost(ownership)) => {
                standby.primary_lost(mirror, ownership).await
            }
            Event::Message(StandbyEvent::Claim(message, from)) => {
                standby.claimed(mirror, message, from).await
            }
            Event::Message(StandbyEvent::Prune) => {
                standby.prune();
                standby.publish_protection();
            }
            Event::Message(StandbyEvent::Migration(stream, from)) => {
                standby.migrated_in(mirror, stream, from).await
            }
            Event::Message(StandbyEvent::Claimed(claimed)) => {
                let detector = sources.detector.as_ref();
                if let Some(protection) = standby.claimed_in_etcd(mirror, claimed, detector).await {
                    sources.protection = Some(protection);
                }
            }
            Event::Message(event) => {
                let protection = sources.protection.as_mut().expect("only links send these");
                if let Err(err) = protecting(standby, mirror, protection, event) {
                    tracing::error!("protecting the services taken over: {err:#}");
                }
            }
        }
        if let Some(detector) = &sources.detector {
            standby.publish(detector);
            standby.primary_back(detector);
        }
    }
    Ok(())
}

/// Answers what the protection of the services taken over reports (cluster
/// mode): a link's event, a keepalive, segments held by `--sync`.
fn protecting(
    standby: &mut Standby,
    mirror: &mut Engine,
    protection: &mut Protection,
    event: StandbyEvent,
) -> anyhow::Result<()> {
    let Protection { links, commit } = protection;
    match event {
        StandbyEvent::Link(index, event) => links.follow(mirror, commit.as_mut(), (index, event)),
        StandbyEvent::Keepalive => {
            standby.protecting = links.keepalive(mirror, commit.as_mut())?.1;
            Ok(())
        }
        StandbyEvent::Held => hold(mirror, commit.as_mut().expect("only --sync queues")),
        _ => Ok(()),
    }
}

/// Clears the drain routes, then finishes the engine with the standby's
/// keys in `report.json`.
fn finish(mut standby: Standby, mirror: Engine, sources: &Sources) -> anyhow::Result<()> {
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
    /// etcd answered a claim of a lost primary's services (cluster mode).
    Claimed(cluster::Claimed),
    /// A replication link to a standby left reported (cluster mode, after a
    /// takeover): the standby's index, and what happened.
    Link(usize, LinkEvent),
    /// Time to tell the standbys left the lag (cluster mode, after a
    /// takeover).
    Keepalive,
    /// `--sync`, after a takeover: segments wait in the queue.
    Held,
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
    /// etcd's answers to claims (cluster mode).
    claimed: Option<tokio::sync::mpsc::Receiver<cluster::Claimed>>,
    /// The links to the standbys left (and `--sync`'s output commit), once
    /// this standby took services over in cluster mode.
    protection: Option<Protection>,
    /// When the links' keepalives go.
    keepalive: tokio::time::Interval,
}

impl Sources {
    /// Opens the control socket at `control`, the failure detector (with
    /// `detection`) and the planned-migration listener (with `--heartbeat-listen`).
    async fn open(
        control: &Path,
        detection: Option<DetectorConfig>,
        heartbeat_listen: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let control = ControlServer::bind(control).context("opening the control socket")?;
        let detector = match detection {
            Some(config) => Some(
                Detector::start(config)
                    .await
                    .context("binding the heartbeat socket")?,
            ),
            None => None,
        };
        let migrations = match heartbeat_listen {
            Some(listen) => Some(
                (tokio::net::TcpListener::bind(listen).await)
                    .with_context(|| format!("listening for planned migrations on TCP {listen}"))?,
            ),
            None => None,
        };
        Ok(Self {
            control,
            detector,
            prune: tokio::time::interval(PRUNE_INTERVAL),
            migrations,
            claimed: None,
            protection: None,
            keepalive: tokio::time::interval(crate::daemon::protection::KEEPALIVE),
        })
    }
}

impl EventSource<StandbyEvent> for Sources {
    async fn next(&mut self) -> StandbyEvent {
        let Self {
            control,
            detector,
            prune,
            migrations,
            claimed,
            protection,
            keepalive,
        } = self;
        let protecting = protection.is_some();
        let (links, commit) = match protection {
            Some(Protection { links, commit }) => (Some(links), commit.as_ref()),
            None => (None, None),
        };
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
            Some(answer) = next_claimed(claimed.as_mut()) => StandbyEvent::Claimed(answer),
            (index, event) = next_link(links) => StandbyEvent::Link(index, event),
            _ = keepalive.tick(), if protecting => StandbyEvent::Keepalive,
            Ok(()) = queued(commit) => StandbyEvent::Held,
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

/// The next answer to a claim; pending outside cluster mode.
async fn next_claimed(
    claimed: Option<&mut tokio::sync::mpsc::Receiver<cluster::Claimed>>,
) -> Option<cluster::Claimed> {
    match claimed {
        Some(claimed) => claimed.recv().await,
        None => std::future::pending().await,
    }
}

/// The next event of the links to the standbys left; pending without.
async fn next_link(links: Option<&mut Links>) -> (usize, LinkEvent) {
    match links {
        Some(links) => links.next().await,
        None => std::future::pending().await,
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
    /// Cluster mode (`--etcd`): takeovers are won in etcd first.
    membership: Option<cluster::Membership>,
    /// After a takeover in cluster mode: the standbys left, as the links
    /// to them last said.
    protecting: Vec<crate::cluster::record::StandbyState>,
    /// Whether a takeover in cluster mode protects what it took over (an
    /// on-host standby that captures on its own interfaces).
    protects: bool,
    /// `--sync` after a takeover in cluster mode.
    sync: Option<args::SyncArgs>,
}

impl Standby {
    async fn serve(&mut self, mirror: &mut Engine, detector: Option<&Detector>, pending: Pending) {
        let Pending { request, reply } = pending;
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
            Request::Takeover { services } => match self.manual_takeover(mirror, services).await {
                Ok(report) => Response::Takeover(report),
                Err(err) => {
                    tracing::error!("takeover failed: {err:#}");
                    Response::Error(format!("{err:#}"))
                }
            },
        };
        // The requester may have gone; the takeover stands either way.
        let _ = reply.send(response);
    }

    /// `connmirror takeover`: under the next epoch, won in etcd first in
    /// cluster mode.
    async fn manual_takeover(
        &mut self,
        mirror: &mut Engine,
        asked: Option<Vec<SocketAddr>>,
    ) -> anyhow::Result<TakeoverReport> {
        let mut epoch = self.epoch + 1;
        if let Some(membership) = &self.membership {
            let services = self.select(&mirror.services, asked.clone())?;
            let addrs: Vec<SocketAddr> = services.iter().map(|s| s.addr).collect();
            epoch = (membership.take_now(&self.node_id, &addrs).await)
                .context("taking the services in etcd")?;
        }
        let trigger = Trigger {
            name: "manual",
            epoch,
        };
        self.takeover(mirror, asked, trigger).await
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
/// quiesced, before the save (letting a socket go resets its counters).
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

/// Duplicates of the established connections of `services` that this host's
/// applications accepted themselves while it owned them (new connections,
/// not among the restored sockets in `kept`), found in the namespace and
/// taken from their processes ([`sockets::take_established`], as a planned
/// migration does on the primary). Left here, they would break once the
/// addresses go. A connection that cannot be taken is logged.
fn take_accepted(services: &[SocketAddr], kept: &[TcpStream]) -> Vec<TcpStream> {
    let ends = |s: &TcpStream| Some((s.local_addr().ok()?, s.peer_addr().ok()?));
    let restored: BTreeSet<(SocketAddr, SocketAddr)> = kept.iter().filter_map(ends).collect();
    let taken = match sockets::take_established(services) {
        Ok(taken) => taken,
        Err(err) => {
            tracing::warn!(%err, "listing the connections accepted here: only restored ones migrate");
            return Vec::new();
        }
    };
    for error in &taken.errors {
        tracing::warn!(error, "a connection accepted here cannot migrate");
    }
    (taken.sockets.into_iter())
        .filter(|s| ends(s).is_some_and(|e| !restored.contains(&e)))
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
mod tests;
