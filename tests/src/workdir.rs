//! Scratch directories that clean up after themselves.

use std::path::{Path, PathBuf};

/// Set this variable to keep scratch directories (dumps, reports, mirror logs)
/// after a test, for debugging. Their paths are printed on drop.
pub const KEEP_ENV: &str = "CONNMIRROR_TEST_KEEP";

/// A directory under the system temp dir, removed with its contents on drop
/// unless [`KEEP_ENV`] is set.
///
/// Dumps of the 200 MB tests are large (400 MB per test), so they are removed
/// even when the test fails; set [`KEEP_ENV`] to look at them.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `$TMPDIR/connmirror-tests/<unique name>`.
    pub fn new(role: &str) -> WorkDir {
        let path = std::env::temp_dir()
            .join("connmirror-tests")
            .join(crate::unique_name(role));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        WorkDir { path }
    }

    /// The directory's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let Self { path } = self;
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("{KEEP_ENV} is set: keeping {}", path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&*path) {
            eprintln!("warning: could not remove {}: {e}", path.display());
        }
    }
}
