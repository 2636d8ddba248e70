//! What connmirror keeps in etcd, and under which keys.
//!
//! Under `PREFIX/CLUSTER/`:
//! - `services/IP:PORT`: the service's [`Owner`] (JSON), with no lease: the
//!   epoch must outlive every node.
//! - `nodes/NODE`: the node's [`NodeRecord`] (JSON), under the node's lease:
//!   it goes away when the node stops renewing it.
//!
//! JSON keeps the records readable with `etcdctl get --prefix /connmirror`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterError;

/// Who owns a service, and under which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The owning node's id.
    pub node_id: String,
    /// The ownership epoch (the fencing token): raised by every takeover.
    pub epoch: u64,
}

/// One node's registration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id.
    pub node_id: String,
    /// `primary` (an agent), `standby`, or `owner` (a standby that took
    /// services over).
    pub role: String,
    /// A standby's priority: 0 is tried first.
    #[serde(default)]
    pub priority: u32,
    /// Where it listens for heartbeats (a standby), or sends them from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<SocketAddr>,
    /// Where it accepts the replication channel (a standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<SocketAddr>,
    /// The services it protects or serves.
    pub services: Vec<SocketAddr>,
    /// A standby: the node whose heartbeats it hears now (none while it
    /// hears nobody, e.g. after its primary died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watching: Option<String>,
    /// An owner's view of its standbys: replication lag and protection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbyState>,
}

/// How far one standby is behind its owner, as the owner sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandbyState {
    /// The standby's replication address.
    pub address: SocketAddr,
    /// Whether its replication channel is up.
    pub connected: bool,
    /// Record bytes it has not acknowledged.
    pub lag_bytes: u64,
}

/// The keys of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// The keys under `prefix` (e.g. `/connmirror`) for `cluster_id`.
    pub fn new(prefix: &str, cluster_id: &str) -> Self {
        Self {
            root: format!("{}/{cluster_id}/", prefix.trim_end_matches('/')),
        }
    }

    /// The key of `service`'s owner.
    pub fn service(&self, service: SocketAddr) -> String {
        format!("{}services/{service}", self.root)
    }

    /// The prefix of every service key.
    pub fn services(&self) -> String {
        format!("{}services/", self.root)
    }

    /// The key of `node_id`'s registration.
    pub fn node(&self, node_id: &str) -> String {
        format!("{}nodes/{node_id}", self.root)
    }

    /// The prefix of every node key.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }
}

/// Parses the JSON record at `key`.
pub fn parse<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|err| ClusterError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: err.to_string(),
    })
}

/// The JSON of a record.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_prefix_and_cluster() {
        let keys = Keys::new("/connmirror/", "prod");
        let service: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(
            keys.service(service),
            "/connmirror/prod/services/[fd00::1]:80"
        );
        assert_eq!(keys.node("a"), "/connmirror/prod/nodes/a");
        assert!(keys.service(service).starts_with(&keys.services()));
    }

    #[test]
    fn a_record_that_is_not_ours_is_named_with_its_key() {
        let err = parse::<Owner>(b"/c/x/services/k", b"{\"node\":1}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "etcd key /c/x/services/k holds no connmirror record: missing field `node_id` at line 1 column 10"
        );
        let owner = Owner {
            node_id: "a".into(),
            epoch: 7,
        };
        assert_eq!(parse::<Owner>(b"k", &encode(&owner)).unwrap(), owner);
    }
}
