//! SVG plots (plotters' SVG backend: text is written as `<text>` elements for the viewer
//! to render, so no font file is read here). Labels are escaped by the backend.

use plotters::prelude::*;

use crate::analysis::{EfficiencyTable, REFERENCE};
use crate::anchors::variant_of;
use crate::schema::Mode;
use crate::table::{format_bytes, format_seconds};

const SIZE: (u32, u32) = (900, 540);
const FONT: &str = "sans-serif";

/// One line: a label and its (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

fn bounds(values: impl Iterator<Item = f64> + Clone) -> Option<(f64, f64)> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    // A margin of a few percent in log scale, and a range even for one value.
    (lo.is_finite() && hi.is_finite() && lo > 0.0).then(|| (lo / 1.15, hi * 1.15))
}

/// A log-log line plot with one line per series. `None` when nothing has a positive
/// point to draw.
pub fn log_log(
    title: &str,
    y_desc: &str,
    series: &[Series],
    y_format: &dyn Fn(f64) -> String,
) -> Result<Option<String>, String> {
    let points = || series.iter().flat_map(|s| s.1.iter().copied());
    let (Some(xr), Some(yr)) = (bounds(points().map(|p| p.0)), bounds(points().map(|p| p.1)))
    else {
        return Ok(None);
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(84)
            .build_cartesian_2d((xr.0..xr.1).log_scale(), (yr.0..yr.1).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("sequence length N")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| y_format(*y))
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        let positive: Vec<Series> = series
            .iter()
            .map(|(label, pts)| {
                let pts = pts.iter().copied().filter(|p| p.0 > 0.0 && p.1 > 0.0);
                (label.clone(), pts.collect())
            })
            .collect();
        // Upper left: lines of cost against N rise to the right, leaving it empty.
        draw_lines(&mut chart, &positive, 3, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

/// Draws each series as a line with a dot per point, in Palette99's colours, and the
/// legend at `legend`.
pub(crate) fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    dot: i32,
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, dot, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()
        .map_err(|e| e.to_string())
}

/// Latency vs N and peak memory (or decode state) vs N, one line per variant.
pub fn setting_plots(table: &EfficiencyTable) -> Result<(Option<String>, Option<String>), String> {
    let series = |f: &dyn Fn(&crate::analysis::Cell) -> Option<f64>| -> Vec<Series> {
        table
            .rows
            .iter()
            .map(|r| {
                let pts = r
                    .cells
                    .iter()
                    .filter_map(|(n, c)| f(c).map(|y| (*n as f64, y)))
                    .collect();
                (r.label.clone(), pts)
            })
            .collect()
    };
    let what = match table.setting.mode {
        Mode::Decode => "decode state",
        _ => "peak memory",
    };
    let latency = log_log(
        &format!("latency: {}", table.setting),
        "median latency per iteration",
        &series(&|c| c.latency_s),
        &format_seconds,
    )?;
    let memory = log_log(
        &format!("{what}: {}", table.setting),
        what,
        &series(&|c| c.peak_bytes.map(|b| b as f64)),
        &|b| format_bytes(b as u64),
    )?;
    Ok((latency, memory))
}

/// One variant on the accuracy-vs-speed plot.
#[derive(Debug, Clone)]
pub struct AccuracyPoint {
    pub label: String,
    pub speedup: f64,
    pub accuracy: f64,
    pub memory_ratio: f64,
}

/// The speed of each accuracy variant, from the first training setting (else the first
/// forward one) at its longest length: speed-up and memory ratio against the reference.
pub fn accuracy_points(
    tables: &[EfficiencyTable],
    mean_accuracy: &[(String, f64)],
) -> Option<(String, Vec<AccuracyPoint>)> {
    let table = tables
        .iter()
        .find(|t| t.setting.mode == Mode::Train)
        .or_else(|| tables.iter().find(|t| t.setting.mode == Mode::Forward))?;
    let n = *table.seq_lens.last()?;
    let points: Vec<AccuracyPoint> = mean_accuracy
        .iter()
        .filter_map(|(label, acc)| {
            // The exact label first, else any row of the same variant.
            let row = table.rows.iter().find(|r| &r.label == label).or_else(|| {
                table
                    .rows
                    .iter()
                    .find(|r| variant_of(&r.label) == variant_of(label))
            })?;
            let c = row.cells.get(&n)?;
            Some(AccuracyPoint {
                label: label.clone(),
                speedup: c.speedup?,
                accuracy: *acc,
                memory_ratio: c.memory_ratio?,
            })
        })
        .collect();
    (!points.is_empty()).then(|| (format!("{}, N={n}", table.setting), points))
}

/// Accuracy against speed-up, each point's area proportional to its memory ratio (the
/// LRA paper's figure 3).
pub fn accuracy_plot(setting: &str, points: &[AccuracyPoint]) -> Result<Option<String>, String> {
    let (Some(xr), Some(_)) = (
        bounds(points.iter().map(|p| p.speedup)),
        bounds(points.iter().map(|p| p.accuracy.max(1e-9))),
    ) else {
        return Ok(None);
    };
    let lo = points
        .iter()
        .map(|p| p.accuracy)
        .fold(f64::INFINITY, f64::min);
    let hi = points
        .iter()
        .map(|p| p.accuracy)
        .fold(f64::NEG_INFINITY, f64::max);
    let yr = ((lo - 5.0).max(0.0), (hi + 5.0).min(100.0));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("accuracy vs speed ({setting}); area: memory ratio"),
                (FONT, 16),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d((xr.0 / 1.3..xr.1 * 1.3).log_scale(), yr.0..yr.1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(format!("speed-up over {REFERENCE}"))
            .y_desc("mean accuracy (%)")
            .x_label_formatter(&|x| format!("{x:.2}x"))
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, p) in points.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            // Area proportional to the memory ratio: the reference has a radius of 20 px.
            let radius = (20.0 * p.memory_ratio.max(0.0).sqrt()).clamp(3.0, 60.0) as i32;
            chart
                .draw_series(std::iter::once(Circle::new(
                    (p.speedup, p.accuracy),
                    radius,
                    color.mix(0.5).filled(),
                )))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(std::iter::once(Text::new(
                    p.label.clone(),
                    (p.speedup, p.accuracy),
                    (FONT, 12),
                )))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_log_writes_svg_text_and_escapes_labels() {
        let series = vec![
            (
                "<script>alert(1)</script>".to_string(),
                vec![(512.0, 0.01), (1024.0, 0.04)],
            ),
            ("local".to_string(), vec![(512.0, 0.01), (1024.0, 0.02)]),
        ];
        let svg = log_log("latency & more", "s", &series, &|y| format!("{y}"))
            .unwrap()
            .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("<text") && svg.contains("sequence length N"));
        assert!(
            svg.contains("&lt;script&gt;") && !svg.contains("<script"),
            "escaped"
        );
        assert!(svg.contains("latency &amp; more"));
        assert_eq!(svg.matches("<circle").count(), 4, "a marker per point");
        assert!(log_log("t", "s", &[], &|y| format!("{y}"))
            .unwrap()
            .is_none());
    }
}
