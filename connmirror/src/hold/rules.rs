//! The netfilter rules that send a protected flow's outgoing segments to
//! the agent's queue: one chain per family in the `mangle` table, jumped to
//! first from `POSTROUTING`, holding one rule:
//!
//! ```text
//! -A CONNMIRROR-SYNC-<queue>-<pid> -p tcp -m bpf --object-pinned <pin> -j NFQUEUE --queue-num <queue>
//! ```
//!
//! The `bpf` match runs the capture's hold program (capture, then "match"
//! the segments to hold). `NFQUEUE` is used without `--queue-bypass`: while
//! no agent has the queue bound, the kernel drops the matched segments, so
//! an agent that dies holds everything back (TCP resends it once a new
//! agent runs) instead of letting unreplicated segments out.
//!
//! The rule needs the program pinned only while it is added (the rule keeps
//! the program), so it is pinned in a BPF filesystem mounted for the
//! purpose and unmounted again: this works in the host's mount namespace
//! and in the private one `ip netns exec` makes alike. The rules are added
//! and removed with `iptables` and `ip6tables`. A chain an agent that died
//! left behind (same queue, another pid) is removed once the new chain is
//! in front of it, so no segment passes unheld in between.

use std::{
    ffi::CString,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    capture::Capture,
    hold::HoldError,
    sys::{self, SyscallError},
};

/// The tools, one per family.
const TOOLS: [&str; 2] = ["iptables", "ip6tables"];

/// Every chain's name starts so; the queue and the agent's pid follow.
const CHAIN_PREFIX: &str = "CONNMIRROR-SYNC-";

/// The installed rules; dropping them ([`Rules::remove`]) takes them out,
/// unless [`Rules::keep`] kept them.
#[derive(Debug)]
pub struct Rules {
    chain: String,
    keep: bool,
}

impl Rules {
    /// Installs the chains for queue `queue`, then removes stale ones.
    pub fn install(capture: &mut Capture, queue: u16) -> Result<Rules, HoldError> {
        let prefix = format!("{CHAIN_PREFIX}{queue}-");
        let rules = Rules {
            chain: format!("{prefix}{}", std::process::id()),
            keep: false,
        };
        let mount = Mount::new()?;
        let pin = mount.dir.join("hold");
        capture.pin_hold(&pin)?;
        for tool in TOOLS {
            remove_chain(tool, &rules.chain);
            rules.add(tool, &pin, queue)?;
            for stale in chains(tool, &prefix)? {
                if stale != rules.chain {
                    tracing::info!(chain = stale, "--sync: removing a stale chain");
                    remove_chain(tool, &stale);
                }
            }
        }
        Ok(rules)
    }

    fn add(&self, tool: &'static str, pin: &Path, queue: u16) -> Result<(), HoldError> {
        let chain = self.chain.as_str();
        let (pin, queue) = (pin.to_string_lossy(), queue.to_string());
        let rule = [
            "-A",
            chain,
            "-p",
            "tcp",
            "-m",
            "bpf",
            "--object-pinned",
            &pin,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
        ];
        iptables(tool, &["-N", chain])?;
        iptables(tool, &rule)?;
        iptables(tool, &["-I", "POSTROUTING", "1", "-j", chain]).map(drop)
    }

    /// Takes the chains out: from now on segments go unheld.
    pub fn remove(self) {}

    /// Leaves the chains in place when this process ends, for the agent that
    /// takes its pinned capture over (it replaces them); meanwhile the
    /// kernel drops what they match.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for tool in TOOLS {
            remove_chain(tool, &self.chain);
        }
    }
}

/// Removes the chains of agents that no longer run (in this network
/// namespace, any queue), writing a line on `out` for each: `--detach-all`
/// runs it, since such chains drop the services' outgoing segments until an
/// agent replaces them. Nothing to do where `iptables` is not installed.
pub fn remove_orphaned(out: &mut impl std::io::Write) -> Result<(), HoldError> {
    for tool in TOOLS {
        let found = match chains(tool, CHAIN_PREFIX) {
            Ok(found) => found,
            Err(HoldError::Tool { source, .. }) if source.kind() == ErrorKind::NotFound => {
                continue;
            }
            Err(err) => return Err(err),
        };
        for chain in found.iter().filter(|chain| !agent_runs(chain)) {
            remove_chain(tool, chain);
            writeln!(
                out,
                "removed {tool} chain {chain} of an agent no longer running: \
                 its services' segments go out unheld"
            )
            .map_err(|source| HoldError::Io {
                what: "writing to stdout".into(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Whether the agent that named `chain` (`...-<pid>`) still runs.
fn agent_runs(chain: &str) -> bool {
    let pid = chain.rsplit('-').next().unwrap_or_default();
    pid.parse::<u32>()
        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes `chain` and the jump to it, if they are there.
fn remove_chain(tool: &'static str, chain: &str) {
    if iptables(tool, &["-S", chain]).is_err() {
        return;
    }
    for args in [
        &["-D", "POSTROUTING", "-j", chain][..],
        &["-F", chain],
        &["-X", chain],
    ] {
        if let Err(err) = iptables(tool, args) {
            tracing::warn!("removing the --sync rules: {err}");
        }
    }
}

/// The `mangle` chains whose names start with `prefix`.
fn chains(tool: &'static str, prefix: &str) -> Result<Vec<String>, HoldError> {
    let listing = iptables(tool, &["-S"])?;
    let name = |line: &str| line.strip_prefix("-N ").map(str::to_owned);
    Ok((listing.lines())
        .filter_map(name)
        .filter(|chain| chain.starts_with(prefix))
        .collect())
}

/// Runs `tool -w -t mangle ARGS`; its output.
fn iptables(tool: &'static str, args: &[&str]) -> Result<String, HoldError> {
    let output = Command::new(tool)
        .args(["-w", "-t", "mangle"])
        .args(args)
        .output()
        .map_err(|source| HoldError::Tool { tool, source })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(HoldError::Rule {
        command: format!("{tool} -w -t mangle {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// A BPF filesystem mounted on a fresh directory for as long as it lives.
struct Mount {
    dir: PathBuf,
    target: CString,
}

impl Mount {
    fn new() -> Result<Mount, HoldError> {
        let dir = std::env::temp_dir().join(format!("connmirror-hold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| HoldError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let target =
            CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| bad_path(&dir))?;
        if let Err(err) = sys::fs::mount_bpffs(&target) {
            let _ = std::fs::remove_dir(&dir);
            return Err(HoldError::Bpffs(err));
        }
        Ok(Mount { dir, target })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(err) = sys::fs::unmount(&self.target) {
            tracing::warn!("unmounting {}: {err}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn bad_path(dir: &Path) -> HoldError {
    HoldError::Bpffs(SyscallError {
        call: "mount(bpf)",
        io_error: std::io::Error::other(format!("{} holds a NUL byte", dir.display())),
    })
}
