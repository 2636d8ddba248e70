//! connmirror keeps TCP connections alive when the host that owns them dies.
//!
//! This crate is the userspace side. Its folders, from the roles down to the
//! mechanisms they use (every dependency points down; `cargo xtask deps`
//! checks it, and `docs/architecture.md` draws it):
//!
//! - [`daemon`]: the roles (`standby`, `agent`), config, control, status.
//! - [`failover`]: takeover, migration and drain procedures.
//! - [`engine`]: capture → flow table → journal, the loop every role runs.
//! - [`replication`]: on-host mode's journal stream to the standby.
//! - [`hold`]: on-host `--sync` output commit (NFQUEUE holds segments).
//! - [`resume`]: handing restored sockets to applications, or replaying.
//! - [`ownership`]: heartbeats and failure detection.
//! - [`capture`]: the eBPF programs, their pins and their ring.
//! - [`flow`]: each connection's reassembled streams, state and records.
//! - [`journal`]: durable, checksummed record storage.
//! - [`repair`]: `TCP_REPAIR` save and restore of one socket.
//! - [`net`]: local addresses and their announcement.
//! - [`metrics`], [`service`], [`key`]: shared leaves.
//! - [`sys`]: the syscall layer.
//! - `testing`: helpers the unit tests of several folders share.
//!
//! Types shared with the kernel side live in `connmirror-common`.

pub mod capture;
pub mod cluster;
pub mod daemon;
pub mod engine;
pub mod failover;
pub mod flow;
pub mod hold;
pub mod journal;
pub mod key;
pub mod metrics;
pub mod net;
pub mod ownership;
pub mod repair;
pub mod replication;
pub mod resume;
pub mod service;
pub mod sys;
#[cfg(test)]
mod testing;
