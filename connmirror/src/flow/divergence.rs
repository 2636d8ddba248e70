//! A live connection's divergence (docs/failover.md, "Live replay") as the
//! flow table keeps it: the first server → client byte on which the standby's
//! instance disagreed with the primary. Live replay ([`crate::resume::live`])
//! finds it and hands it to whoever owns the table ([`FlowTable::mark_divergent`]);
//! the table journals it as a [`Record::Divergent`] after the flow's other
//! records, carries it in checkpoints, and recovery gives it back, so
//! `report.json` and `connmirror journal inspect` show the flow divergent.
//!
//! The type lives here, not in live replay, because the journal's records
//! ([`super::record`]) hold it and `flow` must not use `resume`.

use super::*;

/// The first byte on which the instance and the primary disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// Server → client stream offset of the byte.
    pub offset: u64,
    /// The byte the primary sent.
    pub primary: u8,
    /// The byte the instance produced.
    pub instance: u8,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the instance's output differs from the primary's at offset {} \
             (primary {:#04x}, instance {:#04x})",
            self.offset, self.primary, self.instance
        )
    }
}

impl FlowTable {
    /// Marks the flow of `key` divergent and, when journaling, queues its
    /// [`Record::Divergent`] behind the flow's records so far. Only the first
    /// divergence of a flow counts; `false` when the table has no such flow
    /// (live replay fed from an on-host agent's replication: the flow is in
    /// the replica, not in this table).
    pub fn mark_divergent(&mut self, key: &FlowKey, divergence: Divergence) -> bool {
        let Some(flow) = self.flows.get_mut(key) else {
            return false;
        };
        if flow.divergence.is_some() {
            return true;
        }
        flow.divergence = Some(divergence);
        if let Some(records) = self.records.as_mut() {
            records.push(Record::Divergent {
                id: flow.id,
                divergence,
            });
        }
        true
    }
}

impl Flow {
    /// Emits the flow's divergence, if it has one, as [`Record::Divergent`]
    /// (a checkpoint carries it, or compaction would forget it).
    pub(super) fn divergent<E>(
        &self,
        emit: &mut impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        match self.divergence {
            Some(divergence) => emit(Record::Divergent {
                id: self.id,
                divergence,
            }),
            None => Ok(()),
        }
    }
}
