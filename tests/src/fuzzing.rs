//! Running the fuzz targets of `fuzz/` with cargo-fuzz (libFuzzer, on
//! nightly) and reading what libFuzzer reported: the executions, and what
//! stopped a target that did not run its course. `cargo xtask fuzz` drives
//! it through `connmirror-bench fuzz`, which records the runs in
//! bench/RESULTS.md.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// How long and how much each target runs (libFuzzer's `-max_total_time`
/// and `-runs`): whichever comes first ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Seconds.
    pub seconds: u64,
    /// Executions.
    pub runs: u64,
}

/// What one target's run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Inputs run.
    pub executions: u64,
    /// Wall time, in seconds.
    pub seconds: u64,
    /// `clean`, `crash`, `timeout`, `out-of-memory` or `error`.
    pub outcome: String,
    /// The input libFuzzer saved for what stopped it.
    pub artifact: Option<String>,
    /// The whole output, kept for reading.
    pub log: PathBuf,
}

/// The targets `fuzz/Cargo.toml` declares (its `[[bin]]` names), in order.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let manifest = root.join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(value) = line.strip_prefix("name = ").filter(|_| in_bin) {
            names.push(value.trim_matches('"').to_owned());
        }
    }
    if names.is_empty() {
        bail!("{} declares no [[bin]] target", manifest.display());
    }
    Ok(names)
}

/// Builds every target (`cargo fuzz build`, AddressSanitizer), so that the
/// runs' times are fuzzing only.
pub fn build(root: &Path) -> Result<()> {
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "fuzz",
            "build",
            "--features",
            "libfuzzer",
        ])
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .context(
            "running `rustup run nightly cargo fuzz build` (`cargo xtask fuzz` installs it)",
        )?;
    if !status.success() {
        bail!("`cargo fuzz build` failed ({status}); see its output above");
    }
    Ok(())
}

/// Runs `name` from its corpus within `limits`, its output into
/// `target/fuzz-logs/NAME.log`.
pub fn run(root: &Path, name: &str, limits: Limits) -> Result<Outcome> {
    let logs = root.join("target/fuzz-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log = logs.join(format!("{name}.log"));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .context("duplicating the log's descriptor")?;
    let corpus = format!("fuzz/corpus/{name}");
    let started = Instant::now();
    let status = Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "run", name])
        .args(["--features", "libfuzzer", &corpus, "--"])
        .arg(format!("-max_total_time={}", limits.seconds))
        .arg(format!("-runs={}", limits.runs))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .context("running `rustup run nightly cargo fuzz` (`cargo xtask fuzz` installs it)")?;
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let (outcome, artifact) = match status.success() {
        true => ("clean".to_owned(), None),
        false => (stopped_by(&text), artifact(&text)),
    };
    Ok(Outcome {
        executions: executions(&text),
        seconds: started.elapsed().as_secs(),
        outcome,
        artifact,
        log,
    })
}

/// The most inputs libFuzzer said it ran: its final stats, its `Done` line,
/// or its last progress line (`#N ...`).
pub fn executions(text: &str) -> u64 {
    let number = |s: &str| s.split_whitespace().next()?.parse::<u64>().ok();
    (text.lines())
        .filter_map(|line| {
            let line = line.trim();
            line.strip_prefix("stat::number_of_executed_units:")
                .or_else(|| line.strip_prefix("Done "))
                .or_else(|| line.strip_prefix('#'))
                .and_then(number)
        })
        .max()
        .unwrap_or(0)
}

/// What stopped a run that failed, from libFuzzer's output.
fn stopped_by(text: &str) -> String {
    let outcome = if text.contains("libFuzzer: timeout") {
        "timeout"
    } else if text.contains("out-of-memory") {
        "out-of-memory"
    } else if text.contains("Test unit written to") {
        "crash"
    } else {
        "error"
    };
    outcome.to_owned()
}

/// The path of the input libFuzzer saved (`Test unit written to PATH`).
fn artifact(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let path = line.split("Test unit written to ").nth(1)?;
        Some(path.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as libFuzzer prints them.
    #[test]
    fn executions_and_the_stopping_input_are_read_from_libfuzzers_output() {
        let clean = "#1048576\tpulse  cov: 388 ft: 388 corp: 238/22Kb exec/s: 290699\n\
                     Done 8812949 runs in 31 second(s)\n\
                     stat::number_of_executed_units: 8812949\n";
        assert_eq!(executions(clean), 8_812_949);
        let crash = "#4096\tpulse  cov: 12\n\
                     ==12== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='fuzz/artifacts/packet/'; Test unit written to \
                     fuzz/artifacts/packet/crash-da39a3ee\n";
        assert_eq!(executions(crash), 4096);
        assert_eq!(stopped_by(crash), "crash");
        assert_eq!(
            artifact(crash).as_deref(),
            Some("fuzz/artifacts/packet/crash-da39a3ee")
        );
        assert_eq!(
            stopped_by("==1== ERROR: libFuzzer: timeout after 10 seconds"),
            "timeout"
        );
        assert_eq!(stopped_by("error: could not compile"), "error");
    }

    /// The names of the `[[bin]]` tables, not of the package.
    #[test]
    fn the_targets_are_the_bin_names_of_the_fuzz_manifest() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let names = targets(root).unwrap();
        assert!(names.contains(&"packet".to_owned()), "{names:?}");
        assert!(!names.contains(&"connmirror-fuzz".to_owned()), "{names:?}");
    }
}
