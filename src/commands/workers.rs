//! `sweep worker --workers N` and `--gpus LIST|all`: several workers on one
//! machine, each a child process of its own (`sweep worker --device D`) on
//! its own device, so that a crash, an abort or the OOM killer takes one
//! worker and never its siblings; they share the queue through the store like
//! workers on different machines. The parent prefixes each child's lines with
//! its device, passes stop signals on, and exits with 128 + the signal when it
//! was stopped, else 1 if a child's run failed (or a child failed), else 0.

use super::{signals, Home};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use sweep::spec::DeviceChoice;

/// One worker to start: its label and device, and its share of the cores.
pub struct Slot {
    /// What its lines are prefixed with (`cuda:1`, `cpu#2`).
    pub label: String,
    /// Its device.
    pub device: DeviceChoice,
    /// Threads for its CPU work (its share of the cores).
    pub threads: usize,
}

/// The slots for `--gpus` (one per listed device) or `--workers N` (N on `device`).
pub fn slots(gpus: Option<&[usize]>, workers: usize, device: DeviceChoice) -> Vec<Slot> {
    let devices: Vec<(String, DeviceChoice)> = match gpus {
        Some(ids) => ids.iter().map(|&n| (format!("cuda:{n}"), DeviceChoice::Cuda(n))).collect(),
        None => (0..workers).map(|i| (format!("{device}#{}", i + 1), device)).collect(),
    };
    // Each worker's share of the cores, for its CPU work (training on the CPU, or the loader).
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let threads = (cores / devices.len().max(1)).max(1);
    devices.into_iter().map(|(label, device)| Slot { label, device, threads }).collect()
}

/// What every child is told besides its device.
pub struct ChildArgs {
    /// Stop after this many runs.
    pub max_runs: Option<usize>,
    /// Exit when nothing can be claimed.
    pub exit_when_empty: bool,
    /// Progress lines.
    pub verbose: bool,
}

/// Starts the workers and waits for all of them.
pub async fn supervise(home: &Home, slots: Vec<Slot>, args: &ChildArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut pumps = Vec::new();
    for slot in &slots {
        let mut cmd = Command::new(&exe);
        cmd.arg("--home").arg(&home.dir);
        if !args.verbose {
            cmd.arg("--quiet");
        }
        cmd.args(["worker", "--device", &slot.device.to_string()]);
        if let Some(n) = args.max_runs {
            cmd.args(["--max-runs", &n.to_string()]);
        }
        if args.exit_when_empty {
            cmd.arg("--exit-when-empty");
        }
        // The URL travels in the environment, not on a command line `ps` shows.
        cmd.env(sweep::env::STORE.name, home.store.as_arg());
        match &home.artifacts {
            Some(a) => cmd.env(sweep::env::ARTIFACTS.name, a.to_string()),
            None => cmd.env_remove(sweep::env::ARTIFACTS.name),
        };
        cmd.env("RAYON_NUM_THREADS", slot.threads.to_string());
        cmd.env(sweep::env::LOADER_THREADS.name, slot.threads.to_string());
        // Its own process group: a terminal's Ctrl-C reaches the parent only,
        // which passes it on once (see signals::forward_to).
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start worker {}: {e}", slot.label))?;
        let prefix = format!("[{}] ", slot.label);
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, prefix.clone(), false));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, prefix, true));
        }
        children.push(child);
    }
    if args.verbose {
        let labels: Vec<&str> = slots.iter().map(|s| s.label.as_str()).collect();
        eprintln!("{} workers: {}", slots.len(), labels.join(", "));
    }
    let stop = signals::forward_to(children.iter().map(std::process::Child::id).collect());
    let mut codes = Vec::new();
    for (mut child, slot) in children.into_iter().zip(&slots) {
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        if args.verbose {
            eprintln!("[{}] exited with {code}", slot.label);
        }
        codes.push(code);
    }
    for p in pumps {
        let _ = p.join();
    }
    if stop.flag.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(ExitCode::from(stop.exit_code()));
    }
    Ok(ExitCode::from(combine(&codes)))
}

/// The parent's exit code from its children's: 0 if all succeeded; a child
/// killed by a signal or stopped by one gives its code; else 1 (a run failed)
/// or, if a child could not work at all, 2.
pub fn combine(codes: &[i32]) -> u8 {
    if let Some(&c) = codes.iter().find(|&&c| c > 128) {
        return c.clamp(0, 255) as u8;
    }
    codes.iter().copied().max().unwrap_or(0).clamp(0, 255) as u8
}

/// Copies a child's lines to ours, each prefixed.
fn pump(from: impl std::io::Read + Send + 'static, prefix: String, to_stderr: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let reader = BufReader::new(from);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            // A progress bar's redraws end with \r: keep the last one.
            let text = text.rsplit('\r').find(|s| !s.trim().is_empty()).unwrap_or("");
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "{prefix}{text}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{prefix}{text}");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_combine_as_documented() {
        assert_eq!(combine(&[0, 0]), 0);
        assert_eq!(combine(&[0, 1]), 1);
        assert_eq!(combine(&[2, 1]), 2);
        assert_eq!(combine(&[1, 138]), 138);
        assert_eq!(combine(&[]), 0);
    }

    #[test]
    fn cpu_workers_share_the_cores_and_gpus_get_one_each() {
        let s = slots(None, 2, DeviceChoice::Cpu);
        assert_eq!(s.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["cpu#1", "cpu#2"]);
        assert!(s.iter().all(|s| s.threads >= 1));
        let g = slots(Some(&[0, 2]), 0, DeviceChoice::Auto);
        assert_eq!(g.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["cuda:0", "cuda:2"]);
        assert_eq!(g[1].device, DeviceChoice::Cuda(2));
    }
}
