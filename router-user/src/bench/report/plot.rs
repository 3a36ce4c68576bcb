//! Latency and throughput against offered rate, one figure per workload, as PNG and SVG.
use std::{
    ops::Range,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use plotters::{
    coord::{Shift, ranged1d::AsRangedCoord, ranged1d::ValueFormatter},
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{Report, ReportError, WorkloadInfo, markdown::rate};
use crate::bench::metrics::RunMetrics;

/// DejaVu Sans 2.37 (Bitstream Vera license, redistributable; text in
/// `fonts/LICENSE-DejaVu.txt`), embedded so plots need no system font.
static DEJAVU_SANS: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1_100;
const HEIGHT: u32 = 780;

/// Registers the embedded font once; plotters draws text with the fonts registered under a
/// family name.
fn font_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            register_font(FONT, FontStyle::Normal, DEJAVU_SANS)
                .map_err(|_| "the embedded DejaVu Sans font did not load".to_owned())
        })
        .clone()
}

/// The files one workload's figure was written to.
#[derive(Clone, Debug)]
pub struct PlotFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
    /// The PNG's file name, for links from a report in the same directory.
    pub png_name: String,
}

/// A file-name-safe form of a workload name.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Stable colours for the built-in policies; others take a palette colour.
fn colour(policy: &str, index: usize) -> RGBColor {
    match policy {
        "random" => RGBColor(150, 150, 150),
        "round-robin" => RGBColor(140, 86, 75),
        "least-request" => RGBColor(188, 189, 34),
        "gie-default" => RGBColor(31, 119, 180),
        "sglang-cache-aware" => RGBColor(255, 127, 14),
        "switchyard" => RGBColor(214, 39, 40),
        "oracle" => RGBColor(0, 0, 0),
        _ => {
            let (r, g, b) = Palette99::pick(index).to_rgba().rgb();
            RGBColor(r, g, b)
        }
    }
}

type Series = Vec<(String, RGBColor, Vec<(f64, f64)>)>;

/// Axis labels without needless decimals: 12,000 → "12000", 0.5 → "0.5".
fn axis_value(value: f64) -> String {
    if value.abs() >= 10.0 {
        format!("{value:.0}")
    } else {
        rate(value)
    }
}

fn series(
    report: &Report,
    workload: &WorkloadInfo,
    value: fn(&RunMetrics) -> Option<f64>,
) -> Series {
    let mut policies: Vec<String> = report.meta.policies.clone();
    for record in report.records_of(&workload.name) {
        if !policies.contains(&record.policy) {
            policies.push(record.policy.clone());
        }
    }
    policies
        .iter()
        .enumerate()
        .filter_map(|(index, policy)| {
            let mut points: Vec<(f64, f64)> = report
                .records_of(&workload.name)
                .filter(|r| &r.policy == policy)
                .filter_map(|r| value(&r.metrics).map(|v| (r.rate_rps, v)))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!points.is_empty()).then(|| (policy.clone(), colour(policy, index), points))
        })
        .collect()
}

fn bounds(series: &Series) -> Option<(Range<f64>, f64, f64)> {
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return None;
    }
    let pad = ((x1 - x0) * 0.05).max(x1 * 0.02).max(1e-6);
    Some(((x0 - pad).max(0.0)..x1 + pad, y0, y1))
}

fn panel<DB: DrawingBackend, Y>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x: Range<f64>,
    y: Y,
    series: &Series,
    legend: bool,
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered rate (req/s)")
        .x_label_formatter(&|v| rate(*v))
        .y_label_formatter(&|v| axis_value(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (name, colour, points) in series {
        let width = if name == "switchyard" { 3 } else { 2 };
        let style = colour.stroke_width(width);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&point| Circle::new(point, 3, colour.filled())),
            )
            .map_err(err)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    series: &Series,
    legend: bool,
) -> Result<(), String> {
    let Some((x, low, high)) = bounds(series) else {
        return Ok(());
    };
    let y = (low * 0.8)..(high * 1.25).max(low * 1.01);
    panel(area, title, x, y.log_scale(), series, legend)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &Report,
    workload: &WorkloadInfo,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let cluster = &report.meta.cluster;
    let title = format!(
        "{}: {} servers, up to {} requests per run, seed {}",
        workload.name, cluster.servers, workload.requests, report.meta.seed
    );
    let body = root.titled(&title, (FONT, 24)).map_err(err)?;
    let panels = body.split_evenly((2, 2));
    latency_panel(
        &panels[0],
        "TTFT p90 (ms, log)",
        &series(report, workload, |m| m.ttft_p90_ms),
        true,
    )?;
    latency_panel(
        &panels[1],
        "TTFT p50 (ms, log)",
        &series(report, workload, |m| m.ttft_p50_ms),
        false,
    )?;
    latency_panel(
        &panels[2],
        "E2E latency p90 (ms, log)",
        &series(report, workload, |m| m.e2e_p90_ms),
        false,
    )?;
    let throughput = series(report, workload, |m| Some(m.output_tokens_per_s));
    if let Some((x, _, high)) = bounds(&throughput) {
        panel(
            &panels[3],
            "output tokens per second",
            x,
            0.0..high * 1.1,
            &throughput,
            false,
        )?;
    }
    root.present().map_err(err)
}

/// Draws `workload`'s figure into `dir` as `<name>.png` and `<name>.svg`.
pub fn plot_workload(
    report: &Report,
    workload: &WorkloadInfo,
    dir: &Path,
) -> Result<PlotFiles, ReportError> {
    let stem = file_stem(&workload.name);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let failed = |path: &Path, reason: String| ReportError::Plot {
        path: path.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_owned(),
        source,
    })?;
    font_ready().map_err(|reason| failed(&png, reason))?;
    draw(
        BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area(),
        report,
        workload,
    )
    .map_err(|reason| failed(&png, reason))?;
    draw(
        SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area(),
        report,
        workload,
    )
    .map_err(|reason| failed(&svg, reason))?;
    Ok(PlotFiles {
        png_name: format!("{stem}.png"),
        png,
        svg,
    })
}
