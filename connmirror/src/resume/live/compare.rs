//! The byte-for-byte comparison of one live connection: what the primary sent
//! (captured) against what the standby instance produced. Either side may run
//! ahead of the other; whatever both have produced is compared at once and
//! dropped, so the comparison holds only the difference between the two.
//!
//! Pure logic, no I/O: the instance task ([`super::instance`]) feeds it.

use std::{collections::VecDeque, time::Instant};

/// The first byte on which the instance and the primary disagree (the flow
/// table keeps and journals it too, hence its home in [`crate::flow`]).
pub use crate::flow::Divergence;

/// Captured and produced server → client bytes not yet matched.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Bytes matched so far: the offset of the first byte held.
    matched: u64,
    /// Captured bytes the instance has not produced yet.
    owed: VecDeque<u8>,
    /// Produced bytes the primary has not been seen to send yet.
    ahead: VecDeque<u8>,
    /// When each run of `owed` was captured: (offset past its end, instant).
    arrivals: VecDeque<(u64, Instant)>,
}

impl Comparison {
    /// Takes bytes the primary sent.
    pub fn captured(&mut self, bytes: &[u8], now: Instant) -> Result<(), Divergence> {
        let rest = self.settle(bytes, Side::Ahead)?;
        if !rest.is_empty() {
            self.owed.extend(rest);
            let end = self.matched + self.owed.len() as u64;
            self.arrivals.push_back((end, now));
        }
        Ok(())
    }

    /// Takes bytes the instance produced.
    pub fn produced(&mut self, bytes: &[u8]) -> Result<(), Divergence> {
        let rest = self.settle(bytes, Side::Owed)?;
        self.ahead.extend(rest);
        while let Some(&(end, _)) = self.arrivals.front() {
            if end > self.matched {
                break;
            }
            self.arrivals.pop_front();
        }
        Ok(())
    }

    /// Compares `bytes` with the held bytes of `held` (the other side); drops
    /// what matched and returns the part of `bytes` past them.
    fn settle<'b>(&mut self, bytes: &'b [u8], held: Side) -> Result<&'b [u8], Divergence> {
        let queue = match held {
            Side::Owed => &mut self.owed,
            Side::Ahead => &mut self.ahead,
        };
        let n = queue.len().min(bytes.len());
        if let Some(i) = (0..n).find(|&i| queue[i] != bytes[i]) {
            let (held_byte, new_byte) = (queue[i], bytes[i]);
            let (primary, instance) = match held {
                Side::Owed => (held_byte, new_byte),
                Side::Ahead => (new_byte, held_byte),
            };
            return Err(Divergence {
                offset: self.matched + i as u64,
                primary,
                instance,
            });
        }
        queue.drain(..n);
        self.matched += n as u64;
        Ok(&bytes[n..])
    }

    /// Captured bytes the instance still owes.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Produced bytes past what the primary was seen to send.
    pub fn ahead(&self) -> usize {
        self.ahead.len()
    }

    /// Bytes matched so far.
    pub fn matched(&self) -> u64 {
        self.matched
    }

    /// When the oldest byte the instance still owes was captured.
    pub fn owed_since(&self) -> Option<Instant> {
        self.arrivals.front().map(|&(_, at)| at)
    }

    /// Takes the produced bytes past what the primary sent: at takeover,
    /// new output the client has not seen.
    pub fn take_ahead(&mut self) -> Vec<u8> {
        self.ahead.drain(..).collect()
    }
}

/// Which queue a comparison holds bytes in.
#[derive(Clone, Copy)]
enum Side {
    Owed,
    Ahead,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn agreeing_bytes_are_dropped_whichever_side_leads() {
        let now = Instant::now();
        let mut c = Comparison::default();
        c.captured(b"+OK\r\n", now).unwrap();
        assert_eq!((c.owed(), c.ahead()), (5, 0));
        assert_eq!(c.owed_since(), Some(now));
        c.produced(b"+OK\r\n$3").unwrap();
        assert_eq!((c.owed(), c.ahead(), c.matched()), (0, 2, 5));
        assert_eq!(c.owed_since(), None);
        c.captured(b"$3\r\n", now).unwrap();
        assert_eq!((c.owed(), c.ahead(), c.matched()), (2, 0, 7));
    }

    #[test]
    fn the_first_differing_byte_names_its_offset_and_both_bytes() {
        let now = Instant::now();
        let mut c = Comparison::default();
        c.captured(b"$3\r\nbar\r\n", now).unwrap();
        let err = c.produced(b"$3\r\nbaz\r\n").unwrap_err();
        assert_eq!(
            err,
            Divergence {
                offset: 6,
                primary: b'r',
                instance: b'z'
            }
        );
        assert_eq!(
            err.to_string(),
            "the instance's output differs from the primary's at offset 6 \
             (primary 0x72, instance 0x7a)"
        );
        let mut c = Comparison::default();
        c.produced(b"ab").unwrap();
        let err = c.captured(b"ax", now).unwrap_err();
        assert_eq!(
            err,
            Divergence {
                offset: 1,
                primary: b'x',
                instance: b'b'
            }
        );
    }

    #[test]
    fn take_ahead_returns_the_new_output() {
        let mut c = Comparison::default();
        c.captured(b"ab", Instant::now()).unwrap();
        c.produced(b"abcd").unwrap();
        assert_eq!(c.take_ahead(), b"cd");
        assert_eq!(c.ahead(), 0);
    }

    proptest! {
        /// However the two streams are cut into pieces and interleaved, equal
        /// streams never diverge and leave nothing held; a stream with one
        /// byte changed diverges at exactly that offset.
        #[test]
        fn any_interleaving(
            stream in proptest::collection::vec(any::<u8>(), 1..400),
            cuts in proptest::collection::vec((any::<bool>(), 1usize..50), 1..60),
            flip in any::<proptest::sample::Index>(),
        ) {
            let changed = flip.index(stream.len());
            for bad in [false, true] {
                let mut produced = stream.clone();
                if bad {
                    produced[changed] ^= 0xff;
                }
                let mut c = Comparison::default();
                let (mut p, mut q) = (0, 0);
                let mut result = Ok(());
                for &(primary, len) in cuts.iter().cycle().take(400) {
                    let step = if primary && p < stream.len() {
                        let end = (p + len).min(stream.len());
                        let r = c.captured(&stream[p..end], Instant::now());
                        p = end;
                        r
                    } else if q < produced.len() {
                        let end = (q + len).min(produced.len());
                        let r = c.produced(&produced[q..end]);
                        q = end;
                        r
                    } else {
                        let end = (p + len).min(stream.len());
                        let r = c.captured(&stream[p..end], Instant::now());
                        p = end;
                        r
                    };
                    if step.is_err() {
                        result = step;
                        break;
                    }
                }
                if !bad {
                    prop_assert_eq!(result, Ok(()));
                    prop_assert_eq!(c.owed() + c.ahead() + c.matched() as usize,
                        p.max(q));
                } else if p > changed && q > changed {
                    prop_assert_eq!(result, Err(Divergence {
                        offset: changed as u64,
                        primary: stream[changed],
                        instance: produced[changed],
                    }));
                }
            }
        }
    }
}
