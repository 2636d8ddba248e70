//! Pinned capture: programs, links and maps kept in the BPF filesystem so that
//! capture outlives the daemon.
//!
//! A BPF object lives as long as something refers to it: an open file
//! descriptor or a pin, a file in a BPF filesystem (`BPF_OBJ_PIN`, see
//! `Documentation/bpf/` and `kernel/bpf/inode.c` in the kernel tree). A program
//! attached through a `bpf_link` (XDP links, kernel ≥ 5.9; TCX links, kernel ≥
//! 6.6) stays attached while its link lives, so a pinned link keeps capture
//! running after the daemon exits. With `--pin NAME` everything lives under
//! `/sys/fs/bpf/connmirror/NAME/`:
//!
//! | file | object |
//! | --- | --- |
//! | `map_RECORDS`, `map_FLOWS`, `map_SERVICES`, `map_COUNTERS` | the ring buffer, the kernel's flow state, the services, the counters |
//! | `map_LAYOUT` | an empty map whose entry count is the record layout its programs write ([`RECORD_LAYOUT`](connmirror_common::record::RECORD_LAYOUT)) |
//! | `prog_connmirror_xdp`, `prog_connmirror_tc_ingress`, `prog_connmirror_tc_egress` | the programs (those loaded) |
//! | `link_HOOK_IFACE` (`link_tc-ingress_gw-c`, ...) | one link per interface and hook |
//!
//! A daemon started with the same name opens the pinned maps instead of
//! creating new ones, loads its own programs against them, and swaps them into
//! the pinned links with `BPF_LINK_UPDATE`, which replaces a link's program
//! atomically: no segment passes unseen, and a new binary's programs take over
//! from an old one's. While no daemon reads, the ring fills; under the `drop`
//! policy the programs then drop tracked segments, and TCP retransmits them once
//! a reader drains the ring again.
//!
//! bpffs is one per host, not per network namespace, so every instance needs
//! its own name.
//!
//! # Minimum kernel version
//! 6.6 (TCX links; XDP links need 5.9, ring buffers 5.8).

use std::{
    ffi::CString,
    fmt, fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::sys;

/// Where the BPF filesystem is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory holding every pinned instance.
pub const PIN_ROOT: &str = "/sys/fs/bpf/connmirror";
/// The maps a pinned instance keeps. `SCRATCH` is per-packet staging space (a
/// record header) with
/// nothing worth keeping, so each daemon has its own.
pub const PINNED_MAPS: [&str; 5] = ["RECORDS", "FLOWS", "SERVICES", "COUNTERS", "LAYOUT"];
/// The attach points a link pin can name.
pub const HOOKS: [&str; 4] = ["xdp-native", "xdp-generic", "tc-ingress", "tc-egress"];

/// `statfs` magic of the BPF filesystem (`include/uapi/linux/magic.h`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const MAP_PREFIX: &str = "map_";
const PROGRAM_PREFIX: &str = "prog_";
const LINK_PREFIX: &str = "link_";

/// Failures of managing pins.
#[derive(Debug, Error)]
pub enum PinningError {
    /// The instance name cannot be a directory name under [`PIN_ROOT`].
    #[error(
        "pin name {0:?} is invalid: use 1 to 64 letters, digits, '-', '_' or '.', \
         not starting with '.'"
    )]
    Name(String),
    /// No BPF filesystem at [`BPFFS`] in a private mount namespace: one mounted
    /// there would be a new instance that vanishes with the namespace, and the
    /// pins with it.
    #[error(
        "{BPFFS} is not a BPF filesystem in this mount namespace, which is not the \
         host's (`ip netns exec` makes one and remounts /sys): pins made here would \
         vanish when this process exits. Run connmirror in the host's mount namespace \
         (e.g. `nsenter --net=/run/netns/NAME connmirror ...`), or bind-mount the host's \
         {BPFFS} into this one"
    )]
    PrivateMounts,
    /// No BPF filesystem at [`BPFFS`], and mounting one failed.
    #[error(
        "{BPFFS} is not a BPF filesystem and mounting one there failed \
         (mount it with `mount -t bpf bpf {BPFFS}`, or run without --pin)"
    )]
    Mount(#[source] io::Error),
    /// A file operation on a pin failed.
    #[error("{op} {}", .path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The pin or directory.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Another running daemon holds the instance.
    #[error(
        "pinned instance {0} is in use by another running connmirror (one daemon per \
         instance: stop it first, or pick another --pin name)"
    )]
    InUse(String),
    /// A pinned map was made by a binary whose map layout differs from ours.
    #[error(
        "pinned map {map} of instance {name} has {field} {pinned} but this binary \
         expects {expected}: an incompatible connmirror pinned it; remove it first \
         with `connmirror mirror --detach-all --pin {name}`"
    )]
    MapLayout {
        /// Instance name.
        name: String,
        /// Map name.
        map: &'static str,
        /// `key size`, `value size`, `max entries`.
        field: &'static str,
        /// What the pinned map has.
        pinned: u32,
        /// What this binary's programs need.
        expected: u32,
    },
    /// The pinned programs write ring records of another layout than this
    /// binary reads (layout 1: made before layouts were pinned).
    #[error(
        "pinned instance {name} writes ring records of layout {pinned} but this binary \
         reads layout {expected}: an older or newer connmirror pinned it; remove it \
         first with `connmirror mirror --detach-all --pin {name}`"
    )]
    RecordLayout {
        /// Instance name.
        name: String,
        /// The pinned programs' layout.
        pinned: u32,
        /// [`RECORD_LAYOUT`](connmirror_common::record::RECORD_LAYOUT).
        expected: u32,
    },
    /// The pinned ring has another size than asked.
    #[error(
        "pinned instance {name} has a ring of {pinned} bytes but this daemon asks for \
         {asked} (--ring-size); start it with --ring-size {pinned}, or remove the \
         instance first with `connmirror mirror --detach-all --pin {name}`"
    )]
    RingSize {
        /// Instance name.
        name: String,
        /// Size of the pinned ring.
        pinned: u32,
        /// `--ring-size`.
        asked: u32,
    },
    /// The pinned flow map holds another number of flows than asked.
    #[error(
        "pinned instance {name} tracks at most {pinned} flows but this daemon asks for \
         {asked} (--max-flows); start it with --max-flows {pinned}, or remove the \
         instance first with `connmirror mirror --detach-all --pin {name}`"
    )]
    MaxFlows {
        /// Instance name.
        name: String,
        /// Entries of the pinned flow map.
        pinned: u32,
        /// `--max-flows`.
        asked: u32,
    },
    /// The pinned links attach other interfaces or hooks than asked.
    #[error(
        "pinned instance {name} captures on {pinned} but this daemon asks for {asked}; \
         start it with the same --iface, --ingress and --egress, or remove the instance \
         first with `connmirror mirror --detach-all --pin {name}`"
    )]
    Interfaces {
        /// Instance name.
        name: String,
        /// The pinned links, described.
        pinned: String,
        /// The asked attach points, described.
        asked: String,
    },
    /// The pinned services map holds other services than asked.
    #[error(
        "pinned instance {name} tracks {pinned} but this daemon asks for {asked}; \
         start it with the same --service flags in the same order, or remove the \
         instance first with `connmirror mirror --detach-all --pin {name}`"
    )]
    Services {
        /// Instance name.
        name: String,
        /// The pinned services, described.
        pinned: String,
        /// The asked services, described.
        asked: String,
    },
}

/// One pinned link: the hook (one of [`HOOKS`]) on an interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkPin {
    /// Interface name.
    pub iface: String,
    /// Attach point, one of [`HOOKS`].
    pub hook: &'static str,
}

impl LinkPin {
    /// Parses a link pin's file name (`link_HOOK_IFACE`).
    fn parse(file: &str) -> Option<Self> {
        let rest = file.strip_prefix(LINK_PREFIX)?;
        let (hook, iface) = rest.split_once('_')?;
        let hook = HOOKS.into_iter().find(|h| *h == hook)?;
        Some(Self {
            iface: iface.to_owned(),
            hook,
        })
    }
}

impl fmt::Display for LinkPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.iface, self.hook)
    }
}

/// What [`Instance::remove`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Link pins, each detaching its program unless a daemon still holds the link.
    pub links: Vec<LinkPin>,
    /// Program pins.
    pub programs: usize,
    /// Map pins.
    pub maps: usize,
}

/// A pinned instance: the directory `/sys/fs/bpf/connmirror/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    name: String,
    dir: PathBuf,
}

impl Instance {
    /// The instance `name`, checked to be a plain directory name.
    pub fn new(name: &str) -> Result<Self, PinningError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(PinningError::Name(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            dir: Path::new(PIN_ROOT).join(name),
        })
    }

    /// Every instance under [`PIN_ROOT`], by name.
    pub fn all() -> Result<Vec<Self>, PinningError> {
        let root = Path::new(PIN_ROOT);
        let entries = match fs::read_dir(root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error("listing", root, source)),
        };
        let mut instances = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error("listing", root, source))?;
            if let Some(instance) = entry.file_name().to_str().and_then(|n| Self::new(n).ok()) {
                instances.push(instance);
            }
        }
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(instances)
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether anything is pinned for this instance.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Where map `map` is pinned.
    pub fn map_path(&self, map: &str) -> PathBuf {
        self.dir.join(format!("{MAP_PREFIX}{map}"))
    }

    /// Where program `program` is pinned.
    pub fn program_path(&self, program: &str) -> PathBuf {
        self.dir.join(format!("{PROGRAM_PREFIX}{program}"))
    }

    /// Where the link of `hook` on `iface` is pinned.
    pub fn link_path(&self, iface: &str, hook: &str) -> PathBuf {
        self.dir.join(format!("{LINK_PREFIX}{hook}_{iface}"))
    }

    /// Mounts bpffs at [`BPFFS`] if it is not there, and creates the directory.
    pub fn prepare(&self) -> Result<(), PinningError> {
        mount_bpffs()?;
        fs::create_dir_all(&self.dir).map_err(|source| io_error("creating", &self.dir, source))
    }

    /// Locks the instance for this process (`flock` on its directory), so two
    /// daemons never share one ring. The lock goes when the returned file closes,
    /// and with the process. `--detach-all` does not take it: removing the pins
    /// of a running daemon is how it is stopped for good.
    pub fn lock(&self) -> Result<fs::File, PinningError> {
        let dir =
            fs::File::open(&self.dir).map_err(|source| io_error("opening", &self.dir, source))?;
        match sys::fs::try_lock_exclusive(dir.as_fd()) {
            Ok(true) => Ok(dir),
            Ok(false) => Err(PinningError::InUse(self.name.clone())),
            Err(err) => Err(io_error("locking", &self.dir, err.io_error)),
        }
    }

    /// The pinned links, sorted.
    pub fn links(&self) -> Result<Vec<LinkPin>, PinningError> {
        let mut links: Vec<LinkPin> = self
            .files()?
            .iter()
            .filter_map(|file| LinkPin::parse(file))
            .collect();
        links.sort();
        Ok(links)
    }

    /// Unpins everything, links first (so capture stops before its maps go),
    /// then removes the directory, and [`PIN_ROOT`] too once it is empty.
    pub fn remove(&self) -> Result<Removed, PinningError> {
        let files = self.files()?;
        let mut removed = Removed::default();
        for file in &files {
            if let Some(link) = LinkPin::parse(file) {
                self.unpin(file)?;
                removed.links.push(link);
            }
        }
        for file in &files {
            if file.starts_with(PROGRAM_PREFIX) {
                self.unpin(file)?;
                removed.programs += 1;
            } else if file.starts_with(MAP_PREFIX) {
                self.unpin(file)?;
                removed.maps += 1;
            }
        }
        removed.links.sort();
        fs::remove_dir(&self.dir).map_err(|source| io_error("removing", &self.dir, source))?;
        // Another instance may still live there: then the root stays.
        let _ = fs::remove_dir(PIN_ROOT);
        Ok(removed)
    }

    fn unpin(&self, file: &str) -> Result<(), PinningError> {
        let path = self.dir.join(file);
        fs::remove_file(&path).map_err(|source| io_error("unpinning", &path, source))
    }

    /// File names in the instance directory (none when it does not exist).
    fn files(&self) -> Result<Vec<String>, PinningError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error("listing", &self.dir, source)),
        };
        entries
            .map(|entry| {
                entry
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(|source| io_error("listing", &self.dir, source))
            })
            .collect()
    }
}

/// `connmirror mirror --detach-all [--pin NAME]`: removes one instance, or every
/// instance, and writes one line per instance saying what went.
pub fn detach_all(name: Option<&str>, out: &mut impl io::Write) -> anyhow::Result<()> {
    // Under `ip netns exec` the host's pins are out of sight: say so rather
    // than report that nothing is pinned.
    if !is_bpffs() && !in_host_mount_namespace() {
        return Err(PinningError::PrivateMounts.into());
    }
    let instances = match name {
        Some(name) => vec![Instance::new(name)?],
        None => Instance::all()?,
    };
    let instances: Vec<Instance> = instances.into_iter().filter(Instance::exists).collect();
    if instances.is_empty() {
        let place = name.map_or(PIN_ROOT.to_owned(), |n| format!("{PIN_ROOT}/{n}"));
        writeln!(out, "nothing pinned under {place}")?;
        return Ok(());
    }
    for instance in instances {
        let removed = instance.remove()?;
        writeln!(out, "{}", describe_removed(&instance, &removed))?;
    }
    Ok(())
}

/// `removed /sys/fs/bpf/connmirror/NAME: 2 links (gw-c tc-ingress, ...), 1 program, 4 maps`.
fn describe_removed(instance: &Instance, removed: &Removed) -> String {
    let Removed {
        links,
        programs,
        maps,
    } = removed;
    let links_text: Vec<String> = links.iter().map(ToString::to_string).collect();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut text = format!(
        "removed {}: {}",
        instance.dir.display(),
        plural(links.len(), "link")
    );
    if !links.is_empty() {
        text.push_str(&format!(" ({})", links_text.join(", ")));
    }
    text.push_str(&format!(
        ", {}, {}",
        plural(*programs, "program"),
        plural(*maps, "map")
    ));
    text
}

/// Mounts bpffs at [`BPFFS`] unless one is already there. Each mount of bpffs
/// is a new, empty instance, so this is only done in the host's mount
/// namespace (PID 1's), where the mount, and the pins, outlive this process.
fn mount_bpffs() -> Result<(), PinningError> {
    if is_bpffs() {
        return Ok(());
    }
    if !in_host_mount_namespace() {
        return Err(PinningError::PrivateMounts);
    }
    let path = CString::new(BPFFS).expect("no NUL in BPFFS");
    sys::fs::mount_bpffs(&path).map_err(|e| PinningError::Mount(e.io_error))?;
    tracing::info!(path = BPFFS, "mounted the BPF filesystem");
    Ok(())
}

/// Whether a BPF filesystem is mounted at [`BPFFS`].
fn is_bpffs() -> bool {
    let path = CString::new(BPFFS).expect("no NUL in BPFFS");
    sys::fs::filesystem_type(&path).is_ok_and(|kind| kind == BPF_FS_MAGIC)
}

/// Whether this process shares PID 1's mount namespace.
fn in_host_mount_namespace() -> bool {
    let namespace = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    namespace("self") == namespace("1")
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> PinningError {
    PinningError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain_directory_names() {
        assert!(Instance::new("restart-1.a_b").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(
                Instance::new(bad).unwrap_err().to_string(),
                format!(
                    "pin name {bad:?} is invalid: use 1 to 64 letters, digits, '-', '_' or \
                     '.', not starting with '.'"
                )
            );
        }
    }

    #[test]
    fn link_pins_name_their_hook_and_interface() {
        let instance = Instance::new("x").unwrap();
        let path = instance.link_path("gw_c.10", "tc-egress");
        assert_eq!(
            path,
            Path::new("/sys/fs/bpf/connmirror/x/link_tc-egress_gw_c.10")
        );
        let file = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            LinkPin::parse(file),
            Some(LinkPin {
                iface: "gw_c.10".to_owned(),
                hook: "tc-egress"
            })
        );
        assert_eq!(LinkPin::parse("link_tc-sideways_gw"), None);
        assert_eq!(LinkPin::parse("map_RECORDS"), None);
    }

    #[test]
    fn removal_is_described_in_one_line() {
        let instance = Instance::new("r").unwrap();
        let removed = Removed {
            links: vec![
                LinkPin {
                    iface: "gw-c".to_owned(),
                    hook: "tc-ingress",
                },
                LinkPin {
                    iface: "gw-c".to_owned(),
                    hook: "tc-egress",
                },
            ],
            programs: 1,
            maps: 4,
        };
        assert_eq!(
            describe_removed(&instance, &removed),
            "removed /sys/fs/bpf/connmirror/r: 2 links (gw-c tc-ingress, gw-c tc-egress), \
             1 program, 4 maps"
        );
    }
}
