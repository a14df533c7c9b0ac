//! One function per subcommand; `run` dispatches. anyhow lives here and in main.

mod eval;
mod export;
mod logs;
mod manage;
mod plan;
mod query;
mod signals;
mod slurm;
mod store;
mod submit;
mod workers;

use crate::cli::{Cli, Command, GpuList, StoreCommand};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use sweep::artifacts::ArtifactLocation;
use sweep::spec::DeviceChoice;
use sweep::store::{Location, Status, Store};
use sweep::worker::{self, WorkerOptions, WorkerReport};

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbose = !cli.quiet;
    let home =
        Home { store: Location::or_default(cli.store.as_ref(), &cli.home), artifacts: cli.artifacts, dir: cli.home };
    match cli.command {
        Command::Submit { file, queue_only, device, format, max_runs, set, rerun } => {
            let options = options(max_runs, set);
            let how = submit::How { queue_only, device, format, rerun, verbose };
            submit::submit(&home, &file, &options, &how).await
        }
        Command::Plan { file, format, max_runs, set, device, no_estimate } => {
            let options = options(max_runs, set);
            plan::plan(&file, &options, format, &home, device, !no_estimate, verbose).await
        }
        Command::Eval { model, weights, data, sweep, augment, device, format } => eval::eval(
            model.as_deref(),
            &weights,
            data.as_deref(),
            sweep.as_deref(),
            augment.as_deref(),
            device,
            format,
        ),
        Command::Worker { device, gpus, workers, max_runs, exit_when_empty } => {
            let child = workers::ChildArgs { max_runs, exit_when_empty, verbose };
            if gpus.is_some() || workers.is_some_and(|n| n > 1) {
                let ids = match gpus {
                    None => None,
                    Some(GpuList::Some(ids)) => Some(ids),
                    Some(GpuList::All) => {
                        let n = sweep::train::device::cuda_device_count();
                        if n == 0 {
                            anyhow::bail!(
                                "--gpus all: no GPU found ({}); on the CPU use --workers N",
                                sweep::train::device::why_cpu()
                            );
                        }
                        Some((0..n).collect())
                    }
                };
                let slots = workers::slots(ids.as_deref(), usize::from(workers.unwrap_or(1)), device);
                return workers::supervise(&home, slots, &child).await;
            }
            let store = home.open().await?;
            let drained = drain(&store, home.artifacts.clone(), device, &child).await?;
            if verbose {
                eprintln!("{}", summary_line(&drained.report));
            }
            Ok(drained.exit_code())
        }
        Command::Slurm {
            file,
            partition,
            gpus_per_task,
            cpus_per_task,
            time,
            array,
            output,
            submit,
            max_runs,
            set,
        } => {
            let options = options(max_runs, set);
            let job = slurm::Job { partition, gpus_per_task, cpus_per_task, time, array, output, submit };
            slurm::slurm(&home, &file, &options, &job, verbose).await
        }
        Command::Store { command: StoreCommand::Copy { from, to, format } } => {
            store::copy(&home.dir, &from, &to, format).await
        }
        Command::Status { sweep, watch, format } => query::status(&home, &sweep, watch, format).await,
        Command::Results { sweep, filter, sort, group_by, columns, all_params, limit, importance, format } => {
            let q = sweep::report::query::Query {
                wheres: filter.wheres,
                statuses: filter.status,
                sort,
                group_by,
                columns,
                all_params,
                limit,
                also: Vec::new(),
            };
            query::results(&home, &sweep, &q, importance, format).await
        }
        Command::Show { run, format } => query::show(&home, &run, format).await,
        Command::Retry { runs, failed, from_scratch, format } => {
            manage::retry(&home, &runs, failed, from_scratch, format).await
        }
        Command::Cancel { runs, sweep, format } => manage::cancel(&home, &runs, &sweep, format).await,
        Command::Rm { runs, sweep, yes, format } => manage::rm(&home, &runs, &sweep, yes, format).await,
        Command::Prune { dry_run, keep, format } => manage::prune(&home, dry_run, keep.is_some(), format).await,
        Command::Logs { run, follow } => logs::logs(&home, &run, follow).await,
        Command::Export { dir, format, sweep, filter } => {
            let q =
                sweep::report::query::Query { wheres: filter.wheres, statuses: filter.status, ..Default::default() };
            export::export(&home, &sweep, &q, format, &dir).await
        }
        Command::Report { sweep, filter, format, output } => {
            let q =
                sweep::report::query::Query { wheres: filter.wheres, statuses: filter.status, ..Default::default() };
            let format =
                crate::cli::ReportFormat::resolve(format, output.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
            query::report(&home, &sweep, &q, format, output.as_deref()).await
        }
    }
}

/// What `submit` and `plan` say of a GPU this build cannot use, or `None`.
fn cuda_missing(device: sweep::spec::DeviceChoice) -> Option<String> {
    (device.is_cuda() && !candle_core::utils::cuda_is_available()).then(|| {
        format!(
            "error: device {device}: this binary was built without CUDA (rebuild with `--features cuda`, or pass \
             --device cpu)"
        )
    })
}

/// The file's image folder as this machine sees it: its layout (counted
/// without reading an image), or what is wrong at the file's `dataset` line: it
/// does not exist here, its layout is bad (split or class folders, an empty
/// class), or its validation folder does not fit the runs' metric and
/// `val_split`. `submit` refuses the file (this machine would train it);
/// `--queue-only` and `slurm` only warn (workers may see a path this machine
/// does not, a node's scratch copy); `plan` says so. `Ok(None)`: not a folder,
/// or an archive (read whole only when a run loads it).
fn dataset_check(
    spec: &sweep::spec::SweepSpec,
) -> Result<Option<sweep::train::data::folder::Layout>, sweep::spec::SpecError> {
    use sweep::train::data::{folder, folder_options};
    let Some(ds) = spec.runs.first().map(|r| &r.config.dataset) else { return Ok(None) };
    let Some(path) = ds.path.as_deref().filter(|_| ds.name == sweep::spec::DatasetName::Folder) else {
        return Ok(None);
    };
    if !Path::new(path).exists() {
        return Err(spec.dataset_error(format!("`{path}`: no such folder or archive on this machine")));
    }
    let layout = folder::scan(Path::new(path), &folder_options(ds)).map_err(|e| spec.dataset_error(e.to_string()))?;
    if let Some(l) = &layout {
        for r in &spec.runs {
            let c = &r.config;
            let needs = c.metric.needs_validation()
                || c.early_stop.as_ref().and_then(|e| e.metric).is_some_and(sweep::spec::Metric::needs_validation);
            let why = match (l.val.is_some(), c.val_split > 0.0) {
                (true, true) => {
                    "has a validation folder of its own and the run sets val_split: leave out val_split \
                                 to validate on the folder"
                }
                (false, false) if needs => {
                    "has no validation folder beside its test folder, and the run's metric \
                                           needs a validation split: set val_split (e.g. 0.1)"
                }
                _ => continue,
            };
            return Err(spec.dataset_error(format!("`{path}` {why} (run `{}`)", r.name)));
        }
    }
    Ok(layout)
}

/// The home folder (run folders, logs) and the database, as the commands open it.
pub struct Home {
    /// The folder.
    pub dir: PathBuf,
    /// The database (`--store`, else sweep.db in the folder).
    pub store: Location,
    /// Where checkpoints are kept (`--artifacts`; None: the folder).
    pub artifacts: Option<ArtifactLocation>,
}

impl std::ops::Deref for Home {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.dir
    }
}

impl Home {
    /// Opens the database (creating a SQLite file if needed).
    pub async fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::connect(&self.dir, &self.store).await?)
    }

    /// Whether there is a database to read (a server's is always there).
    pub fn has_store(&self) -> bool {
        match &self.store {
            Location::Sqlite(path) => path.exists(),
            Location::Postgres(_) => true,
        }
    }
}

/// How `submit` and `plan` read a sweep file.
fn options(max_runs: usize, overrides: Vec<sweep::spec::Override>) -> sweep::spec::Options {
    sweep::spec::Options {
        limits: sweep::spec::Limits { max_runs },
        overrides,
        check: Some(|c| sweep::train::check(c).map_err(|e| e.to_string())),
        trial: None,
    }
}

/// What a worker run did, and what its exit code is.
pub struct Drained {
    /// The worker's report.
    pub report: WorkerReport,
    stop: signals::Stop,
}

impl Drained {
    /// 128 + the signal if a signal stopped it (130 for Ctrl-C, 143 for
    /// SIGTERM), 1 if a run failed or diverged or the worker stopped with the
    /// queue left (a full disk, an artifact store that cannot be written),
    /// else 0.
    pub fn exit_code(&self) -> ExitCode {
        if self.report.interrupted {
            ExitCode::from(self.stop.exit_code())
        } else if self.report.stopped.is_some()
            || self.report.runs.iter().any(|r| matches!(r.status, Status::Failed | Status::Diverged))
        {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// Runs the worker until the queue is empty, stopping cleanly on Ctrl-C,
/// SIGTERM, SIGUSR1 or SIGHUP (see [`signals`]).
pub async fn drain(
    store: &Store,
    artifacts: Option<ArtifactLocation>,
    device: DeviceChoice,
    how: &workers::ChildArgs,
) -> anyhow::Result<Drained> {
    let stop = signals::install();
    let opts = WorkerOptions {
        device,
        stale_after: sweep::env::STALE_SECS.seconds(60),
        heartbeat_every: sweep::env::HEARTBEAT_SECS.seconds(2),
        max_worker_deaths: sweep::env::MAX_WORKER_DEATHS.parse().unwrap_or(3),
        verbose: how.verbose,
        max_runs: how.max_runs,
        exit_when_empty: how.exit_when_empty,
        artifacts,
        store_wait: sweep::env::STORE_WAIT_SECS.seconds(600),
    };
    let report = worker::work(store, &opts, stop.flag.clone()).await?;
    store.close().await;
    Ok(Drained { report, stop })
}

/// One line about what a worker did.
pub fn summary_line(report: &WorkerReport) -> String {
    let count = |s: Status| report.runs.iter().filter(|r| r.status == s).count();
    let mut line = format!(
        "worker: {} run(s) handled: {} done, {} failed",
        report.runs.len(),
        count(Status::Done),
        count(Status::Failed)
    );
    if count(Status::Diverged) > 0 {
        let _ = write!(line, ", {} diverged", count(Status::Diverged));
    }
    if report.recovered > 0 {
        let _ = write!(line, "; {} abandoned run(s) recovered", report.recovered);
    }
    if let Some(why) = &report.stopped {
        let _ = write!(line, "; stopped: {why}");
    }
    if report.interrupted {
        line += "; interrupted: `sweep worker` resumes where it stopped";
    }
    line
}
