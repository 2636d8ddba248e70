//! `connmirror journal inspect` and `connmirror journal dump`: a journal taken
//! apart read-only, without a running daemon. A flow live replay found
//! divergent gets a line of its own under the table, with the offset and both
//! bytes in the words the standby logged and its takeover reports
//! ([`super::Divergence`]).

use std::{io::Write, path::Path};

use connmirror_common::Direction;
use serde::Serialize;

use super::{
    FlowReport, FlowTable,
    recovery::{Recovered, RecoveryError, recover},
    stream::{Retention, StreamLimits},
};
use crate::journal::{ReadMode, read_journal};

/// What `journal inspect` shows.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// Segment files found.
    pub segments: Vec<u64>,
    /// A torn tail recovery would cut: (file, bytes).
    pub truncated_tail: Option<(std::path::PathBuf, u64)>,
    /// Damaged records skipped (`--salvage`).
    pub salvaged: u64,
    /// Every flow in the journal, closed ones included.
    pub flows: Vec<FlowReport>,
}

/// Reads the journal in `dir` without changing it.
fn load(
    dir: &Path,
    salvage: bool,
) -> Result<(Recovered, crate::journal::JournalScan), RecoveryError> {
    let mode = if salvage {
        ReadMode::Salvage
    } else {
        ReadMode::Strict
    };
    let mut scan = read_journal(dir, mode)?;
    let records = std::mem::take(&mut scan.records);
    Ok((recover(records.into_iter().map(Ok))?, scan))
}

/// Describes every flow of the journal in `dir`: state, readiness, byte counts.
pub fn inspect(dir: &Path, salvage: bool) -> Result<Inspection, anyhow::Error> {
    let (recovered, scan) = load(dir, salvage)?;
    let limits = StreamLimits {
        retention: Retention::Full { cap: u64::MAX },
        ..StreamLimits::default()
    };
    let mut table = FlowTable::new(limits, None);
    table.restore_all(recovered);
    Ok(Inspection {
        segments: scan.segments,
        truncated_tail: scan.truncated_tail,
        salvaged: scan.salvaged,
        flows: table.report()?,
    })
}

/// Prints `inspection` as a table.
pub fn print_table(inspection: &Inspection, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>4}  {:<24} {:<24} {:<8} {:<14} {:>14} {:>14}",
        "ID", "SERVER", "CLIENT", "STATUS", "READINESS", "C2S BYTES", "S2C BYTES"
    )?;
    for flow in &inspection.flows {
        writeln!(
            out,
            "{:>4}  {:<24} {:<24} {:<8} {:<14} {:>14} {:>14}",
            flow.id,
            flow.server.to_string(),
            flow.client.to_string(),
            format!("{:?}", flow.status).to_lowercase(),
            flow.readiness.name(),
            flow.c2s.delivered,
            flow.s2c.delivered,
        )?;
    }
    for flow in &inspection.flows {
        if let Some(divergence) = &flow.divergence {
            writeln!(out, "flow {} divergent: {divergence}", flow.id)?;
        }
    }
    if let Some((file, bytes)) = &inspection.truncated_tail {
        writeln!(
            out,
            "torn tail: recovery would cut {bytes} bytes from {}",
            file.display()
        )?;
    }
    if inspection.salvaged > 0 {
        writeln!(
            out,
            "salvage skipped {} damaged records",
            inspection.salvaged
        )?;
    }
    Ok(())
}

/// Writes the journaled bytes of flow `id`, direction `dir`, to `out`; returns
/// the stream offset of the first byte written (nonzero when the retention
/// policy had already released earlier bytes).
pub fn dump(
    dir: &Path,
    id: u64,
    direction: Direction,
    salvage: bool,
    out: &mut impl Write,
) -> Result<u64, anyhow::Error> {
    let (recovered, _) = load(dir, salvage)?;
    let Some(flow) = recovered.flows.get(&id) else {
        let ids: Vec<String> = recovered.flows.keys().map(u64::to_string).collect();
        anyhow::bail!(
            "no flow {id} in the journal {} (flows: {})",
            dir.display(),
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        );
    };
    let side = match direction {
        Direction::ClientToServer => &flow.c2s,
        Direction::ServerToClient => &flow.s2c,
    };
    out.write_all(&side.bytes)?;
    out.flush()?;
    Ok(side.start)
}
