//! Managing the queue: `retry`, `cancel`, `rm`, `prune`.

use super::query::{find_run, open, run_label as label};
use crate::cli::ManageFormat;
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use sweep::report::format::bytes;
use sweep::store::{RunRow, Status, Store, StoreError};
use sweep::text::printable;
use sweep::worker::{retention, run_dir};

/// What a command did: a line per run or file for a person, or, with
/// `--format json`, one object gathered from the same events (printed by
/// [`Out::finish`]). Refusals go to stderr either way.
struct Out {
    json: bool,
    items: Vec<Value>,
}

impl Out {
    fn new(format: ManageFormat) -> Out {
        Out { json: format == ManageFormat::Json, items: Vec::new() }
    }

    /// One thing done (or refused: `refused` lines go to stderr).
    fn item(&mut self, line: &str, refused: bool, item: Value) {
        if refused {
            eprintln!("{line}");
        } else if !self.json {
            println!("{line}");
        }
        if self.json {
            self.items.push(item);
        }
    }

    /// A line for a person only.
    fn say(&self, line: &str) {
        if !self.json {
            println!("{line}");
        }
    }

    /// The JSON object: `key` holds the items, `more` the rest.
    fn finish(self, key: &str, more: Value) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&with(json!({ key: self.items }), more))?);
        }
        Ok(())
    }
}

/// A run as the JSON output names it.
fn run_json(r: &RunRow) -> Value {
    json!({ "id": &r.key[..10.min(r.key.len())], "key": r.key, "sweep": r.sweep, "name": r.name })
}

/// `v` (an object) with the fields of `more` (an object) added.
fn with(mut v: Value, more: Value) -> Value {
    if let (Some(o), Value::Object(m)) = (v.as_object_mut(), more) {
        o.extend(m);
    }
    v
}

/// The runs named on the command line and those of the sweeps named, each once.
async fn named_runs(store: &Store, which: &[String], sweeps: &[String]) -> anyhow::Result<Vec<RunRow>> {
    let mut runs = Vec::new();
    let mut seen = HashSet::new();
    for w in which {
        let r = find_run(store, w).await?.0;
        if seen.insert(r.id) {
            runs.push(r);
        }
    }
    for name in sweeps {
        if !store.sweep_exists(name).await? {
            let known: Vec<String> = store.sweeps().await?.into_iter().map(|s| s.name).collect();
            anyhow::bail!("no sweep named `{}` (known: {})", printable(name), printable(&known.join(", ")));
        }
        runs.extend(store.runs(Some(name)).await?.into_iter().filter(|r| seen.insert(r.id)));
    }
    Ok(runs)
}

/// `sweep retry RUN... | --failed [--from-scratch]`.
pub async fn retry(
    home: &super::Home,
    which: &[String],
    failed: bool,
    from_scratch: bool,
    format: ManageFormat,
) -> anyhow::Result<ExitCode> {
    let mut out = Out::new(format);
    let store = open(home).await?;
    let mut runs = named_runs(&store, which, &[]).await?;
    if failed {
        let mut seen: HashSet<i64> = runs.iter().map(|r| r.id).collect();
        for r in store.runs(None).await? {
            if matches!(r.status, Status::Failed | Status::Diverged) && seen.insert(r.id) {
                runs.push(r);
            }
        }
    }
    let mut refused = 0;
    for r in &runs {
        let name = label(r);
        match store.retry(r.id, from_scratch).await {
            Ok(was) => {
                let how = if from_scratch { ", from scratch" } else { ", from its latest checkpoint" };
                let item = json!({ "was": was.as_str(), "now": "queued", "from_scratch": from_scratch });
                out.item(&format!("{name}: {was} -> queued{how}"), false, with(run_json(r), item));
            }
            Err(StoreError::NotRetryable { why, status, .. }) => {
                let item = json!({ "was": status.as_str(), "now": "refused", "why": why });
                out.item(&format!("{name}: not queued: it is {status}: {why}"), true, with(run_json(r), item));
                refused += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if runs.is_empty() {
        out.say("no failed or diverged run");
    } else if refused < runs.len() {
        out.say(&format!("run `sweep worker --home {}` to train", home.display()));
    }
    out.finish("runs", json!({}))?;
    Ok(if refused > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `sweep cancel RUN... | --sweep NAME`.
pub async fn cancel(
    home: &super::Home,
    which: &[String],
    sweeps: &[String],
    format: ManageFormat,
) -> anyhow::Result<ExitCode> {
    let mut out = Out::new(format);
    let store = open(home).await?;
    let runs = named_runs(&store, which, sweeps).await?;
    let mut refused = 0;
    let (mut cancelled, mut stopping) = (0, 0);
    for r in &runs {
        // A sweep's finished runs are not an error to cancel: they are left as they are.
        if !which.is_empty() || matches!(r.status, Status::Queued | Status::Interrupted | Status::Running) {
            match store.cancel(r.id).await {
                Ok(Status::Running) => {
                    let line =
                        format!("{}: running -> stops after its current batch, checkpointed, as cancelled", label(r));
                    out.item(&line, false, with(run_json(r), json!({ "was": "running", "now": "stopping" })));
                    stopping += 1;
                }
                Ok(was) => {
                    let item = json!({ "was": was.as_str(), "now": "cancelled" });
                    out.item(&format!("{}: {was} -> cancelled", label(r)), false, with(run_json(r), item));
                    cancelled += 1;
                }
                Err(StoreError::NotCancellable { status, why, .. }) => {
                    let item = json!({ "was": status.as_str(), "now": "refused", "why": why });
                    out.item(
                        &format!("{}: not cancelled: it is {status}: {why}", label(r)),
                        true,
                        with(run_json(r), item),
                    );
                    refused += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if cancelled + stopping == 0 && refused == 0 {
        out.say(&format!("nothing to cancel: no run of {} is queued or running", printable(&sweeps.join(", "))));
    } else if cancelled + stopping > 0 {
        out.say("`sweep retry RUN` queues a cancelled run again; it resumes from its checkpoint");
    }
    out.finish("runs", json!({}))?;
    Ok(if refused > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The size of a folder's files (not recursive: a run folder has no subfolder).
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

/// Asks on the terminal; without one, `--yes` is needed.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("{question}: refusing without a terminal to ask on; pass --yes");
    }
    eprint!("{question}? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// One sweep `rm` removes: its name, the runs only it lists (they go), and the
/// runs other sweeps list too (they stay), with those sweeps.
type SweepRemoval = (String, Vec<RunRow>, Vec<(RunRow, Vec<String>)>);

/// `sweep rm RUN... | --sweep NAME [--yes]`.
pub async fn rm(
    home: &super::Home,
    which: &[String],
    sweeps: &[String],
    yes: bool,
    format: ManageFormat,
) -> anyhow::Result<ExitCode> {
    let mut out = Out::new(format);
    let store = open(home).await?;
    let members = store.memberships().await?;
    let named = named_runs(&store, which, &[]).await?;
    if let Some(r) = named.iter().find(|r| r.status == Status::Running) {
        anyhow::bail!("{} is running: `sweep cancel` it first; nothing was removed", label(r));
    }
    // Per sweep: the runs only it lists go; the others stay for the sweeps that use them.
    let mut plans: Vec<SweepRemoval> = Vec::new();
    for name in sweeps {
        let runs = named_runs(&store, &[], std::slice::from_ref(name)).await?;
        let (mut only, mut shared) = (Vec::new(), Vec::new());
        for r in runs {
            let others: Vec<String> =
                members.get(&r.id).into_iter().flatten().filter(|s| *s != name).cloned().collect();
            if others.is_empty() {
                if r.status == Status::Running {
                    anyhow::bail!(
                        "{} is running: `sweep cancel --sweep {}` first; nothing was removed",
                        label(&r),
                        printable(name)
                    );
                }
                only.push(r);
            } else {
                shared.push((r, others));
            }
        }
        plans.push((name.clone(), only, shared));
    }
    let doomed: Vec<&RunRow> = named.iter().chain(plans.iter().flat_map(|p| p.1.iter())).collect();
    let sizes: Vec<u64> = doomed.iter().map(|r| folder_bytes(&home.join(run_dir(&r.key)))).collect();
    let size: u64 = sizes.iter().sum();
    let mut kept = Vec::new();
    for (r, held) in doomed.iter().zip(&sizes) {
        let item = json!({ "status": r.status.as_str(), "epochs_done": r.epochs_done, "bytes": held });
        out.item(
            &format!("remove {} ({}, {} epoch(s) recorded)", label(r), r.status, r.epochs_done),
            false,
            with(run_json(r), item),
        );
    }
    for (sweep, _, shared) in &plans {
        for (r, others) in shared {
            out.say(&format!(
                "keep   {} (also in {}); only its membership of `{}` goes",
                label(r),
                printable(&others.join(", ")),
                printable(sweep)
            ));
            kept.push(with(run_json(r), json!({ "also_in": others, "leaves": sweep })));
        }
    }
    let question = format!(
        "remove {} run(s) and {} of their files{}",
        doomed.len(),
        bytes(size),
        if plans.is_empty() { String::new() } else { format!(" and the sweep(s) {}", printable(&sweeps.join(", "))) }
    );
    if !yes && !confirm(&question)? {
        out.say("nothing was removed");
        out.finish("removed", json!({ "done": false, "kept": kept, "sweeps": sweeps, "freed_bytes": 0 }))?;
        return Ok(ExitCode::from(1));
    }
    store.remove_runs(&named.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
    for (name, only, _) in &plans {
        store.remove_sweep(name, &only.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
    }
    // The rows are gone (the commit point); now their files, in the artifact store too.
    let mut left = Vec::new();
    let artifacts = sweep::artifacts::Artifacts::open(home, home.artifacts.as_ref())?;
    for r in &doomed {
        if !artifacts.is_home() {
            let rel = run_dir(&r.key);
            let gone = match artifacts.list(&rel).await {
                Ok(names) => artifacts.delete(&rel, &names).await,
                Err(e) => Err(e),
            };
            if let Err(e) = gone {
                left.push(format!("{rel} in {}: {e}", artifacts.location()));
            }
        }
        let dir = home.join(run_dir(&r.key));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                left.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    out.say(&format!("removed {} run(s), {} freed", doomed.len(), bytes(size)));
    for l in &left {
        eprintln!("could not remove {l} (`sweep prune` tries again)");
    }
    out.finish(
        "removed",
        json!({ "done": true, "kept": kept, "sweeps": sweeps, "freed_bytes": size, "not_removed": left }),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `sweep prune [--dry-run] [--keep best]`: checkpoint files no record refers
/// to, folders of runs the database no longer has, and (`--keep best`) the
/// latest checkpoints of finished runs.
pub async fn prune(
    home: &super::Home,
    dry_run: bool,
    keep_best: bool,
    format: ManageFormat,
) -> anyhow::Result<ExitCode> {
    let mut out = Out::new(format);
    let store = open(home).await?;
    let runs = store.key_statuses().await?;
    let by_dir: std::collections::HashMap<String, (i64, Status)> =
        runs.iter().map(|(key, v)| (run_dir(key), *v)).collect();
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut freed = 0u64;
    let mut count = 0usize;
    let runs_root = home.join("runs");
    let mut dirs: Vec<_> = match std::fs::read_dir(&runs_root) {
        Ok(entries) => entries.filter_map(Result::ok).filter(|e| e.path().is_dir()).map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    };
    dirs.sort();
    for d in dirs {
        let rel = format!("runs/{}", d.to_string_lossy());
        let abs = home.join(&rel);
        let Some(&(id, status)) = by_dir.get(&rel) else {
            let size = folder_bytes(&abs);
            let item = json!({ "path": format!("{rel}/"), "bytes": size, "why": "no run in the database" });
            out.item(&format!("{verb} {rel}/ ({}; no run in the database)", bytes(size)), false, item);
            if !dry_run {
                std::fs::remove_dir_all(&abs).with_context(|| abs.display().to_string())?;
            }
            freed += size;
            count += 1;
            continue;
        };
        // A running run's worker writes here now: its files are the worker's.
        if status == Status::Running {
            continue;
        }
        let mut records = store.checkpoints(id).await?;
        if keep_best && status == Status::Done && records.iter().any(|c| c.kind == sweep::record::CheckpointKind::Best)
        {
            if !dry_run {
                store.drop_finished_latest(id).await?;
            }
            records.retain(|c| c.kind != sweep::record::CheckpointKind::Latest);
        }
        let present = sweep::train::checkpoint::list_files(&abs)?;
        let removed = retention::unreferenced(&present, &records);
        for f in &removed {
            let size = std::fs::metadata(abs.join(f)).map_or(0, |m| m.len());
            let item = json!({ "path": format!("{rel}/{f}"), "bytes": size, "why": "no record refers to it" });
            out.item(&format!("{verb} {rel}/{f} ({})", bytes(size)), false, item);
            freed += size;
            count += 1;
        }
        if !dry_run {
            sweep::train::checkpoint::remove_files(&abs, &removed)?;
        }
    }
    let freed_text = bytes(freed);
    if count == 0 {
        out.say("nothing to prune");
    } else if dry_run {
        out.say(&format!("{count} file(s) or folder(s), {freed_text} would be freed (without --dry-run)"));
    } else {
        out.say(&format!("{count} file(s) or folder(s) removed, {freed_text} freed"));
    }
    out.finish("files", json!({ "dry_run": dry_run, "freed_bytes": freed }))?;
    Ok(ExitCode::SUCCESS)
}
