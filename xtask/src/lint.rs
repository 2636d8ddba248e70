//! `cargo xtask lint`: every static check, also run by `cargo xtask test` (so CI
//! runs it).
//!
//! In order: rustfmt; clippy over the host crates; clippy over the eBPF crate,
//! for its bpf target with nightly and `-Z build-std=core` as aya's own xtask
//! lints its eBPF crates; the module dependency check (`cargo xtask deps`); and a
//! size limit on the daemon's source files, which keeps each file small enough
//! to read as one piece of one concept. Every check runs even when an earlier
//! one fails, and the error lists all failures.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build_env::BuildEnv;
use crate::deps::{self, SourceFile};
use crate::run::{all_ok, step};
use crate::setup::{self, Scope};
use crate::{rustup, workspace};

/// The most lines a source file of the daemon may have (tests excepted).
pub const MAX_LINES: usize = 800;

/// `cargo xtask lint`: ensures the build prerequisites, then runs [`check`].
pub fn lint() -> Result<()> {
    let env = setup::ensure(Scope::Build)?;
    check(&env)
}

/// Runs every check in `env` and reports every failure.
pub fn check(env: &BuildEnv) -> Result<()> {
    all_ok(
        "lint",
        [
            fmt(),
            host_clippy(env),
            ebpf_clippy(),
            module_deps(),
            sizes(),
        ],
    )
}

/// `cargo fmt --all --check`.
fn fmt() -> Result<()> {
    step(workspace::cargo().args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all` (needs `rustup component add rustfmt`)")
}

/// Clippy over every crate but the eBPF one, all targets. It compiles
/// `connmirror`, whose build script builds the eBPF object, hence `env`.
fn host_clippy(env: &BuildEnv) -> Result<()> {
    let mut clippy = workspace::cargo();
    clippy
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "connmirror-ebpf",
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"]);
    step(env.apply(&mut clippy)?).context(
        "clippy found problems (needs `rustup component add clippy`); fix the warnings above",
    )
}

/// Clippy over `connmirror-ebpf` (and `connmirror-common` as it builds there)
/// for `bpfel-unknown-none`, with nightly's cargo and clippy (`rustup run
/// nightly`, as aya-build and `setup` do) and `core` built from rust-src.
/// Checking links nothing, so bpf-linker is not involved.
fn ebpf_clippy() -> Result<()> {
    setup::report("clippy (nightly)", rustup::ensure_component("clippy")?);
    let mut clippy = Command::new("rustup");
    clippy
        .current_dir(workspace::root())
        .args(["run", "nightly", "cargo", "clippy", "-p", "connmirror-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        // Inherited when the caller set them (cargo does for build scripts);
        // they would make nightly's cargo use another compiler.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    step(&mut clippy).context(
        "clippy found problems in connmirror-ebpf (checked for bpfel-unknown-none with \
         nightly); fix the warnings above",
    )
}

/// `cargo xtask deps` over the daemon: no cycle between its top-level modules.
fn module_deps() -> Result<()> {
    println!("==> cargo xtask deps");
    deps::check(Path::new(deps::DEFAULT_SRC))
        .context("the module dependency check failed (details: `cargo xtask deps`)")
}

/// No source file of the daemon over [`MAX_LINES`] lines.
fn sizes() -> Result<()> {
    let src = deps::DEFAULT_SRC;
    println!("==> line count of each {src}/**/*.rs but tests (at most {MAX_LINES})");
    let files = deps::scan(&workspace::root().join(src))?;
    let over = oversized(&files, MAX_LINES);
    if over.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = over
        .iter()
        .map(|(path, lines)| format!("{}: {lines} lines", Path::new(src).join(path).display()))
        .collect();
    bail!(
        "{} files in {src} are over {MAX_LINES} lines; split each along the concepts it \
         holds (tests.rs files and tests/ folders are exempt):\n    {}",
        list.len(),
        list.join("\n    ")
    )
}

/// The files of `files` with more than `max` lines, with their line counts,
/// leaving out tests (`tests.rs`, anything under a `tests/` folder).
fn oversized(files: &[SourceFile], max: usize) -> Vec<(&Path, usize)> {
    files
        .iter()
        .filter(|file| {
            !file
                .path
                .iter()
                .any(|part| part == "tests" || part == "tests.rs")
        })
        .map(|file| (file.path.as_path(), file.text.lines().count()))
        .filter(|&(_, lines)| lines > max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files over the limit are listed with their counts; tests are exempt.
    #[test]
    fn oversized_files_are_found_and_tests_are_exempt() {
        let file = |path: &str, lines: usize| SourceFile {
            path: path.into(),
            text: "x\n".repeat(lines),
        };
        let files = [
            file("flow.rs", 4),
            file("journal/mod.rs", 3),
            file("journal/record.rs", 5),
            file("journal/tests.rs", 9),
            file("tests/big.rs", 9),
            file("engine/tests/big.rs", 9),
        ];
        assert_eq!(
            oversized(&files, 3),
            [
                (Path::new("flow.rs"), 4),
                (Path::new("journal/record.rs"), 5)
            ]
        );
    }
}
