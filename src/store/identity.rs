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

/// Whether the worker `host:pid` is known to be dead (same host, no such process).
pub(super) fn worker_is_dead(worker: &str) -> bool {
    let Some((host, pid)) = worker.rsplit_once(':') else { return false };
    if host != hostname() || !Path::new("/proc/self").exists() {
        return false;
    }
    pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}
