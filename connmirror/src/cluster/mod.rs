//! Clusters beyond a pair: who owns each service, kept in etcd.
//!
//! A pair needs nothing but its two daemons. With more hosts, ownership must
//! be decided in one place, and connmirror uses an existing consensus store
//! for it rather than a protocol of its own (Patroni, Kubernetes and Vitess
//! keep their leader locks in etcd the same way).
//!
//! Contract:
//! - One key per service ([`record::Owner`]) holds its owner and epoch. A node
//!   takes a service only by winning an etcd transaction that compares the
//!   record it saw ([`Store::take`]); the epoch is the fencing token the
//!   heartbeats and the data path already carry. Two standbys that detect the
//!   same failure can never both win.
//! - Every node holds a lease and registers itself under it
//!   ([`Store::register`]): its role, addresses, priority and, for an owner,
//!   its standbys' lag. A node whose lease lapsed is not thereby dead; the
//!   heartbeats stay the failure detector, and etcd only decides who acts on a
//!   detection.
//! - Every request needs etcd's quorum (linearizable, with a leader). A node
//!   that cannot reach one gets [`ClusterError::Unreachable`] and never takes
//!   over: availability yields to safety.
//!
//! Uses: nothing else of the crate (the etcd client only). Must not use:
//! capture, flows, failover, ownership or roles; the roles join the two.

mod args;
pub mod record;
mod store;

pub use args::EtcdArgs;
pub use store::{Registration, Store, Take};

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No answer from a quorum within the timeout, or no leader.
    #[error("etcd is unreachable or has no quorum ({endpoints}): {reason}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// What the client said.
        reason: String,
    },
    /// etcd refused the credentials or the request's permissions.
    #[error("etcd refused the request ({endpoints}): {reason}")]
    Refused {
        /// The endpoints tried.
        endpoints: String,
        /// What etcd said.
        reason: String,
    },
    /// A file named by an `--etcd-*` flag could not be read.
    #[error("reading {flag} {path}: {source}")]
    File {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record in etcd is not what connmirror wrote.
    #[error("etcd key {key} holds no connmirror record: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The service is owned by another node (an agent starting without
    /// `--recovering` after a failover).
    #[error("{service} is owned by {owner} at epoch {epoch} in etcd, not by {node}")]
    OwnedElsewhere {
        /// The service.
        service: std::net::SocketAddr,
        /// Its owner in etcd.
        owner: String,
        /// The owner's epoch.
        epoch: u64,
        /// This node.
        node: String,
    },
}
