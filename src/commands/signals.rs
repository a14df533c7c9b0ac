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

struct Signals(Vec<(i32, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut all = Vec::new();
        for n in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGHUP] {
            match signal(SignalKind::from_raw(n)) {
                Ok(s) => all.push((n, s)),
                Err(e) => tracing::warn!("cannot handle {}: {e}", name(n)),
            }
        }
        (!all.is_empty()).then_some(Signals(all))
    }

    /// The number of the next signal that arrives.
    async fn next(&mut self) -> i32 {
        let waits = self.0.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        futures_select_first(waits.collect()).await
    }
}

/// The first of several futures to finish.
async fn futures_select_first<F: std::future::Future<Output = i32> + Unpin>(mut all: Vec<F>) -> i32 {
    std::future::poll_fn(move |cx| {
        for f in &mut all {
            if let std::task::Poll::Ready(n) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(n);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
