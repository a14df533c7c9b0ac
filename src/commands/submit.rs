//! `sweep submit FILE`: validate, queue (skipping finished configs), train.

use crate::cli::SubmitFormat;
use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use sweep::report::{results, results_json, Comparison, ResultsFormat};
use sweep::spec::{self, DeviceChoice, SpecError, SpecErrors};
use sweep::store::{Status, Store, SubmitOutcome};
use sweep::text::printable;

/// How `submit` goes about it (its flags).
pub struct How {
    /// Only queue.
    pub queue_only: bool,
    /// --device, over the file's.
    pub device: Option<DeviceChoice>,
    /// Output format.
    pub format: SubmitFormat,
    /// Train finished runs again as new repeats.
    pub rerun: bool,
    /// Progress and per-run lines.
    pub verbose: bool,
}

/// Turns the spec's finished runs into their next repeats; returns their new names.
async fn rerun_finished(store: &Store, spec: &mut spec::SweepSpec) -> anyhow::Result<Vec<String>> {
    let known = store.key_statuses().await?;
    let mut taken: HashSet<String> = spec.runs.iter().map(|r| r.key.0.clone()).collect();
    taken.extend(known.keys().cloned());
    let mut renamed = Vec::new();
    for run in &mut spec.runs {
        if known.get(&run.key.0).is_some_and(|(_, s)| *s == Status::Done) {
            let next = spec::next_repeat(run, &|k| taken.contains(k));
            taken.insert(next.key.0.clone());
            renamed.push(format!("{} -> {}", printable(&run.name), printable(&next.name)));
            *run = next;
        }
    }
    Ok(renamed)
}

pub async fn submit(home: &super::Home, file: &Path, options: &spec::Options, how: &How) -> anyhow::Result<ExitCode> {
    let (queue_only, format, verbose) = (how.queue_only, how.format, how.verbose);
    let json = format == SubmitFormat::Json;
    let mut spec = match spec::load_with(file, options) {
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

    if let Err(bad) = super::dataset_check(&spec) {
        if !queue_only {
            eprintln!("{}\nnothing was queued", SpecErrors(vec![bad]));
            return Ok(ExitCode::from(2));
        }
        eprintln!(
            "warning: {bad}; queued anyway (--queue-only): the workers that train it must see it as it should be"
        );
    }

    // --device (or SWEEP_DEVICE) over the file's `device`, else auto; a GPU
    // this build cannot use is refused before anything is queued.
    let device = how.device.or(spec.device).unwrap_or_default();
    if let Some(why) = super::cuda_missing(device).filter(|_| !queue_only) {
        eprintln!("{why}\nnothing was queued");
        return Ok(ExitCode::from(2));
    }
    let store = home.open().await?;
    let reruns = if how.rerun { rerun_finished(&store, &mut spec).await? } else { Vec::new() };
    if !json && !reruns.is_empty() {
        println!("{} finished run(s) trained again as new repeats: {}", reruns.len(), reruns.join(", "));
    }
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
            "sweep `{}`: {} run(s): {} queued, {} already done, {} already queued, {} requeued (failed or cancelled)",
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
    // A worker of this machine already training on the same device takes
    // these runs after its own: a second one would share the device (on a
    // GPU, its memory) for no gain. `sweep worker` starts one anyway.
    let busy = store.local_workers_training(sweep::env::STALE_SECS.seconds(60)).await?;
    // The device is opened for its name only when there is a worker to compare with.
    let device_name = if busy.is_empty() { String::new() } else { sweep::train::device(device)?.1 };
    if let Some((worker, _)) = busy.iter().find(|(_, d)| *d == device_name) {
        let pid = worker.rsplit_once(':').map_or(worker.as_str(), |(_, p)| p);
        if json {
            let v = serde_json::json!({ "sweep": spec.name, "submitted": queued, "handed_to": worker });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "queued for the worker already training on this machine (pid {pid}, on {device_name}): it trains \
                 them after its current runs. `sweep status` follows them; `sweep worker` starts a second worker \
                 beside it (two runs at once on one device)"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let drained = super::drain(
        &store,
        home.artifacts.clone(),
        device,
        &super::workers::ChildArgs { max_runs: None, exit_when_empty: false, verbose },
    )
    .await?;
    let report = &drained.report;
    let store = home.open().await?;
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
