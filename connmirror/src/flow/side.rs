//! One direction of a flow ([`Side`]): the reassembled stream, the state of
//! the segments its sender sent, and the dump file it is written to. Kept
//! apart from the table so that the table's file holds the table.

use super::*;

/// One direction of a flow: its reassembled stream, the state of the segments
/// its sender sent, and where it is written.
pub(super) struct Side {
    pub(super) stream: Stream,
    pub(super) state: SideState,
    pub(super) dump: Option<Box<Dump>>,
}

impl Side {
    pub(super) fn new(limits: StreamLimits, dump: Option<Box<Dump>>) -> Self {
        Self {
            stream: Stream::new(limits),
            state: SideState::default(),
            dump,
        }
    }

    /// Feeds one record's worth of this direction into the stream and the state.
    /// `peer_scales`: the other side announced window scaling.
    pub(super) fn record(
        &mut self,
        header: &RecordHeader,
        chunk: &[u8],
        peer_scales: bool,
        mut journal: Option<Journaling<'_>>,
    ) -> io::Result<()> {
        let Self {
            stream,
            state,
            dump,
        } = self;
        if header.chunk_offset == 0 {
            state.segment(header, peer_scales);
        }
        let syn = header.tcp_flags & SYN != 0;
        if syn && header.chunk_offset == 0 {
            stream.syn(header.seq);
        }
        // SYN occupies one sequence number before the first data byte.
        let data_seq = header.seq.wrapping_add(u32::from(syn));
        if !chunk.is_empty() {
            let mut result = Ok(());
            let seq = data_seq.wrapping_add(header.chunk_offset);
            let mut offset = stream.next_offset();
            stream.data_with_gaps(seq, chunk, &mut |piece| {
                if let (Ok(()), Some(dump)) = (&result, dump.as_mut()) {
                    result = dump.write(piece);
                }
                match (piece, journal.as_mut()) {
                    (Chunk::Bytes(bytes), Some(j)) => {
                        j.data(offset, bytes);
                        offset += bytes.len() as u64;
                    }
                    (Chunk::Bytes(bytes), None) => offset += bytes.len() as u64,
                    (Chunk::Gap(len), _) => offset += len,
                }
            });
            result?;
        }
        if header.payload_skipped() {
            stream.skip(data_seq, header.payload_len);
        }
        let last_chunk = header.chunk_offset + header.chunk_len == header.payload_len;
        if header.tcp_flags & FIN != 0 && (last_chunk || header.payload_skipped()) {
            stream.fin(data_seq.wrapping_add(header.payload_len));
        }
        Ok(())
    }

    /// [`Stream::rebase`] plus this side's sender state; the dump file stops
    /// (it is an exact prefix, and the bytes in between were never seen).
    /// `retained` ends at `next_seq`. Returns the stream offset of
    /// `retained[0]`.
    pub(super) fn rebase(
        &mut self,
        next_seq: u32,
        ack: u32,
        retained: &[u8],
        moved: u64,
    ) -> Option<u64> {
        let next = self.stream.rebase(
            next_seq,
            next_seq.wrapping_sub(retained.len() as u32),
            retained,
            moved,
        )?;
        self.state.next_seq = Some(next_seq);
        self.state.ack = Some(ack);
        self.state.fin = false;
        if let Some(dump) = self.dump.as_mut() {
            // Writing a gap only marks the file stopped: it cannot fail.
            let _ = dump.write(Chunk::Gap(0));
        }
        Some(next - retained.len() as u64)
    }

    pub(super) fn report(&mut self) -> io::Result<SideReport> {
        let (file, dump_stopped_at) = match self.dump.as_mut() {
            Some(dump) => {
                dump.file.flush()?;
                (Some(dump.path.clone()), dump.stopped_at)
            }
            None => (None, None),
        };
        let stats = self.stream.stats();
        Ok(SideReport {
            state: self.state,
            handoff_only: self.stream.is_handoff_only(),
            retained: self.stream.held_bytes() as u64,
            file,
            dump_stopped_at,
            delivered: stats.delivered,
            complete: self.stream.is_complete(),
            holes: self.stream.holes(),
            missing: self.stream.missing(),
            acked: self.stream.acked(),
            conflicting_bytes: stats.conflicting_bytes,
            duplicate_bytes: stats.duplicate_bytes,
            unverified_bytes: stats.unverified_bytes,
        })
    }
}
