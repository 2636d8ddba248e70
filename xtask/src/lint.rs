//! `cargo xtask lint`: every static check, also run by `cargo xtask test` (so CI
//! runs it).
//!
//! In order: rustfmt; clippy over the host crates; clippy over the eBPF crate,
//! for its bpf target with nightly and `-Z build-std=core` as aya's own xtask
//! lints its eBPF crates; the module dependency check (`cargo xtask deps`); a
//! size limit on the daemon's source files, which keeps each file small enough
//! to read as one piece of one concept; and a length limit on its functions,
//! which keeps each one short enough to read at a glance. Every check runs even
//! when an earlier one fails, and the error lists all failures.

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

/// The most lines a function of the daemon may have, from its `fn` line to
/// its closing brace (tests excepted).
pub const MAX_FN_LINES: usize = 80;

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
            function_lengths(),
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
        .filter(|file| !is_test(file))
        .map(|file| (file.path.as_path(), file.text.lines().count()))
        .filter(|&(_, lines)| lines > max)
        .collect()
}

/// Whether `file` holds tests only: a `tests.rs`, or anything under a
/// `tests/` folder.
fn is_test(file: &SourceFile) -> bool {
    file.path
        .iter()
        .any(|part| part == "tests" || part == "tests.rs")
}

/// No function of the daemon over [`MAX_FN_LINES`] lines.
fn function_lengths() -> Result<()> {
    let src = deps::DEFAULT_SRC;
    println!("==> length of each fn in {src}/**/*.rs but tests (at most {MAX_FN_LINES} lines)");
    let files = deps::scan(&workspace::root().join(src))?;
    let over = long_functions(Path::new(src), &files, MAX_FN_LINES);
    if over.is_empty() {
        return Ok(());
    }
    bail!(
        "{} functions in {src} are over {MAX_FN_LINES} lines; split each into named steps \
         (code after `#[cfg(test)]`, tests.rs files and tests/ folders are exempt):\n    {}",
        over.len(),
        over.join("\n    ")
    )
}

/// `path:line fn NAME is N lines (limit max)` for every function of `files`
/// (paths below `src`) longer than `max` lines, leaving out tests: test files
/// (as [`oversized`] does) and everything after a `#[cfg(test)]` line.
fn long_functions(src: &Path, files: &[SourceFile], max: usize) -> Vec<String> {
    let mut over = Vec::new();
    for file in files.iter().filter(|file| !is_test(file)) {
        let path = src.join(&file.path);
        for (line, name, lines) in function_spans(&file.text) {
            if lines > max {
                over.push(format!(
                    "{}:{line} fn {name} is {lines} lines (limit {max})",
                    path.display()
                ));
            }
        }
    }
    over
}

/// Every function with a body in `text` before its first line starting with
/// `#[cfg(test)]`: its 1-based line, its name and its length in lines, from the
/// `fn` line to the first later line that is the closing brace at the `fn`
/// line's indentation (one line when the `fn` line closes every brace it
/// opens). The scan is by lines, as rustfmt lays code out.
fn function_spans(text: &str) -> Vec<(usize, &str, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut spans = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let Some((indent, name)) = function_head(line) else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let opens = line.matches('{').count();
        if opens > 0 && opens == line.matches('}').count() {
            spans.push((at + 1, name, 1));
            continue;
        }
        let close = lines[at..].iter().position(|later| {
            let later = later.trim_end();
            later.len() == indent.len() + 1 && later.starts_with(indent) && later.ends_with('}')
        });
        if let Some(close) = close {
            spans.push((at + 1, name, close + 1));
        }
    }
    spans
}

/// The indentation and name of the function `line` declares, if it does:
/// indentation, then optionally `pub` or `pub(word)`, `async`, `const` and
/// `unsafe` in that order, then `fn NAME`.
fn function_head(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start();
    let indent = &line[..line.len() - rest.len()];
    let mut rest = rest;
    if let Some(after) = rest.strip_prefix("pub") {
        let after = match after.strip_prefix('(') {
            Some(scoped) => {
                let (word, tail) = scoped.split_once(')')?;
                if word.is_empty() || !word.bytes().all(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                tail
            }
            None => after,
        };
        rest = after.strip_prefix(' ')?;
    }
    for keyword in ["async ", "const ", "unsafe "] {
        rest = rest.strip_prefix(keyword).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some((indent, &rest[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function `name` of `lines` lines (its `fn` and closing brace
    /// included) at `indent`.
    fn function(indent: &str, head: &str, lines: usize) -> String {
        let mut text = format!("{indent}{head} {{\n");
        text.push_str(&format!("{indent}    let x = 1;\n").repeat(lines - 2));
        text.push_str(&format!("{indent}}}\n"));
        text
    }

    /// A scanned file at `path` holding `text`.
    fn source(path: &str, text: String) -> SourceFile {
        SourceFile {
            path: path.into(),
            text,
        }
    }

    /// An 81-line function fails with its place, name and length; an 80-line
    /// one passes.
    #[test]
    fn functions_over_80_lines_are_reported() {
        let text = format!(
            "//! A module.\n\n{}\n{}",
            function("", "pub(crate) fn long()", 81),
            function("", "fn fits()", 80)
        );
        assert_eq!(
            long_functions(
                Path::new("connmirror/src"),
                &[source("engine/mod.rs", text)],
                MAX_FN_LINES
            ),
            ["connmirror/src/engine/mod.rs:3 fn long is 81 lines (limit 80)"]
        );
    }

    /// Methods are measured at their own indentation, with every prefix the
    /// rule knows; declarations without a body are not functions.
    #[test]
    fn methods_with_prefixes_are_measured_and_declarations_skipped() {
        let text = format!(
            "impl X {{\n{}}}\ntrait T {{\n    fn declared(&self);\n}}\n",
            function("    ", "pub async const unsafe fn method(&self)", 82)
        );
        assert_eq!(
            long_functions(Path::new("src"), &[source("x.rs", text)], MAX_FN_LINES),
            ["src/x.rs:2 fn method is 82 lines (limit 80)"]
        );
    }

    /// Code after `#[cfg(test)]`, tests.rs files and tests/ folders are exempt.
    #[test]
    fn tests_are_exempt_from_the_function_limit() {
        let long = function("    ", "fn long_test()", 81);
        let module = format!("fn short() {{}}\n\n#[cfg(test)]\nmod tests {{\n{long}}}\n");
        let files = [
            source("flow.rs", module),
            source("flow/tests.rs", long.clone()),
            source("engine/tests/big.rs", long),
        ];
        assert_eq!(
            long_functions(Path::new("src"), &files, MAX_FN_LINES),
            Vec::<String>::new()
        );
    }

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
