//! What `report.json` shows of each flow: its status and, per direction, what was delivered and where it stands.

use super::*;

pub(super) fn flow_report(key: &FlowKey, flow: &mut Flow) -> io::Result<FlowReport> {
    let (server, client) = endpoints(key);
    let c2s = flow.c2s.report()?;
    let s2c = flow.s2c.report()?;
    let gapped = flow.kernel_gaps > 0 || !c2s.missing.is_empty() || !s2c.missing.is_empty();
    let status = if gapped {
        FlowStatus::Gapped
    } else if c2s.complete && s2c.complete {
        FlowStatus::Complete
    } else if flow.rst {
        FlowStatus::Reset
    } else {
        FlowStatus::Open
    };
    Ok(FlowReport {
        id: flow.id,
        readiness: flow.readiness(),
        server,
        client,
        service_id: flow.service_id,
        status,
        handshake: flow.c2s.stream.has_handshake() && flow.s2c.stream.has_handshake(),
        rst: flow.rst,
        kernel_gaps: flow.kernel_gaps,
        divergence: flow.divergence,
        c2s,
        s2c,
    })
}
/// Where a flow's capture stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowStatus {
    /// FIN seen and every byte present, both ways.
    Complete,
    /// Still open (or closed without a FIN seen): no known gap so far.
    Open,
    /// Ended by a RST; every byte the receivers acknowledged is present.
    Reset,
    /// Bytes are missing: the kernel forwarded a segment uncaptured, or a
    /// receiver acknowledged bytes the capture lacks.
    Gapped,
}

/// A flow as reported in `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    /// Journal-wide id.
    pub id: u64,
    /// Whether a restore could rebuild it now.
    #[serde(flatten)]
    pub readiness: Readiness,
    /// Service address.
    pub server: SocketAddr,
    /// Client address.
    pub client: SocketAddr,
    /// Service id.
    pub service_id: u32,
    /// Capture status.
    pub status: FlowStatus,
    /// Both SYNs were seen (the streams' origins are known exactly).
    pub handshake: bool,
    /// A RST was seen.
    pub rst: bool,
    /// Segments the kernel forwarded uncaptured (`pass` policy).
    pub kernel_gaps: u32,
    /// Live replay's first divergence on the flow (its instance produced a
    /// byte the primary did not send); `null` otherwise.
    pub divergence: Option<Divergence>,
    /// Client → server stream.
    pub c2s: SideReport,
    /// Server → client stream.
    pub s2c: SideReport,
}

/// One direction of a flow as reported in `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct SideReport {
    /// Dump file, with `--dump-dir`.
    pub file: Option<PathBuf>,
    /// Where the dump file stops because a hole was given up (it is an exact
    /// prefix of the stream up to there).
    pub dump_stopped_at: Option<u64>,
    /// Bytes reassembled in order.
    pub delivered: u64,
    /// FIN seen and every byte before it present.
    pub complete: bool,
    /// Ranges not captured, as stream offsets `[start, end)`, including bytes
    /// still in flight.
    pub holes: Vec<(u64, u64)>,
    /// The part of `holes` the receiver acknowledged: bytes it has that the
    /// capture lacks. Nonempty means the flow is gapped.
    pub missing: Vec<(u64, u64)>,
    /// Sequence, ACK, window and timestamp marks of the segments this side sent.
    pub state: SideState,
    /// Full retention exceeded its cap: the history is incomplete (handoff only).
    pub handoff_only: bool,
    /// Payload bytes held in memory (retained plus out of order).
    pub retained: u64,
    /// Highest stream offset the receiver acknowledged.
    pub acked: u64,
    /// Overlapping bytes that differed from the first copy.
    pub conflicting_bytes: u64,
    /// Bytes seen more than once, identical.
    pub duplicate_bytes: u64,
    /// Retransmitted bytes too old to compare.
    pub unverified_bytes: u64,
}
