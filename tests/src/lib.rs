//! End-to-end test fixtures for connmirror.
//!
//! The tests build a small network out of Linux network namespaces joined by veth
//! pairs (see `ip-netns(8)`, `veth(4)`), run the `connmirror` binary in the gateway
//! namespace, push exact data through it and compare what the mirror dumped with
//! what was sent.
//!
//! The pieces, one module per concept:
//! - [`netns`]: [`Netns`], a namespace that is deleted (its processes killed first)
//!   when the guard drops, even while a test panics.
//! - [`topology`]: [`Topology`], client ↔ gateway ↔ server, IPv4 and IPv6, with an
//!   optional 802.1Q tag on the client link.
//! - [`mirror`]: [`Mirror`], the `connmirror mirror` process under test, and the
//!   [`Report`] it writes on shutdown.
//! - [`traffic`]: [`bidirectional`], exact-data streams both ways at once.
//! - [`vlan`]: 802.1Q tagging of a link by TC programs (the test kernel has no
//!   VLAN driver).
//! - [`digest`]: [`Digest`], a SHA-256 with a readable `Debug`.
//! - [`churn`]: short connections at a paced rate and many idle ones, from
//!   several client addresses, against a real Redis.
//! - [`soak`]: the chaos soak, failover after failover with faults between.
//! - [`disk`]: [`disk::SmallDisk`], a small tmpfs to fill, for the disk-full tests.
//! - [`cache`]: a primary serving a real cache server (Redis, memcached) and the
//!   standby's own instance of it, resumed by live replay or by replay; shared
//!   by the `live` tests and `connmirror-bench resume`.
//! - For `connmirror-bench`: [`tcpdump`] (`tcpdump -w` as the everyday
//!   alternative), [`results`] (each area's results as JSON and the
//!   `bench/RESULTS.md` page), [`plots`] (its PNG plots) and [`splice`] (relaying
//!   a resumed connection, splice(2) against a userspace copy).
//!
//! Every test needs root (namespaces, eBPF) and fails, never skips, without it:
//! call [`require_root`] first. Tests that run the binary find it through
//! [`connmirror_bin`] (`CONNMIRROR_BIN`, set by `cargo xtask test`).
//!
//! Nothing here talks to an address outside 198.18.0.0/15 or fd00::/8, and those
//! addresses exist only inside namespaces the fixtures create.

pub mod bench;
pub mod cache;
pub mod churn;
pub mod digest;
pub mod disk;
pub mod echo;
pub mod etcd;
pub mod failover;
pub mod fuzzing;
pub mod inject;
pub mod journal;
pub mod kills;
pub mod lan;
pub mod live;
pub mod metrics;
pub mod mirror;
pub mod netns;
pub mod onhost;
pub mod pinning;
pub mod plots;
pub mod process;
pub mod redis;
pub mod repair;
pub mod results;
pub mod soak;
pub mod splice;
pub mod tcpdump;
pub mod topology;
pub mod traffic;
pub mod vlan;
pub mod wire;
pub mod workdir;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub use digest::Digest;
pub use mirror::{Mirror, MirrorCommand, MirrorExit, Report};
pub use netns::Netns;
pub use topology::{Family, Topology};
pub use traffic::{Exchange, Peer, bidirectional};
pub use workdir::WorkDir;

/// The message every end-to-end test fails with when it is not run as root.
pub const NEED_ROOT: &str = "end-to-end tests need root (network namespaces, eBPF); run them through: sudo -E cargo xtask test";

/// Panics with [`NEED_ROOT`] unless the effective uid is 0.
///
/// End-to-end tests must fail, not skip, when they cannot run: a skipped test
/// looks like a passing one in a summary.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "{NEED_ROOT}");
}

/// The `connmirror` binary under test, from `CONNMIRROR_BIN`.
///
/// Panics if the variable is unset or does not name a file.
pub fn connmirror_bin() -> PathBuf {
    binary_from_env("CONNMIRROR_BIN")
}

/// [`require_root`], then [`connmirror_bin`]: what a test that runs the daemon
/// checks first, so a misconfigured run fails with the reason rather than
/// somewhere in the setup.
pub fn require_root_and_bin() {
    require_root();
    connmirror_bin();
}

/// The file that environment variable `var` names (cargo xtask sets it).
///
/// Panics if the variable is unset or does not name a file.
pub fn binary_from_env(var: &str) -> PathBuf {
    let Some(bin) = std::env::var_os(var) else {
        panic!("{var} is not set: run the end-to-end tests through cargo xtask test");
    };
    let bin = PathBuf::from(bin);
    assert!(
        bin.is_file(),
        "{var}={} is not a file: run the end-to-end tests through cargo xtask test",
        bin.display()
    );
    bin
}

/// A name unique to this process and call: `cm-<pid>-<counter>-<role>`.
///
/// Used for namespaces and scratch directories, so that concurrent test
/// processes (and tests within one process) never collide.
pub fn unique_name(role: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("cm-{}-{n}-{role}", std::process::id())
}
