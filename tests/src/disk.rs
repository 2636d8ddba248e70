//! A small disk for the disk-full tests: a tmpfs of a given size mounted on
//! a fresh scratch directory (in the host's mount namespace, before the
//! daemon starts, so the daemon sees it), filled on demand, and unmounted
//! when dropped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_checked;
use crate::workdir::WorkDir;

/// A mounted tmpfs; unmounted (lazily, should a process still use it) on drop.
#[derive(Debug)]
pub struct SmallDisk {
    dir: WorkDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `4m`) on a new
    /// scratch directory.
    pub fn mount(role: &str, size: &str) -> SmallDisk {
        let dir = WorkDir::new(role);
        let path = dir.path().display().to_string();
        let options = format!("size={size}");
        run_checked(Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs", &path]));
        SmallDisk { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free.
    pub fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes())
            .expect("no NUL in the path");
        // SAFETY: statvfs writes into the zeroed struct we pass.
        let stat = unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            let rc = libc::statvfs(path.as_ptr(), &mut stat);
            assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
            stat
        };
        stat.f_bavail * stat.f_frsize
    }

    /// Writes a file of zeros (`filler`) until only `leave` bytes are free;
    /// returns its path. Deleting it frees the space again.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let block = vec![0u8; 64 << 10];
        while self.free() > leave {
            let n = (self.free() - leave).min(block.len() as u64) as usize;
            file.write_all(&block[..n])
                .unwrap_or_else(|e| panic!("fill {}: {e}", path.display()));
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let path = self.path().display().to_string();
        let unmounted = Command::new("umount").args(["-l", &path]).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            eprintln!("warning: could not unmount {path}");
        }
    }
}
