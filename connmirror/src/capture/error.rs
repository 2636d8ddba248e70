//! [`CaptureError`], every way loading, attaching or reading the capture
//! programs fails, and the helpers that wrap aya's errors with what failed.

use std::path::PathBuf;

use aya::{pin::PinError, programs::ProgramError};
use thiserror::Error;

use crate::capture::pinning::PinningError;

/// Failures of loading, attaching or reading the capture programs.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// The process lacks the capabilities to load BPF programs.
    #[error("connmirror mirror needs CAP_BPF and CAP_NET_ADMIN (run as root)")]
    Privilege,
    /// The named interface does not exist.
    #[error("interface \"{0}\" does not exist")]
    NoInterface(String),
    /// The traced programs' log ring (`AYA_LOGS`) could not be opened.
    #[error("opening the eBPF trace log (--trace-ebpf)")]
    TraceLog(#[source] Box<aya_log::Error>),
    /// Looking at the namespace's interfaces and addresses (to choose the
    /// attach points) failed.
    #[error("looking at the interfaces to choose the attach points")]
    Interfaces(#[source] crate::sys::SyscallError),
    /// The ring size is unusable.
    #[error(
        "ring size {size} is invalid: it must be a power of two of at least {min} bytes \
         (a smaller ring cannot hold a burst, so backpressure would stall every flow)"
    )]
    RingSize {
        /// Requested size.
        size: u32,
        /// [`MIN_RING_SIZE`](super::MIN_RING_SIZE).
        min: u32,
    },
    /// Loading the object (maps, BTF, relocations) failed.
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// The verifier or the kernel rejected a program; the error carries the log.
    #[error("loading program {program} failed")]
    Program {
        /// Program name.
        program: &'static str,
        /// The kernel's answer, with the verifier log when there is one.
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to {iface} ({mode}) failed")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        iface: String,
        /// Attach point and mode.
        mode: &'static str,
        /// The kernel's answer.
        #[source]
        source: Box<ProgramError>,
    },
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map the programs need is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The pinned instance cannot be used (see [`PinningError`]).
    #[error(transparent)]
    Pinning(#[from] PinningError),
    /// A pinned link could not be opened, taken over or pinned.
    #[error("{what} the pinned {hook} link of {iface} failed")]
    Link {
        /// Interface name.
        iface: String,
        /// Attach point.
        hook: &'static str,
        /// `opening`, `taking over`, `pinning`.
        what: &'static str,
        /// aya's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A program could not be pinned.
    #[error("pinning program {program} at {} failed", .path.display())]
    ProgramPin {
        /// Program name.
        program: &'static str,
        /// The pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: Box<PinError>,
    },
    /// Reading or writing a map failed.
    #[error("map {map} operation failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

/// Wraps a map failure with the map's name.
pub(super) fn map_error(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map {
        map,
        source: Box::new(source),
    }
}

/// Wraps a program failure (including a verifier rejection and its log) with the program's name.
pub(super) fn program_error(program: &'static str) -> impl FnOnce(ProgramError) -> CaptureError {
    move |source| CaptureError::Program {
        program,
        source: Box::new(source),
    }
}

/// Wraps an attach failure with the program, interface and mode.
pub(super) fn attach_error(
    program: &'static str,
    iface: &str,
    mode: &'static str,
) -> impl FnOnce(ProgramError) -> CaptureError {
    let iface = iface.to_owned();
    move |source| CaptureError::Attach {
        program,
        iface,
        mode,
        source: Box::new(source),
    }
}

/// Wraps a failure to open, take over or pin a link.
pub(super) fn link_error<E: std::error::Error + Send + Sync + 'static>(
    iface: &str,
    hook: &'static str,
    what: &'static str,
) -> impl FnOnce(E) -> CaptureError {
    let iface = iface.to_owned();
    move |source| CaptureError::Link {
        iface,
        hook,
        what,
        source: Box::new(source),
    }
}
