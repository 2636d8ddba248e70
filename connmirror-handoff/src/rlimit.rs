//! The open-file limit: one descriptor per handed-over connection.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) to its hard limit
/// and returns the new soft limit. Every restored connection is a file
/// descriptor, and the usual soft limit (1,024) is far below the thousands of
/// connections a takeover rebuilds; see getrlimit(2). Both the daemon and
/// applications receiving handoffs call it at start.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let failed = |call: &'static str| {
        move |errno: nix::errno::Errno| {
            let error = io::Error::from(errno);
            io::Error::new(error.kind(), format!("{call}(RLIMIT_NOFILE): {error}"))
        }
    };
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(failed("getrlimit"))?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(failed("setrlimit"))?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let raised = super::raise_open_files_limit().expect("raise RLIMIT_NOFILE");
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .expect("getrlimit");
        assert_eq!((soft, hard), (raised, raised));
    }
}
