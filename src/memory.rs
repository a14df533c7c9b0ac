//! How much memory this process may still take, and sizes as a person writes
//! them (`8G`).
//!
//! [`available`] is the kernel's `MemAvailable`, capped by the memory limit of
//! the process's cgroup less what the group already uses, at its own level and
//! at every level above it: a Slurm job's `--mem`, a container's or a systemd
//! unit's limit (cgroup v2's `memory.max`, v1's `memory.limit_in_bytes`). The
//! OOM killer acts on whichever is smaller.

use std::path::{Path, PathBuf};

/// Returns the heap's free memory to the system (glibc's `malloc_trim`), so
/// that the resident set and `MemAvailable` count what is in use: the trainer's
/// allocator keeps what it frees ([`crate::process::keep_freed_memory`]).
#[allow(unsafe_code)] // malloc_trim: see the SAFETY comment
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands the heap's free pages back to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A size-valued environment variable (`8G`), if set; one that is not a size
/// is logged and ignored.
pub fn size_from(var: crate::env::Var) -> Option<u64> {
    let text = var.get()?;
    let size = parse_size(&text);
    if size.is_none() {
        tracing::warn!("{}={text:?} is not a size (e.g. 8G); using the default", var.name);
    }
    size
}

/// Where [`available`]'s figure comes from, in words.
pub const SOURCE: &str = "MemAvailable, its cgroup's limit, or SWEEP_MEMORY";

/// The bytes this process may still allocate, if the system says; where
/// `SWEEP_MEMORY` is set, that less the process's resident set instead (what
/// a person says wins, lower or higher).
pub fn available() -> Option<u64> {
    if let Some(cap) = size_from(crate::env::MEMORY) {
        return Some(cap.saturating_sub(crate::train::device::cpu_resident().map_or(0, |(rss, _)| rss)));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    available_from(meminfo.as_deref(), &cgroup, Path::new("/sys/fs/cgroup"))
}

/// [`available`] from the text of `/proc/meminfo` and `/proc/self/cgroup`,
/// with the cgroup file systems mounted at `root`.
pub fn available_from(meminfo: Option<&str>, cgroup: &str, root: &Path) -> Option<u64> {
    let free = meminfo.and_then(mem_available);
    match (free, cgroup_headroom(cgroup, root)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let kb = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?;
    kb.trim().parse::<u64>().ok().map(|k| k * 1024)
}

/// The least of `limit - usage` over the process's memory cgroup and its
/// ancestors, where one has a limit.
fn cgroup_headroom(cgroup: &str, root: &Path) -> Option<u64> {
    let mut least: Option<u64> = None;
    for line in cgroup.lines() {
        // `ID:CONTROLLERS:PATH`: v2 is `0::/PATH`, v1's memory line names `memory`.
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (base, limit_file, usage_file): (PathBuf, _, _) = if controllers.is_empty() {
            // Unified (v2) at the root, or under `unified/` beside v1's controllers.
            let base = if root.join("cgroup.controllers").exists() { root.to_owned() } else { root.join("unified") };
            (base, "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")
        } else {
            continue;
        };
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok().and_then(|t| t.trim().parse::<u64>().ok());
            // v2's `max` (no limit) does not parse; v1's no limit is a huge number, which loses to
            // MemAvailable.
            if let (Some(limit), Some(used)) = (read(limit_file), read(usage_file)) {
                let room = limit.saturating_sub(used);
                least = Some(least.map_or(room, |l| l.min(room)));
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    least
}

/// A size as a person writes it: bytes, or a number with `K`, `M`, `G` or `T`
/// (powers of 1024; `KiB`, `GB` and lower case read alike).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    let bytes = number * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// `1.5 GiB`, `300.0 MiB`, `2.0 KiB`: a size in a message.
pub fn describe(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   24000000 kB\n";

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn mem_available_alone_without_a_cgroup_limit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(available_from(Some(MEMINFO), "0::/\n", dir.path()), Some(24_000_000 * 1024));
        assert_eq!(available_from(None, "", dir.path()), None);
    }

    #[test]
    fn a_v2_limit_above_the_process_cgroup_caps_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "cgroup.controllers", "memory\n");
        // The job's own group has no limit; its parent (the Slurm job) has 16 GiB, 10 used.
        write(root, "slurm/job_7/step_0/memory.max", "max\n");
        write(root, "slurm/job_7/step_0/memory.current", "1000\n");
        write(root, "slurm/job_7/memory.max", &format!("{}\n", 16u64 << 30));
        write(root, "slurm/job_7/memory.current", &format!("{}\n", 10u64 << 30));
        assert_eq!(available_from(Some(MEMINFO), "0::/slurm/job_7/step_0\n", root), Some(6 << 30));
        // More room in the group than the machine has: MemAvailable.
        write(root, "slurm/job_7/memory.max", &format!("{}\n", 1u64 << 40));
        assert_eq!(available_from(Some(MEMINFO), "0::/slurm/job_7/step_0\n", root), Some(24_000_000 * 1024));
    }

    #[test]
    fn a_v1_memory_controller_and_the_hybrid_layout_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "memory/docker/abc/memory.limit_in_bytes", &format!("{}\n", 4u64 << 30));
        write(root, "memory/docker/abc/memory.usage_in_bytes", &format!("{}\n", 1u64 << 30));
        write(root, "memory/memory.limit_in_bytes", "9223372036854771712\n");
        write(root, "memory/memory.usage_in_bytes", "5000\n");
        write(root, "unified/docker/abc/memory.max", &format!("{}\n", 2u64 << 30));
        write(root, "unified/docker/abc/memory.current", "0\n");
        let cgroup = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n";
        assert_eq!(available_from(Some(MEMINFO), cgroup, root), Some(2 << 30));
        assert_eq!(available_from(Some(MEMINFO), "4:memory:/docker/abc\n", root), Some(3 << 30));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("1.5 GiB"), Some(3 << 29));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("2TB"), Some(2 << 40));
        assert_eq!(parse_size("4 KB"), Some(4096));
        for bad in ["", "G", "8X", "-1G", "1e99T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(describe(3 << 29), "1.5 GiB");
        assert_eq!(describe(300 << 20), "300.0 MiB");
        assert_eq!(describe(1536), "1.5 KiB");
    }
}
