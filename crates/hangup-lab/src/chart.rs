//! The SVG chart: detection time per scenario and set-up, log scale, with the budget D
//! and the cap drawn as lines.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::cell::Outcome;
use crate::error::LabError;
use crate::report::{format_duration, Report};
use crate::setup::Setup;

/// Lowest time on the axis (ms): below any real detection.
const FLOOR_MS: f64 = 0.02;

fn colour(setup: Setup) -> RGBColor {
    match setup {
        Setup::OsDefaults => RGBColor(140, 140, 140),
        Setup::KeepaliveOs => RGBColor(230, 140, 20),
        Setup::KeepaliveTuned => RGBColor(40, 110, 200),
        Setup::KeepaliveUserTimeout => RGBColor(150, 70, 180),
        Setup::Full => RGBColor(20, 150, 60),
        Setup::Target => RGBColor(200, 40, 40),
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Writes the chart of `report` to `path` as SVG.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), LabError> {
    draw(report, path).map_err(|message| LabError::Report {
        path: path.to_owned(),
        message,
    })
}

fn draw(report: &Report, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let scenarios = &report.scenarios;
    let n = scenarios.len().max(1) as f64;
    let cap_ms = ms(report.cap);
    let top = cap_ms * 3.0;
    let root = SVGBackend::new(path, (1280, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "hangup lab: time from a peer's death to its detection (D = {}, cap {})",
        format_duration(report.dead_after),
        format_duration(report.cap)
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(150)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n - 0.5), (FLOOR_MS..top).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("detection time (log scale)")
        .y_label_formatter(&|y| format_duration(Duration::from_secs_f64(y / 1000.0)))
        .y_label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    // Scenario names, rotated, hanging below the axis (drawn by hand: plotters centres
    // rotated tick labels on the axis).
    for (i, scenario) in scenarios.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64, FLOOR_MS));
        root.draw(&Text::new(
            scenario.name(),
            (x - 6, y + 8),
            ("sans-serif", 14)
                .into_font()
                .transform(FontTransform::Rotate90),
        ))
        .map_err(|e| err(&e))?;
    }

    let budget = ms(report.dead_after);
    chart
        .draw_series(LineSeries::new(
            [(-0.5, budget), (n - 0.5, budget)],
            RED.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(format!("budget D = {}", format_duration(report.dead_after)))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new(
            [(-0.5, cap_ms), (n - 0.5, cap_ms)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("cap: ▲ on this line = not detected")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.5)));

    let setups = &report.setups;
    let width = 0.7 / setups.len().max(1) as f64;
    for (k, &setup) in setups.iter().enumerate() {
        let offset = (k as f64 - (setups.len() as f64 - 1.0) / 2.0) * width;
        let colour = colour(setup);
        let mut detected = Vec::new();
        let mut missed = Vec::new();
        let mut kept = Vec::new();
        for (i, scenario) in scenarios.iter().enumerate() {
            let x = i as f64 + offset;
            match report.cell(*scenario, setup).map(|c| &c.outcome) {
                Some(Outcome::Detected { after, .. }) => {
                    detected.push((x, ms(*after).max(FLOOR_MS * 1.2)))
                }
                Some(Outcome::NotDetected { .. }) => missed.push((x, cap_ms)),
                Some(Outcome::Kept { .. }) => kept.push((x, FLOOR_MS * 1.6)),
                _ => {}
            }
        }
        chart
            .draw_series(
                detected
                    .into_iter()
                    .map(|p| Circle::new(p, 5, colour.filled())),
            )
            .map_err(|e| err(&e))?
            .label(setup.name())
            .legend(move |(x, y)| Circle::new((x + 9, y), 5, colour.filled()));
        chart
            .draw_series(
                missed
                    .into_iter()
                    .map(|p| TriangleMarker::new(p, 7, colour.filled())),
            )
            .map_err(|e| err(&e))?;
        chart
            .draw_series(
                kept.into_iter()
                    .map(|p| Cross::new(p, 5, colour.stroke_width(2))),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
        .map_err(|e| err(&e))?
        .label("× at the bottom: kept, as it should be")
        .legend(|(x, y)| Cross::new((x + 9, y), 5, BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
