//! Ownership: who serves a service address, and how the standby learns that
//! its primary is gone.
//!
//! [`heartbeat`] is the authenticated message format and key; [`detector`]
//! is the standby's failure detector over those messages.
//!
//! Uses: [`crate::metrics`]. Must not use: capture, flows, failover or roles.

pub mod detector;
pub mod heartbeat;
