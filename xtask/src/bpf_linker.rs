//! bpf-linker 0.13.0, built against nightly rustc's own LLVM.
//!
//! rustc emits LLVM bitcode for the bpf target and bpf-linker links it with an
//! LLVM of the same major version. Rather than a system LLVM, we link the
//! `libLLVM.so.<major>.<minor>-rust-<version>-nightly` shipped in nightly's
//! sysroot: bpf-linker's build looks for `$LLVM_PREFIX/lib/libLLVM.so`, so a
//! prefix directory with that one symlink is enough. An rpath to nightly's lib
//! directory lets the installed binary find the library without LD_LIBRARY_PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build_env::{BuildEnv, home_dir};
use crate::run::{check, step};
use crate::setup::Outcome;

/// The bpf-linker release we install and check for.
pub const VERSION: &str = "0.13.0";

/// The LLVM major version bpf-linker is built for (its `llvm-<major>` feature);
/// it must match the LLVM in nightly's sysroot.
const LLVM_MAJOR: u32 = 22;

/// Makes sure `bpf-linker --version` reports [`VERSION`], installing it if not.
pub fn ensure(env: &BuildEnv) -> Result<Outcome> {
    if is_installed(env)? {
        return Ok(Outcome::AlreadyPresent);
    }
    install(env)?;
    if !is_installed(env)? {
        bail!(
            "bpf-linker {VERSION} was installed but `bpf-linker --version` still fails; \
             run it with LD_LIBRARY_PATH={} to see why",
            env.nightly_lib().display()
        );
    }
    Ok(Outcome::Installed)
}

/// Whether `bpf-linker --version`, run as builds run it, prints [`VERSION`].
fn is_installed(env: &BuildEnv) -> Result<bool> {
    let mut cmd = Command::new("bpf-linker");
    env.apply(cmd.arg("--version"))?;
    let version = check(&mut cmd).unwrap_or_default();
    Ok(version.split_whitespace().any(|word| word == VERSION))
}

/// Links nightly's libLLVM into a prefix and `cargo install`s bpf-linker against it.
fn install(env: &BuildEnv) -> Result<()> {
    let prefix = llvm_prefix()?;
    link_libllvm(env.nightly_lib(), &prefix)?;
    let rpath = format!("-C link-arg=-Wl,-rpath,{}", env.nightly_lib().display());
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        VERSION,
        "--locked",
        "--force",
    ])
    .args([
        "--no-default-features",
        "--features",
        &format!("llvm-{LLVM_MAJOR}"),
    ])
    .env("LLVM_PREFIX", &prefix)
    .env("RUSTFLAGS", rpath);
    step(env.apply(&mut cmd)?).context(
        "building bpf-linker failed; it needs a C toolchain (Debian: apt-get install build-essential) \
         and nightly's libLLVM; see the compiler output above",
    )
}

/// `$HOME/.local/share/connmirror/llvm`: the LLVM prefix bpf-linker builds against.
fn llvm_prefix() -> Result<PathBuf> {
    Ok(home_dir()?.join(".local/share/connmirror/llvm"))
}

/// Points `<prefix>/lib/libLLVM.so` at nightly's libLLVM, replacing an old link.
fn link_libllvm(nightly_lib: &Path, prefix: &Path) -> Result<()> {
    let target = find_libllvm(nightly_lib)?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("removing old {}", link.display()))?;
    }
    println!("==> ln -s {} {}", target.display(), link.display());
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// The `libLLVM.so.*` file in nightly's lib directory, checked to be LLVM [`LLVM_MAJOR`].
fn find_libllvm(nightly_lib: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(nightly_lib)
        .with_context(|| format!("listing {}", nightly_lib.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", nightly_lib.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let Some(name) = names.iter().find(|name| name.starts_with("libLLVM.so.")) else {
        bail!(
            "no libLLVM.so.* in {}; reinstall nightly with `rustup toolchain install nightly --force`",
            nightly_lib.display()
        );
    };
    check_llvm_major(name)?;
    Ok(nightly_lib.join(name))
}

/// Fails unless `name` (`libLLVM.so.22.1-rust-…`) is LLVM [`LLVM_MAJOR`].
fn check_llvm_major(name: &str) -> Result<()> {
    let major = name
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|major| major.parse::<u32>().ok());
    if major != Some(LLVM_MAJOR) {
        bail!(
            "nightly ships {name}, but bpf-linker {VERSION} is built here for LLVM {LLVM_MAJOR}; \
             update LLVM_MAJOR/VERSION in xtask/src/bpf_linker.rs to a bpf-linker that supports it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The LLVM major is read from the soname-style file name.
    #[test]
    fn llvm_major_is_parsed_from_file_name() {
        assert!(check_llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").is_ok());
        assert!(check_llvm_major("libLLVM.so.23.1-rust-1.99.0-nightly").is_err());
        assert!(check_llvm_major("libLLVM.so.garbage").is_err());
    }
}
