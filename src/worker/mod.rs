//! The worker: takes runs from the queue one after another and trains them.
//!
//! The worker is async (tokio, one thread) and owns the database; each run trains
//! on its own OS thread (with a large stack: autograd recurses over deep graphs).
//! The two talk over a channel: after every epoch the trainer hands over the
//! record and its checkpoint files and waits until the worker has committed them;
//! meanwhile the worker refreshes the run's heartbeat. Before claiming work the
//! worker marks runs whose worker died as `interrupted`; those are claimed first
//! and resume from their latest checkpoint. A database that does not answer
//! for a while (a server restarting) is waited for (`patience`; `SWEEP_STORE_WAIT_SECS`).

pub mod log;
mod patience;
pub mod retention;
mod search;

use crate::artifacts::{ArtifactError, Artifacts};
use crate::text::printable;

use crate::record::{CheckpointKind, CheckpointRecord, EpochRecord, EpochSink, SinkError, Verdict};
use crate::spec::{DeviceChoice, RunConfig};
use crate::store::{ClaimedRun, Status, Store, StoreError};
use crate::train::{self, checkpoint, data, Outcome, Progress, TrainRequest};
use patience::Patience;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Where to train.
    pub device: DeviceChoice,
    /// A running run whose heartbeat is older than this is taken over.
    pub stale_after: Duration,
    /// How often the heartbeat is refreshed.
    pub heartbeat_every: Duration,
    /// A run whose worker died this many times is failed instead of resumed.
    pub max_worker_deaths: u32,
    /// Progress bars and per-epoch lines on stderr.
    pub verbose: bool,
    /// Stop after handling this many runs.
    pub max_runs: Option<usize>,
    /// Stop as soon as nothing can be claimed, without waiting for runs
    /// whose worker has gone silent (batch jobs).
    pub exit_when_empty: bool,
    /// Where checkpoints are kept for good (None: the home).
    pub artifacts: Option<crate::artifacts::ArtifactLocation>,
    /// How long a call to a database that does not answer is tried again
    /// before the worker stops.
    pub store_wait: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            device: DeviceChoice::Auto,
            stale_after: Duration::from_secs(60),
            heartbeat_every: Duration::from_secs(2),
            max_worker_deaths: 3,
            verbose: false,
            max_runs: None,
            exit_when_empty: false,
            artifacts: None,
            store_wait: Duration::from_secs(600),
        }
    }
}

/// How one run ended in this worker.
#[derive(Debug, Clone, Serialize)]
pub struct RunEnd {
    /// Run id.
    pub id: i64,
    /// Run name.
    pub name: String,
    /// Its status now.
    pub status: Status,
    /// The error of a failed run.
    pub error: Option<String>,
    /// Why the worker stops after this run, with the rest of the queue left
    /// as it is: every next run would fail the same way (a full disk, an
    /// artifact store that cannot be written). What to do is part of it.
    #[serde(skip)]
    pub stops_worker: Option<String>,
}

/// What a worker did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    /// Runs this worker handled, in order.
    pub runs: Vec<RunEnd>,
    /// Runs found abandoned by a dead worker and marked for resumption (runs
    /// failed because their worker died too often are in `runs`).
    pub recovered: usize,
    /// Whether it stopped because it was asked to.
    pub interrupted: bool,
    /// Why it stopped with runs left in the queue (a full disk, an artifact
    /// store that cannot be written), and what to do, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// A worker-level failure (a run's own failure is recorded, not returned).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The device could not be opened.
    #[error(transparent)]
    Device(#[from] train::device::DeviceError),
    /// The artifact store could not be set up.
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    /// The artifact store does not take a write: nothing was claimed.
    #[error(
        "the artifact store {location} cannot be written ({source}); nothing was claimed: check the bucket, the \
         credentials and the endpoint (AWS_*), or the folder, and start the worker again"
    )]
    ArtifactsUnwritable {
        /// The store.
        location: String,
        /// What went wrong.
        #[source]
        source: ArtifactError,
    },
    /// The database stayed unreachable while this worker held a run.
    #[error(
        "{source}; the run `{run}` stays running: once its heartbeat is SWEEP_STALE_SECS old (on this machine: \
         once this worker has exited), the next worker resumes it from its last recorded checkpoint"
    )]
    UnreachableUnderRun {
        /// The run.
        run: String,
        /// What the database said.
        #[source]
        source: StoreError,
    },
    /// The trainer thread could not be started.
    #[error("cannot start the training thread: {0}")]
    Thread(std::io::Error),
}

enum Msg {
    Epoch {
        rec: Box<EpochRecord>,
        latest: CheckpointRecord,
        best: Option<CheckpointRecord>,
        reply: oneshot::Sender<Result<Verdict, SinkError>>,
    },
    Interrupted {
        latest: CheckpointRecord,
        reply: oneshot::Sender<Result<(), SinkError>>,
    },
}

struct ChannelSink(mpsc::Sender<Msg>);

impl ChannelSink {
    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, SinkError>>) -> Msg) -> Result<T, SinkError> {
        let (tx, rx) = oneshot::channel();
        self.0.blocking_send(make(tx)).map_err(|_| SinkError::Disconnected("the worker stopped listening"))?;
        rx.blocking_recv().map_err(|_| SinkError::Disconnected("the worker dropped the reply"))?
    }
}

impl EpochSink for ChannelSink {
    fn epoch_end(
        &mut self,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
    ) -> Result<Verdict, SinkError> {
        self.ask(|reply| Msg::Epoch { rec: Box::new(rec.clone()), latest: latest.clone(), best: best.cloned(), reply })
    }
    fn interrupted(&mut self, latest: &CheckpointRecord) -> Result<(), SinkError> {
        self.ask(|reply| Msg::Interrupted { latest: latest.clone(), reply })
    }
}

/// `cuda:N` or `cpu`.
fn device_label(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The folder of a run's checkpoints, relative to the home folder.
pub fn run_dir(key: &str) -> String {
    format!("runs/{}", &key[..16.min(key.len())])
}

/// Drains the queue: trains runs until none is left or `stop` is set.
pub async fn work(store: &Store, opts: &WorkerOptions, stop: Arc<AtomicBool>) -> Result<WorkerReport, WorkerError> {
    let (device, device_name) = train::device(opts.device)?;
    let artifacts = Artifacts::open(store.home(), opts.artifacts.as_ref())?;
    let local = Artifacts::open(store.home(), None)?;
    let worker = crate::store::worker_id();
    if let Some(fs) = store.sqlite_on_network_fs() {
        tracing::warn!(
            "the database {} is on a network filesystem ({fs}): SQLite works only for workers on one machine \
             (its write-ahead log is shared memory); workers on several machines need --store postgres://...",
            store.name()
        );
    }
    // A missing bucket, wrong credentials or an unreachable endpoint, found
    // before anything is claimed or trained, not after a run's first epoch.
    artifacts
        .check_writable(&worker)
        .await
        .map_err(|source| WorkerError::ArtifactsUnwritable { location: artifacts.location().to_owned(), source })?;
    if opts.verbose {
        let why = match (opts.device, device.is_cpu()) {
            (DeviceChoice::Auto, true) => train::device::why_cpu(),
            (DeviceChoice::Auto, false) => "auto: the first GPU",
            _ => "as asked",
        };
        eprintln!("device: {device_name} (--device {}; {why})", opts.device);
    }
    let patience = Patience::new(store, opts.store_wait, stop.clone());
    let mut report = WorkerReport::default();
    let mut datasets: HashMap<String, Loaded> = HashMap::new();
    let (mut waiting_for, mut looked_again) = (None, false);
    loop {
        if opts.max_runs.is_some_and(|n| report.runs.len() >= n) {
            tracing::info!("handled {} run(s), as --max-runs asked", report.runs.len());
            break;
        }
        let recovered = patience
            .call("looking for runs whose worker is gone", || {
                store.recover_stale(patience.stale_after(opts.stale_after), opts.max_worker_deaths)
            })
            .await?;
        for r in recovered {
            let Some(error) = r.error else {
                tracing::warn!(
                    run = r.id,
                    worker = r.worker,
                    "worker is gone; the run will resume from its latest checkpoint"
                );
                report.recovered += 1;
                continue;
            };
            tracing::warn!(run = r.id, worker = r.worker, "{error}");
            if opts.verbose {
                eprintln!("✗ {} failed: {}", printable(&r.name), printable(&error));
            }
            report.runs.push(RunEnd {
                id: r.id,
                name: r.name,
                status: Status::Failed,
                error: Some(error),
                stops_worker: None,
            });
        }
        if stop.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let mut claimed = patience.claim(&worker, &device_name).await?;
        if claimed.is_none()
            && patience.call("proposing a search's next trial", || search::propose_next(store, opts.verbose)).await?
        {
            // A TPE search wanted its next trial: it is queued now.
            claimed = patience.claim(&worker, &device_name).await?;
        }
        if claimed.is_none() && opts.exit_when_empty {
            tracing::info!("nothing to claim: exiting (--exit-when-empty)");
            break;
        }
        let Some(run) = claimed else {
            // Nothing to claim. A run whose worker has gone silent (a container
            // replaced on another host, a lost node) is work left all the same:
            // wait until it is stale and take it over, rather than end with it.
            // A live worker beats every `heartbeat_every`: a run whose heartbeat
            // is older than three of those, once looked at again after that
            // long, has a worker that is gone.
            let silent_for = (opts.heartbeat_every * 3).max(Duration::from_millis(300));
            let held = patience.call("reading the running runs", || store.held_runs()).await?;
            let silent = held.iter().find(|(_, _, age)| *age > silent_for.as_secs_f64()).cloned();
            if silent.is_none() && !held.is_empty() && !looked_again {
                looked_again = true;
                tokio::time::sleep(silent_for).await;
                continue;
            }
            if let Some((id, holder, age)) = silent {
                if waiting_for != Some(id) {
                    waiting_for = Some(id);
                    tracing::warn!(run = id, worker = holder, "waiting for a silent worker's run");
                    if opts.verbose {
                        eprintln!(
                            "waiting for run {id}: its worker {holder} has sent no heartbeat for {age:.0}s; \
                             it is taken over once that reaches {:.0}s",
                            opts.stale_after.as_secs_f64()
                        );
                    }
                }
                tokio::time::sleep(opts.heartbeat_every.clamp(Duration::from_millis(50), Duration::from_secs(2))).await;
                continue;
            }
            tracing::info!("queue empty");
            break;
        };
        looked_again = false;
        tracing::info!(run = run.id, key = &run.key[..10], name = run.name.as_str(), attempt = run.attempts, "claimed");
        let place = place_in_queue(&patience, store, &run, report.runs.len(), &device_name).await?;
        let name = printable(&run.name).into_owned();
        let end =
            execute(store, &patience, (&local, &artifacts), opts, &worker, &device, &stop, &mut datasets, run, &place)
                .await
                .map_err(|e| match e {
                    WorkerError::Store(source @ StoreError::Unreachable { .. }) => {
                        WorkerError::UnreachableUnderRun { run: name, source }
                    }
                    other => other,
                })?;
        if opts.verbose {
            eprintln!("{}", end_line(&end));
        }
        let was_interrupted = end.status == Status::Interrupted;
        let stops_worker = end.stops_worker.clone();
        report.runs.push(end);
        if let Some(why) = stops_worker {
            // Every next run would fail the same way: stop with the queue intact.
            report.stopped = Some(why);
            break;
        }
        if was_interrupted {
            report.interrupted = true;
            break;
        }
    }
    Ok(report)
}

/// Where a claimed run stands: the i-th of n this worker has in hand, and
/// how long the rest of the queue will take from earlier runs' pace.
struct Place {
    position: (usize, usize),
    /// `; 3 more queued: about 4m (from earlier runs like them)`, or empty.
    queue: String,
}

async fn place_in_queue(
    patience: &Patience<'_>,
    store: &Store,
    run: &ClaimedRun,
    handled: usize,
    device: &str,
) -> Result<Place, WorkerError> {
    let rows = patience.call("reading the queue", || store.runs(None)).await?;
    let history = crate::estimate::history(&rows, device);
    let mut seen = std::collections::HashSet::new();
    let waiting: Vec<_> = rows
        .iter()
        .filter(|r| matches!(r.status, Status::Queued | Status::Interrupted) && r.id != run.id && seen.insert(r.id))
        .collect();
    let position = (handled + 1, handled + 1 + waiting.len());
    if waiting.is_empty() {
        return Ok(Place { position, queue: String::new() });
    }
    let (mut total, mut unknown) = (0.0, 0);
    for r in &waiting {
        let estimate = serde_json::from_str::<RunConfig>(&r.config_json)
            .ok()
            .and_then(|c| crate::estimate::per_epoch_from_history(&history, &c));
        match estimate {
            Some((per_epoch, _)) => total += per_epoch * (r.epochs_total - r.epochs_done).max(0) as f64,
            None => unknown += 1,
        }
    }
    let queue = if unknown == waiting.len() {
        format!("; {} more queued (no earlier run like them to time them by yet)", waiting.len())
    } else if unknown > 0 {
        format!(
            "; {} more queued: at least {} ({unknown} not like any earlier run)",
            waiting.len(),
            crate::estimate::human(total)
        )
    } else {
        format!("; {} more queued: about {} from earlier runs' pace", waiting.len(), crate::estimate::human(total))
    };
    Ok(Place { position, queue })
}

/// The line that says how a run ended in this worker.
fn end_line(end: &RunEnd) -> String {
    match (&end.error, end.status) {
        (Some(e), _) => format!("✗ {} {}: {}", printable(&end.name), end.status, printable(e)),
        (None, Status::Done) => format!("✓ {} done", printable(&end.name)),
        (None, status) => format!("… {} {status}", printable(&end.name)),
    }
}

/// Removes the files of the run's folder that no record refers to (see
/// [`retention`]): in the home (`local`) and, when it is elsewhere, in the
/// artifact store.
async fn collect_garbage(store: &Store, local: &Artifacts, artifacts: &Artifacts, run_id: i64, rel_dir: &str) {
    let ckpts = match store.checkpoints(run_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cleaning {rel_dir}: {e}");
            return;
        }
    };
    let places = if artifacts.is_home() { vec![local] } else { vec![local, artifacts] };
    for place in places {
        let cleaned = match place.list(rel_dir).await {
            Ok(present) => {
                let removed = retention::unreferenced(&present, &ckpts);
                place.delete(rel_dir, &removed).await.map(|()| removed)
            }
            Err(e) => Err(e),
        };
        match cleaned {
            Ok(removed) if !removed.is_empty() => {
                tracing::debug!(
                    run = run_id,
                    ?removed,
                    "unreferenced checkpoint files removed from {}",
                    place.location()
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cleaning {rel_dir} in {}: {e}", place.location()),
        }
    }
}

/// A write about the run that the store refused, as the trainer is told; a
/// database that stayed unreachable is kept in `lost` (the worker stops).
fn refused_by_store(e: StoreError, lost: &mut Option<StoreError>) -> SinkError {
    let msg = e.to_string();
    if matches!(e, StoreError::Unreachable { .. }) {
        *lost = Some(e);
        SinkError::Unavailable(msg)
    } else {
        SinkError::Refused(msg)
    }
}

/// Why a checkpoint could not be kept in the artifact store, as the trainer
/// is told: the store itself failing is [`SinkError::Unavailable`].
fn not_kept(artifacts: &Artifacts, e: &ArtifactError) -> SinkError {
    let msg = format!("keeping the checkpoint in {}: {e}", artifacts.location());
    if e.is_unavailable() {
        SinkError::Unavailable(msg)
    } else {
        SinkError::Refused(msg)
    }
}

/// The artifact store failed under a run: not the run's doing, and every
/// next run would fail the same way. The run goes back to `interrupted` (it
/// resumes from its last recorded checkpoint, which the store holds) and the
/// worker stops with the queue as it is.
async fn stop_for_artifacts(
    patience: &Patience<'_>,
    lease: &crate::store::Lease,
    run: &ClaimedRun,
    artifacts: &Artifacts,
    why: String,
    log: &mut log::RunLog,
) -> Result<RunEnd, WorkerError> {
    tracing::warn!(run = run.id, "{why}");
    log.line(&format!("  the artifact store failed: {why}"));
    match patience.record_stop(lease, None, Status::Interrupted).await {
        Ok(()) | Err(StoreError::LostOwnership { .. }) => {}
        Err(other) => return Err(other.into()),
    }
    let end = RunEnd {
        id: run.id,
        name: run.name.clone(),
        status: Status::Interrupted,
        error: None,
        stops_worker: Some(format!(
            "the artifact store {} failed ({why}); once it can be written again, `sweep worker` resumes `{}` \
             from its last recorded checkpoint and goes on with the queue",
            artifacts.location(),
            printable(&run.name)
        )),
    };
    log.line(&end_line(&end));
    Ok(end)
}

/// Puts a checkpoint's files into the artifact store: before its record.
async fn put_checkpoints(artifacts: &Artifacts, checkpoints: &[&CheckpointRecord]) -> Result<(), ArtifactError> {
    let mut done: Vec<&str> = Vec::new();
    for c in checkpoints {
        for rel in [c.path.as_str(), c.state_path.as_str()] {
            if !done.contains(&rel) {
                artifacts.put(rel).await?;
                done.push(rel);
            }
        }
    }
    Ok(())
}

/// A dataset as the worker keeps it for its runs.
#[derive(Clone)]
struct Loaded {
    data: Arc<data::Dataset>,
    /// [`data::Dataset::fingerprint`], recorded with each run.
    fingerprint: String,
}

/// Loads (decodes) a dataset and takes its fingerprint, logging its size and
/// the time it took.
fn load_dataset(spec: &crate::spec::DatasetSpec) -> Result<Loaded, data::DataError> {
    let t = std::time::Instant::now();
    let d = data::load(spec)?;
    let fingerprint = d.fingerprint();
    let name = spec.path.clone().unwrap_or_else(|| format!("{:?}", spec.name).to_lowercase());
    tracing::info!(
        "dataset {name}: {} training and {} test images, {} classes, decoded in {:.1}s, fingerprint {}",
        d.train.len(),
        d.test.len(),
        d.classes.len(),
        t.elapsed().as_secs_f64(),
        &fingerprint[..12]
    );
    if !d.skipped.is_empty() {
        tracing::warn!(
            "dataset {name}: {} unreadable image(s) left out (`skip_unreadable`): {}",
            d.skipped.len(),
            data::folder::name_some(&d.skipped)
        );
    }
    Ok(Loaded { data: Arc::new(d), fingerprint })
}

#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
async fn execute(
    store: &Store,
    patience: &Patience<'_>,
    (local, artifacts): (&Artifacts, &Artifacts),
    opts: &WorkerOptions,
    worker: &str,
    device: &candle_core::Device,
    stop: &Arc<AtomicBool>,
    datasets: &mut HashMap<String, Loaded>,
    run: ClaimedRun,
    place: &Place,
) -> Result<RunEnd, WorkerError> {
    let lease = run.lease();
    let home = store.home().to_path_buf();
    let disk_full = |full: bool| {
        full.then(|| {
            format!(
                "the disk holding {} is full: free space, then `sweep worker` goes on with the queue",
                home.display()
            )
        })
    };
    let fail = |error: String, stops_worker: Option<String>| RunEnd {
        id: run.id,
        name: run.name.clone(),
        status: Status::Failed,
        // A decoder's or the OS's message may end in a newline, which the one-line report would
        // show escaped.
        error: Some(error.trim_end().to_owned()),
        stops_worker,
    };
    let config: RunConfig = match serde_json::from_str(&run.config_json) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("the stored configuration does not parse: {e}");
            let end = fail(msg, None);
            patience.finish(&lease, Status::Failed, end.error.as_deref()).await?;
            return Ok(end);
        }
    };
    let rel_dir = run_dir(&run.key);
    let abs_dir = home.join(&rel_dir);
    let ckpts = patience.call("reading the run's checkpoints", || store.checkpoints(run.id)).await?;
    let latest = ckpts.iter().find(|c| c.kind == CheckpointKind::Latest).cloned();
    let setup = std::fs::create_dir_all(&abs_dir).and_then(|()| {
        checkpoint::write_text_atomic(
            &abs_dir.join("config.json"),
            &serde_json::to_string_pretty(&config).unwrap_or_default(),
        )
    });
    if let Err(e) = setup {
        let full = checkpoint::is_disk_full(&e);
        let msg = if full {
            train::TrainError::DiskFull { path: abs_dir.join("config.json") }.to_string()
        } else {
            format!("{}: {e}", abs_dir.display())
        };
        let end = fail(msg, disk_full(full));
        patience.finish(&lease, Status::Failed, end.error.as_deref()).await?;
        return Ok(end);
    }
    if let Err(e) = artifacts.put(&format!("{rel_dir}/config.json")).await {
        tracing::warn!("keeping config.json in {}: {e}", artifacts.location());
    }
    // A run resumed on another machine: its latest checkpoint from the artifact store.
    if let Some(c) = &latest {
        for (rel, sha) in [(&c.path, &c.sha256), (&c.state_path, &c.state_sha256)] {
            if let Err(e) = artifacts.fetch(rel, sha).await {
                if e.is_unavailable() {
                    let why = format!("fetching the checkpoint to resume from: {e}");
                    return stop_for_artifacts(
                        patience,
                        &lease,
                        &run,
                        artifacts,
                        why,
                        &mut log::RunLog::open(&abs_dir),
                    )
                    .await;
                }
                let msg = format!(
                    "fetching the checkpoint to resume from: {e}; `sweep retry {} --from-scratch` trains it again \
                     from epoch 1",
                    &run.key[..10]
                );
                let end = fail(msg, None);
                patience.finish(&lease, Status::Failed, end.error.as_deref()).await?;
                return Ok(end);
            }
        }
    }
    collect_garbage(store, local, artifacts, run.id, &rel_dir).await;
    // Earlier attempts' log lines, written on other machines: this attempt appends to them.
    let log_rel = format!("{rel_dir}/{}", log::LOG_FILE);
    if let Err(e) = artifacts.restore(&log_rel).await {
        tracing::debug!("the run's earlier log in {}: {e}", artifacts.location());
    }
    let mut log = log::RunLog::open(&abs_dir);
    let epochs = config.epochs as u64;
    let asha = patience.call("reading the run's search", || store.asha_context(run.id)).await?;
    if let (Some(ctx), Some(c)) = (&asha, &latest) {
        // Resumed at a rung (its worker died before ending it, or a promotion
        // was overtaken by better runs): ASHA decides again from the record.
        let stays = patience
            .call("asking ASHA whether the run stays stopped", || search::stays_stopped(store, ctx, &lease, c, epochs))
            .await?;
        if let Some(note) = stays {
            log.line(&format!("  {note}"));
            let end =
                RunEnd { id: run.id, name: run.name.clone(), status: Status::Done, error: None, stops_worker: None };
            log.line(&end_line(&end));
            patience.call("recording the run's note", || store.set_note(&lease, &note)).await?;
            patience.finish(&lease, Status::Done, None).await?;
            return Ok(end);
        }
    }

    let keep = config.keep;
    let resuming = latest.is_some();
    let batch_size = config.batch_size;
    let ds_key = serde_json::to_string(&config.dataset).unwrap_or_default();
    let Loaded { data: dataset, fingerprint } = match datasets.get(&ds_key) {
        Some(d) => d.clone(),
        None => match load_dataset(&config.dataset) {
            Ok(d) => {
                datasets.insert(ds_key, d.clone());
                d
            }
            Err(e) => {
                let msg = train::TrainError::from(e).to_string();
                let end = fail(msg, None);
                log.line(&end_line(&end));
                patience.finish(&lease, Status::Failed, end.error.as_deref()).await?;
                return Ok(end);
            }
        },
    };
    let recorded = patience
        .call("recording the dataset", || store.set_data(&lease, &dataset.classes, &fingerprint, resuming))
        .await?;
    if let Some(before) = recorded {
        // Its epochs so far saw other data: going on would mix two datasets in one run.
        let end = fail(
            format!(
                "the dataset changed since this run started: its first epochs were trained on data with \
                 fingerprint {}, the data is now {} (images added, removed, edited or moved to another class); \
                 resuming would mix the two in one run: restore the data, or `sweep retry {} --from-scratch` \
                 trains it again on the data as it is now",
                &before[..before.len().min(12)],
                &fingerprint[..12],
                &run.key[..10]
            ),
            None,
        );
        log.line(&end_line(&end));
        patience.finish(&lease, Status::Failed, end.error.as_deref()).await?;
        return Ok(end);
    }
    let how = match &latest {
        Some(c) if c.step > 0 => format!(", resuming epoch {} at batch {}", c.epoch + 1, c.step),
        Some(c) => format!(", resuming after epoch {}", c.epoch),
        None => String::new(),
    };
    let start = format!("▶ {} ({}, attempt {}{how})", printable(&run.name), &run.key[..10], run.attempts);
    if opts.verbose {
        let (i, n) = place.position;
        eprintln!("{start}: run {i} of {n}{}", place.queue);
    }
    log.line(&format!("{start} on {} by worker {worker}", device_label(device)));
    if !dataset.skipped.is_empty() {
        // Every one of them, so that the log says exactly what the run did not see.
        log.line(&format!(
            "  {} unreadable image(s) left out of the dataset (`skip_unreadable`):",
            dataset.skipped.len()
        ));
        for s in &dataset.skipped {
            log.line(&format!("    {s}"));
        }
    }

    let progress = Arc::new(Progress::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel::<Msg>(1);
    let handle = {
        let (progress, stop, cancel, device) = (progress.clone(), stop.clone(), cancel.clone(), device.clone());
        let (name, home, rel_dir, verbose) = (run.name.clone(), home.clone(), rel_dir.clone(), opts.verbose);
        let position = place.position;
        std::thread::Builder::new()
            .name(format!("train-{}", run.id))
            .stack_size(train::threads::STACK_BYTES)
            .spawn(move || {
                let req = TrainRequest {
                    config: &config,
                    name: &name,
                    dataset: &dataset,
                    home: &home,
                    run_dir: &rel_dir,
                    resume: latest.as_ref(),
                    device: &device,
                    stop: &stop,
                    cancel: &cancel,
                    progress: &progress,
                    verbose,
                    position: Some(position),
                };
                train::train(&req, &mut ChannelSink(tx))
            })
            .map_err(WorkerError::Thread)?
    };

    let mut beat = tokio::time::interval(opts.heartbeat_every);
    // The database stayed unreachable under a write: the worker stops once the
    // trainer has (the run stays `running`; the next worker resumes it).
    let mut store_lost: Option<StoreError> = None;
    let mut beat_failing = false;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => break,
                Some(Msg::Epoch { rec, latest, best, reply }) => {
                    log.line(&rec.summary_line(&run.name, epochs, best.is_some()));
                    // The files first, complete in the artifact store; then the row.
                    let kept: Vec<&CheckpointRecord> = std::iter::once(&latest).chain(best.as_ref()).collect();
                    let r = match put_checkpoints(artifacts, &kept).await {
                        Ok(()) => {
                            let rung_of = asha
                                .as_ref()
                                .filter(|c| c.settings.asha().is_rung(rec.epoch as u64, epochs))
                                .map(|c| c.sweep_id);
                            patience
                                .record_epoch(&lease, &rec, &latest, best.as_ref(), rung_of)
                                .await
                                .map_err(|e| refused_by_store(e, &mut store_lost))
                        }
                        Err(e) => Err(not_kept(artifacts, &e)),
                    };
                    tracing::info!(run = run.id, epoch = rec.epoch, test_acc = rec.test_acc, best = best.is_some(), ok = r.is_ok(), "epoch recorded");
                    let mut verdict = Verdict::Continue;
                    if r.is_ok() {
                        collect_garbage(store, local, artifacts, run.id, &rel_dir).await;
                        if let Some(ctx) = &asha {
                            verdict = search::after_epoch(store, ctx, &lease, rec.epoch as u64, epochs, &mut log, opts.verbose).await;
                        }
                        if let Err(e) = artifacts.put(&log_rel).await {
                            tracing::debug!("keeping the run's log in {}: {e}", artifacts.location());
                        }
                    }
                    let _ = reply.send(r.map(|()| verdict));
                }
                Some(Msg::Interrupted { latest, reply }) => {
                    let r = match put_checkpoints(artifacts, &[&latest]).await {
                        Err(e) => Err(not_kept(artifacts, &e)),
                        Ok(()) => {
                            let status =
                                if cancel.load(Ordering::SeqCst) { Status::Cancelled } else { Status::Interrupted };
                            patience
                                .record_stop(&lease, Some(&latest), status)
                                .await
                                .map_err(|e| refused_by_store(e, &mut store_lost))
                        }
                    };
                    if r.is_ok() {
                        collect_garbage(store, local, artifacts, run.id, &rel_dir).await;
                    }
                    let _ = reply.send(r);
                }
            },
            _ = beat.tick() => {
                let step = progress.step.load(Ordering::Relaxed);
                let steps = progress.steps_per_epoch.load(Ordering::Relaxed);
                let beat_result = store.heartbeat(&lease, step, steps).await;
                if beat_failing && beat_result.is_ok() {
                    beat_failing = false;
                    tracing::warn!("heartbeat: the database answers again");
                }
                match beat_result {
                    Ok(true) if !cancel.swap(true, Ordering::SeqCst) => {
                        tracing::info!(run = run.id, "cancel requested: stopping after this batch");
                        log.line("cancel requested (`sweep cancel`): stopping after this batch");
                        if opts.verbose {
                            eprintln!("  {}: cancel requested: stopping after this batch", printable(&run.name));
                        }
                    }
                    Err(e) if e.is_unavailable() => {
                        patience.saw_failure();
                        // Said once per outage: the writes that wait for the database say more.
                        if !beat_failing {
                            beat_failing = true;
                            tracing::warn!("heartbeat: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("heartbeat: {e}"),
                    Ok(_) => {}
                }
            }
        }
    }
    let joined = tokio::task::spawn_blocking(move || handle.join()).await;
    let outcome = match joined {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(std::string::ToString::to_string));
            Err(train::TrainError::Panicked(what.unwrap_or_default()))
        }
        Err(e) => Err(train::TrainError::Panicked(format!("the trainer thread was lost: {e}"))),
    };
    tracing::info!(run = run.id, outcome = ?outcome.as_ref().map_err(ToString::to_string), "run ended");
    if let Some(lost) = store_lost {
        let stopped = WorkerError::UnreachableUnderRun { run: printable(&run.name).into_owned(), source: lost };
        log.line(&format!("  {stopped}"));
        return Err(stopped);
    }
    let ended = match outcome {
        Ok(Outcome::Finished | Outcome::StoppedEarly { .. }) => retention::RunEnd::Complete,
        // Stopped by ASHA: its latest checkpoint stays, for a promotion.
        _ => retention::RunEnd::Resumable,
    };
    for action in retention::at_run_end(keep, ended) {
        match action {
            retention::Action::DropLatest => {
                patience.call("forgetting the latest checkpoint", || store.drop_latest(&lease)).await?;
                collect_garbage(store, local, artifacts, run.id, &rel_dir).await;
            }
        }
    }
    let end = match outcome {
        Ok(Outcome::Finished) => {
            let end =
                RunEnd { id: run.id, name: run.name.clone(), status: Status::Done, error: None, stops_worker: None };
            // The log's last line before the status: `sweep logs -f` stops at the status.
            log.line(&end_line(&end));
            patience.finish(&lease, Status::Done, None).await?;
            end
        }
        Ok(Outcome::StoppedEarly { note, .. } | Outcome::Halted { note, .. }) => {
            tracing::info!(run = run.id, "{note}");
            if opts.verbose {
                eprintln!("  {}: {note}", printable(&run.name));
            }
            log.line(&format!("  {note}"));
            let end =
                RunEnd { id: run.id, name: run.name.clone(), status: Status::Done, error: None, stops_worker: None };
            log.line(&end_line(&end));
            patience.call("recording the run's note", || store.set_note(&lease, &note)).await?;
            patience.finish(&lease, Status::Done, None).await?;
            end
        }
        Ok(Outcome::Interrupted) => {
            let status = if cancel.load(Ordering::SeqCst) { Status::Cancelled } else { Status::Interrupted };
            let end = RunEnd { id: run.id, name: run.name.clone(), status, error: None, stops_worker: None };
            log.line(&end_line(&end));
            end
        }
        Err(train::TrainError::Sink(SinkError::Unavailable(why))) => {
            return stop_for_artifacts(patience, &lease, &run, artifacts, why, &mut log).await;
        }
        Err(e) => {
            let msg = match &e {
                // The next run may fit: the sweep goes on, this run says what to change.
                train::TrainError::OutOfMemory(cause) => {
                    train::device::out_of_memory_message(&cause.to_string(), batch_size, &device_label(device))
                }
                // Resuming would fail the same way every time: say how to start over.
                train::TrainError::Checkpoint { .. } if resuming => format!(
                    "{e}; the run cannot resume from it: `sweep retry {} --from-scratch` trains it again from epoch 1",
                    &run.key[..10]
                ),
                other => other.to_string(),
            };
            // A decoder's or the OS's message may end in a newline, which the one-line report
            // would show escaped.
            let msg = msg.trim_end().to_owned();
            let status =
                if matches!(e, train::TrainError::Diverged { .. }) { Status::Diverged } else { Status::Failed };
            let stops_worker = disk_full(matches!(e, train::TrainError::DiskFull { .. }));
            let end = RunEnd { id: run.id, name: run.name.clone(), status, error: Some(msg), stops_worker };
            log.line(&end_line(&end));
            match patience.finish(&lease, status, end.error.as_deref()).await {
                Ok(()) | Err(StoreError::LostOwnership { .. }) => {}
                Err(other) => return Err(other.into()),
            }
            end
        }
    };
    // The log, as the run ends, beside its checkpoints (best effort: the records are committed).
    if let Err(e) = artifacts.put(&log_rel).await {
        tracing::debug!("keeping the run's log in {}: {e}", artifacts.location());
    }
    Ok(end)
}
