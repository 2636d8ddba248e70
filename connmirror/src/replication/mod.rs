//! Replication of on-host mode: journal records streamed from the primary's
//! agent to the standby over an authenticated channel.
//!
//! [`channel`] is the Noise-secured stream and its sender; [`replica`] is the
//! standby's copy of the primary's flows, built from what arrives.
//!
//! Uses: [`crate::flow`], [`crate::ownership`] (the key), [`crate::metrics`].
//! Must not use: failover or roles.

pub mod channel;
pub mod replica;
