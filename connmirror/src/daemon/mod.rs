//! The roles a `connmirror` process runs, and what they share as a process:
//! configuration files, the control socket and the status report.
//!
//! [`standby`] (inline mode: capture on the path, takeover on failure),
//! [`agent`] (the primary's heartbeats, and on-host mode), and the `mirror`
//! role, which is the [`crate::engine`] run on its own. Each role parses its
//! own arguments next to its code; `main.rs` only dispatches. [`protection`]
//! is what the agent and a standby that took services over share: the
//! replication links to their standbys. [`cli`] is the whole command line
//! the binary parses.
//!
//! Uses: every mechanism folder. Nothing in the crate uses this folder but
//! `main.rs`.

pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod mirror;
pub(crate) mod protection;
pub mod standby;
pub mod status;
