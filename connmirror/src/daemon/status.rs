//! What `connmirror status` shows: the node's role and epoch, its peer and
//! when it last heard from it, the services, the flows by readiness, and
//! replication lag; with `--cluster`, the whole cluster as etcd has it
//! ([`cluster`]).

pub mod cluster;

use std::{collections::BTreeMap, io, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    ownership::{detector::Peer, heartbeat::HeartbeatStats},
    replication::channel::ReplicationLag,
    resume::live::ServiceProtection,
};

/// A standby's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// On a standby: `standby` (protecting) or `owner` (it took services
    /// over). On the primary's agent: `primary`, `recovering` or
    /// `stepped-down`.
    pub role: String,
    /// The ownership epoch this node holds or last saw.
    pub epoch: u64,
    /// The primary, as its heartbeats describe it (none without
    /// `--heartbeat-listen`, or before the first one).
    pub peer: Option<Peer>,
    /// Heartbeats received, by outcome.
    pub heartbeats: Option<HeartbeatStats>,
    /// Every protected service and whether this node serves it now.
    pub services: Vec<ServiceStatus>,
    /// Flows by readiness (`ready`, `missing-bytes`, `no-handshake`, `closed`).
    pub flows: BTreeMap<String, u64>,
    /// New flows refused protection so far: the memory cap was reached with
    /// only ready flows left (`--memory-cap`).
    #[serde(default)]
    pub refused_flows: u64,
    /// Bytes and seconds the standby's copy lags the primary: `None` in inline
    /// mode, where every segment is captured before it is forwarded.
    pub replication_lag: Option<ReplicationLag>,
    /// Takeovers run so far.
    pub takeovers: usize,
}

/// One service in a [`StatusReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Its address.
    pub addr: SocketAddr,
    /// On a standby: `protected`, `taken-over`, `draining`, or `unprotected:
    /// ROLE lost` when its replication sender (`agent`, `mirror`, `owner`)
    /// is gone. On an agent:
    /// `serving`, `waiting` (recovering) or `released` (stepped down).
    pub state: String,
    /// A live-replay service's connections by protection, and its instance's lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<ServiceProtection>,
    /// An on-host agent's: bytes a failover would lose now (sent to clients,
    /// or acknowledged to them, that the standby has not acknowledged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure_bytes: Option<u64>,
}

impl StatusReport {
    /// Writes the human table.
    pub fn print(&self, out: &mut impl io::Write) -> io::Result<()> {
        writeln!(out, "role      {}", self.role)?;
        writeln!(out, "epoch     {}", self.epoch)?;
        match &self.peer {
            Some(peer) => writeln!(
                out,
                "peer      {} at {} (epoch {}), last heartbeat {} ms ago, {}",
                peer.ownership.node_id,
                peer.address,
                peer.ownership.epoch,
                peer.last_heartbeat_ms,
                if peer.alive { "alive" } else { "lost" }
            )?,
            None => writeln!(out, "peer      none heard")?,
        }
        if let Some(h) = &self.heartbeats {
            writeln!(
                out,
                "heartbeats accepted {}, forged {}, replayed {}, malformed {}",
                h.accepted, h.forged, h.replayed, h.malformed
            )?;
        }
        for service in &self.services {
            writeln!(out, "service   {} {}", service.addr, service.state)?;
            if let Some(bytes) = service.exposure_bytes {
                writeln!(out, "  exposure {bytes} bytes a failover now would lose")?;
            }
            if let Some(live) = &service.live {
                writeln!(out, "  live    {}", live.summary())?;
            }
        }
        let flows: Vec<String> = (self.flows.iter())
            .map(|(readiness, n)| format!("{readiness} {n}"))
            .collect();
        writeln!(out, "flows     {}", flows.join(", "))?;
        if self.refused_flows > 0 {
            let n = self.refused_flows;
            writeln!(
                out,
                "refused   {n} new flows refused protection at the memory cap"
            )?;
        }
        match self.replication_lag {
            Some(lag) => writeln!(out, "lag       {} bytes, {:.3} s", lag.bytes, lag.seconds)?,
            None if self.role == "standby" || self.role == "owner" => {
                writeln!(out, "lag       none (inline mode)")?
            }
            None => writeln!(
                out,
                "lag       not reported here (an agent's is on its /metrics)"
            )?,
        }
        writeln!(out, "takeovers {}", self.takeovers)
    }
}
