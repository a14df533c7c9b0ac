//! `sweep export --format tensorboard|mlflow DIR`.

use super::query::{comparison, open};
use crate::cli::ExportFormat;
use std::path::Path;
use std::process::ExitCode;
use sweep::export::{self, Facts, RunFacts};
use sweep::record::CheckpointKind;
use sweep::report::query::Query;

pub async fn export(
    home: &super::Home,
    sweeps: &[String],
    q: &Query,
    format: ExportFormat,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let cmp = comparison(&store, sweeps, q, true).await?;
    let mut facts = Facts::new();
    // Runs trained on other machines: their best checkpoint and config.json from the artifact store.
    let artifacts = sweep::artifacts::Artifacts::open(home, home.artifacts.as_ref())?;
    for r in export::exportable(&cmp) {
        let best = store.checkpoints(r.row.id).await?.into_iter().find(|c| c.kind == CheckpointKind::Best);
        let rel_dir = sweep::worker::run_dir(&r.row.key);
        if let Some(c) = &best {
            if let Err(e) = artifacts.fetch(&c.path, &c.sha256).await {
                eprintln!("warning: {}: the best checkpoint is not exported: {e}", r.row.name);
            }
        }
        artifacts.restore(&format!("{rel_dir}/config.json")).await?;
        let config = home.join(&rel_dir).join("config.json");
        facts.insert(
            r.row.id,
            RunFacts {
                times: store.epoch_times(r.row.id).await?,
                best_checkpoint: best.map(|c| home.join(c.path)).filter(|p| p.exists()),
                config_file: config.exists().then_some(config),
            },
        );
    }
    let written = match format {
        ExportFormat::Tensorboard => export::tensorboard::export(&cmp, &facts, dir)?,
        ExportFormat::Mlflow => export::mlflow::export(&cmp, &facts, dir)?,
    };
    let skipped = cmp.runs.len() - written.runs;
    println!(
        "exported {} run(s), {} epoch(s), {} file(s) to {}{}",
        written.runs,
        written.epochs,
        written.files,
        dir.display(),
        if skipped > 0 { format!(" ({skipped} run(s) without an epoch left out)") } else { String::new() }
    );
    match format {
        ExportFormat::Tensorboard => println!("view: tensorboard --logdir {}", dir.display()),
        // MLflow 3 refuses a file store unless it is allowed by this variable (2.x ignores it).
        ExportFormat::Mlflow => {
            println!("view: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
