//! Pinned capture instances (`connmirror mirror --pin NAME`) and what the kernel
//! still holds of connmirror: pins in bpffs and links.
//!
//! bpffs is one per host, not per namespace: a test that pins uses a unique
//! name, and a [`PinnedInstance`] removes the instance on drop, even on panic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray};
use connmirror::capture::pinning::PIN_ROOT;
use connmirror_common::Counter;

use crate::process::output_with_timeout;

/// How long `connmirror mirror --detach-all` may take.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// A pinned instance name unique to this test; on drop, if anything is still
/// pinned under it, `connmirror mirror --detach-all --pin NAME` removes it.
#[derive(Debug)]
pub struct PinnedInstance {
    name: String,
}

impl PinnedInstance {
    /// A fresh unique name (`cm-PID-N-ROLE`); nothing is pinned yet.
    pub fn new(role: &str) -> PinnedInstance {
        PinnedInstance {
            name: crate::unique_name(role),
        }
    }

    /// The instance name, for `--pin`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/sys/fs/bpf/connmirror/NAME`.
    pub fn dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(&self.name)
    }

    /// The file names pinned under the instance, sorted (none when it is gone).
    pub fn files(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return Vec::new();
        };
        let mut files: Vec<String> = entries
            .map(|e| {
                e.expect("read bpffs entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        files.sort();
        files
    }

    /// The kernel ids of the programs pinned under the instance.
    pub fn program_ids(&self) -> BTreeSet<u32> {
        self.files()
            .iter()
            .filter(|file| file.starts_with("prog_"))
            .map(|file| {
                let path = self.dir().join(file);
                aya::programs::ProgramInfo::from_pin(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .id()
            })
            .collect()
    }

    /// The pinned kernel counter `counter`, summed over CPUs: what the
    /// programs counted across every daemon of the instance, and while none ran.
    pub fn counter(&self, counter: Counter) -> u64 {
        let path = self.dir().join("map_COUNTERS");
        let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let map = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let values = map
            .get(&counter.index(), 0)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        values.iter().sum()
    }

    /// Runs `connmirror mirror --detach-all --pin NAME` (bpffs is global, so no
    /// namespace is needed).
    pub fn detach_all(&self) -> Output {
        let mut cmd = Command::new(crate::connmirror_bin());
        cmd.args(["mirror", "--detach-all", "--pin", &self.name]);
        output_with_timeout(&mut cmd, DETACH_TIMEOUT)
    }
}

impl Drop for PinnedInstance {
    fn drop(&mut self) {
        if !self.dir().exists() {
            return;
        }
        let out = self.detach_all();
        if !out.status.success() || self.dir().exists() {
            eprintln!(
                "warning: could not remove the pinned instance {}: {}",
                self.dir().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The instances pinned under `/sys/fs/bpf/connmirror`, by name.
pub fn pinned_instances() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return BTreeSet::new();
    };
    entries
        .map(|e| {
            e.expect("read bpffs entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The ids of the BPF links on the host that run one of `programs` (kernel
/// program ids, e.g. from [`PinnedInstance::program_ids`]). Unlike
/// [`connmirror_links`] this sees only one instance's links, whatever else runs.
pub fn links_running(programs: &BTreeSet<u32>) -> BTreeSet<u32> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|link| programs.contains(&link.program_id()))
        .map(|link| link.id())
        .collect()
}

/// Every BPF link on the host whose program is a connmirror program (kernel
/// program names are cut to 15 bytes, so the prefix `connmirror` is checked),
/// by link id, with the program name.
///
/// A link lives as long as an open file descriptor or a bpffs pin refers to it,
/// so once the processes that made links have exited, a link still listed here
/// is held by a pin: this is how tests see that nothing stayed attached.
pub fn connmirror_links() -> BTreeMap<u32, String> {
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .filter(|(_, name)| name.starts_with("connmirror"))
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter_map(|link| Some((link.id(), names.get(&link.program_id())?.clone())))
        .collect()
}
