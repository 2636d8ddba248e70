//! `cargo xtask fuzz`: what each fuzz target's latest run did
//! (`fuzz/README.md`), against issue 19's bar: 10 million executions or 10
//! minutes, whichever comes first, with no crash, hang or out-of-memory.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Executions that meet the bar on their own.
pub const BAR_EXECUTIONS: u64 = 10_000_000;
/// Seconds that meet the bar on their own.
pub const BAR_SECONDS: u64 = 600;

/// `bench/data/fuzz.json`: the latest run of each target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FuzzResults {
    /// By target name, sorted.
    pub targets: Vec<FuzzRun>,
}

/// One target's run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FuzzRun {
    /// The target (`fuzz/fuzz_targets/NAME.rs`).
    pub name: String,
    /// The command, as typed.
    pub command: String,
    /// When it ran, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// The commit fuzzed (`+dirty` when files outside `bench/` had changes).
    pub commit: String,
    /// Inputs run (libFuzzer's `number_of_executed_units`).
    pub executions: u64,
    /// How long it ran, in seconds.
    pub seconds: u64,
    /// `clean`, or what stopped it: `crash`, `timeout`, `out-of-memory`,
    /// `error`.
    pub outcome: String,
    /// The input that stopped it, as libFuzzer saved it.
    pub artifact: Option<String>,
    /// Files in its corpus afterwards.
    pub corpus_files: usize,
}

impl FuzzRun {
    /// Whether the run meets the bar.
    pub fn meets_bar(&self) -> bool {
        self.outcome == "clean"
            && (self.executions >= BAR_EXECUTIONS || self.seconds >= BAR_SECONDS)
    }
}

impl FuzzResults {
    /// Replaces the runs of the targets `newer` ran, keeping the others.
    pub fn update(&mut self, newer: FuzzResults) {
        for run in newer.targets {
            self.targets.retain(|old| old.name != run.name);
            self.targets.push(run);
        }
        self.targets.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// The section of RESULTS.md.
pub fn render(r: &FuzzResults) -> String {
    let mut s = String::from("## Fuzzing: every decoder of outside bytes\n\n");
    let _ = writeln!(
        s,
        "- method: `cargo fuzz run TARGET --features libfuzzer fuzz/corpus/TARGET -- \
         -max_total_time=S -runs=N` (libFuzzer, AddressSanitizer, nightly) per target, \
         from the corpus kept in the repository (fuzz/README.md lists the targets); \
         each row is the target's latest run, with its own date and commit. The bar: \
         {} executions or {} s, whichever comes first, with no crash, hang or \
         out-of-memory.\n",
        BAR_EXECUTIONS, BAR_SECONDS
    );
    let _ = writeln!(
        s,
        "| target | executions | seconds | outcome | corpus files | bar | date | commit | command |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | --- | ---: | --- | --- | --- | --- |"
    );
    for run in &r.targets {
        let outcome = match &run.artifact {
            Some(artifact) => format!("{} (`{artifact}`)", run.outcome),
            None => run.outcome.clone(),
        };
        let bar = if run.meets_bar() { "met" } else { "not met" };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {outcome} | {} | {bar} | {} | {} | {} |",
            run.name,
            run.executions,
            run.seconds,
            run.corpus_files,
            run.date,
            run.commit,
            run.command
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, executions: u64, seconds: u64, outcome: &str) -> FuzzRun {
        FuzzRun {
            name: name.into(),
            command: "`cargo xtask fuzz`".into(),
            date: "2026-12-05 10:00 UTC".into(),
            commit: "abc1234".into(),
            executions,
            seconds,
            outcome: outcome.into(),
            artifact: None,
            corpus_files: 3,
        }
    }

    /// A later run of a target replaces its row; the bar needs a clean run
    /// and either count.
    #[test]
    fn a_targets_latest_run_replaces_its_row_and_is_judged_against_the_bar() {
        let mut r = FuzzResults {
            targets: vec![
                run("packet", 5, 1, "clean"),
                run("control", 20_000_000, 60, "clean"),
            ],
        };
        r.update(FuzzResults {
            targets: vec![
                run("packet", 9_000_000, 600, "clean"),
                run("heartbeat", 10, 5, "crash"),
            ],
        });
        let names: Vec<&str> = r.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["control", "heartbeat", "packet"]);
        let bars: Vec<bool> = r.targets.iter().map(FuzzRun::meets_bar).collect();
        assert_eq!(bars, [true, false, true]);
        let text = render(&r);
        assert!(
            text.contains("| heartbeat | 10 | 5 | crash | 3 | not met |"),
            "{text}"
        );
    }
}
