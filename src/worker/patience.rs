//! Riding out a database that does not answer for a while: a PostgreSQL
//! server restarting or failing over, a dropped connection, a SQLite write
//! lock held by another process past its busy timeout.
//!
//! A worker's calls to the store go through [`Patience`]: a call that fails
//! because the database did not answer ([`StoreError::is_unavailable`]) is
//! tried again, after pauses that double from 0.25 s to 5 s, for up to
//! `SWEEP_STORE_WAIT_SECS` (default 10 minutes). The trainer waits meanwhile
//! (it hands over each epoch and waits for the commit), so nothing is lost.
//! If the database is still silent after that, or the worker is asked to stop,
//! the call fails with [`StoreError::Unreachable`] and the worker stops, its
//! run still `running`: once its heartbeat is `SWEEP_STALE_SECS` old (at once
//! on its own host, its process gone), the next worker resumes it from its
//! last recorded checkpoint.
//!
//! Other workers' heartbeats failed during the outage too: for
//! `SWEEP_STALE_SECS` after the database last failed to answer, a worker
//! takes no run over for an old heartbeat ([`Patience::stale_after`]), only
//! those whose process is gone from its own machine.
//!
//! A write whose commit was sent but whose answer was lost with the
//! connection may have been applied. Before it is tried again the write asks
//! the store whether it was ([`Store::epoch_recorded`], [`Store::ended_as`],
//! [`Store::held_by`]), so that an epoch is not recorded twice, a run end is
//! not refused as a lost lease, and a claim does not take a second run.

use crate::record::{CheckpointRecord, EpochRecord};
use crate::store::{ClaimedRun, Lease, Status, Store, StoreError};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first pause after a call the database did not answer.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between two tries.
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// How long a worker waits for its database, and what ends the wait early.
pub(super) struct Patience<'a> {
    store: &'a Store,
    wait: Duration,
    stop: Arc<AtomicBool>,
    /// When the database last failed to answer.
    last_failure: Mutex<Option<Instant>>,
}

impl<'a> Patience<'a> {
    /// Waits up to `wait` for `store`; `stop` (Ctrl-C, SIGTERM) ends a wait.
    pub(super) fn new(store: &'a Store, wait: Duration, stop: Arc<AtomicBool>) -> Self {
        Patience { store, wait, stop, last_failure: Mutex::new(None) }
    }

    /// Notes that the database failed to answer (a heartbeat, a call).
    pub(super) fn saw_failure(&self) {
        *self.last_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// The heartbeat age after which another worker's run is taken over:
    /// `configured`, or never while the database failed to answer within the
    /// last `configured` (every worker's heartbeat failed with it; they get a
    /// full period to come back).
    pub(super) fn stale_after(&self, configured: Duration) -> Duration {
        let last = *self.last_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match last {
            Some(t) if t.elapsed() < configured => Duration::MAX,
            _ => configured,
        }
    }

    /// `op`, tried again while the database does not answer.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.write(what, op, || async { Ok(None) }).await
    }

    /// `op`, tried again while the database does not answer; before each
    /// retry, `applied` says whether an earlier try was applied after all (and
    /// what it gave).
    pub(super) async fn write<T, F, Fut, P, PFut>(&self, what: &str, mut op: F, mut applied: P) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
        P: FnMut() -> PFut,
        PFut: Future<Output = Result<Option<T>, StoreError>>,
    {
        let mut outage: Option<(Instant, Duration)> = None;
        loop {
            let result = if outage.is_none() {
                op().await
            } else {
                match applied().await {
                    Ok(Some(done)) => Ok(done),
                    Ok(None) => op().await,
                    Err(e) => Err(e),
                }
            };
            match result {
                Err(e) if e.is_unavailable() => {
                    self.saw_failure();
                    let (since, pause) = outage.get_or_insert_with(|| {
                        tracing::warn!(
                            "{what}: the database {} does not answer ({}); trying again for up to {:.0}s \
                             (SWEEP_STORE_WAIT_SECS)",
                            self.store.name(),
                            e.detail(),
                            self.wait.as_secs_f64()
                        );
                        (Instant::now(), FIRST_PAUSE)
                    });
                    let waited = since.elapsed();
                    if waited + *pause > self.wait || !self.sleep(*pause).await {
                        return Err(StoreError::Unreachable {
                            db: self.store.name().to_owned(),
                            waited_secs: waited.as_secs_f64(),
                            detail: e.detail(),
                        });
                    }
                    *pause = (*pause * 2).min(LONGEST_PAUSE);
                }
                other => {
                    if let Some((since, _)) = outage {
                        tracing::warn!(
                            "{what}: the database {} answers again, after {:.1}s",
                            self.store.name(),
                            since.elapsed().as_secs_f64()
                        );
                    }
                    return other;
                }
            }
        }
    }

    /// Sleeps `pause`, in short steps; false if asked to stop meanwhile.
    async fn sleep(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }

    /// [`Store::claim_next`]: a retried claim first looks for the run an
    /// earlier try may have claimed.
    pub(super) async fn claim(&self, worker: &str, device: &str) -> Result<Option<ClaimedRun>, StoreError> {
        let s = self.store;
        self.write(
            "claiming the next run",
            || s.claim_next(worker, device),
            || async { Ok(s.held_by(worker).await?.map(Some)) },
        )
        .await
    }

    /// [`Store::record_epoch`] (or [`Store::record_rung_epoch`] for an ASHA
    /// rung of sweep `rung_of`), not recorded twice.
    pub(super) async fn record_epoch(
        &self,
        lease: &Lease,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
        rung_of: Option<i64>,
    ) -> Result<(), StoreError> {
        let s = self.store;
        self.write(
            &format!("recording epoch {}", rec.epoch),
            || async move {
                match rung_of {
                    Some(sweep_id) => s.record_rung_epoch(lease, rec, latest, best, sweep_id).await,
                    None => s.record_epoch(lease, rec, latest, best).await,
                }
            },
            || async move { Ok(s.epoch_recorded(lease, rec.epoch).await?.then_some(())) },
        )
        .await
    }

    /// [`Store::finish`], not refused for a run end an earlier try recorded.
    pub(super) async fn finish(&self, lease: &Lease, status: Status, error: Option<&str>) -> Result<(), StoreError> {
        let s = self.store;
        self.write(
            "recording the run's end",
            || s.finish(lease, status, error),
            || async move { Ok(s.ended_as(lease, status).await?.then_some(())) },
        )
        .await
    }

    /// [`Store::record_stop`], likewise.
    pub(super) async fn record_stop(
        &self,
        lease: &Lease,
        latest: Option<&CheckpointRecord>,
        status: Status,
    ) -> Result<(), StoreError> {
        let s = self.store;
        self.write(
            "recording where the run stopped",
            || s.record_stop(lease, latest, status),
            || async move { Ok(s.ended_as(lease, status).await?.then_some(())) },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn lost_connection() -> StoreError {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        StoreError::Sql { db: "test".into(), source: sqlx::Error::Io(io) }
    }

    fn refused() -> StoreError {
        StoreError::NoSuchRun { run_id: 7 }
    }

    fn with_store(test: impl AsyncFnOnce(&Store)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Store::open(dir.path()).await.unwrap();
            test(&store).await;
            store.close().await;
        });
    }

    #[test]
    fn a_call_is_tried_again_while_the_database_does_not_answer_and_not_for_its_own_errors() {
        with_store(async |store| {
            let p = Patience::new(store, Duration::from_secs(30), Arc::new(AtomicBool::new(false)));
            let tries = Cell::new(0);
            let got = p
                .call("t", || async {
                    tries.set(tries.get() + 1);
                    if tries.get() < 3 {
                        Err(lost_connection())
                    } else {
                        Ok(42)
                    }
                })
                .await;
            assert_eq!((got.unwrap(), tries.get()), (42, 3));
            // The query's own failure is the caller's, at once.
            tries.set(0);
            let got: Result<(), _> = p
                .call("t", || async {
                    tries.set(tries.get() + 1);
                    Err(refused())
                })
                .await;
            assert!(matches!(got, Err(StoreError::NoSuchRun { .. })));
            assert_eq!(tries.get(), 1);
        });
    }

    #[test]
    fn a_write_whose_answer_was_lost_is_not_applied_twice() {
        with_store(async |store| {
            let p = Patience::new(store, Duration::from_secs(30), Arc::new(AtomicBool::new(false)));
            let (applied, asked) = (Cell::new(0), Cell::new(0));
            let got = p
                .write(
                    "t",
                    || async {
                        // Applied, then the connection is lost before the answer.
                        applied.set(applied.get() + 1);
                        Err::<u32, _>(lost_connection())
                    },
                    || async {
                        asked.set(asked.get() + 1);
                        Ok((applied.get() > 0).then_some(5))
                    },
                )
                .await;
            assert_eq!(got.unwrap(), 5);
            assert_eq!((applied.get(), asked.get()), (1, 1));
        });
    }

    #[test]
    fn heartbeats_are_not_judged_for_a_stale_period_after_the_database_failed() {
        with_store(async |store| {
            let p = Patience::new(store, Duration::from_secs(30), Arc::new(AtomicBool::new(false)));
            let stale = Duration::from_millis(300);
            assert_eq!(p.stale_after(stale), stale);
            let tries = Cell::new(0);
            let got = p
                .call("t", || async {
                    tries.set(tries.get() + 1);
                    if tries.get() < 2 {
                        Err(lost_connection())
                    } else {
                        Ok(())
                    }
                })
                .await;
            assert!(got.is_ok());
            assert_eq!(p.stale_after(stale), Duration::MAX);
            tokio::time::sleep(stale).await;
            assert_eq!(p.stale_after(stale), stale);
            p.saw_failure();
            assert_eq!(p.stale_after(stale), Duration::MAX);
        });
    }

    #[test]
    fn the_wait_ends_after_its_limit_or_when_the_worker_is_asked_to_stop() {
        with_store(async |store| {
            let p = Patience::new(store, Duration::from_millis(600), Arc::new(AtomicBool::new(false)));
            let t = Instant::now();
            let got: Result<(), _> = p.call("t", || async { Err(lost_connection()) }).await;
            match got {
                Err(StoreError::Unreachable { waited_secs, detail, .. }) => {
                    // 0.25 s, then 0.5 s would pass the limit: it gives up after the first pause.
                    assert!((0.2..0.6).contains(&waited_secs), "{waited_secs}");
                    assert!(detail.contains("connection reset by peer"), "{detail}");
                }
                other => panic!("{other:?}"),
            }
            assert!(t.elapsed() < Duration::from_millis(600));

            let stop = Arc::new(AtomicBool::new(true));
            let p = Patience::new(store, Duration::from_secs(600), stop);
            let t = Instant::now();
            let got: Result<(), _> = p.call("t", || async { Err(lost_connection()) }).await;
            assert!(matches!(got, Err(StoreError::Unreachable { .. })), "{got:?}");
            assert!(t.elapsed() < Duration::from_millis(200));
        });
    }
}
