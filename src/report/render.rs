//! Renderers: terminal table, CSV, JSON and Markdown (HTML is in `html`).

use super::format::{fmt_opt, metric_digits};
use super::query::{rounded, Cell, Table};
use super::{Comparison, RunReport};
use crate::record::EpochRecord;
use crate::text::printable;
use serde_json::{json, Value};
use std::collections::HashMap;
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

/// Aligned text table.
pub fn text_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut cells = Cells::default();
    for row in rows {
        for c in row {
            cells.text.push_str(c);
            cells.end();
        }
    }
    aligned(headers, &cells, headers.len())
}

/// Cell texts one after another in one string (one allocation for a table of
/// 10,000 rows instead of one per cell).
#[derive(Default)]
pub(crate) struct Cells {
    pub(crate) text: String,
    ends: Vec<usize>,
}

impl Cells {
    /// Ends the cell written since the last call.
    pub(crate) fn end(&mut self) {
        self.ends.push(self.text.len());
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.text[a..b])
    }
}

fn width(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Whether some text may hold a control character (one scan of the bytes; a
/// 0xC2 byte starts both C1 controls and ordinary characters such as `£`).
fn may_hold_controls(text: &str) -> bool {
    text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2)
}

/// `cells`, `columns` to a row, aligned under `headers`. Control characters
/// in cells and headers are shown escaped (see [`crate::text`]).
pub(crate) fn aligned(headers: &[String], cells: &Cells, columns: usize) -> String {
    if may_hold_controls(&cells.text) || headers.iter().any(|h| may_hold_controls(h)) {
        let headers: Vec<String> = headers.iter().map(|h| printable(h).into_owned()).collect();
        let mut clean = Cells::default();
        for c in cells.iter() {
            clean.text.push_str(&printable(c));
            clean.end();
        }
        return aligned_plain(&headers, &clean, columns);
    }
    aligned_plain(headers, cells, columns)
}

/// The width tables are fitted to: `$COLUMNS` if set, else the terminal's
/// when standard output is one; `None` (no limit) for a pipe or a file.
pub fn terminal_width() -> Option<usize> {
    static WIDTH: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *WIDTH.get_or_init(|| {
        if let Some(n) = std::env::var("COLUMNS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            return (n > 0).then_some(n);
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return None;
        }
        #[cfg(unix)]
        {
            let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
            #[allow(unsafe_code)]
            // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
            let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut ws) } == 0;
            if ok && ws.ws_col > 0 {
                return Some(usize::from(ws.ws_col));
            }
        }
        None
    })
}

/// Narrows the widest long columns (names, long parameter values; never
/// below their header or 12 characters, never the run id, which is what a
/// person copies) until the table fits `limit`; cells are then cut with `…`.
fn fit(widths: &mut [usize], headers: &[String], limit: usize) {
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    let floor: Vec<usize> = (0..widths.len())
        .map(|i| match headers.get(i).map(String::as_str) {
            Some("id") => widths[i],
            h => h.map_or(0, width).max(12).min(widths[i]),
        })
        .collect();
    while total(widths) > limit {
        let Some(i) = (0..widths.len()).filter(|&i| widths[i] > floor[i]).max_by_key(|&i| widths[i] - floor[i]) else {
            break;
        };
        widths[i] -= 1;
    }
}

/// Appends `c` cut to `w` characters (its last one `…`) when it is longer.
fn push_cut(out: &mut String, c: &str, w: usize) {
    out.extend(c.chars().take(w.saturating_sub(1)));
    out.push('…');
}

fn aligned_plain(headers: &[String], cells: &Cells, columns: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    widths.resize(columns.max(widths.len()), 0);
    for (i, c) in cells.iter().enumerate() {
        let w = &mut widths[i % columns];
        *w = (*w).max(width(c));
    }
    if let Some(limit) = terminal_width() {
        fit(&mut widths, headers, limit);
    }
    let rows = cells.ends.len() / columns.max(1);
    let mut out = String::with_capacity((rows + 2) * (widths.iter().sum::<usize>() + 2 * widths.len() + 1));
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let start = out.len();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            // One width per cell: this runs for every cell of 10,000-run tables.
            let cw = width(c);
            if cw > *w {
                push_cut(out, c, *w);
            } else {
                out.push_str(c);
                out.extend(std::iter::repeat_n(' ', w - cw));
            }
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    line(&mut headers.iter().map(String::as_str), &mut out);
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut dashes.iter().map(String::as_str), &mut out);
    let mut all = cells.iter();
    for _ in 0..rows {
        line(&mut all.by_ref().take(columns), &mut out);
    }
    out
}

fn csv_field(s: &str) -> String {
    let s = printable(s);
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

/// A CSV text: the header row, then the rows (RFC 4180 quoting).
pub fn csv(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut out = csv_line(headers);
    for r in rows {
        out += &csv_line(r);
    }
    out
}

fn csv_line(cells: &[String]) -> String {
    cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n"
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
        format!("best_{}", r.row.metric): r.row.best_metric.map(|v| rounded(v, metric_digits(&r.row.metric))),
        "train_acc": r.row.final_train_acc.map(|v| rounded(v, 2)),
        "test_acc": r.row.final_test_acc.map(|v| rounded(v, 2)),
        "test_loss": r.row.final_test_loss.map(|v| rounded(v, 4)),
        "seconds": rounded(r.row.train_seconds, 1),
        "img_per_s": r.row.images_per_sec.map(|v| rounded(v, 0)),
        "device": r.row.device,
        "error": r.row.error,
        "best": r.best,
        "params": params,
        "reference": r.row.reference,
        "config": r.config,
    });
    if with_epochs {
        v["epochs"] = Value::Array(r.epochs.iter().map(epoch_json).collect());
        if let Some(t) = &r.trial {
            // as `sweep show --format json` gives it: the trial numbered from 1, as its name
            v["trial"] = json!({ "search": t.search, "trial": t.number + 1, "method": t.method });
        }
    }
    v
}

/// One epoch in report JSON: the names of the CSV, to the digits the
/// report tables show and two more (accuracies 4 decimals, losses 6).
fn epoch_json(e: &EpochRecord) -> Value {
    let opt = |v: Option<f64>, d: usize| v.map_or(Value::Null, |v| rounded(v, d));
    json!({
        "epoch": e.epoch,
        "train_loss": rounded(e.train_loss, 6),
        "train_acc": rounded(e.train_acc, 4),
        "test_loss": rounded(e.test_loss, 6),
        "test_acc": rounded(e.test_acc, 4),
        "test_top5": opt(e.test_top5, 4),
        "val_loss": opt(e.val_loss, 6),
        "val_acc": opt(e.val_acc, 4),
        "lr": e.lr,
        "seconds": rounded(e.seconds, 3),
        "img_per_s": rounded(e.images_per_sec, 1),
        "peak_memory_bytes": e.peak_memory_bytes,
    })
}

/// The rows of `sweep results --format json`, as a JSON array (what
/// `submit --format json` puts under `results` too: one schema).
pub fn results_json(c: &Comparison) -> Value {
    let t = super::query::table(c, &super::query::Query::default()).expect("the default columns exist");
    serde_json::from_str(&render_table(&t, ResultsFormat::Json)).expect("render_table writes JSON")
}

/// A results [`Table`] as a terminal table, CSV, or JSON (an array of objects,
/// numbers as numbers; group statistics as `{mean, std, n}`).
pub fn render_table(t: &Table, format: ResultsFormat) -> String {
    match format {
        ResultsFormat::Table => {
            if t.rows.is_empty() {
                return "no runs\n".to_owned();
            }
            let mut cells = Cells::default();
            for r in &t.rows {
                for c in r {
                    c.write_text(&mut cells.text);
                    cells.end();
                }
            }
            aligned(&t.headers, &cells, t.headers.len())
        }
        ResultsFormat::Csv => {
            let mut headers = Vec::new();
            for (i, h) in t.headers.iter().enumerate() {
                match t.rows.first().map(|r| &r[i]) {
                    Some(Cell::Progress { .. }) => {
                        headers.extend(["epochs_done".to_owned(), "epochs_total".to_owned()]);
                    }
                    _ => headers.push(super::query::machine_name(h).to_owned()),
                }
            }
            let mut out = csv_line(&headers);
            for r in &t.rows {
                let mut cells: Vec<String> = Vec::with_capacity(headers.len());
                for c in r {
                    match c {
                        Cell::Progress { done, total, .. } => cells.extend([done.to_string(), total.to_string()]),
                        Cell::Missing => cells.push(String::new()),
                        Cell::Text(s) => cells.push(s.clone()),
                        Cell::Param(s) => cells.push(s.to_string()),
                        Cell::Stat { .. } => cells.push(c.json()["mean"].to_string()),
                        Cell::Num(..) | Cell::Secs(_) => cells.push(c.json().to_string()),
                    }
                }
                out += &csv_line(&cells);
            }
            out
        }
        ResultsFormat::Json => {
            // Written straight from the cells (through serde, so formatted as
            // `to_string_pretty` formats), without a `Value` per row; a
            // parameter's JSON value is worked out once per distinct value.
            struct Rows<'a>(&'a Table, std::cell::RefCell<HashMap<*const u8, Value>>);
            struct Row<'a>(&'a Rows<'a>, &'a [Cell]);
            impl serde::Serialize for Rows<'_> {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.collect_seq(self.0.rows.iter().map(|r| Row(self, r)))
                }
            }
            impl serde::Serialize for Row<'_> {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    use serde::ser::SerializeMap;
                    let mut m = s.serialize_map(Some(self.1.len()))?;
                    for (h, c) in self.0 .0.headers.iter().zip(self.1) {
                        let h = super::query::machine_name(h);
                        match c {
                            Cell::Text(t) => m.serialize_entry(h, t)?,
                            Cell::Progress { done, total, .. } => {
                                m.serialize_entry("epochs_done", done)?;
                                m.serialize_entry("epochs_total", total)?;
                            }
                            Cell::Param(p) => {
                                let mut cache = self.0 .1.borrow_mut();
                                let v = cache.entry(p.as_ptr()).or_insert_with(|| c.json());
                                m.serialize_entry(h, v)?;
                            }
                            _ => m.serialize_entry(h, &c.json())?,
                        }
                    }
                    m.end()
                }
            }
            let rows = Rows(t, std::cell::RefCell::default());
            // Sized up front: growing a 5 MB buffer by doubling cost a tenth of the time.
            let per_row: usize = t.headers.iter().map(|h| h.len() + 32).sum::<usize>() + 8;
            let mut out = Vec::with_capacity(t.rows.len() * per_row + 16);
            serde_json::to_writer_pretty(&mut out, &rows).expect("JSON serialises");
            out.push(b'\n');
            String::from_utf8(out).expect("serde_json writes UTF-8")
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

/// The summary table of a report: the default results columns (and each
/// run's peak memory in MiB, where runs recorded it), the best run starred.
pub(crate) fn summary(c: &Comparison) -> (Vec<String>, Vec<Vec<String>>) {
    let memory = c.runs.iter().any(|r| r.row.peak_memory_bytes.is_some());
    let q = super::query::Query {
        also: if memory { vec!["memory_mib".to_owned()] } else { Vec::new() },
        ..Default::default()
    };
    let t = super::query::table(c, &q).expect("the default columns exist");
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
                format!("{source} {n}").trim().clone_into(&mut source);
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
        "importance": super::importance::importances(c),
        "runs": c.runs.iter().map(|r| run_json(c, r, true)).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).expect("JSON serialises") + "\n"
}

/// `sweep report --format csv`: one row per (run, epoch), for pandas and spreadsheets.
pub fn csv_epochs(c: &Comparison) -> String {
    let mut headers = vec!["id".to_owned(), "sweep".into(), "name".into(), "status".into()];
    headers.extend(c.differing.iter().cloned());
    headers.extend(
        ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "img_per_s"].map(str::to_owned),
    );
    let mut out = csv_line(&headers);
    for r in &c.runs {
        for e in &r.epochs {
            let mut cells =
                vec![r.row.key[..10].to_owned(), r.row.sweep.clone(), r.row.name.clone(), r.row.status.to_string()];
            cells.extend(c.differing.iter().map(|p| r.params.get(p).unwrap_or_default().to_owned()));
            cells.extend([
                e.epoch.to_string(),
                rounded(e.train_loss, 6).to_string(),
                rounded(e.train_acc, 4).to_string(),
                rounded(e.test_loss, 6).to_string(),
                rounded(e.test_acc, 4).to_string(),
                format!("{}", e.lr),
                rounded(e.seconds, 3).to_string(),
                rounded(e.images_per_sec, 1).to_string(),
            ]);
            out += &csv_line(&cells);
        }
    }
    out
}

/// Escapes text for a Markdown table cell.
fn md(s: &str) -> String {
    printable(s).replace('\\', "\\\\").replace('|', "\\|").replace('\n', " ").replace('<', "&lt;").replace('>', "&gt;")
}

fn md_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.iter().map(|h| md(h)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|{}", headers.iter().map(|_| "---|").collect::<String>());
    for row in rows {
        let _ = writeln!(out, "| {} |", row.iter().map(|c| md(c)).collect::<Vec<_>>().join(" | "));
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

    let shared = super::shared_settings(c);
    if !shared.is_empty() {
        let _ = writeln!(out, "## What every run shares\n");
        for (k, v) in &shared {
            let _ = writeln!(out, "- **{}**: {}", md(k), md(v));
        }
        out.push('\n');
    }

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
    if let Some(imp) = super::importance::importances(c) {
        let _ = writeln!(out, "\n## Which parameters matter\n");
        let (headers, rows) = super::importance::table(&imp);
        out += &md_table(&headers, &rows);
        let _ = writeln!(out, "\n{}", md(&super::importance::caption(&imp)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_tables_pad_wide_characters_by_their_count() {
        let headers = vec!["name".to_owned(), "acc".to_owned()];
        let t = text_table(&headers, &[vec!["ünï".into(), "1.00".into()], vec!["a".into(), "-".into()]]);
        assert_eq!(t, "name  acc\n----  ----\nünï   1.00\na     -\n");
    }
}
