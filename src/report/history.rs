//! A search's history (Optuna's `plot_optimization_history`): each trial's
//! best value of the metric by trial number, and the best so far as a step
//! line, one colour per `[[search]]` of the report. Random trials (a random
//! search's, TPE's start-up ones) are hollow, TPE's proposals filled, so
//! whether the proposals beat the random draws shows at a glance.

use super::svg::{esc, fmt_tick, open, ticks, PALETTE};
use super::Comparison;
use crate::spec::Metric;
use std::fmt::Write;

/// One trial with a value of the metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The run's name.
    pub name: String,
    /// 1-based trial number.
    pub number: i64,
    /// Its best value of the metric.
    pub metric: f64,
    /// Proposed by TPE (else drawn at random).
    pub proposed: bool,
}

/// One search's trials, in trial order.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// `sweep / name` of the search block.
    pub label: String,
    /// Its trials with a value of the metric.
    pub points: Vec<Point>,
}

/// The searches of a report, on one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The metric (`test_acc`).
    pub metric: String,
    /// Whether higher is better.
    pub maximize: bool,
    /// The searches with two trials or more that have a value of the metric.
    pub searches: Vec<Search>,
}

/// The search block's name as its trials' names carry it (`NAME-07:...`).
fn block_name(run: &str, number: i64) -> Option<&str> {
    (1..=6).find_map(|w| run.find(&format!("-{:0w$}:", number + 1)).map(|i| &run[..i]))
}

impl History {
    /// The trials of the searches among `c`'s runs that are ranked by the
    /// metric most runs are ranked by; None without a search of two such
    /// trials.
    #[must_use]
    pub fn of(c: &Comparison) -> Option<History> {
        let metric = super::main_metric(c.runs.iter().filter(|r| r.trial.is_some()))?;
        // (sweep, search index) -> trials
        let mut by_search: Vec<((String, i64), Search)> = Vec::new();
        for r in c.runs.iter().filter(|r| r.row.metric == metric) {
            let (Some(t), Some(v)) = (&r.trial, r.row.best_metric.filter(|v| v.is_finite())) else { continue };
            let key = (r.row.sweep.clone(), t.search);
            let i = match by_search.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    let block = block_name(&r.row.name, t.number)
                        .map_or_else(|| format!("search{}", t.search + 1), str::to_owned);
                    let label = format!("{} / {block}", r.row.sweep);
                    by_search.push((key, Search { label, points: Vec::new() }));
                    by_search.len() - 1
                }
            };
            by_search[i].1.points.push(Point {
                name: r.row.name.clone(),
                number: t.number + 1,
                metric: v,
                proposed: t.method == "tpe",
            });
        }
        let mut searches: Vec<Search> = by_search.into_iter().map(|(_, s)| s).filter(|s| s.points.len() >= 2).collect();
        if searches.is_empty() {
            return None;
        }
        for s in &mut searches {
            s.points.sort_by_key(|p| p.number);
        }
        let maximize = Metric::from_name(&metric).is_none_or(Metric::maximize);
        Some(History { metric, maximize, searches })
    }

    /// The best value so far after each of `s`'s trials.
    #[must_use]
    pub fn best_so_far(&self, s: &Search) -> Vec<f64> {
        let mut best: Option<f64> = None;
        s.points
            .iter()
            .map(|p| {
                let b = match best {
                    Some(b) if (self.maximize && b >= p.metric) || (!self.maximize && b <= p.metric) => b,
                    _ => p.metric,
                };
                best = Some(b);
                b
            })
            .collect()
    }
}

/// The figure's title.
#[must_use]
pub fn title(h: &History) -> String {
    format!("Search history: {} per trial (○ drawn at random, ● proposed by TPE) and the best so far", h.metric)
}

/// The history as SVG.
#[must_use]
pub fn chart(h: &History, standalone: bool) -> String {
    const W: f64 = 460.0;
    const LEFT: f64 = 58.0;
    const RIGHT: f64 = 12.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 40.0;
    let legend = 14.0 * h.searches.len() as f64 + 6.0;
    let height = 280.0 + legend;
    let mut out = String::new();
    open(&mut out, standalone, W, height, &format!("Search history: {}", h.metric));
    let all = || h.searches.iter().flat_map(|s| s.points.iter());
    let last = all().map(|p| p.number).max().unwrap_or(1);
    let (mut y0, mut y1) = all().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.metric), a.1.max(p.metric)));
    let pad = if y1 > y0 { (y1 - y0) * 0.06 } else { y0.abs().max(1.0) * 0.05 };
    (y0, y1) = (y0 - pad, y1 + pad);
    let (x0, x1) = (0.5, last as f64 + 0.5);
    let (pw, ph) = (W - LEFT - RIGHT, height - legend - TOP - BOTTOM);
    let top = TOP + legend;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    for t in ticks(y0, y1, 5) {
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 4.0,
            sy(t) + 4.0,
            fmt_tick(t),
            y = sy(t)
        );
    }
    for t in ticks(1.0, last as f64, 6).into_iter().filter(|v| v.fract() == 0.0) {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            sx(t),
            top + ph + 14.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#999"/><text x="{:.1}" y="{:.1}" text-anchor="middle">trial</text>"##,
        LEFT + pw / 2.0,
        height - 8.0
    );
    for (k, s) in h.searches.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        // the legend: the colour's line and the search's name
        let ly = TOP + 4.0 + 14.0 * k as f64;
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 18.0,
            LEFT + 24.0,
            ly + 4.0,
            esc(&s.label)
        );
        // the best so far: a step after each trial
        let best = h.best_so_far(s);
        let mut d = format!("M{:.1},{:.1}", sx(s.points[0].number as f64), sy(best[0]));
        for (p, b) in s.points.iter().zip(&best).skip(1) {
            let _ = write!(d, " H{:.1} V{:.1}", sx(p.number as f64), sy(*b));
        }
        let _ = write!(d, " H{:.1}", sx(x1));
        let _ = write!(
            out,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"><title>{}: best {} so far</title></path>"#,
            esc(&s.label),
            esc(&h.metric)
        );
        for p in &s.points {
            let fill = if p.proposed { colour } else { "white" };
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="1.5"><title>{} (trial {}, {}): {} = {}</title></circle>"#,
                sx(p.number as f64),
                sy(p.metric),
                esc(&p.name),
                p.number,
                if p.proposed { "proposed by TPE" } else { "drawn at random" },
                esc(&h.metric),
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

    fn history(maximize: bool) -> History {
        let metrics = [40.0, 30.0, 55.0, 50.0, 70.0];
        History {
            metric: if maximize { "test_acc" } else { "test_loss" }.into(),
            maximize,
            searches: vec![Search {
                label: "s / <tpe>".into(),
                points: metrics
                    .iter()
                    .enumerate()
                    .map(|(i, &m)| Point { name: format!("t{i}"), number: i as i64 + 1, metric: m, proposed: i >= 3 })
                    .collect(),
            }],
        }
    }

    #[test]
    fn the_best_so_far_follows_the_metrics_goal() {
        let h = history(true);
        assert_eq!(h.best_so_far(&h.searches[0]), [40.0, 40.0, 55.0, 55.0, 70.0]);
        let h = history(false);
        assert_eq!(h.best_so_far(&h.searches[0]), [40.0, 30.0, 30.0, 30.0, 30.0]);
    }

    #[test]
    fn the_chart_has_a_dot_per_trial_hollow_when_random_and_a_step_line() {
        let h = history(true);
        let svg = chart(&h, true);
        assert!(svg.starts_with("<svg xmlns=") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches(r##"fill="white" stroke="#1f77b4""##).count(), 3, "three random trials hollow");
        assert_eq!(svg.matches("proposed by TPE): test_acc").count(), 2);
        assert!(svg.contains("t4 (trial 5, proposed by TPE): test_acc = 70"), "{svg}");
        // a horizontal and a vertical step after each trial but the first, and one to the end
        let d = svg.split(r#"<path d=""#).nth(1).unwrap().split('"').next().unwrap();
        assert_eq!((d.matches('H').count(), d.matches('V').count()), (5, 4), "{d}");
        assert!(svg.contains("s / &lt;tpe&gt;"), "the label escaped");
    }

    #[test]
    fn block_names_come_from_the_trials_names() {
        assert_eq!(block_name("sgd-03:lr=0.1,batch_size=16", 2), Some("sgd"));
        assert_eq!(block_name("my-search-012:lr=0.1", 11), Some("my-search"));
        assert_eq!(block_name("baseline", 0), None);
    }
}
