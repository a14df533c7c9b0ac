//! Writes about a running run, each checked against the worker that holds it:
//! epochs with their checkpoints, interruptions, run ends, notes.

use super::{Lease, Result, Status, Store, Tx};
use crate::record::{CheckpointRecord, EpochRecord};

impl Store {
    async fn put_checkpoint(&self, tx: &mut Tx, run_id: i64, c: &CheckpointRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO checkpoints (run_id, kind, epoch, step, path, sha256, state_path, state_sha256, metric)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (run_id, kind) DO UPDATE SET epoch = $3, step = $4, path = $5, sha256 = $6,
                 state_path = $7, state_sha256 = $8, metric = $9, created_at = excluded.created_at",
        )
        .bind(run_id)
        .bind(c.kind.as_str())
        .bind(c.epoch)
        .bind(c.step)
        .bind(&c.path)
        .bind(&c.sha256)
        .bind(&c.state_path)
        .bind(&c.state_sha256)
        .bind(c.metric)
        .execute(&mut **tx)
        .await
        .map_err(self.sql())?;
        Ok(())
    }

    /// Records a finished epoch with its latest checkpoint and, if the metric
    /// improved, its best checkpoint, in one transaction.
    pub async fn record_epoch(
        &self,
        lease: &Lease,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
    ) -> Result<()> {
        self.record_epoch_in(lease, rec, latest, best, None).await
    }

    /// [`Store::record_epoch`] for an epoch that is an ASHA rung of sweep
    /// `sweep_id`: the sweep's row is locked first (PostgreSQL; SQLite's write
    /// lock does the same), so the rung's arrivals are recorded, timed and
    /// committed in one order, the order every decision and replay reads.
    pub async fn record_rung_epoch(
        &self,
        lease: &Lease,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
        sweep_id: i64,
    ) -> Result<()> {
        self.record_epoch_in(lease, rec, latest, best, Some(sweep_id)).await
    }

    async fn record_epoch_in(
        &self,
        lease: &Lease,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
        serialize_on: Option<i64>,
    ) -> Result<()> {
        let e = self.sql();
        let run_id = lease.run_id;
        let mut tx = self.held_tx(lease).await?;
        if let Some(sweep_id) = serialize_on {
            let _: Option<i64> =
                sqlx::query_scalar(&format!("SELECT id FROM sweeps WHERE id = $1{}", self.dialect.row_lock))
                    .bind(sweep_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(&e)?;
        }
        sqlx::query(
            "INSERT INTO epochs (run_id, epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds, images_per_sec,
                                 test_top5, val_loss, val_acc, peak_memory_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(run_id)
        .bind(rec.epoch)
        .bind(rec.train_loss)
        .bind(rec.train_acc)
        .bind(rec.test_loss)
        .bind(rec.test_acc)
        .bind(rec.lr)
        .bind(rec.seconds)
        .bind(rec.images_per_sec)
        .bind(rec.test_top5)
        .bind(rec.val_loss)
        .bind(rec.val_acc)
        .bind(rec.peak_memory_bytes)
        .execute(&mut *tx)
        .await
        .map_err(&e)?;
        self.put_checkpoint(&mut tx, run_id, latest).await?;
        if let Some(best) = best {
            self.put_checkpoint(&mut tx, run_id, best).await?;
            let confusion = rec.confusion.as_ref().map(|c| serde_json::to_string(c).expect("serialisable"));
            sqlx::query("UPDATE runs SET best_epoch = $2, best_metric = $3, best_confusion_json = $4 WHERE id = $1")
                .bind(run_id)
                .bind(best.epoch)
                .bind(best.metric)
                .bind(confusion)
                .execute(&mut *tx)
                .await
                .map_err(&e)?;
        }
        sqlx::query(&format!(
            "UPDATE runs SET epochs_done = $2, step = 0, train_seconds = train_seconds + $3, heartbeat = {},
                             images_per_sec = (SELECT avg(images_per_sec) FROM epochs e WHERE e.run_id = $1),
                             final_train_acc = $4, final_test_acc = $5, final_test_loss = $6,
                             peak_memory_bytes = CASE WHEN $7 IS NULL THEN peak_memory_bytes
                                                      WHEN coalesce(peak_memory_bytes, 0) > $7 THEN peak_memory_bytes
                                                      ELSE $7 END
             WHERE id = $1",
            self.dialect.now_unix
        ))
        .bind(run_id)
        .bind(rec.epoch)
        .bind(rec.seconds)
        .bind(rec.train_acc)
        .bind(rec.test_acc)
        .bind(rec.test_loss)
        .bind(rec.peak_memory_bytes)
        .execute(&mut *tx)
        .await
        .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// Marks a run interrupted, recording the mid-epoch checkpoint if one was saved.
    pub async fn record_interrupt(&self, lease: &Lease, latest: Option<&CheckpointRecord>) -> Result<()> {
        self.record_stop(lease, latest, Status::Interrupted).await
    }

    /// Marks a run that `sweep cancel` stopped cancelled, recording its
    /// mid-epoch checkpoint (it resumes from it when queued again).
    pub async fn record_cancel(&self, lease: &Lease, latest: Option<&CheckpointRecord>) -> Result<()> {
        self.record_stop(lease, latest, Status::Cancelled).await
    }

    /// Marks a run `status` (interrupted or cancelled), recording its
    /// mid-epoch checkpoint if one was saved.
    pub async fn record_stop(&self, lease: &Lease, latest: Option<&CheckpointRecord>, status: Status) -> Result<()> {
        debug_assert!(matches!(status, Status::Interrupted | Status::Cancelled));
        let e = self.sql();
        let run_id = lease.run_id;
        let mut tx = self.held_tx(lease).await?;
        if let Some(latest) = latest {
            self.put_checkpoint(&mut tx, run_id, latest).await?;
            sqlx::query("UPDATE runs SET step = $2 WHERE id = $1")
                .bind(run_id)
                .bind(latest.step)
                .execute(&mut *tx)
                .await
                .map_err(&e)?;
        }
        sqlx::query("UPDATE runs SET status = $2, worker = NULL, cancel_requested = 0 WHERE id = $1")
            .bind(run_id)
            .bind(status.as_str())
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// Ends a run as done or failed.
    pub async fn finish(&self, lease: &Lease, status: Status, error: Option<&str>) -> Result<()> {
        debug_assert!(matches!(status, Status::Done | Status::Failed | Status::Diverged));
        let e = self.sql();
        let mut tx = self.held_tx(lease).await?;
        sqlx::query(&format!(
            "UPDATE runs SET status = $2, error = $3, worker = NULL, finished_at = {} WHERE id = $1",
            self.dialect.now_iso
        ))
        .bind(lease.run_id)
        .bind(status.as_str())
        .bind(error)
        .execute(&mut *tx)
        .await
        .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        self.checkpoint_wal().await;
        Ok(())
    }

    /// Copies the write-ahead log into the database file (SQLite's passive
    /// checkpoint, which waits for no reader), done at every run end: a lost
    /// or deleted `-wal` file then costs at most the records of the runs still
    /// training. A failure is logged, not returned: the records are committed.
    pub async fn checkpoint_wal(&self) {
        if self.raw.is_none() {
            return; // not SQLite: no write-ahead log of ours
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await {
            tracing::warn!("checkpointing the write-ahead log of {}: {e}", self.name);
        }
    }

    /// Forgets a run's latest checkpoint (retention `keep = "best"` once the
    /// run is finished); its files are then removed as unreferenced.
    pub async fn drop_latest(&self, lease: &Lease) -> Result<()> {
        let e = self.sql();
        let mut tx = self.held_tx(lease).await?;
        sqlx::query("DELETE FROM checkpoints WHERE run_id = $1 AND kind = 'latest'")
            .bind(lease.run_id)
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// Records how a run ended (shown with the run), if this worker holds it.
    pub async fn set_note(&self, lease: &Lease, note: &str) -> Result<()> {
        self.set_held_text(lease, "UPDATE runs SET note = $2 WHERE id = $1", note).await
    }

    /// Records the class names of the run's dataset (label order) and its
    /// fingerprint ([`crate::train::data::Dataset::fingerprint`]). A run that
    /// `resumes` from a checkpoint and has another fingerprint recorded keeps
    /// it, and that fingerprint is returned: its epochs so far were trained on
    /// other data.
    pub async fn set_data(
        &self,
        lease: &Lease,
        classes: &[String],
        sha256: &str,
        resumes: bool,
    ) -> Result<Option<String>> {
        let e = self.sql();
        let json = serde_json::to_string(classes).expect("serialisable");
        let mut tx = self.held_tx(lease).await?;
        let before: Option<String> = sqlx::query_scalar("SELECT data_sha256 FROM runs WHERE id = $1")
            .bind(lease.run_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(&e)?;
        if resumes && before.as_deref().is_some_and(|b| b != sha256) {
            return Ok(before);
        }
        sqlx::query("UPDATE runs SET classes_json = $2, data_sha256 = $3 WHERE id = $1")
            .bind(lease.run_id)
            .bind(json)
            .bind(sha256)
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(None)
    }

    /// Runs `sql` (binding the run id and `value`) if this worker holds the run.
    async fn set_held_text(&self, lease: &Lease, sql: &'static str, value: &str) -> Result<()> {
        let e = self.sql();
        let mut tx = self.held_tx(lease).await?;
        sqlx::query(sql).bind(lease.run_id).bind(value).execute(&mut *tx).await.map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }
}
