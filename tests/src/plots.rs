//! The benchmark plots, PNG files drawn with `plotters` from [`Results`].
//!
//! - `throughput.png`: iperf3 throughput per capture configuration (bars: the
//!   medians; dots: the single runs), each labelled with its ratio to the
//!   unmirrored baseline of the same run.
//! - `failover-cdf.png`: the distribution of failover latencies, primary death
//!   to the first resumed byte, and takeover trigger to first byte.
//! - `restore.png`: restore time against the number of connections, log-log.
//!
//! Text is drawn with `ab_glyph` from DejaVu Sans, which Debian's
//! `fonts-dejavu-core` installs (`cargo xtask setup`), so no system font
//! library is linked.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::results::{
    CaptureResults, Capturer, FailoverResults, OwnershipResults, RestoreSample, Results, median,
};

/// The font file `fonts-dejavu-core` installs.
pub const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family every text element names; [`register_font`] maps it to [`FONT_FILE`].
const FONT: &str = "sans-serif";
/// Size of every plot, in pixels.
const SIZE: (u32, u32) = (960, 540);

/// Draws every plot `results` has data for into `dir`; returns the files written.
pub fn draw_all(results: &Results, dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    if let Some(capture) = &results.capture {
        throughput(capture, &dir.join("throughput.png"))?;
        written.push("throughput.png".to_owned());
    }
    if results.ownership.is_some() || results.failover.is_some() {
        failover_cdf(
            results.ownership.as_ref(),
            results.failover.as_ref(),
            &dir.join("failover-cdf.png"),
        )?;
        written.push("failover-cdf.png".to_owned());
    }
    if let Some(failover) = &results.failover {
        restore(failover, &dir.join("restore.png"))?;
        written.push("restore.png".to_owned());
    }
    Ok(written)
}

/// Registers [`FONT_FILE`] as [`FONT`] once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_FILE).map_err(|e| {
                format!(
                    "read {FONT_FILE}: {e}; the plots need Debian's fonts-dejavu-core \
                     (`cargo xtask setup` installs it)"
                )
            })?;
            // plotters keeps the font for the whole process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT_FILE} is not a font ab_glyph can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A white drawing area of [`SIZE`] that writes the PNG at `path` when presented.
fn canvas(path: &Path) -> Result<DrawingArea<BitMapBackend<'_>, Shift>> {
    register_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// Draws the legend of `chart` at `position` in `font_size` text on a
/// translucent white box, then writes `root`, the plot's canvas, to `path`.
fn legend_and_write<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, CT>,
    root: &DrawingArea<BitMapBackend<'b>, Shift>,
    position: SeriesLabelPosition,
    font_size: u32,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, font_size))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("write {}", path.display()))
}

/// Bar colour per capturer.
fn colour(capturer: Capturer) -> RGBColor {
    match capturer {
        Capturer::None => RGBColor(150, 150, 150),
        Capturer::Mirror => RGBColor(49, 110, 180),
        Capturer::Tcpdump => RGBColor(222, 130, 40),
    }
}

/// `throughput.png`: a bar per configuration (median Gbit/s, dots for the
/// runs), labelled with its ratio to the baseline.
pub fn throughput(r: &CaptureResults, path: &Path) -> Result<()> {
    let root = canvas(path)?;
    let n = r.configs.len() as u32;
    let top = r
        .configs
        .iter()
        .flat_map(|c| &c.runs)
        .map(|s| s.gbps)
        .fold(1.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "iperf3 through the gateway: mirrored vs unmirrored ({}, {} round{})",
                r.info.date,
                r.rounds,
                if r.rounds == 1 { "" } else { "s" }
            ),
            (FONT, 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..top)?;
    let names: Vec<&str> = r.configs.iter().map(|c| c.short.as_str()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(names.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).copied().unwrap_or("").to_owned(),
            _ => String::new(),
        })
        .y_desc("Gbit/s (bar: median, dots: runs)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for (capturer, label) in [
        (Capturer::None, "no capture (baseline)"),
        (Capturer::Mirror, "connmirror mirror"),
        (Capturer::Tcpdump, "tcpdump -w FILE"),
    ] {
        let bars = (0..n)
            .zip(&r.configs)
            .filter(|(_, c)| c.capturer == capturer)
            .map(|(i, c)| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), c.median_gbps()),
                    ],
                    colour(capturer).filled(),
                );
                bar.set_margin(0, 0, 18, 18);
                bar
            });
        let fill = colour(capturer);
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill.filled()));
    }
    chart.draw_series((0..n).zip(&r.configs).flat_map(|(i, c)| {
        c.runs
            .iter()
            .map(move |s| Circle::new((SegmentValue::CenterOf(i), s.gbps), 4, BLACK.filled()))
    }))?;
    let above = Pos::new(HPos::Center, VPos::Bottom);
    chart.draw_series((0..n).zip(&r.configs).map(|(i, c)| {
        let highest = c
            .runs
            .iter()
            .map(|s| s.gbps)
            .fold(c.median_gbps(), f64::max);
        Text::new(
            format!("{:.2}×", c.median_gbps() / r.baseline_gbps(c)),
            (SegmentValue::CenterOf(i), highest + top * 0.02),
            (FONT, 17).into_font().color(&BLACK).pos(above),
        )
    }))?;
    // tcpdump keeps its rate by dropping packets: say how many, inside the bar.
    let inside = Pos::new(HPos::Center, VPos::Top);
    chart.draw_series((0..n).zip(&r.configs).filter_map(|(i, c)| {
        let t: Vec<_> = c.runs.iter().filter_map(|s| s.tcpdump.as_ref()).collect();
        let dropped = median(&t.iter().map(|t| t.dropped as f64).collect::<Vec<_>>());
        let captured = median(&t.iter().map(|t| t.captured as f64).collect::<Vec<_>>());
        (!t.is_empty()).then(|| {
            Text::new(
                format!("{:.0} % dropped", dropped / (dropped + captured) * 100.0),
                (SegmentValue::CenterOf(i), c.median_gbps() - top * 0.045),
                (FONT, 15).into_font().color(&WHITE).pos(inside),
            )
        })
    }))?;
    legend_and_write(&mut chart, &root, SeriesLabelPosition::UpperRight, 14, path)
}

/// The points of the empirical CDF of `values` drawn as steps: for each value
/// in order, (value, share below it) then (value, share up to and including it).
pub fn cdf_steps(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .flat_map(|(i, &v)| [(v, i as f64 / n), (v, (i + 1) as f64 / n)])
        .collect()
}

/// The top of the CDF's y axis: room for the legend above 1.0.
const LEGEND_HEADROOM: f64 = 1.3;

/// `failover-cdf.png`: the CDF of the ownership area's death → first byte
/// samples and of the failover area's trigger → first byte samples, log x.
pub fn failover_cdf(
    ownership: Option<&OwnershipResults>,
    failover: Option<&FailoverResults>,
    path: &Path,
) -> Result<()> {
    let mut series: Vec<(String, &[f64], RGBColor)> = Vec::new();
    if let Some(o) = ownership {
        series.push((
            format!(
                "primary death → first resumed byte, automatic failover ({} runs)",
                o.ms.len()
            ),
            &o.ms,
            RGBColor(200, 40, 40),
        ));
    }
    let palette = [RGBColor(49, 110, 180), RGBColor(40, 150, 80)];
    for (first, colour) in failover.iter().flat_map(|f| &f.first_byte).zip(palette) {
        series.push((
            format!(
                "takeover trigger → first byte, send queue {} ({} runs)",
                first.mode,
                first.ms.len()
            ),
            &first.ms,
            colour,
        ));
    }
    let all = series.iter().flat_map(|(_, v, _)| v.iter().copied());
    let (low, high) = all.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    let (low, high) = if low <= high {
        (low.max(0.01) / 1.5, high.max(low) * 1.5)
    } else {
        (1.0, 1000.0)
    };
    let root = canvas(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Failover latency: cumulative distribution", (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        // Headroom above 1.0 keeps the legend off the curves.
        .build_cartesian_2d((low..high).log_scale(), 0.0..LEGEND_HEADROOM)?;
    chart
        .configure_mesh()
        .x_labels(15)
        .x_desc("milliseconds (log scale)")
        .y_desc("share of runs at or below")
        .y_label_formatter(&|v| {
            if *v <= 1.0 {
                format!("{v:.1}")
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|v| short_number(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for (label, values, colour) in series {
        chart
            .draw_series(LineSeries::new(cdf_steps(values), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    legend_and_write(&mut chart, &root, SeriesLabelPosition::UpperLeft, 13, path)
}

/// `restore.png`: the restore step and the whole takeover against the number
/// of connections, log-log.
pub fn restore(r: &FailoverResults, path: &Path) -> Result<()> {
    let xs = r.restores.iter().map(|s| s.connections as f64);
    let ys = r
        .restores
        .iter()
        .flat_map(|s| [s.restore_ms, s.takeover_ms]);
    let x_high = xs.fold(10.0, f64::max) * 2.0;
    let (y_low, y_high) = ys.fold((f64::MAX, 1.0_f64), |(l, h), v| (l.min(v), h.max(v)));
    let y_low = y_low.clamp(0.001, 1.0) / 2.0;
    let root = canvas(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Restore time against connections ({})", r.info.date),
            (FONT, 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5..x_high).log_scale(), (y_low..y_high * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("idle connections restored (log scale)")
        .y_desc("milliseconds (log scale)")
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| short_number(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    let lines: [(&str, RGBColor, StepTime); 2] = [
        (
            "restore step (build sockets in repair mode)",
            RGBColor(49, 110, 180),
            |s| s.restore_ms,
        ),
        (
            "whole takeover (handoff to the echo example included)",
            RGBColor(222, 130, 40),
            |s| s.takeover_ms,
        ),
    ];
    for (label, colour, value) in lines {
        let points: Vec<(f64, f64)> = r
            .restores
            .iter()
            .map(|s| (s.connections as f64, value(s)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(move |p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    legend_and_write(&mut chart, &root, SeriesLabelPosition::UpperLeft, 14, path)
}

/// Which time of a restore run a line of `restore.png` shows.
type StepTime = fn(&RestoreSample) -> f64;

/// An axis label: no decimals for whole numbers and from 10 up, fewer digits below.
fn short_number(v: f64) -> String {
    if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{capture, failover, ownership};

    /// The CDF steps: each value first at the share below it, then at its own.
    #[test]
    fn cdf_steps_rise_by_one_share_per_value() {
        assert_eq!(
            cdf_steps(&[30.0, 10.0]),
            [(10.0, 0.0), (10.0, 0.5), (30.0, 0.5), (30.0, 1.0)]
        );
    }

    /// Every plot is written as a PNG of the stated size.
    #[test]
    fn plots_are_pngs_of_the_stated_size() {
        let dir = std::env::temp_dir().join(format!("cm-plots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let results = Results {
            capture: Some(capture()),
            journal: None,
            failover: Some(failover()),
            ownership: Some(ownership()),
            onhost: None,
            resume: None,
            heartbeats: None,
            mirror: None,
            fuzz: None,
            soak: None,
        };
        let written = draw_all(&results, &dir).unwrap();
        assert_eq!(
            written,
            ["throughput.png", "failover-cdf.png", "restore.png"]
        );
        for name in written {
            let png = std::fs::read(dir.join(&name)).unwrap();
            // PNG signature, then the IHDR chunk: width and height, big-endian.
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}");
            assert_eq!(&png[12..16], b"IHDR", "{name}");
            assert_eq!(png[16..20], SIZE.0.to_be_bytes(), "{name}");
            assert_eq!(png[20..24], SIZE.1.to_be_bytes(), "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
