//! PNG charts for the command-line tool: learning curves across purchase rounds and per-epoch
//! training curves, drawn with plotters and an embedded DejaVu Sans font.
//!
//! Text never depends on system fonts: the first chart registers DejaVu Sans (about 740 KiB,
//! linked into the binary) as plotters' `sans-serif` family. Files are written atomically: the
//! PNG is encoded into a temporary file beside the target, which is then renamed over it.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// Width of every chart in pixels.
pub const WIDTH: u32 = 1000;
/// Height of every chart in pixels.
pub const HEIGHT: u32 = 650;

/// One named line of a [`line_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text; long names are shortened with an ellipsis to fit the legend.
    pub name: String,
    /// Points in any order; they are joined in order of increasing `x`.
    pub points: Vec<Point>,
}

/// One point of a [`Series`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Position along the x axis, e.g. the number of labels bought.
    pub x: f64,
    /// Value plotted, e.g. the mean macro F1 over seeds.
    pub y: f64,
    /// Half-width of a band drawn around `y`, e.g. the standard deviation over seeds.
    pub spread: Option<f64>,
}

/// Metrics of one training epoch for [`training_curves`].
///
/// Both arrays hold, in order: loss, macro F1, exact-match accuracy, Hamming loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    /// Epoch number, drawn on the x axis.
    pub epoch: usize,
    /// Metrics on the training set.
    pub train: [f64; 4],
    /// Validation metrics, absent for epochs that were not evaluated.
    pub val: Option<[f64; 4]>,
}

/// Panel titles of [`training_curves`], in the order of [`EpochPoint::train`].
const METRIC_NAMES: [&str; 4] = ["loss", "macro F1", "exact-match accuracy", "Hamming loss"];

/// Okabe-Ito colours (without yellow, too faint on white): distinct for colour-blind readers.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(60, 60, 60),
];

const FONT: &str = "sans-serif";
const TITLE_SIZE: f64 = 26.0;
const CAPTION_SIZE: f64 = 19.0;
const AXIS_DESC_SIZE: f64 = 17.0;
const TICK_SIZE: f64 = 14.0;
const LEGEND_SIZE: f64 = 15.0;
const MARKER_SIZE: i32 = 4;
/// Height of one legend row in pixels.
const LEGEND_ROW: i32 = 24;
/// Widest legend panel beside a line chart; longer names are shortened.
const LEGEND_MAX_WIDTH: u32 = 260;

/// Draws a line chart with one line per series and writes it as a PNG to `path`.
///
/// Every series gets its own colour and marker shape; where points carry a `spread`, a
/// translucent band covers `y - spread ..= y + spread`. The legend sits to the right of the
/// plot so it never hides data. Points with a non-finite `x` or `y` are skipped, and a
/// non-finite or negative spread is ignored. With no finite point at all the chart is still
/// written, with a "no data" note in the plot area.
///
/// # Errors
///
/// Fails if the font cannot be registered, drawing fails, or the file cannot be written.
///
/// # Example
///
/// ```no_run
/// use labelwise::plot::{line_chart, Point, Series};
///
/// let entropy = Series {
///     name: "entropy".to_string(),
///     points: vec![
///         Point { x: 100.0, y: 0.61, spread: Some(0.03) },
///         Point { x: 200.0, y: 0.72, spread: Some(0.02) },
///     ],
/// };
/// let path = std::path::Path::new("f1.png");
/// line_chart(path, "Macro F1", "labels bought", "macro F1", &[entropy])?;
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let cleaned: Vec<(String, Vec<Point>)> = series
        .iter()
        .map(|s| (s.name.clone(), finite_sorted(&s.points)))
        .collect();

    let pixels = render(|root| {
        let plot_area = draw_title(root, title)?;

        // Size the legend panel to the longest name, within bounds.
        let legend_font = font(LEGEND_SIZE);
        let mut names = Vec::with_capacity(cleaned.len());
        let mut widest = 0;
        for (name, points) in &cleaned {
            // Say so when a series has nothing to draw, rather than list a line that is absent.
            let name = if points.is_empty() {
                format!("{name} (no data)")
            } else {
                name.clone()
            };
            let name = fit_text(root, &name, &legend_font, LEGEND_MAX_WIDTH - 50)?;
            widest = widest.max(root.estimate_text_size(&name, &legend_font)?.0);
            names.push(name);
        }
        let legend_width = if names.is_empty() { 0 } else { widest + 70 };
        let (chart_area, legend_area) =
            plot_area.split_horizontally(plot_area.dim_in_pixel().0.saturating_sub(legend_width));

        let all_points = cleaned.iter().flat_map(|(_, points)| points.iter());
        let Some((x_range, y_range)) = data_ranges(all_points) else {
            return empty_chart(&chart_area, x_label, y_label);
        };

        let mut chart = ChartBuilder::on(&chart_area)
            .margin(10)
            .margin_right(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range, y_range)?;
        let ticks = Ticks {
            x: 10,
            y: 8,
            whole_x: false,
        };
        configure_mesh(&mut chart, root, x_label, y_label, ticks)?;

        // Bands first, so lines and markers of every series stay on top of them.
        for (index, (_, points)) in cleaned.iter().enumerate() {
            let colour = PALETTE[index % PALETTE.len()];
            for band in spread_bands(points) {
                chart.draw_series(std::iter::once(Polygon::new(
                    band,
                    colour.mix(0.18).filled(),
                )))?;
            }
        }
        for (index, (_, points)) in cleaned.iter().enumerate() {
            let style = series_style(index);
            let line = points.iter().map(|p| (p.x, p.y));
            chart.draw_series(LineSeries::new(line, style.colour.stroke_width(2)))?;
            for p in points {
                chart.plotting_area().draw(&marker(style, (p.x, p.y)))?;
            }
        }

        // Legend: one row per series, aligned with the top of the plot.
        let entries: Vec<(&str, SeriesStyle)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), series_style(i)))
            .collect();
        draw_legend_rows(&legend_area, &entries, (0, 15))?;
        Ok(())
    })?;
    write_png_atomically(path, &pixels)
}

/// Draws training curves as a 2x2 grid and writes it as a PNG to `path`.
///
/// The panels show loss, macro F1, exact-match accuracy and Hamming loss against the epoch,
/// each with a training line and, for the epochs that have one, a validation line. Non-finite
/// values are skipped; a panel without any finite value shows a "no data" note.
///
/// # Errors
///
/// Fails if the font cannot be registered, drawing fails, or the file cannot be written.
pub fn training_curves(path: &Path, title: &str, epochs: &[EpochPoint]) -> anyhow::Result<()> {
    let pixels = render(|root| {
        let plot_area = draw_title(root, title)?;
        let panels = plot_area.split_evenly((2, 2));
        for (metric, panel) in panels.iter().enumerate() {
            let train = metric_line(epochs, metric, |e| Some(e.train));
            let val = metric_line(epochs, metric, |e| e.val);
            draw_training_panel(root, panel, METRIC_NAMES[metric], &train, &val)?;
        }
        Ok(())
    })?;
    write_png_atomically(path, &pixels)
}

/// One panel of [`training_curves`]: a train and a validation line against the epoch.
fn draw_training_panel(
    root: &Area<'_>,
    panel: &Area<'_>,
    metric: &str,
    train: &[Point],
    val: &[Point],
) -> anyhow::Result<()> {
    let panel = panel.titled(metric, font(CAPTION_SIZE))?;
    let Some((x_range, y_range)) = data_ranges(train.iter().chain(val)) else {
        return empty_chart(&panel, "epoch", metric);
    };
    let epochs = train.iter().chain(val).map(|p| p.x);
    let epoch_count = (epochs.clone().fold(f64::NEG_INFINITY, f64::max)
        - epochs.fold(f64::INFINITY, f64::min)) as usize
        + 1;

    let mut chart = ChartBuilder::on(&panel)
        .margin(8)
        .margin_right(18)
        .x_label_area_size(40)
        .y_label_area_size(62)
        .build_cartesian_2d(x_range.clone(), y_range.clone())?;
    let ticks = Ticks {
        x: epoch_count.clamp(2, 8),
        y: 6,
        whole_x: true,
    };
    configure_mesh(&mut chart, root, "epoch", metric, ticks)?;

    let mut entries = Vec::with_capacity(2);
    for (index, (name, points)) in [("train", train), ("validation", val)]
        .into_iter()
        .enumerate()
    {
        if points.is_empty() {
            continue;
        }
        let style = series_style(index);
        let line = points.iter().map(|p| (p.x, p.y));
        chart.draw_series(LineSeries::new(line, style.colour.stroke_width(2)))?;
        // Markers only while they stay apart; on long runs they would merge into a thick line.
        if points.len() <= 40 {
            for p in points {
                chart.plotting_area().draw(&marker(style, (p.x, p.y)))?;
            }
        }
        entries.push((name, style));
    }

    // Put the legend in the corner that the curves leave most free.
    let corner = quietest_corner(train.iter().chain(val), &x_range, &y_range);
    draw_legend_box(&chart.plotting_area().strip_coord_spec(), &entries, corner)?;
    Ok(())
}

/// Legend rows (line sample, marker, name) stacked downwards from `origin`, in pixels.
fn draw_legend_rows(
    area: &Area<'_>,
    entries: &[(&str, SeriesStyle)],
    origin: (i32, i32),
) -> anyhow::Result<()> {
    let text_style = font(LEGEND_SIZE).pos(Pos::new(HPos::Left, VPos::Center));
    for (row, (name, style)) in entries.iter().enumerate() {
        let x = origin.0;
        let y = origin.1 + LEGEND_ROW * row as i32 + LEGEND_ROW / 2;
        area.draw(&PathElement::new(
            vec![(x + 6, y), (x + 36, y)],
            style.colour.stroke_width(2),
        ))?;
        area.draw(&marker(*style, (x + 21, y)))?;
        area.draw(&Text::new(*name, (x + 46, y), text_style.clone()))?;
    }
    Ok(())
}

/// A framed legend in one corner of a plotting area.
fn draw_legend_box(
    area: &Area<'_>,
    entries: &[(&str, SeriesStyle)],
    corner: Corner,
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let text_style = font(LEGEND_SIZE);
    let mut widest = 0;
    for (name, _) in entries {
        widest = widest.max(area.estimate_text_size(name, &text_style)?.0);
    }
    let (box_width, box_height) = (widest as i32 + 56, LEGEND_ROW * entries.len() as i32 + 8);
    let (width, height) = area.dim_in_pixel();
    let inset = 8;
    let left = if corner.right {
        width as i32 - box_width - inset
    } else {
        inset
    };
    let top = if corner.top {
        inset
    } else {
        height as i32 - box_height - inset
    };
    let frame = [(left, top), (left + box_width, top + box_height)];
    area.draw(&Rectangle::new(frame, WHITE.mix(0.85).filled()))?;
    area.draw(&Rectangle::new(frame, BLACK.mix(0.35)))?;
    draw_legend_rows(area, entries, (left, top + 4))
}

/// The bitmap drawing area every chart draws on.
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A chart over `f64` axes on a bitmap.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Renders a chart of [`WIDTH`] x [`HEIGHT`] into an RGB buffer on a white background.
fn render(draw: impl FnOnce(&Area<'_>) -> anyhow::Result<()>) -> anyhow::Result<Vec<u8>> {
    register_font()?;
    let mut pixels = vec![255u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(pixels)
}

/// Registers the embedded DejaVu Sans as plotters' `sans-serif` family, once per process.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if registered {
        Ok(())
    } else {
        bail!("the embedded DejaVu Sans font could not be parsed")
    }
}

fn font(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

/// Draws the title across the top of `root` and returns the area below it.
fn draw_title<'a>(root: &Area<'a>, title: &str) -> anyhow::Result<Area<'a>> {
    let style = font(TITLE_SIZE);
    let title = fit_text(root, title, &style, WIDTH - 40)?;
    // plotters puts the title's top at the very edge; a small margin lets it breathe.
    Ok(root.margin(8, 0, 0, 0).titled(&title, style)?)
}

/// How many tick labels to aim for on each axis.
#[derive(Clone, Copy)]
struct Ticks {
    x: usize,
    y: usize,
    /// Label only whole numbers on the x axis, e.g. epochs.
    whole_x: bool,
}

/// Axes, grid, tick labels and axis descriptions shared by all charts.
fn configure_mesh(
    chart: &mut Chart<'_, '_>,
    root: &Area<'_>,
    x_label: &str,
    y_label: &str,
    ticks: Ticks,
) -> anyhow::Result<()> {
    let desc_font = font(AXIS_DESC_SIZE);
    let plot_pixels = chart.plotting_area().dim_in_pixel();
    let x_label = fit_text(root, x_label, &desc_font, plot_pixels.0.saturating_sub(10))?;
    let y_label = fit_text(root, y_label, &desc_font, plot_pixels.1.saturating_sub(10))?;
    chart
        .configure_mesh()
        .x_labels(ticks.x)
        .y_labels(ticks.y)
        .x_label_formatter(&|v| {
            if ticks.whole_x && v.fract() != 0.0 {
                String::new()
            } else {
                tick_label(*v)
            }
        })
        .y_label_formatter(&|v| tick_label(*v))
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(font(TICK_SIZE))
        .axis_desc_style(desc_font)
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .axis_style(BLACK.mix(0.7))
        .draw()?;
    Ok(())
}

/// An empty plot frame with a "no data" note, for charts without a single finite point.
fn empty_chart(area: &Area<'_>, x_label: &str, y_label: &str) -> anyhow::Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(62)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style(font(AXIS_DESC_SIZE))
        .draw()?;
    chart.plotting_area().draw(&Text::new(
        "no data",
        (0.5, 0.5),
        font(CAPTION_SIZE)
            .color(&BLACK.mix(0.6))
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    Ok(())
}

/// Colour and marker shape of the series at `index`.
#[derive(Clone, Copy)]
struct SeriesStyle {
    colour: RGBColor,
    shape: usize,
}

fn series_style(index: usize) -> SeriesStyle {
    // Shapes cycle with a period (3) coprime to the palette's (7), so the first 21 series
    // differ in the pair (colour, shape).
    SeriesStyle {
        colour: PALETTE[index % PALETTE.len()],
        shape: index % 3,
    }
}

/// A filled marker (circle, triangle or square) at `at`, in whatever coordinates the caller uses.
fn marker<'a, DB: DrawingBackend + 'a, C: Clone + 'a>(
    style: SeriesStyle,
    at: C,
) -> DynElement<'a, DB, C> {
    let fill = style.colour.filled();
    let size = MARKER_SIZE;
    match style.shape {
        0 => (EmptyElement::at(at) + Circle::new((0, 0), size, fill)).into_dyn(),
        1 => (EmptyElement::at(at) + TriangleMarker::new((0, 0), size + 1, fill)).into_dyn(),
        _ => {
            (EmptyElement::at(at) + Rectangle::new([(-size, -size), (size, size)], fill)).into_dyn()
        }
    }
}

/// The finite points of `points`, sorted by `x`; a non-finite or negative spread is dropped.
fn finite_sorted(points: &[Point]) -> Vec<Point> {
    let mut kept: Vec<Point> = points
        .iter()
        .filter(|p| p.x.is_finite() && p.y.is_finite())
        .map(|p| Point {
            spread: p.spread.filter(|s| s.is_finite() && *s >= 0.0),
            ..*p
        })
        .collect();
    kept.sort_by(|a, b| a.x.total_cmp(&b.x));
    kept
}

/// Finite points of one metric over the epochs, taken from the arrays `pick` returns.
fn metric_line(
    epochs: &[EpochPoint],
    metric: usize,
    pick: impl Fn(&EpochPoint) -> Option<[f64; 4]>,
) -> Vec<Point> {
    let points: Vec<Point> = epochs
        .iter()
        .filter_map(|e| {
            pick(e).map(|m| Point {
                x: e.epoch as f64,
                y: m[metric],
                spread: None,
            })
        })
        .collect();
    finite_sorted(&points)
}

/// Axis ranges covering every point and band, padded so no point sits on the frame.
///
/// Returns `None` when there is no point. A range of zero width (one point, or all values
/// equal) is widened around its value, since plotters cannot map an empty range.
fn data_ranges<'a>(
    points: impl Iterator<Item = &'a Point>,
) -> Option<(std::ops::Range<f64>, std::ops::Range<f64>)> {
    let mut x = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y = (f64::INFINITY, f64::NEG_INFINITY);
    for p in points {
        let spread = p.spread.unwrap_or(0.0);
        x = (x.0.min(p.x), x.1.max(p.x));
        y = (y.0.min(p.y - spread), y.1.max(p.y + spread));
    }
    if x.0 > x.1 {
        return None;
    }
    Some((padded(x.0, x.1), padded(y.0, y.1)))
}

/// `lo..hi` grown by 5% each side, or around the value when `lo == hi`.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let width = hi - lo;
    if width > f64::EPSILON * lo.abs().max(hi.abs()) && width.is_finite() {
        return lo - 0.05 * width..hi + 0.05 * width;
    }
    let centre = 0.5 * (lo + hi);
    let half = if centre == 0.0 {
        1.0
    } else {
        0.1 * centre.abs()
    };
    centre - half..centre + half
}

/// Polygons for the spread band, one per run of consecutive points that carry a spread.
fn spread_bands(points: &[Point]) -> Vec<Vec<(f64, f64)>> {
    let mut bands = Vec::new();
    for run in points.split(|p| p.spread.is_none()) {
        if run.len() < 2 {
            // A lone point has no band width along x; its marker stands alone.
            continue;
        }
        let upper = run.iter().map(|p| (p.x, p.y + p.spread.unwrap_or(0.0)));
        let lower = run
            .iter()
            .rev()
            .map(|p| (p.x, p.y - p.spread.unwrap_or(0.0)));
        bands.push(upper.chain(lower).collect());
    }
    bands
}

/// A corner of a plotting area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Corner {
    right: bool,
    top: bool,
}

/// The corner with the fewest points near it, for a legend that hides as little as possible.
fn quietest_corner<'a>(
    points: impl Iterator<Item = &'a Point>,
    x: &std::ops::Range<f64>,
    y: &std::ops::Range<f64>,
) -> Corner {
    // Count points in each corner's third of the plot: the legend box is about that big.
    // Ties go to the first corner listed, upper right, where readers look for a legend.
    let corners = [
        Corner {
            right: true,
            top: true,
        },
        Corner {
            right: false,
            top: true,
        },
        Corner {
            right: true,
            top: false,
        },
        Corner {
            right: false,
            top: false,
        },
    ];
    let mut counts = [0usize; 4];
    let third_x = (x.end - x.start) / 3.0;
    let third_y = (y.end - y.start) / 3.0;
    for p in points {
        let right = p.x > x.end - third_x;
        let left = p.x < x.start + third_x;
        let top = p.y > y.end - third_y;
        let bottom = p.y < y.start + third_y;
        for (count, corner) in counts.iter_mut().zip(corners) {
            let near_x = if corner.right { right } else { left };
            let near_y = if corner.top { top } else { bottom };
            *count += usize::from(near_x && near_y);
        }
    }
    let quietest = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    corners[quietest]
}

/// `text` shortened with an ellipsis until it is at most `max_width` pixels wide.
fn fit_text(
    area: &Area<'_>,
    text: &str,
    style: &TextStyle<'_>,
    max_width: u32,
) -> anyhow::Result<String> {
    // Newlines would be drawn as missing glyphs; cap the length before measuring.
    let mut chars: Vec<char> = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let whole = chars.len();
    chars.truncate(200);
    loop {
        let mut candidate: String = chars.iter().collect();
        if chars.len() < whole {
            candidate.push('…');
        }
        if chars.is_empty() || area.estimate_text_size(&candidate, style)?.0 <= max_width {
            return Ok(candidate);
        }
        chars.pop();
    }
}

/// A short tick label: integers without a fraction, tiny or huge values in scientific form.
fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e5).contains(&magnitude) {
        format!("{value:.1e}")
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Encodes `pixels` as a PNG in a temporary file beside `path`, then renames it over `path`.
fn write_png_atomically(path: &Path, pixels: &[u8]) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("plot path {} has no file name", path.display()))?;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp_path = folder.join(temp_name);

    let written = write_png(&temp_path, pixels).and_then(|()| {
        fs::rename(&temp_path, path)
            .with_context(|| format!("renaming {} to {}", temp_path.display(), path.display()))
    });
    if written.is_err() {
        // Best effort: the original error matters more than a leftover temporary file.
        let _ = fs::remove_file(&temp_path);
    }
    written
}

fn write_png(path: &Path, pixels: &[u8]) -> anyhow::Result<()> {
    use image::ImageEncoder;

    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = BufWriter::new(file);
    image::codecs::png::PngEncoder::new(&mut writer)
        .write_image(pixels, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("encoding PNG {}", path.display()))?;
    writer
        .flush()
        .with_context(|| format!("writing {}", path.display()))?;
    let file = writer
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder for one test's charts. With `LABELWISE_PLOT_SAMPLES` set, charts go
    /// there instead, so a person can look at them.
    fn chart_folder(test: &str) -> anyhow::Result<PathBuf> {
        let folder = match std::env::var_os("LABELWISE_PLOT_SAMPLES") {
            Some(folder) => PathBuf::from(folder),
            None => {
                std::env::temp_dir().join(format!("labelwise-plot-{}-{test}", std::process::id()))
            }
        };
        fs::create_dir_all(&folder)?;
        Ok(folder)
    }

    /// Decodes the PNG at `path` and checks its size, that it is not blank, and that dark text
    /// was drawn in the title band at the top.
    fn assert_rendered(path: &Path) -> anyhow::Result<()> {
        assert_drawn(path, 100)
    }

    /// As [`assert_rendered`], with at least `1 / per_pixel` of the pixels non-white.
    fn assert_drawn(path: &Path, per_pixel: usize) -> anyhow::Result<()> {
        let image = image::open(path)?.to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT), "{}", path.display());

        let luminance = |p: &image::Rgb<u8>| {
            (0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])) as u8
        };
        let non_white = image.pixels().filter(|p| luminance(p) < 245).count();
        let total = (WIDTH * HEIGHT) as usize;
        assert!(
            non_white > total / per_pixel,
            "{}: only {non_white} non-white pixels",
            path.display()
        );

        let title_dark = image
            .enumerate_pixels()
            .filter(|(x, y, p)| *y < 36 && (200..800).contains(x) && luminance(p) < 100)
            .count();
        assert!(
            title_dark > 100,
            "{}: title band has {title_dark} dark pixels",
            path.display()
        );
        Ok(())
    }

    fn curve(offset: f64, spread: Option<f64>) -> Vec<Point> {
        (0..8)
            .map(|i| {
                let labels = 100.0 * f64::from(i + 1);
                let y = 0.9 - 0.5 * (-labels / (300.0 + offset)).exp();
                Point {
                    x: labels,
                    y,
                    spread: spread.map(|s| s * (1.0 - f64::from(i) / 10.0)),
                }
            })
            .collect()
    }

    #[test]
    fn line_chart_with_bands_renders_text_and_lines() -> anyhow::Result<()> {
        let path = chart_folder("line")?.join("line_chart.png");
        let series = [
            Series {
                name: "random".into(),
                points: curve(0.0, Some(0.04)),
            },
            Series {
                name: "entropy".into(),
                points: curve(-120.0, Some(0.03)),
            },
            Series {
                name: "margin".into(),
                points: curve(-90.0, None),
            },
        ];
        line_chart(
            &path,
            "Macro F1 against labels bought",
            "labels bought",
            "macro F1",
            &series,
        )?;
        assert_rendered(&path)
    }

    #[test]
    fn line_chart_survives_edge_cases() -> anyhow::Result<()> {
        let path = chart_folder("edge")?.join("line_chart_edge_cases.png");
        let one = |x: f64, y: f64| Point { x, y, spread: None };
        let mut with_nan = curve(50.0, Some(0.02));
        with_nan[2].y = f64::NAN;
        with_nan[4].x = f64::INFINITY;
        with_nan[5].spread = Some(f64::NAN);
        with_nan[6].spread = Some(-1.0);
        let mut series = vec![
            Series {
                name: "one point".into(),
                points: vec![one(400.0, 0.5)],
            },
            Series {
                name: "flat".into(),
                points: (0..5).map(|i| one(f64::from(i), 0.7)).collect(),
            },
            Series {
                name: "with NaN and bad spreads".into(),
                points: with_nan,
            },
            Series {
                name: "only NaN".into(),
                points: vec![one(f64::NAN, f64::NAN)],
            },
            Series {
                name: "empty".into(),
                points: Vec::new(),
            },
            Series {
                name: "a very long name ".repeat(20) + "\nwith a newline",
                points: curve(9.0, None),
            },
        ];
        for extra in 0..4 {
            series.push(Series {
                name: format!("extra {extra}"),
                points: curve(f64::from(extra) * 40.0, None),
            });
        }
        let title = "A title far too long to fit on one line of the chart ".repeat(5);
        line_chart(&path, &title, "x", "y", &series)?;
        assert_rendered(&path)
    }

    #[test]
    fn line_chart_flat_single_value_gets_a_range() -> anyhow::Result<()> {
        let path = chart_folder("flat")?.join("line_chart_flat.png");
        let points = vec![Point {
            x: 3.0,
            y: 0.0,
            spread: None,
        }];
        line_chart(
            &path,
            "One point at zero",
            "round",
            "gain",
            &[Series {
                name: "a".into(),
                points,
            }],
        )?;
        assert_rendered(&path)
    }

    #[test]
    fn line_chart_without_data_writes_a_note() -> anyhow::Result<()> {
        let folder = chart_folder("empty")?;
        line_chart(&folder.join("no_series.png"), "No series", "x", "y", &[])?;
        assert_drawn(&folder.join("no_series.png"), 1000)?;
        let nan = Series {
            name: "nan".into(),
            points: vec![Point {
                x: 1.0,
                y: f64::NAN,
                spread: None,
            }],
        };
        line_chart(&folder.join("only_nan.png"), "Only NaN", "x", "y", &[nan])?;
        assert_drawn(&folder.join("only_nan.png"), 1000)
    }

    fn epochs(count: usize, validate_every: usize) -> Vec<EpochPoint> {
        (1..=count)
            .map(|epoch| {
                let t = epoch as f64;
                let train = [
                    2.0 * (-t / 8.0).exp() + 0.1,
                    0.9 - 0.8 * (-t / 6.0).exp(),
                    0.8 - 0.75 * (-t / 7.0).exp(),
                    0.3 * (-t / 6.0).exp() + 0.02,
                ];
                let val = (epoch % validate_every == 0).then(|| {
                    [
                        train[0] + 0.15,
                        train[1] - 0.07,
                        train[2] - 0.1,
                        train[3] + 0.03,
                    ]
                });
                EpochPoint { epoch, train, val }
            })
            .collect()
    }

    #[test]
    fn training_curves_render_four_panels() -> anyhow::Result<()> {
        let folder = chart_folder("training")?;
        training_curves(
            &folder.join("training_curves.png"),
            "Training, seed 7",
            &epochs(30, 1),
        )?;
        assert_rendered(&folder.join("training_curves.png"))?;
        training_curves(
            &folder.join("training_sparse_val.png"),
            "Validation every 5 epochs",
            &epochs(12, 5),
        )?;
        assert_rendered(&folder.join("training_sparse_val.png"))
    }

    #[test]
    fn training_curves_survive_edge_cases() -> anyhow::Result<()> {
        let folder = chart_folder("training-edge")?;
        let mut odd = epochs(1, 1);
        odd[0].train[0] = f64::NAN;
        odd[0].val = Some([f64::NAN; 4]);
        training_curves(
            &folder.join("training_one_epoch.png"),
            "One epoch, NaN loss",
            &odd,
        )?;
        assert_rendered(&folder.join("training_one_epoch.png"))?;
        training_curves(&folder.join("training_empty.png"), "No epochs", &[])?;
        assert_drawn(&folder.join("training_empty.png"), 1000)
    }

    #[test]
    fn writing_replaces_the_file_and_leaves_no_temporary() -> anyhow::Result<()> {
        let folder = chart_folder("atomic")?;
        let path = folder.join("chart.png");
        fs::write(&path, b"not a png")?;
        training_curves(&path, "Overwrite", &epochs(3, 1))?;
        assert_rendered(&path)?;
        let leftovers: Vec<_> = fs::read_dir(&folder)?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        Ok(())
    }

    #[test]
    fn unwritable_paths_are_errors() -> anyhow::Result<()> {
        let missing = chart_folder("missing")?
            .join("no such folder")
            .join("chart.png");
        assert!(line_chart(&missing, "t", "x", "y", &[]).is_err());
        assert!(training_curves(Path::new("/"), "t", &[]).is_err());
        Ok(())
    }

    #[test]
    fn ranges_are_padded_and_never_empty() {
        assert_eq!(padded(0.0, 10.0), -0.5..10.5);
        assert_eq!(padded(0.0, 0.0), -1.0..1.0);
        let around = padded(0.8, 0.8);
        assert!(around.start < 0.8 && 0.8 < around.end);
        let tiny = padded(1e12, 1e12 + 1e-4);
        assert!(tiny.start < tiny.end);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(200.0), "200");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
        assert_eq!(tick_label(123_456.0), "1.2e5");
        assert_eq!(tick_label(-0.0001), "-1.0e-4");
    }

    #[test]
    fn bands_cover_runs_of_points_with_spread() {
        let p = |x: f64, spread: Option<f64>| Point { x, y: 1.0, spread };
        let points = [
            p(0.0, Some(0.1)),
            p(1.0, Some(0.2)),
            p(2.0, None),
            p(3.0, Some(0.1)),
        ];
        let bands = spread_bands(&points);
        assert_eq!(bands.len(), 1);
        assert_eq!(
            bands[0],
            vec![(0.0, 1.1), (1.0, 1.2), (1.0, 0.8), (0.0, 0.9)]
        );
    }
}
