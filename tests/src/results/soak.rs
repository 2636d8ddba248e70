//! `cargo xtask soak --minutes N`: the chaos soak's summary
//! ([`crate::soak`]), against issue 19's bar: 30 minutes with every stream
//! byte-exact, no RST to them, no short connection lost or stalled, and the
//! standby's memory and open files flat.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::RunInfo;
use crate::soak::SoakSummary;

/// The faults of a summary recorded before summaries listed them.
const LEGACY_FAULTS: &str = "a standby hot restart (--pin, --journal); 50 forged heartbeats; \
     50 forged control requests; heartbeats delayed 200 ms (SIGSTOP of the agent); the \
     primary host killed (link down, SIGKILL), an automatic takeover; the primary back, \
     recovering: a failback by migration";

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
    let faults = match s.faults.is_empty() {
        true => LEGACY_FAULTS.to_owned(),
        false => s.faults.join("; "),
    };
    let method = format!(
        "`connmirror_tests::soak` (tests/src/soak.rs) for {} minutes: four echo streams \
         resumed by handoff and a run of short echo connections, through cycles of: \
         {faults}. The bar: {BAR_MINUTES} minutes, every stream byte-exact, no RST to \
         them, no short connection lost or stalled ({stalled} s), every forgery rejected, no \
         false takeover, the standby's RSS and open \
         files flat, nothing left behind.",
        r.minutes,
        stalled = crate::soak::STALLED.as_secs(),
    );
    out.push_str(&r.info.render(&method));
    out.push('\n');
    let _ = writeln!(
        out,
        "| cycles | failovers | failbacks | streams verified | short connections verified | short failures | slowest short connection | bytes verified | RSTs to streams | RSTs to others | forged rejected | false takeovers | standby RSS first / peak / last | open files first / peak / last | left behind |"
    );
    let _ = writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |"
    );
    let first = s.cycles.first();
    let last = s.cycles.last();
    let mib = |b: u64| format!("{:.1}", b as f64 / f64::from(1 << 20));
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {:.2} s | {} | {} | {} | {} of {} | {} | {} / {} / {} MiB | {} / {} / {} | {} |\n",
        s.cycles.len(),
        s.failovers,
        s.failbacks,
        s.streams,
        s.short_connections,
        s.short_failures,
        s.slowest_short_seconds,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::Cycle;

    fn cycle(n: u32, rss: u64, fds: u64) -> Cycle {
        Cycle {
            cycle: n,
            takeover_epoch: 2 * u64::from(n),
            restored: 4,
            reset: 0,
            unrecoverable: Default::default(),
            verified_bytes: 1 << 20,
            short_connections: 100,
            short_failures: 0,
            short_reset_closing: 0,
            standby_rss: rss,
            standby_fds: fds,
            seconds: 4.0,
            restart_seconds: 0.5,
        }
    }

    fn results(minutes: u64, faults: Vec<String>) -> SoakResults {
        SoakResults {
            info: RunInfo {
                command: "`cargo xtask soak --minutes 30`".into(),
                date: "2026-12-05 13:31 UTC".into(),
                commit: "abc1234".into(),
                dirty: false,
                kernel: "6.18".into(),
                cpu: "cpu".into(),
                cores: 2,
                seconds: 1800.0,
            },
            minutes,
            summary: SoakSummary {
                cycles: vec![
                    cycle(1, 100 << 20, 36),
                    cycle(2, 120 << 20, 37),
                    cycle(3, 110 << 20, 36),
                ],
                failovers: 3,
                failbacks: 3,
                streams: 4,
                short_connections: 300,
                short_failures: 0,
                slowest_short_seconds: 1.5,
                verified_bytes: 12345,
                rsts_to_streams: 0,
                rsts_to_others: 2,
                forged_sent: 300,
                forged_rejected: 300,
                false_takeovers: 0,
                seconds: 1800.0,
                leftovers: Vec::new(),
                faults,
            },
        }
    }

    /// The row gives first, peak and last of the standby's RSS and open
    /// files; the method lists the faults the summary recorded, or the
    /// faults of its time; the bar needs 30 minutes.
    #[test]
    fn the_row_has_first_peak_and_last_and_the_method_the_recorded_faults() {
        let text = render(&results(30, vec!["fault one".into(), "fault two".into()]));
        assert!(
            text.contains("through cycles of: fault one; fault two."),
            "{text}"
        );
        assert!(
            text.contains("| 3 | 3 | 3 | 4 | 300 | 0 | 1.50 s | 12345 | 0 | 2 | 300 of 300 | 0 | 100.0 / 120.0 / 110.0 MiB | 36 / 37 / 36 | nothing |"),
            "{text}"
        );
        assert!(text.contains("Bar: met."), "{text}");
        let old = render(&results(2, Vec::new()));
        assert!(old.contains(LEGACY_FAULTS), "{old}");
        assert!(old.contains("Bar: not met"), "{old}");
    }
}
