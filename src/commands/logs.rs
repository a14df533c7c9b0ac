//! `sweep logs RUN [-f]`: print a run's log, or follow it until the run ends.

use super::query::{find_run, open, run_label};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use sweep::store::Status;
use sweep::worker::{log::LOG_FILE, run_dir};

/// Whether a run in `status` will write to its log again without anyone
/// queueing it (an interrupted run resumes with the next worker).
fn may_continue(status: Option<Status>) -> bool {
    matches!(status, Some(Status::Queued | Status::Running | Status::Interrupted))
}

/// Copies what `path` holds after `offset` to stdout; returns the new offset.
fn copy_new(path: &Path, offset: u64) -> std::io::Result<u64> {
    let Ok(mut f) = std::fs::File::open(path) else { return Ok(offset) };
    let len = f.metadata()?.len();
    // A log only grows; a shorter file is a new one (the run was removed and submitted again).
    let from = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    // Only whole lines: the worker may be half-way through one.
    let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf[..whole])?;
    out.flush()?;
    Ok(from + whole as u64)
}

pub async fn logs(home: &super::Home, which: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let store = open(home).await?;
    let run = find_run(&store, which).await?.0;
    let path = home.join(run_dir(&run.key)).join(LOG_FILE);
    let label = run_label(&run);
    if !follow {
        // Trained on another machine: its log as the artifact store kept it
        // (updated with each epoch and at the run's end).
        let artifacts = sweep::artifacts::Artifacts::open(home, home.artifacts.as_ref())?;
        if !artifacts.is_home() {
            if let Some(bytes) = artifacts.get(&format!("{}/{LOG_FILE}", run_dir(&run.key))).await? {
                if !path.exists() || std::fs::metadata(&path).map_or(0, |m| m.len()) < bytes.len() as u64 {
                    std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if !path.exists() {
            eprintln!("{label} has no log yet: it is {} (`sweep logs -f` waits for it)", run.status);
            return Ok(ExitCode::SUCCESS);
        }
        copy_new(&path, 0)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !path.exists() {
        eprintln!("{label} is {}; waiting for its log…", run.status);
    }
    let mut offset = 0;
    loop {
        offset = copy_new(&path, offset)?;
        let status = store.run_status(run.id).await?;
        if !may_continue(status) {
            // One last read: the worker writes the last line before the status
            // (an interrupted or cancelled run's status comes with its checkpoint,
            // just before its line: a moment's grace).
            tokio::time::sleep(Duration::from_millis(300)).await;
            copy_new(&path, offset)?;
            match status {
                Some(s) => eprintln!("{label} is {s}"),
                None => eprintln!("{label} was removed"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
