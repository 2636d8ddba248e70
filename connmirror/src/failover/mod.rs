//! Failover procedures: moving a service's connections from one host to
//! another.
//!
//! [`takeover`] is the standby's sequence after a failure (quiesce, fence,
//! drain, restore, address, leave repair, resume, announce); [`migrate`]
//! moves live connections between hosts on request (failback and planned
//! maintenance); [`drain`] hands an address back while restored connections
//! finish.
//!
//! Uses: the mechanisms ([`crate::engine`], [`crate::flow`],
//! [`crate::repair`], [`crate::resume`], [`crate::net`],
//! [`crate::ownership`]). Must not use: the roles in [`crate::daemon`].

pub mod drain;
pub mod migrate;
pub mod takeover;
