//! The signals that stop a worker gracefully: SIGINT (Ctrl-C), SIGTERM (what
//! `docker stop`, Kubernetes and systemd send), SIGUSR1 (what Slurm sends with
//! `--signal`) and SIGHUP (a closed terminal). The first one sets the stop
//! flag: the trainer finishes its batch, saves a mid-epoch checkpoint and the
//! run is marked interrupted; the process then exits with 128 + the signal's
//! number (130, 143, 138, 129). A second one ends the process at once.
//!
//! Handlers are installed explicitly, so this works as PID 1 in a container
//! too, where a signal without a handler is ignored.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal stopped the worker (0: none yet).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Set on the first signal; the worker and the trainer poll it.
    pub flag: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl Stop {
    /// The exit code of a worker stopped by a signal: 128 + its number
    /// (130 when the stop came from elsewhere).
    pub fn exit_code(&self) -> u8 {
        match self.signal.load(Ordering::SeqCst) {
            0 => 130,
            n => (128 + n).clamp(0, 255) as u8,
        }
    }
}

fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "Ctrl-C",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Installs the handlers; returns the flag they set.
pub fn install() -> Stop {
    let stop = Stop::default();
    let s = stop.clone();
    tokio::spawn(async move {
        let Some(mut signals) = Signals::new() else { return };
        let first = signals.next().await;
        s.signal.store(first, Ordering::SeqCst);
        s.flag.store(true, Ordering::SeqCst);
        eprintln!("\n{}: stopping after the current batch (again to quit at once)…", name(first));
        let second = signals.next().await;
        std::process::exit(128 + second);
    });
    stop
}

/// The four stop signals' streams.
struct Signals {
    int: Signal,
    term: Signal,
    usr1: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Option<Signals> {
        let open = |kind: SignalKind| {
            signal(kind).map_err(|e| tracing::warn!("cannot handle signal {}: {e}", kind.as_raw_value())).ok()
        };
        Some(Signals {
            int: open(SignalKind::interrupt())?,
            term: open(SignalKind::terminate())?,
            usr1: open(SignalKind::user_defined1())?,
            hup: open(SignalKind::hangup())?,
        })
    }

    /// The number of the next signal that arrives.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.usr1.recv() => libc::SIGUSR1,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// For a parent of workers (`sweep worker --workers N` / `--gpus`): every
/// stop signal is passed on to each child (in its own process group, so a
/// terminal's Ctrl-C reaches it once, through here). Returns what stopped the
/// parent, for its exit code.
pub fn forward_to(children: Vec<u32>) -> Stop {
    let stop = Stop::default();
    let s = stop.clone();
    tokio::spawn(async move {
        let Some(mut signals) = Signals::new() else { return };
        loop {
            let sig = signals.next().await;
            if !s.flag.swap(true, Ordering::SeqCst) {
                s.signal.store(sig, Ordering::SeqCst);
                eprintln!("\n{}: each worker stops after its current batch (again to quit at once)…", name(sig));
            }
            for &pid in &children {
                #[allow(unsafe_code)]
                // SAFETY: kill(2) on a child's pid, which this process has not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, sig);
                }
            }
        }
    });
    stop
}
