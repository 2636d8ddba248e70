//! [`Store`]: ownership and registrations in etcd, each request bounded by
//! the `--etcd-timeout` and needing etcd's quorum.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, time::Duration};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use tokio::{sync::watch, task::JoinHandle};

use crate::cluster::{
    ClusterError, EtcdArgs,
    record::{self, Keys, NodeRecord, Owner},
};

/// A connection to the cluster's records in etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    args: EtcdArgs,
}

/// The outcome of [`Store::take`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Take {
    /// This node owns the services now, under this epoch.
    Won(u64),
    /// Another node got there first (or moved on): it owns them.
    Lost(Owner),
}

/// A service's owner record as read, with its raw bytes (what a transaction
/// compares).
type Stored = Option<(Owner, Vec<u8>)>;

/// How many times a transaction that lost a race is tried again after
/// reading the records anew.
const RACES: usize = 8;

impl Store {
    /// Connects to the endpoints `args` names, for cluster `cluster_id`.
    pub async fn connect(args: &EtcdArgs, cluster_id: &str) -> Result<Store, ClusterError> {
        let client = args.connect().await?;
        Ok(Store {
            client,
            keys: Keys::new(&args.etcd_prefix, cluster_id),
            args: args.clone(),
        })
    }

    /// The owner records of `services` (`None`: never owned).
    pub async fn owners(
        &self,
        services: &[SocketAddr],
    ) -> Result<BTreeMap<SocketAddr, Stored>, ClusterError> {
        let mut client = self.client.clone();
        let prefix = self.keys.services();
        let options = GetOptions::new().with_prefix();
        let response = self.request(client.get(prefix, Some(options))).await?;
        let mut all = BTreeMap::new();
        for kv in response.kvs() {
            all.insert(kv.key().to_vec(), kv.value().to_vec());
        }
        services
            .iter()
            .map(|service| {
                let key = self.keys.service(*service);
                let stored = match all.remove(key.as_bytes()) {
                    Some(raw) => Some((record::parse(key.as_bytes(), &raw)?, raw)),
                    None => None,
                };
                Ok((*service, stored))
            })
            .collect()
    }

    /// Every service's owner record in the cluster.
    pub async fn all_owners(&self) -> Result<BTreeMap<String, Owner>, ClusterError> {
        let prefix = self.keys.services();
        self.list(&prefix).await
    }

    /// Every registered node (those whose lease is alive).
    pub async fn nodes(&self) -> Result<BTreeMap<String, NodeRecord>, ClusterError> {
        let prefix = self.keys.nodes();
        self.list(&prefix).await
    }

    /// The records under `prefix`, by the rest of their key.
    async fn list<T: for<'de> serde::Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, T>, ClusterError> {
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix();
        let response = self.request(client.get(prefix, Some(options))).await?;
        (response.kvs().iter())
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                Ok((name, record::parse(kv.key(), kv.value())?))
            })
            .collect()
    }

    /// A primary's agent starting: records `node_id` as the owner of
    /// `services` at `epoch` where nobody owns them. Where it already owns
    /// them it keeps the higher epoch. The epoch it holds is the answer;
    /// [`ClusterError::OwnedElsewhere`] when another node owns one.
    pub async fn claim(
        &self,
        node_id: &str,
        services: &[SocketAddr],
        epoch: u64,
    ) -> Result<u64, ClusterError> {
        for _ in 0..RACES {
            let stored = self.owners(services).await?;
            let mut held = epoch;
            for (service, owner) in &stored {
                match owner {
                    Some((owner, _)) if owner.node_id != node_id => {
                        return Err(ClusterError::OwnedElsewhere {
                            service: *service,
                            owner: owner.node_id.clone(),
                            epoch: owner.epoch,
                            node: node_id.to_owned(),
                        });
                    }
                    Some((owner, _)) => held = held.max(owner.epoch),
                    None => {}
                }
            }
            if self.replace(&stored, node_id, held).await? {
                return Ok(held);
            }
        }
        Err(self.contended())
    }

    /// Takes `services` from `seen`, the owner as its last heartbeat had it:
    /// only while etcd still holds exactly that record (or none) does this
    /// node become the owner, under the next epoch. Asked again after a
    /// win whose answer was lost, it answers the same win.
    pub async fn take(
        &self,
        node_id: &str,
        services: &[SocketAddr],
        seen: &Owner,
    ) -> Result<Take, ClusterError> {
        for _ in 0..RACES {
            let stored = self.owners(services).await?;
            if let Some(decided) = decided(&stored, node_id, seen) {
                return Ok(decided);
            }
            let highest = (stored.values().flatten()).map(|(o, _)| o.epoch);
            let epoch = highest.fold(seen.epoch, u64::max) + 1;
            if self.replace(&stored, node_id, epoch).await? {
                return Ok(Take::Won(epoch));
            }
        }
        Err(self.contended())
    }

    /// One transaction: if every record of `stored` is still as read, they
    /// all become `node_id`'s at `epoch`. True when it committed.
    async fn replace(
        &self,
        stored: &BTreeMap<SocketAddr, Stored>,
        node_id: &str,
        epoch: u64,
    ) -> Result<bool, ClusterError> {
        let owner = record::encode(&Owner {
            node_id: node_id.to_owned(),
            epoch,
        });
        let (mut compares, mut puts) = (Vec::new(), Vec::new());
        for (service, read) in stored {
            let key = self.keys.service(*service);
            compares.push(match read {
                Some((_, raw)) => Compare::value(key.clone(), CompareOp::Equal, raw.clone()),
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
            });
            puts.push(TxnOp::put(key, owner.clone(), None));
        }
        let txn = Txn::new().when(compares).and_then(puts);
        let mut client = self.client.clone();
        Ok(self.request(client.txn(txn)).await?.succeeded())
    }

    /// Registers `record` under a lease of `--lease-ttl` seconds that a
    /// task renews; while etcd is unreachable the task keeps trying, and
    /// the node keeps working (its heartbeats, not its lease, say whether
    /// it is alive).
    pub async fn register(&self, record: NodeRecord) -> Result<Registration, ClusterError> {
        let ttl = i64::from(self.args.lease_ttl.max(1));
        let lease = self.lease(&record, ttl).await?;
        let (updates, watched) = watch::channel(record);
        let task = tokio::spawn(renew(self.clone(), lease, ttl, watched));
        Ok(Registration { updates, task })
    }

    /// Grants a lease and puts `record` under it.
    async fn lease(&self, record: &NodeRecord, ttl: i64) -> Result<i64, ClusterError> {
        let mut client = self.client.clone();
        let lease = self.request(client.lease_grant(ttl, None)).await?.id();
        self.put_node(record, lease).await?;
        Ok(lease)
    }

    /// Puts `record` under `lease`.
    async fn put_node(&self, record: &NodeRecord, lease: i64) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        let key = self.keys.node(&record.node_id);
        let options = PutOptions::new().with_lease(lease);
        let put = client.put(key, record::encode(record), Some(options));
        self.request(put).await.map(drop)
    }

    /// Runs one request within the timeout.
    async fn request<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ClusterError> {
        bounded(&self.args, request).await
    }

    /// Lost every race for [`RACES`] reads: etcd changes faster than it is read.
    fn contended(&self) -> ClusterError {
        ClusterError::Unreachable {
            endpoints: self.args.endpoint_list(),
            reason: format!("the records changed under {RACES} transactions in a row"),
        }
    }
}

/// What `stored` already decides for a node `node_id` taking over from
/// `seen`: a win it made before (every record is its own, past `seen`'s
/// epoch), a loss (a record is neither `seen` nor absent), or nothing yet.
fn decided(stored: &BTreeMap<SocketAddr, Stored>, node_id: &str, seen: &Owner) -> Option<Take> {
    let owners: Vec<&Owner> = stored.values().flatten().map(|(o, _)| o).collect();
    let ours = |o: &&Owner| o.node_id == node_id && o.epoch > seen.epoch;
    if owners.len() == stored.len() && !owners.is_empty() && owners.iter().all(ours) {
        return Some(Take::Won(owners[0].epoch));
    }
    (owners.into_iter())
        .find(|o| *o != seen)
        .map(|o| Take::Lost(o.clone()))
}

/// Runs `request` within `args`' timeout; a timeout or an error is
/// [`ClusterError::Unreachable`].
async fn bounded<T>(
    args: &EtcdArgs,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(args.timeout(), request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(err)) => Err(args.unreachable(&err)),
        Err(_) => Err(args.no_answer()),
    }
}

/// A node's registration in etcd; dropping it stops renewing the lease
/// (the record goes when the lease expires).
pub struct Registration {
    updates: watch::Sender<NodeRecord>,
    task: JoinHandle<()>,
}

impl Registration {
    /// Changes the registered record; written at once when it changed.
    pub fn update(&self, change: impl FnOnce(&mut NodeRecord)) {
        self.updates.send_if_modified(|record| {
            let before = record.clone();
            change(record);
            *record != before
        });
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews `lease` every third of `ttl` and writes the record whenever it
/// changed. A renewal that fails is tried again at the next tick (a dead
/// member's endpoint refuses some requests); only once the lease has gone
/// unrenewed for its whole TTL does the task say so, once, and register
/// anew as soon as etcd answers again.
async fn renew(store: Store, mut lease: i64, ttl: i64, mut record: watch::Receiver<NodeRecord>) {
    let ttl_duration = Duration::from_secs(ttl as u64);
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
    let mut tick = tokio::time::interval(period);
    let mut renewed_at = tokio::time::Instant::now();
    let mut lapsed = false;
    // What etcd holds: `register` put it. A put that failed leaves the old
    // one here, so the next tick puts again.
    let mut written = record.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Ok(()) = record.changed() => {}
        }
        let current = record.borrow_and_update().clone();
        let renewed = match lapsed {
            false => keep_alive(&store, lease, (current != written).then_some(&current)).await,
            true => store.lease(&current, ttl).await.map(|id| lease = id),
        };
        match renewed {
            Ok(()) => {
                written = current.clone();
                if std::mem::take(&mut lapsed) {
                    tracing::info!(
                        node = current.node_id,
                        "etcd lease renewed: registered again"
                    );
                }
                renewed_at = tokio::time::Instant::now();
            }
            Err(err) if !lapsed && renewed_at.elapsed() >= ttl_duration => {
                tracing::warn!(
                    node = current.node_id,
                    "etcd lease lapsed ({err}): this node keeps serving; its heartbeats, \
                     not its lease, say whether it is alive"
                );
                lapsed = true;
            }
            Err(err) => tracing::debug!(node = current.node_id, "etcd lease renewal: {err}"),
        }
    }
}

/// One renewal of `lease`, and `changed`, if any, put under it (an
/// unchanged record is not written again: every put is a revision etcd
/// keeps until it is compacted).
async fn keep_alive(
    store: &Store,
    lease: i64,
    changed: Option<&NodeRecord>,
) -> Result<(), ClusterError> {
    let mut client = store.client.clone();
    let (mut keeper, mut stream) = store.request(client.lease_keep_alive(lease)).await?;
    store.request(keeper.keep_alive()).await?;
    let answer = store.request(stream.message()).await?;
    if answer.is_none_or(|a| a.ttl() <= 0) {
        return Err(ClusterError::Unreachable {
            endpoints: store.args.endpoint_list(),
            reason: format!("lease {lease:x} expired"),
        });
    }
    match changed {
        Some(record) => store.put_node(record, lease).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node: &str, epoch: u64) -> Owner {
        Owner {
            node_id: node.into(),
            epoch,
        }
    }

    fn stored(owners: &[Option<Owner>]) -> BTreeMap<SocketAddr, Stored> {
        (owners.iter().enumerate())
            .map(|(i, o)| {
                let addr = SocketAddr::from(([198, 18, 0, 1], 80 + i as u16));
                (addr, o.clone().map(|o| (o.clone(), record::encode(&o))))
            })
            .collect()
    }

    #[test]
    fn a_takeover_goes_ahead_only_from_the_owner_it_saw_or_from_nobody() {
        let seen = owner("p", 1);
        let fresh = stored(&[Some(seen.clone()), None]);
        assert_eq!(decided(&fresh, "a", &seen), None);
        let taken = stored(&[Some(owner("b", 2)), Some(owner("b", 2))]);
        assert_eq!(decided(&taken, "a", &seen), Some(Take::Lost(owner("b", 2))));
        let ours = stored(&[Some(owner("a", 2)), Some(owner("a", 2))]);
        assert_eq!(decided(&ours, "a", &seen), Some(Take::Won(2)));
        let half = stored(&[Some(owner("a", 2)), None]);
        assert_eq!(decided(&half, "a", &seen), Some(Take::Lost(owner("a", 2))));
    }
}
