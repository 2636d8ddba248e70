//! Output commit for on-host `--sync`: each outgoing segment of a protected
//! flow is held on the primary until the standby has acknowledged the
//! journal batch that covers its data and its ACK, then released, in the
//! order it was sent. One round trip to the standby per batch, instead of
//! one retransmission timeout per exchange (the earlier design dropped such
//! segments and let TCP resend them).
//!
//! How, on this kernel (6.18, which has no `sch_plug`, `fq` or BPF qdisc):
//! - [`rules`]: an xtables `bpf` match at `mangle POSTROUTING` runs the
//!   capture's hold program, which captures the segment into the ring and
//!   sends it to NFQUEUE (no `--queue-bypass`: with no agent bound, the
//!   kernel drops it, so nothing goes out unreplicated when the agent dies).
//! - [`crate::sys::nfqueue`]: the agent reads each queued segment's headers
//!   and gives verdicts; one batch verdict releases a run of them.
//! - [`holder`]: which held segments the standbys' acknowledgments cover
//!   (every connected standby's, with several), in queue order (never
//!   reordering a flow), and the fallback: when a segment waited
//!   `--sync-timeout`, everything held goes and the agent replicates
//!   asynchronously until the standbys caught up.
//! - [`OutputCommit`] (this file): the three together, as the agent runs them.
//!
//! Uses: [`crate::capture`] (the hold program), [`crate::sys`],
//! [`crate::metrics`] (its tests: `flow::key_of`). Must not use: the
//! journal, replication or any role; what the journal holds comes in as
//! plain values.

mod holder;
mod rules;

pub use holder::{Arrival, HoldStats, Holder, Segment, SyncLimit};
pub use rules::{Rules, remove_orphaned};

use std::{
    io,
    time::{Duration, Instant},
};

use connmirror_common::{
    FlowKey,
    parse::{self, Packet, Parsed},
    record::tcp_flags,
};
use prometheus_client::registry::Unit;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    capture::{Capture, CaptureError},
    metrics::Family,
    sys::{
        SyscallError,
        nfqueue::{NfqueueError, Queue, Queued, Verdict},
    },
};

/// Bytes of each queued segment the kernel copies to the agent: its IP and
/// TCP headers with options (IPv6 40 + TCP 60 at most).
const COPY_RANGE: u32 = 128;
/// Segments the kernel keeps queued before it drops new ones (TCP resends
/// them): far more than TCP's small-queue limit lets one flow have in
/// flight, times many flows.
const QUEUE_MAXLEN: u32 = 65_536;
/// The queue socket's receive buffer.
const RCVBUF: usize = 16 << 20;

/// Why output commit failed.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The queue could not be bound or used.
    #[error("the --sync queue: {0}")]
    Queue(#[from] NfqueueError),
    /// The hold program could not be loaded or pinned.
    #[error("the --sync hold program: {0}")]
    Capture(#[from] CaptureError),
    /// A BPF filesystem to pin the program for the rule could not be mounted.
    #[error("mounting a BPF filesystem to pin the --sync program in: {0}")]
    Bpffs(SyscallError),
    /// `iptables` or `ip6tables` could not run.
    #[error(
        "on-host --sync adds its NFQUEUE rules with {tool}, which could not run ({source}); \
         install it (Debian: apt-get install iptables)"
    )]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Why it could not run.
        source: io::Error,
    },
    /// A rule was refused.
    #[error("`{command}` failed: {stderr}")]
    Rule {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// What failed.
        source: io::Error,
    },
}

/// The queue, its rules and the holder, as the agent runs them.
pub struct OutputCommit {
    queue: AsyncFd<Queue>,
    holder: Holder,
    rules: Option<Rules>,
    timeout: Duration,
    /// Segments read from the queue and not yet decided.
    arrived: Vec<Queued>,
    /// Queued packets that were not TCP segments of a protected flow.
    unparsed: u64,
}

impl OutputCommit {
    /// Binds queue `queue`, then installs the rules that feed it (in that
    /// order: a rule with no queue bound drops segments); waits for
    /// `standbys` standbys (by index) and falls back after `timeout`.
    pub fn open(
        capture: &mut Capture,
        queue: u16,
        timeout: Duration,
        standbys: usize,
    ) -> Result<Self, HoldError> {
        let bound = Queue::bind(queue, COPY_RANGE, QUEUE_MAXLEN, RCVBUF)?;
        // SAFETY: the Queue owns its socket and keeps it open, unchanged,
        // for as long as the AsyncFd holds it.
        let queue = unsafe { AsyncFd::register_with_interest(bound, Interest::READABLE) }.map_err(
            |err| HoldError::Io {
                what: "registering the --sync queue with the runtime".into(),
                source: io::Error::from(err),
            },
        )?;
        let rules = Rules::install(capture, queue.get_ref().num())?;
        Ok(Self {
            queue,
            holder: Holder::new(timeout, standbys),
            rules: Some(rules),
            timeout,
            arrived: Vec::new(),
            unparsed: 0,
        })
    }

    /// Waits until the queue has segments to read.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.queue.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every segment waiting. The caller then brings the journal up to
    /// date (every segment read was captured before it was queued) and
    /// calls [`OutputCommit::decide`].
    pub fn receive(&mut self) -> Result<usize, HoldError> {
        let queue = self.queue.get_mut();
        let mut total = 0;
        loop {
            let read = queue.recv(&mut self.arrived)?;
            total += read;
            if read == 0 {
                return Ok(total);
            }
        }
    }

    /// Decides on the segments read: holds, passes or drops each one;
    /// `journaled` says where the journal's copy of a flow's server → client
    /// bytes ends. Then releases what the limits cover.
    pub fn decide(&mut self, journaled: impl Fn(&FlowKey) -> Option<u32>) -> Result<(), HoldError> {
        let now = Instant::now();
        let mut pass = None;
        for queued in std::mem::take(&mut self.arrived) {
            let Some(segment) = segment_of(&queued) else {
                self.unparsed += 1;
                self.queue.get_ref().verdict(queued.id, Verdict::Drop)?;
                continue;
            };
            match self.holder.arrive(segment, journaled(&segment.key), now) {
                Arrival::Held => {}
                Arrival::Pass => pass = Some(queued.id),
                Arrival::Drop => self.queue.get_ref().verdict(queued.id, Verdict::Drop)?,
            }
        }
        if let Some(id) = pass {
            self.queue.get_ref().verdict_batch(id, Verdict::Accept)?;
        }
        self.release()
    }

    /// Standby `standby` holds `key` up to `limit` (`None`: the flow closed).
    pub fn limit(&mut self, standby: usize, key: FlowKey, limit: Option<SyncLimit>) {
        match limit {
            Some(limit) => self.holder.set_limit(standby, key, limit),
            None => self.holder.remove_limit(standby, &key),
        }
    }

    /// Standby `standby` acknowledged position `acked` of its stream:
    /// resumes holding after a fallback once every connected standby
    /// reached its mark, and releases what the limits now cover.
    pub fn acknowledged(&mut self, standby: usize, acked: u64) -> Result<(), HoldError> {
        if self.holder.acknowledged(standby, acked) {
            tracing::info!("--sync: the standby caught up: holding again");
        }
        self.release()
    }

    /// Standby `standby` went away: its limits no longer count, so what the
    /// others cover goes (and a fallback may end, if they caught up).
    pub fn disconnected(&mut self, standby: usize) -> Result<(), HoldError> {
        if self.holder.disconnected(standby) {
            tracing::info!("--sync: the standbys still connected caught up: holding again");
        }
        self.release()
    }

    /// Standby `standby` connected; its stream's checkpoint ends at
    /// `checkpoint_end`.
    pub fn connected(&mut self, standby: usize, checkpoint_end: u64) {
        self.holder.restarted(standby, checkpoint_end);
    }

    /// Falls back to async if a segment waited past the timeout;
    /// `positions` are the replication positions (by standby index) each
    /// connected standby must then acknowledge.
    pub fn expire(&mut self, positions: &[u64]) -> Result<(), HoldError> {
        let held = self.holder.len();
        let Some(last) = self.holder.expire(Instant::now(), positions) else {
            return Ok(());
        };
        tracing::warn!(
            "--sync: no acknowledgment from the standby for {} ms: releasing {held} held \
             segments and replicating asynchronously until it catches up",
            self.timeout.as_millis()
        );
        self.queue.get_ref().verdict_batch(last, Verdict::Accept)?;
        Ok(())
    }

    /// Releases the held segments the limits cover, with one verdict.
    fn release(&mut self) -> Result<(), HoldError> {
        if let Some(last) = self.holder.release(Instant::now()) {
            self.queue.get_ref().verdict_batch(last, Verdict::Accept)?;
        }
        Ok(())
    }

    /// Stops holding: the rules go, unless `keep` (a pinned capture stays
    /// attached for the next agent: until it runs, the kernel drops what
    /// the rules match); what was still held is dropped, and TCP resends it.
    pub fn close(mut self, keep: bool) {
        let rules = self.rules.take();
        let held = self.holder.len();
        match rules {
            Some(rules) if keep => {
                rules.keep();
                tracing::info!(
                    held,
                    "--sync: rules kept with the pinned capture: the kernel drops what they \
                     match (TCP resends it) until an agent with the same --pin holds it again"
                );
            }
            _ => tracing::info!(
                held,
                "--sync: rules removed; what was still held is dropped, and TCP resends it"
            ),
        }
    }

    /// The output-commit metrics.
    pub fn families(&self) -> Vec<Family> {
        let stats = self.holder.stats();
        let counter =
            |name, help, value| Family::counter(name, help, None).count(Vec::new(), value);
        let oldest = (self.holder.oldest(Instant::now())).map_or(0.0, |d| d.as_secs_f64());
        vec![
            Family::gauge(
                "sync_holding",
                "1 while --sync holds segments; 0 after it fell back to async.",
                None,
            )
            .set(Vec::new(), f64::from(u8::from(self.holder.is_holding()))),
            Family::gauge("sync_held_segments", "Segments held now.", None)
                .set(Vec::new(), self.holder.len() as f64),
            Family::gauge(
                "sync_oldest_held",
                "How long the oldest held segment has waited.",
                Some(Unit::Seconds),
            )
            .set(Vec::new(), oldest),
            Family::histogram(
                "sync_hold",
                "How long each segment was held, from its arrival in the queue to its release \
                 (segments a fallback released are not counted).",
                Some(Unit::Seconds),
            )
            .observe(Vec::new(), self.holder.held_for().clone()),
            counter("sync_released", "Held segments released.", stats.released),
            counter(
                "sync_passed",
                "Segments let through unheld after a fallback.",
                stats.passed,
            ),
            counter(
                "sync_dropped",
                "Segments dropped because the journal lacked their bytes (a full ring); TCP resends them.",
                stats.dropped + self.unparsed,
            ),
            counter(
                "sync_fallbacks",
                "Times --sync fell back to async after --sync-timeout without the standby.",
                stats.fallbacks,
            ),
            counter(
                "sync_resumptions",
                "Times --sync held again after the standby caught up.",
                stats.resumptions,
            ),
        ]
    }
}

/// A queued packet's first bytes, standing for the whole packet: the parser
/// reads headers only, and the IP length bounds the payload.
struct Truncated<'a> {
    bytes: &'a [u8],
    len: usize,
}

impl Packet for Truncated<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.bytes.load(offset)
    }
}

/// The segment a queued packet is: always server → client (the hold
/// program queues nothing else). `None` if it is not a TCP segment.
fn segment_of(queued: &Queued) -> Option<Segment> {
    let packet = Truncated {
        bytes: &queued.data,
        len: queued.len as usize,
    };
    let Ok(Parsed::Tcp(seg)) = parse::parse_ip(&packet) else {
        return None;
    };
    let key = FlowKey {
        server_addr: seg.src_addr,
        client_addr: seg.dst_addr,
        server_port: seg.src_port,
        client_port: seg.dst_port,
        family: seg.family,
        _pad: [0; 3],
    };
    let syn = seg.flags & tcp_flags::SYN != 0;
    Some(Segment {
        id: queued.id,
        key,
        end: seg.seq.wrapping_add(seg.payload_len as u32),
        ack: (seg.flags & tcp_flags::ACK != 0).then_some(seg.ack),
        carries: seg.payload_len > 0 || syn,
    })
}

#[cfg(test)]
mod tests;
