//! connmirror keeps TCP connections alive when the host that owns them dies.
//!
//! This crate is the userspace side: it loads the capture programs
//! ([`capture`]), reassembles each connection's two byte streams ([`stream`],
//! [`flow`]) and runs the roles (`mirror` today; standby and takeover follow).
//! Types shared with the kernel side live in `connmirror-common`.

pub mod address;
pub mod announce;
pub mod capture;
pub mod flow;
pub mod handoff;
pub mod journal;
pub mod mirror;
pub mod restore;
pub mod service;
pub mod state;
pub mod stream;
