//! Empty library target, as aya's template has it: the programs are the
//! binary (`src/main.rs`); this target lets workspace-wide cargo commands
//! (check, clippy, doc) treat the crate like any other.
#![no_std]
