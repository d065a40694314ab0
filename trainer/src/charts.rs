//! PNG line charts (plotters, bitmap backend, bundled DejaVu Sans so no system font is needed).

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One named series of (x, y) points.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// The y range drawn for data spanning `lo..=hi`: 8% margins, and a flat series (a constant masking
/// rate) centred in a range of ±max(10% of its value, 0.05) so its labels differ.
pub fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    if span > 1e-9 * lo.abs().max(hi.abs()).max(1.0) {
        (lo - 0.08 * span, hi + 0.08 * span)
    } else {
        let pad = (0.1 * lo.abs()).max(0.05);
        (lo - pad, hi + pad)
    }
}

/// Writes a line chart of `series` to `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    register_font();
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all().filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = padded_range(y0, y1);
    // Steps and counts are integers: label them so, with at most one tick per unit.
    let integer_x = all().all(|&(x, _)| !x.is_finite() || x.fract() == 0.0);
    // Drawn under a temporary name (ending in .png: the encoder picks the format from it), then
    // fsynced and renamed, like every output file.
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!("{stem}.tmp.png"));
    shared::atomic::write_via(&tmp, path, |tmp| {
        draw(
            tmp,
            title,
            x_label,
            y_label,
            series,
            (x0, x1, y0, y1),
            integer_x,
        )
    })
}

/// Renders the chart into `path` (see [`line_chart`]).
fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    (x0, x1, y0, y1): (f64, f64, f64, f64),
    integer_x: bool,
) -> Result<()> {
    let x_ticks = if integer_x {
        ((x1 - x0) as usize + 1).min(10)
    } else {
        10
    };
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let int_label = |v: &f64| format!("{}", v.round() as i64);
    let mut mesh = chart.configure_mesh();
    if integer_x {
        mesh.x_label_formatter(&int_label);
    }
    mesh.x_labels(x_ticks)
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite()),
                color.stroke_width(2),
            ))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_gets_a_readable_range() {
        let (lo, hi) = padded_range(0.15, 0.15);
        assert!(lo < 0.15 && hi > 0.15 && hi - lo >= 0.09, "{lo}..{hi}");
        let (lo, hi) = padded_range(0.0, 0.0);
        assert!((lo + 0.05).abs() < 1e-12 && (hi - 0.05).abs() < 1e-12);
        let (lo, hi) = padded_range(7.0, 8.0);
        assert!((lo - 6.92).abs() < 1e-12 && (hi - 8.08).abs() < 1e-12);
    }
}
