//! One function per subcommand; `run` dispatches. anyhow lives here and in main.

mod eval;
mod plan;
mod query;
mod submit;

use crate::cli::{Cli, Command};
use std::fmt::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use sweep::spec::DeviceChoice;
use sweep::store::{Status, Store};
use sweep::worker::{self, WorkerOptions, WorkerReport};

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbose = !cli.quiet;
    match cli.command {
        Command::Submit { file, queue_only, device, format } => {
            submit::submit(&cli.home, &file, queue_only, device, format, verbose).await
        }
        Command::Plan { file, format } => plan::plan(&file, format),
        Command::Eval { model, weights, data, sweep, augment, device, format } => {
            eval::eval(&model, &weights, data.as_deref(), sweep.as_deref(), augment.as_deref(), device, format)
        }
        Command::Worker { device } => {
            let store = Store::open(&cli.home).await?;
            let report = drain(&store, device, verbose).await?;
            if verbose {
                eprintln!("{}", summary_line(&report));
            }
            Ok(exit_code(&report))
        }
        Command::Status { format } => query::status(&cli.home, format).await,
        Command::Results { sweep, filter, sort, group_by, columns, all_params, format } => {
            let q = sweep::report::query::Query {
                wheres: filter.wheres,
                statuses: filter.status,
                sort,
                group_by,
                columns,
                all_params,
            };
            query::results(&cli.home, &sweep, &q, format).await
        }
        Command::Show { run, format } => query::show(&cli.home, &run, format).await,
        Command::Report { sweep, filter, format, output } => {
            let q =
                sweep::report::query::Query { wheres: filter.wheres, statuses: filter.status, ..Default::default() };
            query::report(&cli.home, &sweep, &q, format, output.as_deref()).await
        }
    }
}

/// Runs the worker until the queue is empty, stopping cleanly on Ctrl-C.
pub async fn drain(store: &Store, device: DeviceChoice, verbose: bool) -> anyhow::Result<WorkerReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
            eprintln!("\nstopping after the current batch (Ctrl-C again to quit at once)…");
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let opts = WorkerOptions {
        device,
        stale_after: sweep::env::STALE_SECS.seconds(60),
        heartbeat_every: sweep::env::HEARTBEAT_SECS.seconds(2),
        verbose,
    };
    let report = worker::work(store, &opts, stop).await?;
    store.close().await;
    Ok(report)
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
    if report.interrupted {
        line += "; interrupted: `sweep worker` resumes where it stopped";
    }
    line
}

/// 130 if interrupted, 1 if a run failed or diverged, else 0.
pub fn exit_code(report: &WorkerReport) -> ExitCode {
    if report.interrupted {
        ExitCode::from(130)
    } else if report.runs.iter().any(|r| matches!(r.status, Status::Failed | Status::Diverged)) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
