//! `[[search]]` tables: sampled trials over distributions.
//!
//! ```toml
//! [[search]]
//! method = "random"            # or "tpe"
//! count = 12
//! seed = 1                     # default: the file's seed
//! "optimizer.lr" = { log_uniform = [1e-4, 1e-1] }
//! batch_size = { choice = [32, 64, 128] }
//! epochs = 9                   # a plain value: every trial of this search
//! ```
//!
//! Random search expands to all `count` trials at once, each drawn from its own
//! stream of the seed (so the same file gives the same runs). TPE expands its
//! start-up trials (random, `startup`, Optuna's 10 by default) and the worker
//! proposes the rest online from finished trials ([`crate::search::tpe`]).

use super::paths::{get_path, label, same_value, set_path, short};
use super::{push_run, reserved_str, Ctx, PlannedRun, Spanned, SpannedTable, Table, Value};
use crate::rng::{stream, Rng};
use crate::search::space::{is_distribution, Distribution};

/// How a search samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every trial drawn at random, expanded at submission.
    Random,
    /// Start-up trials at random, then proposals from finished trials.
    Tpe,
}

impl Method {
    /// `random` or `tpe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Random => "random",
            Method::Tpe => "tpe",
        }
    }
}

/// A validated `[[search]]` block.
#[derive(Debug, Clone)]
pub struct Search {
    /// 0-based index among the file's searches.
    pub index: usize,
    /// Its name (`name = …`, else `search1`, …): the runs' name prefix.
    pub name: String,
    /// Random or TPE.
    pub method: Method,
    /// Trials in all.
    pub count: u64,
    /// Trials expanded at submission (all of a random search; TPE's start-up).
    pub startup: u64,
    /// Seed of the draws.
    pub seed: u64,
    /// The sampled parameters, by dotted path, in file order.
    pub params: Vec<(String, Distribution)>,
    /// 1-based line of the block.
    pub line: usize,
    /// `[defaults]` with the block's plain values: what every trial starts from.
    base: Table,
    /// The block's `exclude` tables, as (path, value) leaves.
    excludes: Vec<Vec<(String, Value)>>,
    /// Byte offset of the block's header (its runs' place in the file).
    at: usize,
}

/// A trial's place in its search, carried by its run to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRef {
    /// The search's index.
    pub search: usize,
    /// 0-based trial number.
    pub number: u64,
    /// Internal values of the parameters (see [`Distribution::sample`]).
    pub params: Vec<f64>,
}

/// The most draws for one trial when `exclude` refuses them.
const MAX_DRAWS: u64 = 1000;

/// What a block holds besides its reserved keys.
struct Parsed {
    fixed: Vec<(String, Value)>,
    params: Vec<(String, Distribution)>,
    excludes: Vec<Vec<(String, Value)>>,
}

fn collect(ctx: &mut Ctx, offset: usize, path: &str, v: &Value, out: &mut Parsed) {
    if is_distribution(v) {
        match Distribution::parse(v) {
            Ok(d) => {
                // The values it can take must suit the key (a batch size is an integer).
                let probes: Vec<Value> = match &d {
                    Distribution::Uniform { low, high } | Distribution::LogUniform { low, high } => {
                        vec![Value::Float(*low), Value::Float(*high)]
                    }
                    Distribution::Int { low, high, .. } => vec![Value::Integer(*low), Value::Integer(*high)],
                    Distribution::Choice(items) => items.clone(),
                };
                let before = ctx.errors.len();
                for p in &probes {
                    ctx.check_assignment(offset, path, p);
                    if ctx.errors.len() > before {
                        break; // one message per key
                    }
                }
                out.params.push((path.to_owned(), d));
            }
            Err(msg) => ctx.errors.push(ctx.src.error(offset, Some(path), msg)),
        }
        return;
    }
    if let Value::Table(t) = v {
        if t.values().any(|x| is_distribution(x) || x.is_table()) {
            for (k, x) in t {
                collect(ctx, offset, &format!("{path}.{k}"), x, out);
            }
            return;
        }
    }
    ctx.check_assignment(offset, path, v);
    out.fixed.push((path.to_owned(), v.clone()));
}

fn int_field(ctx: &mut Ctx, table: &SpannedTable, key: &str, min: i64) -> Option<u64> {
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == key)?;
    match v.get_ref().as_integer() {
        Some(n) if n >= min => Some(n as u64),
        _ => {
            let msg = format!("`{key}` must be an integer of at least {min}, found {}", v.get_ref());
            ctx.errors.push(ctx.src.error(k.span().start, Some(key), msg));
            None
        }
    }
}

/// Parses one `[[search]]` block and pushes its expanded trials.
pub(super) fn expand_search(
    ctx: &mut Ctx,
    index: usize,
    block: &Spanned<SpannedTable>,
    runs: &mut Vec<PlannedRun>,
) -> Option<Search> {
    let errors_before = ctx.errors.len();
    let header = block.span().start;
    let table = block.get_ref();
    let name = reserved_str(ctx, table, "name").unwrap_or_else(|| format!("search{}", index + 1));
    let method = match table.iter().find(|(k, _)| k.get_ref() == "method") {
        None => {
            ctx.errors.push(ctx.src.error(header, Some("method"), "a search needs `method = \"random\"` or `\"tpe\"`"));
            None
        }
        Some((k, v)) => match v.get_ref().as_str() {
            Some("random") => Some(Method::Random),
            Some("tpe") => Some(Method::Tpe),
            _ => {
                let msg = format!("unknown search method {}; expected \"random\" or \"tpe\"", v.get_ref());
                ctx.errors.push(ctx.src.error(k.span().start, Some("method"), msg));
                None
            }
        },
    };
    let count = int_field(ctx, table, "count", 1);
    if count.is_none() && !table.iter().any(|(k, _)| k.get_ref() == "count") {
        ctx.errors.push(ctx.src.error(header, Some("count"), "a search needs `count`: how many trials"));
    }
    let seed = int_field(ctx, table, "seed", 0).unwrap_or(ctx.seed);
    let startup = int_field(ctx, table, "startup", 0);
    if let (Some(Method::Random), Some((k, _))) = (method, table.iter().find(|(k, _)| k.get_ref() == "startup")) {
        let msg = "`startup` is for TPE (its random trials before proposals); a random search is all random";
        ctx.errors.push(ctx.src.error(k.span().start, Some("startup"), msg));
    }
    if method == Some(Method::Tpe) && !ctx.overrides.is_empty() {
        let msg = "--set cannot change a TPE search: its later trials are proposed from the file as submitted; \
                   edit the file instead";
        ctx.errors.push(ctx.src.error(header, None, msg));
    }

    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut parsed = Parsed { fixed: Vec::new(), params: Vec::new(), excludes: Vec::new() };
    let mut exclude_at = header;
    for (k, v) in entries {
        let key = k.get_ref().as_str();
        let offset = k.span().start;
        match key {
            "name" | "method" | "count" | "seed" | "startup" => {}
            "repeats" | "zip" => {
                let msg = format!("`{key}` is for grids; a search draws `count` trials (each with the file's seed)");
                ctx.errors.push(ctx.src.error(offset, Some(key), msg));
            }
            "exclude" => {
                exclude_at = offset;
                let items = v.get_ref().as_array().filter(|a| a.iter().all(Value::is_table));
                let Some(items) = items else {
                    let msg = "`exclude` must be a list of tables, e.g. [{ batch_size = 32 }]";
                    ctx.errors.push(ctx.src.error(offset, Some("exclude"), msg));
                    continue;
                };
                for item in items {
                    let mut leaves = Vec::new();
                    super::paths::flatten("", item, &mut leaves);
                    parsed.excludes.push(leaves);
                }
            }
            _ => collect(ctx, offset, key, v.get_ref(), &mut parsed),
        }
    }
    if parsed.params.is_empty() && ctx.errors.len() == errors_before {
        let msg = "a search samples at least one key, e.g. \"optimizer.lr\" = { log_uniform = [1e-4, 1e-1] }";
        ctx.errors.push(ctx.src.error(header, None, msg));
    }
    for ex in &parsed.excludes {
        for (path, _) in ex {
            let known = parsed.params.iter().map(|(p, _)| p).chain(parsed.fixed.iter().map(|(p, _)| p));
            if !known.clone().any(|p| p == path || path.starts_with(&format!("{p}."))) {
                let names: Vec<&String> = parsed.params.iter().map(|(p, _)| p).collect();
                let msg = format!("`{path}` is not sampled by this search (it samples: {names:?})");
                ctx.errors.push(ctx.src.error(exclude_at, Some("exclude"), msg));
            }
        }
    }
    let (Some(method), Some(count)) = (method, count) else { return None };
    if ctx.errors.len() > errors_before {
        return None;
    }
    let startup = match method {
        Method::Random => count,
        Method::Tpe => startup.unwrap_or(10).min(count),
    };
    // TPE's later trials are runs too: the whole count is bounded.
    if !ctx.plan(header, count) {
        return None;
    }
    let mut base = ctx.defaults.clone();
    for (path, v) in &parsed.fixed {
        set_path(&mut base, path, v.clone());
    }
    let (line, _) = ctx.src.line_col(header);
    let (params, excludes, at) = (parsed.params, parsed.excludes, header);
    let search = Search { index, name, method, count, startup, seed, params, line, base, excludes, at };
    for number in 0..startup {
        let Some((params, merged)) = draw(&search, number) else {
            let msg = "`exclude` refuses 1000 draws in a row for one trial: it removes (nearly) every combination";
            ctx.errors.push(ctx.src.error(exclude_at, Some("exclude"), msg));
            return None;
        };
        let before = runs.len();
        push_run(ctx, trial_name(&search, number, &merged), merged, 0, header, None, runs);
        // every trial is recorded (the `trials` table): TPE proposes from them, reports plot them
        for r in &mut runs[before..] {
            r.trial = Some(TrialRef { search: index, number, params: params.clone() });
        }
    }
    Some(search)
}

/// Trial `number`'s draw: internal values and the merged table; draws again
/// (from the same stream) while `exclude` refuses it.
fn draw(search: &Search, number: u64) -> Option<(Vec<f64>, Table)> {
    let mut rng = Rng::derive(&[stream::SEARCH, search.seed, search.index as u64, number]);
    for _ in 0..MAX_DRAWS {
        let params: Vec<f64> = search.params.iter().map(|(_, d)| d.sample(&mut rng)).collect();
        if let Some(merged) = search.assign(&params) {
            return Some((params, merged));
        }
    }
    None
}

impl Search {
    /// The merged table of a trial with these internal values; None when
    /// `exclude` refuses it.
    fn assign(&self, params: &[f64]) -> Option<Table> {
        let mut merged = self.base.clone();
        for ((path, d), x) in self.params.iter().zip(params) {
            set_path(&mut merged, path, d.external(*x));
        }
        let excluded = self
            .excludes
            .iter()
            .any(|ex| ex.iter().all(|(p, v)| get_path(&merged, p).is_some_and(|m| same_value(m, v))));
        (!excluded).then_some(merged)
    }
}

/// `lr-search-03:lr=3.16e-3,batch_size=64` (trials count from 1 in names).
fn trial_name(search: &Search, number: u64, merged: &Table) -> String {
    let parts: Vec<String> = search
        .params
        .iter()
        .filter_map(|(p, _)| get_path(merged, p).map(|v| format!("{}={}", label(p), compact(v))))
        .collect();
    let width = search.count.to_string().len().max(2);
    format!("{}-{:0width$}:{}", search.name, number + 1, parts.join(","))
}

/// Sampled floats with three significant digits (the key keeps them whole).
fn compact(v: &Value) -> String {
    match v {
        Value::Float(f) if *f != 0.0 && (f.abs() >= 1e4 || f.abs() < 1e-2) => format!("{f:.2e}"),
        Value::Float(f) => format!("{}", (f * 1000.0).round() / 1000.0),
        other => short(other),
    }
}

/// Builds the run of a proposed trial (TPE, online): the same merge and
/// validation as the start-up trials'; None when `exclude` refuses it or it
/// does not validate.
pub(super) fn proposed_run(ctx: &mut Ctx, search: &Search, number: u64, params: &[f64]) -> Option<PlannedRun> {
    let merged = search.assign(params)?;
    let mut out = Vec::new();
    push_run(ctx, trial_name(search, number, &merged), merged, 0, search.at, None, &mut out);
    let mut run = out.pop()?;
    run.trial = Some(TrialRef { search: search.index, number, params: params.to_vec() });
    Some(run)
}
