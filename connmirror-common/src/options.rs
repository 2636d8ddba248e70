//! The TCP options a restore needs (RFC 9293 §3.2, RFC 7323, RFC 2018), parsed
//! from the raw option bytes a record carries.

/// Options announced in a SYN or SYN-ACK, plus the timestamps of any segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// Maximum segment size (kind 2).
    pub mss: Option<u16>,
    /// Window scale shift (kind 3), clamped to 14 as RFC 7323 §2.3 requires.
    pub window_scale: Option<u8>,
    /// SACK permitted (kind 4).
    pub sack_permitted: bool,
    /// Timestamps (kind 8): (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
}

const EOL: u8 = 0;
const NOP: u8 = 1;
const MSS: u8 = 2;
const WINDOW_SCALE: u8 = 3;
const SACK_PERMITTED: u8 = 4;
const TIMESTAMPS: u8 = 8;

impl TcpOptions {
    /// Parses an option block. A malformed option (a length below 2 or past the
    /// end) ends the parse; what was read before it is kept.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut options = Self::default();
        let mut at = 0;
        while let Some(&kind) = bytes.get(at) {
            match kind {
                EOL => break,
                NOP => {
                    at += 1;
                    continue;
                }
                _ => {}
            }
            let Some(&len) = bytes.get(at + 1) else {
                break;
            };
            let len = len as usize;
            let Some(body) = bytes.get(at + 2..at + len).filter(|_| len >= 2) else {
                break;
            };
            options.apply(kind, body);
            at += len;
        }
        options
    }

    fn apply(&mut self, kind: u8, body: &[u8]) {
        match (kind, body) {
            (MSS, &[a, b]) => self.mss = Some(u16::from_be_bytes([a, b])),
            (WINDOW_SCALE, &[shift]) => self.window_scale = Some(shift.min(14)),
            (SACK_PERMITTED, &[]) => self.sack_permitted = true,
            (TIMESTAMPS, &[a, b, c, d, e, f, g, h]) => {
                self.timestamps = Some((
                    u32::from_be_bytes([a, b, c, d]),
                    u32::from_be_bytes([e, f, g, h]),
                ));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_linux_syn_option_block_parses_completely() {
        // MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
        let bytes = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 3, 3, 7,
        ];
        assert_eq!(
            TcpOptions::parse(&bytes),
            TcpOptions {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some((1, 2)),
            }
        );
    }

    #[test]
    fn a_truncated_option_keeps_what_came_before() {
        let bytes = [2, 4, 0x05, 0xb4, 8, 10, 0, 0];
        assert_eq!(
            TcpOptions::parse(&bytes),
            TcpOptions {
                mss: Some(1460),
                ..TcpOptions::default()
            }
        );
    }

    #[test]
    fn window_scale_is_clamped_to_14() {
        assert_eq!(TcpOptions::parse(&[3, 3, 20]).window_scale, Some(14));
    }

    proptest! {
        #[test]
        fn arbitrary_option_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = TcpOptions::parse(&bytes);
        }
    }
}
