//! `cargo xtask soak --minutes N`: the chaos soak's summary
//! ([`crate::soak`]), against issue 19's bar: 30 minutes with every stream
//! byte-exact, no RST to them, and the standby's memory and open files flat.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::RunInfo;
use crate::soak::SoakSummary;

/// Minutes that meet the bar.
pub const BAR_MINUTES: u64 = 30;

/// `bench/data/soak.json`: the latest soak.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoakResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// `--minutes`.
    pub minutes: u64,
    /// What it did.
    pub summary: SoakSummary,
}

/// The section of RESULTS.md.
pub fn render(r: &SoakResults) -> String {
    let s = &r.summary;
    let mut out = String::from("## Chaos soak: failover after failover\n\n");
    let method = format!(
        "`connmirror_tests::soak` (tests/src/soak.rs) for {} minutes: four echo streams \
         resumed by handoff and a run of short echo connections, through cycles of forged \
         heartbeats, heartbeats delayed 200 ms by SIGSTOP, the primary host killed, an \
         automatic takeover and a failback by migration. The bar: {BAR_MINUTES} minutes, \
         every stream byte-exact, no RST to them, every forged heartbeat rejected, no false \
         takeover, the standby's RSS and open files flat.",
        r.minutes
    );
    out.push_str(&r.info.render(&method));
    out.push('\n');
    let _ = writeln!(
        out,
        "| cycles | failovers | failbacks | streams verified | short connections verified | short failures | bytes verified | RSTs to streams | RSTs to others | forged rejected | false takeovers | standby RSS first / peak / last | open files first / peak / last | left behind |"
    );
    let _ = writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |"
    );
    let first = s.cycles.first();
    let last = s.cycles.last();
    let mib = |b: u64| format!("{:.1}", b as f64 / f64::from(1 << 20));
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} | {} / {} / {} MiB | {} / {} / {} | {} |\n",
        s.cycles.len(),
        s.failovers,
        s.failbacks,
        s.streams,
        s.short_connections,
        s.short_failures,
        s.verified_bytes,
        s.rsts_to_streams,
        s.rsts_to_others,
        s.forged_rejected,
        s.forged_sent,
        s.false_takeovers,
        mib(first.map_or(0, |c| c.standby_rss)),
        mib(s.peak_rss()),
        mib(last.map_or(0, |c| c.standby_rss)),
        first.map_or(0, |c| c.standby_fds),
        s.peak_fds(),
        last.map_or(0, |c| c.standby_fds),
        match s.leftovers.is_empty() {
            true => "nothing".to_owned(),
            false => s.leftovers.join(", "),
        },
    );
    let bar = r.minutes >= BAR_MINUTES;
    let _ = writeln!(
        out,
        "Bar: {}.",
        if bar {
            "met"
        } else {
            "not met (shorter than 30 minutes)"
        }
    );
    out
}
