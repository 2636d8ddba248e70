//! `connmirror standby`'s command line: the engine's arguments plus detection, resumption, failback and replication.

use super::*;

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
    /// receive restored connections (the `connmirror-handoff` crate is their side).
    #[arg(long, value_name = "PATH", default_value = handoff::DEFAULT_SOCKET)]
    pub handoff: PathBuf,
    /// How a service's restored connections continue: `IP:PORT=handoff` (to an
    /// application on the handoff socket; the default),
    /// `IP:PORT=live:APP_IP:APP_PORT` (live replay: a standby instance of an
    /// unmodified, deterministic server listening there is fed every client
    /// byte as it is captured and its output compared all the time; at
    /// takeover its connection is spliced, nothing is replayed) or
    /// `IP:PORT=replay:APP_IP:APP_PORT` (replay the whole recorded client
    /// history into the instance at takeover, verify its output, then splice;
    /// needs `--service IP:PORT=full`).
    #[arg(long = "resume", value_name = "IP:PORT=handoff|live:ADDR|replay:ADDR")]
    pub resume: Vec<ResumeSpec>,
    /// Live replay: bytes one connection may hold (client bytes not yet
    /// written to the instance, plus output the instance owes or produced
    /// ahead of the primary) before it becomes `unprotected: instance-lag`
    /// (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "4M")]
    pub instance_lag_cap: u32,
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
    /// Milliseconds a replay may take to reproduce the recorded output (and a
    /// live replay, to produce what its instance still owes at takeover).
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
    /// Cluster mode: ownership in etcd (`--etcd`); needs `--heartbeat-listen`.
    #[command(flatten)]
    pub cluster: crate::cluster::EtcdArgs,
    /// Cluster mode: the address other nodes reach this standby at; it
    /// replaces an unspecified address (`0.0.0.0`, `::`) of
    /// `--heartbeat-listen` and `--replication-listen` in the registration
    /// `connmirror status --cluster` reads.
    #[arg(long, value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
    /// Cluster mode, after a takeover: hold each outgoing segment of the
    /// services taken over (NFQUEUE, as the agent's `--sync`) until every
    /// standby left has the journal up to its data and its ACK, so a second
    /// failure loses nothing the clients were told.
    #[arg(long, requires = "replication_listen")]
    pub sync: bool,
    /// With --sync: milliseconds a segment may wait for the standbys left
    /// before everything held is released and replication goes on
    /// asynchronously until they caught up.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub sync_timeout: u64,
    /// With --sync: the netfilter queue number (one node per number in a
    /// network namespace).
    #[arg(long, value_name = "N", default_value_t = 7403)]
    pub sync_queue: u16,
    /// Cluster mode: this standby's priority among the standbys of the same
    /// primary, 0 first. A standby of priority N waits N heartbeat
    /// intervals before it claims a lost primary's services, so the
    /// preferred one usually wins; etcd makes sure only one ever does.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub priority: u32,
    /// Routing table for the drained connections' local routes (`--failback
    /// drain`; see `connmirror::failover::drain`).
    #[arg(long, value_name = "ID", default_value_t = drain::DEFAULT_TABLE)]
    pub drain_table: u32,
}
/// `--sync` settings of a standby (cluster mode, after a takeover).
#[derive(Clone, Copy, Debug)]
pub(super) struct SyncArgs {
    /// The netfilter queue.
    pub queue: u16,
    /// How long a segment may wait.
    pub timeout: Duration,
}
/// `--failback` values: how services go back to a returning primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Failback {
    /// Restored connections stay until they close; new ones go to the primary.
    Drain,
    /// Restored connections move to the primary live (`TCP_REPAIR` save and
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
    #[arg(long, value_name = "MS", default_value_t = crate::ownership::DEFAULT_INTERVAL_MS)]
    pub heartbeat_interval: u64,
    /// Heartbeats missed in a row before the primary is declared lost.
    #[arg(long, default_value_t = crate::ownership::DEFAULT_MISSED)]
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
    pub(super) fn config(&self) -> anyhow::Result<Option<DetectorConfig>> {
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
        let (service, how) = text.split_once('=').ok_or_else(|| {
            format!("{text:?} is not IP:PORT=handoff, IP:PORT=live:ADDR or IP:PORT=replay:ADDR")
        })?;
        let service: SocketAddr = service
            .parse()
            .map_err(|_| format!("{service:?} is not an IP:PORT service address"))?;
        let app = |app: &str| {
            app.parse()
                .map_err(|_| format!("{app:?} is not an IP:PORT application address"))
        };
        let resume = match how.split_once(':') {
            None if how == "handoff" => Resume::Handoff,
            Some(("replay", addr)) => Resume::Replay(app(addr)?),
            Some(("live", addr)) => Resume::Live(app(addr)?),
            _ => {
                return Err(format!(
                    "{how:?} is not `handoff`, `live:IP:PORT` or `replay:IP:PORT`"
                ));
            }
        };
        Ok(Self(service, resume))
    }
}
impl StandbyArgs {
    pub(super) fn takeover_config(&self) -> TakeoverConfig {
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
            live: self.live(),
            capture_after: None,
        }
    }

    /// Live replay of the services resumed `live`, if there are any.
    fn live(&self) -> Option<Live> {
        let apps: BTreeMap<SocketAddr, SocketAddr> = (self.resume.iter())
            .filter_map(|ResumeSpec(service, resume)| match resume {
                Resume::Live(app) => Some((*service, *app)),
                _ => None,
            })
            .collect();
        (!apps.is_empty()).then(|| Live::new(apps, self.instance_lag_cap as usize))
    }

    /// The services resumed `live`: their instances are fed every client
    /// byte as it arrives.
    pub(super) fn live_services(&self) -> BTreeSet<SocketAddr> {
        (self.resume.iter())
            .filter(|ResumeSpec(_, resume)| matches!(resume, Resume::Live(_)))
            .map(|ResumeSpec(service, _)| *service)
            .collect()
    }

    /// `--sync`'s settings, when asked.
    pub(super) fn sync_args(&self) -> Option<SyncArgs> {
        self.sync.then(|| SyncArgs {
            queue: self.sync_queue,
            timeout: Duration::from_millis(self.sync_timeout),
        })
    }

    /// Every `--resume` must name a `--service`; cluster mode needs the
    /// heartbeats.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.cluster.enabled() || self.detection.heartbeat_listen.is_some(),
            "--etcd needs --heartbeat-listen: etcd decides who takes over, the heartbeats say when"
        );
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
