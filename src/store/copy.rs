//! `sweep store copy`: a store's whole history (sweeps, runs, their epochs,
//! checkpoint records and memberships) into another store, typically a
//! SQLite file into PostgreSQL when a lab outgrows one machine.
//!
//! Runs are matched by key (the configuration's hash), sweeps by name, so
//! copying again adds only what is new and brings runs that progressed since
//! up to date: the copy is idempotent. Everything lands in one transaction on
//! the target, and is then verified by counts. A run that is `running` in the
//! source arrives `interrupted` (its worker is not the target's): a worker on
//! the target resumes it from its latest checkpoint.

use super::{Result, Store, StoreError, Tx};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// Sweeps created in the target.
    pub sweeps_added: usize,
    /// Runs created in the target.
    pub runs_added: usize,
    /// Runs the target had with less progress, replaced by the source's.
    pub runs_updated: usize,
    /// Runs the target already had as they are in the source.
    pub runs_unchanged: usize,
    /// Runs not copied because a worker of the target is training them.
    pub runs_held: usize,
    /// Epoch rows written.
    pub epochs_copied: usize,
    /// Checkpoint records written.
    pub checkpoints_copied: usize,
    /// After the copy: runs, epochs and checkpoint records of the source's runs found in the target.
    pub verified: (usize, usize, usize),
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Real,
    Text,
}

enum Value {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
}

/// The columns copied, with their kinds (ids are mapped, not copied).
const RUN_COLUMNS: &[(&str, Kind)] = &[
    ("key", Kind::Text),
    ("config_json", Kind::Text),
    ("status", Kind::Text),
    ("epochs_total", Kind::Int),
    ("epochs_done", Kind::Int),
    ("step", Kind::Int),
    ("steps_per_epoch", Kind::Int),
    ("attempts", Kind::Int),
    ("worker", Kind::Text),
    ("heartbeat", Kind::Real),
    ("device", Kind::Text),
    ("error", Kind::Text),
    ("best_epoch", Kind::Int),
    ("best_metric", Kind::Real),
    ("train_seconds", Kind::Real),
    ("created_at", Kind::Text),
    ("started_at", Kind::Text),
    ("finished_at", Kind::Text),
    ("note", Kind::Text),
    ("best_confusion_json", Kind::Text),
    ("classes_json", Kind::Text),
    ("images_per_sec", Kind::Real),
    ("final_train_acc", Kind::Real),
    ("final_test_acc", Kind::Real),
    ("final_test_loss", Kind::Real),
    ("peak_memory_bytes", Kind::Int),
    ("worker_deaths", Kind::Int),
    ("death_epoch", Kind::Int),
    ("death_step", Kind::Int),
    ("cancel_requested", Kind::Int),
    ("rung", Kind::Int),
    ("stopped_at_rung", Kind::Int),
    ("data_sha256", Kind::Text),
];

const EPOCH_COLUMNS: &[(&str, Kind)] = &[
    ("epoch", Kind::Int),
    ("train_loss", Kind::Real),
    ("train_acc", Kind::Real),
    ("test_loss", Kind::Real),
    ("test_acc", Kind::Real),
    ("lr", Kind::Real),
    ("seconds", Kind::Real),
    ("images_per_sec", Kind::Real),
    ("recorded_at", Kind::Text),
    ("test_top5", Kind::Real),
    ("val_loss", Kind::Real),
    ("val_acc", Kind::Real),
    ("peak_memory_bytes", Kind::Int),
];

const CHECKPOINT_COLUMNS: &[(&str, Kind)] = &[
    ("kind", Kind::Text),
    ("epoch", Kind::Int),
    ("step", Kind::Int),
    ("path", Kind::Text),
    ("sha256", Kind::Text),
    ("state_path", Kind::Text),
    ("state_sha256", Kind::Text),
    ("metric", Kind::Real),
    ("created_at", Kind::Text),
];

const SWEEP_COLUMNS: &[(&str, Kind)] = &[
    ("name", Kind::Text),
    ("description", Kind::Text),
    ("source_path", Kind::Text),
    ("source_toml", Kind::Text),
    ("metric", Kind::Text),
    ("goal", Kind::Text),
    ("created_at", Kind::Text),
    ("updated_at", Kind::Text),
    ("early_terminate_json", Kind::Text),
];

fn names(cols: &[(&str, Kind)]) -> String {
    cols.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn read(row: &AnyRow, offset: usize, cols: &[(&str, Kind)]) -> std::result::Result<Vec<Value>, sqlx::Error> {
    cols.iter()
        .enumerate()
        .map(|(i, (_, kind))| {
            Ok(match kind {
                Kind::Int => Value::Int(row.try_get(offset + i)?),
                Kind::Real => Value::Real(row.try_get(offset + i)?),
                Kind::Text => Value::Text(row.try_get(offset + i)?),
            })
        })
        .collect()
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    values: &'q [Value],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for v in values {
        q = match v {
            Value::Int(x) => q.bind(*x),
            Value::Real(x) => q.bind(*x),
            Value::Text(x) => q.bind(x.as_deref()),
        };
    }
    q
}

fn text(values: &[Value], i: usize) -> Option<&str> {
    match &values[i] {
        Value::Text(t) => t.as_deref(),
        _ => None,
    }
}

fn int(values: &[Value], i: usize) -> Option<i64> {
    match &values[i] {
        Value::Int(t) => *t,
        _ => None,
    }
}

impl Store {
    /// Copies every sweep and run of this store into `target` (see the module
    /// documentation), in one transaction on the target, and verifies it.
    pub async fn copy_into(&self, target: &Store) -> Result<CopyReport> {
        let src = self.sql();
        let dst = target.sql();
        let mut report = CopyReport::default();
        let mut tx = target.write_tx().await?;

        // Sweeps by name.
        let mut sweep_ids = std::collections::HashMap::new();
        let rows = sqlx::query(&format!("SELECT id, {} FROM sweeps ORDER BY id", names(SWEEP_COLUMNS)))
            .fetch_all(&self.pool)
            .await
            .map_err(&src)?;
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(&src)?;
            let values = read(row, 1, SWEEP_COLUMNS).map_err(&src)?;
            let name = text(&values, 0).unwrap_or_default().to_owned();
            let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM sweeps WHERE name = $1")
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(&dst)?;
            let target_id = match existing {
                Some(t) => t,
                None => {
                    report.sweeps_added += 1;
                    let sql = format!(
                        "INSERT INTO sweeps ({}) VALUES ({}) RETURNING id",
                        names(SWEEP_COLUMNS),
                        placeholders(1, SWEEP_COLUMNS.len())
                    );
                    bind_all(sqlx::query(&sql), &values)
                        .fetch_one(&mut *tx)
                        .await
                        .and_then(|r| r.try_get::<i64, _>(0))
                        .map_err(&dst)?
                }
            };
            sweep_ids.insert(id, target_id);
        }

        // Runs by key, each with its epochs and checkpoints.
        let rows = sqlx::query(&format!("SELECT id, {} FROM runs ORDER BY id", names(RUN_COLUMNS)))
            .fetch_all(&self.pool)
            .await
            .map_err(&src)?;
        let mut run_ids = std::collections::HashMap::new();
        let mut expected = Vec::new();
        // The runs whose epochs and checkpoint records are copied (source id -> target id).
        let mut children_of = std::collections::HashMap::new();
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(&src)?;
            let mut values = read(row, 1, RUN_COLUMNS).map_err(&src)?;
            let key = text(&values, 0).unwrap_or_default().to_owned();
            // A run being trained by the source's worker arrives interrupted.
            if text(&values, 2) == Some("running") {
                values[2] = Value::Text(Some("interrupted".into()));
                values[8] = Value::Text(None);
            }
            let existing: Option<(i64, String, i64, i64)> =
                sqlx::query_as("SELECT id, status, epochs_done, step FROM runs WHERE key = $1")
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(&dst)?;
            let target_id = match existing {
                Some((t, status, epochs_done, step)) => {
                    run_ids.insert(id, t);
                    let same = Some(status.as_str()) == text(&values, 2)
                        && Some(epochs_done) == int(&values, 4)
                        && Some(step) == int(&values, 5);
                    if same {
                        report.runs_unchanged += 1;
                        expected.push((id, t));
                        continue;
                    }
                    if status == "running" {
                        report.runs_held += 1;
                        continue;
                    }
                    for table in ["epochs", "checkpoints"] {
                        sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
                            .bind(t)
                            .execute(&mut *tx)
                            .await
                            .map_err(&dst)?;
                    }
                    let sets = RUN_COLUMNS
                        .iter()
                        .enumerate()
                        .map(|(i, (n, _))| format!("{n} = ${}", i + 2))
                        .collect::<Vec<_>>()
                        .join(", ");
                    bind_all(sqlx::query(&format!("UPDATE runs SET {sets} WHERE id = $1")).bind(t), &values)
                        .execute(&mut *tx)
                        .await
                        .map_err(&dst)?;
                    report.runs_updated += 1;
                    t
                }
                None => {
                    let sql = format!(
                        "INSERT INTO runs ({}) VALUES ({}) RETURNING id",
                        names(RUN_COLUMNS),
                        placeholders(1, RUN_COLUMNS.len())
                    );
                    let t: i64 = bind_all(sqlx::query(&sql), &values)
                        .fetch_one(&mut *tx)
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(&dst)?;
                    report.runs_added += 1;
                    t
                }
            };
            run_ids.insert(id, target_id);
            expected.push((id, target_id));
            children_of.insert(id, target_id);
        }

        // Their epochs, all runs together in the order the source wrote them
        // (`recorded_at`, its ties by the dialect's write order), so that the
        // target's own write order keeps ASHA's rung arrivals as they were.
        let written = format!("e.recorded_at, {}", self.dialect.same_millisecond);
        report.epochs_copied +=
            self.copy_children(&mut tx, target, "epochs", EPOCH_COLUMNS, &written, &children_of).await?;
        report.checkpoints_copied +=
            self.copy_children(&mut tx, target, "checkpoints", CHECKPOINT_COLUMNS, "e.run_id", &children_of).await?;

        // Memberships.
        let rows: Vec<(i64, i64, String, i64, Option<String>)> =
            sqlx::query_as("SELECT sweep_id, run_id, name, position, reference_json FROM sweep_runs")
                .fetch_all(&self.pool)
                .await
                .map_err(&src)?;
        for (sweep, run, name, position, reference) in rows {
            let (Some(&s), Some(&r)) = (sweep_ids.get(&sweep), run_ids.get(&run)) else { continue };
            sqlx::query(
                "INSERT INTO sweep_runs (sweep_id, run_id, name, position, reference_json) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (sweep_id, run_id) DO NOTHING",
            )
            .bind(s)
            .bind(r)
            .bind(name)
            .bind(position)
            .bind(reference)
            .execute(&mut *tx)
            .await
            .map_err(&dst)?;
        }
        // The trials of TPE searches (their proposals' records), by sweep and number.
        type TrialRow = (i64, i64, i64, i64, String, String, Option<String>, String);
        let rows: Vec<TrialRow> = sqlx::query_as(
            "SELECT sweep_id, search, number, run_id, method, params_json, based_on_json, created_at FROM trials",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&src)?;
        for (sweep, search, number, run, method, params, based_on, created_at) in rows {
            let (Some(&s), Some(&r)) = (sweep_ids.get(&sweep), run_ids.get(&run)) else { continue };
            sqlx::query(
                "INSERT INTO trials (sweep_id, search, number, run_id, method, params_json, based_on_json, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sweep_id, search, number) DO NOTHING",
            )
            .bind(s)
            .bind(search)
            .bind(number)
            .bind(r)
            .bind(method)
            .bind(params)
            .bind(based_on)
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(&dst)?;
        }
        tx.commit().await.map_err(&dst)?;
        target.checkpoint_wal().await;

        // Verify: every run copied (or already there) has the source's counts.
        let mut verified = (0, 0, 0);
        for (s, t) in expected {
            let (se, te) = (self.count_of_run("epochs", s).await?, target.count_of_run("epochs", t).await?);
            let (sc, tc) = (self.count_of_run("checkpoints", s).await?, target.count_of_run("checkpoints", t).await?);
            if se != te || sc != tc {
                return Err(StoreError::Query {
                    db: target.name.clone(),
                    detail: format!(
                        "the copy does not match its source: run {t} has {te} epochs and {tc} checkpoint records, \
                         the source's run {s} {se} and {sc}"
                    ),
                });
            }
            verified.0 += 1;
            verified.1 += te as usize;
            verified.2 += tc as usize;
        }
        report.verified = verified;
        Ok(report)
    }

    /// How many rows of `table` belong to run `id`.
    async fn count_of_run(&self, table: &str, id: i64) -> Result<i64> {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE run_id = $1"))
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(self.sql())
    }

    /// The rows of `table` that belong to the runs in `runs` (source id ->
    /// target id), in the order `order_by` (over the alias `e`) gives.
    async fn copy_children(
        &self,
        tx: &mut Tx,
        target: &Store,
        table: &str,
        cols: &[(&str, Kind)],
        order_by: &str,
        runs: &std::collections::HashMap<i64, i64>,
    ) -> Result<usize> {
        let rows = sqlx::query(&format!("SELECT e.run_id, {} FROM {table} e ORDER BY {order_by}", names(cols)))
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql())?;
        let sql = format!("INSERT INTO {table} (run_id, {}) VALUES ($1, {})", names(cols), placeholders(2, cols.len()));
        let mut copied = 0;
        for row in &rows {
            let from: i64 = row.try_get(0).map_err(self.sql())?;
            let Some(&to) = runs.get(&from) else { continue };
            let values = read(row, 1, cols).map_err(self.sql())?;
            bind_all(sqlx::query(&sql).bind(to), &values).execute(&mut **tx).await.map_err(target.sql())?;
            copied += 1;
        }
        Ok(copied)
    }
}
