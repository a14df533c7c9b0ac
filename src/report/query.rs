//! `sweep results`: filtering, sorting, grouping and column choice over a
//! [`Comparison`], producing a [`Table`] of typed cells that the renderers
//! print as a terminal table, CSV or JSON.
//!
//! A name in `--where`, `--sort`, `--group-by` or `--columns` is either a
//! result column (`id`, `sweep`, `name`, `status`, `epochs`, `best_epoch`,
//! `best` (the sweep's metric; also `best_test_acc` etc.), `train_acc`,
//! `test_acc`, `test_loss`, `time`, `img/s`) or a parameter of the run's
//! configuration, by its dotted path (`optimizer.lr`) or by a short name that
//! is unambiguous among the runs shown (`lr`, `model`, `optimizer` for
//! `optimizer.name`).

use super::format::{duration, metric_digits, progress, push_fixed};
use super::{column_names, Comparison, RunReport};
use crate::store::Status;
use std::collections::BTreeMap;

/// One cell: text, a number shown with `digits` decimals, or nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text.
    Text(String),
    /// A parameter's value as configured (JSON text: numbers stay numbers in JSON output).
    Param(std::sync::Arc<str>),
    /// A number and the decimals to show.
    Num(f64, usize),
    /// Seconds, shown as a duration.
    Secs(f64),
    /// Epochs done of the total (with the batch of a running epoch in `text`);
    /// two numbers, `epochs_done` and `epochs_total`, in CSV and JSON.
    Progress {
        /// As shown: `3/10` or `3/10 (+40/250)`.
        text: String,
        /// Finished epochs.
        done: i64,
        /// Epochs of the run.
        total: i64,
    },
    /// A mean and standard deviation over a group.
    Stat {
        /// Mean.
        mean: f64,
        /// Sample standard deviation (0 for one value).
        std: f64,
        /// Values it is over.
        n: usize,
        /// Decimals.
        digits: usize,
    },
    /// No value.
    Missing,
}

impl Cell {
    fn number(&self) -> Option<f64> {
        match *self {
            Cell::Num(v, _) | Cell::Secs(v) => Some(v),
            Cell::Stat { mean, .. } => Some(mean),
            Cell::Progress { done, .. } => Some(done as f64),
            Cell::Text(ref s) => s.parse().ok(),
            Cell::Param(ref s) => s.parse().ok(),
            Cell::Missing => None,
        }
    }
    /// Appends the cell as shown in a table.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Cell::Text(s) => out.push_str(s),
            Cell::Param(s) => out.push_str(&super::format::sampled(s)),
            Cell::Num(v, d) => push_fixed(out, *v, *d),
            Cell::Secs(s) => out.push_str(&duration(*s)),
            Cell::Progress { text, .. } => out.push_str(text),
            Cell::Stat { mean, std, n, digits: d } if *n > 1 => {
                let _ = write!(out, "{mean:.d$} ± {std:.d$}");
            }
            Cell::Stat { mean, digits: d, .. } => push_fixed(out, *mean, *d),
            Cell::Missing => out.push('-'),
        }
    }

    /// The cell as shown in a table (CSV and JSON keep parameters whole).
    pub fn text(&self) -> String {
        let mut s = String::new();
        self.write_text(&mut s);
        s
    }
    /// The cell as JSON (numbers stay numbers).
    pub fn json(&self) -> serde_json::Value {
        match self {
            Cell::Text(s) => serde_json::json!(s),
            Cell::Param(s) => match serde_json::from_str::<serde_json::Value>(s) {
                Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_) | serde_json::Value::Array(_))) => v,
                _ => serde_json::json!(&**s),
            },
            Cell::Num(v, d) => rounded(*v, *d),
            // Durations are shown to the second; JSON keeps a tenth.
            Cell::Secs(v) => rounded(*v, 1),
            Cell::Progress { done, total, .. } => serde_json::json!({ "done": done, "total": total }),
            Cell::Stat { mean, std, n, digits } => {
                serde_json::json!({ "mean": rounded(*mean, digits + 1), "std": rounded(*std, digits + 1), "n": n })
            }
            Cell::Missing => serde_json::Value::Null,
        }
    }
}

/// `v` to `digits` decimals as a JSON number (an integer for 0): the digits a
/// table shows, without the binary noise of the float (`0.3097`, not
/// `0.3096546897888184`).
pub fn rounded(v: f64, digits: usize) -> serde_json::Value {
    if !v.is_finite() {
        return serde_json::Value::Null;
    }
    if digits == 0 && v.abs() < 9e15 {
        return serde_json::json!(v.round() as i64);
    }
    // round(v * 10^d) and 10^d are exact integers, and the division is
    // correctly rounded: the same double as parsing the decimal text, without
    // formatting and parsing every number of a 10,000-row table.
    let scale = 10f64.powi(i32::try_from(digits.min(15)).unwrap_or(15));
    let r = (v * scale).round() / scale;
    if r.is_finite() {
        serde_json::json!(r)
    } else {
        serde_json::json!(v)
    }
}

/// The name of a result column in CSV and JSON, where names are read by
/// programs: `time` is `seconds`, `img/s` is `img_per_s` (`epochs` is two
/// columns, `epochs_done` and `epochs_total`).
pub fn machine_name(header: &str) -> &str {
    match header {
        "time" => "seconds",
        "img/s" => "img_per_s",
        other => other,
    }
}

/// Rows under headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// One row per run (or group).
    pub rows: Vec<Vec<Cell>>,
}

/// What `sweep results` shows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// `NAME=VALUE`, `NAME!=VALUE`, `NAME>VALUE`, `<`, `>=`, `<=`, `~` (contains); all must hold.
    pub wheres: Vec<String>,
    /// Only runs in one of these states (none: all).
    pub statuses: Vec<Status>,
    /// Sort keys, `-` in front for descending; runs without a value go last.
    pub sort: Vec<String>,
    /// Group by these names: one row per group with count, mean and std.
    pub group_by: Vec<String>,
    /// Show these columns, in this order (none: the default set).
    pub columns: Vec<String>,
    /// List every parameter, not only those that differ.
    pub all_params: bool,
    /// Only the first N rows (runs, or groups), after sorting: `--sort -test_acc --limit 1` is the best run.
    pub limit: Option<usize>,
    /// Columns shown after the default ones, where `columns` is empty (a
    /// report's `memory_mib`).
    pub also: Vec<String>,
}

/// A name or condition that does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// The result columns every run has, in their default order.
const RESULT_COLUMNS: [&str; 11] =
    ["status", "epochs", "rung", "best_epoch", "best", "train_acc", "test_acc", "test_loss", "time", "img/s", "sweep"];

/// Result columns shown only when named: the device a run trained on, and
/// its peak memory in MiB (`train::device::PeakMemory`).
const MORE_COLUMNS: [&str; 2] = ["device", "memory_mib"];

fn short(path: &str) -> String {
    let mut parts = path.rsplit('.');
    let last = parts.next().unwrap_or(path);
    match (last, parts.next()) {
        ("name", Some(parent)) => parent.to_owned(),
        _ => last.to_owned(),
    }
}

/// What a name refers to.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Result(&'static str),
    Param(String),
}

struct Resolver<'a> {
    c: &'a Comparison,
    params: Vec<String>,
}

impl<'a> Resolver<'a> {
    fn new(c: &'a Comparison) -> Self {
        let maps: Vec<&super::Params> = c.runs.iter().map(|r| &r.params).collect();
        let params = super::params::all_keys(&maps).into_iter().map(str::to_owned).collect();
        Resolver { c, params }
    }

    fn metric(&self) -> String {
        self.c.runs.first().map_or_else(|| "metric".to_owned(), |r| r.row.metric.clone())
    }

    fn resolve(&self, name: &str) -> Result<Field, QueryError> {
        let metric = self.metric();
        let result = match name {
            "id" => Some("id"),
            "name" => Some("name"),
            "sweep" => Some("sweep"),
            "status" => Some("status"),
            "epochs" | "epochs_done" => Some("epochs"),
            "best_epoch" => Some("best_epoch"),
            "rung" => Some("rung"),
            "best" | "best_metric" => Some("best"),
            "train_acc" | "final_train_acc" => Some("train_acc"),
            "test_acc" | "final_test_acc" => Some("test_acc"),
            "test_loss" | "final_test_loss" => Some("test_loss"),
            "time" | "train_seconds" | "seconds" => Some("time"),
            "img/s" | "img_per_s" | "images_per_sec" => Some("img/s"),
            "device" => Some("device"),
            "memory_mib" | "memory" | "peak_memory" => Some("memory_mib"),
            n if n == format!("best_{metric}") => Some("best"),
            _ => None,
        };
        if let Some(r) = result {
            return Ok(Field::Result(r));
        }
        if self.params.iter().any(|p| p == name) {
            return Ok(Field::Param(name.to_owned()));
        }
        let matches: Vec<&String> = self.params.iter().filter(|p| short(p) == name).collect();
        match matches.as_slice() {
            [one] => Ok(Field::Param((*one).clone())),
            [] => {
                let mut known: Vec<String> =
                    RESULT_COLUMNS.iter().chain(&MORE_COLUMNS).map(std::string::ToString::to_string).collect();
                known.extend(["id".into(), "name".into()]);
                let mut shorts: Vec<String> = self.params.iter().map(|p| short(p)).collect();
                shorts.sort();
                shorts.dedup();
                known.extend(shorts);
                Err(QueryError(format!("unknown column or parameter `{name}`; known: {}", known.join(", "))))
            }
            many => Err(QueryError(format!(
                "`{name}` is ambiguous: {}; use the full path",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn header(&self, f: &Field) -> String {
        match f {
            Field::Result("best") => format!("best_{}", self.metric()),
            Field::Result(r) => (*r).to_owned(),
            Field::Param(p) => p.clone(),
        }
    }

    #[allow(clippy::unused_self)] // a method of the resolver, as the other lookups are
    fn cell(&self, r: &RunReport, f: &Field) -> Cell {
        let row = &r.row;
        let num = |v: Option<f64>, d: usize| v.map_or(Cell::Missing, |v| Cell::Num(v, d));
        match f {
            Field::Result("id") => Cell::Text(row.key.get(..10).unwrap_or(&row.key).to_owned()),
            Field::Result("name") => Cell::Text(row.name.clone()),
            Field::Result("sweep") => Cell::Text(row.sweep.clone()),
            Field::Result("status") => Cell::Text(row.status.to_string()),
            Field::Result("epochs") => {
                Cell::Progress { text: progress(r), done: row.epochs_done, total: row.epochs_total }
            }
            Field::Result("best_epoch") => row.best_epoch.map_or(Cell::Missing, |e| Cell::Num(e as f64, 0)),
            Field::Result("rung") => row.rung.map_or(Cell::Missing, |e| Cell::Num(e as f64, 0)),
            Field::Result("best") => num(row.best_metric, metric_digits(&row.metric)),
            Field::Result("train_acc") => num(row.final_train_acc, 2),
            Field::Result("test_acc") => num(row.final_test_acc, 2),
            Field::Result("test_loss") => num(row.final_test_loss, 4),
            Field::Result("time") => Cell::Secs(row.train_seconds),
            Field::Result("img/s") => num(row.images_per_sec, 0),
            Field::Result("device") => row.device.clone().map_or(Cell::Missing, Cell::Text),
            Field::Result("memory_mib") => num(row.peak_memory_bytes.map(|b| b as f64 / f64::from(1u32 << 20)), 0),
            Field::Result(other) => unreachable!("result column {other}"),
            Field::Param(p) => r.params.get_shared(p).map_or(Cell::Missing, |v| Cell::Param(v.clone())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Contains,
}

fn parse_where(w: &str) -> Result<(String, Op, String), QueryError> {
    // The operator is the first one in the text, so values may contain `=`.
    let bad = || QueryError(format!("--where `{w}`: expected NAME=VALUE (or !=, <, >, <=, >=, ~)"));
    let i = w.find(['!', '=', '<', '>', '~']).ok_or_else(bad)?;
    let (key, rest) = w.split_at(i);
    let (op, len) = match (rest.as_bytes()[0], rest.as_bytes().get(1)) {
        (b'!', Some(b'=')) => (Op::Ne, 2),
        (b'>', Some(b'=')) => (Op::Ge, 2),
        (b'<', Some(b'=')) => (Op::Le, 2),
        (b'=', _) => (Op::Eq, 1),
        (b'>', _) => (Op::Gt, 1),
        (b'<', _) => (Op::Lt, 1),
        (b'~', _) => (Op::Contains, 1),
        _ => return Err(bad()),
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(bad());
    }
    Ok((key.to_owned(), op, rest[len..].trim().to_owned()))
}

/// A condition that could only ever be false is a mistake, not a filter: a
/// number compared with text, or a status that does not exist.
fn check_value(
    w: &str,
    key: &str,
    field: &Field,
    op: Op,
    value: &str,
    cells: impl Iterator<Item = Cell>,
) -> Result<(), QueryError> {
    if matches!(field, Field::Result("status")) && matches!(op, Op::Eq | Op::Ne) && value.parse::<Status>().is_err() {
        let known: Vec<String> = Status::ALL.iter().map(ToString::to_string).collect();
        return Err(QueryError(format!("--where `{w}`: no status `{value}` (statuses: {})", known.join(", "))));
    }
    if op == Op::Contains || value.parse::<f64>().is_ok() {
        return Ok(());
    }
    let mut present = cells.filter(|c| !matches!(c, Cell::Missing)).peekable();
    let numeric = present.peek().is_some() && present.all(|c| c.number().is_some());
    if numeric {
        return Err(QueryError(format!(
            "--where `{w}`: `{key}` is a number in every run shown and `{value}` is not one"
        )));
    }
    Ok(())
}

fn holds(cell: &Cell, op: Op, value: &str) -> bool {
    let text = match cell {
        Cell::Text(s) => s.clone(),
        Cell::Param(s) => s.to_string(),
        Cell::Missing => return op == Op::Ne,
        other => other.text(),
    };
    let ord = match (cell.number(), value.parse::<f64>()) {
        (Some(a), Ok(b)) => a.partial_cmp(&b),
        _ => Some(text.as_str().cmp(value)),
    };
    match op {
        Op::Eq => ord == Some(std::cmp::Ordering::Equal),
        Op::Ne => ord != Some(std::cmp::Ordering::Equal),
        Op::Lt => ord == Some(std::cmp::Ordering::Less),
        Op::Gt => ord == Some(std::cmp::Ordering::Greater),
        Op::Le => matches!(ord, Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)),
        Op::Ge => matches!(ord, Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)),
        Op::Contains => text.contains(value),
    }
}

fn compare(a: &Cell, b: &Cell) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match (a, b) {
        (Cell::Missing, Cell::Missing) => Equal,
        (Cell::Missing, _) => Greater,
        (_, Cell::Missing) => Less,
        _ => match (a.number(), b.number()) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => a.text().cmp(&b.text()),
        },
    }
}

/// Keeps the runs of `c` that pass the `--where` and `--status` conditions of `q`.
pub fn filter(c: &mut Comparison, q: &Query) -> Result<(), QueryError> {
    if q.wheres.is_empty() && q.statuses.is_empty() {
        return Ok(());
    }
    let keep: Vec<bool> = {
        let r = Resolver::new(c);
        let conds: Vec<(Field, Op, String)> = q
            .wheres
            .iter()
            .map(|w| {
                let (k, op, v) = parse_where(w)?;
                let field = r.resolve(&k)?;
                check_value(w, &k, &field, op, &v, c.runs.iter().map(|run| r.cell(run, &field)))?;
                Ok((field, op, v))
            })
            .collect::<Result<_, QueryError>>()?;
        c.runs
            .iter()
            .map(|run| {
                (q.statuses.is_empty() || q.statuses.contains(&run.row.status))
                    && conds.iter().all(|(f, op, v)| holds(&r.cell(run, f), *op, v))
            })
            .collect()
    };
    let mut it = keep.into_iter();
    c.runs.retain(|_| it.next().unwrap_or(false));
    c.refresh();
    Ok(())
}

/// The results table of `c` (already filtered) as `q` asks.
pub fn table(c: &Comparison, q: &Query) -> Result<Table, QueryError> {
    let r = Resolver::new(c);
    let mut runs: Vec<&RunReport> = c.runs.iter().collect();
    if !q.sort.is_empty() {
        let keys: Vec<(Field, bool)> = q
            .sort
            .iter()
            .map(|s| {
                let (desc, name) = s.strip_prefix('-').map_or((false, s.as_str()), |n| (true, n));
                Ok((r.resolve(name)?, desc))
            })
            .collect::<Result<_, QueryError>>()?;
        runs.sort_by(|a, b| {
            for (f, desc) in &keys {
                let (x, y) = (r.cell(a, f), r.cell(b, f));
                let o = match (&x, &y, desc) {
                    // Missing values last in either direction.
                    (Cell::Missing, _, _) | (_, Cell::Missing, _) => compare(&x, &y),
                    (_, _, true) => compare(&y, &x),
                    _ => compare(&x, &y),
                };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    if !q.group_by.is_empty() {
        let mut t = group(&r, &runs, q)?;
        if let Some(n) = q.limit {
            t.rows.truncate(n);
        }
        return Ok(t);
    }
    if let Some(n) = q.limit {
        runs.truncate(n);
    }
    let fields: Vec<Field> = if q.columns.is_empty() {
        let mut f = vec![Field::Result("id"), Field::Result("name")];
        let params = if q.all_params { r.params.clone() } else { c.differing.clone() };
        f.extend(params.into_iter().map(Field::Param));
        // `sweep` when there are several; `rung` when ASHA ran (the column a sweep with early_terminate needs).
        let asha = c.runs.iter().any(|r| r.row.rung.is_some());
        f.extend(
            RESULT_COLUMNS
                .iter()
                .filter(|&&n| (n != "sweep" || c.sweeps.len() > 1) && (n != "rung" || asha))
                .map(|n| Field::Result(n)),
        );
        for n in &q.also {
            f.push(r.resolve(n)?);
        }
        f
    } else {
        q.columns.iter().map(|n| r.resolve(n)).collect::<Result<_, _>>()?
    };
    let headers = headers_of(&r, &fields);
    let rows = runs.iter().map(|run| fields.iter().map(|f| r.cell(run, f)).collect()).collect();
    Ok(Table { headers, rows })
}

/// Column headers: result columns by name, parameters by their shortest unambiguous name.
fn headers_of(r: &Resolver, fields: &[Field]) -> Vec<String> {
    let param_paths: Vec<String> =
        fields.iter().filter_map(|f| if let Field::Param(p) = f { Some(p.clone()) } else { None }).collect();
    let mut next_short = column_names(&param_paths).into_iter();
    fields
        .iter()
        .map(|f| match f {
            Field::Param(_) => next_short.next().unwrap_or_default(),
            other @ Field::Result(_) => r.header(other),
        })
        .collect()
}

fn group(r: &Resolver, runs: &[&RunReport], q: &Query) -> Result<Table, QueryError> {
    let keys: Vec<Field> = q.group_by.iter().map(|n| r.resolve(n)).collect::<Result<_, _>>()?;
    let stats: Vec<Field> = if q.columns.is_empty() {
        ["best", "train_acc", "test_acc", "test_loss", "time", "img/s"].map(Field::Result).to_vec()
    } else {
        q.columns.iter().map(|n| r.resolve(n)).collect::<Result<_, _>>()?
    };
    // Groups in order of first appearance (after sorting).
    let mut order: Vec<Vec<String>> = Vec::new();
    let mut members: BTreeMap<Vec<String>, Vec<&RunReport>> = BTreeMap::new();
    for run in runs {
        let k: Vec<String> = keys.iter().map(|f| r.cell(run, f).text()).collect();
        if !members.contains_key(&k) {
            order.push(k.clone());
        }
        members.entry(k).or_default().push(run);
    }
    let mut headers = headers_of(r, &keys);
    headers.push("n".into());
    headers.extend(headers_of(r, &stats));
    let rows = order
        .into_iter()
        .map(|k| {
            let group = &members[&k];
            // The key cells as the first member has them (parameters keep their JSON type).
            let mut row: Vec<Cell> = keys.iter().map(|f| r.cell(group[0], f)).collect();
            row.push(Cell::Num(group.len() as f64, 0));
            for f in &stats {
                let cells: Vec<Cell> = group.iter().map(|run| r.cell(run, f)).collect();
                let values: Vec<f64> = cells.iter().filter_map(Cell::number).collect();
                let digits = cells.iter().find_map(|c| if let Cell::Num(_, d) = c { Some(*d) } else { None });
                let is_secs = cells.iter().any(|c| matches!(c, Cell::Secs(_)));
                row.push(if values.is_empty() {
                    Cell::Missing
                } else if is_secs {
                    Cell::Secs(values.iter().sum::<f64>() / values.len() as f64)
                } else if digits.is_none()
                    && cells.iter().all(|c| matches!(c, Cell::Text(_) | Cell::Param(_) | Cell::Missing))
                {
                    // A text parameter: its values, not statistics.
                    let mut texts: Vec<String> = cells.iter().map(Cell::text).collect();
                    texts.sort();
                    texts.dedup();
                    Cell::Text(texts.join(" "))
                } else {
                    let n = values.len();
                    let mean = values.iter().sum::<f64>() / n as f64;
                    let var = if n > 1 {
                        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
                    } else {
                        0.0
                    };
                    Cell::Stat { mean, std: var.sqrt(), n, digits: digits.unwrap_or(4) }
                });
            }
            row
        })
        .collect();
    Ok(Table { headers, rows })
}
