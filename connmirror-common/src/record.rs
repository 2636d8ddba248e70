//! The ring-buffer record: a fixed [`RecordHeader`] followed by `chunk_len` payload bytes.
//!
//! One TCP segment produces one record, or several when its payload is larger than
//! [`CHUNK_SIZE`] (GSO/TSO skbs on TC, multi-buffer XDP frames): each record then
//! carries the chunk at `chunk_offset` within the segment's payload, so userspace
//! puts it at sequence number `seq + chunk_offset` (plus one when SYN is set).
//!
//! Readers use `chunk_len`, never the record's length, so a record may carry
//! padding after its chunk. A segment whose payload its service does not need (see
//! [`crate::map::PayloadSkip`]) yields one header-only record with
//! `payload_len` set and [`record_flags::PAYLOAD_SKIPPED`].

/// Largest payload carried by one record.
pub const CHUNK_SIZE: usize = 8192;
/// Most records one segment is split into. `MAX_CHUNKS * CHUNK_SIZE` (72 KiB)
/// covers the largest IPv4/IPv6 packet a GSO skb carries without BIG TCP; a
/// larger payload is counted as oversize and handled like a full ring. The
/// verifier walks the chunk loop once per iteration, so this bounds its work too.
pub const MAX_CHUNKS: usize = 9;
/// Version of the layout of the records and the map values the programs
/// share with userspace. The programs declare it as the entry count of their
/// `LAYOUT` map, which is pinned with the others, so a daemon restarted onto
/// a pinned instance refuses one whose programs wrote another layout.
/// Version 1 had no `LAYOUT` map; version 2 added [`record_flags`] and
/// [`crate::ServiceValue::skip`].
pub const RECORD_LAYOUT: u32 = 2;
/// Largest TCP option block.
pub const MAX_OPTIONS: usize = 40;
/// Size of [`RecordHeader`] in bytes.
pub const HEADER_SIZE: usize = core::mem::size_of::<RecordHeader>();

/// TCP header flag bits as they appear in `tcp_flags`.
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// Bits of [`RecordHeader::flags`].
pub mod record_flags {
    /// The segment had `payload_len` bytes of payload, which the programs did
    /// not copy: its service does not need this direction's payload. The
    /// record carries no chunk.
    pub const PAYLOAD_SKIPPED: u8 = 0x01;
}

/// Which way a segment travels relative to the service.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server: the destination is a tracked service.
    ClientToServer = 0,
    /// Server to client: the source is a tracked service.
    ServerToClient = 1,
}

impl Direction {
    /// Decodes the `direction` byte of a header.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Direction::ClientToServer),
            1 => Some(Direction::ServerToClient),
            _ => None,
        }
    }

    /// Short name used in file names and reports: `c2s` or `s2c`.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c2s",
            Direction::ServerToClient => "s2c",
        }
    }
}

/// Where the program that produced a record is attached.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP on ingress.
    Xdp = 0,
    /// TC (clsact/TCX) on ingress.
    TcIngress = 1,
    /// TC (clsact/TCX) on egress.
    TcEgress = 2,
    /// Netfilter POSTROUTING, through the xtables `bpf` match: on-host
    /// `--sync` captures the primary's segments there, before NFQUEUE holds
    /// them.
    Netfilter = 3,
}

impl Hook {
    /// Decodes the `hook` byte of a header.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Hook::Xdp),
            1 => Some(Hook::TcIngress),
            2 => Some(Hook::TcEgress),
            3 => Some(Hook::Netfilter),
            _ => None,
        }
    }
}

/// What the programs do with a tracked segment when the ring buffer is full.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingFullPolicy {
    /// Drop the segment (`XDP_DROP` / `TC_ACT_SHOT`): TCP retransmits it and the
    /// retransmission is captured, so the captured stream never has a hole.
    Drop = 0,
    /// Forward the segment uncaptured and mark its flow as gapped.
    Pass = 1,
}

/// Header of every ring-buffer record. All integers are in host byte order
/// except the addresses, which are kept as they appear on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()` when the segment was seen (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Source address (IPv4 in the first 4 bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first 4 bytes).
    pub dst_addr: [u8; 16],
    /// Interface the segment was seen on.
    pub ifindex: u32,
    /// Service id of the flow.
    pub service_id: u32,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number.
    pub ack: u32,
    /// TCP payload length of the whole segment.
    pub payload_len: u32,
    /// Offset of this record's chunk within the segment's payload.
    pub chunk_offset: u32,
    /// Payload bytes following this header.
    pub chunk_len: u32,
    /// The flow's count of uncaptured segments so far (`pass` policy).
    pub flow_gaps: u32,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Raw (unscaled) TCP window.
    pub window: u16,
    /// TCP flags (see [`tcp_flags`]).
    pub tcp_flags: u8,
    /// [`crate::map::FAMILY_V4`] or [`crate::map::FAMILY_V6`].
    pub family: u8,
    /// A [`Direction`].
    pub direction: u8,
    /// A [`Hook`].
    pub hook: u8,
    /// Bytes of `options` in use.
    pub options_len: u8,
    /// [`record_flags`] bits.
    pub flags: u8,
    /// Always zero.
    pub _pad: [u8; 4],
    /// Raw TCP options.
    pub options: [u8; MAX_OPTIONS],
}

const _: () = assert!(HEADER_SIZE == 128);
const _: () = assert!(core::mem::align_of::<RecordHeader>() <= 8);

impl RecordHeader {
    /// An all-zero header.
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            ifindex: 0,
            service_id: 0,
            seq: 0,
            ack: 0,
            payload_len: 0,
            chunk_offset: 0,
            chunk_len: 0,
            flow_gaps: 0,
            src_port: 0,
            dst_port: 0,
            window: 0,
            tcp_flags: 0,
            family: 0,
            direction: 0,
            hook: 0,
            options_len: 0,
            flags: 0,
            _pad: [0; 4],
            options: [0; MAX_OPTIONS],
        }
    }

    /// Splits a raw ring-buffer record into its header and chunk, checking every
    /// field userspace relies on. Never panics, whatever the bytes.
    pub fn decode(record: &[u8]) -> Result<(RecordHeader, &[u8]), DecodeError> {
        if record.len() < HEADER_SIZE {
            return Err(DecodeError::Short { len: record.len() });
        }
        // SAFETY: the length was checked above and every bit pattern is a valid
        // `RecordHeader` (integers and byte arrays only).
        let header: RecordHeader =
            unsafe { core::ptr::read_unaligned(record.as_ptr().cast::<RecordHeader>()) };
        let rest = &record[HEADER_SIZE..];
        header.validate(rest.len())?;
        Ok((header, &rest[..header.chunk_len as usize]))
    }

    /// The segment's payload was not copied ([`record_flags::PAYLOAD_SKIPPED`]).
    pub const fn payload_skipped(&self) -> bool {
        self.flags & record_flags::PAYLOAD_SKIPPED != 0
    }

    fn validate(&self, chunk_bytes: usize) -> Result<(), DecodeError> {
        if self.payload_skipped() && self.chunk_len != 0 {
            return Err(DecodeError::SkippedWithChunk(self.chunk_len));
        }
        if self.chunk_len as usize > chunk_bytes || self.chunk_len as usize > CHUNK_SIZE {
            return Err(DecodeError::ChunkLength {
                chunk_len: self.chunk_len,
                available: chunk_bytes,
            });
        }
        let end = self.chunk_offset as u64 + self.chunk_len as u64;
        if end > self.payload_len as u64 {
            return Err(DecodeError::ChunkPastPayload {
                end,
                payload_len: self.payload_len,
            });
        }
        if self.options_len as usize > MAX_OPTIONS {
            return Err(DecodeError::Options(self.options_len));
        }
        if Direction::from_u8(self.direction).is_none() {
            return Err(DecodeError::Direction(self.direction));
        }
        if Hook::from_u8(self.hook).is_none() {
            return Err(DecodeError::Hook(self.hook));
        }
        if self.family != crate::map::FAMILY_V4 && self.family != crate::map::FAMILY_V6 {
            return Err(DecodeError::Family(self.family));
        }
        Ok(())
    }

    /// The header as raw bytes (for tests and tools that build records).
    pub fn as_bytes(&self) -> &[u8; HEADER_SIZE] {
        // SAFETY: `RecordHeader` is `repr(C)`, 128 bytes, with no implicit padding
        // (checked by the size assertion above).
        unsafe { &*(self as *const Self).cast::<[u8; HEADER_SIZE]>() }
    }
}

/// Why a ring-buffer record was rejected by [`RecordHeader::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header.
    Short {
        /// Bytes in the record.
        len: usize,
    },
    /// `chunk_len` exceeds the bytes present or [`CHUNK_SIZE`].
    ChunkLength {
        /// Claimed chunk length.
        chunk_len: u32,
        /// Bytes after the header.
        available: usize,
    },
    /// `chunk_offset + chunk_len` exceeds `payload_len`.
    ChunkPastPayload {
        /// End of the chunk within the payload.
        end: u64,
        /// Claimed payload length.
        payload_len: u32,
    },
    /// `options_len` above [`MAX_OPTIONS`].
    Options(u8),
    /// A record whose payload was skipped claims a chunk of this many bytes.
    SkippedWithChunk(u32),
    /// Unknown direction byte.
    Direction(u8),
    /// Unknown hook byte.
    Hook(u8),
    /// Unknown address family.
    Family(u8),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Short { len } => {
                write!(
                    f,
                    "record of {len} bytes is shorter than its {HEADER_SIZE}-byte header"
                )
            }
            DecodeError::ChunkLength {
                chunk_len,
                available,
            } => write!(
                f,
                "chunk_len {chunk_len} exceeds the {available} bytes present"
            ),
            DecodeError::ChunkPastPayload { end, payload_len } => {
                write!(f, "chunk ends at {end}, past payload_len {payload_len}")
            }
            DecodeError::Options(n) => write!(f, "options_len {n} exceeds {MAX_OPTIONS}"),
            DecodeError::SkippedWithChunk(n) => {
                write!(
                    f,
                    "a record whose payload was skipped claims a {n}-byte chunk"
                )
            }
            DecodeError::Direction(d) => write!(f, "unknown direction {d}"),
            DecodeError::Hook(h) => write!(f, "unknown hook {h}"),
            DecodeError::Family(a) => write!(f, "unknown address family {a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn sample() -> RecordHeader {
        let mut h = RecordHeader::zeroed();
        h.family = crate::map::FAMILY_V4;
        h.payload_len = 10;
        h.chunk_len = 4;
        h.chunk_offset = 6;
        h
    }

    #[test]
    fn decode_round_trips_a_header_and_its_chunk() {
        let h = sample();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(b"abcd");
        let (back, chunk) = RecordHeader::decode(&raw).unwrap();
        assert_eq!(back, h);
        assert_eq!(chunk, b"abcd");
    }

    #[test]
    fn decode_ignores_padding_after_the_chunk() {
        let h = sample();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(b"abcd");
        raw.resize(HEADER_SIZE + 256, 0xee);
        let (back, chunk) = RecordHeader::decode(&raw).unwrap();
        assert_eq!(back, h);
        assert_eq!(chunk, b"abcd");
    }

    #[test]
    fn a_skipped_payload_has_a_length_and_no_chunk() {
        let mut h = sample();
        h.flags = record_flags::PAYLOAD_SKIPPED;
        h.chunk_offset = 0;
        h.chunk_len = 0;
        let (back, chunk) = RecordHeader::decode(h.as_bytes()).unwrap();
        assert!(back.payload_skipped());
        assert_eq!((back.payload_len, chunk.len()), (10, 0));
        h.chunk_len = 4;
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(b"abcd");
        assert_eq!(
            RecordHeader::decode(&raw),
            Err(DecodeError::SkippedWithChunk(4))
        );
    }

    #[test]
    fn decode_rejects_a_chunk_past_the_payload() {
        let mut h = sample();
        h.chunk_offset = 7;
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(b"abcd");
        assert_eq!(
            RecordHeader::decode(&raw),
            Err(DecodeError::ChunkPastPayload {
                end: 11,
                payload_len: 10
            })
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = RecordHeader::decode(&bytes);
        }

        #[test]
        fn decoded_chunks_stay_inside_the_payload(mut bytes in proptest::collection::vec(any::<u8>(), 128..300)) {
            // Make the header plausible so decoding gets past the cheap checks.
            bytes[79] = 4;
            bytes[80] = 0;
            bytes[81] = 0;
            let raw: Vec<u8> = bytes;
            if let Ok((h, chunk)) = RecordHeader::decode(&raw) {
                prop_assert_eq!(chunk.len() >= h.chunk_len as usize, true);
                prop_assert!(h.chunk_offset as u64 + h.chunk_len as u64 <= h.payload_len as u64);
            }
        }
    }
}
