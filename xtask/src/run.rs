//! Running external programs: visible steps and quiet checks.
//!
//! A *step* changes something (builds, installs, mounts) and is printed as
//! `==> program args` before it runs, with its output going straight to the
//! terminal. A *check* only asks a question (is this installed?) and runs quietly.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Variables too long to repeat on every step; `BuildEnv` prints them once.
const UNECHOED_ENV: [&str; 2] = ["PATH", "LD_LIBRARY_PATH"];

/// Prints `cmd` as a step, runs it with inherited stdio and fails unless it exits 0.
pub fn step(cmd: &mut Command) -> Result<()> {
    let shown = describe(cmd);
    println!("==> {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); see its output above");
    }
    Ok(())
}

/// Prints `cmd` as a step and replaces this process with it, so the program
/// keeps the terminal, receives signals such as Ctrl-C directly, and its exit
/// status is that of `cargo xtask`. Returns only when it could not start.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    let shown = describe(cmd);
    println!("==> {shown}");
    let _ = std::io::stdout().flush();
    let error = cmd.exec();
    anyhow::Error::new(error).context(format!(
        "could not start `{shown}`: is it installed and on PATH?"
    ))
}

/// Succeeds when every one of `results` did; otherwise fails with all their
/// errors, one per line, under "`what` failed".
pub fn all_ok(what: &str, results: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(Result::err)
        .map(|e| format!("{e:#}"))
        .collect();
    if !failures.is_empty() {
        bail!("{what} failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Test counts summed over `cargo test` summaries (`test result: ok. N passed; M failed; ...`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
}

impl Tally {
    /// Adds the counts of one `test result:` line; other lines add nothing.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Like [`step`] for `cargo test`: echoes its stdout line by line while adding the
/// summaries to `tally`, so the caller can print one closing count for all runs.
pub fn test_step(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    use std::io::BufRead as _;
    let shown = describe(cmd);
    println!("==> {shown}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading the output of `{shown}`"))?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); see its output above");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout, or `None` if it could not start
/// or exited non-zero: the answer "no" to a check.
pub fn check(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` quietly and returns its stdout; failing to start or a non-zero
/// exit is an error that includes the command's stderr.
pub fn query(cmd: &mut Command) -> Result<String> {
    let shown = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{shown}` failed ({}): {}", output.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Renders `cmd` as a shell line: the variables it sets, the program, its arguments.
pub fn describe(cmd: &Command) -> String {
    let env = cmd
        .get_envs()
        .filter(|(key, _)| !UNECHOED_ENV.iter().any(|quiet| key == quiet))
        .filter_map(|(key, value)| Some(format!("{}={}", key.display(), quote(value?))));
    let program = std::iter::once(quote(program_name(cmd.get_program())));
    let args = cmd.get_args().map(quote);
    env.chain(program).chain(args).collect::<Vec<_>>().join(" ")
}

/// The file name of `program` when it is a path (`$CARGO` is a full path into
/// the toolchain), so steps read `cargo build …`.
fn program_name(program: &OsStr) -> &OsStr {
    Path::new(program).file_name().unwrap_or(program)
}

/// Quotes `word` for a POSIX shell when it holds anything but plain characters.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set variables come first, then program and arguments, quoted where needed.
    #[test]
    fn describe_renders_a_copyable_shell_line() {
        let mut cmd = Command::new("/toolchain/bin/cargo");
        cmd.args(["test", "--", "a b", "it's"])
            .env("CONNMIRROR_BIN", "/t/connmirror")
            .env("PATH", "/hidden");
        assert_eq!(
            describe(&cmd),
            r"CONNMIRROR_BIN=/t/connmirror cargo test -- 'a b' 'it'\''s'"
        );
    }

    /// A check that cannot start the program answers "no" instead of failing.
    #[test]
    fn check_of_missing_program_is_none() {
        assert_eq!(check(&mut Command::new("/nonexistent/xtask-probe")), None);
    }
}

#[cfg(test)]
mod tally_tests {
    use super::Tally;

    #[test]
    fn tally_adds_cargo_test_summaries_and_ignores_other_lines() {
        let mut tally = Tally::default();
        tally.add_line("test result: ok. 28 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.06s");
        tally.add_line(
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out",
        );
        tally.add_line("test foo ... ok");
        tally.add_line("running 3 tests");
        assert_eq!(
            tally,
            Tally {
                passed: 31,
                failed: 2
            }
        );
    }
}
