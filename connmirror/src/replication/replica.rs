//! The standby's side of on-host replication: it accepts the agent's
//! authenticated channel ([`crate::channel::channel`]), applies every journal
//! record it receives to a copy of the primary's flows, and acknowledges how
//! far it got. At takeover those flows go into the standby's flow table, and
//! the restore proceeds exactly as in inline mode.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use connmirror_common::Direction;
use tokio::net::TcpListener;

use crate::{
    flow::FlowTable,
    flow::record::Record,
    flow::recovery::Recovered,
    flow::stream::StreamLimits,
    key::Key,
    metrics::Family,
    replication::channel::ReplicationLag,
    replication::channel::{self, Batch, Channel, ChannelError, Hello, Sealer},
    service::{Service, socket_addr},
};

/// How long a channel may stay silent before its sender's hello says how
/// long it may: a restarted agent asking for the flows says none.
const BEFORE_HELLO: std::time::Duration = std::time::Duration::from_secs(10);

/// What the standby holds of the primary's journal.
#[derive(Default)]
struct State {
    /// The flows, as the records so far describe them.
    flows: Recovered,
    /// Stream position applied on the current connection.
    applied: u64,
    /// Record bytes applied over the standby's life.
    applied_total: u64,
    /// The agent's lag, as its last batch reported it.
    lag: Option<ReplicationLag>,
    /// Channels open now (a sender reconnecting may open the next before
    /// the last one times out).
    connected: u32,
    /// The role the last sender's hello named (`agent`, `mirror`, `owner`).
    sender: Option<String>,
    /// Channels established.
    accepted: u64,
    /// Handshakes refused (a wrong key, or not connmirror).
    refused: u64,
}

/// Where else the received records go, in order, before they are applied
/// (live replay feeds its instances from them). Called on the replication
/// thread, inside its runtime.
pub type Sink = Arc<dyn Fn(&[Record]) + Send + Sync>;

/// The replication listener and the state it keeps.
#[derive(Clone)]
pub struct Replica {
    state: Arc<Mutex<State>>,
    /// Service addresses whose flows keep their whole history: their bytes
    /// are never released.
    full: Arc<BTreeSet<SocketAddr>>,
    /// Service addresses whose every byte the standby needs (full history,
    /// live replay): the agent leaves out no acknowledged bytes of them.
    whole: Arc<BTreeSet<SocketAddr>>,
    /// Where else the records go.
    sink: Option<Sink>,
}

impl Replica {
    /// Listens on `listen` for the agent, under the shared `key`. The channel
    /// is served on a thread (and runtime) of its own: applying a fast stream
    /// of records must not delay the failure detector's heartbeats.
    /// `full`: the services that keep their whole history; `whole`: those
    /// whose every byte the standby needs (`full` and live replay's).
    pub fn start(
        listen: SocketAddr,
        key: Key,
        full: BTreeSet<SocketAddr>,
        whole: BTreeSet<SocketAddr>,
        sink: Option<Sink>,
    ) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .with_context(|| format!("binding the replication listener to {listen}"))?;
        let replica = Self {
            state: Arc::new(Mutex::new(State {
                flows: Recovered::new(),
                ..State::default()
            })),
            full: Arc::new(full),
            whole: Arc::new(whole),
            sink,
        };
        tracing::info!(%listen, "listening for the agent's replication channel");
        let serving = replica.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the replication thread's runtime")?;
        std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serving.accept(listener, key).await,
                        Err(err) => tracing::error!(%err, "registering the replication listener"),
                    }
                })
            })
            .context("spawning the replication thread")?;
        Ok(replica)
    }

    async fn accept(self, listener: TcpListener, key: Key) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "accepting a replication connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let replica = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let channel = match Channel::accept(stream, &key).await {
                    Ok(channel) => channel,
                    Err(err) => {
                        if matches!(err, ChannelError::Handshake { .. }) {
                            replica.lock().refused += 1;
                        }
                        tracing::warn!("{err}");
                        return;
                    }
                };
                tracing::info!(peer = %channel.writer.peer(), "replication channel established");
                {
                    let mut state = replica.lock();
                    state.accepted += 1;
                    state.connected += 1;
                    state.applied = 0;
                }
                let peer = channel.writer.peer();
                if let Err(err) = replica.serve(channel).await {
                    tracing::warn!("{err}");
                }
                let mut state = replica.lock();
                state.connected -= 1;
                if let (0, Some(role)) = (state.connected, &state.sender) {
                    tracing::warn!(
                        %peer,
                        "the {role} is lost: the services are unprotected until a sender connects again"
                    );
                }
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("replica state lock")
    }

    /// Applies batches and acknowledges each one, until the channel ends.
    async fn serve(&self, channel: Channel) -> Result<(), ChannelError> {
        let Channel {
            mut writer,
            mut reader,
        } = channel;
        let peer = writer.peer();
        writer.send(&channel::encode_needs(&self.whole)).await?;
        let protocol = |reason| ChannelError::Protocol { peer, reason };
        let mut hello = None::<Hello>;
        loop {
            let silence = hello.as_ref().map_or(BEFORE_HELLO, Hello::silence);
            let Ok(next) = tokio::time::timeout(silence, reader.next()).await else {
                return Err(ChannelError::Silent {
                    peer,
                    role: hello.map_or_else(|| "sender".into(), |h| h.role),
                    ms: silence.as_millis(),
                });
            };
            let Some(body) = next? else {
                return Ok(());
            };
            if channel::is_resume(&body) {
                self.send_state(&mut writer).await?;
                continue;
            }
            if let Some(said) = Hello::decode(&body).map_err(protocol)? {
                tracing::info!(%peer, role = said.role, silence_ms = said.silence().as_millis(), "replication sender");
                self.lock().sender = Some(said.role.clone());
                hello = Some(said);
                continue;
            }
            let batch = Batch::decode(&body).map_err(protocol)?;
            let records = batch.decode_records().map_err(protocol)?;
            if let Some(sink) = &self.sink {
                sink(&records);
            }
            {
                let mut state = self.lock();
                state.applied_total += batch.records.len() as u64;
                for record in records {
                    self.apply(&mut state.flows, record);
                }
                state.applied = batch.end;
                state.lag = Some(batch.lag);
            }
            if !batch.records.is_empty() {
                writer.send(&channel::encode_ack(batch.end)).await?;
            }
        }
    }

    /// Sends the flows held to an agent restarted on a pinned capture.
    async fn send_state(&self, writer: &mut Sealer) -> Result<(), ChannelError> {
        let (bodies, flows) = {
            let state = self.lock();
            (channel::encode_state(&state.flows), state.flows.flows.len())
        };
        for body in &bodies {
            writer.send(body).await?;
        }
        tracing::info!(peer = %writer.peer(), flows, "sent the replicated flows to a restarted agent");
        Ok(())
    }

    /// Applies one record; an update that moves a stream's acknowledged mark
    /// releases the bytes before it (unless the service keeps full history).
    fn apply(&self, flows: &mut Recovered, record: Record) {
        let live = !flows.in_checkpoint();
        let release = match &record {
            Record::Update {
                id, dir, snapshot, ..
            } if live => Some((*id, *dir, snapshot.marks.acked, snapshot.marks.handoff_only)),
            _ => None,
        };
        let closed = match &record {
            Record::Close { id, .. } if live => Some(*id),
            _ => None,
        };
        flows.apply(record);
        if let Some(id) = closed {
            flows.flows.remove(&id);
        }
        let Some((id, dir, acked, past_cap)) = release else {
            return;
        };
        let Some(flow) = flows.flows.get_mut(&id) else {
            return;
        };
        let server = socket_addr(flow.key.server_addr, flow.key.family, flow.key.server_port);
        // Full history is kept until the agent's stream went past its cap
        // (handoff-only): then the agent keeps only unacknowledged bytes too.
        if self.full.contains(&server) && !past_cap {
            return;
        }
        match dir {
            Direction::ClientToServer => flow.c2s.release_before(acked),
            Direction::ServerToClient => flow.s2c.release_before(acked),
        }
    }

    /// Puts the replicated flows of `services` into `table` (under the
    /// standby's own service ids), for a takeover; returns how many.
    pub fn restore_into(&self, table: &mut FlowTable, services: &[Service]) -> usize {
        let mut flows = self.lock().flows.clone();
        flows.flows.retain(|_, flow| {
            let server = socket_addr(flow.key.server_addr, flow.key.family, flow.key.server_port);
            match services.iter().find(|s| s.addr == server) {
                Some(service) => {
                    flow.service_id = service.id;
                    flow.closed.is_none()
                }
                None => false,
            }
        });
        let restored = flows.flows.len();
        table.restore(flows);
        restored
    }

    /// The role of the sender that is lost (`mirror`, `agent`, `owner`): a
    /// sender said hello, and no channel is open now. `None` while one is,
    /// and before any sender said hello.
    pub fn lost(&self) -> Option<String> {
        let state = self.lock();
        (state.connected == 0)
            .then(|| state.sender.clone())
            .flatten()
    }

    /// The agent's lag as it last reported it; `None` before the first batch.
    pub fn lag(&self) -> Option<ReplicationLag> {
        self.lock().lag
    }

    /// The replicated flows by readiness, as a takeover would find them.
    pub fn readiness_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut table = FlowTable::new(StreamLimits::default(), None);
        table.restore(self.lock().flows.clone());
        table.readiness_counts()
    }

    /// The replica's metrics: lag as reported, bytes applied, channels.
    pub fn families(&self) -> Vec<Family> {
        let state = self.lock();
        let mut families: Vec<Family> = Vec::new();
        if let Some(lag) = state.lag {
            families.extend(channel::lag_families(lag));
        }
        families.extend([
            Family::counter(
                "replication_applied",
                "Journal record bytes received from the agent and applied.",
                Some(prometheus_client::registry::Unit::Bytes),
            )
            .count(Vec::new(), state.applied_total),
            Family::gauge(
                "replication_connected",
                "1 while a sender (the agent, a mirror) is connected to the replication channel.",
                None,
            )
            .set(Vec::new(), f64::from(u8::from(state.connected > 0))),
            Family::counter(
                "replication_accepted",
                "Replication channels established with the agent.",
                None,
            )
            .count(Vec::new(), state.accepted),
            Family::counter(
                "replication_refused",
                "Replication handshakes refused (a wrong key, or not connmirror).",
                None,
            )
            .count(Vec::new(), state.refused),
        ]);
        families
    }
}
