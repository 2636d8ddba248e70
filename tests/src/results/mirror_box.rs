//! `cargo xtask bench mirror`: the mirror as a box of its own (docs/mirror.md).
//! A router's throughput with `connmirror mirror --replicate-to` on it, as a
//! ratio to the same router without it; and the highest rate a tap's mirror
//! keeps with no gapped flow, as a fraction of the link's rate.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{RunInfo, Sample, median};

/// The router's target: the same as inline capture's.
pub const ROUTER_TARGET: f64 = 0.90;

/// `bench/data/mirror.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorBoxResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// Length of each iperf3 run, in seconds.
    pub seconds: u64,
    /// The router without a mirror, round by round.
    pub router_baseline: Vec<Sample>,
    /// The router with its mirror, round by round (interleaved with the baseline).
    pub router_mirrored: Vec<Sample>,
    /// [`router_baseline`](Self::router_baseline) with 8 parallel streams.
    pub router_baseline_p8: Vec<Sample>,
    /// [`router_mirrored`](Self::router_mirrored) with 8 parallel streams.
    pub router_mirrored_p8: Vec<Sample>,
    /// The link's rate on the tapped LAN: iperf3 unlimited, the switch
    /// mirroring every port, no mirror on the tap's box, round by round.
    pub tap_link: Vec<Sample>,
    /// The tap's mirror at rising offered rates.
    pub tap_steps: Vec<TapStep>,
}

/// One offered rate through the tapped LAN, with the tap's mirror running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TapStep {
    /// The offered rate as a fraction of the link's median rate (1: unlimited).
    pub fraction: f64,
    /// What iperf3 was asked for (`-b`), Gbit/s; 0 when unlimited.
    pub offered_gbps: f64,
    /// What the run did, with the mirror's report.
    pub sample: Sample,
}

impl TapStep {
    /// Whether the tap's mirror had no gapped flow in this run.
    pub fn clean(&self) -> bool {
        self.sample
            .mirror
            .as_ref()
            .is_some_and(|m| m.gapped_flows == 0 && m.flows > 0)
    }
}

impl MirrorBoxResults {
    /// The router's median with the mirror over its median without (one
    /// stream).
    pub fn router_ratio(&self) -> f64 {
        gbps(&self.router_mirrored) / gbps(&self.router_baseline)
    }

    /// [`router_ratio`](Self::router_ratio) with 8 parallel streams.
    pub fn router_ratio_p8(&self) -> f64 {
        gbps(&self.router_mirrored_p8) / gbps(&self.router_baseline_p8)
    }

    /// The highest step's rate with no gapped flow, as a fraction of the
    /// link's median rate (measured, not offered), if any step was clean.
    pub fn tap_clean_fraction(&self) -> Option<f64> {
        let link = gbps(&self.tap_link);
        (self.tap_steps.iter())
            .filter(|step| step.clean())
            .map(|step| step.sample.gbps / link)
            .fold(None, |best, f| Some(best.map_or(f, |b: f64| b.max(f))))
    }
}

/// The median rate of `samples`, Gbit/s.
fn gbps(samples: &[Sample]) -> f64 {
    median(&samples.iter().map(|s| s.gbps).collect::<Vec<_>>())
}

/// The section of RESULTS.md.
pub fn render(r: &MirrorBoxResults) -> String {
    let method = format!(
        "IPv4. **Router:** the clients behind a router on a LAN bridge with the primary and a \
         standby (tests' `Lan::behind_router`); iperf3, one stream and then 8 (`-P 8`), client → primary for {} s. \
         Mirrored: the router runs `connmirror mirror --iface cl0 --iface eth0 --service \
         ...:5201 --replicate-to STANDBY:7402 --key ...` (TC ingress on both links, the \
         default `drop` policy) and the standby `connmirror standby --ingress none --egress \
         none --replication-listen ...`; the baseline runs neither. {} rounds, interleaved, \
         a fresh LAN per run; medians. **Tap:** the LAN's bridge mirrors every host port to \
         the tap's box (`tc ... u32 match u32 0 0 action mirred egress mirror dev m0`). The \
         link's rate: iperf3 unlimited with the switch mirroring and nothing capturing the \
         copies. Then the tap's box runs `connmirror mirror --iface tap0 --on-ring-full pass \
         --replicate-to ...` (a standby receiving) while iperf3 offers rising rates (`-b`, \
         fractions of the link's median rate; 1 is unlimited); a step is clean when the \
         mirror's report has no gapped flow.",
        r.seconds,
        r.router_baseline.len()
    );
    let mut s = String::from("## The mirror as a box of its own: router and tap\n\n");
    s.push_str(&r.info.render(&method));
    s.push('\n');
    render_router(&mut s, r);
    s.push('\n');
    render_tap(&mut s, r);
    s
}

fn render_router(s: &mut String, r: &MirrorBoxResults) {
    let verdict = |ratio| match ratio >= ROUTER_TARGET {
        true => "met",
        false => "missed",
    };
    let _ = writeln!(
        s,
        "| router | Gbit/s (runs) | ratio | mirror CPU (% of a core) | ring full | backpressure drops | gapped flows |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, samples, baseline) in [
        ("no mirror", &r.router_baseline, &r.router_baseline),
        (
            "mirror --replicate-to",
            &r.router_mirrored,
            &r.router_baseline,
        ),
        (
            "no mirror, -P 8",
            &r.router_baseline_p8,
            &r.router_baseline_p8,
        ),
        (
            "mirror --replicate-to, -P 8",
            &r.router_mirrored_p8,
            &r.router_baseline_p8,
        ),
    ] {
        let runs: Vec<String> = samples.iter().map(|x| format!("{:.2}", x.gbps)).collect();
        let mirrors: Vec<_> = samples.iter().filter_map(|x| x.mirror.as_ref()).collect();
        let sum = |f: fn(&super::MirrorSample) -> u64| mirrors.iter().map(|m| f(m)).sum::<u64>();
        let (cpu, full, drops, gapped) = match mirrors.is_empty() {
            true => ("–".into(), "–".into(), "–".into(), "–".into()),
            false => (
                format!(
                    "{:.0}",
                    median(&mirrors.iter().map(|m| m.cpu_percent).collect::<Vec<_>>())
                ),
                sum(|m| m.ring_full).to_string(),
                sum(|m| m.drops).to_string(),
                sum(|m| m.gapped_flows as u64).to_string(),
            ),
        };
        let _ = writeln!(
            s,
            "| {name} | {:.2} ({}) | {:.3} | {cpu} | {full} | {drops} | {gapped} |",
            gbps(samples),
            runs.join(", "),
            gbps(samples) / gbps(baseline),
        );
    }
    let (one, eight) = (r.router_ratio(), r.router_ratio_p8());
    let _ = writeln!(
        s,
        "\nRatio {one:.3} with one stream and {eight:.3} with 8, against a target of ≥ \
         {ROUTER_TARGET:.2}: {} and {}.",
        verdict(one),
        verdict(eight)
    );
}

fn render_tap(s: &mut String, r: &MirrorBoxResults) {
    let link = gbps(&r.tap_link);
    let runs: Vec<String> = r
        .tap_link
        .iter()
        .map(|x| format!("{:.2}", x.gbps))
        .collect();
    let _ = writeln!(
        s,
        "The tapped link's rate: {link:.2} Gbit/s ({}).\n",
        runs.join(", ")
    );
    let _ = writeln!(
        s,
        "| offered (of the link) | Gbit/s offered | Gbit/s measured | mirror CPU (% of a core) | ring full | gapped flows / flows |"
    );
    let _ = writeln!(s, "| ---: | ---: | ---: | ---: | ---: | ---: |");
    for step in &r.tap_steps {
        let offered = match step.offered_gbps > 0.0 {
            true => format!("{:.2}", step.offered_gbps),
            false => "unlimited".to_owned(),
        };
        let (cpu, full, gapped) = match &step.sample.mirror {
            Some(m) => (
                format!("{:.0}", m.cpu_percent),
                m.ring_full.to_string(),
                format!("{} / {}", m.gapped_flows, m.flows),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {:.0} % | {offered} | {:.2} | {cpu} | {full} | {gapped} |",
            step.fraction * 100.0,
            step.sample.gbps,
        );
    }
    let _ = match r.tap_clean_fraction() {
        Some(f) => writeln!(
            s,
            "\nThe highest rate with 0 gapped flows: {:.0} % of the link's rate.",
            f * 100.0
        ),
        None => writeln!(s, "\nNo rate ran with 0 gapped flows."),
    };
    if r.tap_steps
        .last()
        .is_some_and(|step| step.fraction >= 1.0 && step.clean())
    {
        let _ = writeln!(
            s,
            "Every step was clean, the unlimited one included: that rate is what the link \
             carried while the tap's box shared this host's cores, not where copies began to \
             be lost."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{MirrorSample, tests::info};

    fn sample(gbps: f64, gapped_flows: Option<usize>) -> Sample {
        Sample {
            gbps,
            mirror: gapped_flows.map(|gapped_flows| MirrorSample {
                gapped_flows,
                flows: 2,
                ..MirrorSample::default()
            }),
            ..Sample::default()
        }
    }

    /// The ratio is of the medians; the tap's answer is the highest clean
    /// step's measured rate over the link's median, whatever the order.
    #[test]
    fn the_router_ratio_and_the_taps_highest_clean_rate() {
        let step = |fraction, gbps, gapped| TapStep {
            fraction,
            offered_gbps: fraction * 10.0,
            sample: sample(gbps, Some(gapped)),
        };
        let r = MirrorBoxResults {
            info: info(),
            seconds: 10,
            router_baseline: vec![sample(10.0, None), sample(12.0, None)],
            router_mirrored: vec![sample(9.0, Some(0)), sample(10.0, Some(0))],
            router_baseline_p8: vec![sample(10.0, None)],
            router_mirrored_p8: vec![sample(9.5, Some(0))],
            tap_link: vec![sample(8.0, None), sample(12.0, None)],
            tap_steps: vec![step(0.2, 2.0, 0), step(0.5, 5.0, 0), step(0.7, 7.0, 1)],
        };
        assert!((r.router_ratio() - 9.5 / 11.0).abs() < 1e-9);
        assert_eq!(r.tap_clean_fraction(), Some(0.5));
        let text = render(&r);
        assert!(
            text.contains(
                "Ratio 0.864 with one stream and 0.950 with 8, against a target of ≥ 0.90: \
                 missed and met."
            ),
            "{text}"
        );
        assert!(
            text.contains("| 70 % | 7.00 | 7.00 | 0 | 0 | 1 / 2 |"),
            "{text}"
        );
        assert!(
            text.contains("0 gapped flows: 50 % of the link's rate."),
            "{text}"
        );
        assert!(!text.contains("Every step was clean"), "{text}");
    }
}
