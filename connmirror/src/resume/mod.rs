//! Resumption: what happens to a restored connection once its socket exists.
//!
//! [`handoff`] passes restored sockets to a local application over a Unix
//! socket (the wire, the daemon's server and the application's side);
//! [`replay`] feeds a standby instance of an unmodified, deterministic server
//! the recorded client history.
//!
//! Uses: [`crate::repair`], [`crate::flow`], [`crate::sys`]. Must not use:
//! failover or roles; those call in.

pub mod handoff;
pub mod replay;
