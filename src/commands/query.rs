//! `status`, `results` and `report`: read-only views of the database.

use crate::cli::{EvalFormat, ReportFormat, StatusFormat};
use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;
use sweep::report::query::{self as rq, Query};
use sweep::report::{self, format::duration, text_table, Comparison, ResultsFormat};
use sweep::store::{Status, Store};
use sweep::text::printable;

pub async fn open(home: &super::Home) -> anyhow::Result<Store> {
    if !home.has_store() {
        anyhow::bail!("no sweep database in {} (submit a sweep first, or pass --home or --store)", home.display());
    }
    home.open().await
}

pub async fn comparison(store: &Store, sweeps: &[String], q: &Query, with_epochs: bool) -> anyhow::Result<Comparison> {
    for name in sweeps {
        if !store.sweep_exists(name).await? {
            let known: Vec<String> = store.sweeps().await?.into_iter().map(|s| s.name).collect();
            anyhow::bail!("no sweep named `{name}` (known: {})", known.join(", "));
        }
    }
    let mut cmp = Comparison::load(store, sweeps, with_epochs).await?;
    rq::filter(&mut cmp, q)?;
    Ok(cmp)
}

/// `sweep status [--sweep NAME]... [--watch]`.
pub async fn status(
    home: &super::Home,
    sweeps: &[String],
    watch: bool,
    format: StatusFormat,
) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    for name in sweeps {
        if !store.sweep_exists(name).await? {
            let known: Vec<String> = store.sweeps().await?.into_iter().map(|s| s.name).collect();
            anyhow::bail!("no sweep named `{}` (known: {})", printable(name), printable(&known.join(", ")));
        }
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let mut rows = Vec::new();
        if sweeps.is_empty() {
            rows = store.runs(None).await?;
        } else {
            let mut seen = std::collections::HashSet::new();
            for name in sweeps {
                rows.extend(store.runs(Some(name)).await?.into_iter().filter(|r| seen.insert(r.id)));
            }
        }
        let mut frame = status_frame(&rows, format, sweep::env::STALE_SECS.seconds(60).as_secs_f64())?;
        if format == StatusFormat::Table {
            frame.push_str(&search_lines(&store, sweeps).await?);
        }
        if watch && tty {
            // Home and clear to the end, then the whole frame in one write: no flicker.
            print!("\x1b[H\x1b[J{frame}");
        } else {
            print!("{frame}");
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        let busy = rows.iter().any(|r| matches!(r.status, Status::Queued | Status::Running));
        if !watch || !busy {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A TPE search of a stored sweep and its trials so far.
pub(super) struct TpeSearch {
    /// The sweep's name.
    pub sweep: String,
    /// The search's name.
    pub name: String,
    /// Trials made so far (queued, running or finished).
    pub have: u64,
    /// Trials the search asks for.
    pub count: u64,
}

/// The TPE searches of the stored sweeps (of `sweeps` only, when given).
pub(super) async fn tpe_searches(store: &Store, sweeps: &[String]) -> anyhow::Result<Vec<TpeSearch>> {
    let mut out = Vec::new();
    for s in store.search_sweeps().await? {
        if (!sweeps.is_empty() && !sweeps.contains(&s.name)) || !sweep::spec::has_tpe_search(&s.source_toml) {
            continue;
        }
        let Ok(spec) = sweep::spec::parse(Path::new(&s.source_path), &s.source_toml) else { continue };
        let counts = store.trial_counts(s.id).await?;
        for search in spec.searches.iter().filter(|x| x.method == sweep::spec::SearchMethod::Tpe) {
            let have = counts.iter().find(|(i, _)| *i == search.index as i64).map_or(0, |c| c.1) as u64;
            out.push(TpeSearch { sweep: s.name.clone(), name: search.name.clone(), have, count: search.count });
        }
    }
    Ok(out)
}

/// A line per TPE search of the sweeps shown: its trials so far and how many
/// are still to be proposed.
async fn search_lines(store: &Store, sweeps: &[String]) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    for t in tpe_searches(store, sweeps).await? {
        let left = t.count.saturating_sub(t.have);
        let more = if left == 0 {
            "all proposed".to_owned()
        } else {
            format!("{left} more to be proposed by TPE as trials finish (a worker proposes one when nothing is queued)")
        };
        let _ = writeln!(
            out,
            "search `{}` of `{}` (tpe): {} of {} trials; {more}",
            printable(&t.name),
            printable(&t.sweep),
            t.have,
            t.count
        );
    }
    Ok(out)
}

/// Seconds a running run still needs, from its finished epochs' pace.
fn eta(r: &sweep::store::RunRow) -> Option<f64> {
    if r.status != Status::Running || r.epochs_done == 0 {
        return None;
    }
    let per_epoch = r.train_seconds / r.epochs_done as f64;
    let into = match r.steps_per_epoch {
        Some(n) if n > 0 => r.step as f64 / n as f64,
        _ => 0.0,
    };
    Some((r.epochs_total as f64 - r.epochs_done as f64 - into).max(0.0) * per_epoch)
}

/// A running run whose worker has sent no heartbeat for longer than
/// `stale` seconds (`SWEEP_STALE_SECS`): its worker may be gone, and the next
/// worker to look for work takes the run over.
fn silent(r: &sweep::store::RunRow, stale: f64) -> bool {
    r.status == Status::Running && r.heartbeat_age.is_some_and(|age| age > stale)
}

fn status_frame(rows: &[sweep::store::RunRow], format: StatusFormat, stale: f64) -> anyhow::Result<String> {
    use std::fmt::Write;
    let counts: Vec<(Status, usize)> =
        Status::ALL.iter().map(|s| (*s, rows.iter().filter(|r| r.status == *s).count())).collect();
    let silent_runs: Vec<&sweep::store::RunRow> = rows.iter().filter(|r| silent(r, stale)).collect();
    let mut out = String::new();
    match format {
        StatusFormat::Json => {
            let v = serde_json::json!({
                "counts": counts.iter().map(|(s, n)| (s.to_string(), serde_json::json!(*n))).collect::<serde_json::Map<_, _>>(),
                "runs": rows,
                "stale_after_secs": stale,
                "silent": silent_runs.iter().map(|r| &r.key).collect::<Vec<_>>(),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        StatusFormat::Table => {
            let line: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            writeln!(out, "{}", line.join(", "))?;
            if rows.is_empty() {
                return Ok(out);
            }
            let headers: Vec<String> =
                ["id", "sweep", "name", "status", "epoch", "batch", "attempts", "heartbeat", "eta", "error"]
                    .map(str::to_owned)
                    .to_vec();
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let batch = match r.steps_per_epoch {
                        Some(n) if r.status == Status::Running || r.step > 0 => format!("{}/{n}", r.step),
                        _ => "-".into(),
                    };
                    let beat = match (r.status, r.heartbeat_age) {
                        (Status::Running, Some(age)) if silent(r, stale) => {
                            format!("{} ago, silent", duration(age.max(0.0)))
                        }
                        (Status::Running, Some(age)) => format!("{} ago", duration(age.max(0.0))),
                        _ => "-".into(),
                    };
                    let mut err = r.error.clone().unwrap_or_default();
                    if err.chars().count() > 60 {
                        err = err.chars().take(57).collect::<String>() + "...";
                    }
                    vec![
                        r.key[..10].to_owned(),
                        r.sweep.clone(),
                        r.name.clone(),
                        r.status.to_string(),
                        format!("{}/{}", r.epochs_done, r.epochs_total),
                        batch,
                        r.attempts.to_string(),
                        beat,
                        eta(r).map_or_else(|| "-".into(), duration),
                        err,
                    ]
                })
                .collect();
            out.push_str(&text_table(&headers, &table));
            if !silent_runs.is_empty() {
                writeln!(
                    out,
                    "{} running run(s) silent: no heartbeat for over {} (SWEEP_STALE_SECS); their worker may be \
                     gone. The next worker to look for work (`sweep worker`) takes them over and resumes them \
                     from their latest checkpoint",
                    silent_runs.len(),
                    duration(stale)
                )?;
            }
        }
    }
    Ok(out)
}

/// `sweep results --importance`: which parameters matter, over the runs the
/// filters kept in `cmp`.
fn importance(cmp: &Comparison, format: ResultsFormat) -> anyhow::Result<ExitCode> {
    use sweep::report::importance;
    let Some(imp) = importance::importances(cmp) else {
        anyhow::bail!(
            "no importance to show: it needs at least 3 runs with a best metric and a parameter that differs \
             between them ({} run(s) shown)",
            cmp.runs.len()
        );
    };
    match format {
        ResultsFormat::Json => println!("{}", serde_json::to_string_pretty(&imp)?),
        ResultsFormat::Csv => {
            let (headers, rows) = importance::table(&imp);
            print!("{}", report::render::csv(&headers, &rows));
        }
        ResultsFormat::Table => {
            let (headers, rows) = importance::table(&imp);
            print!("{}", text_table(&headers, &rows));
            println!("{}", importance::caption(&imp));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sweep results`: the runs as `q` asks, or with `importance` which
/// parameters matter.
pub async fn results(
    home: &super::Home,
    sweeps: &[String],
    q: &Query,
    importance: bool,
    format: ResultsFormat,
) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let cmp = comparison(&store, sweeps, q, false).await?;
    if importance {
        return self::importance(&cmp, format);
    }
    let table = rq::table(&cmp, q)?;
    print!("{}", report::render_table(&table, format));
    // The process ends here: freeing 10,000 runs' maps one by one took a sixth of the time.
    std::mem::forget((cmp, table));
    Ok(ExitCode::SUCCESS)
}

pub async fn report(
    home: &super::Home,
    sweeps: &[String],
    q: &Query,
    format: ReportFormat,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let cmp = comparison(&store, sweeps, q, true).await?;
    let text = match format {
        ReportFormat::Md => {
            // Figures go beside the report as SVG files; on standard output there is nowhere to put them.
            let mut figures = Vec::new();
            if let Some(path) = output {
                let stem = path.file_stem().map_or("report".into(), |s| s.to_string_lossy().into_owned());
                let dir = path.parent().unwrap_or(Path::new("."));
                for f in report::charts::figures(&cmp, true) {
                    let file = format!("{stem}-{}.svg", f.name);
                    std::fs::write(dir.join(&file), &f.svg)
                        .with_context(|| format!("writing {}", dir.join(&file).display()))?;
                    figures.push((file, f.title));
                }
                if !figures.is_empty() {
                    eprintln!("{} figures written beside it as {stem}-*.svg", figures.len());
                }
            } else {
                eprintln!(
                    "no figures on standard output: `-o report.md` writes the report with its SVG figures beside it"
                );
            }
            report::markdown(&cmp, &figures)
        }
        ReportFormat::Csv => report::csv_epochs(&cmp),
        ReportFormat::Json => report::json(&cmp),
        ReportFormat::Html => report::html(&cmp),
    };
    match output {
        None => print!("{text}"),
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing the report to {}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sweep show RUN`: one run in full.
pub async fn show(home: &super::Home, which: &str, format: EvalFormat) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let (run, all) = find_run(&store, which).await?;
    show_run(home, &store, &run, &all, format).await
}

/// The run a user names: its id (or a prefix of at least 4 characters),
/// SWEEP/NAME, or a NAME that is unique; with every (sweep, run) membership.
/// `SWEEP/NAME (id)`: how commands name a run.
pub fn run_label(r: &sweep::store::RunRow) -> String {
    format!("{}/{} ({})", printable(&r.sweep), printable(&r.name), &r.key[..10])
}

pub async fn find_run(store: &Store, which: &str) -> anyhow::Result<(sweep::store::RunRow, Vec<sweep::store::RunRow>)> {
    // Every (sweep, run) membership, oldest sweep first.
    let mut all = Vec::new();
    for s in store.sweeps().await? {
        all.extend(store.runs(Some(&s.name)).await?);
    }
    // Each run once, under the first sweep that lists it.
    let once = |keep: &dyn Fn(&&sweep::store::RunRow) -> bool| {
        let mut seen = std::collections::HashSet::new();
        all.iter().filter(|r| keep(r) && seen.insert(r.id)).collect::<Vec<_>>()
    };
    let by_key = if which.len() >= 4 && which.chars().all(|c| c.is_ascii_hexdigit()) {
        once(&|r| r.key.starts_with(&which.to_ascii_lowercase()))
    } else {
        Vec::new()
    };
    let found: Vec<_> = if !by_key.is_empty() {
        by_key
    } else if let Some((sweep, name)) = which.split_once('/') {
        all.iter().filter(|r| r.sweep == sweep && r.name == name).collect()
    } else {
        once(&|r| r.name == which)
    };
    let run = match found.as_slice() {
        [one] => (*one).clone(),
        [] if which.len() < 4 && !which.is_empty() && which.chars().all(|c| c.is_ascii_hexdigit()) => anyhow::bail!(
            "no run named `{}`, and an id prefix needs at least 4 characters (see `sweep results` for ids)",
            printable(which)
        ),
        [] => anyhow::bail!(
            "no run `{}`: give its id (see `sweep results`), SWEEP/NAME, or a unique name",
            printable(which)
        ),
        many => anyhow::bail!(
            "`{}` names {} runs: {}; give SWEEP/NAME or the id",
            printable(which),
            many.len(),
            many.iter().map(|r| run_label(r)).collect::<Vec<_>>().join(", ")
        ),
    };
    Ok((run, all))
}

async fn show_run(
    home: &super::Home,
    store: &Store,
    run: &sweep::store::RunRow,
    all: &[sweep::store::RunRow],
    format: EvalFormat,
) -> anyhow::Result<ExitCode> {
    let epochs = store.epochs(run.id).await?;
    let checkpoints = store.checkpoints(run.id).await?;
    let member_of: Vec<String> =
        all.iter().filter(|r| r.id == run.id).map(|r| format!("{}/{}", r.sweep, r.name)).collect();
    let config: serde_json::Value = serde_json::from_str(&run.config_json)?;
    // A search's trial: how it was sampled, and from which trials a TPE proposal came.
    let trial = store.trial_of(run.id).await?.map(|(search, number, method, based_on)| {
        let based_on: Option<serde_json::Value> = based_on.and_then(|b| serde_json::from_str(&b).ok());
        serde_json::json!({ "search": search, "trial": number + 1, "method": method, "based_on": based_on })
    });
    if format == EvalFormat::Json {
        let v = serde_json::json!({
            "id": &run.key[..10], "key": run.key, "in": member_of, "status": run.status,
            "epochs_done": run.epochs_done, "epochs_total": run.epochs_total, "attempts": run.attempts,
            "device": run.device, "peak_memory_bytes": run.peak_memory_bytes, "metric": run.metric, "best_epoch": run.best_epoch, "best_metric": run.best_metric,
            "train_seconds": run.train_seconds, "error": run.error, "note": run.note, "reference": run.reference,
            "rung": run.rung, "trial": trial,
            "classes": run.classes, "config": config, "epochs": epochs, "checkpoints": checkpoints,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {} ({})", &run.key[..10], printable(&member_of.join(", ")));
    println!("status:      {} (attempt {})", run.status, run.attempts);
    if let Some(d) = &run.device {
        println!("device:      {}", printable(d));
    }
    if let Some(b) = run.peak_memory_bytes {
        println!("peak memory: {:.1} MiB", b as f64 / (1u64 << 20) as f64);
    }
    println!("epochs:      {}/{}", run.epochs_done, run.epochs_total);
    if let Some(e) = run.best_epoch {
        println!(
            "best:        epoch {e}, {} {}",
            run.metric,
            run.best_metric
                .map_or("-".into(), |m| format!("{m:.d$}", d = if run.metric.ends_with("loss") { 4 } else { 2 }))
        );
    }
    println!("train time:  {}", duration(run.train_seconds));
    if let Some(err) = &run.error {
        println!("error:       {}", printable(err));
    }
    if let Some(note) = &run.note {
        println!("note:        {}", printable(note));
    }
    if let Some(rung) = run.rung {
        println!("ASHA rung:   epoch {rung}");
    }
    if let Some(t) = &trial {
        let list = |k: &str| {
            t["based_on"][k].as_array().map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        };
        let how = match (t["method"].as_str(), list("below"), list("above")) {
            (Some("tpe"), Some(below), Some(above)) => {
                format!("proposed by TPE from the finished trials: good {below}; the rest {above}")
            }
            _ => "drawn at random".to_owned(),
        };
        println!("trial:       {} of search {}: {how}", t["trial"], t["search"].as_i64().unwrap_or(0) + 1);
    }
    println!("\nconfiguration (key {}):", run.key);
    for line in serde_json::to_string_pretty(&config)?.lines() {
        println!("  {line}");
    }
    println!();
    if epochs.is_empty() {
        println!("no epoch recorded");
    } else {
        let (headers, rows) = report::render::epoch_rows(&epochs, run.best_epoch);
        print!("{}", text_table(&headers, &rows));
    }
    println!();
    if checkpoints.is_empty() {
        println!("no checkpoint");
    } else {
        for c in &checkpoints {
            let at = if c.step > 0 {
                format!("epoch {} + {} batches", c.epoch, c.step)
            } else {
                format!("epoch {}", c.epoch)
            };
            println!(
                "checkpoint {:<7} {at}: {} (sha256 {})",
                format!("{:?}", c.kind).to_lowercase(),
                home.join(&c.path).display(),
                &c.sha256[..12]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
