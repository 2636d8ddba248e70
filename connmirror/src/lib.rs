//! connmirror keeps TCP connections alive when the host that owns them dies.
//!
//! This crate is the userspace side: it loads the capture programs
//! ([`capture`]), reassembles each connection's two byte streams ([`stream`],
//! [`flow`]), journals them ([`journal`]) and runs the roles: `mirror`, and
//! `standby`, which takes connections over with `TCP_REPAIR` ([`takeover`],
//! [`restore`]) and resumes them ([`handoff`], [`replay`]).
//! Types shared with the kernel side live in `connmirror-common`.

pub mod address;
pub mod agent;
pub mod announce;
pub mod backlog;
pub mod capture;
pub mod config;
pub mod control;
pub mod drain;
pub mod dump;
pub mod flow;
pub mod handoff;
pub mod heartbeat;
pub mod journal;
pub mod metrics;
pub mod migrate;
pub mod mirror;
pub mod onhost;
pub mod ownership;
pub mod pinning;
pub mod replay;
pub mod replica;
pub mod replication;
pub mod restore;
pub mod service;
pub mod sockets;
pub mod sockopt;
pub mod standby;
pub mod state;
pub mod status;
pub mod stream;
pub mod takeover;
