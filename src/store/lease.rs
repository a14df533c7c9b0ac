//! Leases: what a claim hands a worker, renewed by its heartbeat, and the
//! fence every write about a running run passes; and the questions a write
//! retried after a lost connection asks first (was it applied already?).
//!
//! A claim increments the run's `attempts` and records the worker
//! (`host:pid`). The pair (worker, attempt) is the run's fencing token: a
//! write is applied only while the run is `running` with exactly that worker
//! and attempt, in the same transaction as the write. A worker presumed dead
//! (its lease expired: no heartbeat for `SWEEP_STALE_SECS` on the database's
//! clock; or, on its own host only, its process is gone) that comes back finds
//! its writes refused with [`StoreError::LostOwnership`], even when the run
//! was taken over by a process with the same id (a container restarted as
//! PID 1 under the same host name).

use super::{Result, Store, StoreError, Tx};

/// A worker's hold on a run: what every write about the running run carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run_id: i64,
    /// The worker holding it (`host:pid`).
    pub worker: String,
    /// The claim this lease came from (the run's `attempts` after it).
    pub attempt: i64,
}

impl Lease {
    fn lost(&self) -> StoreError {
        StoreError::LostOwnership { run_id: self.run_id, worker: self.worker.clone(), attempt: self.attempt }
    }
}

impl Store {
    /// A write transaction on a run that `lease` must still hold.
    pub(super) async fn held_tx(&self, lease: &Lease) -> Result<Tx> {
        let mut tx = self.write_tx().await?;
        // On PostgreSQL the row stays locked until the commit (FOR UPDATE), so
        // no takeover can slip in between the check and the write.
        let held: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM runs WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'{}",
            self.dialect.row_lock
        ))
        .bind(lease.run_id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.sql())?;
        if held.is_none() {
            return Err(lease.lost());
        }
        Ok(tx)
    }

    /// Renews the lease (the heartbeat) with the run's progress, and says
    /// whether `sweep cancel` asked for the run to stop. Fails with
    /// [`StoreError::LostOwnership`] if the lease is no longer the run's.
    pub async fn heartbeat(&self, lease: &Lease, step: i64, steps_per_epoch: i64) -> Result<bool> {
        let cancel: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE runs SET heartbeat = {}, step = $4, steps_per_epoch = $5
             WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'
             RETURNING cancel_requested",
            self.dialect.now_unix
        ))
        .bind(lease.run_id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .bind(step)
        .bind(steps_per_epoch)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql())?;
        match cancel {
            None => Err(lease.lost()),
            Some(c) => Ok(c != 0),
        }
    }

    /// Whether epoch `epoch` of the leased run is recorded: a write whose
    /// commit was sent but whose answer was lost with the connection may have
    /// been applied, and a retry must not record it twice.
    pub async fn epoch_recorded(&self, lease: &Lease, epoch: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM epochs WHERE run_id = $1 AND epoch = $2")
            .bind(lease.run_id)
            .bind(epoch)
            .fetch_one(&self.pool)
            .await
            .map_err(self.sql())?;
        Ok(n > 0)
    }

    /// Whether the leased run already ended as `status` in this attempt (the
    /// same question for a run end whose answer was lost).
    pub async fn ended_as(&self, lease: &Lease, status: super::Status) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE id = $1 AND status = $2 AND attempts = $3 AND worker IS NULL",
        )
        .bind(lease.run_id)
        .bind(status.as_str())
        .bind(lease.attempt)
        .fetch_one(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(n > 0)
    }

    /// The run `worker` holds, if any (the same question for a claim): a
    /// worker holds one run at a time.
    pub async fn held_by(&self, worker: &str) -> Result<Option<super::ClaimedRun>> {
        let row: Option<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT id, key, config_json, attempts FROM runs WHERE status = 'running' AND worker = $1
             ORDER BY id LIMIT 1",
        )
        .bind(worker)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql())?;
        let Some((id, key, config_json, attempts)) = row else { return Ok(None) };
        let name = self.run_name(id).await?;
        Ok(Some(super::ClaimedRun { id, key, config_json, name, attempts, worker: worker.to_owned() }))
    }
}
