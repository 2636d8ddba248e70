//! cargo-fuzz, the libFuzzer driver `cargo xtask fuzz` runs the targets of
//! `fuzz/` with (on nightly).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build_env::BuildEnv;
use crate::run::{check, step};
use crate::setup::Outcome;

/// The cargo-fuzz release we install and check for.
pub const VERSION: &str = "0.13.2";

/// Makes sure `cargo fuzz --version` reports [`VERSION`], installing it if not.
pub fn ensure(env: &BuildEnv) -> Result<Outcome> {
    if is_installed(env)? {
        return Ok(Outcome::AlreadyPresent);
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "cargo-fuzz",
        "--version",
        VERSION,
        "--locked",
        "--force",
    ]);
    step(env.apply(&mut cmd)?)
        .context("installing cargo-fuzz failed; see the compiler output above")?;
    if !is_installed(env)? {
        bail!("cargo-fuzz {VERSION} was installed but `cargo fuzz --version` still fails");
    }
    Ok(Outcome::Installed)
}

/// Whether `cargo fuzz --version` prints [`VERSION`].
fn is_installed(env: &BuildEnv) -> Result<bool> {
    let mut cmd = Command::new("cargo");
    env.apply(cmd.args(["fuzz", "--version"]))?;
    let version = check(&mut cmd).unwrap_or_default();
    Ok(version.split_whitespace().any(|word| word == VERSION))
}
