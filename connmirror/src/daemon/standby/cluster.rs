//! The standby in cluster mode (`--etcd`): a lost primary's services are
//! taken only once an etcd transaction says this standby won them
//! ([`crate::cluster::Store::take`]), so when several standbys detect the
//! same failure exactly one takes over; the others log why and keep
//! protecting. Without a quorum it keeps asking, and never takes over.
//!
//! The winner then protects what it took over for the standbys left (an
//! on-host standby that captures its own interface): it captures the
//! services from the takeover's unquiesce step on, replicates to the
//! standbys registered for them and heartbeats to them, so a second failure
//! is survived too; with `--sync` it holds the services' segments until
//! they have them.

use std::io::Write as _;

use tokio::sync::mpsc;

use super::*;
use crate::cluster::{
    Registration, Store, Take,
    record::{NodeRecord, Owner},
};
use crate::daemon::protection::{Links, Protection, hello};
use crate::hold::OutputCommit;

/// How long a standby waits before it asks etcd again after finding no
/// quorum.
const RETRY: Duration = Duration::from_millis(100);

/// A standby's place in the cluster: its store, its registration, and the
/// claim it may be making.
pub(super) struct Membership {
    store: Store,
    registration: Registration,
    /// Where the claim task answers.
    answers: mpsc::Sender<Claimed>,
    /// The claim in progress, if any, and when it began.
    claiming: Option<(tokio::task::JoinHandle<()>, std::time::Instant)>,
    /// Waited before claiming: `--priority` heartbeat intervals.
    delay: Duration,
}

/// The standbys left, found before a takeover, and `--sync`'s output
/// commit for them.
pub(super) struct Prepared {
    left: Vec<NodeRecord>,
    commit: Option<OutputCommit>,
}

impl Prepared {
    /// The services' capture mode once their sockets serve.
    fn mode(&self) -> u32 {
        match self.commit {
            Some(_) => ServiceMode::SYNC,
            None => 0,
        }
    }
}

/// What a claim task found.
pub(super) struct Claimed {
    /// The services it claimed.
    pub services: Vec<SocketAddr>,
    /// The owner they were taken from.
    pub seen: Owner,
    /// etcd's answer.
    pub take: Take,
}

/// The standbys registered for any of `services` but `node_id`, with an
/// address others can reach (a registration of `0.0.0.0` is skipped and
/// logged: give that standby `--advertise`).
fn standbys_left<'a>(
    nodes: &'a BTreeMap<String, NodeRecord>,
    node_id: &str,
    services: &[SocketAddr],
) -> Vec<&'a NodeRecord> {
    (nodes.values())
        .filter(|n| n.node_id != node_id && n.role == "standby")
        .filter(|n| n.services.iter().any(|s| services.contains(s)))
        .filter(|n| {
            let reachable = [n.heartbeat, n.replication].iter().flatten().all(|a| !a.ip().is_unspecified());
            if !reachable {
                tracing::warn!(node = n.node_id, "standby registered without a reachable address (--advertise): not protected by it");
            }
            reachable
        })
        .collect()
}

/// `listen` as other nodes reach it: an unspecified IP becomes `advertise`.
fn advertised(
    listen: Option<SocketAddr>,
    advertise: Option<std::net::IpAddr>,
) -> Option<SocketAddr> {
    let listen = listen?;
    match advertise {
        Some(ip) if listen.ip().is_unspecified() => Some(SocketAddr::new(ip, listen.port())),
        _ => Some(listen),
    }
}

impl Membership {
    /// [`Membership::join`] in cluster mode (`--etcd`); nothing otherwise.
    pub(super) async fn join_if_asked(
        args: &StandbyArgs,
    ) -> anyhow::Result<(Option<Membership>, Option<mpsc::Receiver<Claimed>>)> {
        if !args.cluster.enabled() {
            return Ok((None, None));
        }
        let (membership, claimed) = Membership::join(args).await?;
        Ok((Some(membership), Some(claimed)))
    }

    /// Connects to etcd and registers this standby; claim answers arrive on
    /// the receiver.
    pub(super) async fn join(
        args: &StandbyArgs,
    ) -> anyhow::Result<(Membership, mpsc::Receiver<Claimed>)> {
        let cluster = &args.cluster;
        let store = Store::connect(cluster, &args.detection.cluster_id)
            .await
            .context("cluster mode (--etcd)")?;
        let record = NodeRecord {
            node_id: args.detection.node_id.clone(),
            role: "standby".into(),
            priority: args.priority,
            heartbeat: advertised(args.detection.heartbeat_listen, args.advertise),
            replication: advertised(args.replication_listen, args.advertise),
            services: args.mirror.services.iter().map(|s| s.0).collect(),
            ..NodeRecord::default()
        };
        let registration = (store.register(record).await).context("registering in etcd")?;
        tracing::info!(
            etcd = cluster.endpoint_list(),
            priority = args.priority,
            "cluster mode: takeovers are decided in etcd"
        );
        let (answers, claimed) = mpsc::channel(4);
        let interval = Duration::from_millis(args.detection.heartbeat_interval.max(1));
        let membership = Membership {
            store,
            registration,
            answers,
            claiming: None,
            delay: interval * args.priority,
        };
        Ok((membership, claimed))
    }

    /// Starts claiming `services` from `seen` in etcd, after this standby's
    /// priority delay; asks again every [`RETRY`] while there is no quorum.
    pub(super) fn claim(&mut self, node_id: &str, services: Vec<SocketAddr>, seen: Owner) {
        self.cancel();
        let (store, answers, delay) = (self.store.clone(), self.answers.clone(), self.delay);
        let node_id = node_id.to_owned();
        let began = std::time::Instant::now();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut tries = 0u64;
            let take = loop {
                match store.take(&node_id, &services, &seen).await {
                    Ok(take) => break take,
                    Err(err) => {
                        tries += 1;
                        // 1, 2, 4, 8, ...: a long partition does not flood the log.
                        if tries.is_power_of_two() {
                            tracing::warn!(tries, "not taking over without etcd's quorum: {err}");
                        }
                    }
                }
                tokio::time::sleep(RETRY).await;
            };
            let _ = answers
                .send(Claimed {
                    services,
                    seen,
                    take,
                })
                .await;
        });
        self.claiming = Some((task, began));
    }

    /// Stops a claim in progress (the primary is back).
    pub(super) fn cancel(&mut self) {
        if let Some((claiming, _)) = self.claiming.take() {
            claiming.abort();
        }
    }

    /// When the claim in progress began, if one is.
    pub(super) fn claiming_since(&self) -> Option<std::time::Instant> {
        (self.claiming.as_ref())
            .filter(|(task, _)| !task.is_finished())
            .map(|(_, began)| *began)
    }

    /// A manual takeover of `services`: from whoever etcd says owns them now.
    pub(super) async fn take_now(
        &self,
        node_id: &str,
        services: &[SocketAddr],
    ) -> anyhow::Result<u64> {
        let owners = self.store.owners(services).await?;
        let seen = (owners.values().flatten().map(|(o, _)| o.clone()))
            .find(|o| o.node_id != node_id)
            .unwrap_or(Owner {
                node_id: String::new(),
                epoch: 0,
            });
        match self.store.take(node_id, services, &seen).await? {
            Take::Won(epoch) => Ok(epoch),
            Take::Lost(owner) => anyhow::bail!(
                "{} owns them at epoch {} in etcd: try again",
                owner.node_id,
                owner.epoch
            ),
        }
    }

    /// Records this node's role in its registration.
    pub(super) fn set_role(&self, role: &str) {
        self.registration.update(|r| r.role = role.into());
    }
}

impl Standby {
    /// A lost primary in cluster mode: claim its services in etcd first.
    pub(super) fn claim_lost(&mut self, mirror: &Engine, ownership: Ownership) {
        let services = self.to_take(mirror, &ownership);
        let Some(membership) = &mut self.membership else {
            return;
        };
        if services.is_empty() {
            return;
        }
        let seen = Owner {
            node_id: ownership.node_id.clone(),
            epoch: ownership.epoch,
        };
        tracing::info!(
            from = seen.node_id,
            epoch = seen.epoch,
            "primary lost: claiming its services in etcd"
        );
        membership.claim(&self.node_id, services, seen);
    }

    /// etcd answered a claim: take over under the epoch won (and protect
    /// what it took over for the standbys left, if any), or say who won.
    pub(super) async fn claimed_in_etcd(
        &mut self,
        mirror: &mut Engine,
        claimed: Claimed,
        detector: Option<&Detector>,
    ) -> Option<Protection> {
        let Claimed {
            services,
            seen,
            take,
        } = claimed;
        match take {
            Take::Won(epoch) => {
                tracing::info!(epoch, from = seen.node_id, "won the services in etcd");
                let trigger = Trigger {
                    name: "heartbeats-missed",
                    epoch,
                };
                let mut prepared = self.prepare_protection(mirror, &services).await;
                // For this takeover only: a manual one later keeps the default.
                self.config.capture_after = prepared.as_ref().map(Prepared::mode);
                let taken = self.takeover(mirror, Some(services.clone()), trigger).await;
                self.config.capture_after = None;
                match taken {
                    Ok(_) => {
                        self.membership.iter().for_each(|m| m.set_role("owner"));
                        return prepared.map(|p| self.protect(mirror, p, detector));
                    }
                    Err(err) => tracing::error!("automatic takeover failed: {err:#}"),
                }
                if let Some(commit) = prepared.take().and_then(|p| p.commit) {
                    commit.close(false);
                }
            }
            Take::Lost(owner) => {
                self.epoch = self.epoch.max(owner.epoch);
                tracing::warn!(
                    owner = owner.node_id,
                    epoch = owner.epoch,
                    "lost the takeover in etcd: another standby owns the services; staying a standby"
                );
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(
                    stdout,
                    "takeover lost: {} owns {services:?} at epoch {} (etcd); protecting them",
                    owner.node_id, owner.epoch
                )
                .and_then(|()| stdout.flush());
            }
        }
        None
    }

    /// Before a takeover in on-host cluster mode: finds the standbys left
    /// for `services` (registered in etcd), and with `--sync` opens the
    /// output commit that will hold the services' segments for them. `None`
    /// when this node does not protect what it takes over, or nobody is left.
    async fn prepare_protection(
        &mut self,
        mirror: &mut Engine,
        services: &[SocketAddr],
    ) -> Option<Prepared> {
        let membership = self.membership.as_ref()?;
        if !self.protects {
            tracing::warn!(
                "not protecting the services taken over: this standby has no replication \
                 listener or captures none of its interfaces, so a second failure is not survived"
            );
            return None;
        }
        let nodes = (membership.store.nodes().await)
            .inspect_err(|err| tracing::error!("not protecting the services taken over: {err}"))
            .ok()?;
        let left: Vec<NodeRecord> = (standbys_left(&nodes, &self.node_id, services).into_iter())
            .cloned()
            .collect();
        if left.is_empty() {
            tracing::warn!("no standby left for the services taken over: they are not protected");
            return None;
        }
        let replicating = left.iter().filter(|n| n.replication.is_some()).count();
        let commit = match &self.sync {
            Some(sync) => Some(
                // One holder slot per replication link, in the links' order.
                (OutputCommit::open(&mut mirror.capture, sync.queue, sync.timeout, replicating))
                    .inspect_err(|err| tracing::error!("--sync: {err}: protecting asynchronously"))
                    .ok()?,
            ),
            None => None,
        };
        Some(Prepared { left, commit })
    }

    /// After the takeover: the standbys left get this node's heartbeats and
    /// a replication link each, whose stream starts with a checkpoint of the
    /// restored flows; the services were put back to capture at the
    /// unquiesce step, so every byte the restored sockets exchange from then
    /// on reaches those standbys (and with `--sync` goes out only once they
    /// have it).
    fn protect(
        &self,
        mirror: &mut Engine,
        prepared: Prepared,
        detector: Option<&Detector>,
    ) -> Protection {
        let Prepared { left, commit } = prepared;
        let heartbeats: Vec<SocketAddr> = left.iter().filter_map(|n| n.heartbeat).collect();
        let replication: Vec<SocketAddr> = left.iter().filter_map(|n| n.replication).collect();
        if let Some(detector) = detector {
            detector.announce_to(heartbeats);
        }
        let names: Vec<&str> = left.iter().map(|n| n.node_id.as_str()).collect();
        tracing::info!(
            standbys = ?names,
            sync = commit.is_some(),
            "protecting the services taken over: capturing them here, replicating to the standbys left"
        );
        let key = self.key.as_ref().expect("cluster mode needs the key");
        let to = (replication.as_slice(), &hello("owner"));
        let links = Links::start(mirror, to, key, (commit.is_some(), true));
        Protection { links, commit }
    }

    /// Writes the standbys left's replication state into the registration
    /// (every second, on the prune tick), for `connmirror status --cluster`.
    pub(super) fn publish_protection(&self) {
        if let Some(membership) = &self.membership {
            let states = self.protecting.clone();
            membership.registration.update(|r| r.standbys = states);
        }
    }

    /// Ends a claim in progress once the primary is heard again, and keeps
    /// the registration's `watching` (whose heartbeats this standby hears)
    /// up to date for `connmirror status --cluster`.
    pub(super) fn primary_back(&mut self, detector: &Detector) {
        let Some(membership) = &mut self.membership else {
            return;
        };
        let watching = (detector.peer())
            .filter(|p| p.alive)
            .map(|p| p.ownership.node_id);
        membership.registration.update(|r| r.watching = watching);
        let back = membership
            .claiming_since()
            .is_some_and(|t| detector.heard_since(t));
        if back {
            tracing::info!("the primary is heard again: no longer claiming its services");
            membership.cancel();
        }
    }
}
