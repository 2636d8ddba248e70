//! Attaching the capture programs to interfaces (XDP or TCX ingress, TCX
//! egress), taking over the links of a pinned instance, detaching, and running
//! a program once on a frame (`BPF_PROG_TEST_RUN`).

use std::path::{Path, PathBuf};

use aya::{
    pin::PinError,
    programs::{
        ProgramError, SchedClassifier, SocketFilter, TcAttachType, TestRun as _, TestRunOptions,
        Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use connmirror_common::Hook;

use crate::capture::{
    Capture, CaptureError, EgressHook, IngressHook, Pins,
    error::{attach_error, link_error, program_error},
};

impl Capture {
    /// Attaches the programs to `iface` as asked; returns how ingress was
    /// attached. [`Capture::plan`] resolves `auto` first; left unresolved, it
    /// attaches as `xdp` ingress and `tc` egress, the defaults before it.
    pub fn attach(
        &mut self,
        iface: &str,
        ingress: IngressHook,
        egress: EgressHook,
    ) -> Result<&'static str, CaptureError> {
        if !interface_exists(iface) {
            return Err(CaptureError::NoInterface(iface.to_owned()));
        }
        let ingress_mode = match ingress {
            IngressHook::Xdp | IngressHook::Auto => match self.pinned_xdp_mode(iface) {
                Some(mode) => self.attach_xdp(iface, mode)?,
                None => self.attach_xdp_auto(iface)?,
            },
            IngressHook::XdpNative => self.attach_xdp(iface, XdpMode::Driver)?,
            IngressHook::XdpGeneric => self.attach_xdp(iface, XdpMode::Skb)?,
            IngressHook::Tc => self.attach_tc(iface, TcAttachType::Ingress)?,
            IngressHook::None => "none",
        };
        if matches!(egress, EgressHook::Tc | EgressHook::Auto) {
            self.attach_tc(iface, TcAttachType::Egress)?;
        }
        Ok(ingress_mode)
    }

    /// Attaches XDP in driver mode, falling back to generic mode where the
    /// driver lacks it.
    fn attach_xdp_auto(&mut self, iface: &str) -> Result<&'static str, CaptureError> {
        match self.attach_xdp(iface, XdpMode::Driver) {
            Ok(mode) => {
                if is_virtual(iface) {
                    tracing::warn!(
                        iface,
                        "native XDP on a virtual link turns TSO off on its peer and \
                         costs most of the throughput; prefer --iface {iface}:xdp-generic \
                         or --iface {iface}:tc"
                    );
                }
                Ok(mode)
            }
            Err(err) => {
                tracing::warn!(iface, error = %err, "native XDP unavailable, using generic XDP");
                self.attach_xdp(iface, XdpMode::Skb)
            }
        }
    }

    /// The mode of an XDP link pinned for `iface`, if there is one.
    fn pinned_xdp_mode(&self, iface: &str) -> Option<XdpMode> {
        let Pins { instance, .. } = self.pins.as_ref()?;
        [
            ("xdp-native", XdpMode::Driver),
            ("xdp-generic", XdpMode::Skb),
        ]
        .into_iter()
        .find(|(hook, _)| instance.link_path(iface, hook).exists())
        .map(|(_, mode)| mode)
    }

    /// Attaches XDP to `iface` in `mode`.
    fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<&'static str, CaptureError> {
        let hook = match mode {
            XdpMode::Skb => "xdp-generic",
            _ => "xdp-native",
        };
        self.attach_program::<Xdp>(self.programs().xdp, iface, hook, mode)
    }

    /// Attaches TC (TCX) for `attach_type`.
    fn attach_tc(
        &mut self,
        iface: &str,
        attach_type: TcAttachType,
    ) -> Result<&'static str, CaptureError> {
        let programs = self.programs();
        let (name, hook) = match attach_type {
            TcAttachType::Egress => (programs.tc_egress, "tc-egress"),
            _ => (programs.tc_ingress, "tc-ingress"),
        };
        self.attach_program::<SchedClassifier>(name, iface, hook, attach_type)
    }

    /// Attaches program `name` to `iface` at `point`, or with pins, takes over
    /// the link pinned for `hook` (the program is swapped in atomically; a
    /// severed link is replaced) or pins the new one. Returns `hook`.
    fn attach_program<P>(
        &mut self,
        name: &'static str,
        iface: &str,
        hook: &'static str,
        point: P::Point,
    ) -> Result<&'static str, CaptureError>
    where
        for<'p> &'p mut P: TryFrom<&'p mut aya::programs::Program, Error = ProgramError>,
        P: Attachable,
    {
        let pinned = self.open_pinned_link(iface, hook)?;
        let pinning = self.pins.is_some();
        let link = {
            let program: &mut P = self.program(name)?;
            let id = match pinned {
                Some((link, path)) => {
                    let link =
                        P::Link::try_from(link).map_err(link_error(iface, hook, "taking over"))?;
                    match program.attach_to(link) {
                        Err(err) if severed(&err) => {
                            unpin_severed(&path, iface, hook)?;
                            program.attach_at(iface, point)
                        }
                        result => result,
                    }
                }
                None => program.attach_at(iface, point),
            }
            .map_err(attach_error(name, iface, hook))?;
            if !pinning {
                return Ok(hook);
            }
            program
                .take_fd_link(id)
                .map_err(attach_error(name, iface, hook))?
                .map_err(link_error(iface, hook, "pinning"))?
        };
        self.keep_link(iface, hook, link)?;
        Ok(hook)
    }

    /// The link pinned for `hook` on `iface` and its pin path, when pinning and
    /// there is one.
    fn open_pinned_link(
        &self,
        iface: &str,
        hook: &'static str,
    ) -> Result<Option<(FdLink, PathBuf)>, CaptureError> {
        let Some(Pins { instance, .. }) = &self.pins else {
            return Ok(None);
        };
        let path = instance.link_path(iface, hook);
        if !path.exists() {
            return Ok(None);
        }
        let link = PinnedLink::from_pin(&path).map_err(link_error(iface, hook, "opening"))?;
        tracing::info!(iface, hook, path = %path.display(), "taking over the pinned link");
        Ok(Some((FdLink::from(link), path)))
    }

    /// Holds `link` for as long as this capture lives, pinning it first unless
    /// it came from its pin.
    fn keep_link(
        &mut self,
        iface: &str,
        hook: &'static str,
        link: FdLink,
    ) -> Result<(), CaptureError> {
        let Some(Pins {
            instance, links, ..
        }) = &mut self.pins
        else {
            return Ok(());
        };
        let path = instance.link_path(iface, hook);
        let link = if path.exists() {
            link
        } else {
            link.pin(&path)
                .map_err(link_error(iface, hook, "pinning"))?
                .into()
        };
        links.push(link);
        Ok(())
    }

    /// The program `name`, loaded into the kernel on first use (and with pins,
    /// pinned, replacing the pin of an earlier daemon's program).
    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, CaptureError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
        P: Loadable + 'a,
    {
        let Self { ebpf, pins, .. } = self;
        let program = ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        let program: &mut P = program.try_into().map_err(program_error(name))?;
        let loaded = program.load_once().map_err(program_error(name))?;
        if let (true, Some(Pins { instance, .. })) = (loaded, pins) {
            pin_program(program, name, &instance.program_path(name))?;
        }
        Ok(program)
    }

    /// Loads the on-host `--sync` program ([`HOLD`]) and pins it at `path`,
    /// where an xtables `bpf` match opens it (`--object-pinned`). The rule
    /// keeps the program once it is in place, so the caller may then unpin it.
    pub fn pin_hold(&mut self, path: &Path) -> Result<(), CaptureError> {
        pin_program(self.program::<SocketFilter>(HOLD)?, HOLD, path)
    }

    /// Detaches every program from every interface (the maps stay readable).
    /// With pins, only links whose pins are gone detach: the others stay
    /// attached through their pins.
    pub fn detach(&mut self) -> Result<(), CaptureError> {
        if let Some(Pins { links, .. }) = &mut self.pins {
            links.clear();
        }
        for name in [PROGRAMS, TRACED].iter().flat_map(Programs::names) {
            let Some(program) = self.ebpf.program_mut(name) else {
                continue;
            };
            let result = match program {
                aya::programs::Program::Xdp(p) if p.fd().is_ok() => p.unload(),
                aya::programs::Program::SchedClassifier(p) if p.fd().is_ok() => p.unload(),
                _ => Ok(()),
            };
            result.map_err(program_error(name))?;
        }
        Ok(())
    }

    /// Runs the program for `hook` once on `frame` with `BPF_PROG_TEST_RUN`
    /// (kernel ≥ 4.12; no interface needed) and returns its verdict: the XDP
    /// action, or the TC return code as `i32`. For tests and diagnostics.
    pub fn test_run(&mut self, hook: Hook, frame: &[u8]) -> Result<i32, CaptureError> {
        let options = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        let Programs {
            xdp,
            tc_ingress,
            tc_egress,
        } = self.programs();
        let (name, result) = match hook {
            Hook::Xdp => (xdp, self.program::<Xdp>(xdp)?.test_run(options)),
            Hook::TcIngress => (
                tc_ingress,
                self.program::<SchedClassifier>(tc_ingress)?
                    .test_run(options),
            ),
            Hook::TcEgress => (
                tc_egress,
                self.program::<SchedClassifier>(tc_egress)?
                    .test_run(options),
            ),
            // A socket filter's test run starts the packet at the IP header.
            Hook::Netfilter => (HOLD, self.program::<SocketFilter>(HOLD)?.test_run(options)),
        };
        result
            .map(|run| run.return_value as i32)
            .map_err(program_error(name))
    }
}

/// The names in the eBPF object of one set of programs.
#[derive(Clone, Copy)]
struct Programs {
    xdp: &'static str,
    tc_ingress: &'static str,
    tc_egress: &'static str,
}

impl Programs {
    /// Every name of the set.
    fn names(&self) -> [&'static str; 3] {
        [self.xdp, self.tc_ingress, self.tc_egress]
    }
}

/// The default programs, which never log.
const PROGRAMS: Programs = Programs {
    xdp: "connmirror_xdp",
    tc_ingress: "connmirror_tc_ingress",
    tc_egress: "connmirror_tc_egress",
};

/// The on-host `--sync` program: capture at netfilter POSTROUTING, and
/// whether NFQUEUE holds the segment ([`Capture::pin_hold`]).
const HOLD: &str = "connmirror_sync_hold";

/// The traced programs (`--trace-ebpf`, [`Capture::trace`]): the same capture,
/// then a log line per TCP segment.
const TRACED: Programs = Programs {
    xdp: "connmirror_xdp_trace",
    tc_ingress: "connmirror_tc_ingress_trace",
    tc_egress: "connmirror_tc_egress_trace",
};

impl Capture {
    /// The programs this capture attaches: the traced ones after [`Capture::trace`].
    fn programs(&self) -> Programs {
        if self.trace { TRACED } else { PROGRAMS }
    }
}

/// Whether a link update failed because the link is severed: its interface
/// was deleted, and the kernel detached it (`ENOLINK` from `BPF_LINK_UPDATE`,
/// see `tcx_link_update` and `bpf_xdp_link_update` in the kernel).
fn severed(err: &ProgramError) -> bool {
    matches!(err, ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(crate::sys::errno::ENOLINK))
}

/// Removes the pin of a severed link, so a fresh link is attached and pinned
/// in its place. Segments on the interface between its deletion and now were
/// not captured: the connections through it broke with it.
fn unpin_severed(path: &Path, iface: &str, hook: &'static str) -> Result<(), CaptureError> {
    tracing::warn!(
        iface,
        hook,
        "the pinned link is severed (its interface was deleted); attaching a new one"
    );
    std::fs::remove_file(path).map_err(link_error(iface, hook, "unpinning"))
}

/// Pins `program` at `path`, replacing an earlier daemon's pin there. The
/// links keep the earlier program until they are updated, so this is no gap.
fn pin_program<P: Loadable>(
    program: &mut P,
    name: &'static str,
    path: &Path,
) -> Result<(), CaptureError> {
    let pin_error = |source| CaptureError::ProgramPin {
        program: name,
        path: path.to_owned(),
        source: Box::new(source),
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(pin_error(PinError::SyscallError(aya::sys::SyscallError {
                call: "unlink",
                io_error: err,
            })));
        }
    }
    program.pin_at(path).map_err(pin_error)
}

/// Programs that are loaded into the kernel once, then attached many times.
trait Loadable {
    /// Loads the program unless it is loaded; true when it was loaded now.
    fn load_once(&mut self) -> Result<bool, ProgramError>;
    /// Pins the program at `path`.
    fn pin_at(&mut self, path: &Path) -> Result<(), PinError>;
}

/// Programs that attach to an interface through a link of their own type, so
/// that [`Capture::attach_program`] serves XDP and TC alike.
trait Attachable: Loadable {
    /// The program's own link type, which a pinned [`FdLink`] converts to.
    type Link: TryFrom<FdLink, Error = LinkError>;
    /// The id of an attached link.
    type Id;
    /// Where on an interface it attaches: the XDP mode, the TC direction.
    type Point: Copy;
    /// Attaches a new link to `iface` at `point`.
    fn attach_at(&mut self, iface: &str, point: Self::Point) -> Result<Self::Id, ProgramError>;
    /// Swaps this program into an existing link.
    fn attach_to(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError>;
    /// Takes the link out of the program's keeping, as an [`FdLink`] to pin.
    fn take_fd_link(&mut self, id: Self::Id) -> Result<Result<FdLink, LinkError>, ProgramError>;
}

/// Implements [`Loadable`] for one aya program type.
macro_rules! loadable {
    ($program:ty) => {
        impl Loadable for $program {
            fn load_once(&mut self) -> Result<bool, ProgramError> {
                if self.fd().is_ok() {
                    Ok(false)
                } else {
                    self.load().map(|()| true)
                }
            }

            fn pin_at(&mut self, path: &Path) -> Result<(), PinError> {
                self.pin(path)
            }
        }
    };
}

/// Implements [`Loadable`] and [`Attachable`] for one aya program type.
macro_rules! attachable {
    ($program:ty, $link:ty, $id:ty, $point:ty) => {
        loadable!($program);

        impl Attachable for $program {
            type Link = $link;
            type Id = $id;
            type Point = $point;

            fn attach_at(&mut self, iface: &str, point: $point) -> Result<$id, ProgramError> {
                self.attach(iface, point)
            }

            fn attach_to(&mut self, link: $link) -> Result<$id, ProgramError> {
                self.attach_to_link(link)
            }

            fn take_fd_link(&mut self, id: $id) -> Result<Result<FdLink, LinkError>, ProgramError> {
                self.take_link(id).map(FdLink::try_from)
            }
        }
    };
}

loadable!(SocketFilter);
attachable!(Xdp, XdpLink, XdpLinkId, XdpMode);
attachable!(
    SchedClassifier,
    SchedClassifierLink,
    SchedClassifierLinkId,
    TcAttachType
);

/// Whether `iface` exists (has an index).
fn interface_exists(iface: &str) -> bool {
    crate::sys::interface::index(iface).is_some()
}

/// Whether `iface` is a virtual link, by its driver.
fn is_virtual(iface: &str) -> bool {
    crate::sys::interface::driver(iface).is_ok_and(|driver| super::plan::is_virtual(&driver))
}
