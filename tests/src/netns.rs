//! Network namespaces as RAII guards.
//!
//! A network namespace has its own interfaces, addresses, routes, sysctls under
//! `/proc/sys/net`, sockets and attached XDP/TC programs (see
//! `network_namespaces(7)`). `ip netns add NAME` creates one and bind-mounts it at
//! `/run/netns/NAME` so that it outlives the process that made it; that is why it
//! must be deleted explicitly, and why [`Netns`] does so on drop.
//!
//! Three ways to run something inside:
//! - a process: [`Netns::command`] (`ip netns exec NAME ...`; iproute2 `exec`s the
//!   program directly, so the child's pid is the program's pid);
//! - Rust code: [`Netns::run`] runs a closure on a thread that first calls
//!   `setns(fd, CLONE_NEWNET)` (allowed for a single thread of a multi-threaded
//!   process for network namespaces, unlike mount or user namespaces). A socket
//!   belongs to the namespace it was created in for its whole life, so sockets
//!   created in the closure can be returned and used from any thread;
//! - `ip` itself: [`Netns::ip`] (`ip -n NAME ...`).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{SETUP_TIMEOUT, describe, output_with_timeout, run_checked};

/// How long [`Netns`]'s drop waits for killed processes to disappear.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace, deleted when dropped.
///
/// Drop kills (SIGKILL) every process still inside, waits for them to leave, then
/// runs `ip netns del`. Drop runs during unwinding too, so a panicking test
/// leaves no namespace behind. Interfaces inside (veth ends, VLANs) go with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `cm-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Netns {
        let name = crate::unique_name(role);
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(["link", "set", "dev", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that holds the namespace open.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    ///
    /// `ip netns exec` also gives the program a private mount namespace with
    /// `/sys` remounted, so `/sys/class/net` lists this namespace's interfaces.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// A command that runs `program` inside the namespace's network namespace
    /// only (`nsenter --net`), keeping the host's mount namespace: its `/sys` is
    /// the host's, and so is the BPF filesystem at `/sys/fs/bpf`, where pins
    /// outlive the program (under `ip netns exec` they would not).
    pub fn command_host_mounts(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace; panics with its stderr unless
    /// it exits 0 within the setup timeout. Returns stdout.
    pub fn exec<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args.into_iter();
        let program = args.next().expect("exec needs a program");
        run_checked(self.command(program).args(args))
    }

    /// `ip -n NAME args...`; panics with its stderr unless it exits 0.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets a sysctl inside the namespace (`sysctl -w key=value`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its
    /// result. A panic in `f` is resumed on the caller's thread unchanged.
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        let name = &self.name;
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("in-{name}"))
                .spawn_scoped(s, move || {
                    // SAFETY: `file` is an open namespace file; setns only changes
                    // this thread's network namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert!(
                        rc == 0,
                        "setns({name}, CLONE_NEWNET): {}",
                        std::io::Error::last_os_error()
                    );
                    drop(file);
                    f()
                })
                .expect("spawn namespace thread");
            match handle.join() {
                Ok(value) => value,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// Pids of the processes whose network namespace is this one
    /// (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", &self.name]);
        let out = output_with_timeout(&mut cmd, SETUP_TIMEOUT);
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kills (SIGKILL) every process inside and waits until none is left.
    /// Returns the pids still there after the timeout.
    fn kill_all(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let deadline = Instant::now() + REAP_TIMEOUT;
        loop {
            let pids: Vec<i32> = self.pids().into_iter().filter(|&p| p != me).collect();
            if pids.is_empty() || Instant::now() >= deadline {
                return pids;
            }
            for &pid in &pids {
                // SAFETY: kill has no memory-safety preconditions. The pid is a
                // process inside a namespace this guard created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let left = self.kill_all();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &self.name]);
        let what = describe(&cmd);
        let out = output_with_timeout(&mut cmd, SETUP_TIMEOUT);
        if out.status.success() && left.is_empty() {
            return;
        }
        let msg = format!(
            "tearing down namespace {}: `{what}` {} ({}); processes left inside: {left:?}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
        );
        if thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}
