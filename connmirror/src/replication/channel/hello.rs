//! The sender's first message on every replication stream: who it is (the
//! primary's `agent`, a `mirror` on a box of its own, or a standby that took
//! services over and protects them) and how often it speaks when it has
//! nothing to send. The standby declares a sender that stays silent for
//! [`Hello::silence`] lost, and says so in its status: its protection is
//! gone until a sender connects again.

use std::time::Duration;

use super::HELLO;

/// Who sends a replication stream, and its health settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// `agent`, `mirror` or `owner`: what the standby's status names when
    /// the sender is lost (`unprotected: mirror lost`).
    pub role: String,
    /// How often the sender speaks (a keepalive) when nothing else goes
    /// out, in milliseconds.
    pub interval_ms: u32,
    /// Intervals the standby waits in silence before it declares the sender
    /// lost.
    pub missed: u32,
}

/// Longest role name a hello carries.
const MAX_ROLE: usize = 32;

impl Hello {
    /// How long a silence means the sender is lost: interval × missed.
    pub fn silence(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms) * u64::from(self.missed.max(1)))
    }

    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = vec![HELLO];
        body.extend_from_slice(&self.interval_ms.to_le_bytes());
        body.extend_from_slice(&self.missed.to_le_bytes());
        body.extend_from_slice(self.role.as_bytes());
        body
    }

    /// Parses a body; `Ok(None)` when it is another kind of message.
    pub fn decode(body: &[u8]) -> Result<Option<Hello>, String> {
        let Some((&HELLO, rest)) = body.split_first() else {
            return Ok(None);
        };
        let Some((interval, rest)) = rest.split_first_chunk::<4>() else {
            return Err("a hello cut short".into());
        };
        let Some((missed, role)) = rest.split_first_chunk::<4>() else {
            return Err("a hello cut short".into());
        };
        let role = std::str::from_utf8(role)
            .ok()
            .filter(|r| !r.is_empty() && r.len() <= MAX_ROLE)
            .ok_or("a hello whose role is not a short name")?;
        let hello = Hello {
            role: role.to_owned(),
            interval_ms: u32::from_le_bytes(*interval),
            missed: u32::from_le_bytes(*missed),
        };
        match hello.interval_ms {
            0 => Err("a hello with a health interval of 0 ms".into()),
            _ => Ok(Some(hello)),
        }
    }
}
