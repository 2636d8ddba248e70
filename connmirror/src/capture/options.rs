//! The settings capture is started with, as the command line and the
//! configuration file give them: the hooks per interface, the ring size and
//! what to do when the ring is full. Parsed and checked here so a bad value is
//! rejected before anything loads.

use std::str::FromStr;

use connmirror_common::RingFullPolicy;

use crate::capture::CaptureError;

/// Smallest ring accepted: one full chunk record must fit many times over, or a
/// burst can never make progress under the `drop` policy.
pub const MIN_RING_SIZE: u32 = 64 << 10;

/// How capture hooks ingress on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// Chosen per interface by its driver: TC on virtual links (veth, bridge,
    /// VLAN...), native XDP on NICs whose drivers run it well, TC on other
    /// NICs; the log says why. The default.
    Auto,
    /// XDP in driver (native) mode where the driver supports it, else generic
    /// mode. On a virtual link (veth) native XDP turns TSO off on the peer and
    /// costs ~80 % of the throughput (bench/RESULTS.md): a warning says so, and
    /// `xdp-generic` or `tc` is the better choice there.
    Xdp,
    /// XDP in driver mode only; fails where the driver lacks it.
    XdpNative,
    /// XDP in generic (skb) mode.
    XdpGeneric,
    /// TC (TCX) ingress.
    Tc,
    /// No ingress capture.
    None,
}

/// How capture hooks egress on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressHook {
    /// `none` on a gateway whose ingress capture already sees every forwarded
    /// segment (every link that is up has it, and no service address is
    /// local), else `tc`; the log says why. The default.
    Auto,
    /// TC (TCX) egress.
    Tc,
    /// No egress capture.
    None,
}

/// Load-time settings of the capture programs.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Ring-buffer size in bytes: a power of two, at least [`MIN_RING_SIZE`].
    pub ring_size: u32,
    /// What to do with a tracked segment when the ring is full.
    pub on_ring_full: RingFullPolicy,
    /// Most flows the kernel's flow map holds ([`DEFAULT_MAX_FLOWS`]).
    pub max_flows: u32,
}

/// Flows the kernel tracks at most by default. Each costs about 112 bytes
/// of kernel memory, allocated at load (14 MiB for the default).
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;

/// A ring size the kernel accepts (a power of two) and that holds a burst
/// (at least [`MIN_RING_SIZE`]).
pub(super) fn check_ring_size(size: u32) -> Result<(), CaptureError> {
    if !size.is_power_of_two() || size < MIN_RING_SIZE {
        return Err(CaptureError::RingSize {
            size,
            min: MIN_RING_SIZE,
        });
    }
    Ok(())
}

/// Parses a ring size ([`parse_size`]) and checks it as [`Capture::load`](super::Capture::load)
/// does, so that `--ring-size` and its configuration key reject a bad size
/// before anything starts.
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    check_ring_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

/// Parses sizes such as `65536`, `64K`, `16M` or `1G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let value = u64::from_str(digits).map_err(|_| format!("{text:?} is not a size"))?;
    u32::try_from(value << shift)
        .ok()
        .filter(|_| value.leading_zeros() >= shift)
        .ok_or_else(|| format!("{text} is larger than 4 GiB - 1"))
}
