//! Renderers: terminal table, CSV, JSON and Markdown (HTML is in `html`).

use super::query::{Cell, Table};
use super::{Comparison, RunReport};
use crate::store::{EpochRecord, Status};
use serde_json::{json, Value};
use std::fmt::Write;

/// Output formats of `sweep results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultsFormat {
    /// Aligned columns for a terminal.
    Table,
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// Seconds as `12.3s`, `4m05s` or `1h02m`.
pub fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (secs / 3600.0) as u64, ((secs % 3600.0) / 60.0) as u64)
    }
}

pub(crate) fn metric_digits(metric: &str) -> usize {
    if metric.ends_with("loss") {
        4
    } else {
        2
    }
}

/// Aligned text table.
pub fn text_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let len = |s: &String| if s.is_ascii() { s.len() } else { s.chars().count() };
    let mut widths: Vec<usize> = headers.iter().map(len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(len(cell));
        }
    }
    let mut out = String::with_capacity((rows.len() + 2) * (widths.iter().sum::<usize>() + 2 * widths.len() + 1));
    let line = |cells: &[String], out: &mut String| {
        let start = out.len();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(c);
            let pad = w.saturating_sub(if c.is_ascii() { c.len() } else { c.chars().count() });
            out.extend(std::iter::repeat_n(' ', pad));
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    line(headers, &mut out);
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_line(cells: &[String]) -> String {
    cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n"
}

pub(crate) fn progress(r: &RunReport) -> String {
    let row = &r.row;
    match (row.status, row.steps_per_epoch) {
        (Status::Running | Status::Interrupted, Some(n)) if row.step > 0 => {
            format!("{}/{} (+{}/{n})", row.epochs_done, row.epochs_total, row.step)
        }
        _ => format!("{}/{}", row.epochs_done, row.epochs_total),
    }
}

fn run_json(c: &Comparison, r: &RunReport, with_epochs: bool) -> Value {
    let params: serde_json::Map<String, Value> =
        c.differing.iter().map(|p| (p.clone(), r.params.get(p).map_or(Value::Null, |v| json!(v)))).collect();
    let mut v = json!({
        "id": &r.row.key[..10],
        "key": r.row.key,
        "sweep": r.row.sweep,
        "name": r.row.name,
        "status": r.row.status,
        "epochs_done": r.row.epochs_done,
        "epochs_total": r.row.epochs_total,
        "metric": r.row.metric,
        "best_epoch": r.row.best_epoch,
        "best_metric": r.row.best_metric,
        "final_train_acc": r.row.final_train_acc,
        "final_test_acc": r.row.final_test_acc,
        "train_seconds": r.row.train_seconds,
        "device": r.row.device,
        "error": r.row.error,
        "best": r.best,
        "params": params,
        "reference": r.row.reference,
        "config": r.config,
    });
    if with_epochs {
        v["epochs"] = json!(r.epochs);
    }
    v
}

/// The rows of `sweep results --format json`, as a JSON array.
pub fn results_json(c: &Comparison) -> Value {
    Value::Array(c.runs.iter().map(|r| run_json(c, r, false)).collect())
}

/// A results [`Table`] as a terminal table, CSV, or JSON (an array of objects,
/// numbers as numbers; group statistics as `{mean, std, n}`).
pub fn render_table(t: &Table, format: ResultsFormat) -> String {
    match format {
        ResultsFormat::Table => {
            if t.rows.is_empty() {
                return "no runs\n".to_owned();
            }
            let rows: Vec<Vec<String>> = t.rows.iter().map(|r| r.iter().map(Cell::text).collect()).collect();
            text_table(&t.headers, &rows)
        }
        ResultsFormat::Csv => {
            let mut out = csv_line(&t.headers);
            for r in &t.rows {
                let cells: Vec<String> = r
                    .iter()
                    .map(|c| match c {
                        Cell::Num(v, _) | Cell::Secs(v) => format!("{v}"),
                        Cell::Stat { mean, .. } => format!("{mean}"),
                        Cell::Missing => String::new(),
                        other => other.text(),
                    })
                    .collect();
                out += &csv_line(&cells);
            }
            out
        }
        ResultsFormat::Json => {
            let rows: Vec<Value> = t
                .rows
                .iter()
                .map(|r| Value::Object(t.headers.iter().cloned().zip(r.iter().map(Cell::json)).collect()))
                .collect();
            serde_json::to_string_pretty(&rows).expect("JSON serialises") + "\n"
        }
    }
}

/// `sweep results` with the default view: one row per run, differing parameters.
pub fn results(c: &Comparison, format: ResultsFormat) -> String {
    let t = super::query::table(c, &super::query::Query::default()).expect("the default columns exist");
    render_table(&t, format)
}

/// The report's title: the sweep's name, or the names.
pub(crate) fn title(c: &Comparison) -> String {
    match c.sweeps.len() {
        0 => "no sweep".to_owned(),
        1 => c.sweeps[0].name.clone(),
        _ => c.sweeps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
    }
}

/// The summary table of a report: the default results columns, the best run starred.
pub(crate) fn summary(c: &Comparison) -> (Vec<String>, Vec<Vec<String>>) {
    let t = super::query::table(c, &super::query::Query::default()).expect("the default columns exist");
    let rows = t
        .rows
        .iter()
        .zip(&c.runs)
        .map(|(row, r)| {
            let mut cells: Vec<String> = row.iter().map(Cell::text).collect();
            if r.best {
                cells[1] = format!("★ {}", cells[1]);
            }
            cells
        })
        .collect();
    (t.headers, rows)
}

/// Measured against reference, for the runs that carry reference numbers.
pub(crate) fn references(c: &Comparison) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let refs: Vec<&RunReport> = c.runs.iter().filter(|r| r.row.reference.is_some()).collect();
    if refs.is_empty() {
        return None;
    }
    let headers: Vec<String> =
        ["run", "status", "best test acc", "reference", "diff", "best test loss", "reference", "diff", "source"]
            .map(str::to_owned)
            .to_vec();
    let rows: Vec<Vec<String>> = refs
        .iter()
        .map(|r| {
            let rf = r.row.reference.clone().unwrap_or_default();
            let best_acc = r.epochs.iter().map(|e| (e.test_acc, e.epoch)).max_by(|a, b| a.0.total_cmp(&b.0));
            let best_loss = r.epochs.iter().map(|e| (e.test_loss, e.epoch)).min_by(|a, b| a.0.total_cmp(&b.0));
            let at = |v: Option<(f64, i64)>, d: usize| v.map_or("-".into(), |(x, e)| format!("{x:.d$} (epoch {e})"));
            let rat = |v: Option<f64>, e: Option<u32>, d: usize| match (v, e) {
                (Some(x), Some(e)) => format!("{x:.d$} (epoch {e})"),
                (Some(x), None) => format!("{x:.d$}"),
                _ => "-".into(),
            };
            let mut source = rf.source.clone().unwrap_or_default();
            if let Some(n) = &rf.note {
                source = format!("{source} {n}").trim().to_owned();
            }
            vec![
                r.row.name.clone(),
                r.row.status.to_string(),
                at(best_acc, 2),
                rat(rf.test_acc, rf.test_acc_epoch, 2),
                diff(best_acc.map(|x| x.0), rf.test_acc, 2),
                at(best_loss, 4),
                rat(rf.test_loss, rf.test_loss_epoch, 4),
                diff(best_loss.map(|x| x.0), rf.test_loss, 4),
                source,
            ]
        })
        .collect();
    Some((headers, rows))
}

/// A run's epochs as table rows (the best epoch starred).
pub fn epoch_rows(epochs: &[EpochRecord], best_epoch: Option<i64>) -> (Vec<String>, Vec<Vec<String>>) {
    let headers: Vec<String> =
        ["epoch", "train loss", "train acc", "test loss", "test acc", "test top-5", "lr", "seconds", "img/s"]
            .map(str::to_owned)
            .to_vec();
    let rows = epochs
        .iter()
        .map(|e| {
            let mark = if Some(e.epoch) == best_epoch { " ★" } else { "" };
            vec![
                format!("{}{mark}", e.epoch),
                format!("{:.4}", e.train_loss),
                format!("{:.2}", e.train_acc),
                format!("{:.4}", e.test_loss),
                format!("{:.2}", e.test_acc),
                fmt_opt(e.test_top5, 2),
                format!("{:.3e}", e.lr),
                format!("{:.1}", e.seconds),
                format!("{:.0}", e.images_per_sec),
            ]
        })
        .collect();
    (headers, rows)
}

/// `sweep report --format json`: sweeps and runs with every epoch.
pub fn json(c: &Comparison) -> String {
    let v = json!({
        "generator": format!("sweep {}", env!("CARGO_PKG_VERSION")),
        "sweeps": c.sweeps,
        "differing": c.differing,
        "runs": c.runs.iter().map(|r| run_json(c, r, true)).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).expect("JSON serialises") + "\n"
}

/// `sweep report --format csv`: one row per (run, epoch), for pandas and spreadsheets.
pub fn csv_epochs(c: &Comparison) -> String {
    let mut headers = vec!["id".to_owned(), "sweep".into(), "name".into(), "status".into()];
    headers.extend(c.differing.iter().cloned());
    headers.extend(
        ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_sec"]
            .map(str::to_owned),
    );
    let mut out = csv_line(&headers);
    for r in &c.runs {
        for e in &r.epochs {
            let mut cells =
                vec![r.row.key[..10].to_owned(), r.row.sweep.clone(), r.row.name.clone(), r.row.status.to_string()];
            cells.extend(c.differing.iter().map(|p| r.params.get(p).cloned().unwrap_or_default()));
            cells.extend([
                e.epoch.to_string(),
                format!("{}", e.train_loss),
                format!("{}", e.train_acc),
                format!("{}", e.test_loss),
                format!("{}", e.test_acc),
                format!("{}", e.lr),
                format!("{}", e.seconds),
                format!("{}", e.images_per_sec),
            ]);
            out += &csv_line(&cells);
        }
    }
    out
}

/// Escapes text for a Markdown table cell.
fn md(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace('\n', " ").replace('<', "&lt;").replace('>', "&gt;")
}

fn md_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.iter().map(|h| md(h)).collect::<Vec<_>>().join(" | "));
    out += &format!("|{}\n", headers.iter().map(|_| "---|").collect::<String>());
    for row in rows {
        out += &format!("| {} |\n", row.iter().map(|c| md(c)).collect::<Vec<_>>().join(" | "));
    }
    out
}

fn diff(measured: Option<f64>, reference: Option<f64>, digits: usize) -> String {
    match (measured, reference) {
        (Some(m), Some(r)) => format!("{:+.digits$}", m - r),
        _ => "-".into(),
    }
}

/// `sweep report --format md`; `figures` are the SVG files written beside it
/// (file name, caption), embedded as images.
pub fn markdown(c: &Comparison, figures: &[(String, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Sweep report: {}\n", md(&title(c)));
    for s in &c.sweeps {
        let _ = write!(out, "- **{}** ({}), best = {} ({})", md(&s.name), md(&s.source_path), s.metric, s.goal);
        if let Some(d) = &s.description {
            let _ = write!(out, ": {}", md(d));
        }
        out.push('\n');
    }
    let counts: Vec<String> = c.status_counts().iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "\n{} runs: {}.\n", c.runs.len(), counts.join(", "));

    let _ = writeln!(out, "## Summary\n");
    if !c.differing.is_empty() {
        let _ = writeln!(
            out,
            "Parameters that differ between runs: {}.\n",
            c.differing.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
        );
    }
    let (headers, rows) = summary(c);
    out += &md_table(&headers, &rows);
    if c.runs.iter().any(|r| r.best) {
        out += "\n★ best run by its sweep's metric.\n";
    }
    if let Some((headers, rows)) = references(c) {
        let _ = writeln!(out, "\n## Measured against reference\n");
        out += &md_table(&headers, &rows);
    }
    if !figures.is_empty() {
        let _ = writeln!(out, "\n## Figures\n");
        for (file, caption) in figures {
            let _ = writeln!(out, "![{}]({})\n", md(caption), file.replace(' ', "%20"));
        }
    }

    let failed: Vec<&RunReport> = c.runs.iter().filter(|r| r.row.error.is_some() || r.row.note.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\n## Errors and notes\n");
        for r in failed {
            let text = r.row.error.as_deref().or(r.row.note.as_deref()).unwrap_or("");
            let _ = writeln!(out, "- **{}** ({}): {}", md(&r.row.name), r.row.status, md(text));
        }
    }

    let _ = writeln!(out, "\n## Epochs\n");
    for r in &c.runs {
        let _ = writeln!(out, "### {} (`{}`)\n", md(&r.row.name), &r.row.key[..10]);
        if r.epochs.is_empty() {
            let _ = writeln!(out, "No epoch recorded ({}).\n", r.row.status);
            continue;
        }
        let (headers, rows) = epoch_rows(&r.epochs, r.row.best_epoch);
        out += &md_table(&headers, &rows);
        out.push('\n');
    }
    let _ = writeln!(out, "_Generated by sweep {}._", env!("CARGO_PKG_VERSION"));
    out
}
