//! The replication channel of on-host mode: the agent on the primary streams
//! every journal record it produces to the standby, which acknowledges how far
//! it has applied them.
//!
//! The channel is TCP carrying [Noise](https://noiseprotocol.org/noise.html)
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`: an ephemeral X25519 exchange mixed
//! with a pre-shared key derived from the shared key file (the one the
//! heartbeats use, see [`Key::derive`]). The first handshake message is
//! already authenticated under that key, so a peer without it is refused
//! before anything else is read; afterwards every message is encrypted and
//! authenticated (ChaCha20-Poly1305, nonces counting up, so a replayed or
//! reordered message fails). Each Noise message travels as a 2-byte
//! big-endian length and the ciphertext (at most 65,535 bytes, the Noise
//! limit).
//!
//! Inside, the plaintext is a stream of messages, each a 4-byte little-endian
//! length and a body whose first byte says what it is: a [`Batch`] of journal
//! records (agent → standby) or an acknowledgment (standby → agent). Records
//! use the journal's own encoding (kind, length, payload: what a segment file
//! holds, without its CRC, which the AEAD replaces). Positions count those
//! record bytes from the start of the connection, which always begins with a
//! checkpoint of every open flow: a standby that connects late, or again,
//! starts from a complete state.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use connmirror_common::{Direction, FlowKey, SyncLimit};
use prometheus_client::registry::Unit;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
};

use crate::{
    flow::record::{Record, SideSnapshot},
    metrics::Family,
    ownership::heartbeat::Key,
};

/// The standby's default replication port.
pub const DEFAULT_PORT: u16 = 7402;

/// The Noise protocol both ends speak.
const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// What the pre-shared key is derived with from the key file.
const PSK_LABEL: &[u8] = b"connmirror replication psk v1";
/// Largest Noise message.
const MAX_NOISE: usize = 65_535;
/// Largest plaintext in one Noise message (the AEAD tag takes 16 bytes).
const MAX_PLAIN: usize = MAX_NOISE - 16;
/// Largest application message accepted (a batch of records).
const MAX_MESSAGE: usize = 64 << 20;
/// A standby further behind than this many bytes is dropped (it reconnects
/// and starts again from a checkpoint) instead of the agent buffering more.
const MAX_BACKLOG: u64 = 256 << 20;
/// A handshake that takes longer than this fails.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const BATCH: u8 = 1;
const ACK: u8 = 2;

/// Why the replication channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Reading or writing the TCP stream failed.
    #[error("replication channel with {peer}: {source}")]
    Io {
        /// The other end.
        peer: SocketAddr,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The other end does not hold the shared key (or is not connmirror).
    #[error(
        "replication handshake with {peer} refused: {reason} (the two hosts' --key files differ?)"
    )]
    Handshake {
        /// The other end.
        peer: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// A message failed authentication or made no sense.
    #[error("replication channel with {peer}: {reason}")]
    Protocol {
        /// The other end.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// One end of an established channel, split so that one task may read while
/// another writes.
pub struct Channel {
    /// Where the ciphertext goes.
    pub writer: Sealer,
    /// Where it comes from.
    pub reader: Opener,
}

/// Encrypts and writes messages.
pub struct Sealer {
    noise: Arc<Mutex<snow::TransportState>>,
    stream: OwnedWriteHalf,
    peer: SocketAddr,
    buf: Vec<u8>,
}

/// Reads and decrypts messages.
pub struct Opener {
    noise: Arc<Mutex<snow::TransportState>>,
    stream: OwnedReadHalf,
    peer: SocketAddr,
    plain: Vec<u8>,
    cipher: Vec<u8>,
}

/// A fresh handshake under the pre-shared key derived from `key`.
fn handshake(key: &Key, initiator: bool) -> Result<snow::HandshakeState, snow::Error> {
    let params = PATTERN.parse().expect("a valid Noise pattern");
    let psk = key.derive(PSK_LABEL);
    let builder = snow::Builder::new(params).psk(0, &psk)?;
    match initiator {
        true => builder.build_initiator(),
        false => builder.build_responder(),
    }
}

impl Channel {
    /// Connects to the standby at `peer` and runs the handshake as initiator.
    pub async fn connect(peer: SocketAddr, key: &Key) -> Result<Self, ChannelError> {
        let io = |source| ChannelError::Io { peer, source };
        let mut stream = TcpStream::connect(peer).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let handshake = async {
            let mut noise = handshake(key, true).map_err(|e| refused(peer, e))?;
            let mut buf = vec![0u8; MAX_NOISE];
            let n = noise
                .write_message(&[], &mut buf)
                .map_err(|e| refused(peer, e))?;
            write_frame(&mut stream, &buf[..n]).await.map_err(io)?;
            let frame = match read_frame(&mut stream).await {
                Ok(frame) => frame,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ChannelError::Handshake {
                        peer,
                        reason: "the standby closed the connection".into(),
                    });
                }
                Err(err) => return Err(io(err)),
            };
            noise
                .read_message(&frame, &mut buf)
                .map_err(|e| refused(peer, e))?;
            noise.into_transport_mode().map_err(|e| refused(peer, e))
        };
        let noise = timed(peer, handshake).await?;
        Ok(Self::split(stream, noise, peer))
    }

    /// Runs the handshake as responder on an accepted connection.
    pub async fn accept(mut stream: TcpStream, key: &Key) -> Result<Self, ChannelError> {
        let peer = stream.peer_addr().map_err(|source| ChannelError::Io {
            peer: SocketAddr::from(([0u8; 4], 0)),
            source,
        })?;
        let io = |source| ChannelError::Io { peer, source };
        stream.set_nodelay(true).map_err(io)?;
        let handshake = async {
            let mut noise = handshake(key, false).map_err(|e| refused(peer, e))?;
            let mut buf = vec![0u8; MAX_NOISE];
            let frame = read_frame(&mut stream).await.map_err(io)?;
            noise
                .read_message(&frame, &mut buf)
                .map_err(|err| match err {
                    snow::Error::Decrypt => ChannelError::Handshake {
                        peer,
                        reason:
                            "its first handshake message failed authentication under the shared key"
                                .into(),
                    },
                    other => refused(peer, other),
                })?;
            let n = noise
                .write_message(&[], &mut buf)
                .map_err(|e| refused(peer, e))?;
            write_frame(&mut stream, &buf[..n]).await.map_err(io)?;
            noise.into_transport_mode().map_err(|e| refused(peer, e))
        };
        let noise = timed(peer, handshake).await?;
        Ok(Self::split(stream, noise, peer))
    }

    fn split(stream: TcpStream, noise: snow::TransportState, peer: SocketAddr) -> Self {
        let noise = Arc::new(Mutex::new(noise));
        let (read, write) = stream.into_split();
        Self {
            writer: Sealer {
                noise: noise.clone(),
                stream: write,
                peer,
                buf: vec![0u8; MAX_NOISE],
            },
            reader: Opener {
                noise,
                stream: read,
                peer,
                plain: Vec::new(),
                cipher: vec![0u8; MAX_NOISE],
            },
        }
    }
}

async fn timed<T>(
    peer: SocketAddr,
    handshake: impl Future<Output = Result<T, ChannelError>>,
) -> Result<T, ChannelError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(result) => result,
        Err(_) => Err(ChannelError::Handshake {
            peer,
            reason: format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
        }),
    }
}

fn refused(peer: SocketAddr, err: snow::Error) -> ChannelError {
    ChannelError::Handshake {
        peer,
        reason: format!("noise: {err}"),
    }
}

async fn write_frame(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    frame: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(frame.len()).expect("Noise messages fit in 16 bits");
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(frame).await
}

async fn read_frame(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

impl Sealer {
    /// The other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Encrypts and sends one application message (any length up to
    /// [`MAX_MESSAGE`], in as many Noise messages as it takes).
    pub async fn send(&mut self, body: &[u8]) -> Result<(), ChannelError> {
        let Self {
            noise,
            stream,
            peer,
            buf,
        } = self;
        let mut plain = Vec::with_capacity(body.len() + 4);
        plain.extend_from_slice(&(body.len() as u32).to_le_bytes());
        plain.extend_from_slice(body);
        for chunk in plain.chunks(MAX_PLAIN) {
            let n = {
                let mut noise = noise.lock().expect("noise state lock");
                noise
                    .write_message(chunk, buf)
                    .map_err(|err| ChannelError::Protocol {
                        peer: *peer,
                        reason: format!("encrypting: {err}"),
                    })?
            };
            write_frame(stream, &buf[..n])
                .await
                .map_err(|source| ChannelError::Io {
                    peer: *peer,
                    source,
                })?;
        }
        Ok(())
    }
}

impl Opener {
    /// The next application message; `None` once the peer closed cleanly
    /// between messages. Cancel-safe only between calls: keep the future alive.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        loop {
            if let Some(message) = self.pop()? {
                return Ok(Some(message));
            }
            let Self {
                noise,
                stream,
                peer,
                plain,
                cipher,
            } = self;
            let frame = match read_frame(stream).await {
                Ok(frame) => frame,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof && plain.is_empty() => {
                    return Ok(None);
                }
                Err(source) => {
                    return Err(ChannelError::Io {
                        peer: *peer,
                        source,
                    });
                }
            };
            let n = {
                let mut noise = noise.lock().expect("noise state lock");
                noise
                    .read_message(&frame, cipher)
                    .map_err(|err| ChannelError::Protocol {
                        peer: *peer,
                        reason: format!("a message failed authentication ({err})"),
                    })?
            };
            plain.extend_from_slice(&cipher[..n]);
        }
    }

    fn pop(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        let Some(head) = self.plain.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*head) as usize;
        if len > MAX_MESSAGE {
            return Err(ChannelError::Protocol {
                peer: self.peer,
                reason: format!("a message of {len} bytes (at most {MAX_MESSAGE})"),
            });
        }
        if self.plain.len() < 4 + len {
            return Ok(None);
        }
        let message = self.plain[4..4 + len].to_vec();
        self.plain.drain(..4 + len);
        Ok(Some(message))
    }
}

/// Records shipped together, with the agent's lag when it sent them.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Stream position after these records.
    pub end: u64,
    /// The agent's replication lag as it sent the batch.
    pub lag: ReplicationLag,
    /// The records, journal-encoded (kind, length, payload).
    pub records: Vec<u8>,
}

/// What the agent → standby direction carries.
impl Batch {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(25 + self.records.len());
        body.push(BATCH);
        body.extend_from_slice(&self.end.to_le_bytes());
        body.extend_from_slice(&self.lag.bytes.to_le_bytes());
        body.extend_from_slice(&self.lag.seconds.to_le_bytes());
        body.extend_from_slice(&self.records);
        body
    }

    /// Parses a message body.
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        let Some((&BATCH, rest)) = body.split_first() else {
            return Err("not a batch".into());
        };
        let (head, records) = rest
            .split_first_chunk::<24>()
            .ok_or("a batch shorter than its header")?;
        let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        Ok(Self {
            end: word(0),
            lag: ReplicationLag {
                bytes: word(8),
                seconds: f64::from_le_bytes(head[16..24].try_into().expect("8 bytes")),
            },
            records: records.to_vec(),
        })
    }

    /// The records it carries, decoded.
    pub fn decode_records(&self) -> Result<Vec<Record>, String> {
        let mut rest = self.records.as_slice();
        let mut records = Vec::new();
        while let Some((kind, tail)) = rest.split_first() {
            let (len, tail) = tail.split_first_chunk::<4>().ok_or("a record cut short")?;
            let len = u32::from_le_bytes(*len) as usize;
            let payload = tail.get(..len).ok_or("a record cut short")?;
            records.push(Record::decode(*kind, payload).map_err(|e| e.to_string())?);
            rest = &tail[len..];
        }
        Ok(records)
    }
}

/// Appends `record` in the journal's encoding; returns the bytes added.
fn encode_record(record: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.push(record.kind() as u8);
    out.extend_from_slice(&[0; 4]);
    record.encode(out);
    let len = (out.len() - start - 5) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    out.len() - start
}

/// An acknowledgment body: the standby applied everything before `end`.
pub fn encode_ack(end: u64) -> Vec<u8> {
    let mut body = vec![ACK];
    body.extend_from_slice(&end.to_le_bytes());
    body
}

/// Parses an acknowledgment body.
pub fn decode_ack(body: &[u8]) -> Result<u64, String> {
    match body.split_first() {
        Some((&ACK, rest)) => rest
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| "an acknowledgment of the wrong size".to_owned()),
        _ => Err("not an acknowledgment".into()),
    }
}

/// A change to one flow's [`SyncLimit`], effective once the standby
/// acknowledges the batch that carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitChange {
    /// The standby holds the flow up to here.
    Set(FlowKey, SyncLimit),
    /// The flow closed.
    Remove(FlowKey),
}

/// Shipped but not yet acknowledged.
struct Pending {
    end: u64,
    at: Instant,
    changes: Vec<LimitChange>,
}

/// The agent's side of replication, fed by the reader after every drain: it
/// encodes the records, counts positions, remembers when each batch left and
/// which sync limits it makes safe.
pub struct Outbox {
    /// Bytes produced on the current stream.
    position: u64,
    /// Bytes the standby acknowledged on it.
    acked: u64,
    /// Where batches go; `None` while no standby is connected.
    link: Option<mpsc::UnboundedSender<Vec<u8>>>,
    unacked: VecDeque<Pending>,
    /// Flow keys by journal id, for the sync limits.
    keys: HashMap<u64, FlowKey>,
    /// Both directions' snapshots seen in the batch being built, by id.
    sides: HashMap<u64, [Option<SideSnapshot>; 2]>,
    sync: bool,
    /// Record bytes produced over the agent's life.
    produced: u64,
    /// Bytes sent to a standby over the agent's life.
    sent: u64,
}

impl Outbox {
    /// An outbox with no standby yet; `sync` collects sync limits.
    pub fn new(sync: bool) -> Self {
        Self {
            position: 0,
            acked: 0,
            link: None,
            unacked: VecDeque::new(),
            keys: HashMap::new(),
            sides: HashMap::new(),
            sync,
            produced: 0,
            sent: 0,
        }
    }

    /// A standby connected: a fresh stream starts at position 0 with
    /// `checkpoint` (every open flow and its retained bytes).
    pub fn connected(
        &mut self,
        link: mpsc::UnboundedSender<Vec<u8>>,
        checkpoint: &[Record],
        ring_backlog: u64,
    ) {
        self.position = 0;
        self.acked = 0;
        self.unacked.clear();
        self.link = Some(link);
        self.ship(checkpoint, ring_backlog);
    }

    /// The standby went away: batches stay unshipped (and lag grows) until
    /// another connects and gets a checkpoint.
    pub fn disconnected(&mut self) {
        self.link = None;
    }

    /// Encodes `records` as one batch and ships it when a standby is connected.
    pub fn ship(&mut self, records: &[Record], ring_backlog: u64) {
        if records.is_empty() {
            return;
        }
        let mut bytes = Vec::new();
        for record in records {
            encode_record(record, &mut bytes);
        }
        let changes = self.limit_changes(records);
        self.position += bytes.len() as u64;
        self.produced += bytes.len() as u64;
        match (&self.link, self.unacked.back_mut()) {
            // With no standby only the age of the oldest unshipped batch
            // matters (a reconnect starts over from a checkpoint).
            (None, Some(pending)) => pending.end = self.position,
            _ => self.unacked.push_back(Pending {
                end: self.position,
                at: Instant::now(),
                changes,
            }),
        }
        self.send(bytes, ring_backlog);
    }

    /// Tells the standby the current lag without records (a keepalive).
    pub fn keepalive(&mut self, ring_backlog: u64) {
        self.send(Vec::new(), ring_backlog);
    }

    fn send(&mut self, records: Vec<u8>, ring_backlog: u64) {
        let lag = self.lag(ring_backlog);
        let Some(link) = &self.link else {
            return;
        };
        if self.position - self.acked > MAX_BACKLOG {
            tracing::warn!(
                behind = self.position - self.acked,
                "the standby fell more than {MAX_BACKLOG} bytes behind: dropping its channel"
            );
            self.link = None;
            return;
        }
        let batch = Batch {
            end: self.position,
            lag,
            records,
        };
        self.sent += batch.records.len() as u64;
        if link.send(batch.encode()).is_err() {
            self.link = None;
        }
    }

    /// The standby applied everything before `end`: the sync-limit changes
    /// that became safe, in order.
    pub fn acked(&mut self, end: u64) -> Vec<LimitChange> {
        self.acked = self.acked.max(end.min(self.position));
        let mut changes = Vec::new();
        while self.unacked.front().is_some_and(|p| p.end <= self.acked) {
            let pending = self.unacked.pop_front().expect("checked");
            changes.extend(pending.changes);
        }
        changes
    }

    /// Record bytes not acknowledged by the standby (plus what still waits in
    /// the ring), and the age of the oldest of them.
    pub fn lag(&self, ring_backlog: u64) -> ReplicationLag {
        let seconds = self
            .unacked
            .front()
            .map_or(0.0, |p| p.at.elapsed().as_secs_f64());
        ReplicationLag {
            bytes: self.position - self.acked + ring_backlog,
            seconds,
        }
    }

    /// Whether a standby is connected.
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// The sync-limit changes a batch of `records` makes safe: for every flow
    /// it updates, where each direction's journaled bytes end, in sequence
    /// space; for every flow it closes, a removal.
    fn limit_changes(&mut self, records: &[Record]) -> Vec<LimitChange> {
        if !self.sync {
            return Vec::new();
        }
        let Self { keys, sides, .. } = self;
        sides.clear();
        let mut closed = Vec::new();
        for record in records {
            match record {
                Record::Open { id, key, .. } => {
                    keys.insert(*id, *key);
                }
                Record::CheckpointFlow(flow) => {
                    keys.insert(flow.id, flow.key);
                    sides.insert(flow.id, [Some(flow.c2s.clone()), Some(flow.s2c.clone())]);
                }
                Record::Update {
                    id, dir, snapshot, ..
                } => {
                    let slot = match dir {
                        Direction::ClientToServer => 0,
                        Direction::ServerToClient => 1,
                    };
                    sides.entry(*id).or_default()[slot] = Some(snapshot.clone());
                }
                Record::Close { id, .. } => closed.push(*id),
                _ => {}
            }
        }
        let mut changes: Vec<LimitChange> = (sides.iter())
            .filter_map(|(id, [c2s, s2c])| {
                let key = keys.get(id)?;
                Some(LimitChange::Set(
                    *key,
                    sync_limit(c2s.as_ref()?, s2c.as_ref()?)?,
                ))
            })
            .collect();
        for id in closed {
            if let Some(key) = keys.remove(&id) {
                changes.push(LimitChange::Remove(key));
            }
        }
        changes
    }

    /// The outbox's metrics: lag (with the ring's backlog), bytes produced and
    /// sent, whether a standby is connected.
    pub fn families(&self, ring_backlog: u64, link: &LinkStats) -> Vec<Family> {
        let lag = self.lag(ring_backlog);
        let mut families = Vec::from(lag_families(lag));
        families.extend([
            Family::counter(
                "replication_produced",
                "Journal record bytes produced for the standby.",
                Some(Unit::Bytes),
            )
            .count(Vec::new(), self.produced),
            Family::counter(
                "replication_sent",
                "Journal record bytes sent to a connected standby.",
                Some(Unit::Bytes),
            )
            .count(Vec::new(), self.sent),
            Family::gauge(
                "replication_connected",
                "1 while a standby is connected to the replication channel.",
                None,
            )
            .set(Vec::new(), f64::from(u8::from(self.is_connected()))),
        ]);
        families.extend(link.families());
        families
    }
}

/// The `replica_lag` families (bytes and seconds), exported by the agent and
/// (as the agent last reported it) by the standby.
pub fn lag_families(lag: ReplicationLag) -> [Family; 2] {
    [
        Family::gauge(
            "replica_lag",
            "On-host mode: journal bytes the standby has not acknowledged yet, the primary's ring backlog included.",
            Some(Unit::Bytes),
        )
        .set(Vec::new(), lag.bytes as f64),
        Family::gauge(
            "replica_lag",
            "On-host mode: age of the oldest journal record the standby has not acknowledged; 0 when caught up.",
            Some(Unit::Seconds),
        )
        .set(Vec::new(), lag.seconds),
    ]
}

/// Where the standby's copy of a flow ends, in the flow's sequence spaces:
/// server data up to `s2c` origin + bytes, client bytes (and its FIN) up to
/// `c2s` origin + bytes. `None` before both origins are known.
fn sync_limit(c2s: &SideSnapshot, s2c: &SideSnapshot) -> Option<SyncLimit> {
    let end = |side: &SideSnapshot, fin: bool| {
        let marks = side.marks;
        let fin = u32::from(fin && marks.fin == Some(marks.next));
        Some(
            marks
                .origin?
                .wrapping_add(marks.next as u32)
                .wrapping_add(fin),
        )
    };
    Some(SyncLimit {
        seq: end(s2c, false)?,
        ack: end(c2s, true)?,
    })
}

/// What the agent's link task reports to its event loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// A standby is connected; batches go to this sender.
    Connected(mpsc::UnboundedSender<Vec<u8>>),
    /// The standby applied everything before this position.
    Acked(u64),
    /// The connection ended.
    Disconnected,
}

/// Connection counts of the agent's link.
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

/// Keeps a channel to the standby at `peer` open, reconnecting every
/// `retry` after a failure, for as long as `events` has a receiver.
pub async fn link(
    peer: SocketAddr,
    key: Key,
    events: mpsc::UnboundedSender<LinkEvent>,
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
                if let Err(err) = serve_link(channel, &events).await {
                    tracing::warn!("{err}");
                }
                let _ = events.send(LinkEvent::Disconnected);
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

/// Moves batches out and acknowledgments in until either side fails.
async fn serve_link(
    channel: Channel,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> Result<(), ChannelError> {
    let Channel {
        mut writer,
        mut reader,
    } = channel;
    let peer = writer.peer;
    let (batches, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    if events.send(LinkEvent::Connected(batches)).is_err() {
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
            if events.send(LinkEvent::Acked(end)).is_err() {
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

/// How far a replicated copy trails the primary.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplicationLag {
    /// Bytes.
    pub bytes: u64,
    /// Seconds.
    pub seconds: f64,
}

#[cfg(test)]
mod tests;
