//! The syscall layer: every raw `libc` call the daemon makes, behind safe
//! functions whose errors name the call (as aya's `sys/` does).
//!
//! Uses: `libc` and `nix` only. Everything else in the crate reaches the
//! kernel through here; nothing here knows a connmirror concept.

pub mod sockopt;
