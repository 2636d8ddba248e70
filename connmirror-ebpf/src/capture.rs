//! The per-packet path shared by every hook, and the maps it uses.

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use connmirror_common::{
    Counter, Direction, FlowFlags, FlowKey, FlowValue, Hook, PayloadSkip, RecordHeader,
    RingFullPolicy, ServiceKey, ServiceMode, ServiceValue,
    counter::COUNTER_SLOTS,
    parse::{self, Parsed, Segment, copy_options},
    record::{CHUNK_SIZE, MAX_CHUNKS, RECORD_LAYOUT, record_flags, tcp_flags},
};

use crate::packet::{Kernel, LoadInto};

/// Ring buffer of records. Userspace sets the size at load time (`--ring-size`).
#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Protected services: (address, port) → id and mode. Updated at runtime by userspace.
#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(1024, 0);

/// Tracked connections. Userspace sizes it at load time (`--max-flows`) and
/// removes each flow it has forgotten (closed, or evicted); a full map
/// refuses new flows ([`Counter::FlowsUntracked`]) and never evicts one, so
/// a ready flow never loses its gap count behind userspace's back.
#[map]
static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(65536, 0);

/// Per-CPU counters, indexed by [`Counter`] and [`connmirror_common::Malformed`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Per-CPU staging area for a segment's record header: assembled once, then
/// copied into the ring reservation of each of the segment's chunks.
#[map]
static SCRATCH: PerCpuArray<RecordHeader> = PerCpuArray::with_max_entries(1, 0);

/// Pinned with the other maps: its entry count is [`RECORD_LAYOUT`], so a
/// daemon restarted onto the instance can tell which record layout its
/// programs write.
#[map]
static LAYOUT: Array<u8> = Array::with_max_entries(RECORD_LAYOUT, 0);

/// Until when (`bpf_ktime_get_ns`) the ring's reader counts as alive: the
/// daemon moves it forward while it reads; 0 means for ever. Past it, a
/// segment the `drop` policy would drop passes instead ([`uncaptured`]), so
/// capture that outlived its daemon (`--pin`) never stops the traffic.
#[map]
static READER: Array<u64> = Array::with_max_entries(1, 0);

/// [`RingFullPolicy`] as a byte; set by userspace at load time.
#[unsafe(no_mangle)]
static RING_FULL_POLICY: u8 = RingFullPolicy::Drop as u8;

/// Force a reader wakeup once this many bytes wait in the ring; set at load time.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;

/// One record as reserved in the ring: the header, then room for `N` payload
/// bytes, of which the header's `chunk_len` are used (readers skip the rest).
/// A reservation's size must be a constant, so a chunk goes into the smallest
/// of a few such size classes that holds it ([`emit_tail`]).
#[repr(C)]
struct Slot<const N: usize> {
    header: RecordHeader,
    data: [u8; N],
}

/// What to do with the packet.
pub enum Verdict {
    /// Forward it.
    Pass,
    /// Drop it (backpressure: the ring is full and the policy is `drop`).
    Drop,
}

/// Runs the capture path for one packet.
#[inline(always)]
pub fn capture<S: LoadInto>(pkt: &Kernel<S>, hook: Hook, ifindex: u32) -> Verdict {
    count(Counter::PacketsSeen.index(), 1);
    let seg = match parse::parse(pkt) {
        Ok(Parsed::Tcp(seg)) => seg,
        Ok(Parsed::NotTcp) => return counted(Counter::NotTcp),
        Ok(Parsed::Fragment) => return counted(Counter::Fragments),
        Err(reason) => {
            count(reason.index(), 1);
            return Verdict::Pass;
        }
    };
    let Some((direction, service)) = classify(&seg) else {
        return Verdict::Pass;
    };
    if service.mode & !ServiceMode::SYNC != 0 {
        return takeover(direction, service.mode, hook);
    }
    if service.mode == ServiceMode::SYNC && matches!(hook, Hook::TcEgress) {
        // Captured already, at netfilter POSTROUTING ([`hold`]).
        return Verdict::Pass;
    }
    count(Counter::PacketsTracked.index(), 1);
    let key = flow_key(&seg, direction);
    let Some(flow) = protected(&key, &seg, service.id) else {
        return Verdict::Pass;
    };
    if let Err(reason) = copy(pkt, &seg, hook, ifindex, direction, &service, flow) {
        return uncaptured(reason, flow);
    }
    Verdict::Pass
}

/// On-host `--sync`, at netfilter POSTROUTING: captures a segment the primary
/// sends on a protected flow and says whether NFQUEUE should hold it (`true`)
/// until the standby acknowledged the journal up to its data and its ACK.
/// Every segment of such a flow but a RST is held, captured or not: the agent
/// drops one whose bytes the journal lacks (the ring was full), so TCP sends
/// it again. Anything else, a flow not protected ([`protected`]) included,
/// passes uncaptured.
#[inline(always)]
pub fn hold<S: LoadInto>(pkt: &Kernel<S>, ifindex: u32) -> bool {
    let Ok(Parsed::Tcp(seg)) = parse::parse_ip(pkt) else {
        return false;
    };
    let Some((Direction::ServerToClient, service)) = classify(&seg) else {
        return false;
    };
    if service.mode != ServiceMode::SYNC {
        return false;
    }
    count(Counter::PacketsTracked.index(), 1);
    let direction = Direction::ServerToClient;
    let key = flow_key(&seg, direction);
    let Some(flow) = protected(&key, &seg, service.id) else {
        return false;
    };
    let hook = Hook::Netfilter;
    if let Err(reason) = copy(pkt, &seg, hook, ifindex, direction, &service, flow) {
        count(reason.index(), 1);
    }
    let held = seg.flags & tcp_flags::RST == 0;
    if held {
        count(Counter::SyncHeld.index(), 1);
    }
    held
}

#[inline(always)]
fn counted(counter: Counter) -> Verdict {
    count(counter.index(), 1);
    Verdict::Pass
}

#[inline(always)]
fn count(slot: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += n };
    }
}

/// The verdict for a segment of a service being (or already) taken over.
/// Only ingress hooks drop: at egress the segments are the restored sockets' own.
#[inline(always)]
fn takeover(direction: Direction, mode: u32, hook: Hook) -> Verdict {
    if matches!(hook, Hook::TcEgress) {
        return Verdict::Pass;
    }
    match direction {
        Direction::ClientToServer if mode & ServiceMode::QUIESCED != 0 => {
            count(Counter::QuiesceDrops.index(), 1);
            Verdict::Drop
        }
        Direction::ServerToClient if mode & ServiceMode::FENCED != 0 => {
            count(Counter::FenceDrops.index(), 1);
            Verdict::Drop
        }
        _ => Verdict::Pass,
    }
}

/// Finds the service a segment belongs to and which way it travels.
#[inline(always)]
pub(crate) fn classify(seg: &Segment) -> Option<(Direction, ServiceValue)> {
    let key = |addr: [u8; 16], port: u16| ServiceKey {
        addr,
        port,
        family: seg.family,
        _pad: 0,
    };
    // SAFETY: lookups copy the value out immediately.
    if let Some(value) = unsafe { SERVICES.get(key(seg.dst_addr, seg.dst_port)) } {
        return Some((Direction::ClientToServer, *value));
    }
    if let Some(value) = unsafe { SERVICES.get(key(seg.src_addr, seg.src_port)) } {
        return Some((Direction::ServerToClient, *value));
    }
    None
}

/// The flow a segment belongs to.
#[inline(always)]
fn flow_key(seg: &Segment, direction: Direction) -> FlowKey {
    let (server, client) = match direction {
        Direction::ClientToServer => ((seg.dst_addr, seg.dst_port), (seg.src_addr, seg.src_port)),
        Direction::ServerToClient => ((seg.src_addr, seg.src_port), (seg.dst_addr, seg.dst_port)),
    };
    FlowKey {
        server_addr: server.0,
        client_addr: client.0,
        server_port: server.1,
        client_port: client.1,
        family: seg.family,
        _pad: [0; 3],
    }
}

/// The flow's entry when its segments are to be captured: `None` when the
/// map had no room for it (counted) or userspace refused it ([`FlowFlags`];
/// its first FIN or RST marks it closing, for userspace to remove).
#[inline(always)]
fn protected(key: &FlowKey, seg: &Segment, service_id: u32) -> Option<*mut FlowValue> {
    let Some(flow) = track(key, service_id) else {
        count(Counter::FlowsUntracked.index(), 1);
        return None;
    };
    // SAFETY: `flow` points into a map value that stays valid for this run.
    let flags = unsafe { (*flow).flags };
    if flags & FlowFlags::REFUSED == 0 {
        return Some(flow);
    }
    if seg.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 && flags & FlowFlags::CLOSING == 0 {
        // SAFETY: as above.
        unsafe { (*flow).flags = flags | FlowFlags::CLOSING };
    }
    None
}

/// Looks the flow up in the map, inserting it on first sight; `None` when
/// the map is full.
#[inline(always)]
fn track(key: &FlowKey, service_id: u32) -> Option<*mut FlowValue> {
    FLOWS.get_ptr_mut(key).or_else(|| {
        let fresh = FlowValue {
            // SAFETY: no preconditions.
            first_seen_ns: unsafe { bpf_ktime_get_ns() },
            gaps: 0,
            service_id,
            flags: 0,
            _pad: 0,
        };
        // Another CPU may insert first: BPF_NOEXIST keeps its entry, and the second
        // lookup finds whichever won.
        let _ = FLOWS.insert(key, fresh, BPF_NOEXIST as u64);
        FLOWS.get_ptr_mut(key)
    })
}

/// A tracked segment could not be captured whole (`reason`: the ring was full,
/// the payload is oversize, or a copy failed). Under `drop` it is dropped so TCP retransmits
/// it (while a daemon reads the ring: see [`READER`]); under `pass` it is
/// forwarded and its flow marked as gapped.
#[inline(always)]
fn uncaptured(reason: Counter, flow: *mut FlowValue) -> Verdict {
    count(reason.index(), 1);
    // SAFETY: a global written only by the loader.
    let policy = unsafe { core::ptr::read_volatile(&RING_FULL_POLICY) };
    let passed = if policy == RingFullPolicy::Pass as u8 {
        Counter::GapsMarked
    } else if reader_gone() {
        Counter::UnreadPasses
    } else {
        count(Counter::BackpressureDrops.index(), 1);
        return Verdict::Drop;
    };
    count(passed.index(), 1);
    // SAFETY: `flow` points into a map value that stays valid for this run.
    unsafe { (*flow).gaps = (*flow).gaps.saturating_add(1) };
    Verdict::Pass
}

/// Whether the ring's reader is past its deadline ([`READER`]).
#[inline(always)]
fn reader_gone() -> bool {
    match READER.get(0) {
        // SAFETY: no preconditions.
        Some(&deadline) => deadline != 0 && unsafe { bpf_ktime_get_ns() } > deadline,
        None => false,
    }
}

/// Writes the segment into the ring as one record per [`CHUNK_SIZE`] bytes of
/// payload (one header-only record when it has none, or when its service
/// needs none of this direction's payload: see [`PayloadSkip`]). Each payload
/// byte is copied once, by the load helper straight into the ring's memory.
/// `Err` says why not every record made it.
#[inline(always)]
fn copy<S: LoadInto>(
    pkt: &Kernel<S>,
    seg: &Segment,
    hook: Hook,
    ifindex: u32,
    direction: Direction,
    service: &ServiceValue,
    flow: *mut FlowValue,
) -> Result<(), Counter> {
    let header = SCRATCH.get_ptr_mut(0).ok_or(Counter::CopyFailed)?;
    // SAFETY: the per-CPU scratch value is ours for the whole run.
    let header = unsafe { &mut *header };
    header.ts_ns = unsafe { bpf_ktime_get_ns() };
    header.src_addr = seg.src_addr;
    header.dst_addr = seg.dst_addr;
    header.ifindex = ifindex;
    header.service_id = service.id;
    header.seq = seg.seq;
    header.ack = seg.ack;
    header.payload_len = seg.payload_len as u32;
    // SAFETY: as in `uncaptured`.
    header.flow_gaps = unsafe { (*flow).gaps };
    header.src_port = seg.src_port;
    header.dst_port = seg.dst_port;
    header.window = seg.window;
    header.tcp_flags = seg.flags;
    header.family = seg.family;
    header.direction = direction as u8;
    header.hook = hook as u8;
    header.options_len = copy_options(pkt, seg, &mut header.options) as u8;
    header.flags = 0;
    header.chunk_offset = 0;
    header.chunk_len = 0;
    let skip = matches!(direction, Direction::ClientToServer)
        && service.skip & PayloadSkip::CLIENT_TO_SERVER != 0;
    if seg.payload_len == 0 || skip {
        if seg.payload_len != 0 {
            header.flags = record_flags::PAYLOAD_SKIPPED;
        }
        emit_header(header)?;
        count(Counter::PayloadSkipped.index(), seg.payload_len as u64);
        return Ok(());
    }
    if seg.payload_len > MAX_CHUNKS * CHUNK_SIZE {
        return Err(Counter::Oversize);
    }
    if free_bytes() < ring_bytes(seg.payload_len as u64) {
        return Err(Counter::RingFull);
    }
    for i in 0..MAX_CHUNKS {
        let offset = i * CHUNK_SIZE;
        if offset >= seg.payload_len {
            break;
        }
        let rest = (seg.payload_len - offset) as u64;
        if rest < CHUNK_SIZE as u64 {
            emit_tail(pkt, seg, header, offset, rest)?;
            break;
        }
        emit::<CHUNK_SIZE, S>(pkt, seg, header, offset, CHUNK_SIZE as u64)?;
    }
    count(Counter::BytesCaptured.index(), seg.payload_len as u64);
    Ok(())
}

/// The smallest size class ([`emit_tail`]): a small request.
const SMALL: usize = 256;
/// The size class of a full-size segment of a 1500-byte MTU.
const MTU: usize = 1536;
/// The size class of the tail of a GSO skb (the largest is [`CHUNK_SIZE`]).
const PAGE: usize = 4096;

/// The size class of a payload's last record: the smallest of [`SMALL`],
/// [`MTU`], [`PAGE`] and [`CHUNK_SIZE`] that holds it. One choice serves the
/// reservation ([`emit_tail`]) and the room check ([`ring_bytes`]).
#[derive(Clone, Copy)]
enum SizeClass {
    Small,
    Mtu,
    Page,
    Chunk,
}

impl SizeClass {
    /// The smallest class that holds `len` bytes (at most [`CHUNK_SIZE`]).
    #[inline(always)]
    fn of(len: u64) -> Self {
        if len <= SMALL as u64 {
            Self::Small
        } else if len <= MTU as u64 {
            Self::Mtu
        } else if len <= PAGE as u64 {
            Self::Page
        } else {
            Self::Chunk
        }
    }

    /// Ring bytes one record of this class takes (see [`slot_bytes`]).
    #[inline(always)]
    fn ring_bytes(self) -> u64 {
        match self {
            Self::Small => slot_bytes::<SMALL>(),
            Self::Mtu => slot_bytes::<MTU>(),
            Self::Page => slot_bytes::<PAGE>(),
            Self::Chunk => slot_bytes::<CHUNK_SIZE>(),
        }
    }
}

/// Emits the last chunk of a payload, `len` < [`CHUNK_SIZE`] bytes, in its
/// [`SizeClass`].
#[inline(always)]
fn emit_tail<S: LoadInto>(
    pkt: &Kernel<S>,
    seg: &Segment,
    header: &RecordHeader,
    offset: usize,
    len: u64,
) -> Result<(), Counter> {
    match SizeClass::of(len) {
        SizeClass::Small => emit::<SMALL, S>(pkt, seg, header, offset, len),
        SizeClass::Mtu => emit::<MTU, S>(pkt, seg, header, offset, len),
        SizeClass::Page => emit::<PAGE, S>(pkt, seg, header, offset, len),
        SizeClass::Chunk => emit::<CHUNK_SIZE, S>(pkt, seg, header, offset, len),
    }
}

/// Ring bytes the records of a `len`-byte payload take (see [`slot_bytes`]).
/// [`copy`] reserves none of them unless all fit: a segment is captured whole
/// or dropped whole. A GSO skb that ran out of room part-way used to leave
/// the chunks it had reserved in the ring, room that the segments that do
/// fit (a retransmission of one MSS) then lacked, while its own drop made the
/// sender resend it all: under backpressure on TC ingress, one direction of a
/// connection could stand still behind its hole while the other moved on.
#[inline(always)]
fn ring_bytes(len: u64) -> u64 {
    let full = len / CHUNK_SIZE as u64 * slot_bytes::<CHUNK_SIZE>();
    let tail = match len % CHUNK_SIZE as u64 {
        0 => 0,
        rest => SizeClass::of(rest).ring_bytes(),
    };
    full + tail
}

/// Ring bytes one record of size class `N` takes: the kernel's 8-byte record
/// header and the [`Slot`], rounded up to 8 as `bpf_ringbuf_reserve` does.
#[inline(always)]
fn slot_bytes<const N: usize>() -> u64 {
    ((8 + core::mem::size_of::<Slot<N>>() + 7) & !7) as u64
}

/// Ring bytes not taken by records (submitted or still reserved).
#[inline(always)]
fn free_bytes() -> u64 {
    let size = RECORDS.query(BPF_RB_RING_SIZE as u64);
    size.saturating_sub(RECORDS.query(BPF_RB_AVAIL_DATA as u64))
}

/// Reserves a record of size class `N`, copies the header and the `len`
/// payload bytes at `offset` into it, and submits it; discards it when the
/// packet does not hold those bytes.
#[inline(always)]
fn emit<const N: usize, S: LoadInto>(
    pkt: &Kernel<S>,
    seg: &Segment,
    header: &RecordHeader,
    offset: usize,
    len: u64,
) -> Result<(), Counter> {
    // The verifier must see `len` in [1, N]; keeping the two checks apart
    // stops LLVM from folding them into a form it cannot follow (docs/architecture.md,
    // "Implementation notes").
    let len = core::hint::black_box(len);
    if len == 0 || len > N as u64 {
        return Err(Counter::CopyFailed);
    }
    let flags = wakeup(core::mem::size_of::<Slot<N>>() as u64);
    let mut entry = RECORDS.reserve::<Slot<N>>(0).ok_or(Counter::RingFull)?;
    let slot = entry.as_mut_ptr();
    // SAFETY: `slot` is the reservation, sized for a `Slot<N>`, and `len <= N`.
    let loaded = unsafe {
        core::ptr::copy_nonoverlapping(header, &raw mut (*slot).header, 1);
        (*slot).header.chunk_offset = offset as u32;
        (*slot).header.chunk_len = len as u32;
        pkt.0.load_into(
            seg.payload_offset + offset,
            (&raw mut (*slot).data).cast::<u8>(),
            len as u32,
        )
    };
    if !loaded {
        entry.discard(0);
        return Err(Counter::CopyFailed);
    }
    entry.submit(flags);
    count(Counter::Records.index(), 1);
    Ok(())
}

/// Emits a record with no payload: the header alone.
#[inline(always)]
fn emit_header(header: &RecordHeader) -> Result<(), Counter> {
    let flags = wakeup(core::mem::size_of::<RecordHeader>() as u64);
    let mut entry = RECORDS
        .reserve::<RecordHeader>(0)
        .ok_or(Counter::RingFull)?;
    entry.write(*header);
    entry.submit(flags);
    count(Counter::Records.index(), 1);
    Ok(())
}

/// The submit flags for a record of `size` bytes: wake the reader when this
/// record takes the backlog across a multiple of [`WAKEUP_BYTES`], and
/// otherwise leave it to its timer. So a reader that fell behind is nudged
/// again every [`WAKEUP_BYTES`], not on every record: forcing a wakeup for
/// every record above the mark raised an interrupt per record, 16 % of all
/// CPU time in the journal benchmark, in `irq_work_queue`.
#[inline(always)]
fn wakeup(size: u64) -> u64 {
    // SAFETY: a global written only by the loader.
    let mark = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    let waiting = RECORDS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if mark != 0 && waiting / mark != (waiting + size) / mark {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}
