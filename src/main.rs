//! The `sweep` command: parses arguments, runs one command, maps the outcome to
//! an exit code (0 ok, 1 some run failed, 2 bad input or internal error, 130
//! interrupted).

mod cli;
mod commands;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Training wants one big malloc arena and rayon's thread count fixed; the
    // read-only commands do not (with one arena, SQLite's reader thread and
    // the main thread contend: `results` on 10,000 runs took 1.6x as long).
    if matches!(args.command, cli::Command::Submit { .. } | cli::Command::Worker { .. } | cli::Command::Eval { .. }) {
        sweep::process::tune_for_training();
    } else {
        // `sweep results | head` ends quietly, as other Unix tools do, instead
        // of panicking on the closed pipe (Rust ignores SIGPIPE by default).
        // Not for the training commands: a closed pipe must not kill a run.
        #[cfg(unix)]
        #[allow(unsafe_code)]
        // SAFETY: restores the default disposition of one signal at start-up.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        sweep::process::keep_freed_memory();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes in one line, each said once: the store's errors
/// already quote their cause, which anyhow's `{:#}` would print again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}
