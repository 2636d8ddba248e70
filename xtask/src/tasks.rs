//! The tasks behind `build`, `run`, `test`, `demo`, `bench`, `soak` and `fuzz`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::build_env::BuildEnv;
use crate::run::{Tally, all_ok, exec, step, test_step};
use crate::setup::{self, Scope};
use crate::workspace::{self, Profile};
use crate::{Area, host, lint};

/// `cargo xtask build`: ensures the build prerequisites, builds the daemon and
/// returns (and prints) the path of its binary.
pub fn build(profile: Profile) -> Result<PathBuf> {
    let env = setup::ensure(Scope::Build)?;
    build_daemon(&env, profile).map(|built| built.daemon)
}

/// What [`build_daemon`] built: the daemon and the example application the
/// failover tests resume connections into.
struct Built {
    daemon: PathBuf,
    echo: PathBuf,
}

impl Built {
    /// Tells a tests binary where both are (`CONNMIRROR_BIN`, `CONNMIRROR_ECHO_EXAMPLE`).
    fn apply(&self, cmd: &mut std::process::Command) {
        cmd.env("CONNMIRROR_BIN", &self.daemon)
            .env("CONNMIRROR_ECHO_EXAMPLE", &self.echo);
    }
}

/// `cargo xtask test`: every lint check, then the unit and property tests, then
/// the end-to-end tests. The tests run even when linting fails, and the task
/// fails if either did.
///
/// `extra` is split at its first `--`: what comes before goes to both `cargo
/// test` runs, what comes after goes to the test harness.
pub fn test(extra: &[String]) -> Result<()> {
    let (env, bin) = prepare_root_run(
        "test",
        "the end-to-end tests create network namespaces and load eBPF programs",
    )?;
    let lint = lint::check(&env);
    let (cargo_args, harness_args) = split_at_double_dash(extra);
    let mut unit = workspace::cargo();
    unit.args([
        "test",
        "--release",
        "-p",
        "connmirror-common",
        "--features",
        "connmirror-common/std",
    ])
    .args([
        "-p",
        "connmirror",
        "-p",
        "connmirror-handoff",
        "-p",
        "connmirror-fuzz",
        "-p",
        "xtask",
    ])
    .args(cargo_args);
    if !harness_args.is_empty() {
        unit.arg("--").args(harness_args);
    }
    let mut tally = Tally::default();
    let unit = test_step(env.apply(&mut unit)?, &mut tally)
        .context("unit/property tests failed; see the test output above");
    let mut e2e = workspace::cargo();
    e2e.args(["test", "--release", "-p", "connmirror-tests"])
        .args(cargo_args)
        .args(["--", "--test-threads=1"])
        .args(harness_args);
    bin.apply(&mut e2e);
    let e2e = unit.and_then(|()| {
        test_step(env.apply(&mut e2e)?, &mut tally)
            .context("end-to-end tests failed; see the test output above")
    });
    // One closing line for every test run above, so a reader (or CI) need not
    // add up the per-binary summaries.
    println!(
        "cargo xtask test: {} passed, {} failed",
        tally.passed, tally.failed
    );
    all_ok("cargo xtask test", [lint, e2e])
}

/// `cargo xtask demo`: runs `connmirror-demo` against the release daemon.
pub fn demo() -> Result<()> {
    run_tests_binary(
        "demo",
        "the demo creates network namespaces and loads eBPF programs",
        "connmirror-demo",
        &[],
    )
    .context("the demo failed; see its output above")
}

/// `cargo xtask bench`: runs `connmirror-bench` for `area` against the release daemon.
pub fn bench(area: Area) -> Result<()> {
    run_tests_binary(
        "bench",
        "the benchmarks create network namespaces and load eBPF programs",
        "connmirror-bench",
        &[area.as_arg()],
    )
    .context("the benchmark failed; see its output above")
}

/// `cargo xtask soak`: runs `connmirror-bench soak` for `minutes` against
/// the release daemon.
pub fn soak(minutes: u64) -> Result<()> {
    run_tests_binary(
        "soak",
        "the soak creates network namespaces and loads eBPF programs",
        "connmirror-bench",
        &["soak", "--minutes", &minutes.to_string()],
    )
    .context("the soak failed; see its output above")
}

/// `cargo xtask fuzz`: installs cargo-fuzz when missing, then runs
/// `connmirror-bench fuzz` for `target` (every one when `None`), each for at
/// most `time` seconds and `runs` executions.
pub fn fuzz(target: Option<&str>, time: u64, runs: u64) -> Result<()> {
    let env = setup::ensure(Scope::Build)?;
    crate::cargo_fuzz::ensure(&env)?;
    env.announce();
    let mut cmd = workspace::cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "connmirror-tests",
        "--bin",
        "connmirror-bench",
    ])
    .args(["--", "fuzz"])
    .args(target)
    .args(["--time", &time.to_string(), "--runs", &runs.to_string()]);
    step(env.apply(&mut cmd)?).context("fuzzing failed; see the output above")
}

/// Runs the `connmirror-tests` binary `bin` with `args` against the release
/// daemon, after the root check and setup that task `task` (which needs root
/// because `why`) requires.
fn run_tests_binary(task: &str, why: &str, bin: &str, args: &[&str]) -> Result<()> {
    let (env, daemon) = prepare_root_run(task, why)?;
    let mut cmd = workspace::cargo();
    cmd.args(["run", "--release", "-p", "connmirror-tests", "--bin", bin])
        .arg("--")
        .args(args);
    daemon.apply(&mut cmd);
    step(env.apply(&mut cmd)?)
}

/// `cargo xtask run`: builds the daemon with `profile` and replaces this process
/// with it, given `args`, as root: directly when already root, else through
/// `sudo -E` (which keeps the environment, e.g. `RUST_LOG`).
pub fn run_daemon(profile: Profile, args: &[String]) -> Result<()> {
    let bin = build(profile)?;
    let mut cmd = if host::is_root()? {
        Command::new(&bin)
    } else {
        println!(
            "not root: running the daemon through `sudo -E`, since it loads eBPF programs \
             (sudo may ask for your password)"
        );
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&bin);
        sudo
    };
    cmd.args(args);
    Err(exec(&mut cmd))
}

/// Builds the daemon and the echo example with `profile` in `env`.
fn build_daemon(env: &BuildEnv, profile: Profile) -> Result<Built> {
    env.announce();
    let mut cmd = workspace::cargo();
    cmd.arg("build").args(profile.cargo_args()).args([
        "-p",
        "connmirror",
        "--bins",
        "-p",
        "connmirror-handoff",
        "--example",
        "echo",
    ]);
    step(env.apply(&mut cmd)?).context(
        "building connmirror failed; if the eBPF part failed, check that bpf-linker and \
         nightly rust-src work (`cargo xtask setup`)",
    )?;
    let bin = workspace::daemon_binary(profile);
    ensure!(
        bin.is_file(),
        "cargo build succeeded but {} is missing; is build.target-dir set in a cargo config?",
        bin.display()
    );
    println!("connmirror binary: {}", bin.display());
    Ok(Built {
        daemon: bin,
        echo: workspace::echo_example(profile),
    })
}

/// What `test`, `demo` and `bench` share: root, full setup, a release build and
/// bpffs. Returns the build environment and what was built.
fn prepare_root_run(task: &str, why: &str) -> Result<(BuildEnv, Built)> {
    host::require_root(task, why)?;
    let env = setup::ensure(Scope::Full)?;
    let bin = build_daemon(&env, Profile::Release)?;
    host::ensure_bpffs()?;
    Ok((env, bin))
}

/// Splits `args` at the first `--` into (before, after), dropping the `--`.
fn split_at_double_dash(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|arg| arg == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cargo arguments come before the first `--`, harness arguments after it.
    #[test]
    fn extra_test_args_split_at_first_double_dash() {
        let args: Vec<String> = ["capture", "--", "--nocapture", "--"]
            .map(String::from)
            .into();
        let (cargo, harness) = split_at_double_dash(&args);
        assert_eq!(cargo, ["capture"]);
        assert_eq!(harness, ["--nocapture", "--"]);
        assert_eq!(split_at_double_dash(&args[..1]), (&args[..1], &[][..]));
    }
}
