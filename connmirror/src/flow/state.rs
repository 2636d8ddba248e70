//! Connection state a restore needs, kept up to date from captured headers:
//! what the handshake negotiated, and per direction the sequence, acknowledgment,
//! window and timestamp high-water marks (docs/architecture.md, "State needed to restore one
//! connection").
//!
//! Sequence numbers are compared in sequence space (RFC 9293 §3.4: `after(a, b)`
//! is `(a - b) as i32 > 0`, as the kernel's `include/net/tcp.h` does), so the
//! marks survive 32-bit wraparound.

use connmirror_common::{
    RecordHeader,
    options::TcpOptions,
    record::tcp_flags::{ACK, FIN, RST, SYN},
};
use serde::Serialize;

/// Whether `a` comes after `b` in sequence space.
pub fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What one side announced in its SYN (client) or SYN-ACK (server).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SynState {
    /// Initial sequence number.
    pub isn: u32,
    /// Maximum segment size.
    pub mss: Option<u16>,
    /// Window scale shift this side applies to the windows it advertises.
    pub window_scale: Option<u8>,
    /// SACK permitted.
    pub sack_permitted: bool,
    /// Timestamps offered.
    pub timestamps: bool,
}

impl SynState {
    fn from_options(isn: u32, options: &TcpOptions) -> Self {
        Self {
            isn,
            mss: options.mss,
            window_scale: options.window_scale,
            sack_permitted: options.sack_permitted,
            timestamps: options.timestamps.is_some(),
        }
    }
}

/// Live state of the segments one side sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SideState {
    /// The SYN (or SYN-ACK) this side sent, when it was seen.
    pub syn: Option<SynState>,
    /// One past the highest sequence number sent (data, SYN and FIN count): `snd_nxt`.
    pub next_seq: Option<u32>,
    /// Highest acknowledgment number sent: the peer's bytes this side has.
    pub ack: Option<u32>,
    /// Last advertised window, raw.
    pub window: u16,
    /// Last advertised window, scaled by this side's shift when both sides
    /// negotiated window scaling.
    pub window_scaled: u32,
    /// Highest TSval sent (in sequence-space order).
    pub tsval: Option<u32>,
    /// TSecr of the segment that carried [`tsval`](Self::tsval).
    pub tsecr: Option<u32>,
    /// A FIN was sent.
    pub fin: bool,
    /// A RST was sent.
    pub rst: bool,
}

impl SideState {
    /// Applies one segment this side sent (the first record of the segment).
    /// `peer_scales` says whether the other side also announced window scaling.
    pub fn segment(&mut self, header: &RecordHeader, peer_scales: bool) {
        let options = TcpOptions::parse(&header.options[..header.options_len as usize]);
        let syn = header.tcp_flags & SYN != 0;
        if syn && self.syn.is_none() {
            self.syn = Some(SynState::from_options(header.seq, &options));
        }
        let fin = header.tcp_flags & FIN != 0;
        let end = header
            .seq
            .wrapping_add(header.payload_len)
            .wrapping_add(u32::from(syn) + u32::from(fin));
        if self.next_seq.is_none_or(|n| after(end, n)) {
            self.next_seq = Some(end);
        }
        if header.tcp_flags & ACK != 0 && self.ack.is_none_or(|a| after(header.ack, a)) {
            self.ack = Some(header.ack);
        }
        self.window = header.window;
        // RFC 7323 §2.2: the window of a SYN is never scaled.
        let shift = match (syn, self.syn.and_then(|s| s.window_scale), peer_scales) {
            (false, Some(shift), true) => shift,
            _ => 0,
        };
        self.window_scaled = u32::from(header.window) << shift;
        // The highest TSval, not the last one applied: records of one flow from
        // two CPUs can reach the table out of order, and a restored socket whose
        // TSval is below what the peer last saw is dropped by its PAWS check.
        if let Some((tsval, tsecr)) = options.timestamps
            && self.tsval.is_none_or(|t| !after(t, tsval))
        {
            self.tsval = Some(tsval);
            self.tsecr = Some(tsecr);
        }
        self.fin |= fin;
        self.rst |= header.tcp_flags & RST != 0;
    }

    /// Whether this side announced window scaling in its SYN.
    pub fn scales(&self) -> bool {
        self.syn.is_some_and(|s| s.window_scale.is_some())
    }
}

/// Whether a flow can be restored now, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "readiness", content = "ranges")]
pub enum Readiness {
    /// Every byte a restore would need is present.
    Ready,
    /// Bytes a restore needs are missing: stream offsets `[start, end)` per
    /// direction (`c2s` ranges first, then `s2c`).
    MissingBytes(Vec<MissingRange>),
    /// No handshake was seen (the flow started before capture): no ISNs or options.
    NoHandshake,
    /// Both FINs or a RST were seen: nothing to restore.
    Closed,
}

/// One missing range of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MissingRange {
    /// `c2s` or `s2c`.
    pub dir: &'static str,
    /// First missing stream offset.
    pub start: u64,
    /// One past the last missing stream offset.
    pub end: u64,
}

impl Readiness {
    /// The short name used in tables: `ready`, `missing-bytes`, `no-handshake`, `closed`.
    pub fn name(&self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::MissingBytes(_) => "missing-bytes",
            Readiness::NoHandshake => "no-handshake",
            Readiness::Closed => "closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use connmirror_common::map::FAMILY_V4;

    use super::*;

    fn segment(seq: u32, ack: u32, flags: u8, payload_len: u32, options: &[u8]) -> RecordHeader {
        let mut h = RecordHeader::zeroed();
        h.family = FAMILY_V4;
        h.seq = seq;
        h.ack = ack;
        h.tcp_flags = flags;
        h.window = 1000;
        h.payload_len = payload_len;
        h.options[..options.len()].copy_from_slice(options);
        h.options_len = options.len() as u8;
        h
    }

    #[test]
    fn sequence_comparison_survives_wraparound() {
        assert!(after(5, u32::MAX - 5));
        assert!(!after(u32::MAX - 5, 5));
        assert!(!after(7, 7));
    }

    #[test]
    fn syn_options_and_marks_follow_the_segments_sent() {
        let syn_opts = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let ts = [1, 1, 8, 10, 0, 0, 0, 20, 0, 0, 0, 30];
        let mut side = SideState::default();

        side.segment(&segment(u32::MAX - 1, 0, SYN, 0, &syn_opts), false);
        side.segment(&segment(u32::MAX, 500, ACK, 10, &ts), true);
        side.segment(&segment(4, 510, ACK, 0, &ts), true); // older data: marks stay
        let older_ts = [1, 1, 8, 10, 0, 0, 0, 19, 0, 0, 0, 29];
        side.segment(&segment(4, 510, ACK, 0, &older_ts), true); // reordered: TSval stays

        assert_eq!(
            side.syn,
            Some(SynState {
                isn: u32::MAX - 1,
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: true,
            })
        );
        assert_eq!(side.next_seq, Some(9));
        assert_eq!(side.ack, Some(510));
        assert_eq!((side.window, side.window_scaled), (1000, 1000 << 7));
        assert_eq!((side.tsval, side.tsecr), (Some(20), Some(30)));
        assert!(!side.fin && !side.rst);
    }

    #[test]
    fn windows_are_not_scaled_unless_both_sides_announced_scaling() {
        let mut side = SideState::default();
        side.segment(&segment(0, 0, SYN, 0, &[3, 3, 7]), false);
        side.segment(&segment(1, 1, ACK, 0, &[]), false);
        assert_eq!(side.window_scaled, 1000);
    }

    #[test]
    fn fin_counts_one_sequence_number() {
        let mut side = SideState::default();
        side.segment(&segment(100, 0, ACK | FIN, 5, &[]), false);
        assert_eq!(side.next_seq, Some(106));
        assert!(side.fin);
    }
}
