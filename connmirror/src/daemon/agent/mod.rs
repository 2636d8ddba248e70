//! The `agent` role on the primary: sends authenticated heartbeats carrying
//! its ownership information to each standby (every `--standby`,
//! [`crate::ownership::heartbeat`]), every `--interval`, and answers a
//! standby's solicitation at once (to all of them). Messages from any
//! standby are accepted alike.
//!
//! A primary that returns after a failover starts its agent with
//! `--recovering`: it then sends `Recovering` messages instead of heartbeats,
//! claims nothing, and does not step down on hearing the standby's higher
//! epoch. The standby hands the services back under its `--failback` policy
//! and answers with `Yield` (carrying its epoch); the agent then claims the
//! next epoch and sends ordinary heartbeats again.

pub mod onhost;

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::net::UdpSocket;

use crate::{
    cluster::{Registration, Store, record::NodeRecord},
    daemon::agent::onhost::OnHostArgs,
    daemon::control::{ControlServer, Pending, Request, Response},
    daemon::status::{ServiceStatus, StatusReport},
    engine::{EventSource as _, Signals, announce_ready},
    failover::migrate::{self, Prepare},
    key::Key,
    metrics::{Family, MetricsArgs},
    net::address,
    ownership::detector::{Peer, Policy},
    ownership::heartbeat::{self, HeartbeatStats, Kind, Message, Ownership, Verifier},
    resume::handoff::HandoffServer,
};

/// Command-line arguments of `connmirror agent`.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Where a standby listens for heartbeats (its `--heartbeat-listen`).
    /// Repeat for several standbys: each gets every heartbeat, and messages
    /// from any of them count. `connmirror migrate --to NAME` goes to the
    /// standby heard from under node id NAME, else to the first.
    #[arg(long = "standby", value_name = "IP:PORT", required = true)]
    pub standbys: Vec<SocketAddr>,
    /// Shared key file (mode 0600, at least 16 bytes), the same on both hosts.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// This node's id.
    #[arg(long, value_name = "ID")]
    pub node_id: String,
    /// The cluster's id (the standby ignores other clusters).
    #[arg(long, value_name = "ID", default_value = "connmirror")]
    pub cluster_id: String,
    /// A service this node owns. Repeat for several.
    #[arg(long = "service", value_name = "IP:PORT", required = true)]
    pub services: Vec<SocketAddr>,
    /// MAC address of this node, sent in its heartbeats' ownership record
    /// (repeatable) [default: none].
    #[arg(long = "mac", value_name = "MAC")]
    pub macs: Vec<String>,
    /// Name of an application serving the services, sent in the heartbeats'
    /// ownership record (repeatable) [default: none].
    #[arg(long = "application", value_name = "NAME")]
    pub applications: Vec<String>,
    /// Ownership epoch this node holds; the standby takes over under a higher
    /// one, and the agent steps down when it hears a higher one.
    #[arg(long, default_value_t = 1)]
    pub epoch: u64,
    /// Failover policy announced to the standby: `auto` (take over when the
    /// heartbeats stop) or `manual` (only log it).
    #[arg(long, value_enum, default_value = "auto")]
    pub policy: Policy,
    /// Milliseconds between heartbeats.
    #[arg(long, value_name = "MS", default_value_t = crate::ownership::DEFAULT_INTERVAL_MS)]
    pub interval: u64,
    /// Source address for heartbeats: the host's own (management) address.
    /// The standby answers there once it owns the services, so it must not be
    /// a service address, which the standby then serves itself [default: the
    /// kernel's choice].
    #[arg(long, value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,
    /// UDP port the heartbeats leave from and a standby's solicitations
    /// arrive at (the standby's `--primary` names it).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// This node returns after a failover: announce it as recovering and
    /// claim the services (under the standby's epoch + 1) only once the
    /// standby yields them, instead of stepping down.
    #[arg(long)]
    pub recovering: bool,
    /// Handoff socket (created mode 0600) that applications register on: with
    /// it the agent also accepts a standby's live connections on TCP at its
    /// `--bind` address and `--port` (failback by migration, see
    /// `connmirror::failover::migrate`) and hands each one over.
    #[arg(long, value_name = "PATH")]
    pub handoff: Option<std::path::PathBuf>,
    /// Control socket (created mode 0600) for `connmirror migrate --to
    /// STANDBY --control PATH` (planned maintenance: the live connections of
    /// the services move to the standby, which then owns them) and
    /// `connmirror status --control PATH` [default: none].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Milliseconds a migration from the standby waits for an application to
    /// register on the handoff socket for each of its services; past it the
    /// whole batch is refused and the standby keeps the connections.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub handoff_wait: u64,
    /// Cluster mode: ownership in etcd (`--etcd`). The agent records itself
    /// as the owner of its services at `--epoch` (or the higher epoch etcd
    /// already gives it), and refuses to start when another node owns one.
    #[command(flatten)]
    pub cluster: crate::cluster::EtcdArgs,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// On-host mode (capture here, replicate the journal to the standby).
    #[command(flatten)]
    pub onhost: OnHostArgs,
}

/// The agent's default UDP port.
pub const DEFAULT_PORT: u16 = 7401;

/// Whether `theirs` holds one of our services under a higher epoch.
fn outranks(theirs: &Ownership, ours: &Ownership) -> bool {
    theirs.epoch > ours.epoch && theirs.services.iter().any(|s| ours.services.contains(s))
}

/// Whether `theirs` yields one of our services back to us.
fn yields(message: &Message, ours: &Ownership) -> bool {
    message.kind == Kind::Yield
        && (message.ownership.services.iter()).any(|s| ours.services.contains(s))
}

/// The standby yielded the services: claim them under the next epoch.
fn reclaim(theirs: &Ownership, ours: &mut Ownership) -> anyhow::Result<()> {
    ours.epoch = ours.epoch.max(theirs.epoch) + 1;
    tracing::info!(
        from = theirs.node_id,
        epoch = ours.epoch,
        "failback: the services are ours again"
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "owner again at epoch {} (yielded by {})",
        ours.epoch, theirs.node_id
    )
    .and_then(|()| stdout.flush())
    .context("writing to stdout")
}

/// Another node owns our services under a higher epoch: stop serving their
/// addresses (so two hosts never answer for them) and stop claiming them.
fn step_down(theirs: &Ownership, ours: &Ownership) -> anyhow::Result<()> {
    let mut ips: Vec<_> = ours.services.iter().map(|s| s.ip()).collect();
    ips.sort();
    ips.dedup();
    for ip in ips {
        let removed = address::release(ip)?;
        tracing::warn!(%ip, removed, "service address released");
    }
    tracing::warn!(
        owner = theirs.node_id,
        epoch = theirs.epoch,
        "stepped down: a higher epoch owns the services"
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "stepped down: {} holds epoch {}",
        theirs.node_id, theirs.epoch
    )
    .and_then(|()| stdout.flush())
    .context("writing to stdout")
}

/// The agent's metrics: heartbeats sent, the standby's messages received, and
/// the ownership it claims.
fn families(
    sent: u64,
    verifier: &Verifier,
    ownership: &Ownership,
    stepped_down: bool,
    recovering: bool,
) -> Vec<Family> {
    let mut families = vec![
        Family::counter(
            "heartbeats_sent",
            "Heartbeats sent to the standbys (one per standby each interval).",
            None,
        )
        .count(Vec::new(), sent),
        Family::gauge("epoch", "The ownership epoch this node claims.", None)
            .set(Vec::new(), ownership.epoch as f64),
        Family::gauge(
            "stepped_down",
            "1 once a higher epoch took the services and this node stopped serving them.",
            None,
        )
        .set(Vec::new(), f64::from(u8::from(stepped_down))),
        Family::gauge(
            "recovering",
            "1 while this node waits for the owner to yield its services back (--recovering).",
            None,
        )
        .set(Vec::new(), f64::from(u8::from(recovering))),
    ];
    families.extend(verifier.stats.families());
    families
}

/// Where migrated connections arrive and go (`--handoff`).
struct Migrations {
    listener: tokio::net::TcpListener,
    handoff: Arc<HandoffServer>,
    key: Key,
    /// The highest batch counter accepted.
    last: Arc<Mutex<u64>>,
    wait: Duration,
}

impl Migrations {
    async fn open(
        path: &Path,
        local: SocketAddr,
        key: &Key,
        wait_ms: u64,
    ) -> anyhow::Result<Migrations> {
        let handoff = HandoffServer::bind(path).context("opening the handoff socket")?;
        let listener = (tokio::net::TcpListener::bind(local).await)
            .with_context(|| format!("listening for migrations on {local}"))?;
        Ok(Migrations {
            listener,
            handoff: Arc::new(handoff),
            key: key.clone(),
            last: Arc::new(Mutex::new(0)),
            wait: Duration::from_millis(wait_ms),
        })
    }

    /// Takes one standby's connections, on a blocking thread.
    fn serve(&self, stream: std::net::TcpStream, from: SocketAddr, node_id: &str) {
        let (handoff, key, last, wait) = (
            self.handoff.clone(),
            self.key.clone(),
            self.last.clone(),
            self.wait,
        );
        let node_id = node_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let outcome = {
                let mut last = last.lock().expect("migration counter");
                migrate::receive(stream, &key, &node_id, &mut last, &handoff, wait)
            };
            match outcome {
                Ok(receipt) => tracing::info!(
                    %from,
                    restored = receipt.restored,
                    failed = receipt.errors.len(),
                    "migration: connections taken over"
                ),
                Err(err) => tracing::warn!(%from, "migration refused: {err:#}"),
            }
        });
    }
}

/// What a control request may act on.
struct Node<'a> {
    args: &'a AgentArgs,
    key: &'a Key,
    ownership: &'a Ownership,
    stepped_down: bool,
    recovering: bool,
    /// The last verified message of a standby: its ownership, address, when.
    heard: Option<&'a (Ownership, SocketAddr, Instant)>,
    /// Where each standby (by node id) was last heard from.
    names: &'a BTreeMap<String, SocketAddr>,
    stats: HeartbeatStats,
    /// The on-host capture, which quiesces the services for a migration.
    onhost: Option<&'a onhost::Handle>,
}

impl Node<'_> {
    /// Answers one control request; a migration runs in the background and
    /// answers when it is done, while the heartbeats go on.
    fn serve(&self, pending: Pending) {
        let Pending { request, reply } = pending;
        let prepare = match request {
            Request::Migrate { to, services } => self.prepare(to, services),
            Request::Status => {
                let _ = reply.send(Response::Status(Box::new(self.status())));
                return;
            }
            Request::Takeover { .. } => Err(
                "this is an agent: `connmirror takeover` asks the standby's control socket".into(),
            ),
        };
        let prepare = match prepare {
            Ok(prepare) => prepare,
            Err(err) => {
                let _ = reply.send(Response::Error(err));
                return;
            }
        };
        let standby = self.migration_target(&prepare.to);
        let (bind, key) = (self.args.bind, self.key.clone());
        let onhost = self.onhost.cloned();
        tokio::spawn(async move {
            let to = prepare.to.clone();
            let quiesce = move |services: &[SocketAddr], on: bool| match &onhost {
                Some(onhost) => onhost.quiesce(services, on),
                None => Ok(()),
            };
            let outcome = match migrate::connect_from(standby, bind).await {
                Ok(stream) => tokio::task::spawn_blocking(move || {
                    migrate::hand_over(stream, &key, prepare, &quiesce)
                })
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the migration task: {e}"))),
                Err(err) => Err(err),
            };
            let response = match outcome {
                Ok(report) => {
                    tracing::info!(
                        to,
                        moved = report.moved,
                        failed = report.errors.len(),
                        "planned migration: connections moved"
                    );
                    Response::Migrate(report)
                }
                Err(err) => {
                    tracing::error!(to, "planned migration failed: {err:#}");
                    Response::Error(format!("{err:#}"))
                }
            };
            let _ = reply.send(response);
        });
    }

    /// Where a migration to node `to` connects: the `--standby` it was heard
    /// from, else the first `--standby`.
    fn migration_target(&self, to: &str) -> SocketAddr {
        let standbys = &self.args.standbys;
        (self.names.get(to))
            .filter(|from| standbys.contains(from))
            .copied()
            .unwrap_or(standbys[0])
    }

    /// `connmirror status` on the primary: its role (`primary`, `recovering`
    /// or `stepped-down`), epoch, the standby as last heard from, the
    /// messages it received, and its services.
    fn status(&self) -> StatusReport {
        let role = match (self.stepped_down, self.recovering) {
            (true, _) => "stepped-down",
            (false, true) => "recovering",
            (false, false) => "primary",
        };
        let state = match role {
            "primary" => "serving",
            "recovering" => "waiting",
            _ => "released",
        };
        let peer = self.heard.map(|(ownership, address, at)| Peer {
            ownership: ownership.clone(),
            address: *address,
            last_heartbeat_ms: at.elapsed().as_millis() as u64,
            alive: at.elapsed() < 3 * Duration::from_millis(self.args.interval.max(1)),
        });
        StatusReport {
            role: role.into(),
            epoch: self.ownership.epoch,
            peer,
            heartbeats: Some(self.stats),
            services: (self.ownership.services.iter())
                .map(|addr| ServiceStatus {
                    addr: *addr,
                    state: state.into(),
                    live: None,
                    exposure_bytes: self.onhost.map(|h| h.exposure(addr)),
                })
                .collect(),
            flows: Default::default(),
            refused_flows: 0,
            replication_lag: None,
            takeovers: 0,
        }
    }

    /// The first frame of a planned migration of `asked` (every service when
    /// `None`) to `to`, or why there is none.
    fn prepare(&self, to: String, asked: Option<Vec<SocketAddr>>) -> Result<Prepare, String> {
        if self.stepped_down || self.recovering {
            return Err(
                "this node does not serve its services now (it stepped down or is recovering)"
                    .into(),
            );
        }
        let services = asked.unwrap_or_else(|| self.ownership.services.clone());
        if let Some(other) = services
            .iter()
            .find(|s| !self.ownership.services.contains(s))
        {
            return Err(format!("{other} is not a --service of this agent"));
        }
        Ok(Prepare {
            node_id: self.ownership.node_id.clone(),
            to,
            counter: heartbeat::initial_counter(),
            epoch: self.ownership.epoch,
            services,
        })
    }
}

/// The next control request; pending without `--control`.
async fn next_request(control: Option<&mut ControlServer>) -> Pending {
    match control {
        Some(control) => control.next().await,
        None => std::future::pending().await,
    }
}

/// The ownership the agent announces, from its arguments.
fn ownership_of(args: &AgentArgs) -> Ownership {
    Ownership {
        node_id: args.node_id.clone(),
        cluster_id: args.cluster_id.clone(),
        epoch: args.epoch,
        services: args.services.clone(),
        macs: args.macs.clone(),
        policy: match args.policy {
            Policy::Auto => "auto".into(),
            Policy::Manual => "manual".into(),
        },
        applications: args.applications.clone(),
    }
}

/// The heartbeat socket's address: `--bind` and `--port`, or the unspecified
/// address of the first standby's family.
fn local_addr(args: &AgentArgs) -> SocketAddr {
    match (args.bind, args.standbys[0]) {
        (Some(ip), _) => SocketAddr::new(ip, args.port),
        (None, SocketAddr::V4(_)) => SocketAddr::from(([0u8; 4], args.port)),
        (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], args.port)),
    }
}

/// Applies an authenticated `message` from `from` to the agent's ownership
/// and its `(recovering, stepped_down)` flags; true when a heartbeat should
/// answer it at once (a solicitation, or the owner yielding to a recovering
/// primary).
fn receive(
    message: &Message,
    from: SocketAddr,
    ownership: &mut Ownership,
    (recovering, stepped_down): &mut (bool, bool),
) -> anyhow::Result<bool> {
    if message.kind == Kind::Solicit {
        tracing::info!(%from, "solicited by the standby");
        return Ok(true);
    }
    if *recovering && yields(message, ownership) {
        reclaim(&message.ownership, ownership)?;
        *recovering = false;
        return Ok(true);
    }
    if *recovering && outranks(&message.ownership, ownership) {
        tracing::debug!(
            owner = message.ownership.node_id,
            "recovering: waiting for the owner to yield"
        );
    } else if !*stepped_down && outranks(&message.ownership, ownership) {
        step_down(&message.ownership, ownership)?;
        *stepped_down = true;
    }
    Ok(false)
}

/// Sends one heartbeat `datagram` to each of `standbys`; how many sends
/// succeeded (a failed one is logged: the next tick tries again).
async fn send_all(socket: &UdpSocket, datagram: &[u8], standbys: &[SocketAddr]) -> u64 {
    let mut sent = 0;
    for &standby in standbys {
        match socket.send_to(datagram, standby).await {
            Ok(_) => sent += 1,
            Err(err) => tracing::warn!(%err, %standby, "sending a heartbeat"),
        }
    }
    sent
}

/// The message kind a heartbeat carries: `Recovering` while the primary
/// waits to take its services back.
fn kind_of(recovering: bool) -> Kind {
    if recovering {
        Kind::Recovering
    } else {
        Kind::Heartbeat
    }
}

/// Opens what the agent answers besides heartbeats: the migration listener
/// (with `--handoff`) and the control socket (with `--control`).
async fn listeners(
    args: &AgentArgs,
    local: SocketAddr,
    key: &Key,
) -> anyhow::Result<(Option<Migrations>, Option<ControlServer>)> {
    let migrations = match &args.handoff {
        Some(path) => Some(Migrations::open(path, local, key, args.handoff_wait).await?),
        None => None,
    };
    let control = match &args.control {
        Some(path) => Some(ControlServer::bind(path).context("opening the control socket")?),
        None => None,
    };
    Ok((migrations, control))
}

/// Runs `connmirror agent` until SIGINT or SIGTERM: heartbeats, and with
/// `--replicate-to` the on-host mirror and its replication alongside.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.onhost.replicate_to.is_empty() {
        false => onhost::run(args).await,
        true => heartbeats(args, None).await,
    }
}

/// Cluster mode: records this node as the owner of its services in etcd
/// (the epoch it holds there goes into `ownership`) and registers it under
/// a lease for as long as the answer lives; in on-host mode the
/// registration carries the standbys' replication state, for `connmirror
/// status --cluster`. Nothing outside cluster mode.
async fn join_cluster(
    args: &AgentArgs,
    ownership: &mut Ownership,
    local: SocketAddr,
    onhost: Option<onhost::Handle>,
) -> anyhow::Result<Option<Membership>> {
    if !args.cluster.enabled() {
        return Ok(None);
    }
    let store = Store::connect(&args.cluster, &args.cluster_id)
        .await
        .context("cluster mode (--etcd)")?;
    ownership.epoch = (store.claim(&args.node_id, &args.services, args.epoch).await)
        .context("recording the services' owner in etcd")?;
    let record = NodeRecord {
        node_id: args.node_id.clone(),
        role: "primary".into(),
        heartbeat: Some(local),
        services: args.services.clone(),
        ..NodeRecord::default()
    };
    let registration = (store.register(record).await).context("registering in etcd")?;
    tracing::info!(
        epoch = ownership.epoch,
        etcd = args.cluster.endpoint_list(),
        "cluster mode: the services' owner in etcd"
    );
    Ok(Some(Membership(tokio::spawn(publish(
        registration,
        onhost,
    )))))
}

/// How often an on-host agent writes its standbys' state into its
/// registration.
const PUBLISH: Duration = Duration::from_secs(1);

/// The agent's registration, kept (and renewed) by a task; dropping it
/// stops the task, and the lease then expires.
struct Membership(tokio::task::JoinHandle<()>);

impl Drop for Membership {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Holds `registration` and, with `onhost`, writes the standbys' state into
/// it every [`PUBLISH`].
async fn publish(registration: Registration, onhost: Option<onhost::Handle>) {
    let mut tick = tokio::time::interval(PUBLISH);
    loop {
        tick.tick().await;
        if let Some(onhost) = &onhost {
            let standbys = onhost.standbys();
            registration.update(|r| r.standbys = standbys);
        }
    }
}

/// The heartbeat socket, at `local`.
async fn bind_heartbeats(local: SocketAddr) -> anyhow::Result<UdpSocket> {
    (UdpSocket::bind(local).await)
        .with_context(|| format!("binding the heartbeat socket to {local}"))
}

/// Runs the heartbeats until SIGINT or SIGTERM; scrapes also report
/// `onhost`'s families (the on-host mirror and its replication).
async fn heartbeats(args: AgentArgs, onhost: Option<onhost::Handle>) -> anyhow::Result<()> {
    let key = Key::load(&args.key)?;
    let mut ownership = ownership_of(&args);
    let local = local_addr(&args);
    let _membership = join_cluster(&args, &mut ownership, local, onhost.clone()).await?;
    let socket = bind_heartbeats(local).await?;
    let (migrations, mut control) = listeners(&args, local, &key).await?;
    let mut verifier = Verifier::new(key.clone(), &args.cluster_id);
    let mut counter = heartbeat::initial_counter();
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval.max(1)));
    let mut signals = Signals::install()?;
    let mut exporter = args.metrics.start()?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; heartbeat::MAX_MESSAGE + 1];
    let mut ready = false;
    let mut stepped_down = false;
    let mut recovering = args.recovering;
    let mut heard: Option<(Ownership, SocketAddr, Instant)> = None;
    let mut names = BTreeMap::new();
    tracing::info!(standbys = ?args.standbys, node = args.node_id, recovering, "sending heartbeats");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let Ok(message) = verifier.accept(&buf[..n]) else { continue };
                heard = Some((message.ownership.clone(), from, Instant::now()));
                names.insert(message.ownership.node_id.clone(), from);
                let mut flags = (recovering, stepped_down);
                let answer = receive(&message, from, &mut ownership, &mut flags)?;
                (recovering, stepped_down) = flags;
                if !answer {
                    continue;
                }
            }
            accepted = migrate::accept(migrations.as_ref().map(|m| &m.listener)) => {
                if let (Some(migrations), Ok((stream, from))) = (&migrations, accepted) {
                    migrations.serve(stream, from, &args.node_id);
                }
                continue;
            }
            pending = next_request(control.as_mut()) => {
                let node = Node {
                    args: &args,
                    key: &key,
                    ownership: &ownership,
                    stepped_down,
                    recovering,
                    heard: heard.as_ref(),
                    names: &names,
                    stats: verifier.stats,
                    onhost: onhost.as_ref(),
                };
                node.serve(pending);
                continue;
            }
            scrape = exporter.next() => {
                let mut families = families(sent, &verifier, &ownership, stepped_down, recovering);
                if let Some(onhost) = &onhost {
                    families.extend(onhost.families().await);
                }
                scrape.answer(families);
                continue;
            }
            _ = signals.sigint.recv() => break,
            _ = signals.sigterm.recv() => break,
        }
        if stepped_down {
            continue;
        }
        counter += 1;
        let datagram = heartbeat::seal(&key, kind_of(recovering), counter, &ownership);
        sent += send_all(&socket, &datagram, &args.standbys).await;
        if !ready {
            announce_ready()?;
            ready = true;
        }
    }
    Ok(())
}
