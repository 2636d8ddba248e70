//! Ownership: who serves a service address, and how the standby learns that
//! its primary is gone.
//!
//! [`heartbeat`] is the authenticated message format and key; [`detector`]
//! is the standby's failure detector over those messages.
//!
//! Uses: [`crate::metrics`]. Must not use: capture, flows, failover or roles.

pub mod detector;
pub mod heartbeat;

/// The default heartbeat interval, in milliseconds (`agent --interval`,
/// `standby --heartbeat-interval`). With [`DEFAULT_MISSED`] a death is
/// declared 75 to 87.5 ms after the last heartbeat: under 100 ms, and
/// almost twice the longest gap `cargo xtask bench heartbeats` saw at this
/// interval on a saturated host (40 ms; docs/cluster.md, "Detection
/// settings").
pub const DEFAULT_INTERVAL_MS: u64 = 25;

/// The default number of heartbeats missed in a row before the primary is
/// declared lost (`standby --missed`).
pub const DEFAULT_MISSED: u32 = 3;
