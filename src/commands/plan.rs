//! `sweep plan FILE`: the expanded grid, nothing queued.

use crate::cli::PlanFormat;
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;
use sweep::estimate as est;
use sweep::report::{column_names, differing, format::sampled, params::Interner, render::text_table};
use sweep::spec::{self, DeviceChoice};
use sweep::text::printable;
use sweep::train::data::Whereabouts;

/// How long each run would take here: the history in `home`'s database
/// where runs like it trained, else a timed probe (one per kind of run).
struct Estimates {
    /// Seconds per run, in plan order (`None`: unknown).
    seconds: Vec<Option<f64>>,
    /// The device the probes ran on.
    device: String,
    /// How many runs came from history, how many from probes.
    from_history: usize,
    from_probe: usize,
    /// Earlier runs in the store that trained on other hardware (not used).
    elsewhere: usize,
    /// Per run, in plan order: its probe ran out of the GPU's memory (the run
    /// would fail when it starts).
    out_of_memory: Vec<bool>,
    /// The bytes each run's training would take, in plan order (`None`:
    /// unknown), and on the CPU what the process may still take. On the CPU
    /// a training step measured ([`sweep::train::probe::step_memory`]); on a
    /// GPU its tensors at most in the probe, else in earlier runs like it.
    memory: Option<(Vec<Option<u64>>, Option<u64>)>,
}

async fn estimate(
    spec: &spec::SweepSpec,
    home: &super::Home,
    device: DeviceChoice,
    verbose: bool,
) -> anyhow::Result<Estimates> {
    let (dev, device_name) = sweep::train::device(device)?;
    let (history, elsewhere) = if home.has_store() {
        let store = home.open().await?;
        let rows = store.runs(None).await?;
        store.close().await;
        (est::history(&rows, &device_name), est::elsewhere(&rows, &device_name))
    } else {
        (Vec::new(), 0)
    };
    // Per kind of run: its seconds per epoch, whether its probe ran out of memory, and (on a GPU)
    // the memory the probe took.
    let mut probes: HashMap<String, (Option<f64>, bool, Option<u64>)> = HashMap::new();
    let mut out = Estimates {
        seconds: Vec::new(),
        device: device_name,
        from_history: 0,
        from_probe: 0,
        elsewhere,
        out_of_memory: Vec::new(),
        memory: None,
    };
    let mut memory = Vec::new();
    for r in &spec.runs {
        let c = &r.config;
        let (mut out_of_memory, mut probe_memory) = (false, None);
        let per_epoch = if let Some((s, _)) = est::per_epoch_from_history(&history, c) {
            out.from_history += 1;
            Some(s)
        } else if sweep::train::check(c).is_err() {
            None
        } else {
            let sizes = sweep::train::probe::split_sizes(c);
            let key = est::pace_key(c);
            let (pace, oom, bytes) = *probes.entry(key).or_insert_with(|| {
                let size = sweep::train::probe::ProbeSize::for_device(&dev, c.batch_size);
                if verbose {
                    eprintln!("timing {} (batch {}) on {}…", printable(&c.model), size.batch, out.device);
                }
                match sweep::train::probe::probe(c, &dev, size) {
                    Ok(pace) => {
                        (sizes.map(|(train, test)| est::per_epoch_from_pace(pace, train, test)), false, pace.memory)
                    }
                    Err(e) => {
                        let oom = matches!(e, sweep::train::TrainError::OutOfMemory(_));
                        // Said under the table, where it ran out of memory.
                        if oom {
                            tracing::debug!("probing {}: {e}", r.name);
                        } else {
                            tracing::warn!("probing {}: {e}", r.name);
                        }
                        (None, oom, None)
                    }
                }
            });
            if pace.is_some() {
                out.from_probe += 1;
            }
            out_of_memory = oom;
            probe_memory = bytes;
            pace
        };
        out.seconds.push(per_epoch.map(|s| s * c.epochs as f64));
        out.out_of_memory.push(out_of_memory);
        if dev.is_cpu() {
            let bytes = if sweep::train::check(c).is_err() {
                None
            } else {
                let train_images = sweep::train::probe::split_sizes(c).map(|(train, _)| train);
                sweep::train::probe::step_memory(c, train_images)
                    .map_err(|e| tracing::warn!("measuring {}: {e}", r.name))
                    .ok()
                    .flatten()
            };
            memory.push(bytes);
        } else {
            memory.push(probe_memory.or_else(|| est::memory_from_history(&history, c)));
        }
    }
    if dev.is_cpu() {
        // The probes' memory, freed and kept by the allocator, is this process's to reuse.
        sweep::memory::release_freed();
        out.memory = Some((memory, sweep::memory::available()));
    } else if memory.iter().any(Option::is_some) {
        out.memory = Some((memory, None));
    }
    Ok(out)
}

/// The line under the table on the CPU: the runs whose training step would
/// take more memory than the process may still take (they would fail when they
/// start).
fn memory_line(e: &Estimates) -> Option<String> {
    let (bytes, available) = e.memory.as_ref()?;
    let available = (*available)?;
    let over: Vec<u64> = bytes.iter().flatten().copied().filter(|&b| b > available).collect();
    let largest = over.iter().max()?;
    Some(format!(
        "memory: {} run(s) would take more than the {} this process may still take ({}), up to about {}: they \
         would fail when they start; lower their batch_size",
        over.len(),
        sweep::memory::describe(available),
        sweep::memory::SOURCE,
        sweep::memory::describe(*largest)
    ))
}

/// The line under the table on a GPU: the runs whose probe ran out of the
/// GPU's memory at their own batch (they would fail when they start).
fn gpu_memory_line(e: &Estimates, batch_sizes: &[usize]) -> Option<String> {
    let over: Vec<usize> = e.out_of_memory.iter().zip(batch_sizes).filter(|(oom, _)| **oom).map(|(_, b)| *b).collect();
    let smallest = over.iter().min()?;
    Some(format!(
        "memory: {} run(s) ran out of memory on {} in a probe of one training step at their batch_size (the \
         smallest {smallest}): they would fail when they start; lower their batch_size, or use precision = \"bf16\"",
        over.len(),
        printable(&e.device),
    ))
}

/// The lines under the table: the total, and plainly when it is days.
fn estimate_lines(e: &Estimates) -> String {
    let known: Vec<f64> = e.seconds.iter().flatten().copied().collect();
    if known.is_empty() {
        return "estimated time: unknown (nothing like these runs trained here, and no probe could run)\n".into();
    }
    let total: f64 = known.iter().sum();
    let unknown = e.seconds.len() - known.len();
    let mut basis = Vec::new();
    if e.from_history > 0 {
        basis.push(format!("{} from earlier runs like them", e.from_history));
    }
    if e.from_probe > 0 {
        basis.push(format!("{} from a timed probe", e.from_probe));
        if e.elsewhere > 0 {
            basis.push(format!("{} earlier run(s) on other hardware not used", e.elsewhere));
        }
    }
    let mut text = format!(
        "estimated time: {} one after another on {} ({}{})\n",
        est::human(total),
        printable(&e.device),
        basis.join(", "),
        if unknown > 0 { format!("; {unknown} run(s) unknown, not counted") } else { String::new() }
    );
    if total >= 86_400.0 {
        let _ = writeln!(
            text,
            "this plan would take {} on this machine: {:.1} days. Consider a GPU (--device cuda:0), fewer \
             epochs, or a smaller grid (--set, --max-runs)",
            est::human(total),
            total / 86_400.0
        );
    }
    text
}

pub async fn plan(
    file: &Path,
    options: &spec::Options,
    format: PlanFormat,
    home: &super::Home,
    device: Option<DeviceChoice>,
    estimates: bool,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let spec = match spec::load_with(file, options) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    // A GPU this build cannot use: what `submit` would say (also without
    // estimates, which open the device; the plan's "trainable here" needs it).
    let choice = device.or(spec.device).unwrap_or_default();
    if let Some(why) = super::cuda_missing(choice) {
        eprintln!("{why}");
        return Ok(ExitCode::from(2));
    }
    let data = super::dataset_check(&spec);
    if let Err(e) = &data {
        eprintln!(
            "warning: {e}; `submit` would refuse the file (`submit --queue-only` queues it for workers that see it)"
        );
    }
    let layout = data.as_ref().ok().cloned().flatten();
    // A dataset sweep downloads: here already, or what its first run fetches.
    let named = spec.runs.first().and_then(|r| {
        let ds = &r.config.dataset;
        let name = serde_json::to_value(ds.name).ok()?.as_str()?.to_owned();
        Some((name, sweep::train::data::whereabouts(ds)?))
    });
    let est = if estimates { Some(estimate(&spec, home, choice, verbose).await?) } else { None };
    let seconds = |i: usize| est.as_ref().and_then(|e| e.seconds[i]);
    let memory = |i: usize| est.as_ref().and_then(|e| e.memory.as_ref()).and_then(|(m, _)| m[i]);
    let with_memory = est.as_ref().is_some_and(|e| e.memory.is_some());
    match format {
        PlanFormat::Json => {
            let runs: Vec<_> = spec
                .runs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    serde_json::json!({
                        "estimated_seconds": seconds(i),
                        "estimated_memory_bytes": memory(i),
                        "out_of_memory": est.as_ref().map(|e| e.out_of_memory[i]),
                        "name": r.name,
                        "key": r.key,
                        "line": r.line,
                        "supported": sweep::train::check(&r.config).err().map(|e| e.to_string()),
                        "config": r.config,
                    })
                })
                .collect();
            let searches: Vec<_> = spec
                .searches
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name,
                        "method": s.method.as_str(),
                        "count": s.count,
                        "expanded": s.startup,
                        "proposed_online": s.count - s.startup,
                        "seed": s.seed,
                        "params": s.params.iter().map(|(p, d)| serde_json::json!({ "key": p, "distribution": d.describe() })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let asha = spec.early_terminate.map(|et| {
                serde_json::json!({ "method": "asha", "metric": et.metric_or(spec.metric).as_str(), "min_epochs": et.min_epochs,
                    "reduction_factor": et.reduction_factor })
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "sweep": spec.name, "runs": runs, "searches": searches, "early_terminate": asha,
                    "dataset": layout.as_ref().map(|l| serde_json::json!({
                        "train": l.train, "test": l.test, "val": l.val, "classes": l.classes,
                        "folders": l.folders.as_ref().map(|(t, e, v)| serde_json::json!({ "train": t, "test": e, "val": v })),
                    })).or_else(|| named.as_ref().map(|(name, w)| match w {
                        Whereabouts::Found(dir) => serde_json::json!({ "name": name, "found": dir }),
                        Whereabouts::Download { url, size, into } => serde_json::json!({
                            "name": name, "found": null, "download": { "url": url, "about": size, "into": into } }),
                    })),
                }))?
            );
        }
        PlanFormat::Table => {
            let mut interner = Interner::default();
            let flat: Vec<_> = spec
                .runs
                .iter()
                .map(|r| interner.flatten(&serde_json::to_string(&r.config)?))
                .collect::<Result<_, _>>()?;
            let diff = differing(&flat.iter().collect::<Vec<_>>());
            let mut headers = vec!["id".to_owned(), "name".to_owned()];
            headers.extend(column_names(&diff));
            headers.push("trainable here".into());
            if est.is_some() {
                headers.push("time (est.)".into());
            }
            if with_memory {
                headers.push("memory (est.)".into());
            }
            let mut reasons: Vec<String> = Vec::new();
            let rows: Vec<Vec<String>> = spec
                .runs
                .iter()
                .zip(&flat)
                .enumerate()
                .map(|(i, (r, f))| {
                    let mut row = vec![r.key.short().to_owned(), r.name.clone()];
                    row.extend(diff.iter().map(|p| sampled(f.get(p).unwrap_or("-")).into_owned()));
                    row.push(match sweep::train::check(&r.config) {
                        Ok(()) => "yes".into(),
                        Err(e) => {
                            reasons.push(format!("  {}: {}", printable(&r.name), printable(&e.to_string())));
                            "no (see below)".into()
                        }
                    });
                    if let Some(e) = &est {
                        row.push(match seconds(i) {
                            Some(s) => est::human(s),
                            None if e.out_of_memory[i] => "out of memory".into(),
                            None => "?".into(),
                        });
                    }
                    if with_memory {
                        row.push(memory(i).map_or("?".into(), sweep::memory::describe));
                    }
                    row
                })
                .collect();
            println!("sweep `{}`: {} run(s), best = {}", printable(&spec.name), spec.runs.len(), spec.metric);
            if let Some(l) = &layout {
                println!("{}", layout_line(l));
            }
            match &named {
                Some((name, Whereabouts::Found(dir))) => {
                    println!("{}", printable(&format!("dataset: {name}, read from {}", dir.display())));
                }
                Some((name, Whereabouts::Download { url, size, into })) => println!(
                    "{}",
                    printable(&format!(
                        "dataset: {name} is not on this machine: its first run downloads {url} (about {size}) into {}",
                        into.display()
                    ))
                ),
                None => {}
            }
            print!("{}", text_table(&headers, &rows));
            if let Some(e) = &est {
                print!("{}", estimate_lines(e));
                if let Some(line) = memory_line(e) {
                    println!("{line}");
                }
                let batch_sizes: Vec<usize> = spec.runs.iter().map(|r| r.config.batch_size).collect();
                if let Some(line) = gpu_memory_line(e, &batch_sizes) {
                    println!("{line}");
                }
            }
            for line in search_lines(&spec) {
                println!("{line}");
            }
            if !spec.duplicates.is_empty() {
                println!("dropped as duplicates of earlier runs: {}", printable(&spec.duplicates.join(", ")));
            }
            if !reasons.is_empty() {
                println!("cannot be trained by this build (submit would refuse the file):\n{}", reasons.join("\n"));
            }
        }
    }
    // Like `submit`, which would refuse the file: a script can tell.
    let trainable = data.is_ok() && spec.runs.iter().all(|r| sweep::train::check(&r.config).is_ok());
    Ok(if trainable { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `dataset: 40 training, 8 test and 8 validation images (train/, test/, val/), 2 classes: a, b`.
fn layout_line(l: &sweep::train::data::folder::Layout) -> String {
    let images = match l.val {
        Some(v) => format!("{} training, {} test and {v} validation images", l.train, l.test),
        None => format!("{} training and {} test images", l.train, l.test),
    };
    let folders = match &l.folders {
        Some((t, e, Some(v))) => format!(" ({t}/, {e}/, {v}/)"),
        Some((t, e, None)) => format!(" ({t}/, {e}/)"),
        None => " (one tree, test_split)".to_owned(),
    };
    let shown: Vec<&str> = l.classes.iter().take(10).map(String::as_str).collect();
    let more = if l.classes.len() > 10 { format!(", and {} more", l.classes.len() - 10) } else { String::new() };
    printable(&format!("dataset: {images}{folders}, {} classes: {}{more}", l.classes.len(), shown.join(", ")))
        .into_owned()
}

/// What the file's searches and early termination do beyond the runs listed.
fn search_lines(spec: &sweep::spec::SweepSpec) -> Vec<String> {
    use sweep::spec::SearchMethod;
    let mut out = Vec::new();
    for s in &spec.searches {
        let params: Vec<String> = s.params.iter().map(|(p, d)| format!("{p} {}", d.describe())).collect();
        let head = format!(
            "search `{}` (line {}): {}, {} trial(s), seed {}",
            printable(&s.name),
            s.line,
            s.method.as_str(),
            s.count,
            s.seed
        );
        out.push(match s.method {
            SearchMethod::Random => format!("{head}: all listed above"),
            SearchMethod::Tpe if s.count > s.startup => format!(
                "{head}: the {} start-up trial(s) above are random; the other {} are proposed by TPE as trials finish \
                 (when a worker finds nothing queued)",
                s.startup,
                s.count - s.startup
            ),
            SearchMethod::Tpe => format!("{head}: all {} are start-up (random) trials, listed above", s.startup),
        });
        out.push(format!("  samples {}", printable(&params.join("; "))));
    }
    if let Some(et) = spec.early_terminate {
        let asha = et.asha();
        let max_epochs = spec.runs.iter().map(|r| r.config.epochs as u64).max().unwrap_or(0);
        let rungs: Vec<String> = asha.rungs(max_epochs).iter().map(ToString::to_string).collect();
        out.push(format!(
            "early_terminate: ASHA on {}, rungs at epoch(s) {} (min_epochs {} × {}^k); at each rung a run goes on only \
             in the top 1/{} of the runs that reached it",
            et.metric_or(spec.metric),
            if rungs.is_empty() { "none (the runs are too short)".to_owned() } else { rungs.join(", ") },
            et.min_epochs,
            et.reduction_factor,
            et.reduction_factor
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimates(seconds: Vec<Option<f64>>, out_of_memory: Vec<bool>) -> Estimates {
        let from_probe = seconds.iter().flatten().count();
        Estimates {
            seconds,
            device: "cuda:0 (NVIDIA H200, 143771 MiB), cudnn kernels".into(),
            from_history: 0,
            from_probe,
            elsewhere: 0,
            out_of_memory,
            memory: None,
        }
    }

    /// A run whose GPU probe ran out of memory is named under the table, with
    /// the smallest batch that did not fit; the others count in the total.
    #[test]
    fn runs_whose_gpu_probe_ran_out_of_memory_are_said_under_the_table() {
        let e = estimates(vec![Some(60.0), None, None], vec![false, true, true]);
        let line = gpu_memory_line(&e, &[50, 512, 256]).unwrap();
        assert!(line.starts_with("memory: 2 run(s) ran out of memory on cuda:0 (NVIDIA H200"), "{line}");
        assert!(line.contains("(the smallest 256)"), "{line}");
        assert!(line.contains("lower their batch_size"), "{line}");
        let total = estimate_lines(&e);
        assert!(total.starts_with("estimated time: 1m one after another"), "{total}");
        assert!(total.contains("2 run(s) unknown, not counted"), "{total}");
    }

    #[test]
    fn no_memory_line_when_every_probe_fit() {
        let e = estimates(vec![Some(60.0), None], vec![false, false]);
        assert_eq!(gpu_memory_line(&e, &[50, 128]), None);
    }
}
