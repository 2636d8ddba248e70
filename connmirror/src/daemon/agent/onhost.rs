//! On-host mode: the agent runs the mirror on the primary's own interfaces
//! (XDP ingress sees the clients' segments before the primary's kernel does,
//! TC egress sees the primary's before they leave) and streams the journal
//! records to each standby (every `--replicate-to`) over a replication
//! channel of its own ([`crate::replication::channel`]): one link task and
//! one [`Outbox`] per standby, each with its own stream position,
//! acknowledgments, lag and checkpoint, so a standby that is gone or slow
//! holds back only its own stream.
//!
//! Exposure is the replication lag: what the primary's kernel acknowledged
//! or sent that a standby has not acknowledged yet (the agent reports the
//! worst standby's). `--sync` removes it with output commit
//! ([`crate::hold`]): the primary's outgoing segments of a protected flow
//! are captured at netfilter POSTROUTING and queued (NFQUEUE), and the agent
//! releases each one once every connected standby has acknowledged the
//! journal batch that covers its data and its ACK. When no acknowledgment
//! comes for `--sync-timeout`, the agent releases what it holds, logs it,
//! counts it and replicates asynchronously until the standbys have caught
//! up.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser as _;
use connmirror_common::ServiceMode;
use tokio::sync::{mpsc, oneshot};

use crate::{
    capture::{EgressHook, IngressHook, parse_ring_size},
    cluster::record::StandbyState,
    daemon::agent::AgentArgs,
    daemon::protection::{KEEPALIVE, Links, hello, hold, queued},
    engine::{Engine, Event, EventSource, IfaceSpec, MirrorArgs, RetentionArg, Signals},
    hold::OutputCommit,
    key::Key,
    metrics::Family,
    replication::channel::{self, LinkEvent},
};

/// On-host flags of `connmirror agent`.
#[derive(Clone, Debug, clap::Args)]
pub struct OnHostArgs {
    /// On-host mode: capture the services on this interface of the primary
    /// itself (optionally `IF:INGRESS`), and replicate the journal to the
    /// standbys (`--replicate-to`). Repeat for several.
    #[arg(long = "iface", value_name = "IF[:INGRESS]", requires = "replicate_to")]
    pub ifaces: Vec<IfaceSpec>,
    /// A standby's replication listener (its `--replication-listen`).
    /// Repeat for several standbys: each gets the whole journal on a channel
    /// of its own, with its own lag, and its metrics carry its
    /// `standby="IP:PORT"` label.
    #[arg(long = "replicate-to", value_name = "IP:PORT", requires = "ifaces")]
    pub replicate_to: Vec<SocketAddr>,
    /// Output commit: hold each outgoing segment of a protected connection
    /// (NFQUEUE, through rules added with iptables and ip6tables) until
    /// every connected standby has acknowledged the journal up to its data
    /// and its ACK, so a failover to any of them loses nothing the clients
    /// were told; costs one round trip to the slowest standby per batch.
    #[arg(long, requires = "replicate_to")]
    pub sync: bool,
    /// With --sync: milliseconds a segment may wait for the standbys before
    /// the agent releases everything held and replicates asynchronously (it
    /// logs this and counts it in `connmirror_sync_fallbacks_total`), until
    /// every connected standby has caught up.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub sync_timeout: u64,
    /// With --sync: the netfilter queue number the held segments go to (one
    /// agent per number in a network namespace).
    #[arg(long, value_name = "N", default_value_t = 7403)]
    pub sync_queue: u16,
    /// Ingress attach point for interfaces that do not name their own
    /// (`auto`: by driver, as `connmirror mirror --ingress` says).
    #[arg(long, value_enum, default_value = "auto")]
    pub ingress: IngressHook,
    /// Egress attach point (`tc`, or `none`; under `--sync` the services'
    /// segments are captured at netfilter POSTROUTING instead).
    #[arg(long, value_enum, default_value = "tc")]
    pub egress: EgressHook,
    /// Ring-buffer size: a power of two, at least 64K (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size, default_value = "64M")]
    pub ring_size: u32,
    /// Which bytes each flow keeps and replicates: `unacked` (enough to
    /// restore) or `full` (the history too, for handoff applications that
    /// resume from it and for replay; the standby keeps it as well).
    #[arg(long, value_enum, default_value = "unacked")]
    pub retention: RetentionArg,
    /// Hot restart: pin capture under /sys/fs/bpf/connmirror/NAME so it
    /// outlives the agent (and, with --sync, keep the rules, so nothing goes
    /// out unheld meanwhile). An agent started again with the same NAME and
    /// flags takes capture over, starts from the flows the standby holds,
    /// and holds again. `connmirror mirror --detach-all --pin NAME` removes it.
    #[arg(long, value_name = "NAME", requires = "ifaces")]
    pub pin: Option<String>,
}

/// How long the link waits before connecting again.
const RETRY: Duration = Duration::from_millis(200);
/// How long an agent that took a pinned capture over asks the standby for
/// its flows before it goes on without them.
const RESUME_WAIT: Duration = Duration::from_secs(10);

/// What the heartbeat loop holds of the on-host loop: the mirror's and the
/// replication's metrics, and the capture's service modes (a planned
/// migration quiesces the services here, [`crate::failover::migrate`]).
#[derive(Clone, Debug)]
pub struct Handle {
    requests: mpsc::Sender<Request>,
    /// What the loop published at its last keepalive (at most
    /// [`KEEPALIVE`] old).
    published: Arc<Mutex<Published>>,
}

/// What the on-host loop publishes at every keepalive.
#[derive(Debug, Default)]
struct Published {
    /// The worst exposure over the standbys' outboxes, per service.
    exposure: BTreeMap<SocketAddr, u64>,
    /// Each standby's replication state, in `--replicate-to` order.
    standbys: Vec<StandbyState>,
}

/// A request to the on-host loop.
#[derive(Debug)]
enum Request {
    /// Its metric families.
    Scrape(oneshot::Sender<Vec<Family>>),
    /// Drop client segments of these services at ingress (`true`), or
    /// capture them again (`false`, `--sync` holding as before).
    Quiesce(Vec<SocketAddr>, bool, oneshot::Sender<anyhow::Result<()>>),
}

impl Handle {
    /// The mirror's and the replication's families at this instant (none once
    /// the on-host loop has stopped).
    pub async fn families(&self) -> Vec<Family> {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request::Scrape(reply)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Bytes a failover would lose now of `service` (0 when it has no
    /// connection): the largest over the standbys, each of which would lose
    /// at most its own.
    pub fn exposure(&self, service: &SocketAddr) -> u64 {
        let published = self.published.lock().expect("published lock");
        published.exposure.get(service).copied().unwrap_or(0)
    }

    /// Each standby's replication state: connected, and its lag.
    pub fn standbys(&self) -> Vec<StandbyState> {
        self.published
            .lock()
            .expect("published lock")
            .standbys
            .clone()
    }

    /// Quiesces `services` on the primary's own capture (`on`), or lifts
    /// it; blocking, for a migration's thread.
    pub fn quiesce(&self, services: &[SocketAddr], on: bool) -> anyhow::Result<()> {
        let (reply, answer) = oneshot::channel();
        let stopped = || anyhow::anyhow!("the on-host capture has stopped");
        (self
            .requests
            .blocking_send(Request::Quiesce(services.to_vec(), on, reply)))
        .map_err(|_| stopped())?;
        answer.blocking_recv().map_err(|_| stopped())?
    }
}

/// Runs on-host mode: the mirror on the primary's own interfaces, the
/// replication to each of `--replicate-to`, and the agent's heartbeats on a
/// thread of their own, until SIGINT or SIGTERM.
pub(super) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let key = Key::load(&args.key)?;
    let standbys = args.onhost.replicate_to.clone();
    let mut mirror = Engine::start(mirror_args(&args)?)?;
    if mirror.took_over {
        resume_flows(&mut mirror, &standbys, &key).await;
    }
    let sync = args.onhost.sync;
    let commit = match sync {
        true => Some(start_sync(&mut mirror, &args.onhost, standbys.len())?),
        false => None,
    };
    let links = Links::start(
        &mut mirror,
        (&standbys, &hello("agent")),
        &key,
        (sync, false),
    );
    let (handle, requests) = mpsc::channel(4);
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let source = Source {
        links,
        requests,
        keepalive,
        commit,
        published: Arc::default(),
    };
    tracing::info!(?standbys, sync, "on-host mode: replicating the journal");
    let handle = Handle {
        requests: handle,
        published: source.published.clone(),
    };
    let heartbeats = heartbeat_thread(args, handle)?;
    let replication = replicate(mirror, source, sync);
    tokio::pin!(replication);
    let result = tokio::select! {
        result = &mut replication => result,
        ended = heartbeats => match ended {
            // Stopped by the signal that stops the capture too: let it detach
            // and write its report.
            Ok(Ok(())) => replication.await,
            Ok(Err(err)) => Err(err),
            Err(_) => Err(anyhow::anyhow!("the heartbeat thread panicked")),
        },
    };
    result
}

/// An agent that took a pinned capture over (`--pin`) starts from the flows
/// the standbys hold, before it reads the ring: it asks them in turn and
/// takes the first answer; the records the ring kept apply on top of them,
/// and the checkpoint that starts each new stream carries them on. If none
/// gives any within [`RESUME_WAIT`], the agent goes on without: it sees the
/// open flows as first seen mid-stream.
async fn resume_flows(mirror: &mut Engine, standbys: &[SocketAddr], key: &Key) {
    tracing::info!(
        ?standbys,
        "took a pinned capture over: asking the standby for the flows it holds"
    );
    let deadline = tokio::time::Instant::now() + RESUME_WAIT;
    // Each standby gets its share of the wait, so a silent one leaves time
    // to ask the next.
    let share = RESUME_WAIT / standbys.len().max(1) as u32;
    for (turn, &standby) in standbys.iter().cycle().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer =
            tokio::time::timeout(left.min(share), channel::fetch_state(standby, key)).await;
        let err = match answer {
            Err(_) => format!("{standby}: no answer"),
            Ok(Err(err)) => err.to_string(),
            Ok(Ok(state)) => {
                let flows = state.flows.values().filter(|f| f.closed.is_none()).count();
                mirror.reader.table.restore(state);
                tracing::info!(flows, %standby, "resuming from the standby's flows");
                return;
            }
        };
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "the standby gave no flows within {} s ({err}): the open flows are seen as \
                 first seen mid-stream",
                RESUME_WAIT.as_secs()
            );
            return;
        }
        if (turn + 1) % standbys.len() == 0 {
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Starts output commit: the queue and its rules first, then the services'
/// `SYNC` mode, which sends their segments there.
fn start_sync(
    mirror: &mut Engine,
    onhost: &OnHostArgs,
    standbys: usize,
) -> anyhow::Result<OutputCommit> {
    let timeout = Duration::from_millis(onhost.sync_timeout);
    let queue = onhost.sync_queue;
    let commit = OutputCommit::open(&mut mirror.capture, queue, timeout, standbys)?;
    let all: Vec<SocketAddr> = mirror.services.iter().map(|s| s.addr).collect();
    set_modes(mirror, &all, ServiceMode::SYNC).context("setting --sync")?;
    tracing::info!(
        queue = onhost.sync_queue,
        timeout_ms = onhost.sync_timeout,
        "--sync: holding each outgoing segment until the standbys have it"
    );
    Ok(commit)
}

/// Runs the heartbeats on a thread (and runtime) of their own: a ring that
/// refills as fast as it is read keeps the capture loop busy, and the
/// standby must not mistake a busy primary for a dead one. The heartbeats
/// stop with the same signals; the answer says how they ended.
fn heartbeat_thread(
    args: AgentArgs,
    onhost: Handle,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<()>>> {
    let (done, ended) = oneshot::channel();
    std::thread::Builder::new()
        .name("heartbeats".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the heartbeat thread's runtime")
                .and_then(|runtime| runtime.block_on(super::heartbeats(args, Some(onhost))));
            let _ = done.send(result);
        })
        .context("spawning the heartbeat thread")?;
    Ok(ended)
}

/// The mirror's settings: the agent's services on the on-host interfaces,
/// every other setting at the `mirror` subcommand's default, no metrics
/// endpoint of its own (the agent's serves its families).
fn mirror_args(args: &AgentArgs) -> anyhow::Result<MirrorArgs> {
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        mirror: MirrorArgs,
    }
    let onhost = &args.onhost;
    let mut argv = vec![
        "mirror".to_owned(),
        "--metrics".to_owned(),
        "off".to_owned(),
        "--ring-size".to_owned(),
        onhost.ring_size.to_string(),
    ];
    for iface in &onhost.ifaces {
        argv.extend(["--iface".to_owned(), iface.name.clone()]);
    }
    for service in &args.services {
        argv.extend(["--service".to_owned(), service.to_string()]);
    }
    let mut mirror = Wrapper::try_parse_from(argv)
        .context("the on-host mirror's settings")?
        .mirror;
    mirror.ifaces = onhost.ifaces.clone();
    mirror.ingress = onhost.ingress;
    mirror.retention = onhost.retention;
    mirror.egress = onhost.egress;
    mirror.pin = onhost.pin.clone();
    // A restart takes the flows from the standby (`resume_flows`).
    mirror.recovers_flows = true;
    // The standby decides how it resumes: give it every client byte.
    mirror.client_payload = mirror.services.iter().map(|s| s.0).collect();
    Ok(mirror)
}

/// What wakes the on-host loop besides the ring and the signals.
enum OnHostEvent {
    /// What the link of the standby of this index reported.
    Link(usize, LinkEvent),
    Request(Request),
    Keepalive,
    /// `--sync`: segments wait in the queue.
    Held,
}

struct Source {
    links: Links,
    requests: mpsc::Receiver<Request>,
    keepalive: tokio::time::Interval,
    /// `--sync`'s output commit.
    commit: Option<OutputCommit>,
    /// Where the loop publishes the exposure and the standbys' state for
    /// `connmirror status` and the cluster registration.
    published: Arc<Mutex<Published>>,
}

impl EventSource<OnHostEvent> for Source {
    async fn next(&mut self) -> OnHostEvent {
        let Self {
            links,
            requests,
            keepalive,
            commit,
            ..
        } = self;
        tokio::select! {
            (index, event) = links.next() => OnHostEvent::Link(index, event),
            Some(request) = requests.recv() => OnHostEvent::Request(request),
            _ = keepalive.tick() => OnHostEvent::Keepalive,
            Ok(()) = queued(commit.as_ref()) => OnHostEvent::Held,
        }
    }
}

/// Drains the ring into the outboxes, follows the links, applies the sync
/// limits the standbys' acknowledgments release, and answers requests.
async fn replicate(mut mirror: Engine, mut source: Source, sync: bool) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    loop {
        let event = match mirror.next_event(&mut signals, Some(&mut source)).await? {
            Event::Stop => break,
            Event::Scrape(scrape) => {
                scrape.answer(mirror.families());
                continue;
            }
            Event::Message(event) => event,
        };
        let commit = &mut source.commit;
        match event {
            OnHostEvent::Link(index, event) => {
                (source.links).follow(&mut mirror, commit.as_mut(), (index, event))?
            }
            OnHostEvent::Keepalive => {
                let (exposure, standbys) = source.links.keepalive(&mut mirror, commit.as_mut())?;
                *source.published.lock().expect("published lock") =
                    Published { exposure, standbys };
            }
            OnHostEvent::Held => {
                hold(&mut mirror, commit.as_mut().expect("only --sync queues"))?;
            }
            OnHostEvent::Request(request) => {
                on_request(&mut mirror, commit, request, &source.links, sync)
            }
        }
    }
    if let Some(commit) = source.commit.take() {
        commit.close(mirror.stays_attached());
    }
    mirror.finish(serde_json::Map::new())?;
    Ok(())
}

/// Answers a request of the heartbeat loop: a scrape, or a quiesce.
fn on_request(
    mirror: &mut Engine,
    commit: &Option<OutputCommit>,
    request: Request,
    links: &Links,
    sync: bool,
) {
    match request {
        Request::Scrape(reply) => {
            let mut families = mirror.families();
            families.extend(links.families(mirror));
            if let Some(commit) = commit {
                families.extend(commit.families());
            }
            let _ = reply.send(families);
        }
        Request::Quiesce(addrs, on, reply) => {
            let base = if sync { ServiceMode::SYNC } else { 0 };
            let mode = if on { ServiceMode::QUIESCED } else { base };
            let _ = reply.send(set_modes(mirror, &addrs, mode));
        }
    }
}

/// Sets the capture mode of each service in `addrs`.
fn set_modes(mirror: &mut Engine, addrs: &[SocketAddr], mode: u32) -> anyhow::Result<()> {
    let services = (addrs.iter())
        .map(|addr| {
            (mirror.services.iter())
                .find(|s| s.addr == *addr)
                .copied()
                .with_context(|| format!("{addr} is not captured here"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    mirror.set_modes(&services, mode)
}
