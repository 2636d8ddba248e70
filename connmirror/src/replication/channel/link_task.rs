//! The agent's link task: keeps a channel to one standby open, reconnecting
//! after failures, and moves batches out and acknowledgments in, reporting to
//! the agent's event loop as [`LinkEvent`]s tagged with the standby's index
//! (an agent replicating to several standbys runs one task per standby, all
//! reporting on one channel).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    flow::recovery::Recovered,
    key::Key,
    metrics::Family,
    replication::channel::{
        Channel, ChannelError, Hello, Opener, apply_state, decode_ack, decode_needs, encode_resume,
    },
};

/// What the agent's link task reports to its event loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// A standby is connected; batches go to this sender. It needs every
    /// byte of these services ([`encode_needs`](super::encode_needs)).
    Connected(mpsc::UnboundedSender<Vec<u8>>, BTreeSet<SocketAddr>),
    /// The standby applied everything before this position.
    Acked(u64),
    /// The connection ended.
    Disconnected,
}

/// Connection counts of the agent's link to one standby.
#[derive(Debug, Default)]
pub struct LinkStats {
    connects: AtomicU64,
    handshake_failures: AtomicU64,
}

impl LinkStats {
    /// Connections and failed handshakes.
    pub fn families(&self) -> [Family; 2] {
        [
            Family::counter(
                "replication_connects",
                "Replication channels established with the standby.",
                None,
            )
            .count(Vec::new(), self.connects.load(Ordering::Relaxed)),
            Family::counter(
                "replication_handshake_failures",
                "Replication handshakes that failed (a wrong key, or no answer).",
                None,
            )
            .count(Vec::new(), self.handshake_failures.load(Ordering::Relaxed)),
        ]
    }
}

/// Where a link task reports: the agent's event loop, each event tagged
/// with the index of the link's standby.
#[derive(Clone, Debug)]
pub struct LinkEvents {
    /// The standby's index among the agent's `--replicate-to`.
    pub index: usize,
    /// The event loop's channel.
    pub sender: mpsc::UnboundedSender<(usize, LinkEvent)>,
}

impl LinkEvents {
    /// Reports `event`; false once the event loop is gone.
    fn send(&self, event: LinkEvent) -> bool {
        self.sender.send((self.index, event)).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// Keeps a channel to the standby at `peer` open, reconnecting every
/// `retry` after a failure, for as long as `events` has a receiver; each
/// stream starts with `hello` once the standby said what it needs.
pub async fn link(
    (peer, hello): (SocketAddr, Hello),
    key: Key,
    events: LinkEvents,
    stats: Arc<LinkStats>,
    retry: Duration,
) {
    let mut logged = None::<String>;
    while !events.is_closed() {
        match Channel::connect(peer, &key).await {
            Ok(channel) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, "replication channel established");
                logged = None;
                if let Err(err) = serve_link(channel, &hello, &events).await {
                    tracing::warn!("{err}");
                }
                events.send(LinkEvent::Disconnected);
            }
            Err(err) => {
                if matches!(err, ChannelError::Handshake { .. }) {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                }
                let text = err.to_string();
                if logged.as_ref() != Some(&text) {
                    tracing::warn!("{text}");
                    logged = Some(text);
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// The standby's first message: the services it needs whole.
async fn needs(
    reader: &mut Opener,
    peer: SocketAddr,
) -> Result<BTreeSet<SocketAddr>, ChannelError> {
    let protocol = |reason| ChannelError::Protocol { peer, reason };
    let Some(body) = reader.next().await? else {
        return Err(protocol("the standby closed the channel".into()));
    };
    decode_needs(&body).map_err(protocol)
}

/// Asks the standby at `peer` for the flows it holds, for an agent
/// restarted on a pinned capture (`--pin`): its table starts from them.
pub async fn fetch_state(peer: SocketAddr, key: &Key) -> Result<Recovered, ChannelError> {
    let Channel {
        mut writer,
        mut reader,
    } = Channel::connect(peer, key).await?;
    writer.send(&encode_resume()).await?;
    needs(&mut reader, peer).await?;
    let protocol = |reason| ChannelError::Protocol { peer, reason };
    let mut state = Recovered::new();
    loop {
        let Some(body) = reader.next().await? else {
            return Err(protocol(
                "the standby closed the channel before its state was complete".into(),
            ));
        };
        if apply_state(&body, &mut state).map_err(protocol)? {
            return Ok(state);
        }
    }
}

/// Moves batches out and acknowledgments in until either side fails.
async fn serve_link(
    channel: Channel,
    hello: &Hello,
    events: &LinkEvents,
) -> Result<(), ChannelError> {
    let Channel {
        mut writer,
        mut reader,
    } = channel;
    let peer = writer.peer();
    let needs = needs(&mut reader, peer).await?;
    writer.send(&hello.encode()).await?;
    let (batches, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    if !events.send(LinkEvent::Connected(batches, needs)) {
        return Ok(());
    }
    let send = async {
        while let Some(body) = outgoing.recv().await {
            writer.send(&body).await?;
        }
        Ok::<_, ChannelError>(())
    };
    let receive = async {
        while let Some(body) = reader.next().await? {
            let end =
                decode_ack(&body).map_err(|reason| ChannelError::Protocol { peer, reason })?;
            if !events.send(LinkEvent::Acked(end)) {
                break;
            }
        }
        Err::<(), _>(ChannelError::Protocol {
            peer,
            reason: "the standby closed the channel".into(),
        })
    };
    tokio::select! {
        result = send => result,
        result = receive => result,
    }
}
