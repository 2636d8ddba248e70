//! `cargo xtask setup`: make sure the machine has what connmirror needs.
//!
//! Each item is checked cheaply first and installed only when missing, so this
//! runs at the start of `build`, `test`, `demo` and `bench` at little cost.

use anyhow::Result;

use crate::build_env::BuildEnv;
use crate::{apt, bpf_linker, rustup};

/// Which prerequisites a task needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What building needs: nightly, rust-src, bpf-linker. Never needs root.
    Build,
    /// Everything, including the Debian packages the tests and demo run.
    Full,
}

/// What ensuring one item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed; nothing was done.
    AlreadyPresent,
    /// The item was missing and is now installed.
    Installed,
}

/// Ensures every item in `scope`, printing one line per item, and returns the
/// environment builds must run in.
pub fn ensure(scope: Scope) -> Result<BuildEnv> {
    report("nightly toolchain", rustup::ensure_nightly()?);
    report("rust-src (nightly)", rustup::ensure_rust_src()?);
    let env = BuildEnv::detect()?;
    let linker = format!("bpf-linker {}", bpf_linker::VERSION);
    report(&linker, bpf_linker::ensure(&env)?);
    if scope == Scope::Full {
        report(
            &format!("Debian packages ({})", apt::PACKAGES.join(" ")),
            apt::ensure()?,
        );
    }
    Ok(env)
}

/// Prints what ensuring `item` did.
pub fn report(item: &str, outcome: Outcome) {
    match outcome {
        Outcome::AlreadyPresent => println!("{item}: already present"),
        Outcome::Installed => println!("{item}: installed"),
    }
}
