//! The environment every cargo build started by xtask runs in.
//!
//! aya-build finds `bpf-linker` on PATH, so `$CARGO_HOME/bin` (where `setup`
//! installs it) goes first. bpf-linker links nightly's `libLLVM.so` dynamically;
//! `setup` bakes an rpath to it into the binary, and LD_LIBRARY_PATH is set as
//! well so a bpf-linker installed without that rpath also runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::rustup;

/// PATH and LD_LIBRARY_PATH additions for builds that involve bpf-linker.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// `$CARGO_HOME/bin`: where `cargo install` puts bpf-linker.
    cargo_bin: PathBuf,
    /// `<nightly sysroot>/lib`: where nightly's `libLLVM.so.*` lives.
    nightly_lib: PathBuf,
}

impl BuildEnv {
    /// Finds cargo's bin directory and nightly's lib directory (nightly must exist).
    pub fn detect() -> Result<Self> {
        Ok(Self {
            cargo_bin: cargo_home()?.join("bin"),
            nightly_lib: rustup::nightly_sysroot()?.join("lib"),
        })
    }

    /// Nightly's lib directory, which holds its `libLLVM.so.*`.
    pub fn nightly_lib(&self) -> &Path {
        &self.nightly_lib
    }

    /// Prints the additions once, since steps do not repeat them.
    pub fn announce(&self) {
        let Self {
            cargo_bin,
            nightly_lib,
        } = self;
        println!(
            "==> builds run with PATH={}:$PATH LD_LIBRARY_PATH={}:$LD_LIBRARY_PATH",
            cargo_bin.display(),
            nightly_lib.display()
        );
    }

    /// Prepends the additions to `cmd`'s PATH and LD_LIBRARY_PATH.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> Result<&'c mut Command> {
        let Self {
            cargo_bin,
            nightly_lib,
        } = self;
        cmd.env("PATH", prepend(cargo_bin, "PATH")?);
        cmd.env("LD_LIBRARY_PATH", prepend(nightly_lib, "LD_LIBRARY_PATH")?);
        Ok(cmd)
    }
}

/// Cargo's home: `$CARGO_HOME`, else `$HOME/.cargo` (cargo's own default).
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    Ok(home_dir()?.join(".cargo"))
}

/// The user's home directory from `$HOME`.
pub fn home_dir() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set; set it (or CARGO_HOME) to your home directory")
}

/// `dir` followed by the current value of the path list `var`.
fn prepend(dir: &Path, var: &str) -> Result<OsString> {
    let current = std::env::var_os(var).unwrap_or_default();
    let rest = std::env::split_paths(&current).filter(|p| !p.as_os_str().is_empty());
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(rest))
        .with_context(|| format!("cannot put {} in {var}: it contains ':'", dir.display()))
}
