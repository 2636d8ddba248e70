//! The Debian packages the end-to-end tests, demo and benchmarks run.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::host;
use crate::run::{check, step};
use crate::setup::Outcome;

/// Traffic generators, capture and link tools, real servers for the replay tests, `ip netns`, `sysctl`/`pkill`,
/// `mount`/`nsenter`, `promtool` (in `prometheus`) for the metrics tests, `iptables`
/// (on-host `--sync` installs its NFQUEUE rules with it), the font the
/// benchmark plots are labelled with, `protoc` (in `protobuf-compiler`: the
/// etcd client compiles etcd's protocol definitions when the daemon builds)
/// and etcd itself (`etcd-server`, `etcd-client`) for the cluster-mode tests.
pub const PACKAGES: [&str; 15] = [
    "iperf3",
    "memcached",
    "prometheus",
    "redis-server",
    "socat",
    "tcpdump",
    "ethtool",
    "iproute2",
    "procps",
    "util-linux",
    "iptables",
    "fonts-dejavu-core",
    "protobuf-compiler",
    "etcd-server",
    "etcd-client",
];

/// Installs whichever of [`PACKAGES`] are missing; never calls apt when none is.
pub fn ensure() -> Result<Outcome> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(Outcome::AlreadyPresent);
    }
    let list = missing.join(" ");
    if !host::is_root()? {
        bail!(
            "missing Debian packages: {list}; install them as root: \
             sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y {list} \
             (or run `sudo -E cargo xtask setup`)"
        );
    }
    install(&missing)?;
    Ok(Outcome::Installed)
}

/// The packages dpkg does not report as "install ok installed".
fn missing_packages() -> Result<Vec<&'static str>> {
    if check(Command::new("dpkg-query").arg("--version")).is_none() {
        bail!(
            "dpkg-query not found: setup installs packages on Debian/Ubuntu only; \
             install {} with your package manager",
            PACKAGES.join(" ")
        );
    }
    Ok(PACKAGES
        .into_iter()
        .filter(|pkg| !is_installed(pkg))
        .collect())
}

/// Whether dpkg reports `pkg` as "install ok installed".
fn is_installed(pkg: &str) -> bool {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Status}", pkg]);
    check(&mut cmd).is_some_and(|status| status.trim() == "install ok installed")
}

/// `apt-get update` once, then installs `packages` without prompting.
fn install(packages: &[&str]) -> Result<()> {
    step(Command::new("apt-get").arg("update"))
        .context("apt-get update failed; check network access to the Debian mirrors")?;
    step(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| {
        format!(
            "apt-get install {} failed; see its output above",
            packages.join(" ")
        )
    })
}
