//! Line charts drawn on the server as SVG: series of (time, value) points
//! become paths in a fixed view box (the page scales it), with "nice" value
//! and time ticks and a legend. Only numbers and fixed class names go into
//! the SVG; series names appear in the legend, escaped by the template.

use super::format::{Unit, clock};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 712.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 196.0;
/// Series drawn at most; the rest are counted in `hidden`.
pub const MAX_LINES: usize = 40;
/// Colours cycle through this many classes (`s0` ... in the stylesheet).
const PALETTE: usize = 10;

/// One series to draw: its name (shown in the legend) and its points.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub points: Vec<(i64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Tick {
    pub pos: String,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Path {
    pub class: String,
    pub d: String,
}

#[derive(Debug, Clone)]
pub struct LegendItem {
    pub class: String,
    pub name: String,
    pub last: String,
}

/// What the `chart` macro in `macros.html` draws.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub id: String,
    pub view_box: String,
    pub left: String,
    pub right: String,
    pub top: String,
    pub bottom: String,
    pub y_ticks: Vec<Tick>,
    pub x_ticks: Vec<Tick>,
    pub paths: Vec<Path>,
    pub legend: Vec<LegendItem>,
    pub hidden: usize,
    pub empty: bool,
    pub note: String,
}

fn coordinate(value: f64) -> String {
    format!("{value:.1}")
}

/// A step of 1, 2, 2.5 or 5 times a power of ten giving about `target` intervals over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = range / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 2.5 {
        2.5
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

const TIME_STEPS_MS: &[i64] = &[
    1_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
];

impl Chart {
    /// Lays out `lines` over `start_ms..=end_ms`. `step_ms` is the sampling
    /// step: a gap of more than two steps breaks a line.
    pub fn new(title: &str, id: &str, unit: Unit, lines: &[Line], start_ms: i64, end_ms: i64, step_ms: i64) -> Self {
        let mut chart = Chart {
            title: title.to_owned(),
            id: id.to_owned(),
            view_box: format!("0 0 {WIDTH} {HEIGHT}"),
            left: coordinate(LEFT),
            right: coordinate(RIGHT),
            top: coordinate(TOP),
            bottom: coordinate(BOTTOM),
            y_ticks: Vec::new(),
            x_ticks: Vec::new(),
            paths: Vec::new(),
            legend: Vec::new(),
            hidden: lines.len().saturating_sub(MAX_LINES),
            empty: true,
            note: String::new(),
        };
        let drawn = &lines[..lines.len().min(MAX_LINES)];
        let values = drawn.iter().flat_map(|l| l.points.iter().map(|&(_, v)| v)).filter(|v| v.is_finite());
        let (mut min, mut max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if !min.is_finite() || end_ms <= start_ms {
            return chart;
        }
        chart.empty = false;
        // Non-negative data starts at zero, as operators read rates and sizes.
        if min > 0.0 {
            min = 0.0;
        }
        if max <= min {
            max = min + if min == 0.0 { 1.0 } else { min.abs() };
        }
        let step = nice_step(max - min, 4.0);
        let (low, high) = ((min / step).floor() * step, (max / step).ceil() * step);
        let y = |v: f64| BOTTOM - (v - low) / (high - low) * (BOTTOM - TOP);
        let x = |t: i64| LEFT + (t - start_ms) as f64 / (end_ms - start_ms) as f64 * (RIGHT - LEFT);
        let mut tick = low;
        while tick <= high + step / 2.0 {
            chart.y_ticks.push(Tick { pos: coordinate(y(tick)), label: unit.format(tick) });
            tick += step;
        }
        let span = end_ms - start_ms;
        let time_step = TIME_STEPS_MS.iter().copied().find(|s| span / s <= 6).unwrap_or(604_800_000);
        let mut t = (start_ms / time_step + 1) * time_step;
        while t < end_ms {
            let label = clock(t, time_step < 60_000, span > 86_400_000);
            chart.x_ticks.push(Tick { pos: coordinate(x(t)), label });
            t += time_step;
        }
        let max_gap = step_ms.max(1) * 2;
        for (i, line) in drawn.iter().enumerate() {
            let class = format!("s{}", i % PALETTE);
            let mut d = String::new();
            let mut previous: Option<i64> = None;
            for &(t, v) in &line.points {
                if !v.is_finite() || t < start_ms || t > end_ms {
                    previous = None;
                    continue;
                }
                let command = match previous {
                    Some(p) if t - p <= max_gap => 'L',
                    _ => 'M',
                };
                d.push_str(&format!("{command}{} {}", coordinate(x(t)), coordinate(y(v.clamp(low, high)))));
                if command == 'M' {
                    // A lone point still shows as a dot (round line caps).
                    d.push_str("h0.1");
                }
                previous = Some(t);
            }
            let last =
                line.points.iter().rev().find(|(_, v)| v.is_finite()).map_or("-".to_owned(), |&(_, v)| unit.format(v));
            chart.legend.push(LegendItem { class: class.clone(), name: line.name.clone(), last });
            chart.paths.push(Path { class, d });
        }
        if chart.hidden > 0 {
            chart.note = format!("{} more series not drawn", chart.hidden);
        }
        chart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_break_at_gaps_and_ticks_are_round() {
        let line = Line { name: "a".into(), points: vec![(0, 1.0), (10_000, 2.0), (50_000, 3.0), (60_000, f64::NAN)] };
        let chart = Chart::new("t", "c", Unit::Plain, &[line], 0, 60_000, 10_000);
        assert!(!chart.empty);
        let d = &chart.paths[0].d;
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
        let labels: Vec<&str> = chart.y_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0", "1", "2", "3"]);
        assert_eq!(chart.legend[0].last, "3");
        assert!(Chart::new("t", "c", Unit::Plain, &[], 0, 1, 1).empty);
    }
}
