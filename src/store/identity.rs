//! Who a worker is (`host:pid`) and whether it is still alive.

use std::path::Path;

/// This process's worker id: `host:pid`.
pub fn worker_id() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether the worker `host:pid` is another process of this machine that is
/// alive (by the process table).
pub(super) fn worker_is_local_and_alive(worker: &str) -> bool {
    let Some((host, pid)) = worker.rsplit_once(':') else { return false };
    host == hostname()
        && Path::new("/proc/self").exists()
        && pid.parse::<u32>().is_ok_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

/// Whether the local worker `host:pid` was started with `--max-runs` (its
/// command line, from the process table): it may stop before it gets to runs
/// queued after it started.
pub(super) fn worker_has_max_runs(worker: &str) -> bool {
    let Some((_, pid)) = worker.rsplit_once(':') else { return false };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.split(|&b| b == 0).any(|arg| arg == b"--max-runs" || arg.starts_with(b"--max-runs="))
}

/// Whether the worker `host:pid` is known to be dead (same host, no such process).
pub(super) fn worker_is_dead(worker: &str) -> bool {
    let Some((host, pid)) = worker.rsplit_once(':') else { return false };
    if host != hostname() || !Path::new("/proc/self").exists() {
        return false;
    }
    pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_max_runs_is_read_from_its_command_line() {
        let me = worker_id();
        assert!(!worker_has_max_runs(&me) && !worker_is_local_and_alive(&me), "this process is not another worker");
        let Ok(mut child) =
            std::process::Command::new("sh").args(["-c", "sleep 5; exit 0", "sh", "worker", "--max-runs", "1"]).spawn()
        else {
            return;
        };
        let other = format!("{}:{}", hostname(), child.id());
        assert!(worker_is_local_and_alive(&other));
        // Until the child has exec'd, its command line is this process's.
        let start = std::time::Instant::now();
        while !worker_has_max_runs(&other) && start.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(worker_has_max_runs(&other));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!worker_is_local_and_alive(&other) && !worker_has_max_runs(&other));
        assert!(!worker_is_local_and_alive(&format!("elsewhere:{}", std::process::id())));
    }
}
