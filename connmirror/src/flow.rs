//! The flow table: every tracked connection, its two reassembled byte streams,
//! and (with `--dump-dir`) the files each stream is written to.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use connmirror_common::{
    Direction, FlowKey, RecordHeader,
    record::tcp_flags::{FIN, RST, SYN},
};
use serde::Serialize;

use crate::{
    service::socket_addr,
    stream::{Stream, StreamLimits},
};

/// One direction of a flow: its reassembled stream and where it is written.
struct Side {
    stream: Stream,
    dump: Option<(PathBuf, BufWriter<File>)>,
}

impl Side {
    fn new(limits: StreamLimits, dump: Option<(PathBuf, BufWriter<File>)>) -> Self {
        Self {
            stream: Stream::new(limits),
            dump,
        }
    }

    /// Feeds one record's worth of this direction into the stream.
    fn record(&mut self, header: &RecordHeader, chunk: &[u8]) -> io::Result<()> {
        let Self { stream, dump } = self;
        let syn = header.tcp_flags & SYN != 0;
        if syn && header.chunk_offset == 0 {
            stream.syn(header.seq);
        }
        // SYN occupies one sequence number before the first data byte.
        let data_seq = header.seq.wrapping_add(u32::from(syn));
        if !chunk.is_empty() {
            let mut result = Ok(());
            let seq = data_seq.wrapping_add(header.chunk_offset);
            stream.data(seq, chunk, &mut |bytes| {
                if let (Ok(()), Some((_, file))) = (&result, dump.as_mut()) {
                    result = file.write_all(bytes);
                }
            });
            result?;
        }
        let last_chunk = header.chunk_offset + header.chunk_len == header.payload_len;
        if header.tcp_flags & FIN != 0 && last_chunk {
            stream.fin(data_seq.wrapping_add(header.payload_len));
        }
        Ok(())
    }

    fn report(&mut self) -> io::Result<SideReport> {
        let file = match self.dump.as_mut() {
            Some((path, file)) => {
                file.flush()?;
                Some(path.clone())
            }
            None => None,
        };
        let stats = self.stream.stats();
        Ok(SideReport {
            file,
            delivered: stats.delivered,
            complete: self.stream.is_complete(),
            holes: self.stream.holes(),
            conflicting_bytes: stats.conflicting_bytes,
            duplicate_bytes: stats.duplicate_bytes,
            unverified_bytes: stats.unverified_bytes,
        })
    }
}

/// One TCP connection of a service.
struct Flow {
    service_id: u32,
    c2s: Side,
    s2c: Side,
    kernel_gaps: u32,
    rst: bool,
}

/// Every flow seen, keyed by 4-tuple.
pub struct FlowTable {
    flows: BTreeMap<FlowKey, Flow>,
    limits: StreamLimits,
    dump_dir: Option<PathBuf>,
}

impl FlowTable {
    /// An empty table; with `dump_dir`, each stream is also written to a file there.
    pub fn new(limits: StreamLimits, dump_dir: Option<PathBuf>) -> Self {
        Self {
            flows: BTreeMap::new(),
            limits,
            dump_dir,
        }
    }

    /// Number of flows tracked.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow has been seen.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Applies one decoded record. Fails only when a dump file cannot be written.
    pub fn record(&mut self, header: &RecordHeader, chunk: &[u8]) -> io::Result<()> {
        let direction = Direction::from_u8(header.direction).unwrap_or(Direction::ClientToServer);
        let key = flow_key(header, direction);
        let flow = match self.flows.entry(key) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let flow = open_flow(
                    &key,
                    header.service_id,
                    self.limits,
                    self.dump_dir.as_deref(),
                )?;
                tracing::info!(flow = %flow_name(&key), "new flow");
                entry.insert(flow)
            }
        };
        flow.kernel_gaps = flow.kernel_gaps.max(header.flow_gaps);
        flow.rst |= header.tcp_flags & RST != 0;
        match direction {
            Direction::ClientToServer => flow.c2s.record(header, chunk),
            Direction::ServerToClient => flow.s2c.record(header, chunk),
        }
    }

    /// Raises the kernel gap count of `key` (read from the kernel's flow map at exit).
    pub fn kernel_gaps(&mut self, key: &FlowKey, gaps: u32) {
        if let Some(flow) = self.flows.get_mut(key) {
            flow.kernel_gaps = flow.kernel_gaps.max(gaps);
        }
    }

    /// Flushes the dump files and describes every flow.
    pub fn report(&mut self) -> io::Result<Vec<FlowReport>> {
        self.flows
            .iter_mut()
            .map(|(key, flow)| flow_report(key, flow))
            .collect()
    }
}

fn flow_key(header: &RecordHeader, direction: Direction) -> FlowKey {
    let (server, client) = match direction {
        Direction::ClientToServer => (
            (header.dst_addr, header.dst_port),
            (header.src_addr, header.src_port),
        ),
        Direction::ServerToClient => (
            (header.src_addr, header.src_port),
            (header.dst_addr, header.dst_port),
        ),
    };
    FlowKey {
        server_addr: server.0,
        client_addr: client.0,
        server_port: server.1,
        client_port: client.1,
        family: header.family,
        _pad: [0; 3],
    }
}

fn endpoints(key: &FlowKey) -> (SocketAddr, SocketAddr) {
    (
        socket_addr(key.server_addr, key.family, key.server_port),
        socket_addr(key.client_addr, key.family, key.client_port),
    )
}

/// A file-name-safe name such as `198.18.1.2_7000-198.18.0.2_40312`.
fn flow_name(key: &FlowKey) -> String {
    let (server, client) = endpoints(key);
    let part = |a: SocketAddr| format!("{}_{}", a.ip(), a.port()).replace(':', ".");
    format!("{}-{}", part(server), part(client))
}

fn open_flow(
    key: &FlowKey,
    service_id: u32,
    limits: StreamLimits,
    dump_dir: Option<&Path>,
) -> io::Result<Flow> {
    let side = |direction: Direction| -> io::Result<Side> {
        let dump = match dump_dir {
            Some(dir) => {
                let path = dir.join(format!("{}.{}", flow_name(key), direction.name()));
                let file = File::create(&path).map_err(|err| {
                    io::Error::new(err.kind(), format!("creating {}: {err}", path.display()))
                })?;
                Some((path, BufWriter::with_capacity(1 << 20, file)))
            }
            None => None,
        };
        Ok(Side::new(limits, dump))
    };
    Ok(Flow {
        service_id,
        c2s: side(Direction::ClientToServer)?,
        s2c: side(Direction::ServerToClient)?,
        kernel_gaps: 0,
        rst: false,
    })
}

fn flow_report(key: &FlowKey, flow: &mut Flow) -> io::Result<FlowReport> {
    let (server, client) = endpoints(key);
    let c2s = flow.c2s.report()?;
    let s2c = flow.s2c.report()?;
    // Bytes given up on, or still waiting behind a hole that never filled.
    let missing = |side: &Side| {
        let stats = side.stream.stats();
        stats.abandoned_bytes > 0 || stats.pending > 0
    };
    let gapped = flow.kernel_gaps > 0 || missing(&flow.c2s) || missing(&flow.s2c);
    let status = if gapped {
        FlowStatus::Gapped
    } else if c2s.complete && s2c.complete {
        FlowStatus::Complete
    } else {
        FlowStatus::Open
    };
    Ok(FlowReport {
        server,
        client,
        service_id: flow.service_id,
        status,
        handshake: flow.c2s.stream.has_handshake() && flow.s2c.stream.has_handshake(),
        rst: flow.rst,
        kernel_gaps: flow.kernel_gaps,
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
    /// Bytes are missing: the kernel forwarded a segment uncaptured, or a hole was given up.
    Gapped,
}

/// A flow as reported in `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
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
    /// Bytes reassembled in order.
    pub delivered: u64,
    /// FIN seen and every byte before it present.
    pub complete: bool,
    /// Missing ranges, as stream offsets `[start, end)`.
    pub holes: Vec<(u64, u64)>,
    /// Overlapping bytes that differed from the first copy.
    pub conflicting_bytes: u64,
    /// Bytes seen more than once, identical.
    pub duplicate_bytes: u64,
    /// Retransmitted bytes too old to compare.
    pub unverified_bytes: u64,
}
