//! Where things are in this workspace: its root, the cargo to run, the daemon binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root: the parent of this crate's manifest directory.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// A `cargo` command that runs in the workspace root.
///
/// Uses the cargo that launched `cargo xtask` (`$CARGO`) so the same toolchain
/// builds everything, falling back to `cargo` on PATH.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root());
    cmd
}

/// The cargo profile a build uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `--release`: what tests, demo and benchmarks run.
    Release,
    /// The default `dev` profile, output in `target/debug`.
    Debug,
}

impl Profile {
    /// `Debug` when `debug` is set, else `Release`.
    pub fn from_debug(debug: bool) -> Self {
        if debug {
            Profile::Debug
        } else {
            Profile::Release
        }
    }

    /// The cargo arguments that select this profile.
    pub fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Profile::Release => &["--release"],
            Profile::Debug => &[],
        }
    }

    /// The directory under the target directory that holds this profile's output.
    fn dir_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// The absolute path of the `connmirror` binary a build with `profile` produces.
///
/// Honours `CARGO_TARGET_DIR`; a relative one is taken from the workspace root,
/// where every cargo command of xtask runs.
pub fn daemon_binary(profile: Profile) -> PathBuf {
    target_dir(profile).join("connmirror")
}

/// The echo example application (`connmirror-handoff/examples/echo.rs`) built with `profile`.
pub fn echo_example(profile: Profile) -> PathBuf {
    target_dir(profile).join("examples").join("echo")
}

fn target_dir(profile: Profile) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root().join(dir))
        .unwrap_or_else(|| root().join("target"));
    target.join(profile.dir_name())
}
