//! Raw Ethernet frames sent into a link from inside a namespace.
//!
//! A [`FrameInjector`] is an `AF_PACKET` / `SOCK_RAW` socket (see `packet(7)`)
//! bound to one interface: every `send` puts the caller's bytes on the wire
//! as they are, MAC header included, with no checksum or length fixed up. That
//! is how the tests put frames a kernel would never build (truncated headers,
//! impossible lengths) in front of the capture programs.
//!
//! The socket is opened with protocol 0, so it receives nothing: it only sends.
//!
//! # When a frame counts as sent
//!
//! `packet_snd()` (net/packet/af_packet.c) hands the frame to `dev_queue_xmit()`;
//! on a veth, which has no qdisc, the driver's verdict comes straight back. When
//! the peer's queue is full `veth_xmit()` (drivers/net/veth.c) drops the frame and
//! returns `NET_XMIT_DROP`, which `packet_snd` turns into `ENOBUFS`. So a `send`
//! that returns the frame's length put the frame into the peer's receive queue,
//! where the peer's XDP program runs on it; [`FrameInjector::send`] returns an
//! error otherwise, and [`FrameInjector::send_until_accepted`] retries until the
//! kernel takes the frame.
//!
//! The kernel refuses frames shorter than the device's hard header (14 bytes on
//! Ethernet, `dev_validate_header()` in include/linux/netdevice.h) unless the
//! sender has `CAP_SYS_RAWIO`, in which case it pads them with zeros: frames are
//! never shortened, but a frame under 14 bytes may not arrive as given. Every
//! frame [`connmirror_common::frame::malformed`] builds is at least 14 bytes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// How long [`FrameInjector::send_until_accepted`] waits between retries.
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// An `AF_PACKET` raw socket bound to one interface of a namespace.
#[derive(Debug)]
pub struct FrameInjector {
    fd: OwnedFd,
    /// `NS/IF`, for messages.
    what: String,
}

impl FrameInjector {
    /// Opens a send-only packet socket on `ifname` inside `ns`. Panics naming the
    /// failing call.
    pub fn open(ns: &Netns, ifname: &str) -> FrameInjector {
        let what = format!("{}/{ifname}", ns.name());
        // Protocol 0: the socket is not hooked into receive, it only sends.
        let fd = crate::wire::packet_socket(ns, ifname, 0);
        FrameInjector { fd, what }
    }

    /// Sends `frame` once, without blocking. `Ok` only when the kernel took all of
    /// it (see the module docs for what that guarantees on a veth).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid buffer of the length passed.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Err(_) => Err(io::Error::last_os_error()),
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "send on {}: {n} of {} bytes sent",
                self.what,
                frame.len()
            ))),
        }
    }

    /// Sends `frame`, retrying while the link's queue is full (`ENOBUFS`,
    /// `EAGAIN`), for at most `timeout`. Returns how many attempts the kernel
    /// refused before taking it. Panics on any other error, or on timeout.
    pub fn send_until_accepted(&self, frame: &[u8], timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        let mut refused = 0;
        loop {
            match self.send(frame) {
                Ok(()) => return refused,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN))
                        && Instant::now() < deadline =>
                {
                    refused += 1;
                    thread::sleep(RETRY_PAUSE);
                }
                Err(e) => panic!(
                    "send of a {}-byte frame on {} (after {refused} refusals): {e}",
                    frame.len(),
                    self.what
                ),
            }
        }
    }
}

/// The MAC address of `ifname` inside `ns` (`ip -j link show`).
pub fn link_mac(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = ns.ip(["-j", "link", "show", "dev", ifname]);
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("ip -j link show {ifname}: {e}: {out}"));
    let text = json[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address for {ifname} in {}: {out}", ns.name()));
    parse_mac(text).unwrap_or_else(|| panic!("bad MAC address {text:?} for {ifname}"))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn parses_colon_separated_macs_only() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01"),
            Some([2, 0, 0x0a, 0xff, 0x10, 1])
        );
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }
}
