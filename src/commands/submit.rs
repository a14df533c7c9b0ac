//! `sweep submit FILE`: validate, queue (skipping finished configs), train.

use crate::cli::SubmitFormat;
use std::path::Path;
use std::process::ExitCode;
use sweep::report::{results, results_json, Comparison, ResultsFormat};
use sweep::spec::{self, DeviceChoice, SpecError, SpecErrors};
use sweep::store::{Store, SubmitOutcome};
use sweep::text::printable;

pub async fn submit(
    home: &Path,
    file: &Path,
    options: &spec::Options,
    queue_only: bool,
    device: Option<DeviceChoice>,
    format: SubmitFormat,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let json = format == SubmitFormat::Json;
    let spec = match spec::load_with(file, options) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}\nnothing was queued");
            return Ok(ExitCode::from(2));
        }
    };
    // Refuse the whole file if this build cannot train one of its runs.
    let unsupported: Vec<SpecError> = spec
        .runs
        .iter()
        .filter_map(|r| {
            sweep::train::check(&r.config).err().map(|msg| SpecError {
                file: spec.path.clone(),
                line: r.line,
                column: r.column,
                key: None,
                message: format!("run `{}`: {msg}", r.name),
            })
        })
        .collect();
    if !unsupported.is_empty() {
        eprintln!("{}\nnothing was queued", SpecErrors(unsupported));
        return Ok(ExitCode::from(2));
    }

    // --device (or SWEEP_DEVICE) over the file's `device`, else auto; a GPU
    // this build cannot use is refused before anything is queued.
    let device = device.or(spec.device).unwrap_or_default();
    if device.is_cuda() && !candle_core::utils::cuda_is_available() && !queue_only {
        eprintln!(
            "error: device {device}: this binary was built without CUDA (rebuild with `--features cuda`, \
             or pass --device cpu)\nnothing was queued"
        );
        return Ok(ExitCode::from(2));
    }
    let store = Store::open(home).await?;
    let outcomes = store.submit(&spec).await?;
    let count = |o: SubmitOutcome| outcomes.iter().filter(|x| **x == o).count();
    let queued: Vec<serde_json::Value> = spec
        .runs
        .iter()
        .zip(&outcomes)
        .map(|(r, o)| serde_json::json!({ "name": r.name, "key": r.key, "outcome": o }))
        .collect();
    if !json {
        println!(
            "sweep `{}`: {} run(s): {} queued, {} already done, {} already queued, {} requeued after failing",
            printable(&spec.name),
            outcomes.len(),
            count(SubmitOutcome::Queued),
            count(SubmitOutcome::AlreadyDone),
            count(SubmitOutcome::AlreadyQueued),
            count(SubmitOutcome::Requeued)
        );
        if verbose {
            for (run, outcome) in spec.runs.iter().zip(&outcomes) {
                if *outcome == SubmitOutcome::AlreadyDone {
                    println!("  {} ({}): already done, not run again", printable(&run.name), run.key.short());
                }
            }
            if !spec.duplicates.is_empty() {
                println!("  dropped as duplicates of earlier runs: {}", printable(&spec.duplicates.join(", ")));
            }
        }
    }
    if queue_only {
        if json {
            let v = serde_json::json!({ "sweep": spec.name, "submitted": queued });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("queued only: run `sweep worker --home {}` to train", home.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let drained = super::drain(&store, device, verbose).await?;
    let report = &drained.report;
    let store = Store::open(home).await?;
    let cmp = Comparison::load(&store, std::slice::from_ref(&spec.name), false).await?;
    if json {
        let v = serde_json::json!({
            "sweep": spec.name, "submitted": queued, "worker": report, "results": results_json(&cmp),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!();
        print!("{}", results(&cmp, ResultsFormat::Table));
    }
    eprintln!("{}", super::summary_line(report));
    Ok(drained.exit_code())
}
