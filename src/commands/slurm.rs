//! `sweep slurm FILE`: queue the sweep, then write a plain sbatch job-array
//! script whose tasks are workers (`sweep worker --exit-when-empty`) that pull
//! runs until the queue is empty; `--submit` hands it to sbatch.
//!
//! Preemption and time limits: `#SBATCH --signal=B:USR1@120` makes Slurm
//! signal the batch shell two minutes before the limit (and `scancel --batch
//! --signal=USR1` does the same by hand). The script passes the signal to the
//! worker, which finishes its batch, checkpoints mid-epoch and hands its run
//! back to the queue (exit 138, or 143 for SIGTERM); the script then requeues
//! its own task (`--requeue`), which comes back as a worker and goes on with
//! the queue: whichever worker claims next resumes the handed-back run.

use super::submit::{self, How};
use super::Home;
use crate::cli::{ArraySize, SubmitFormat};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use sweep::store::Location;

/// The job's settings (the command's flags).
pub struct Job {
    /// #SBATCH --partition.
    pub partition: Option<String>,
    /// GPUs per task.
    pub gpus_per_task: u32,
    /// #SBATCH --cpus-per-task.
    pub cpus_per_task: Option<u32>,
    /// #SBATCH --time.
    pub time: String,
    /// #SBATCH --array.
    pub array: Option<ArraySize>,
    /// The script's path.
    pub output: Option<PathBuf>,
    /// sbatch it.
    pub submit: bool,
}

/// `'text'` for a POSIX shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn check_word(what: &str, value: &str, allowed: impl Fn(char) -> bool) -> anyhow::Result<()> {
    if value.is_empty() || !value.chars().all(allowed) {
        anyhow::bail!("--{what} `{value}`: not a valid Slurm value");
    }
    Ok(())
}

/// The script for `job` (pure: tested on its own).
pub fn script(
    sweep_name: &str,
    runs: usize,
    job: &Job,
    exe: &Path,
    home: &Path,
    store: &Location,
    artifacts: Option<&str>,
) -> String {
    let array = job.array.unwrap_or(ArraySize { tasks: runs.clamp(1, 100_000) as u32, at_once: None });
    let mut s = String::from("#!/bin/bash\n");
    let name: String =
        sweep_name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let _ = writeln!(s, "#SBATCH --job-name=sweep-{name}");
    match array.at_once {
        Some(k) => _ = writeln!(s, "#SBATCH --array=0-{}%{k}", array.tasks - 1),
        None => _ = writeln!(s, "#SBATCH --array=0-{}", array.tasks - 1),
    }
    if let Some(p) = &job.partition {
        let _ = writeln!(s, "#SBATCH --partition={p}");
    }
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    if job.gpus_per_task > 0 {
        let _ = writeln!(s, "#SBATCH --gpus-per-task={}", job.gpus_per_task);
    }
    if let Some(c) = job.cpus_per_task {
        let _ = writeln!(s, "#SBATCH --cpus-per-task={c}");
    }
    let _ = writeln!(s, "#SBATCH --time={}", job.time);
    s.push_str("#SBATCH --signal=B:USR1@120\n#SBATCH --requeue\n#SBATCH --open-mode=append\n");
    let _ = writeln!(s, "#SBATCH --output={}/slurm/logs/%x-%A_%a.out", home.display());
    let device = match job.gpus_per_task {
        0 => "--device cpu",
        1 => "--device cuda:0",
        _ => "--gpus all",
    };
    let _ = write!(
        s,
        r"
# Written by `sweep slurm` for the sweep `{sweep_name}` ({runs} run(s) to train). Each array task is a
# sweep worker: it claims runs from the queue one after another and exits when nothing is left.
# Edit freely (partition, time, modules); the queue is in the store, not in this script.
#
# Preemption / time limit: Slurm signals this shell (USR1, 120 s before the limit, or
# `scancel --batch --signal=USR1 JOB_TASK`); the worker finishes its batch, checkpoints and hands
# its run back to the queue (exit 138; 143 for SIGTERM), and this task requeues itself.
set -u
export SWEEP_HOME={home}
export SWEEP_STORE={store}
",
        home = quote(&home.display().to_string()),
        store = quote(&store.as_arg()),
    );
    if let Some(a) = artifacts {
        let _ = writeln!(s, "export SWEEP_ARTIFACTS={}", quote(a));
    }
    let _ = write!(
        s,
        r#"SWEEP={exe}

"$SWEEP" worker {device} --exit-when-empty &
worker=$!
trap 'kill -USR1 "$worker" 2>/dev/null' USR1
trap 'kill -TERM "$worker" 2>/dev/null' TERM
status=0
while :; do
    wait "$worker" && status=0 || status=$?
    # A trapped signal ends `wait` early: wait again until the worker itself has exited.
    kill -0 "$worker" 2>/dev/null || break
done
if [ "$status" -eq 138 ] || [ "$status" -eq 143 ]; then
    echo "sweep: the worker handed its run back (exit $status); requeueing this task"
    scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
    exit 0
fi
exit "$status"
"#,
        exe = quote(&exe.display().to_string()),
    );
    s
}

/// Queues FILE, writes the script, and submits it if asked.
pub async fn slurm(
    home: &Home,
    file: &Path,
    options: &sweep::spec::Options,
    job: &Job,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    check_word("time", &job.time, |c| c.is_ascii_digit() || c == ':' || c == '-')?;
    if let Some(p) = &job.partition {
        check_word("partition", p, |c| c.is_ascii_alphanumeric() || "-_.,".contains(c))?;
    }
    if let Location::Sqlite(path) = &home.store {
        eprintln!(
            "warning: the store is the SQLite file {}: every task must then run on this machine; for a cluster \
             use --store postgres://...",
            path.display()
        );
    }
    if home.artifacts.is_none() {
        eprintln!(
            "note: checkpoints stay in {} (no --artifacts): the tasks' nodes must share that folder",
            home.display()
        );
    }
    let how = How { queue_only: true, device: None, format: SubmitFormat::Table, rerun: false, verbose };
    let code = submit::submit(home, file, options, &how).await?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let spec = sweep::spec::load_with(file, options).map_err(|e| anyhow::anyhow!("{e}"))?;
    // One task per run still to train: queued or interrupted (a finished run
    // the file lists is skipped), and per TPE trial still to be proposed.
    let db = super::query::open(home).await?;
    let waiting = db
        .runs(Some(&spec.name))
        .await?
        .iter()
        .filter(|r| matches!(r.status, sweep::store::Status::Queued | sweep::store::Status::Interrupted))
        .count();
    let proposals: u64 = super::query::tpe_searches(&db, std::slice::from_ref(&spec.name))
        .await?
        .iter()
        .map(|t| t.count.saturating_sub(t.have))
        .sum();
    let to_train = waiting + usize::try_from(proposals).unwrap_or(usize::MAX);
    if to_train == 0 {
        println!("nothing to train: every run of `{}` is finished (sweep results); no script written", spec.name);
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe()?;
    let home_dir = std::path::absolute(&home.dir)?;
    let store = match &home.store {
        Location::Sqlite(p) => Location::Sqlite(std::path::absolute(p)?),
        other @ Location::Postgres(_) => other.clone(),
    };
    let artifacts = home.artifacts.as_ref().map(|a| match a {
        sweep::artifacts::ArtifactLocation::Folder(p) => {
            std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()
        }
        other @ sweep::artifacts::ArtifactLocation::S3 { .. } => other.to_string(),
    });
    let text = script(&spec.name, to_train, job, &exe, &home_dir, &store, artifacts.as_deref());
    let path = match &job.output {
        Some(p) => p.clone(),
        None => home_dir.join("slurm").join(format!("{}.sbatch", spec.name.replace(['/', ' '], "_"))),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::create_dir_all(home_dir.join("slurm/logs"))?;
    write_private(&path, &text)?;
    println!("wrote {} (it holds the store's URL: readable by you only)", path.display());
    if !job.submit {
        println!("submit it with: sbatch {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let out = std::process::Command::new("sbatch").arg("--parsable").arg(&path).output().map_err(|e| {
        anyhow::anyhow!("cannot run sbatch ({e}): is Slurm installed here? The script is {}", path.display())
    })?;
    if !out.status.success() {
        anyhow::bail!("sbatch refused {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or_default().to_owned();
    println!("submitted job {id}");
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to `path` with mode 0700 (the script holds a database URL).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o700).open(path)?;
    f.write_all(text.as_bytes())?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            partition: Some("gpu".into()),
            gpus_per_task: 1,
            cpus_per_task: Some(8),
            time: "04:00:00".into(),
            array: Some(ArraySize { tasks: 4, at_once: Some(2) }),
            output: None,
            submit: false,
        }
    }

    #[test]
    fn the_script_is_a_worker_array_with_signal_and_requeue() {
        let store = Location::Postgres("postgres://u:it's@db/s".into());
        let s = script(
            "term report",
            12,
            &job(),
            Path::new("/opt/sweep"),
            Path::new("/shared/h"),
            &store,
            Some("s3://b/p"),
        );
        for line in [
            "#SBATCH --job-name=sweep-term_report",
            "#SBATCH --array=0-3%2",
            "#SBATCH --partition=gpu",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --time=04:00:00",
            "#SBATCH --signal=B:USR1@120",
            "#SBATCH --requeue",
            "export SWEEP_STORE='postgres://u:it'\\''s@db/s'",
            "export SWEEP_ARTIFACTS='s3://b/p'",
            "\"$SWEEP\" worker --device cuda:0 --exit-when-empty &",
            "scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"",
        ] {
            assert!(s.lines().any(|l| l.trim() == line), "missing `{line}` in\n{s}");
        }
        let mut cpu = job();
        (cpu.gpus_per_task, cpu.array, cpu.partition) = (0, None, None);
        let s = script("x", 5, &cpu, Path::new("/s"), Path::new("/h"), &store, None);
        assert!(s.contains("#SBATCH --array=0-4\n") && s.contains("worker --device cpu"), "{s}");
        assert!(!s.contains("--partition") && !s.contains("--gpus-per-task") && !s.contains("SWEEP_ARTIFACTS"));
    }
}
