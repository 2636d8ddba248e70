//! Protecting the connections a node serves: its flow table's records
//! streamed to each of its standbys, one outbox ([`Outbox`]) and one
//! replication link per standby, each with its own stream, acknowledgments
//! and lag ([`crate::replication::channel`]).
//!
//! The on-host agent protects its primary this way from the start
//! ([`crate::daemon::agent::onhost`]); in cluster mode a standby that took
//! services over protects them the same way from then on, for the
//! standbys left ([`crate::daemon::standby`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    cluster::record::StandbyState,
    engine::Engine,
    flow::record::Record,
    hold::OutputCommit,
    key::Key,
    metrics::Family,
    replication::channel::{self, Hello, LimitChange, LinkEvent, LinkEvents, LinkStats, Outbox},
};

/// How long a link waits before connecting again.
const RETRY: Duration = Duration::from_millis(200);

/// How often a node tells each standby its lag when nothing else goes out:
/// its keepalive, the health interval its [`Hello`] announces.
pub(crate) const KEEPALIVE: Duration = Duration::from_millis(100);

/// Keepalives a standby may miss before it declares the sender lost: a
/// silence of a second, by default.
pub(crate) const MISSED: u32 = 10;

/// The hello of a node in `role` that keeps alive every [`KEEPALIVE`].
pub(crate) fn hello(role: &str) -> Hello {
    Hello {
        role: role.to_owned(),
        interval_ms: KEEPALIVE.as_millis() as u32,
        missed: MISSED,
    }
}

/// What a node protecting its services runs: the links to its standbys,
/// and with `--sync` the output commit that holds the services' segments
/// until they have them.
pub(crate) struct Protection {
    /// The links.
    pub(crate) links: Links,
    /// `--sync`'s output commit.
    pub(crate) commit: Option<OutputCommit>,
}

/// The links to a node's standbys.
pub(crate) struct Links {
    links: Vec<StandbyLink>,
    events: mpsc::UnboundedReceiver<(usize, LinkEvent)>,
}

/// One standby the records go to: its address, its link task and the
/// link's counts. Dropping it stops the link.
struct StandbyLink {
    addr: SocketAddr,
    stats: Arc<LinkStats>,
    task: tokio::task::JoinHandle<()>,
}

impl StandbyLink {
    /// Starts the link task to the standby at `addr`, the `index`th, which
    /// reports on `sender`; its streams start with `hello`.
    fn start(
        (addr, hello): (SocketAddr, &Hello),
        index: usize,
        key: &Key,
        sender: &mpsc::UnboundedSender<(usize, LinkEvent)>,
    ) -> Self {
        let stats = Arc::new(LinkStats::default());
        let events = LinkEvents {
            index,
            sender: sender.clone(),
        };
        let to = (addr, hello.clone());
        let link = channel::link(to, key.clone(), events, stats.clone(), RETRY);
        let task = tokio::spawn(link);
        Self { addr, stats, task }
    }
}

impl Drop for StandbyLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Links {
    /// Puts one outbox per standby on `mirror`'s reader (collecting `sync`
    /// limits when asked) and starts a link to each. A new owner (`taken`:
    /// its table holds the flows it just took over) keeps a checkpoint
    /// taken now and every record after it for each standby's first
    /// connection ([`Outbox::keep_from`]). Every stream starts with
    /// `hello`: who this node is to the standbys, and its health settings.
    pub(crate) fn start(
        mirror: &mut Engine,
        (standbys, hello): (&[SocketAddr], &Hello),
        key: &Key,
        (sync, taken): (bool, bool),
    ) -> Links {
        mirror.reader.table.collect_records();
        mirror.reader.outboxes = standbys.iter().map(|_| Outbox::new(sync)).collect();
        if taken {
            let checkpoint = checkpoint(mirror);
            for outbox in &mut mirror.reader.outboxes {
                outbox.keep_from(checkpoint.clone());
            }
        }
        let (sender, events) = mpsc::unbounded_channel();
        let links = (standbys.iter().enumerate())
            .map(|(index, &addr)| StandbyLink::start((addr, hello), index, key, &sender))
            .collect();
        Links { links, events }
    }

    /// The next event of any link (the standby's index with it); pending
    /// while there is none.
    pub(crate) async fn next(&mut self) -> (usize, LinkEvent) {
        match self.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    /// Follows one link's event: a new stream, an acknowledgment (and the
    /// sync limits it releases to `commit`), or the standby gone.
    pub(crate) fn follow(
        &self,
        mirror: &mut Engine,
        commit: Option<&mut OutputCommit>,
        (index, event): (usize, LinkEvent),
    ) -> anyhow::Result<()> {
        on_link(mirror, commit, (index, self.links[index].addr), event)
    }

    /// Sends every outbox's keepalive (its lag, when nothing else goes
    /// out), and releases what `--sync`'s `commit` held past its timeout;
    /// the worst exposure per service and each standby's state.
    pub(crate) fn keepalive(
        &self,
        mirror: &mut Engine,
        commit: Option<&mut OutputCommit>,
    ) -> anyhow::Result<(BTreeMap<SocketAddr, u64>, Vec<StandbyState>)> {
        let backlog = mirror.ring_backlog();
        let outboxes = &mut mirror.reader.outboxes;
        for outbox in outboxes.iter_mut() {
            outbox.keepalive(backlog);
        }
        if let Some(commit) = commit {
            let positions: Vec<u64> = outboxes.iter().map(Outbox::position).collect();
            commit.expire(&positions)?;
        }
        let states = (self.links.iter().zip(outboxes.iter()))
            .map(|(link, outbox)| StandbyState {
                address: link.addr,
                connected: outbox.is_connected(),
                lag_bytes: outbox.lag(backlog).bytes,
            })
            .collect();
        Ok((worst_exposure(outboxes), states))
    }

    /// The replication families, one series per standby (`standby` label).
    pub(crate) fn families(&self, mirror: &Engine) -> Vec<Family> {
        let backlog = mirror.ring_backlog();
        let outboxes = mirror.reader.outboxes.iter().zip(&self.links);
        let per_standby = outboxes.flat_map(|(outbox, link)| {
            let standby = link.addr.to_string();
            let families = outbox.families(backlog, &link.stats);
            families
                .into_iter()
                .map(move |f| f.labelled("standby", &standby))
        });
        Family::merge(per_standby)
    }
}

/// Resolves when `--sync`'s queue has segments to read; never without it.
pub(crate) async fn queued(commit: Option<&OutputCommit>) -> std::io::Result<()> {
    match commit {
        Some(commit) => commit.readable().await,
        None => std::future::pending().await,
    }
}

/// Reads the segments waiting in `--sync`'s queue and decides each: the
/// ring is read first (every queued segment was captured before it was
/// queued), so the table says what the journal holds.
pub(crate) fn hold(mirror: &mut Engine, commit: &mut OutputCommit) -> anyhow::Result<()> {
    commit.receive()?;
    mirror.read_ring()?;
    commit.decide(|key| mirror.reader.table.sent_end(key))?;
    Ok(())
}

/// The largest exposure over `outboxes`, per service: a failover to any
/// standby loses at most its own.
fn worst_exposure(outboxes: &[Outbox]) -> BTreeMap<SocketAddr, u64> {
    let mut worst = BTreeMap::new();
    for (service, bytes) in outboxes.iter().flat_map(Outbox::exposure) {
        let entry: &mut u64 = worst.entry(service).or_default();
        *entry = (*entry).max(bytes);
    }
    worst
}

/// Follows the replication link of `standby` (its index and address): a
/// new stream, an acknowledgment (and the sync limits it releases), or the
/// standby gone.
fn on_link(
    mirror: &mut Engine,
    commit: Option<&mut OutputCommit>,
    (index, addr): (usize, SocketAddr),
    event: LinkEvent,
) -> anyhow::Result<()> {
    match event {
        LinkEvent::Connected(link, whole) => {
            connected(mirror, (index, addr), link, whole)?;
            let position = outbox(mirror, index).position();
            if let Some(commit) = commit {
                commit.connected(index, position);
            }
        }
        LinkEvent::Acked(end) => {
            let changes = outbox(mirror, index).acked(end);
            if let Some(commit) = commit {
                for change in changes {
                    match change {
                        LimitChange::Set(key, limit) => commit.limit(index, key, Some(limit)),
                        LimitChange::Remove(key) => commit.limit(index, key, None),
                    }
                }
                commit.acknowledged(index, end)?;
            }
        }
        LinkEvent::Disconnected => {
            tracing::warn!(
                standby = %addr,
                "replication channel lost: the standby falls behind until it is back"
            );
            outbox(mirror, index).disconnected();
            if let Some(commit) = commit {
                commit.disconnected(index)?;
            }
        }
    }
    Ok(())
}

/// The outbox of the standby of this `index`.
fn outbox(mirror: &mut Engine, index: usize) -> &mut Outbox {
    &mut mirror.reader.outboxes[index]
}

/// A standby (its index and address) connected: everything in the ring is
/// applied (and shipped to the other standbys), then a checkpoint of every
/// open flow starts its stream.
fn connected(
    mirror: &mut Engine,
    (index, addr): (usize, SocketAddr),
    link: mpsc::UnboundedSender<Vec<u8>>,
    whole: BTreeSet<SocketAddr>,
) -> anyhow::Result<()> {
    mirror.read_ring()?;
    let checkpoint = checkpoint(mirror);
    let backlog = mirror.ring_backlog();
    let records = outbox(mirror, index).connected(link, &checkpoint, backlog, whole);
    tracing::info!(records, standby = %addr, "standby connected: checkpoint sent");
    Ok(())
}

/// A checkpoint of every open flow in `mirror`'s table.
fn checkpoint(mirror: &Engine) -> Vec<Record> {
    let mut records = Vec::new();
    let Ok(()) = mirror.reader.table.checkpoint(|record| {
        records.push(record);
        Ok::<_, Infallible>(())
    });
    records
}
