//! Privileges and kernel mounts the eBPF-loading tasks need.
//!
//! No RLIMIT_MEMLOCK change is made: since Linux 5.11 BPF memory is charged to
//! the memory cgroup instead of the memlock limit (this project targets 6.x).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run::step;

/// Where bpffs is mounted; aya pins maps and programs below it.
const BPFFS: &str = "/sys/fs/bpf";

/// Whether this process runs with effective uid 0, from `/proc/self/status`.
pub fn is_root() -> Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status to find the effective uid")?;
    Ok(effective_uid(&status) == Some(0))
}

/// Fails with a message naming `task` and the reason `why` it needs root unless
/// running as root.
pub fn require_root(task: &str, why: &str) -> Result<()> {
    if !is_root()? {
        bail!("cargo xtask {task} must run as root: {why} (try: sudo -E cargo xtask {task})");
    }
    Ok(())
}

/// Mounts bpffs at [`BPFFS`] unless something is mounted there already.
pub fn ensure_bpffs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if is_bpffs_mounted(&mounts) {
        return Ok(());
    }
    step(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).with_context(|| {
        format!("mounting bpffs at {BPFFS} failed; the kernel needs CONFIG_BPF_SYSCALL")
    })
}

/// The effective uid (second field of the `Uid:` line) in a `/proc/<pid>/status` text.
fn effective_uid(status: &str) -> Option<u32> {
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a `/proc/mounts` text has a bpf filesystem mounted at [`BPFFS`].
fn is_bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The effective uid is the second of the four `Uid:` fields.
    #[test]
    fn effective_uid_is_second_field() {
        let status = "Name:\tsudo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
    }

    /// Only a bpf filesystem at /sys/fs/bpf counts as mounted.
    #[test]
    fn bpffs_mount_is_recognised() {
        let sysfs_only = "sysfs /sys sysfs rw 0 0\n";
        let bpffs = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(!is_bpffs_mounted(sysfs_only));
        assert!(is_bpffs_mounted(bpffs));
    }
}
