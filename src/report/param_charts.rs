//! The parameters against the sweep's metric, as two figures:
//!
//! * **parallel coordinates** (W&B's sweep panel, Optuna's
//!   `plot_parallel_coordinate`): a vertical axis per parameter that differs
//!   between the runs, the metric's last; each run is a line through its
//!   values, coloured by its metric (viridis, the best yellow) and drawn
//!   after the worse ones, the best run thickest;
//! * **slices** (Optuna's `plot_slice`): the metric against each parameter,
//!   a panel each, one dot per run coloured by the order the runs were
//!   queued (dark first), so a search's later trials show where it went;
//!   the best run ringed.
//!
//! The runs are those with a best value of the metric most of them are
//! ranked by (as [`super::importance`]); the parameters are ordered by their
//! main effect when there are enough runs to measure it, at most
//! [`MAX_AXES`] of them. Numbers a search samples are placed as its
//! distribution says (log for `log_uniform` and `log = true`, as Optuna's
//! plots do); other numbers on a linear axis, or a log one when they are all
//! positive and the log scale keeps their closest two values [`LOG_GAIN`]
//! times as far apart (a grid's learning rates over decades, batch sizes in
//! powers of two; not momentums from 0 to 0.95); anything else (`adam`,
//! `sgd`, a head) gets evenly spaced places in sorted order.

use super::svg::{esc, fmt_tick, log_ticks, open, ticks, viridis};
use super::Comparison;
use crate::spec::Metric;
use std::fmt::Write;

/// At most this many parameters get an axis or a panel: those that matter
/// most.
pub const MAX_AXES: usize = 8;

/// Positive numbers go on a log axis when their closest two values are this
/// many times as far apart there (as shares of the axis) as on a linear one.
pub const LOG_GAIN: f64 = 1.5;

/// Numeric axes with at most this many distinct values label each value;
/// more, or a search's draws however few, get round ticks.
pub const LABEL_EACH: usize = 6;

/// How a parameter's values are placed along an axis (0 = bottom or left,
/// 1 = top or right).
#[derive(Debug, Clone, PartialEq)]
pub enum Scale {
    /// Numbers from `lo` to `hi`, on a log scale when `log`.
    Numeric {
        /// The smallest value.
        lo: f64,
        /// The largest value.
        hi: f64,
        /// Log scale.
        log: bool,
        /// The distinct values as the configuration writes them, when few
        /// enough to label each ([`LABEL_EACH`]) and not a search's draws.
        each: Option<Vec<String>>,
    },
    /// Values that are not all numbers, in sorted order, evenly spaced.
    Categories(Vec<String>),
}

impl Scale {
    /// The scale of `values` (one per run, as text); None when they do not
    /// differ. Numbers go on a log axis when `declared_log` says so (a
    /// search's distribution: `log_uniform` or `log = true`) and they are all
    /// positive, or, where nothing is declared, when that spreads them out.
    #[must_use]
    pub fn of(values: &[&str], declared_log: Option<bool>) -> Option<Scale> {
        let mut distinct: Vec<&str> = values.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return None;
        }
        let numbers: Option<Vec<f64>> =
            distinct.iter().map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
        Some(match numbers {
            Some(x) => {
                let (lo, hi) = x.iter().fold((f64::MAX, f64::MIN), |a, &v| (a.0.min(v), a.1.max(v)));
                if hi <= lo {
                    // "0.10" and "0.1": one number written two ways
                    return None;
                }
                // A few values are labelled each (a grid's), but not a search's draws
                // (0.0271955…): those get round ticks.
                let each = (declared_log.is_none() && distinct.len() <= LABEL_EACH).then(|| {
                    let mut by_value: Vec<(f64, &str)> = x.iter().copied().zip(distinct.iter().copied()).collect();
                    by_value.sort_by(|a, b| a.0.total_cmp(&b.0));
                    by_value.into_iter().map(|(_, s)| s.to_owned()).collect()
                });
                Scale::Numeric { lo, hi, log: lo > 0.0 && declared_log.unwrap_or_else(|| spread_on_log(&x)), each }
            }
            None => Scale::Categories(distinct.iter().map(|s| (*s).to_owned()).collect()),
        })
    }

    /// Where `value` lies, in 0..=1.
    #[must_use]
    pub fn position(&self, value: &str) -> f64 {
        match self {
            Scale::Numeric { lo, hi, log, .. } => {
                let v = value.parse::<f64>().unwrap_or(*lo);
                let (v, lo, hi) = if *log { (v.max(*lo).log10(), lo.log10(), hi.log10()) } else { (v, *lo, *hi) };
                ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
            }
            Scale::Categories(c) => {
                let i = c.binary_search_by(|x| x.as_str().cmp(value)).unwrap_or(0);
                if c.len() < 2 {
                    0.5
                } else {
                    i as f64 / (c.len() - 1) as f64
                }
            }
        }
    }

    /// The ticks to draw: positions in 0..=1 and their labels.
    #[must_use]
    pub fn ticks(&self) -> Vec<(f64, String)> {
        match self {
            Scale::Numeric { each: Some(values), .. } | Scale::Categories(values) => {
                values.iter().map(|v| (self.position(v), v.clone())).collect()
            }
            Scale::Numeric { lo, hi, log: true, each: None } => log_ticks(lo.log10(), hi.log10())
                .into_iter()
                .map(|t| ((t - lo.log10()) / (hi.log10() - lo.log10()), fmt_tick(10f64.powf(t))))
                .collect(),
            Scale::Numeric { lo, hi, log: false, each: None } => {
                ticks(*lo, *hi, 4).into_iter().map(|t| ((t - lo) / (hi - lo), fmt_tick(t))).collect()
            }
        }
    }

    /// Whether the values are categories.
    #[must_use]
    pub fn is_categorical(&self) -> bool {
        matches!(self, Scale::Categories(_))
    }
}

/// Whether distinct positive numbers are spread more evenly on a log scale
/// than on a linear one: their closest two are [`LOG_GAIN`] times as far
/// apart there, as shares of the axis (so that their labels do not run into
/// each other: 0.001 and 0.01 beside 0.2 on a linear axis).
fn spread_on_log(x: &[f64]) -> bool {
    let smallest_gap = |v: Vec<f64>| -> f64 {
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |a, &b| (a.0.min(b), a.1.max(b)));
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v.windows(2).map(|w| (w[1] - w[0]) / (hi - lo)).fold(f64::MAX, f64::min)
    };
    smallest_gap(x.iter().map(|v| v.ln()).collect()) > LOG_GAIN * smallest_gap(x.to_vec())
}

/// One parameter's axis: its path, short name, scale and each run's place.
#[derive(Debug, Clone)]
pub struct Axis {
    /// The configuration path (`optimizer.lr`).
    pub path: String,
    /// Its short name, as the tables show it (`lr`).
    pub label: String,
    /// How its values are placed.
    pub scale: Scale,
    /// Each run's value as its configuration writes it (the runs of [`Relation`]).
    pub values: Vec<String>,
    /// Each run's position, in 0..=1.
    pub at: Vec<f64>,
}

/// One run in the figures.
#[derive(Debug, Clone)]
pub struct Point {
    /// Its name.
    pub name: String,
    /// Its best value of the metric.
    pub metric: f64,
    /// Whether it is the report's best run.
    pub best: bool,
}

/// What both figures show: the runs with a value of the metric and the
/// parameters that differ between them.
#[derive(Debug, Clone)]
pub struct Relation {
    /// The metric's name (`test_acc`).
    pub metric: String,
    /// Whether higher values of it are better.
    pub maximize: bool,
    /// The runs, in the order they were queued (a run's index is its place).
    pub runs: Vec<Point>,
    /// The parameters, those that matter most first.
    pub axes: Vec<Axis>,
    /// How many more parameters differ than have an axis.
    pub left_out: usize,
}

impl Relation {
    /// The runs of `c` with a best value of the metric most of them are
    /// ranked by, and the parameters that differ between them; None with
    /// fewer than two such runs or no such parameter.
    #[must_use]
    pub fn of(c: &Comparison) -> Option<Relation> {
        let (metric, runs) = super::ranked_runs(c)?;
        if runs.len() < 2 {
            return None;
        }
        // The parameters by main effect where it can be measured, the rest after them.
        let mut paths: Vec<String> = super::importance::importances(c)
            .filter(|imp| imp.metric == metric)
            .map(|imp| imp.params.into_iter().map(|p| p.param).collect())
            .unwrap_or_default();
        for p in &c.differing {
            if !paths.contains(p) {
                paths.push(p.clone());
            }
        }
        let labels = super::column_names(&paths);
        let mut axes: Vec<Axis> = paths
            .iter()
            .zip(labels)
            .filter_map(|(path, label)| {
                let values: Vec<&str> = runs.iter().map(|(r, _)| r.params.get(path).unwrap_or("-")).collect();
                let scale = Scale::of(&values, c.sampled_scales.get(path).copied())?;
                let at = values.iter().map(|v| scale.position(v)).collect();
                let values = values.into_iter().map(str::to_owned).collect();
                Some(Axis { path: path.clone(), label, scale, values, at })
            })
            .collect();
        // A field that splits the runs exactly as the table it belongs to says
        // nothing more (`head.hidden` and `head.dropout` beside `head = mlp`,
        // `optimizer.momentum` beside `optimizer.name = adam`).
        let split = |a: &Axis| -> Vec<usize> {
            let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
            a.values
                .iter()
                .map(|v| {
                    let next = seen.len();
                    *seen.entry(v.as_str()).or_insert(next)
                })
                .collect()
        };
        let splits: Vec<Vec<usize>> = axes.iter().map(split).collect();
        let redundant: Vec<bool> = axes
            .iter()
            .zip(&splits)
            .map(|(a, s)| {
                axes.iter().zip(&splits).any(|(b, t)| {
                    let table = b.path.strip_suffix(".name").unwrap_or(&b.path);
                    a.path != b.path && a.path.strip_prefix(table).is_some_and(|rest| rest.starts_with('.')) && s == t
                })
            })
            .collect();
        let mut redundant = redundant.into_iter();
        axes.retain(|_| !redundant.next().unwrap_or(false));
        if axes.is_empty() {
            return None;
        }
        let left_out = axes.len().saturating_sub(MAX_AXES);
        axes.truncate(MAX_AXES);
        let maximize = Metric::from_name(&metric).is_none_or(Metric::maximize);
        let runs = runs.iter().map(|(r, v)| Point { name: r.row.name.clone(), metric: *v, best: r.best }).collect();
        Some(Relation { metric, maximize, runs, axes, left_out })
    }

    /// The metric's range, widened when every run has the same value.
    fn metric_range(&self) -> (f64, f64) {
        let (lo, hi) = self.runs.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.metric), a.1.max(p.metric)));
        if hi > lo {
            (lo, hi)
        } else {
            let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
            (lo - d, hi + d)
        }
    }

    /// How good each run's metric is among the runs: 0 the worst, 1 the best.
    #[must_use]
    pub fn goodness(&self) -> Vec<f64> {
        let (lo, hi) = self.metric_range();
        self.runs
            .iter()
            .map(|p| {
                let t = ((p.metric - lo) / (hi - lo)).clamp(0.0, 1.0);
                if self.maximize {
                    t
                } else {
                    1.0 - t
                }
            })
            .collect()
    }

    /// What the figures' captions add: how many parameters were left out.
    fn more(&self) -> String {
        match self.left_out {
            0 => String::new(),
            n => format!("; {n} more parameters that matter less are not shown"),
        }
    }
}

/// Cut to `n` characters, the last one `…`.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        s.chars().take(n - 1).chain(['…']).collect()
    } else {
        s.to_owned()
    }
}

/// The colour of a run whose metric is `t` good (0 worst, 1 best): viridis
/// without its palest end, which white hardly shows.
fn metric_colour(t: f64) -> String {
    viridis(0.9 * t)
}

/// A text label with a white halo, so that lines under it do not hide it.
fn label(out: &mut String, x: f64, y: f64, anchor: &str, text: &str, full: &str) {
    let _ = write!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="10" stroke="white" stroke-width="3" paint-order="stroke">{}<title>{}</title></text>"#,
        esc(text),
        esc(full)
    );
}

/// The parallel-coordinates figure's title.
#[must_use]
pub fn parallel_title(rel: &Relation) -> String {
    format!("Parameters and {}: a line per run, coloured by {} (yellow best){}", rel.metric, rel.metric, rel.more())
}

/// The parallel coordinates of `rel` as SVG.
#[must_use]
pub fn parallel(rel: &Relation, standalone: bool) -> String {
    const H: f64 = 320.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 70.0;
    const TOP: f64 = 52.0;
    const BOTTOM: f64 = 16.0;
    let n = rel.axes.len() + 1;
    let w = (LEFT + RIGHT + 120.0 * (n - 1) as f64).max(460.0);
    let gap = (w - LEFT - RIGHT) / (n - 1) as f64;
    let ph = H - TOP - BOTTOM;
    let x_of = |k: usize| LEFT + gap * k as f64;
    let y_of = |pos: f64| TOP + ph - pos * ph;
    let title = format!("Parameters and {}", rel.metric);
    let mut out = String::new();
    open(&mut out, standalone, w, H, &title);

    // The lines, the worst first so that the best are on top.
    let (lo, hi) = rel.metric_range();
    let metric_pos = |v: f64| ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    let good = rel.goodness();
    let mut order: Vec<usize> = (0..rel.runs.len()).collect();
    order.sort_by(|&a, &b| rel.runs[a].best.cmp(&rel.runs[b].best).then(good[a].total_cmp(&good[b])));
    for &i in &order {
        let p = &rel.runs[i];
        let points: Vec<String> = rel
            .axes
            .iter()
            .enumerate()
            .map(|(k, a)| format!("{:.1},{:.1}", x_of(k), y_of(a.at[i])))
            .chain([format!("{:.1},{:.1}", x_of(n - 1), y_of(metric_pos(p.metric)))])
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="{}" stroke-opacity="0.85" points="{}"><title>{}: {} = {}</title></polyline>"#,
            metric_colour(good[i]),
            if p.best { 3.2 } else { 1.4 },
            points.join(" "),
            esc(&p.name),
            esc(&rel.metric),
            fmt_tick(p.metric)
        );
    }

    // The axes over them: a line, the name above, the ticks to the left.
    for (k, a) in rel.axes.iter().enumerate() {
        let x = x_of(k);
        let _ = write!(out, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="#444"/>"##, TOP + ph);
        label(&mut out, x, TOP - 10.0, "middle", &cut(&a.label, 18), &a.path);
        let width = if a.scale.is_categorical() { 12 } else { 9 };
        // a label closer than a line of text to the one below it is left out (its tick stays)
        let mut last: Option<f64> = None;
        for (pos, text) in a.scale.ticks() {
            let y = y_of(pos);
            let _ = write!(out, r##"<line x1="{:.1}" x2="{x:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#444"/>"##, x - 4.0);
            if last.is_none_or(|l| l - y >= 11.0) {
                label(&mut out, x - 6.0, y + 3.5, "end", &cut(&text, width), &text);
                last = Some(y);
            }
        }
    }
    // The metric's axis is also the colour scale.
    let x = x_of(n - 1);
    let steps = 24u32;
    for s in 0..steps {
        let (a, b) = (f64::from(s) / f64::from(steps), f64::from(s + 1) / f64::from(steps));
        let t = if rel.maximize { f64::midpoint(a, b) } else { 1.0 - f64::midpoint(a, b) };
        let _ = write!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="6" height="{:.2}" fill="{}"/>"#,
            x - 3.0,
            y_of(b),
            (b - a) * ph + 0.3,
            metric_colour(t)
        );
    }
    label(&mut out, x, TOP - 10.0, "middle", &rel.metric, &rel.metric);
    for t in ticks(lo, hi, 5) {
        let y = y_of(metric_pos(t));
        let _ =
            write!(out, r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#444"/>"##, x + 3.0, x + 7.0);
        label(&mut out, x + 9.0, y + 3.5, "start", &fmt_tick(t), &fmt_tick(t));
    }
    out.push_str("</svg>");
    out
}

/// The slice figure's title.
#[must_use]
pub fn slices_title(rel: &Relation) -> String {
    format!(
        "{} against each parameter: a dot per run, coloured by the order queued (dark first), the best ringed{}",
        rel.metric,
        rel.more()
    )
}

/// The metric against each parameter of `rel`, a panel each, as SVG.
#[must_use]
pub fn slices(rel: &Relation, standalone: bool) -> String {
    const PW: f64 = 230.0;
    const PH: f64 = 190.0;
    const L: f64 = 46.0;
    const R: f64 = 10.0;
    const T: f64 = 24.0;
    const B: f64 = 30.0;
    const HEAD: f64 = 26.0;
    let k = rel.axes.len();
    let cols = k.min(3);
    let rows = k.div_ceil(cols);
    let (w, h) = (PW * cols as f64, HEAD + PH * rows as f64);
    let title = format!("{} against each parameter", rel.metric);
    let mut out = String::new();
    open(&mut out, standalone, w, h, &title);
    let (mut lo, mut hi) = rel.metric_range();
    let pad = (hi - lo) * 0.06;
    (lo, hi) = (lo - pad, hi + pad);
    let y_ticks = ticks(lo, hi, 4);
    let n = rel.runs.len();
    for (j, a) in rel.axes.iter().enumerate() {
        let (ox, oy) = ((j % cols) as f64 * PW, HEAD + (j / cols) as f64 * PH);
        let (x0, x1, y0, y1) = (ox + L, ox + PW - R, oy + T, oy + PH - B);
        // 6% of the width free at each end, so that no dot sits on the frame
        let x_of = |pos: f64| x0 + (0.06 + 0.88 * pos) * (x1 - x0);
        let y_of = |v: f64| y1 - (v - lo) / (hi - lo) * (y1 - y0);
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
            x1 - x0,
            y1 - y0
        );
        label(&mut out, f64::midpoint(x0, x1), oy + T - 6.0, "middle", &cut(&a.label, 30), &a.path);
        for &t in &y_ticks {
            let y = y_of(t);
            let _ = write!(out, r##"<line x1="{x0:.1}" x2="{x1:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##);
            label(&mut out, x0 - 4.0, y + 3.5, "end", &fmt_tick(t), &fmt_tick(t));
        }
        let ticks = a.scale.ticks();
        let width = ((x1 - x0) / ticks.len().max(1) as f64 / 5.5).max(3.0) as usize;
        // a label that would run into the one to its left is left out
        let mut right_of_last = f64::MIN;
        for (pos, text) in &ticks {
            let shown = cut(text, width);
            let half = 2.8 * shown.chars().count() as f64;
            if x_of(*pos) - half >= right_of_last + 3.0 {
                label(&mut out, x_of(*pos), y1 + 13.0, "middle", &shown, text);
                right_of_last = x_of(*pos) + half;
            }
        }
        // categories: the runs of one value spread a little, so that repeats do not hide each other
        let spread = if a.scale.is_categorical() { 0.04 } else { 0.0 };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| rel.runs[i].best);
        for i in order {
            let p = &rel.runs[i];
            let jitter = spread * (((i * 7) % 9) as f64 / 4.0 - 1.0);
            let (x, y) = (x_of((a.at[i] + jitter).clamp(-0.05, 1.05)), y_of(p.metric));
            let colour = viridis(if n > 1 { 0.9 * i as f64 / (n - 1) as f64 } else { 0.0 });
            let ring = if p.best { r##" stroke="#000" stroke-width="2""## } else { "" };
            let _ = write!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="{}" fill="{colour}" fill-opacity="0.85"{ring}><title>{} (queued {}): {} = {}, {} = {}</title></circle>"#,
                if p.best { 4.5 } else { 3.5 },
                esc(&p.name),
                i + 1,
                esc(&a.label),
                esc(&a.values[i]),
                esc(&rel.metric),
                fmt_tick(p.metric)
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(lo: f64, hi: f64, log: bool, each: Option<&[&str]>) -> Scale {
        Scale::Numeric { lo, hi, log, each: each.map(|e| e.iter().map(|s| (*s).to_owned()).collect()) }
    }

    #[test]
    fn numbers_get_a_linear_or_log_axis_and_anything_else_categories() {
        // a grid's learning rates: linear (10x apart), each value labelled, in numeric order
        let grid = Scale::of(&["0.1", "0.01", "0.05", "0.1"], None).unwrap();
        assert_eq!(grid, numeric(0.01, 0.1, false, Some(&["0.01", "0.05", "0.1"])));
        assert!((grid.position("0.05") - 4.0 / 9.0).abs() < 1e-12);
        let labels: Vec<String> = grid.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0.01", "0.05", "0.1"]);
        // a random search's draws over three decades: log, round ticks
        let draws: Vec<String> = (0..10).map(|i| format!("{}", 10f64.powf(-4.0 + 0.3 * f64::from(i)))).collect();
        let refs: Vec<&str> = draws.iter().map(String::as_str).collect();
        let log = Scale::of(&refs, None).unwrap();
        assert!(matches!(log, Scale::Numeric { log: true, each: None, .. }), "{log:?}");
        assert!((log.position("0.001") - 1.0 / 2.7).abs() < 1e-9);
        assert_eq!(log.position(&draws[0]), 0.0);
        assert_eq!(log.position(&draws[9]), 1.0);
        let ticks: Vec<String> = log.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(ticks, ["1e-4", "0.001", "0.01"]);
        assert!(log.ticks().iter().all(|t| (0.0..=1.0).contains(&t.0)));
        // a grid over decades, batch sizes in powers of two: log; a momentum drawn uniformly: linear
        assert!(matches!(Scale::of(&["0.001", "0.01", "0.1"], None).unwrap(), Scale::Numeric { log: true, .. }));
        assert!(matches!(
            Scale::of(&["0.001", "0.01", "0.05", "0.1", "0.2"], None).unwrap(),
            Scale::Numeric { log: true, .. }
        ));
        assert!(matches!(
            Scale::of(&["16", "32", "64", "128", "256"], None).unwrap(),
            Scale::Numeric { log: true, .. }
        ));
        assert!(matches!(Scale::of(&["8", "32", "128", "512"], None).unwrap(), Scale::Numeric { log: true, .. }));
        assert!(matches!(Scale::of(&["1", "2", "3"], None).unwrap(), Scale::Numeric { log: false, .. }));
        assert!(matches!(Scale::of(&["32", "64"], None).unwrap(), Scale::Numeric { log: false, .. }));
        let momentum = ["0.0188", "0.156", "0.274", "0.373", "0.459", "0.512", "0.607", "0.664", "0.82", "0.893"];
        assert!(matches!(Scale::of(&momentum, None).unwrap(), Scale::Numeric { log: false, .. }));
        // zero or negative: never log
        assert!(matches!(Scale::of(&["0", "100"], None).unwrap(), Scale::Numeric { log: false, .. }));
        // a search's declared scale wins over the spread: a log_uniform's draws that happen to
        // sit in one decade, a uniform's over three; zero is never on a log axis
        let one_decade = ["0.011", "0.02", "0.035", "0.05", "0.08"];
        assert!(matches!(Scale::of(&one_decade, None).unwrap(), Scale::Numeric { log: false, .. }));
        assert!(matches!(Scale::of(&one_decade, Some(true)).unwrap(), Scale::Numeric { log: true, each: None, .. }));
        assert!(matches!(Scale::of(&one_decade, None).unwrap(), Scale::Numeric { each: Some(_), .. }));
        let decades = ["0.001", "0.01", "0.1"];
        assert!(matches!(Scale::of(&decades, Some(false)).unwrap(), Scale::Numeric { log: false, .. }));
        assert!(matches!(Scale::of(&["0", "1", "2"], Some(true)).unwrap(), Scale::Numeric { log: false, .. }));
        // many values on a linear axis: round ticks inside it
        let wd: Vec<String> = (0..9).map(|i| format!("{}", f64::from(i) * 1.1e-4)).collect();
        let refs: Vec<&str> = wd.iter().map(String::as_str).collect();
        let lin = Scale::of(&refs, None).unwrap();
        assert!(matches!(lin, Scale::Numeric { log: false, each: None, .. }));
        assert!(lin.ticks().len() >= 3 && lin.ticks().iter().all(|t| (0.0..=1.0 + 1e-9).contains(&t.0)));
        // text, or numbers with a missing value: sorted categories, evenly spaced
        let opt = Scale::of(&["sgd", "adam", "sgd", "adamw"], None).unwrap();
        assert_eq!(opt, Scale::Categories(vec!["adam".into(), "adamw".into(), "sgd".into()]));
        assert_eq!([opt.position("adam"), opt.position("adamw"), opt.position("sgd")], [0.0, 0.5, 1.0]);
        assert!(Scale::of(&["0.5", "-"], None).unwrap().is_categorical());
        // nothing differs
        assert_eq!(Scale::of(&["sgd", "sgd"], None), None);
        assert_eq!(Scale::of(&["0.1", "0.10"], None), None);
    }

    /// Three runs over a learning rate and an optimiser, the second the best.
    fn relation(maximize: bool) -> Relation {
        let lr = Scale::of(&["0.1", "0.01", "0.001"], None).unwrap();
        let opt = Scale::of(&["sgd", "adam", "sgd"], None).unwrap();
        let axis = |path: &str, label: &str, scale: Scale, values: [&str; 3]| Axis {
            path: path.into(),
            label: label.into(),
            at: values.iter().map(|v| scale.position(v)).collect(),
            values: values.map(String::from).to_vec(),
            scale,
        };
        let metrics = if maximize { [60.0, 90.0, 30.0] } else { [1.0, 0.2, 2.0] };
        Relation {
            metric: if maximize { "test_acc" } else { "test_loss" }.into(),
            maximize,
            runs: (0..3).map(|i| Point { name: format!("run<{i}>"), metric: metrics[i], best: i == 1 }).collect(),
            axes: vec![
                axis("optimizer.lr", "lr", lr, ["0.1", "0.01", "0.001"]),
                axis("optimizer.name", "optimizer", opt, ["sgd", "adam", "sgd"]),
            ],
            left_out: 0,
        }
    }

    #[test]
    fn the_best_run_is_brightest_for_either_goal() {
        for maximize in [true, false] {
            let rel = relation(maximize);
            let good = rel.goodness();
            assert_eq!((good[1], good[2]), (1.0, 0.0));
            assert!((good[0] - if maximize { 0.5 } else { 1.0 / 1.8 }).abs() < 1e-12);
        }
    }

    #[test]
    fn parallel_coordinates_draw_a_line_per_run_through_every_axis_the_best_last() {
        let rel = relation(true);
        let svg = parallel(&rel, true);
        assert!(svg.starts_with("<svg xmlns=") && svg.ends_with("</svg>"));
        let lines: Vec<&str> = svg.split("<polyline").skip(1).collect();
        assert_eq!(lines.len(), 3);
        // worst first, the best (thickest, brightest) last, its tooltip escaped
        assert!(lines[0].contains("run&lt;2&gt;: test_acc = 30"), "{}", lines[0]);
        assert!(lines[2].contains("run&lt;1&gt;: test_acc = 90") && lines[2].contains(r#"stroke-width="3.2""#));
        assert!(lines[2].contains(&format!(r#"stroke="{}""#, viridis(0.9))));
        // three points each: two parameters and the metric; the best at the metric's top
        let points = |l: &str| -> Vec<(f64, f64)> {
            let p = l.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
            p.split(' ')
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        };
        let best = points(lines[2]);
        let worst = points(lines[0]);
        assert_eq!(best.len(), 3);
        assert!(best[2].1 < worst[2].1, "higher accuracy is higher up: {best:?} {worst:?}");
        // lr 0.01 (the best run's) sits between 0.1 (run 0) and 0.001 (run 2)
        assert!(worst[0].1 > best[0].1 && best[0].1 > points(lines[1])[0].1);
        for text in [">lr<", ">optimizer<", ">adam<", ">sgd<", ">0.001<", ">test_acc<"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.contains("<title>optimizer.lr</title>"), "the full path on hover");
    }

    #[test]
    fn slices_draw_a_dot_per_run_per_parameter_the_best_ringed() {
        let rel = relation(false);
        let svg = slices(&rel, false);
        assert!(svg.starts_with("<svg viewBox"));
        assert_eq!(svg.matches("<circle").count(), 3 * 2);
        assert_eq!(svg.matches(r##"stroke="#000""##).count(), 2, "the best run ringed in each panel");
        assert!(svg.contains("run&lt;1&gt; (queued 2): lr = 0.01, test_loss = 0.2"), "{svg}");
        assert!(svg.contains("run&lt;0&gt; (queued 1): optimizer = sgd, test_loss = 1"), "{svg}");
        // the queue order colours the dots: the first dark, the last bright
        assert!(
            svg.contains(&format!(r#"fill="{}""#, viridis(0.0)))
                && svg.contains(&format!(r#"fill="{}""#, viridis(0.9)))
        );
        // the panels' width: two side by side
        assert!(svg.contains(r#"viewBox="0 0 460 216""#), "{}", &svg[..120]);
    }

    #[test]
    fn labels_that_would_overlap_are_left_out_their_ticks_kept() {
        let mut rel = relation(true);
        let scale = Scale::of(&["100", "101", "200"], None).unwrap();
        assert!(matches!(scale, Scale::Numeric { log: false, .. }));
        rel.axes[0] = Axis {
            path: "epochs".into(),
            label: "epochs".into(),
            at: ["100", "101", "200"].iter().map(|v| scale.position(v)).collect(),
            values: vec!["100".into(), "101".into(), "200".into()],
            scale,
        };
        for svg in [parallel(&rel, false), slices(&rel, false)] {
            assert!(svg.contains(">100<") && svg.contains(">200<"), "{svg}");
            assert!(!svg.contains(">101<"), "{svg}");
        }
        assert_eq!(
            parallel(&rel, false).matches(r##"stroke="#444"/>"##).count(),
            2 + 3 + 2 + 3, // two axis lines, 3 + 2 ticks of the parameters (101's too), 40, 60, 80 of the metric
            "every tick drawn"
        );
    }

    #[test]
    fn titles_say_what_was_left_out() {
        let mut rel = relation(true);
        assert!(!parallel_title(&rel).contains("not shown"));
        rel.left_out = 3;
        assert!(parallel_title(&rel).ends_with("; 3 more parameters that matter less are not shown"));
        assert!(slices_title(&rel).contains("3 more parameters"));
    }
}
