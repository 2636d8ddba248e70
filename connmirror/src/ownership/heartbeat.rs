//! Authenticated heartbeats from the primary's agent to the standby
//! (docs/architecture.md, "Ownership and failure detection").
//!
//! One UDP datagram per heartbeat:
//!
//! ```text
//! "CMHB" | version u8 (1) | kind u8 | counter u64 BE | length u16 BE | JSON (length bytes) | HMAC-SHA256 (32 bytes)
//! ```
//!
//! The MAC (RFC 2104, keyed with the shared key file) covers every byte before
//! it. The JSON is the sender's [`Ownership`]. The counter only ever grows for
//! one node (it starts from the wall clock in nanoseconds, so it keeps growing
//! across restarts): a receiver accepts a node's message only if its counter
//! is above every counter it accepted from that node before, which makes a
//! replayed datagram worthless. Messages that fail any check are dropped and
//! counted by reason ([`HeartbeatStats`]), never acted on.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use hmac::Mac as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::metrics::Family;

/// First bytes of every message.
pub const MAGIC: [u8; 4] = *b"CMHB";
/// Protocol version.
pub const VERSION: u8 = 1;
/// UDP port the standby listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7400;
/// Largest datagram accepted.
pub const MAX_MESSAGE: usize = 16 << 10;

const HEADER: usize = 4 + 1 + 1 + 8 + 2;
use crate::key::{Key, MAC_LEN};

/// Who owns the services, as each heartbeat announces it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ownership {
    /// The sender's node id.
    pub node_id: String,
    /// The cluster both ends belong to.
    pub cluster_id: String,
    /// Ownership epoch: raised by every takeover.
    pub epoch: u64,
    /// Service addresses and ports.
    pub services: Vec<SocketAddr>,
    /// MAC addresses of the sender's interfaces.
    pub macs: Vec<String>,
    /// Failover policy (`auto` or `manual`).
    pub policy: String,
    /// Applications serving the services.
    pub applications: Vec<String>,
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// "I am alive and own these services."
    Heartbeat = 1,
    /// "Tell me who owns what now" (a standby that starts).
    Solicit = 2,
    /// "I am back and want these services again" (an agent started with
    /// `--recovering`): the owner hands them back under its failback policy.
    /// Carries the sender's services; it claims nothing yet.
    Recovering = 3,
    /// "These services are yours again" (the owner, after a failback): carries
    /// the epoch it held; the recovering node claims the next one.
    Yield = 4,
}

/// A verified message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its kind.
    pub kind: Kind,
    /// The sender's counter.
    pub counter: u64,
    /// The sender's ownership information.
    pub ownership: Ownership,
}

/// Why a datagram was dropped.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Rejected {
    /// Not a message of this protocol (length, magic, version, kind, JSON).
    #[error("malformed heartbeat: {0}")]
    Malformed(String),
    /// The MAC does not verify under our key.
    #[error("heartbeat with a MAC that does not verify (wrong key or forged)")]
    Forged,
    /// Authentic, but its counter is not above the last one accepted.
    #[error("replayed heartbeat from {node}: counter {counter} is not above {last}")]
    Replayed {
        /// The sender.
        node: String,
        /// The message's counter.
        counter: u64,
        /// The highest accepted before.
        last: u64,
    },
    /// Authentic, from another cluster.
    #[error("heartbeat from cluster {0:?}, not ours")]
    OtherCluster(String),
}

/// Builds the datagram for `kind`, `counter` and `ownership`, MAC included.
pub fn seal(key: &Key, kind: Kind, counter: u64, ownership: &Ownership) -> Vec<u8> {
    let json = serde_json::to_vec(ownership).expect("ownership serialises");
    let mut out = Vec::with_capacity(HEADER + json.len() + MAC_LEN);
    out.extend(MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend(counter.to_be_bytes());
    out.extend((json.len() as u16).to_be_bytes());
    out.extend(json);
    let mut mac = key.mac();
    mac.update(&out);
    out.extend(mac.finalize().into_bytes());
    out
}

/// Checks a datagram's framing and MAC (in constant time) and decodes it.
pub fn open(key: &Key, datagram: &[u8]) -> Result<Message, Rejected> {
    let malformed = |what: &str| Rejected::Malformed(what.to_owned());
    if datagram.len() < HEADER + MAC_LEN || datagram.len() > MAX_MESSAGE {
        return Err(malformed("wrong length"));
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC_LEN);
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| Rejected::Forged)?;
    if body[..4] != MAGIC {
        return Err(malformed("wrong magic"));
    }
    if body[4] != VERSION {
        return Err(malformed("unsupported version"));
    }
    let kind = match body[5] {
        1 => Kind::Heartbeat,
        2 => Kind::Solicit,
        3 => Kind::Recovering,
        4 => Kind::Yield,
        _ => return Err(malformed("unknown kind")),
    };
    let counter = u64::from_be_bytes(body[6..14].try_into().expect("8 bytes"));
    let len = usize::from(u16::from_be_bytes([body[14], body[15]]));
    if body.len() != HEADER + len {
        return Err(malformed("length field disagrees with the datagram"));
    }
    let ownership =
        serde_json::from_slice(&body[HEADER..]).map_err(|e| Rejected::Malformed(e.to_string()))?;
    Ok(Message {
        kind,
        counter,
        ownership,
    })
}

/// A counter start that keeps growing across restarts: the wall clock in
/// nanoseconds.
pub fn initial_counter() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Messages received, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatStats {
    /// Verified and fresh.
    pub accepted: u64,
    /// MAC did not verify.
    pub forged: u64,
    /// Authentic but not fresh.
    pub replayed: u64,
    /// Not this protocol, or another cluster.
    pub malformed: u64,
}

impl HeartbeatStats {
    /// Metrics of the messages received: accepted, and rejected by reason.
    pub fn families(&self) -> [Family; 2] {
        let mut rejected = Family::counter(
            "heartbeats_rejected",
            "Ownership messages dropped, by reason: forged (MAC did not verify), replayed (counter not fresh), malformed (not this protocol or another cluster).",
            None,
        );
        for (reason, n) in [
            ("forged", self.forged),
            ("replayed", self.replayed),
            ("malformed", self.malformed),
        ] {
            rejected = rejected.count(vec![("reason", reason.into())], n);
        }
        [
            Family::counter(
                "heartbeats_received",
                "Ownership messages received and verified.",
                None,
            )
            .count(Vec::new(), self.accepted),
            rejected,
        ]
    }

    /// Every rejected message.
    pub fn rejected(&self) -> u64 {
        self.forged + self.replayed + self.malformed
    }
}

/// The receiving end: verifies, enforces fresh counters per node, counts.
#[derive(Debug)]
pub struct Verifier {
    key: Key,
    cluster_id: String,
    last: HashMap<String, u64>,
    /// Outcomes so far.
    pub stats: HeartbeatStats,
}

impl Verifier {
    /// A verifier for messages of `cluster_id` under `key`.
    pub fn new(key: Key, cluster_id: &str) -> Verifier {
        Verifier {
            key,
            cluster_id: cluster_id.to_owned(),
            last: HashMap::new(),
            stats: HeartbeatStats::default(),
        }
    }

    /// Accepts `datagram` if it is authentic, of our cluster and fresh.
    pub fn accept(&mut self, datagram: &[u8]) -> Result<Message, Rejected> {
        let result = self.check(datagram);
        let stats = &mut self.stats;
        match &result {
            Ok(_) => stats.accepted += 1,
            Err(Rejected::Forged) => stats.forged += 1,
            Err(Rejected::Replayed { .. }) => stats.replayed += 1,
            Err(Rejected::Malformed(_) | Rejected::OtherCluster(_)) => stats.malformed += 1,
        }
        result
    }

    fn check(&mut self, datagram: &[u8]) -> Result<Message, Rejected> {
        let message = open(&self.key, datagram)?;
        let own = &message.ownership;
        if own.cluster_id != self.cluster_id {
            return Err(Rejected::OtherCluster(own.cluster_id.clone()));
        }
        let last = self.last.entry(own.node_id.clone()).or_insert(0);
        if message.counter <= *last {
            return Err(Rejected::Replayed {
                node: own.node_id.clone(),
                counter: message.counter,
                last: *last,
            });
        }
        *last = message.counter;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ownership() -> Ownership {
        Ownership {
            node_id: "primary".into(),
            cluster_id: "c1".into(),
            epoch: 1,
            services: vec!["198.18.1.2:7000".parse().unwrap()],
            macs: vec!["02:00:00:00:00:01".into()],
            policy: "auto".into(),
            applications: vec!["echo".into()],
        }
    }

    #[test]
    fn sealed_messages_open_and_counters_must_grow() {
        let key = Key::from_bytes(b"0123456789abcdef0123");
        let mut verifier = Verifier::new(key.clone(), "c1");
        let first = seal(&key, Kind::Heartbeat, 10, &ownership());
        let second = seal(&key, Kind::Heartbeat, 11, &ownership());

        assert_eq!(
            verifier.accept(&first),
            Ok(Message {
                kind: Kind::Heartbeat,
                counter: 10,
                ownership: ownership()
            })
        );
        assert!(verifier.accept(&second).is_ok());
        assert_eq!(
            verifier.accept(&first),
            Err(Rejected::Replayed {
                node: "primary".into(),
                counter: 10,
                last: 11
            })
        );
        assert_eq!(verifier.stats.accepted, 2);
        assert_eq!(verifier.stats.replayed, 1);
    }

    #[test]
    fn every_flipped_bit_and_a_wrong_key_are_rejected() {
        let key = Key::from_bytes(b"0123456789abcdef0123");
        let good = seal(&key, Kind::Heartbeat, 1, &ownership());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(
                    open(&key, &bad),
                    Err(Rejected::Forged),
                    "byte {i} bit {bit}"
                );
            }
        }
        let other = Key::from_bytes(b"another key of 20 b.");
        assert_eq!(open(&other, &good), Err(Rejected::Forged));
        assert_eq!(
            open(&key, &good[..10]),
            Err(Rejected::Malformed("wrong length".into()))
        );
    }

    #[test]
    fn another_cluster_is_refused_even_when_authentic() {
        let key = Key::from_bytes(b"0123456789abcdef0123");
        let mut verifier = Verifier::new(key.clone(), "c2");
        let message = seal(&key, Kind::Heartbeat, 1, &ownership());
        assert_eq!(
            verifier.accept(&message),
            Err(Rejected::OtherCluster("c1".into()))
        );
        assert_eq!(verifier.stats.malformed, 1);
    }
}
