//! `sweep store copy --from A --to B`.

use crate::cli::SubmitFormat;
use std::path::Path;
use std::process::ExitCode;
use sweep::store::{Location, Store};

/// Copies store `from` into store `to` and says what it did.
pub async fn copy(home: &Path, from: &Location, to: &Location, format: SubmitFormat) -> anyhow::Result<ExitCode> {
    if from == to {
        anyhow::bail!("--from and --to are the same store ({from})");
    }
    if let Location::Sqlite(path) = from {
        if !path.exists() {
            anyhow::bail!("--from {}: no such database file", path.display());
        }
    }
    let source = Store::connect(home, from).await?;
    let target = Store::connect(home, to).await?;
    let r = source.copy_into(&target).await?;
    source.close().await;
    target.close().await;
    match format {
        SubmitFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        SubmitFormat::Table => {
            println!("copied {from} -> {to}");
            println!(
                "sweeps: {} added; runs: {} added, {} updated, {} already there{}",
                r.sweeps_added,
                r.runs_added,
                r.runs_updated,
                r.runs_unchanged,
                if r.runs_held > 0 {
                    format!(", {} left alone (training in the target)", r.runs_held)
                } else {
                    String::new()
                }
            );
            println!("epochs: {} copied; checkpoint records: {} copied", r.epochs_copied, r.checkpoints_copied);
            println!(
                "verified: {} runs with {} epochs and {} checkpoint records, as in the source",
                r.verified.0, r.verified.1, r.verified.2
            );
            println!(
                "checkpoint files stay where they are: paths are relative to the artifact store (--artifacts, \
                 default the home folder); copy the home's runs/ folder there too"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
