//! `connmirror status --cluster`: every service of a cluster with its owner
//! and epoch, and its standbys with their priority, lag and protection
//! state, read from etcd: the owner records, and the registrations the
//! nodes keep under their leases (an on-host owner publishes its standbys'
//! lag in its own).

use std::{collections::BTreeMap, io, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::cluster::{
    ClusterError, EtcdArgs, Store,
    record::{NodeRecord, Owner},
};

/// A cluster as etcd describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every service with an owner record.
    pub services: Vec<ServiceRow>,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// The service address.
    pub service: String,
    /// Its owner and epoch.
    pub owner: Owner,
    /// Whether the owner's lease is alive (it is registered).
    pub owner_registered: bool,
    /// The registered standbys that protect it, by priority.
    pub standbys: Vec<StandbyRow>,
    /// `protected` when a standby holds it (replicating, or heartbeats
    /// only), `unprotected` when none does.
    pub protection: String,
}

/// One standby of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandbyRow {
    /// Its node id.
    pub node_id: String,
    /// Its priority (0 first).
    pub priority: u32,
    /// Record bytes it has not acknowledged, as its owner last said (on-host
    /// mode).
    pub lag_bytes: Option<u64>,
    /// `replicating`, `disconnected` (its owner replicates but this standby's
    /// channel is down), `heartbeats` (it hears the owner, no replication
    /// reported), or `not-watching` (it hears no heartbeats from the owner).
    pub state: String,
}

/// Reads the cluster's records.
pub async fn read(args: &EtcdArgs, cluster_id: &str) -> Result<ClusterStatus, ClusterError> {
    let store = Store::connect(args, cluster_id).await?;
    let owners = store.all_owners().await?;
    let nodes = store.nodes().await?;
    let services = (owners.into_iter())
        .map(|(service, owner)| row(service, owner, &nodes))
        .collect();
    Ok(ClusterStatus { services })
}

/// One service's row.
fn row(service: String, owner: Owner, nodes: &BTreeMap<String, NodeRecord>) -> ServiceRow {
    let owner_node = nodes.get(&owner.node_id);
    let addr: Option<SocketAddr> = service.parse().ok();
    let mut standbys: Vec<StandbyRow> = (nodes.values())
        .filter(|n| n.node_id != owner.node_id && n.role == "standby")
        .filter(|n| addr.is_some_and(|a| n.services.contains(&a)))
        .map(|n| standby_row(n, owner_node))
        .collect();
    standbys.sort_by(|a, b| (a.priority, &a.node_id).cmp(&(b.priority, &b.node_id)));
    let protected =
        (standbys.iter()).any(|s| matches!(s.state.as_str(), "replicating" | "heartbeats"));
    ServiceRow {
        service,
        owner_registered: owner_node.is_some(),
        protection: if protected {
            "protected"
        } else {
            "unprotected"
        }
        .into(),
        owner,
        standbys,
    }
}

/// A standby as its owner's registration reports it.
fn standby_row(standby: &NodeRecord, owner: Option<&NodeRecord>) -> StandbyRow {
    let reported = (owner.into_iter().flat_map(|o| &o.standbys))
        .find(|s| Some(s.address) == standby.replication);
    let hears = owner.is_some_and(|o| standby.watching.as_ref() == Some(&o.node_id));
    let (lag_bytes, state) = match reported {
        Some(s) if s.connected => (Some(s.lag_bytes), "replicating"),
        Some(s) => (Some(s.lag_bytes), "disconnected"),
        None if hears => (None, "heartbeats"),
        None => (None, "not-watching"),
    };
    StandbyRow {
        node_id: standby.node_id.clone(),
        priority: standby.priority,
        lag_bytes,
        state: state.into(),
    }
}

impl ClusterStatus {
    /// Prints one line per service, then one per standby.
    pub fn print(&self, out: &mut impl io::Write) -> io::Result<()> {
        if self.services.is_empty() {
            return writeln!(out, "no service has an owner in etcd yet");
        }
        for s in &self.services {
            let lease = if s.owner_registered {
                ""
            } else {
                " (lease lapsed)"
            };
            writeln!(
                out,
                "{}  owner {}{lease}  epoch {}  {}",
                s.service, s.owner.node_id, s.owner.epoch, s.protection
            )?;
            for b in &s.standbys {
                let lag = b.lag_bytes.map_or("-".to_owned(), |l| format!("{l} B"));
                writeln!(
                    out,
                    "  standby {}  priority {}  {}  lag {lag}",
                    b.node_id, b.priority, b.state
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::record::StandbyState;

    fn node(id: &str, role: &str, priority: u32, replication: Option<&str>) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            role: role.into(),
            priority,
            replication: replication.map(|r| r.parse().unwrap()),
            services: vec!["198.18.1.2:7000".parse().unwrap()],
            ..NodeRecord::default()
        }
    }

    #[test]
    fn standbys_show_the_lag_their_owner_reports_by_priority() {
        let mut heard = node("b", "standby", 0, None);
        heard.watching = Some("p".into());
        let mut owner = node("p", "primary", 0, None);
        owner.standbys = vec![StandbyState {
            address: "198.18.1.1:7402".parse().unwrap(),
            connected: true,
            lag_bytes: 12,
        }];
        let nodes: BTreeMap<String, NodeRecord> = [
            owner,
            heard,
            node("a", "standby", 1, Some("198.18.1.1:7402")),
            node("c", "standby", 2, None),
        ]
        .into_iter()
        .map(|n| (n.node_id.clone(), n))
        .collect();
        let owner = Owner {
            node_id: "p".into(),
            epoch: 1,
        };
        let row = row("198.18.1.2:7000".into(), owner, &nodes);
        let mut out = Vec::new();
        ClusterStatus {
            services: vec![row],
        }
        .print(&mut out)
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "198.18.1.2:7000  owner p  epoch 1  protected\n  \
             standby b  priority 0  heartbeats  lag -\n  \
             standby a  priority 1  replicating  lag 12 B\n  \
             standby c  priority 2  not-watching  lag -\n"
        );
    }

    #[test]
    fn a_service_whose_standbys_hear_nobody_is_unprotected() {
        let nodes: BTreeMap<String, NodeRecord> = [node("b", "standby", 0, None)]
            .into_iter()
            .map(|n| (n.node_id.clone(), n))
            .collect();
        let owner = Owner {
            node_id: "a".into(),
            epoch: 2,
        };
        let row = row("198.18.1.2:7000".into(), owner, &nodes);
        assert_eq!(
            (row.protection.as_str(), row.owner_registered),
            ("unprotected", false)
        );
    }
}
