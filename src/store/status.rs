//! A run's life cycle as a pure state machine.
//!
//! ```text
//!            claim                finish
//!  queued ─────────▶ running ─────────────▶ done
//!    ▲  ▲              │ │ fail
//!    │  │ claim        │ ├──────────▶ failed ──┐
//!    │  │              │ └──────────▶ diverged ┤ requeue (resubmit)
//!    │  └─ interrupted ◀┘ interrupt / stale     │
//!    └──────────────────────────────────────────┘
//!
//!  queued / interrupted ──cancel──▶ cancelled ──requeue (retry, resubmit)──▶ queued
//! ```
//! `cancelled` is a run a person stopped with `sweep cancel`: a queued one at
//! once, a running one after its batch, checkpointed (its worker stops it and
//! records the interrupt first, then the cancel).
//! `diverged` is a run whose loss became NaN or infinite (its error says at
//! which epoch and batch); like `failed`, it is queued again when resubmitted.
//! `interrupted` runs (Ctrl-C, or a worker found dead through its stale
//! heartbeat) are claimed again and resume from their latest checkpoint. The
//! store applies these transitions in SQL; this module decides which are legal.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a worker.
    Queued,
    /// Held by a worker.
    Running,
    /// Every epoch finished.
    Done,
    /// Stopped by an error (recorded in `runs.error`).
    Failed,
    /// Stopped by Ctrl-C or a dead worker; resumes from its latest checkpoint.
    Interrupted,
    /// Its loss became NaN or infinite.
    Diverged,
    /// Stopped by `sweep cancel`; `sweep retry` queues it again (it resumes).
    Cancelled,
}

/// Something that happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A worker takes it.
    Claim,
    /// Training finished every epoch.
    Finish,
    /// Training (or its set-up) failed.
    Fail,
    /// The loss became NaN or infinite.
    Diverge,
    /// Ctrl-C, or its worker was found dead.
    Interrupt,
    /// Submitted again after failing or diverging, or retried.
    Requeue,
    /// `sweep cancel` (a running run is interrupted first).
    Cancel,
}

/// An event that does not apply to a run in its current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} run cannot {event:?}")]
pub struct InvalidTransition {
    /// The current status.
    pub from: Status,
    /// The refused event.
    pub event: Event,
}

impl Status {
    /// Every status, in display order.
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Running,
        Status::Done,
        Status::Failed,
        Status::Diverged,
        Status::Interrupted,
        Status::Cancelled,
    ];

    /// The status after `event`, or why it cannot happen.
    pub fn apply(self, event: Event) -> Result<Status, InvalidTransition> {
        use Event::{Cancel, Claim, Diverge, Fail, Finish, Interrupt, Requeue};
        use Status::{Cancelled, Diverged, Done, Failed, Interrupted, Queued, Running};
        match (self, event) {
            (Queued | Interrupted, Claim) => Ok(Running),
            (Running, Finish) => Ok(Done),
            (Running | Queued | Interrupted, Fail) => Ok(Failed),
            (Running, Interrupt) => Ok(Interrupted),
            (Running, Diverge) => Ok(Diverged),
            (Failed | Diverged | Cancelled, Requeue) => Ok(Queued),
            (Queued | Interrupted, Cancel) => Ok(Cancelled),
            (from, event) => Err(InvalidTransition { from, event }),
        }
    }

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
            Status::Diverged => "diverged",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| format!("unknown run status `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::Event::*;
    use super::Status::*;
    use super::*;

    #[test]
    fn legal_paths() {
        assert_eq!(Queued.apply(Claim), Ok(Running));
        assert_eq!(Running.apply(Finish), Ok(Done));
        assert_eq!(Running.apply(Fail), Ok(Failed));
        assert_eq!(Running.apply(Interrupt), Ok(Interrupted));
        assert_eq!(Interrupted.apply(Claim), Ok(Running));
        assert_eq!(Failed.apply(Requeue), Ok(Queued));
        assert_eq!(Queued.apply(Cancel), Ok(Cancelled));
        assert_eq!(Interrupted.apply(Cancel), Ok(Cancelled));
        assert_eq!(Cancelled.apply(Requeue), Ok(Queued));
    }

    #[test]
    fn illegal_paths_are_refused() {
        for (from, ev) in [
            (Done, Claim),
            (Done, Requeue),
            (Done, Fail),
            (Queued, Finish),
            (Running, Claim),
            (Failed, Claim),
            (Queued, Interrupt),
            (Cancelled, Claim),
            (Done, Cancel),
            (Running, Cancel),
        ] {
            assert_eq!(from.apply(ev), Err(InvalidTransition { from, event: ev }), "{from} {ev:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("paused".parse::<Status>().is_err());
    }
}
