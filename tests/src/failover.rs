//! Failover fixtures: programs run inside a namespace (the primary's server,
//! the standby's application), the primary's death, and `connmirror takeover`.
//!
//! The primary "dies" the way a host does: its link goes down first, then its
//! server process is killed. Killing the process first would let its kernel
//! send FINs (or RSTs) to the clients, which no real host crash does.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use connmirror::takeover::TakeoverReport;

use crate::mirror::{Mirror, MirrorCommand};
use crate::netns::Netns;
use crate::process::{output_with_timeout, spawn_logged, wait_for_line};
use crate::topology::{SERVER_IF, Topology};
use crate::workdir::WorkDir;

/// How long a program may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `connmirror takeover` may take.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// The echo example (`connmirror/examples/echo.rs`), from `CONNMIRROR_ECHO_EXAMPLE`.
pub fn echo_example() -> PathBuf {
    crate::binary_from_env("CONNMIRROR_ECHO_EXAMPLE")
}

/// A program running inside a namespace; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Program {
    child: Option<Child>,
    what: String,
    dir: WorkDir,
    lines: mpsc::Receiver<String>,
}

impl Program {
    /// Starts `program args...` in `ns` and waits until it prints a line that
    /// contains `ready`. Panics with its stderr otherwise.
    pub fn start<I, S>(ns: &Netns, program: impl AsRef<OsStr>, args: I, ready: &str) -> Program
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = WorkDir::new("program");
        let mut cmd = ns.command(program);
        cmd.args(args);
        let (child, what, lines) = spawn_logged(&mut cmd, &dir.path().join("stderr"));
        let program = Program {
            child: Some(child),
            what,
            dir,
            lines,
        };
        program.wait_line(ready, START_TIMEOUT);
        program
    }

    /// Waits for a stdout line that contains `text`; returns it.
    pub fn wait_line(&self, text: &str, timeout: Duration) -> String {
        wait_for_line(&self.lines, timeout, |line| line.contains(text)).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no line containing {text:?} ({e}); stderr:\n{}",
                self.what,
                self.stderr()
            )
        })
    }

    /// Every stdout line printed since the last call (or the ready line).
    pub fn lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// What the program wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Kills the program (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let running = self.child.is_some();
        self.kill();
        if running && thread::panicking() {
            eprintln!("`{}` stderr:\n{}", self.what, self.stderr());
        }
    }
}

/// The echo example serving `service` in the primary's namespace.
pub fn echo_primary(topo: &Topology, service: SocketAddr) -> Program {
    let args = ["listen".to_owned(), service.to_string()];
    Program::start(&topo.server, echo_example(), args, "listening")
}

/// The echo example registered on `standby`'s handoff socket for `service`,
/// in the standby's namespace.
pub fn handoff_app(topo: &Topology, standby: &Mirror, service: SocketAddr) -> Program {
    let args = [
        "handoff".to_owned(),
        "--socket".to_owned(),
        standby.handoff_socket().display().to_string(),
        "--service".to_owned(),
        service.to_string(),
    ];
    Program::start(&topo.gateway, echo_example(), args, "registered")
}

/// The standby for `service` (`IP:PORT=RETENTION` as `--service` takes it):
/// TC ingress capture on both links (no egress: every segment is seen once).
pub fn standby_command(topo: &Topology, service: &str) -> MirrorCommand {
    MirrorCommand::standby()
        .ifaces(topo.gateway_ifaces())
        .arg("--service")
        .arg(service)
        .ingress("tc")
        .egress("none")
}

/// The primary dies: its link goes down (no segment of its ever reaches the
/// standby again), then its server process is killed.
pub fn kill_primary(topo: &Topology, server: &mut Program) {
    topo.server.ip(["link", "set", "dev", SERVER_IF, "down"]);
    server.kill();
}

/// Runs `connmirror takeover --control PATH --json ARGS...` in `ns` and parses
/// its report. Panics with its stderr unless it exits 0.
pub fn takeover(ns: &Netns, control: &Path, args: &[&str]) -> TakeoverReport {
    let (status, stdout, stderr) = run_takeover(ns, control, args);
    assert!(
        status,
        "connmirror takeover failed; stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("takeover report: {e}; stdout:\n{stdout}"))
}

/// Runs `connmirror status --control PATH [--json]` in `ns`; returns stdout.
/// Panics with its stderr unless it exits 0.
pub fn status(ns: &Netns, control: &Path, json: bool) -> String {
    let mut cmd = ns.command(crate::connmirror_bin());
    cmd.arg("status").arg("--control").arg(control);
    if json {
        cmd.arg("--json");
    }
    let out = output_with_timeout(&mut cmd, TAKEOVER_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "connmirror status failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `connmirror takeover --control PATH --json ARGS...` in `ns`: (exit 0,
/// stdout, stderr).
pub fn run_takeover(ns: &Netns, control: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = ns.command(crate::connmirror_bin());
    cmd.arg("takeover")
        .arg("--control")
        .arg(control)
        .arg("--json")
        .args(args);
    let out = output_with_timeout(&mut cmd, TAKEOVER_TIMEOUT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
