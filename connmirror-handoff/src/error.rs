//! What can go wrong on the application's side.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors of [`crate::Application`]: each names the call that failed and the
/// handoff socket it was made on.
#[derive(Debug, Error)]
pub enum Error {
    /// A system call on the handoff socket failed.
    #[error("{call} {}: {error}", .path.display())]
    Syscall {
        /// The call, with what it was made on: `connect to`,
        /// `recvmsg(SCM_RIGHTS) from`, ...
        call: &'static str,
        /// The handoff socket.
        path: PathBuf,
        /// What the call returned.
        error: io::Error,
    },
    /// The daemon refused the application's hello.
    #[error("the daemon at {} refused registration: {reason}", .path.display())]
    Refused {
        /// The handoff socket.
        path: PathBuf,
        /// The daemon's refusal line.
        reason: String,
    },
    /// The daemon sent something this side cannot accept.
    #[error("malformed handoff message from the daemon at {}: {reason}", .path.display())]
    Protocol {
        /// The handoff socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}
