//! The report's figures, built from a [`Comparison`]: learning curves for
//! every run (train/test loss and accuracy, learning rate), a search's
//! history ([`super::history`]), the parameters against the metric
//! ([`super::param_charts`]), the best metric per run, and
//! for the best run its per-class accuracy and confusion matrix.

use super::svg::{self, Series};
use super::Comparison;

/// One figure: a file-name stem, a caption, and the SVG text.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Short name, used for the file written beside a Markdown report.
    pub name: &'static str,
    /// Caption.
    pub title: String,
    /// The SVG.
    pub svg: String,
}

/// The sweep's metric by epoch, each run that ASHA stopped marked × where it stopped.
fn asha_figure(
    c: &Comparison,
    runs: &[&super::RunReport],
    style_of: &dyn Fn(&super::RunReport) -> usize,
    standalone: bool,
) -> Figure {
    let metric_name = c.runs[0].row.metric.clone();
    let metric = crate::spec::Metric::from_name(&metric_name).unwrap_or(crate::spec::Metric::TestAcc);
    let series: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: r.row.name.clone(),
            points: r.epochs.iter().map(|e| (e.epoch as f64, e.metric(metric))).collect(),
            highlight: r.best,
            style: style_of(r),
            stopped: r.row.note.clone().filter(|n| n.starts_with(crate::search::asha::STOP_NOTE)),
        })
        .collect();
    let mut rungs: Vec<i64> = c.runs.iter().filter_map(|r| r.row.rung).collect();
    rungs.sort_unstable();
    rungs.dedup();
    let rungs: Vec<String> = rungs.iter().map(ToString::to_string).collect();
    let title = format!("{metric_name} by epoch; × = stopped by ASHA (rungs at epochs {})", rungs.join(", "));
    Figure { name: "asha", title: title.clone(), svg: svg::line_chart(&title, "epoch", &series, false, standalone) }
}

/// Every figure of the report; `standalone` adds the XML namespace for files.
pub fn figures(c: &Comparison, standalone: bool) -> Vec<Figure> {
    let with_epochs: Vec<_> = c.runs.iter().filter(|r| !r.epochs.is_empty()).collect();
    let mut out = Vec::new();
    if !with_epochs.is_empty() {
        // A run's style is its place among all the report's runs: the same in every chart.
        let style_of = |r: &super::RunReport| c.runs.iter().position(|x| x.row.id == r.row.id).unwrap_or(0);
        let names: Vec<(String, bool, usize)> =
            with_epochs.iter().map(|r| (r.row.name.clone(), r.best, style_of(r))).collect();
        out.push(Figure { name: "legend", title: "Runs".into(), svg: svg::legend(&names, standalone) });
        type Pick = fn(&crate::record::EpochRecord) -> f64;
        let curves: [(&'static str, &str, Pick, bool); 5] = [
            ("train-loss", "Training loss", |e| e.train_loss, false),
            ("test-loss", "Test loss", |e| e.test_loss, false),
            ("train-acc", "Training accuracy (%)", |e| e.train_acc, false),
            ("test-acc", "Test accuracy (%)", |e| e.test_acc, false),
            ("lr", "Learning rate", |e| e.lr, true),
        ];
        for (name, title, pick, log) in curves {
            let series: Vec<Series> = with_epochs
                .iter()
                .map(|r| Series {
                    name: r.row.name.clone(),
                    points: r.epochs.iter().map(|e| (e.epoch as f64, pick(e))).collect(),
                    highlight: r.best,
                    style: style_of(r),
                    stopped: None,
                })
                .collect();
            let lr_flat = log && {
                let v: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
                let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |a, &b| (a.0.min(b), a.1.max(b)));
                hi <= lo * 10.0
            };
            out.push(Figure {
                name,
                title: title.to_owned(),
                svg: svg::line_chart(title, "epoch", &series, log && !lr_flat, standalone),
            });
        }
        if c.runs.iter().any(|r| r.row.rung.is_some()) {
            out.push(asha_figure(c, &with_epochs, &style_of, standalone));
        }
    }
    if let Some(h) = super::history::History::of(c) {
        out.push(Figure {
            name: "history",
            title: super::history::title(&h),
            svg: super::history::chart(&h, standalone),
        });
    }
    if let Some(rel) = super::param_charts::Relation::of(c) {
        use super::param_charts::{parallel, parallel_title, slices, slices_title};
        out.push(Figure { name: "parallel", title: parallel_title(&rel), svg: parallel(&rel, standalone) });
        out.push(Figure { name: "slices", title: slices_title(&rel), svg: slices(&rel, standalone) });
    }
    if !c.runs.is_empty() {
        let metric = c.runs[0].row.metric.clone();
        let labels: Vec<String> = c.runs.iter().map(|r| r.row.name.clone()).collect();
        let values: Vec<Option<f64>> = c.runs.iter().map(|r| r.row.best_metric).collect();
        let best = c.runs.iter().position(|r| r.best);
        let title = format!("Best {metric} per run");
        out.push(Figure {
            name: "best",
            title: title.clone(),
            svg: svg::bar_chart(
                &title,
                &labels,
                &values,
                best,
                Some(&(0..c.runs.len()).collect::<Vec<_>>()),
                standalone,
            ),
        });
    }
    if let (Some(run), Some(m)) = (c.runs.iter().find(|r| r.best), &c.best_confusion) {
        let n = m.len();
        let classes: Vec<String> = match &run.row.classes {
            Some(cl) if cl.len() == n => cl.clone(),
            _ => (0..n).map(|i| format!("class {i}")).collect(),
        };
        let acc: Vec<Option<f64>> = m
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| 100.0 * row[i] as f64 / total as f64)
            })
            .collect();
        let epoch = run.row.best_epoch.map_or(String::new(), |e| format!(", epoch {e}"));
        let title = format!("Per-class test accuracy (%), {}{epoch}", run.row.name);
        out.push(Figure {
            name: "classes",
            title: title.clone(),
            svg: svg::bar_chart(&title, &classes, &acc, None, None, standalone),
        });
        let title = format!("Confusion matrix, {}{epoch}", run.row.name);
        out.push(Figure {
            name: "confusion",
            title: title.clone(),
            svg: svg::heatmap(&title, &classes, m, standalone),
        });
    }
    out
}
