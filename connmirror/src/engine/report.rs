//! `report.json`: what a run captured, decoded and journaled, written atomically when the engine finishes.

use super::*;

/// Records decoded by userspace.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReaderStats {
    /// Records read from the ring.
    pub records: u64,
    /// Records rejected by [`RecordHeader::decode`].
    pub decode_errors: u64,
    /// Flows evicted under the memory cap.
    pub evicted: u64,
    /// Closed flows pruned once quiet.
    pub pruned: u64,
    /// Flows refused protection at the memory cap.
    pub refused: u64,
}
/// Everything `report.json` holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Kernel counters by name, summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    /// Malformed frames by reason.
    pub malformed: BTreeMap<&'static str, u64>,
    /// Userspace reader counts.
    pub userspace: ReaderStats,
    /// Where capture attached on each interface, and why (`auto` resolved).
    pub attach: Vec<AttachPoint>,
    /// Every flow seen.
    pub flows: Vec<FlowReport>,
    /// Journal counters, with `--journal`.
    pub journal: Option<JournalSummary>,
    /// What the role running the engine adds (a standby's takeovers and
    /// refusals), as top-level keys of `report.json`: the engine does not know
    /// the roles' types.
    #[serde(flatten)]
    pub role: serde_json::Map<String, serde_json::Value>,
}
/// What the journal wrote during the run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct JournalSummary {
    /// Records appended.
    pub records: u64,
    /// Bytes appended, framing included.
    pub bytes: u64,
    /// `fdatasync` calls on segment files.
    pub fsyncs: u64,
    /// Slowest `fdatasync`, in microseconds.
    pub max_fsync_us: u64,
}
impl From<&JournalStats> for JournalSummary {
    fn from(stats: &JournalStats) -> Self {
        Self {
            records: stats.records,
            bytes: stats.bytes_appended,
            fsyncs: stats.fsyncs,
            max_fsync_us: stats.max_fsync.as_micros() as u64,
        }
    }
}
pub(super) fn report(
    capture: &Capture,
    table: &mut FlowTable,
    userspace: ReaderStats,
) -> anyhow::Result<Report> {
    let counters = capture.counters()?;
    for (key, gaps) in capture.flow_gaps()? {
        table.kernel_gaps(&key, gaps);
    }
    let flows = table.report().context("flushing dump files")?;
    Ok(Report {
        counters: named_counters(&counters),
        malformed: Malformed::ALL
            .iter()
            .map(|reason| (reason.name(), counters.malformed(*reason)))
            .collect(),
        userspace,
        attach: Vec::new(),
        flows,
        journal: None,
        role: serde_json::Map::new(),
    })
}
pub(super) fn named_counters(counters: &Counters) -> BTreeMap<&'static str, u64> {
    Counter::ALL
        .iter()
        .map(|counter| (counter.name(), counters.get(*counter)))
        .collect()
}
pub(super) fn log_summary(report: &Report) {
    let Report {
        counters,
        malformed,
        userspace,
        flows,
        journal,
        ..
    } = report;
    tracing::info!(?counters, "kernel counters");
    if let Some(journal) = journal {
        tracing::info!(?journal, "journal");
    }
    tracing::info!(?malformed, "malformed frames");
    tracing::info!(
        records = userspace.records,
        decode_errors = userspace.decode_errors,
        "reader"
    );
    for flow in flows {
        tracing::info!(
            server = %flow.server,
            client = %flow.client,
            status = ?flow.status,
            c2s = flow.c2s.delivered,
            s2c = flow.s2c.delivered,
            "flow"
        );
    }
}
/// Writes the report atomically (temporary file beside it, fsync, rename).
pub(super) fn write_report(path: &Path, report: &Report) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec_pretty(report).context("serialising the report")?;
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    tracing::info!(path = %path.display(), "report written");
    Ok(())
}
