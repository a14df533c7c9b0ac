//! `status`, `results` and `report`: read-only views of the database.

use crate::cli::{ReportFormat, StatusFormat};
use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;
use sweep::report::{self, render::duration, text_table, Comparison, ResultsFormat};
use sweep::store::{Status, Store};

async fn open(home: &Path) -> anyhow::Result<Store> {
    if !home.join(sweep::store::DB_FILE).exists() {
        anyhow::bail!("no sweep database in {} (submit a sweep first, or pass --home)", home.display());
    }
    Ok(Store::open(home).await?)
}

async fn comparison(store: &Store, sweep: Option<&str>) -> anyhow::Result<Comparison> {
    if let Some(name) = sweep {
        if !store.sweep_exists(name).await? {
            let known: Vec<String> = store.sweeps().await?.into_iter().map(|s| s.name).collect();
            anyhow::bail!("no sweep named `{name}` (known: {})", known.join(", "));
        }
    }
    Ok(Comparison::load(store, sweep).await?)
}

pub async fn status(home: &Path, format: StatusFormat) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let rows = store.runs(None).await?;
    let counts: Vec<(Status, usize)> =
        Status::ALL.iter().map(|s| (*s, rows.iter().filter(|r| r.status == *s).count())).collect();
    match format {
        StatusFormat::Json => {
            let v = serde_json::json!({
                "counts": counts.iter().map(|(s, n)| (s.to_string(), serde_json::json!(*n))).collect::<serde_json::Map<_, _>>(),
                "runs": rows,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        StatusFormat::Table => {
            let line: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            println!("{}", line.join(", "));
            if rows.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            let headers: Vec<String> =
                ["id", "sweep", "name", "status", "epoch", "batch", "attempts", "heartbeat", "error"]
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
                        err,
                    ]
                })
                .collect();
            print!("{}", text_table(&headers, &table));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn results(home: &Path, sweep: Option<&str>, format: ResultsFormat) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let cmp = comparison(&store, sweep).await?;
    print!("{}", report::results(&cmp, format));
    Ok(ExitCode::SUCCESS)
}

pub async fn report(
    home: &Path,
    sweep: Option<&str>,
    format: ReportFormat,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let cmp = comparison(&store, sweep).await?;
    let text = match format {
        ReportFormat::Md => report::markdown(&cmp),
        ReportFormat::Csv => report::csv_epochs(&cmp),
        ReportFormat::Json => report::json(&cmp),
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
