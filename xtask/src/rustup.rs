//! The nightly toolchain and its rust-src component.
//!
//! The eBPF crate is built by `connmirror/build.rs` through aya-build, which runs
//! `rustup run nightly cargo build -Z build-std=core --target bpfel-unknown-none`:
//! `-Z build-std` needs nightly and compiles `core` from the rust-src component.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::run::{check, query, step};
use crate::setup::Outcome;

/// Makes sure a `nightly` toolchain is installed, installing a minimal one if not.
pub fn ensure_nightly() -> Result<Outcome> {
    if has_nightly()? {
        return Ok(Outcome::AlreadyPresent);
    }
    step(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context("installing the nightly toolchain failed; install it by hand with `rustup toolchain install nightly --component rust-src`")?;
    Ok(Outcome::Installed)
}

/// Makes sure nightly has the rust-src component.
pub fn ensure_rust_src() -> Result<Outcome> {
    if has_rust_src() {
        return Ok(Outcome::AlreadyPresent);
    }
    step(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to nightly failed; run `rustup component add rust-src --toolchain nightly` and check its error")?;
    Ok(Outcome::Installed)
}

/// The sysroot of the nightly toolchain; its `lib/` holds the `libLLVM` that
/// bpf-linker links against.
pub fn nightly_sysroot() -> Result<PathBuf> {
    let out = query(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context(
            "could not find the nightly sysroot; is nightly installed? (`cargo xtask setup`)",
        )?;
    Ok(PathBuf::from(out.trim()))
}

/// Whether `rustup toolchain list` shows the undated `nightly-<host>` toolchain
/// (a dated `nightly-2025-…` one is not what `rustup run nightly` picks).
fn has_nightly() -> Result<bool> {
    let list = query(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage toolchains; install it from https://rustup.rs")?;
    Ok(list.lines().any(is_undated_nightly))
}

/// Whether a `rustup toolchain list` line names the undated nightly toolchain.
fn is_undated_nightly(line: &str) -> bool {
    line.strip_prefix("nightly-")
        .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
}

/// Whether nightly lists rust-src among its installed components.
fn has_rust_src() -> bool {
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "list", "--installed", "--toolchain", "nightly"]);
    check(&mut cmd).is_some_and(|list| list.lines().any(|line| line.trim() == "rust-src"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the undated nightly counts; dated nightlies and stable do not.
    #[test]
    fn undated_nightly_is_recognised() {
        assert!(is_undated_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_undated_nightly(
            "nightly-x86_64-unknown-linux-gnu (default)"
        ));
        assert!(!is_undated_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_undated_nightly(
            "stable-x86_64-unknown-linux-gnu (active, default)"
        ));
    }
}
