//! The nightly toolchain and its rust-src and clippy components.
//!
//! The eBPF crate is built by `connmirror/build.rs` through aya-build, which runs
//! `rustup run nightly cargo build -Z build-std=core --target bpfel-unknown-none`:
//! `-Z build-std` needs nightly and compiles `core` from the rust-src component.
//! `cargo xtask lint` runs nightly's clippy the same way over the eBPF crate.

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
    ensure_component("rust-src")
}

/// Makes sure nightly has the rustup component `name` (`rust-src`, `clippy`):
/// the minimal profile `ensure_nightly` installs has neither.
pub fn ensure_component(name: &str) -> Result<Outcome> {
    if has_component(name) {
        return Ok(Outcome::AlreadyPresent);
    }
    step(Command::new("rustup").args(["component", "add", name, "--toolchain", "nightly"]))
        .with_context(|| format!("adding {name} to nightly failed; run `rustup component add {name} --toolchain nightly` and check its error"))?;
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

/// Whether nightly lists the component `name` among its installed ones.
fn has_component(name: &str) -> bool {
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "list", "--installed", "--toolchain", "nightly"]);
    check(&mut cmd).is_some_and(|list| lists_component(&list, name))
}

/// Whether a `rustup component list --installed` text names `name`, bare
/// (`rust-src`) or with its host triple (`clippy-x86_64-unknown-linux-gnu`).
fn lists_component(list: &str, name: &str) -> bool {
    list.lines().any(|line| {
        line.trim()
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    })
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

    /// Components are found bare or with a host triple, never by a prefix of their name.
    #[test]
    fn installed_components_are_recognised() {
        let list = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(lists_component(list, "rust-src"));
        assert!(lists_component(list, "clippy"));
        assert!(!lists_component(list, "rustfmt"));
        assert!(!lists_component(
            "rustfmt-x86_64-unknown-linux-gnu\n",
            "rust"
        ));
    }
}
