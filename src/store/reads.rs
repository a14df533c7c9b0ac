//! Reads: sweeps, runs with their summary numbers, epochs, checkpoints.

use super::{raw, Result, RunRow, Status, Store, StoreError, SweepRow};
use crate::record::{CheckpointKind, CheckpointRecord, EpochRecord};
use raw::Cells;
use sqlx::Row;

impl Store {
    /// The test confusion matrix of a run's best epoch (rows: true class,
    /// columns: predicted), if recorded.
    pub async fn best_confusion(&self, run_id: i64) -> Result<Option<Vec<Vec<u64>>>> {
        let json: Option<String> = sqlx::query_scalar("SELECT best_confusion_json FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&self.pool)
            .await
            .map_err(self.sql())?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// A run's checkpoints (latest and/or best).
    pub async fn checkpoints(&self, run_id: i64) -> Result<Vec<CheckpointRecord>> {
        let rows = sqlx::query(
            "SELECT kind, epoch, step, path, sha256, state_path, state_sha256, metric FROM checkpoints WHERE run_id = $1 ORDER BY kind",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        rows.into_iter()
            .map(|r| {
                let kind: String = r.get("kind");
                let kind = match kind.as_str() {
                    "latest" => CheckpointKind::Latest,
                    "best" => CheckpointKind::Best,
                    other => return Err(self.corrupt("checkpoints.kind", other.to_owned())),
                };
                Ok(CheckpointRecord {
                    kind,
                    epoch: r.get("epoch"),
                    step: r.get("step"),
                    path: r.get("path"),
                    sha256: r.get("sha256"),
                    state_path: r.get("state_path"),
                    state_sha256: r.get("state_sha256"),
                    metric: r.get("metric"),
                })
            })
            .collect()
    }

    /// A run's recorded epochs, in order.
    pub async fn epochs(&self, run_id: i64) -> Result<Vec<EpochRecord>> {
        let rows = sqlx::query(
            "SELECT epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds, images_per_sec, test_top5, peak_memory_bytes,
                    val_loss, val_acc
             FROM epochs WHERE run_id = $1 ORDER BY epoch",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .map(|r| EpochRecord {
                epoch: r.get("epoch"),
                train_loss: r.get("train_loss"),
                train_acc: r.get("train_acc"),
                test_loss: r.get("test_loss"),
                test_acc: r.get("test_acc"),
                lr: r.get("lr"),
                seconds: r.get("seconds"),
                images_per_sec: r.get("images_per_sec"),
                test_top5: r.get("test_top5"),
                val_loss: r.get("val_loss"),
                val_acc: r.get("val_acc"),
                confusion: None,
                peak_memory_bytes: r.get("peak_memory_bytes"),
            })
            .collect())
    }

    /// When each of a run's epochs was recorded (Unix seconds), in epoch order.
    pub async fn epoch_times(&self, run_id: i64) -> Result<Vec<f64>> {
        sqlx::query_scalar(&format!(
            "SELECT {} FROM epochs WHERE run_id = $1 ORDER BY epoch",
            self.dialect.unix_of("recorded_at")
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())
    }

    /// A run's status now (`None`: no such run, e.g. removed).
    pub async fn run_status(&self, run_id: i64) -> Result<Option<Status>> {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql())?;
        s.map(|s| self.parse_status(&s)).transpose()
    }

    /// Stored sweeps, oldest first.
    pub async fn sweeps(&self) -> Result<Vec<SweepRow>> {
        let rows = sqlx::query("SELECT id, name, description, source_path, metric, goal FROM sweeps ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .map(|r| SweepRow {
                id: r.get("id"),
                name: r.get("name"),
                description: r.get("description"),
                source_path: r.get("source_path"),
                metric: r.get("metric"),
                goal: r.get("goal"),
            })
            .collect())
    }

    /// Runs with their summaries: those of one sweep (in its order), or every
    /// run once (under the first sweep that asked for it).
    pub async fn runs(&self, sweep: Option<&str>) -> Result<Vec<RunRow>> {
        let mut out = Vec::new();
        self.each_run(sweep, |r| out.push(r)).await?;
        Ok(out)
    }

    /// [`Store::runs`], handing each run to `each` as it is read.
    pub async fn each_run(&self, sweep: Option<&str>, mut each: impl FnMut(RunRow)) -> Result<()> {
        // One query per case, each walking an index in the order shown (no sort
        // step), stepped on this thread (see `raw`: through sqlx's channel the
        // rows of a 10,000-run sweep took ten times what SQLite took).
        let now_unix = self.dialect.now_unix;
        let cols = format!(
            "r.config_json, r.id, r.key, s.name, sr.name, r.status, r.epochs_total,
             r.epochs_done, r.step, r.steps_per_epoch, r.attempts, r.worker,
             {now_unix} - r.heartbeat, r.device, r.error, s.metric,
             r.best_epoch, r.best_metric, r.train_seconds, sr.reference_json,
             r.final_train_acc, r.final_test_acc, r.final_test_loss, r.images_per_sec, r.note, r.classes_json,
             r.peak_memory_bytes, r.rung"
        );
        let from = "FROM sweep_runs sr
             JOIN runs r ON r.id = sr.run_id
             JOIN sweeps s ON s.id = sr.sweep_id";
        let sql = if sweep.is_some() {
            format!(
                "SELECT {cols} {from}
                 WHERE sr.sweep_id = (SELECT id FROM sweeps WHERE name = $1)
                 ORDER BY sr.sweep_id, sr.position"
            )
        } else {
            // Every run once, under the first sweep that asked for it.
            format!(
                "SELECT {cols} {from}
                 WHERE $1 IS NULL AND sr.sweep_id = (SELECT MIN(sweep_id) FROM sweep_runs x WHERE x.run_id = r.id)
                 ORDER BY sr.sweep_id, sr.position"
            )
        };
        // Runs of one dataset share their class names: parsed once per distinct text.
        let mut last_classes: Option<(String, Vec<String>)> = None;
        let Some(pool) = &self.raw else {
            for row in self.fetch_rows(&sql, sweep).await? {
                each(run_row(&row, &mut last_classes).map_err(|detail| self.corrupt("a run's row", detail))?);
            }
            return Ok(());
        };
        raw::each_row(pool, &sql, sweep, |row| {
            each(run_row(row, &mut last_classes)?);
            Ok(())
        })
        .await
        .map_err(|e| match e {
            raw::RawError::Sqlx(source) => StoreError::Sql { db: self.name.clone(), source },
            raw::RawError::Sqlite(detail) => StoreError::Query { db: self.name.clone(), detail },
            raw::RawError::Row(detail) => self.corrupt("a run's row", detail),
        })
    }

    /// Whether a sweep of this name exists.
    pub async fn sweep_exists(&self, name: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM sweeps WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql())?;
        Ok(found.is_some())
    }
}

/// One row of [`Store::each_run`]'s query, from either backend.
fn run_row(row: &dyn Cells, last_classes: &mut Option<(String, Vec<String>)>) -> Result<RunRow, String> {
    let need = |v: Option<&str>, col: &str| v.map(str::to_owned).ok_or_else(|| format!("{col} is NULL"));
    let need_int = |v: Option<i64>, col: &str| v.ok_or_else(|| format!("{col} is NULL"));
    let classes = match row.text(25)? {
        None => None,
        Some(text) => {
            if last_classes.as_ref().is_none_or(|(t, _)| t != text) {
                let parsed: Vec<String> = serde_json::from_str(text).map_err(|e| format!("runs.classes_json: {e}"))?;
                *last_classes = Some((text.to_owned(), parsed));
            }
            last_classes.as_ref().map(|(_, c)| c.clone())
        }
    };
    let reference = match row.text(19)? {
        None => None,
        Some(text) => Some(serde_json::from_str(text).map_err(|e| format!("sweep_runs.reference_json: {e}"))?),
    };
    let status = row.text(5)?.unwrap_or("");
    Ok(RunRow {
        config_json: need(row.text(0)?, "runs.config_json")?,
        id: need_int(row.int(1)?, "runs.id")?,
        key: need(row.text(2)?, "runs.key")?,
        sweep: need(row.text(3)?, "sweeps.name")?,
        name: need(row.text(4)?, "sweep_runs.name")?,
        status: status.parse().map_err(|e| format!("runs.status: {e}"))?,
        epochs_total: need_int(row.int(6)?, "runs.epochs_total")?,
        epochs_done: need_int(row.int(7)?, "runs.epochs_done")?,
        step: need_int(row.int(8)?, "runs.step")?,
        steps_per_epoch: row.int(9)?,
        attempts: need_int(row.int(10)?, "runs.attempts")?,
        worker: row.text(11)?.map(str::to_owned),
        heartbeat_age: row.real(12)?,
        device: row.text(13)?.map(str::to_owned),
        error: row.text(14)?.map(str::to_owned),
        metric: need(row.text(15)?, "sweeps.metric")?,
        best_epoch: row.int(16)?,
        best_metric: row.real(17)?,
        train_seconds: row.real(18)?.unwrap_or(0.0),
        reference,
        final_train_acc: row.real(20)?,
        final_test_acc: row.real(21)?,
        final_test_loss: row.real(22)?,
        images_per_sec: row.real(23)?,
        note: row.text(24)?.map(str::to_owned),
        classes,
        peak_memory_bytes: row.int(26)?,
        rung: row.int(27)?,
    })
}

impl Store {
    /// The columns of the documented views (`runs_view`, `epochs_view`), in order: the same on both backends.
    pub async fn view_columns(&self) -> Result<Vec<(String, String)>> {
        use sqlx::{Column, Executor, Statement};
        let mut out = Vec::new();
        for view in ["runs_view", "epochs_view"] {
            let sql = format!("SELECT * FROM {view}");
            let stmt = (&self.pool).prepare(&sql).await.map_err(self.sql())?;
            out.extend(stmt.columns().iter().map(|c| (view.to_owned(), c.name().to_owned())));
        }
        Ok(out)
    }
}
