//! Running helper commands with a deadline.
//!
//! Every wait in these fixtures is bounded: a command that hangs is killed and
//! the test panics naming the command, instead of the test run hanging.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a plain setup command (`ip`, `ethtool`, `sysctl`) may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(10);

/// Polls `read` every 20 ms until what it returns contains `text`; `Err` with
/// the last text read once `timeout` passes.
pub fn wait_for_text(
    read: impl Fn() -> String,
    text: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = read();
        if now.contains(text) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `cmd` with stdin closed, stderr written to `stderr_path`, and
/// stdout read line by line ([`stdout_lines`]). Returns the child, `cmd` for
/// messages, and its lines. Panics naming the command if it cannot start.
pub fn spawn_logged(
    cmd: &mut Command,
    stderr_path: &Path,
) -> (Child, String, mpsc::Receiver<String>) {
    let stderr = std::fs::File::create(stderr_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
    let lines = stdout_lines(&mut child);
    (child, what, lines)
}

/// The lines `child` prints on its (piped) stdout, read on a thread for the
/// child's whole life, so that it never blocks on a full pipe. The channel
/// closes at EOF.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits, at most `timeout` in all, for a line of `lines` that `wanted`
/// accepts; returns it. `Disconnected` means EOF came first.
pub fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Result<String, mpsc::RecvTimeoutError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left)?;
        if wanted(&line) {
            return Ok(line);
        }
    }
}

/// `program arg arg ...`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(s, " {}", arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, capturing stdout and stderr; kills it and panics if it
/// runs longer than `timeout`. A non-zero exit is returned, not a panic.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_with_timeout(&mut child, timeout, &what);
    Output {
        status,
        stdout: stdout.join().expect("stdout reader panicked"),
        stderr: stderr.join().expect("stderr reader panicked"),
    }
}

/// Runs `cmd` and panics with its stderr unless it exits 0. Returns stdout.
pub fn run_checked(cmd: &mut Command) -> String {
    let what = describe(cmd);
    let out = output_with_timeout(cmd, SETUP_TIMEOUT);
    assert!(
        out.status.success(),
        "`{what}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `child` to exit; after `timeout` kills it (SIGKILL) and panics.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    match try_wait_for(child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not exit within {timeout:?}; killed it");
        }
    }
}

/// Polls `child` until it exits or `timeout` passes. `None` means still running.
pub fn try_wait_for(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL),
            Err(e) => panic!("waitpid({}): {e}", child.id()),
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}
