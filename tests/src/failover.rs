//! Failover fixtures: programs run inside a namespace (the primary's server,
//! the standby's application), the primary's death, and `connmirror takeover`.
//!
//! The primary "dies" the way a host does: its link goes down first, then its
//! server process is killed. Killing the process first would let its kernel
//! send FINs (or RSTs) to the clients, which no real host crash does.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use connmirror::daemon::status::StatusReport;
use connmirror::failover::migrate::MigrateReport;
use connmirror::failover::takeover::TakeoverReport;

use crate::echo::{EchoClients, EchoOptions, EchoResult, assert_exact};
use crate::mirror::{Mirror, MirrorCommand, Report};
use crate::netns::Netns;
use crate::process::{
    output_with_timeout, spawn_logged, wait_for_line, wait_for_text, wait_with_timeout,
};
use crate::topology::{Family, SERVER_IF, Topology};
use crate::wire::WireSeen;
use crate::workdir::WorkDir;

/// How long a program may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `connmirror takeover` may take.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// The echo example (`connmirror-handoff/examples/echo.rs`), from `CONNMIRROR_ECHO_EXAMPLE`.
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
        let program = Program::spawn(ns, program, args);
        program.wait_line(ready, START_TIMEOUT);
        program
    }

    /// Starts `program` with `args` in `ns` without waiting for it: for
    /// servers that print nothing when ready (the caller waits its own way).
    pub fn spawn<I, S>(ns: &Netns, program: impl AsRef<OsStr>, args: I) -> Program
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = ns.command(program);
        cmd.args(args);
        Program::spawn_command(cmd)
    }

    /// Like [`start`](Self::start), in the host's mount namespace
    /// ([`Netns::command_host_mounts`]): for programs that pin in bpffs.
    pub fn start_host_mounts<I, S>(
        ns: &Netns,
        program: impl AsRef<OsStr>,
        args: I,
        ready: &str,
    ) -> Program
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = ns.command_host_mounts(program);
        cmd.args(args);
        let program = Program::spawn_command(cmd);
        program.wait_line(ready, START_TIMEOUT);
        program
    }

    fn spawn_command(mut cmd: Command) -> Program {
        let dir = WorkDir::new("program");
        let (child, what, lines) = spawn_logged(&mut cmd, &dir.path().join("stderr"));
        Program {
            child: Some(child),
            what,
            dir,
            lines,
        }
    }

    /// The process id (`ip netns exec` runs the program in its place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
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

    /// Waits until stderr contains `text`.
    pub fn wait_stderr(&self, text: &str, timeout: Duration) {
        if let Err(stderr) = wait_for_text(|| self.stderr(), text, timeout) {
            panic!("`{}` never logged {text:?}; stderr:\n{stderr}", self.what);
        }
    }

    /// Every stdout line printed since the last call (or the ready line).
    pub fn lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// What the program wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The program's pid (`ip netns exec` and `nsenter` exec it in place).
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops the program with SIGTERM and waits (at most 30 s); panics with
    /// its stderr unless it exits 0.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_with_timeout(&mut child, Duration::from_secs(30), &self.what);
        assert!(
            status.success(),
            "`{}` exited with {status} after SIGTERM; stderr:\n{}",
            self.what,
            self.stderr()
        );
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
    echo_server_in(&topo.server, service)
}

/// The echo example serving `service` in `ns`.
pub fn echo_server_in(ns: &Netns, service: SocketAddr) -> Program {
    let args = ["listen".to_owned(), service.to_string()];
    Program::start(ns, echo_example(), args, "listening")
}

/// The echo example registered on `standby`'s handoff socket for `service`,
/// in the standby's namespace.
pub fn handoff_app(topo: &Topology, standby: &Mirror, service: SocketAddr) -> Program {
    handoff_app_in(&topo.gateway, standby, service)
}

/// [`handoff_app`] in `ns`, where `standby` runs.
pub fn handoff_app_in(ns: &Netns, standby: &Mirror, service: SocketAddr) -> Program {
    let args = [
        "handoff".to_owned(),
        "--socket".to_owned(),
        standby.handoff_socket().display().to_string(),
        "--service".to_owned(),
        service.to_string(),
    ];
    Program::start(ns, echo_example(), args, "registered")
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

/// The old primary's link and addresses come back, with its echo server.
pub fn primary_returns(topo: &Topology, family: Family, service: SocketAddr) -> Program {
    topo.server.ip(["link", "set", "dev", SERVER_IF, "up"]);
    configure_primary(topo, family, service);
    echo_primary(topo, service)
}

/// Destroys every TCP socket of the primary's namespace (`ss -K`), as the
/// reboot of a crashed host would, while its link is still down.
pub fn forget_tcp_state(topo: &Topology) {
    let out = topo
        .server
        .command("ss")
        .args(["-K", "-tan"])
        .output()
        .expect("run ss -K");
    assert!(
        out.status.success(),
        "ss -K: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The primary host dies with everything on it: [`kill_primary`], then its
/// `agent` is killed too.
pub fn kill_primary_host(topo: &Topology, server: &mut Program, agent: &mut Program) {
    kill_primary(topo, server);
    agent.kill();
}

/// Waits until `standby` is armed (has heard the primary's agent), then starts
/// four echo clients of `service` and waits until each verified 64 KiB (30 s
/// at most; else panics with `what`).
#[track_caller]
pub fn four_streams_once_armed(
    topo: &Topology,
    standby: &Mirror,
    service: SocketAddr,
    what: &str,
) -> EchoClients {
    four_streams_once_armed_with(topo, standby, service, EchoOptions::default(), what)
}

/// [`four_streams_once_armed`] with these stream options.
pub fn four_streams_once_armed_with(
    topo: &Topology,
    standby: &Mirror,
    service: SocketAddr,
    options: EchoOptions,
    what: &str,
) -> EchoClients {
    standby.wait_log("armed: primary heard");
    let clients = EchoClients::start(&topo.client, service, 4, options);
    clients
        .wait_progress(64 << 10, Duration::from_secs(30))
        .expect(what);
    clients
}

/// A failover by hand: the primary dies ([`kill_primary`]), and 300 ms later
/// `connmirror takeover` runs on `standby`'s control socket. Returns its report.
pub fn manual_failover(topo: &Topology, server: &mut Program, standby: &Mirror) -> TakeoverReport {
    kill_primary(topo, server);
    thread::sleep(Duration::from_millis(300));
    takeover(&topo.gateway, &standby.control_socket(), &[])
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
    let args: Vec<&str> = ["--json"].into_iter().chain(args.iter().copied()).collect();
    control_cli(ns, "takeover", control, &args)
}

/// Runs `connmirror COMMAND --control PATH ARGS...` in `ns`: (exit 0, stdout,
/// stderr).
pub fn control_cli(
    ns: &Netns,
    command: &str,
    control: &Path,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = ns.command(crate::connmirror_bin());
    cmd.arg(command).arg("--control").arg(control).args(args);
    let out = output_with_timeout(&mut cmd, TAKEOVER_TIMEOUT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `connmirror migrate --control PATH --json ARGS...` in `ns`, which
/// must succeed, and parses its report.
pub fn migrate(ns: &Netns, control: &Path, args: &[&str]) -> MigrateReport {
    let args: Vec<&str> = ["--json"].into_iter().chain(args.iter().copied()).collect();
    let (ok, stdout, stderr) = control_cli(ns, "migrate", control, &args);
    assert!(ok, "connmirror migrate failed:\n{stderr}\n{stdout}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("migrate report: {e}; stdout:\n{stdout}"))
}

/// What a planned `connmirror migrate --to standby` on the agent did.
pub struct Moved {
    /// The command's report.
    pub report: MigrateReport,
    /// The agent's `stepped down` line.
    pub stepped: String,
    /// The standby application's `resumed` lines, one per connection.
    pub resumed: Vec<String>,
}

/// Runs `connmirror migrate --to standby` on the agent's `control` socket in
/// the primary's namespace, then waits for `agent` to step down, `app` (on
/// the standby) to resume `n` connections and `clients` to verify 256 KiB
/// more at the standby.
pub fn move_to_standby(
    topo: &Topology,
    control: &Path,
    agent: &Program,
    app: &Program,
    clients: &EchoClients,
    n: usize,
) -> Moved {
    let report = migrate(&topo.server, control, &["--to", "standby"]);
    let stepped = agent.wait_line("stepped down", Duration::from_secs(10));
    let resumed = resumed_lines(app, n);
    clients
        .wait_progress(256 << 10, Duration::from_secs(60))
        .expect("the streams go on at the standby");
    Moved {
        report,
        stepped,
        resumed,
    }
}

/// The primary's agent announcing itself `--recovering` with a handoff
/// socket in `dir`, and the echo example registered there for `service`:
/// (agent, application).
pub fn recovering_agent(
    topo: &Topology,
    dir: &Path,
    key: &Path,
    family: Family,
    service: SocketAddr,
) -> (Program, Program) {
    let agent = recovering_agent_with(topo, dir, key, family, service, &[]);
    (agent, primary_handoff_app(topo, dir, service))
}

/// The agent of [`recovering_agent`] alone, with more flags.
pub fn recovering_agent_with(
    topo: &Topology,
    dir: &Path,
    key: &Path,
    family: Family,
    service: SocketAddr,
    extra: &[&str],
) -> Program {
    let socket = agent_handoff_socket(dir);
    let flags: Vec<&str> = ["--recovering", "--handoff", &socket]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    start_agent_with(topo, family, service, key, &flags)
}

/// The echo example registered on the agent's handoff socket in `dir`.
pub fn primary_handoff_app(topo: &Topology, dir: &Path, service: SocketAddr) -> Program {
    let args = [
        "handoff",
        "--socket",
        &agent_handoff_socket(dir),
        "--service",
        &service.to_string(),
    ]
    .map(String::from);
    Program::start(&topo.server, echo_example(), args, "registered")
}

fn agent_handoff_socket(dir: &Path) -> String {
    dir.join("agent-handoff.sock").display().to_string()
}

/// Checks a migration's outcome: every stream exact and more than 1 MiB
/// longer than `before`, each connection resumed by the application whose
/// `resumed` lines are given, with no recorded bytes, and no RST.
pub fn assert_migrated(results: &[EchoResult], before: u64, resumed: &[String], seen: &WireSeen) {
    assert_exact(results);
    let moved: u64 = results.iter().map(|r| r.verified).sum();
    assert!(
        moved > before + (1 << 20),
        "{before} then {moved} bytes verified"
    );
    for r in results {
        let line = format!("resumed {} c2s=0 s2c=0", r.local);
        assert!(resumed.contains(&line), "{line:?} not in {resumed:?}");
    }
    assert_eq!(seen.rsts_received, vec![], "no RST may reach a client");
}

/// Checks a `connmirror migrate` report: `moved` connections went to the
/// node `to`, from a node that held `epoch`, with no error.
#[track_caller]
pub fn assert_moved(report: &MigrateReport, to: &str, moved: u64, epoch: u64) {
    assert_eq!(
        (report.to.as_str(), report.moved, report.epoch),
        (to, moved, epoch),
        "{report:?}"
    );
    assert_eq!(report.errors, Vec::<String>::new());
}

/// The one takeover in the standby's `report`, which must have been started
/// by `trigger`; panics unless there is exactly one.
#[track_caller]
pub fn the_takeover<'r>(report: &'r Report, trigger: &str) -> &'r TakeoverReport {
    assert_eq!(report.takeovers.len(), 1, "{:#?}", report.takeovers);
    let takeover = &report.takeovers[0];
    assert_eq!(takeover.trigger, trigger);
    takeover
}

/// `n` lines of `app` that start with `resumed` (20 s for each).
pub fn resumed_lines(app: &Program, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| app.wait_line("resumed", Duration::from_secs(20)))
        .collect()
}

/// The heartbeat port the standby listens on in these fixtures.
pub const HEARTBEAT_PORT: u16 = 7400;
/// The shared key of these fixtures (32 bytes).
pub const KEY: &[u8] = b"a shared key of 32 bytes exactly";

/// The standby's address on the primary's link and on the clients' link.
pub fn gateway_addrs(family: Family) -> (IpAddr, IpAddr) {
    match family {
        Family::V4 => (
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        ),
        Family::V6 => (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1)),
        ),
    }
}

/// A key file (mode 0600) holding [`KEY`], in `dir`.
pub fn key_file(dir: &WorkDir) -> PathBuf {
    let path = dir.path().join("key");
    std::fs::write(&path, KEY).expect("write the key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// The standby for `service` (full retention) with failure detection on,
/// listening for heartbeats on every address.
pub fn detecting_standby(
    topo: &Topology,
    family: Family,
    service: SocketAddr,
    key: &Path,
) -> Mirror {
    let command = detecting_standby_command(topo, family, service, key);
    Mirror::start(&topo.gateway, &command)
}

/// The command [`detecting_standby`] runs, for tests that add flags.
pub fn detecting_standby_command(
    topo: &Topology,
    family: Family,
    service: SocketAddr,
    key: &Path,
) -> MirrorCommand {
    with_detection(
        standby_command(topo, &format!("{service}=full")),
        family,
        key,
    )
}

/// `command` with failure detection on: heartbeats heard on every address of
/// `family`, under the shared `key`.
pub fn with_detection(command: MirrorCommand, family: Family, key: &Path) -> MirrorCommand {
    let listen = match family {
        Family::V4 => format!("0.0.0.0:{HEARTBEAT_PORT}"),
        Family::V6 => format!("[::]:{HEARTBEAT_PORT}"),
    };
    command
        .without_dumps()
        .arg("--heartbeat-listen")
        .arg(&listen)
        .arg("--key")
        .arg(&key.display().to_string())
        .flag("--missed", TEST_MISSED)
}

/// The standbys' `--missed` here: 8 heartbeats of 25 ms, a death declared
/// after 200 ms. The default (3, 75 ms) once saw a 75 ms gap while the whole
/// suite kept both cores busy, a false takeover; these tests are about what
/// a takeover does, not how soon it starts.
pub const TEST_MISSED: &str = "8";

/// Where the primary's agent ([`start_agent`]) sends from and listens for
/// solicitations: its management address and the default agent port.
pub fn agent_addr(family: Family) -> SocketAddr {
    SocketAddr::new(
        management_addr(family),
        connmirror::daemon::agent::DEFAULT_PORT,
    )
}

/// The primary's own (management) address, besides the service address.
pub fn management_addr(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 3)),
    }
}

/// Puts the primary's addresses (back) on its link: the service address (a
/// link going down drops IPv6 addresses) and its management address; and its
/// route to the clients through the gateway (a link going down drops it).
pub fn configure_primary(topo: &Topology, family: Family, service: SocketAddr) {
    let (prefix, clients) = match family {
        Family::V4 => ("24", "198.18.0.0/24"),
        Family::V6 => ("64", "fd00:0:0:1::/64"),
    };
    for ip in [service.ip(), management_addr(family)] {
        let addr = format!("{ip}/{prefix}");
        let mut args = vec!["addr", "replace", &addr, "dev", SERVER_IF];
        if family == Family::V6 {
            args.push("nodad");
        }
        topo.server.ip(args);
    }
    let via = gateway_addrs(family).0.to_string();
    topo.server.ip(["route", "replace", clients, "via", &via]);
}

/// `connmirror agent` in the primary's namespace, sending from its
/// management address.
pub fn start_agent(topo: &Topology, family: Family, service: SocketAddr, key: &Path) -> Program {
    start_agent_with(topo, family, service, key, &[])
}

/// [`start_agent`] with more flags (`--recovering`, `--epoch N`).
pub fn start_agent_with(
    topo: &Topology,
    family: Family,
    service: SocketAddr,
    key: &Path,
    extra: &[&str],
) -> Program {
    let args = agent_args(family, service, key, extra);
    Program::start(&topo.server, crate::connmirror_bin(), args, "ready")
}

/// The command line of [`start_agent_with`].
pub fn agent_args(family: Family, service: SocketAddr, key: &Path, extra: &[&str]) -> Vec<String> {
    let standby = SocketAddr::new(gateway_addrs(family).0, HEARTBEAT_PORT);
    let mut args = [
        "agent".to_owned(),
        "--bind".to_owned(),
        management_addr(family).to_string(),
        "--standby".to_owned(),
        standby.to_string(),
        "--key".to_owned(),
        key.display().to_string(),
        "--node-id".to_owned(),
        "primary".to_owned(),
        "--service".to_owned(),
        service.to_string(),
    ]
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// A primary ready to be protected: the shared key, the topology, the
/// primary's addresses in place and its echo server running.
///
/// Fields drop in declaration order: the echo server goes before the
/// namespaces, and the key's directory last.
pub struct PrimarySetup {
    /// The primary's echo server.
    pub primary: Program,
    /// The protected service.
    pub service: SocketAddr,
    /// client ↔ gateway (standby) ↔ server (primary).
    pub topo: Topology,
    /// The shared key file.
    pub key: PathBuf,
    /// Holds the key file; scratch space for the test.
    pub dir: WorkDir,
}

/// Sets up a [`PrimarySetup`] serving `port` over `family`; `role` names the
/// scratch directory.
pub fn primary_setup(family: Family, port: u16, role: &str) -> PrimarySetup {
    crate::require_root();
    let dir = WorkDir::new(role);
    let key = key_file(&dir);
    let topo = Topology::new();
    let service = topo.service(family, port);
    configure_primary(&topo, family, service);
    PrimarySetup {
        primary: echo_primary(&topo, service),
        service,
        topo,
        key,
        dir,
    }
}

/// `connmirror status --json` of `standby` (in the gateway), parsed.
pub fn status_of(topo: &Topology, standby: &Mirror) -> StatusReport {
    status_in(&topo.gateway, standby)
}

/// `connmirror status --json` of `standby`, running in `ns`, parsed.
pub fn status_in(ns: &Netns, standby: &Mirror) -> StatusReport {
    let json = status(ns, &standby.control_socket(), true);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("status JSON: {e}\n{json}"))
}
