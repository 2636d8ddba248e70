//! The replication channel of on-host mode: the agent on the primary streams
//! every journal record it produces to the standby, which acknowledges how far
//! it has applied them.
//!
//! The channel is TCP carrying [Noise](https://noiseprotocol.org/noise.html)
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`: an ephemeral X25519 exchange mixed
//! with a pre-shared key derived from the shared key file (the one the
//! heartbeats use, see [`Key::derive`](crate::key::Key::derive)). The first handshake message is
//! already authenticated under that key, so a peer without it is refused
//! before anything else is read; afterwards every message is encrypted and
//! authenticated (ChaCha20-Poly1305, nonces counting up, so a replayed or
//! reordered message fails). Each Noise message travels as a 2-byte
//! big-endian length and the ciphertext (at most 65,535 bytes, the Noise
//! limit).
//!
//! Inside, the plaintext is a stream of messages, each a 4-byte little-endian
//! length and a body whose first byte says what it is: the sender's
//! [`Hello`] (first, naming it and its health settings), a [`Batch`] of
//! journal records (agent → standby) or an acknowledgment (standby → agent);
//! the standby's first message names the services it needs whole
//! ([`encode_needs`]); or, on a
//! connection of its own, an agent restarted on a pinned capture asking for
//! the standby's flows ([`encode_resume`]) and the answer, a checkpoint of
//! them in pieces ([`encode_state`], [`fetch_state`]). Records
//! use the journal's own encoding (kind, length, payload: what a segment file
//! holds, without its CRC, which the AEAD replaces). Positions count those
//! record bytes from the start of the connection, which always begins with a
//! checkpoint of every open flow: a standby that connects late, or again,
//! starts from a complete state.
//!
//! This file holds the messages ([`Batch`], acknowledgments) and the errors;
//! `channel/noise.rs` the handshake and the framing ([`Channel`]),
//! `channel/outbox.rs` the agent's [`Outbox`] and its sync limits, and
//! `channel/link_task.rs` the agent's [`link`] task.

mod hello;
mod link_task;
mod noise;
mod outbox;

pub use hello::Hello;
pub use link_task::{LinkEvent, LinkEvents, LinkStats, fetch_state, link};
pub use noise::{Channel, Opener, Sealer};
pub use outbox::{LimitChange, Outbox, lag_families};

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, SocketAddr},
};

use crate::flow::{record::Record, recovery::Recovered};

// What the unit tests (`channel/tests.rs`, `use super::*`) name from here.
#[cfg(test)]
use {
    crate::{flow::record::SideSnapshot, hold::SyncLimit, key::Key},
    connmirror_common::{Direction, FlowKey},
    outbox::sync_limit,
    tokio::sync::mpsc,
};

/// The standby's default replication port.
pub const DEFAULT_PORT: u16 = 7402;

/// The first byte of each message body: a [`Batch`], an acknowledgment, a
/// restarted agent's request for the standby's flows, or a piece of them.
const BATCH: u8 = 1;
const ACK: u8 = 2;
const RESUME: u8 = 3;
const STATE: u8 = 4;
const NEEDS: u8 = 5;
const HELLO: u8 = 6;
/// A state body is cut after the record that takes it past this size.
const STATE_TARGET: usize = 1 << 20;

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
    /// The sender said nothing for longer than its hello allows.
    #[error(
        "replication channel with {peer}: the {role} sent nothing for {ms} ms \
         (its health interval × missed): it is lost"
    )]
    Silent {
        /// The other end.
        peer: SocketAddr,
        /// Its role ([`Hello::role`]).
        role: String,
        /// How long it was silent.
        ms: u128,
    },
}

/// Records shipped together, with the agent's lag when it sent them: a view
/// of a message body, which holds its header then the records.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch<'a> {
    /// Stream position after these records.
    pub end: u64,
    /// The agent's replication lag as it sent the batch.
    pub lag: ReplicationLag,
    /// The records, journal-encoded (kind, length, payload).
    pub records: &'a [u8],
}

/// Bytes of a batch's header: kind, end, lag bytes, lag seconds.
pub const BATCH_HEADER: usize = 25;

/// What the agent → standby direction carries.
impl<'a> Batch<'a> {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = vec![0; BATCH_HEADER];
        body.extend_from_slice(self.records);
        Self::write_header(&mut body, self.end, self.lag);
        body
    }

    /// Writes the header of a body built with [`BATCH_HEADER`] bytes of room
    /// in front of its records (so the records are not copied again).
    pub fn write_header(body: &mut [u8], end: u64, lag: ReplicationLag) {
        body[0] = BATCH;
        body[1..9].copy_from_slice(&end.to_le_bytes());
        body[9..17].copy_from_slice(&lag.bytes.to_le_bytes());
        body[17..25].copy_from_slice(&lag.seconds.to_le_bytes());
    }

    /// Parses a message body.
    pub fn decode(body: &'a [u8]) -> Result<Self, String> {
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
            records,
        })
    }

    /// The records it carries, decoded.
    pub fn decode_records(&self) -> Result<Vec<Record>, String> {
        decode_records(self.records)
    }
}

/// Decodes journal-encoded records (kind, length, payload).
fn decode_records(mut rest: &[u8]) -> Result<Vec<Record>, String> {
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

/// The standby's first message on every connection: the services whose
/// every byte it needs (full history, live replay). The agent leaves out of
/// the other services' batches the bytes their receiver acknowledged before
/// they were shipped: the standby would drop them on arrival.
pub fn encode_needs(services: &BTreeSet<SocketAddr>) -> Vec<u8> {
    let mut body = vec![NEEDS];
    for service in services {
        let (family, ip) = match service.ip() {
            IpAddr::V4(ip) => (4, ip.to_ipv6_mapped()),
            IpAddr::V6(ip) => (6, ip),
        };
        body.push(family);
        body.extend_from_slice(&ip.octets());
        body.extend_from_slice(&service.port().to_le_bytes());
    }
    body
}

/// Parses the standby's [`encode_needs`] message.
pub fn decode_needs(body: &[u8]) -> Result<BTreeSet<SocketAddr>, String> {
    let Some((&NEEDS, mut rest)) = body.split_first() else {
        return Err("the standby did not say which services it needs whole \
                    (a connmirror from before that message?)"
            .into());
    };
    let mut services = BTreeSet::new();
    while let Some((entry, tail)) = rest.split_first_chunk::<19>() {
        let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&entry[1..17]).expect("16"));
        let ip = match entry[0] {
            4 => IpAddr::V4(ip.to_ipv4_mapped().ok_or("an IPv4 service that is not")?),
            6 => IpAddr::V6(ip),
            other => return Err(format!("a service of address family {other}")),
        };
        services.insert(SocketAddr::new(
            ip,
            u16::from_le_bytes([entry[17], entry[18]]),
        ));
        rest = tail;
    }
    match rest.is_empty() {
        true => Ok(services),
        false => Err("a services message cut short".into()),
    }
}

/// The body an agent restarted on a pinned capture (`--pin`) sends first,
/// to ask for the flows the standby holds.
pub fn encode_resume() -> Vec<u8> {
    vec![RESUME]
}

/// Whether `body` is a restarted agent's request for the standby's flows.
pub fn is_resume(body: &[u8]) -> bool {
    body == [RESUME]
}

/// The standby's answer to [`encode_resume`]: `state` as a checkpoint
/// ([`Recovered::checkpoint`]), in bodies of about [`STATE_TARGET`] bytes.
pub fn encode_state(state: &Recovered) -> Vec<Vec<u8>> {
    let mut bodies = vec![vec![STATE]];
    state.checkpoint(|record| {
        let body = bodies.last_mut().expect("one body at least");
        encode_record(&record, body);
        if body.len() >= STATE_TARGET {
            bodies.push(vec![STATE]);
        }
    });
    bodies.retain(|body| body.len() > 1);
    bodies
}

/// Applies one body of the standby's state to `state`; true once the
/// checkpoint it carries is complete.
pub fn apply_state(body: &[u8], state: &mut Recovered) -> Result<bool, String> {
    let Some((&STATE, records)) = body.split_first() else {
        return Err("not the standby's state".into());
    };
    let mut complete = false;
    for record in decode_records(records)? {
        complete = record == Record::CheckpointEnd;
        state.apply(record);
    }
    Ok(complete)
}

/// Appends `record` in the journal's encoding; returns the bytes added.
fn encode_record(record: &Record, out: &mut Vec<u8>) -> usize {
    crate::journal::frame(out, record.kind() as u8, |out| record.encode(out))
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
