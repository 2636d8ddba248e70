//! A cache protected by resumption into the standby's own instance: the
//! primary runs an unmodified server (Redis or memcached, [`Server`]) on the
//! service address, the standby runs its own instance of the same server on
//! loopback, and `connmirror standby --resume IP:PORT=MODE:ADDR` continues
//! the service's connections into that instance ([`Resume`]): by live replay,
//! which feeds it every client byte as it is captured, or by replay of the
//! whole recorded history at takeover.
//!
//! Used by the `live` end-to-end tests and by `connmirror-bench resume`, with
//! [`Counter`] clients that pipeline increments of their own keys.
//!
//! [`memory_growth`] is the memory measurement, shared by the test
//! (shortened) and the benchmark (the full 60 s): the standby's resident set
//! while [`MEMORY_CLIENTS`] connections stream, live replay against replay at
//! takeover, whose `=full` retention keeps every byte.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use connmirror::daemon::status::StatusReport;
use connmirror::resume::live::ServiceProtection;

use crate::failover::{
    Program, configure_primary, key_file, standby_command, status_of, with_detection,
};
use crate::mirror::{Mirror, MirrorCommand};
use crate::redis::{Counter, Server};
use crate::topology::{Family, Topology};
use crate::workdir::WorkDir;

/// The service port on the primary.
pub const PORT: u16 = 7000;
/// Where the standby's instance listens, on loopback.
pub const STANDBY_PORT: u16 = 7001;

/// How the standby continues the service's connections into its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// `=live:ADDR`: the instance is fed every client byte as it is captured
    /// and its output compared all along; the service keeps the default
    /// (`unacked`) retention.
    Live,
    /// `=replay:ADDR`: the whole recorded history is replayed into the
    /// instance at takeover, which needs `=full` retention.
    Replay,
}

impl Resume {
    /// The mode's name in `--resume` (`live`, `replay`).
    pub fn name(self) -> &'static str {
        match self {
            Resume::Live => "live",
            Resume::Replay => "replay",
        }
    }
}

/// A primary running a cache server, the standby's instance of it, and the
/// shared key of failure detection.
///
/// Fields drop in declaration order: the servers go before the namespaces,
/// and the key's directory last.
pub struct CacheSetup {
    /// The primary's server, on [`CacheSetup::service`].
    pub primary: Program,
    /// The standby's instance, on [`CacheSetup::app`].
    pub instance: Program,
    /// The server both run.
    pub kind: Server,
    /// The service's address family.
    pub family: Family,
    /// The protected service.
    pub service: SocketAddr,
    /// The standby's instance, on loopback in the standby's namespace.
    pub app: SocketAddr,
    /// client ↔ gateway (standby) ↔ server (primary).
    pub topo: Topology,
    /// The shared key file.
    pub key: PathBuf,
    /// Holds the key file; `role` names it.
    pub dir: WorkDir,
}

impl CacheSetup {
    /// A fresh topology whose primary serves [`PORT`] over `family` with a
    /// `kind` server, and the standby's instance on [`STANDBY_PORT`]; `role`
    /// names the scratch directory.
    pub fn new(family: Family, kind: Server, role: &str) -> CacheSetup {
        CacheSetup::with_servers(family, kind, role, |ns, addr| kind.start(ns, addr))
    }

    /// [`new`](Self::new) with Redis started with `extra` arguments on both
    /// sides ([`crate::redis::server_with`]; `--maxclients 20000`).
    pub fn redis_with(family: Family, role: &str, extra: &[&str]) -> CacheSetup {
        CacheSetup::with_servers(family, Server::Redis, role, |ns, addr| {
            crate::redis::server_with(ns, addr, extra)
        })
    }

    /// [`new`](Self::new), each server (a `kind`) started by `start`.
    fn with_servers(
        family: Family,
        kind: Server,
        role: &str,
        start: impl Fn(&crate::netns::Netns, SocketAddr) -> Program,
    ) -> CacheSetup {
        crate::require_root();
        let dir = WorkDir::new(role);
        let key = key_file(&dir);
        let topo = Topology::new();
        let service = topo.service(family, PORT);
        configure_primary(&topo, family, service);
        let app = match family {
            Family::V4 => SocketAddr::from(([127, 0, 0, 1], STANDBY_PORT)),
            Family::V6 => SocketAddr::from((Ipv6Addr::LOCALHOST, STANDBY_PORT)),
        };
        CacheSetup {
            primary: start(&topo.server, service),
            instance: start(&topo.gateway, app),
            kind,
            family,
            service,
            app,
            topo,
            key,
            dir,
        }
    }

    /// `--service`'s value for `mode`: replay needs the whole history
    /// (`IP:PORT=full`), live replay the default retention (`IP:PORT`).
    pub fn service_arg(&self, mode: Resume) -> String {
        match mode {
            Resume::Live => self.service.to_string(),
            Resume::Replay => format!("{}=full", self.service),
        }
    }

    /// `--resume`'s value: the service resumed by `mode` into the instance.
    pub fn resume_arg(&self, mode: Resume) -> String {
        format!("{}={}:{}", self.service, mode.name(), self.app)
    }

    /// `connmirror standby` for the service ([`standby_command`]), resuming
    /// it by `mode` into the instance; no failure detection.
    pub fn standby_command(&self, mode: Resume) -> MirrorCommand {
        standby_command(&self.topo, &self.service_arg(mode))
            .arg("--resume")
            .arg(&self.resume_arg(mode))
    }

    /// [`standby_command`](Self::standby_command) with failure detection on
    /// ([`with_detection`]): heartbeats from the primary's agent, automatic
    /// takeover when they stop.
    pub fn detecting_standby_command(&self, mode: Resume) -> MirrorCommand {
        with_detection(self.standby_command(mode), self.family, &self.key)
    }

    /// `n` clients from the client namespace, each incrementing its own key
    /// (`prefix-0`, `prefix-1`, ...).
    pub fn counters(&self, n: usize, prefix: &str) -> Vec<Counter> {
        (0..n)
            .map(|i| {
                let key = format!("{prefix}-{i}");
                Counter::start_with(self.kind, &self.topo.client, self.service, &key)
            })
            .collect()
    }

    /// Waits (at most 30 s) until the service's live protection satisfies
    /// `done`, as `connmirror status --json` shows it.
    pub fn wait_live(
        &self,
        standby: &Mirror,
        done: impl Fn(&ServiceProtection) -> bool,
    ) -> ServiceProtection {
        let status = self.wait_status(standby, |status| done(&live_of(status)));
        live_of(&status)
    }

    /// Waits (at most 30 s) until `connmirror status --json` satisfies
    /// `done`; panics with the last status otherwise.
    pub fn wait_status(
        &self,
        standby: &Mirror,
        done: impl Fn(&StatusReport) -> bool,
    ) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = status_of(&self.topo, standby);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "status stayed {status:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The live protection of the (only) service in `status`.
pub fn live_of(status: &StatusReport) -> ServiceProtection {
    status.services[0].live.clone().expect("a live service")
}

/// Connections of [`memory_growth`].
pub const MEMORY_CLIENTS: usize = 100;
/// Their writers' pace: 20 commands each per 100 ms, 20,000 a second in all.
pub const MEMORY_PACE: Duration = Duration::from_millis(100);
/// The keys' shared prefix: with 3 digits after it, each command (`INCR
/// KEY\r\n`) is 210 bytes, about 4.2 MB/s of client bytes in all.
pub const MEMORY_KEY: usize = 200;

/// What [`memory_growth`] measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRun {
    /// The standby's resident set size at each mark, in bytes.
    pub rss: Vec<u64>,
    /// Commands answered over every connection when the last mark was taken.
    pub commands: u64,
}

/// The standby's resident set size (`VmRSS`) at each of `at` (from the
/// clients' start, ascending) while [`MEMORY_CLIENTS`] Redis clients stream
/// through it at [`MEMORY_PACE`], the service resumed by `resume` (live, or
/// replay, which keeps the whole history). Fails unless every client had
/// every command answered and, live, every connection was protected at the
/// end; an interrupt (SIGINT in the benchmark) stops it early.
pub fn memory_growth(family: Family, resume: Resume, at: &[Duration]) -> Result<MemoryRun> {
    let s = CacheSetup::new(family, Server::Redis, "live-memory");
    let command = s.standby_command(resume).without_dumps();
    let standby = Mirror::start(&s.topo.gateway, &command);
    let prefix = "k".repeat(MEMORY_KEY);
    let clients: Vec<Counter> = (0..MEMORY_CLIENTS)
        .map(|i| {
            let key = format!("{prefix}{i:03}");
            Counter::start_paced(Server::Redis, &s.topo.client, s.service, &key, MEMORY_PACE)
        })
        .collect();
    let started = Instant::now();
    let mut rss = Vec::with_capacity(at.len());
    for &mark in at {
        crate::live::sleep(mark.saturating_sub(started.elapsed()))?;
        rss.push(resident_bytes(standby.pid())?);
    }
    let commands = clients.iter().map(Counter::replies).sum();
    let live = (resume == Resume::Live).then(|| s.wait_live(&standby, |_| true));
    let results: Vec<_> = (clients.into_iter())
        .map(|c| c.finish(Duration::from_secs(30)))
        .collect();
    let _ = standby.stop();
    for result in &results {
        result.continued(0).map_err(anyhow::Error::msg)?;
    }
    if let Some(live) = live {
        ensure!(
            live.protected == MEMORY_CLIENTS as u64,
            "{MEMORY_CLIENTS} live connections were not all protected: {live:?}"
        );
    }
    Ok(MemoryRun { rss, commands })
}

/// The resident set size of process `pid` (`VmRSS` in `/proc/PID/status`), in bytes.
pub fn resident_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = (status.lines())
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}:\n{status}"))?;
    Ok(kib << 10)
}
