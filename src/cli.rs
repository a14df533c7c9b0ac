//! Command-line arguments (clap derive). Doc comments are the help text; no logic here.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use sweep::report::ResultsFormat;
use sweep::spec::DeviceChoice;

/// Run image-classification experiment sweeps on candle, recorded in SQLite.
#[derive(Debug, Parser)]
#[command(name = "sweep", version, about, after_help = sweep::env::help())]
pub struct Cli {
    /// Folder holding the database (sweep.db) and run checkpoints.
    #[arg(long, global = true, env = sweep::env::HOME.name, default_value = ".sweep")]
    pub home: PathBuf,
    /// The database: a SQLite file (default: sweep.db in --home) or a
    /// PostgreSQL URL (postgres://USER:PASSWORD@HOST/DB) that workers on many
    /// machines share.
    #[arg(long, global = true, env = sweep::env::STORE.name, value_name = "URL")]
    pub store: Option<sweep::store::Location>,
    /// Where checkpoints are kept so that any worker can resume any run: a
    /// folder (default: the home; on a cluster, a shared filesystem) or
    /// s3://BUCKET/PREFIX (endpoint and credentials from the AWS_* variables).
    #[arg(long, global = true, env = sweep::env::ARTIFACTS.name, value_name = "URL")]
    pub artifacts: Option<sweep::artifacts::ArtifactLocation>,
    /// No progress bars or per-epoch lines.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand a sweep file, queue its runs and train them (skipping finished ones).
    ///
    /// While a worker of this machine is training on the same device, the runs
    /// are queued for it instead of starting a second one beside it (`sweep
    /// worker` starts one anyway).
    Submit {
        /// The sweep file (TOML).
        file: PathBuf,
        /// Only queue; `sweep worker` trains later.
        #[arg(long)]
        queue_only: bool,
        /// Where to train: cpu, auto (GPU if available) or cuda:N [default: the
        /// sweep file's `device`, else auto].
        #[arg(long, env = sweep::env::DEVICE.name)]
        device: Option<DeviceChoice>,
        /// Output format of the submission summary and the final results.
        #[arg(long, value_enum, default_value = "table")]
        format: SubmitFormat,
        /// Refuse a sweep file that expands to more runs than this.
        #[arg(long, default_value_t = sweep::spec::limits::DEFAULT_MAX_RUNS)]
        max_runs: usize,
        /// Override a value in every run: KEY=VALUE replaces it, KEY=V1,V2,...
        /// adds an axis over all the file's runs (repeatable; values are TOML).
        #[arg(long = "set", value_name = "KEY=VALUE[,VALUE...]")]
        set: Vec<sweep::spec::Override>,
        /// Train runs that are already done again, as new repeats (the next
        /// unused seed), instead of skipping them.
        #[arg(long)]
        rerun: bool,
    },
    /// Show the runs a sweep file expands to, without queueing anything.
    Plan {
        /// The sweep file (TOML).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: PlanFormat,
        /// Refuse a sweep file that expands to more runs than this.
        #[arg(long, default_value_t = sweep::spec::limits::DEFAULT_MAX_RUNS)]
        max_runs: usize,
        /// Override a value in every run: KEY=VALUE replaces it, KEY=V1,V2,...
        /// adds an axis over all the file's runs (repeatable; values are TOML).
        #[arg(long = "set", value_name = "KEY=VALUE[,VALUE...]")]
        set: Vec<sweep::spec::Override>,
        /// Where the estimates are for: cpu, auto or cuda:N [default: the
        /// sweep file's `device`, else auto].
        #[arg(long, env = sweep::env::DEVICE.name)]
        device: Option<DeviceChoice>,
        /// No time estimates (they come from earlier runs in --home, else from a
        /// few timed training steps of each kind of run).
        #[arg(long)]
        no_estimate: bool,
    },
    /// Train queued and interrupted runs until the queue is empty.
    Worker {
        /// Where to train: cpu, auto (GPU if available) or cuda:N.
        #[arg(long, env = sweep::env::DEVICE.name, default_value = "auto")]
        device: DeviceChoice,
        /// One worker per GPU of this machine, each on its own device: a list
        /// (0,1,2,3) or `all`. Each worker's lines are prefixed with its device.
        #[arg(long, value_name = "LIST|all", conflicts_with = "workers")]
        gpus: Option<GpuList>,
        /// N workers on this machine (on --device; on the CPU the cores are
        /// shared out). Each worker's lines are prefixed with its number.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: Option<u16>,
        /// Stop after this many runs (each worker).
        #[arg(long, value_name = "N")]
        max_runs: Option<usize>,
        /// Exit as soon as nothing can be claimed, instead of waiting for runs
        /// whose worker has gone silent (batch jobs: Slurm arrays, Kubernetes Jobs).
        #[arg(long)]
        exit_when_empty: bool,
    },
    /// Queue a sweep and write a Slurm job-array script whose tasks are
    /// workers that pull runs until the queue is empty (--submit: sbatch it).
    Slurm {
        /// The sweep file (TOML).
        file: PathBuf,
        /// The partition (#SBATCH --partition).
        #[arg(long)]
        partition: Option<String>,
        /// GPUs per task: 0 trains on the CPU, 1 on the task's GPU, more: one
        /// worker per GPU of the task.
        #[arg(long, default_value_t = 1)]
        gpus_per_task: u32,
        /// CPU cores per task (#SBATCH --cpus-per-task).
        #[arg(long)]
        cpus_per_task: Option<u32>,
        /// Time limit of each task (#SBATCH --time); two minutes before it, Slurm
        /// signals the worker, which checkpoints and requeues the task.
        #[arg(long, default_value = "04:00:00")]
        time: String,
        /// Array size N, at most K tasks at once [default: one task per queued run].
        #[arg(long, value_name = "N[%K]")]
        array: Option<ArraySize>,
        /// Where to write the script [default: HOME/slurm/SWEEP.sbatch].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Submit it with sbatch and print the job id.
        #[arg(long)]
        submit: bool,
        /// Refuse a sweep file that expands to more runs than this.
        #[arg(long, default_value_t = sweep::spec::limits::DEFAULT_MAX_RUNS)]
        max_runs: usize,
        /// Override a value in every run (as submit's --set).
        #[arg(long = "set", value_name = "KEY=VALUE[,VALUE...]")]
        set: Vec<sweep::spec::Override>,
    },
    /// The database itself: copy one store into another.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Queued, running, done, failed and interrupted runs, with progress.
    Status {
        /// Only these sweeps' runs (repeatable).
        #[arg(long)]
        sweep: Vec<String>,
        /// Redraw every second until no run is queued or running (Ctrl-C exits).
        #[arg(long)]
        watch: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: StatusFormat,
    },
    /// One row per run: differing parameters, status, best epoch and metric, accuracies, time.
    Results {
        /// Only these sweeps' runs (repeatable).
        #[arg(long)]
        sweep: Vec<String>,
        #[command(flatten)]
        filter: Filter,
        /// Sort by these columns or parameters, comma-separated; `-name` for descending.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        sort: Vec<String>,
        /// One row per group of these parameters, with n, mean and std of the metrics.
        #[arg(long, value_delimiter = ',')]
        group_by: Vec<String>,
        /// Show these columns or parameters, in this order, comma-separated.
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// List every parameter, not only those that differ between the runs shown.
        #[arg(long)]
        all_params: bool,
        /// Only the first N rows, after sorting (`--sort -test_acc --limit 1`: the best run).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Which parameters matter instead of the runs: each differing parameter's main
        /// effect on the best metric and its rank correlation with it (as in `sweep report`).
        #[arg(long, conflicts_with_all = ["group_by", "columns", "sort", "limit", "all_params"])]
        importance: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ResultsFormat,
    },
    /// One run in full: configuration, every epoch, checkpoints, error.
    Show {
        /// The run: its id (or a unique prefix of it, at least 4 characters),
        /// SWEEP/NAME, or a NAME that is unique.
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: EvalFormat,
    },
    /// Evaluate weights (a checkpoint or a state_dict) on a dataset's test split:
    /// loss, top-1 and top-5 accuracy.
    Eval {
        /// The architecture, e.g. resnet18; the head and stem are read from the
        /// weights [default: the run's, for a sweep checkpoint].
        #[arg(long)]
        model: Option<String>,
        /// A .safetensors file (e.g. a sweep checkpoint) or a torch.save .pth state_dict.
        #[arg(long)]
        weights: PathBuf,
        /// The test split of: `synthetic`, `cifar10` or `cifar100` (found or downloaded as for a sweep),
        /// an image folder or archive (`test/<class>/…` or `val/<class>/…`), or a folder holding a CIFAR-10
        /// release.
        #[arg(long)]
        data: Option<String>,
        /// Take the dataset and the augmentation sets from this sweep file.
        #[arg(long)]
        sweep: Option<PathBuf>,
        /// Test-time augmentation set: none, normalize (CIFAR-10 mean/std), resize224, or a set of
        /// --sweep [default: for a sweep checkpoint, its run's test transforms (the config.json
        /// beside it), with its dataset; otherwise none].
        #[arg(long)]
        augment: Option<String>,
        /// Where to evaluate: cpu, auto or cuda:N.
        #[arg(long, env = sweep::env::DEVICE.name, default_value = "auto")]
        device: DeviceChoice,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: EvalFormat,
    },
    /// Queue failed, diverged, cancelled or interrupted runs again.
    ///
    /// They resume from their latest checkpoint; with --from-scratch their
    /// epochs and checkpoints are forgotten first (the way out of a missing or
    /// corrupt checkpoint, and the way to train a finished run again).
    Retry {
        /// The runs: ids (or unique prefixes), SWEEP/NAME, or unique names.
        #[arg(required_unless_present = "failed")]
        runs: Vec<String>,
        /// Every failed and diverged run.
        #[arg(long)]
        failed: bool,
        /// Train from epoch 1: drop the run's epochs and checkpoints.
        #[arg(long)]
        from_scratch: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ManageFormat,
    },
    /// Cancel queued runs; a running one stops after its current batch,
    /// checkpointed (`sweep retry` queues it again and it resumes).
    Cancel {
        /// The runs: ids (or unique prefixes), SWEEP/NAME, or unique names.
        #[arg(required_unless_present = "sweep")]
        runs: Vec<String>,
        /// Every queued, interrupted or running run of this sweep (repeatable).
        #[arg(long)]
        sweep: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ManageFormat,
    },
    /// Delete runs (their epochs, checkpoints and files), or whole sweeps.
    ///
    /// With --sweep, a run another sweep also lists is kept for that sweep.
    /// Running runs are refused: cancel them first.
    Rm {
        /// The runs: ids (or unique prefixes), SWEEP/NAME, or unique names.
        #[arg(required_unless_present = "sweep")]
        runs: Vec<String>,
        /// Remove this sweep and the runs no other sweep lists (repeatable).
        #[arg(long)]
        sweep: Vec<String>,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(short, long)]
        yes: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ManageFormat,
    },
    /// Remove checkpoint files no record refers to and folders of removed
    /// runs, and report the space freed.
    Prune {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Also drop the latest checkpoint of finished runs that have a best one
        /// (as `keep = "best"` would have).
        #[arg(long, value_enum)]
        keep: Option<PruneKeep>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ManageFormat,
    },
    /// Print a run's log (runs/<key>/log.txt): what the worker said about it.
    Logs {
        /// The run: its id (or a unique prefix), SWEEP/NAME, or a unique name.
        run: String,
        /// Keep printing as the run goes on, until it ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Write the runs for TensorBoard (event files with the hparams table) or
    /// MLflow (a file store `mlflow ui` opens).
    Export {
        /// The folder to write (created; an earlier export there is refreshed).
        dir: PathBuf,
        /// Which format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Only these sweeps' runs (repeatable).
        #[arg(long)]
        sweep: Vec<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Export a side-by-side comparison of runs.
    Report {
        /// Only these sweeps' runs (repeatable).
        #[arg(long)]
        sweep: Vec<String>,
        #[command(flatten)]
        filter: Filter,
        /// Output format (default: from the -o file's extension, .md, .html,
        /// .csv or .json; else md).
        #[arg(long, value_enum)]
        format: Option<ReportFormat>,
        /// Write to this file instead of standard output (Markdown: the figures
        /// are written beside it as SVG files).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// `sweep store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every sweep, run, epoch and checkpoint record of one store into
    /// another (e.g. the SQLite file into PostgreSQL). Runs are matched by
    /// configuration, sweeps by name: copying again adds only what is new.
    Copy {
        /// The store to read (a SQLite file or a postgres:// URL).
        #[arg(long, value_name = "URL")]
        from: sweep::store::Location,
        /// The store to write (created and migrated if needed).
        #[arg(long, value_name = "URL")]
        to: sweep::store::Location,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: SubmitFormat,
    },
}

/// `--array N` or `--array N%K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArraySize {
    /// Tasks.
    pub tasks: u32,
    /// At most this many at once.
    pub at_once: Option<u32>,
}

impl std::str::FromStr for ArraySize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, k) = match s.split_once('%') {
            Some((n, k)) => (n, Some(k)),
            None => (s, None),
        };
        let count = |t: &str, what: &str| match t.trim().parse::<u32>() {
            Ok(v) if (1..=100_000).contains(&v) => Ok(v),
            _ => Err(format!("`{t}` is not a {what} from 1 to 100000 (--array N or N%K)")),
        };
        Ok(ArraySize { tasks: count(n, "task count")?, at_once: k.map(|k| count(k, "limit")).transpose()? })
    }
}

/// `--gpus 0,1,3` or `--gpus all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuList {
    /// Every GPU this machine has.
    All,
    /// These device numbers.
    Some(Vec<usize>),
}

impl std::str::FromStr for GpuList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "all" {
            return Ok(GpuList::All);
        }
        let mut ids = Vec::new();
        for part in s.split(',') {
            let n: usize = part
                .trim()
                .parse()
                .map_err(|_| format!("`{part}` is not a GPU number: use a list like 0,1,2 or `all`"))?;
            if ids.contains(&n) {
                return Err(format!("GPU {n} is listed twice"));
            }
            ids.push(n);
        }
        Ok(GpuList::Some(ids))
    }
}

/// Which runs `results` and `report` include.
#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// A condition on a column or parameter: NAME=VALUE, NAME!=VALUE, NAME>VALUE,
    /// NAME<VALUE, >=, <=, or NAME~TEXT (contains); repeatable, all must hold.
    #[arg(long = "where", value_name = "COND")]
    pub wheres: Vec<String>,
    /// Only runs with these statuses (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<sweep::store::Status>,
}

/// Formats of `eval` and `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalFormat {
    /// Lines for a person.
    Table,
    /// One JSON object.
    Json,
}

/// Formats of `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Aligned columns.
    Table,
    /// Every run's full configuration.
    Json,
}

/// Formats of `submit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubmitFormat {
    /// Lines and a results table.
    Table,
    /// One JSON object: what was queued, what the worker did, the results.
    Json,
}

/// Formats of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// Aligned columns.
    Table,
    /// JSON object.
    Json,
}

/// Formats of `retry`, `cancel`, `rm` and `prune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManageFormat {
    /// A line per run or file.
    Table,
    /// One JSON object: each run or file with what was done to it.
    Json,
}

/// Formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One folder per run with an event file: scalars per epoch, hparams.
    Tensorboard,
    /// An MLflow file store: experiments, runs, params, metrics, tags, artifacts.
    Mlflow,
}

/// What `prune --keep` keeps of a finished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PruneKeep {
    /// Only the best checkpoint.
    Best,
}

impl ReportFormat {
    /// The format `--format` gives, else the one the output file's extension
    /// names (`report.html`), else Markdown; an extension that names none is
    /// an error rather than a Markdown file called `report.pdf`.
    pub fn resolve(given: Option<ReportFormat>, output: Option<&std::path::Path>) -> Result<ReportFormat, String> {
        if let Some(f) = given {
            return Ok(f);
        }
        let Some(ext) = output.and_then(|p| p.extension()) else { return Ok(ReportFormat::Md) };
        match ext.to_string_lossy().to_ascii_lowercase().as_str() {
            "md" | "markdown" | "txt" => Ok(ReportFormat::Md),
            "html" | "htm" => Ok(ReportFormat::Html),
            "csv" => Ok(ReportFormat::Csv),
            "json" => Ok(ReportFormat::Json),
            other => Err(format!(
                "-o {}: no report format for `.{other}`: name the file .md, .html, .csv or .json, or give --format{}",
                output.map(|p| p.display().to_string()).unwrap_or_default(),
                if other == "pdf" { " (for a PDF, print the HTML report from a browser)" } else { "" }
            )),
        }
    }
}

/// Formats of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown tables.
    Md,
    /// One row per run and epoch.
    Csv,
    /// Everything, with every epoch.
    Json,
    /// One self-contained page: tables and SVG figures, no script, no network.
    Html,
}
