//! Every environment variable sweep reads, declared once, with its help text.
//!
//! Code reads a variable through its [`Var`] here, never by a string of its
//! own, and `sweep --help` lists [`ALL`]. Variables that are flags too
//! (`SWEEP_HOME`, `SWEEP_DEVICE`) are read by clap, which names them from here.
//! The tests read two more, which the binary never does: `SWEEP_PARITY_DIR`
//! (full-size torchvision fixtures) and `SWEEP_PARITY_VERBOSE`.

use std::fmt::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// One environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// Its name.
    pub name: &'static str,
    /// What it does, one line, for `sweep --help`.
    pub help: &'static str,
}

/// The home folder (database and checkpoints); `--home`.
pub const HOME: Var = Var { name: "SWEEP_HOME", help: "the home folder, as --home (default .sweep)" };
/// The database; `--store`.
pub const STORE: Var = Var {
    name: "SWEEP_STORE",
    help: "the database, as --store: a SQLite file or postgres://USER:PASSWORD@HOST/DB (default sweep.db in the home)",
};
/// The artifact store; `--artifacts`.
pub const ARTIFACTS: Var = Var {
    name: "SWEEP_ARTIFACTS",
    help: "where checkpoints are kept, as --artifacts: a folder or s3://BUCKET/PREFIX (default the home)",
};
/// The device; `--device`.
pub const DEVICE: Var = Var { name: "SWEEP_DEVICE", help: "where to train, as --device: cpu, auto or cuda:N" };
/// Seconds after which a running run with no heartbeat is taken over.
pub const STALE_SECS: Var = Var {
    name: "SWEEP_STALE_SECS",
    help: "seconds without a heartbeat after which another worker takes a run over (default 60)",
};
/// How long a worker waits for a database that does not answer.
pub const STORE_WAIT_SECS: Var = Var {
    name: "SWEEP_STORE_WAIT_SECS",
    help: "seconds a worker retries a database that does not answer (a server restarting or failing over, a lost connection, a lock held by another process) before it stops (default 600)",
};
/// Seconds between heartbeats.
pub const HEARTBEAT_SECS: Var =
    Var { name: "SWEEP_HEARTBEAT_SECS", help: "seconds between a worker's heartbeats (default 2)" };
/// Cache of downloaded datasets and weights.
pub const CACHE: Var = Var {
    name: "SWEEP_CACHE",
    help: "cache of downloaded datasets and weights (default $XDG_CACHE_HOME/sweep or ~/.cache/sweep)",
};
/// Base URL of the dataset downloads (CIFAR's archives, MNIST's files).
pub const DATA_URL: Var =
    Var { name: "SWEEP_DATA_URL", help: "base URL of the dataset downloads: the CIFAR archives, the MNIST, Fashion-MNIST, SVHN and STL-10 files (default each publisher's site or torchvision's mirror)" };
/// Base URL of the pretrained weights.
pub const WEIGHTS_URL: Var = Var {
    name: "SWEEP_WEIGHTS_URL",
    help: "base URL of the pretrained weights (default https://download.pytorch.org/models)",
};
/// Threads that build batches.
pub const LOADER_THREADS: Var = Var {
    name: "SWEEP_LOADER_THREADS",
    help: "threads that build training batches (default the available cores, at most 8)",
};

/// How many times a run may kill its worker before it is failed.
pub const MAX_WORKER_DEATHS: Var = Var {
    name: "SWEEP_MAX_WORKER_DEATHS",
    help: "a run whose worker died this many times (kill -9, abort, OOM killer) is failed, not resumed (default 3)",
};

/// The most memory sweep may take.
pub const MEMORY: Var = Var {
    name: "SWEEP_MEMORY",
    help: "the memory sweep may take (its resident set), e.g. 8G, instead of what the system says (MemAvailable, or its cgroup's limit): a CPU run whose training step would need more fails before it starts, and image folders take at most 3/4 of what is left",
};

/// The most memory a decoded image folder may take.
pub const DATA_MEMORY: Var = Var {
    name: "SWEEP_DATA_MEMORY",
    help: "the most memory an image folder's decoded images may take, e.g. 8G (default 3/4 of what the process may still use: MemAvailable, or its cgroup's limit)",
};

/// The kernels of the CUDA path.
pub const GPU_KERNELS: Var = Var {
    name: "SWEEP_GPU_KERNELS",
    help: "kernels on a GPU: cudnn (cuDNN convolutions and sweep's BatchNorm, max-pool, ReLU, optimiser, cross-entropy and data kernels; the default of a --features cudnn build), cudnn-nhwc (the same with channels-last activations; not yet checked on a GPU) or generic (candle's; the only ones without cudnn)",
};

/// How the CPU computes 3x3 convolutions with stride 1 and padding 1.
pub const CPU_CONV: Var = Var {
    name: "SWEEP_CPU_CONV",
    help: "3x3 stride-1 convolutions on the CPU: auto (the default: Winograd, direct or lanes where measured faster), winograd4 (F(4x4,3x3)), winograd (F(2x2,3x3)), direct, lanes (the batch across the SIMD lanes, also for 3x3/2 and 7x7 kernels), or im2col (column matrix and matrix product)",
};

/// The widest SIMD registers sweep's own CPU kernels use.
pub const CPU_SIMD: Var = Var {
    name: "SWEEP_CPU_SIMD",
    help: "the widest registers of sweep's own CPU kernels: auto (the default: 512-bit where the CPU has AVX-512F, else 256-bit AVX2) or avx2 (256-bit only, for comparison; the same results but for the rounding of the batch-in-lanes kernel gradients, whose partial sums are added in another order)",
};

/// Every variable the binary reads, in the order `sweep --help` lists them.
pub const ALL: [Var; 17] = [
    HOME,
    STORE,
    ARTIFACTS,
    DEVICE,
    GPU_KERNELS,
    CPU_CONV,
    CPU_SIMD,
    STALE_SECS,
    HEARTBEAT_SECS,
    STORE_WAIT_SECS,
    MAX_WORKER_DEATHS,
    CACHE,
    DATA_URL,
    WEIGHTS_URL,
    LOADER_THREADS,
    MEMORY,
    DATA_MEMORY,
];

impl Var {
    /// Its value, if set and not empty.
    pub fn get(self) -> Option<String> {
        std::env::var(self.name).ok().filter(|v| !v.is_empty())
    }

    /// Its value parsed as `T`, if set and valid (an invalid value is logged and ignored).
    pub fn parse<T: FromStr>(self) -> Option<T> {
        let text = self.get()?;
        let v = text.trim().parse().ok();
        if v.is_none() {
            tracing::warn!("{}={text:?} is not valid; using the default", self.name);
        }
        v
    }

    /// A duration in (fractional, non-negative) seconds, else `default` seconds.
    pub fn seconds(self, default: u64) -> Duration {
        let secs = self.parse::<f64>().filter(|s| s.is_finite()).unwrap_or(default as f64);
        Duration::from_secs_f64(secs.max(0.0))
    }
}

fn os_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The user's cache base: `$XDG_CACHE_HOME`, else `~/.cache`.
pub fn xdg_cache() -> Option<PathBuf> {
    os_path("XDG_CACHE_HOME").or_else(|| os_path("HOME").map(|h| h.join(".cache")))
}

/// sweep's cache folder `sub` (`datasets`, `weights`): under `$SWEEP_CACHE`,
/// else `$XDG_CACHE_HOME/sweep`, else `~/.cache/sweep`, else `.sweep-cache`.
pub fn cache_dir(sub: &str) -> PathBuf {
    os_path(CACHE.name)
        .or_else(|| xdg_cache().map(|x| x.join("sweep")))
        .unwrap_or_else(|| PathBuf::from(".sweep-cache"))
        .join(sub)
}

/// The "Environment:" section of `sweep --help`.
pub fn help() -> String {
    let width = ALL.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut text = String::from("Environment:\n");
    for v in ALL {
        let _ = writeln!(text, "  {:width$}  {}", v.name, v.help);
    }
    let _ = write!(text, "  {:width$}  log filter, e.g. info or sweep=debug (default warn)", "RUST_LOG");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_is_listed_once_in_the_help() {
        let help = help();
        for v in ALL {
            assert_eq!(help.matches(&format!("  {} ", v.name)).count(), 1, "{}", v.name);
            assert!(v.name.starts_with("SWEEP_") && !v.help.is_empty());
        }
    }
}
