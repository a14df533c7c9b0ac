//! What search needs from the store: ASHA's arrivals at a rung, a run's rung,
//! promotions; TPE's trials and the transaction that adds a proposal.
//! The decisions themselves are in [`crate::search`].

use super::{Lease, Result, Store, SubmitOutcome, Tx};
use crate::search::asha::Arrival;
use crate::search::tpe;
use crate::spec::{EarlyTerminate, Metric, PlannedRun, TrialRef};

/// ASHA's settings for a run, from the first of its sweeps that has them.
#[derive(Debug, Clone, Copy)]
pub struct AshaContext {
    /// The sweep whose runs are compared.
    pub sweep_id: i64,
    /// The settings.
    pub settings: EarlyTerminate,
    /// The metric compared.
    pub metric: Metric,
}

/// A sweep with TPE searches: its stored file, to expand proposals from.
#[derive(Debug, Clone)]
pub struct SearchSweep {
    /// Sweep id.
    pub id: i64,
    /// Sweep name.
    pub name: String,
    /// Where the file was.
    pub source_path: String,
    /// Its text.
    pub source_toml: String,
}

/// What a proposal transaction adds.
#[derive(Debug, Clone)]
pub struct NewTrial {
    /// The run (its `trial` says which).
    pub run: PlannedRun,
    /// `{"below": [...], "above": [...]}` for a TPE proposal.
    pub based_on: Option<String>,
    /// `tpe` or `random`.
    pub method: &'static str,
}

impl Store {
    /// The ASHA settings that apply to a run, if any of its sweeps has them.
    pub async fn asha_context(&self, run_id: i64) -> Result<Option<AshaContext>> {
        let row: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT s.id, s.early_terminate_json, s.metric FROM sweeps s JOIN sweep_runs sr ON sr.sweep_id = s.id
             WHERE sr.run_id = $1 AND s.early_terminate_json IS NOT NULL ORDER BY s.id LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql())?;
        let Some((sweep_id, json, metric)) = row else { return Ok(None) };
        let Ok(settings) = serde_json::from_str::<EarlyTerminate>(&json) else {
            tracing::warn!(sweep = sweep_id, "unreadable early_terminate settings: ignored");
            return Ok(None);
        };
        let sweep_metric = Metric::from_name(&metric).unwrap_or(Metric::TestAcc);
        Ok(Some(AshaContext { sweep_id, settings, metric: settings.metric_or(sweep_metric) }))
    }

    /// Every run of the sweep that recorded `epoch`, in the order the epochs
    /// were recorded, with its metric there (oriented: larger is better).
    pub async fn rung_arrivals(&self, ctx: &AshaContext, epoch: u64) -> Result<Vec<Arrival>> {
        let rows: Vec<(i64, Option<f64>)> = sqlx::query_as(&format!(
            "SELECT e.run_id, e.{col} FROM epochs e JOIN sweep_runs sr ON sr.run_id = e.run_id
             WHERE sr.sweep_id = $1 AND e.epoch = $2 ORDER BY e.recorded_at, {tie}",
            col = ctx.metric.as_str(), // a column name from the enum, never from user text
            tie = self.dialect.same_millisecond,
        ))
        .bind(ctx.sweep_id)
        .bind(epoch as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        let sign = if ctx.metric.maximize() { 1.0 } else { -1.0 };
        Ok(rows.into_iter().map(|(run, v)| Arrival { run, value: v.map_or(f64::NAN, |v| sign * v) }).collect())
    }

    /// The runs of the sweep that ASHA stopped at `epoch` and that are still stopped.
    pub async fn stopped_at(&self, ctx: &AshaContext, epoch: u64) -> Result<Vec<i64>> {
        sqlx::query_scalar(
            "SELECT r.id FROM runs r JOIN sweep_runs sr ON sr.run_id = r.id
             WHERE sr.sweep_id = $1 AND r.stopped_at_rung = $2 AND r.status = 'done' ORDER BY r.id",
        )
        .bind(ctx.sweep_id)
        .bind(epoch as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())
    }

    /// Records the rung a held run reached and whether ASHA stops it there.
    pub async fn set_rung(&self, lease: &Lease, rung: u64, stopped: bool) -> Result<()> {
        let mut tx = self.held_tx(lease).await?;
        sqlx::query("UPDATE runs SET rung = $1, stopped_at_rung = $2 WHERE id = $3")
            .bind(rung as i64)
            .bind(stopped.then_some(rung as i64))
            .bind(lease.run_id)
            .execute(&mut *tx)
            .await
            .map_err(self.sql())?;
        tx.commit().await.map_err(self.sql())
    }

    /// Queues a run ASHA stopped at `rung` again (it resumes from its
    /// checkpoint there), with the note saying why. False when it is no longer
    /// stopped there (another worker promoted it, or a person changed it).
    pub async fn promote(&self, run_id: i64, rung: u64, note: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'queued', stopped_at_rung = NULL, note = $1, worker = NULL, finished_at = NULL
             WHERE id = $2 AND status = 'done' AND stopped_at_rung = $3",
        )
        .bind(note)
        .bind(run_id)
        .bind(rung as i64)
        .execute(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn record_trial(
        &self,
        tx: &mut Tx,
        sweep_id: i64,
        run_id: i64,
        t: &TrialRef,
        method: &str,
        based_on: Option<&str>,
    ) -> Result<()> {
        let params = serde_json::to_string(&t.params).expect("numbers serialise");
        sqlx::query(
            "INSERT INTO trials (sweep_id, search, number, run_id, method, params_json, based_on_json)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (sweep_id, search, number) DO NOTHING",
        )
        .bind(sweep_id)
        .bind(t.search as i64)
        .bind(t.number as i64)
        .bind(run_id)
        .bind(method)
        .bind(params)
        .bind(based_on)
        .execute(&mut **tx)
        .await
        .map_err(self.sql())?;
        Ok(())
    }

    /// Sweeps that have trials of a search (those of a TPE search may want proposals).
    pub async fn search_sweeps(&self) -> Result<Vec<SearchSweep>> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, name, source_path, source_toml FROM sweeps
             WHERE id IN (SELECT DISTINCT sweep_id FROM trials) ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .map(|(id, name, source_path, source_toml)| SearchSweep { id, name, source_path, source_toml })
            .collect())
    }

    #[allow(clippy::type_complexity)] // one row of a join, read once below
    async fn trials_in(&self, tx: &mut Tx, sweep_id: i64, search: usize) -> Result<Vec<tpe::Trial>> {
        let rows: Vec<(i64, String, String, Option<f64>, i64, Option<i64>, String)> = sqlx::query_as(
            "SELECT t.number, t.params_json, r.status, r.best_metric, r.epochs_done, r.stopped_at_rung, s.goal
             FROM trials t JOIN runs r ON r.id = t.run_id JOIN sweeps s ON s.id = t.sweep_id
             WHERE t.sweep_id = $1 AND t.search = $2 ORDER BY t.number",
        )
        .bind(sweep_id)
        .bind(search as i64)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .filter_map(|(number, params, status, best, epochs_done, stopped, goal)| {
                let params: Vec<f64> = serde_json::from_str(&params).ok()?;
                let sign = if goal == "minimize" { -1.0 } else { 1.0 };
                let value = best.map_or(f64::NAN, |v| sign * v);
                let state = match (status.as_str(), stopped) {
                    ("done", Some(_)) => tpe::State::Pruned { step: epochs_done as u64, value },
                    ("done", None) => tpe::State::Complete(value),
                    // Failed runs are left out, as Optuna leaves out failed trials.
                    ("failed" | "diverged" | "cancelled", _) => return None,
                    _ => tpe::State::Running,
                };
                Some(tpe::Trial { number: number as u64, params, state })
            })
            .collect())
    }

    /// In one write transaction (proposals of several workers are serialised;
    /// on PostgreSQL the sweep's row is locked): reads the search's trials,
    /// asks `make` for the next one (given its number and the trials so far),
    /// queues its run and records the trial. None when the search has all its
    /// trials, or `make` has nothing.
    pub async fn propose(
        &self,
        sweep_id: i64,
        search: usize,
        count: u64,
        make: impl FnOnce(u64, &[tpe::Trial]) -> Option<NewTrial>,
    ) -> Result<Option<(NewTrial, SubmitOutcome)>> {
        let mut tx = self.write_tx().await?;
        let _: Option<i64> =
            sqlx::query_scalar(&format!("SELECT id FROM sweeps WHERE id = $1{}", self.dialect.row_lock))
                .bind(sweep_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(self.sql())?;
        let trials = self.trials_in(&mut tx, sweep_id, search).await?;
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT MAX(number) FROM trials WHERE sweep_id = $1 AND search = $2")
                .bind(sweep_id)
                .bind(search as i64)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.sql())?;
        let number = taken.map_or(0, |n| n as u64 + 1);
        if number >= count {
            return Ok(None);
        }
        let Some(new) = make(number, &trials) else { return Ok(None) };
        let position: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(position), -1) + 1 FROM sweep_runs WHERE sweep_id = $1")
                .bind(sweep_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.sql())?;
        let mut run = new.run.clone();
        let trial = run.trial.take().expect("a proposal is a trial");
        let outcome = self.submit_run(&mut tx, sweep_id, position, &run).await?;
        let run_id: i64 = sqlx::query_scalar("SELECT id FROM runs WHERE key = $1")
            .bind(&run.key.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(self.sql())?;
        self.record_trial(&mut tx, sweep_id, run_id, &trial, new.method, new.based_on.as_deref()).await?;
        tx.commit().await.map_err(self.sql())?;
        Ok(Some((new, outcome)))
    }

    /// How many trials each TPE search of a sweep has so far: (search index, trials).
    pub async fn trial_counts(&self, sweep_id: i64) -> Result<Vec<(i64, i64)>> {
        sqlx::query_as("SELECT search, count(*) FROM trials WHERE sweep_id = $1 GROUP BY search ORDER BY search")
            .bind(sweep_id)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql())
    }

    /// Every run's trial, by run id: (search, number, method); a run that is
    /// a trial of two sweeps gets its first sweep's, as [`Store::trial_of`].
    /// One query for a report, however many runs it shows.
    pub async fn trials_by_run(&self) -> Result<std::collections::HashMap<i64, (i64, i64, String)>> {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as("SELECT run_id, search, number, method FROM trials ORDER BY sweep_id DESC")
                .fetch_all(&self.pool)
                .await
                .map_err(self.sql())?;
        // the first sweep's row last, so that it stays
        Ok(rows.into_iter().map(|(run, search, number, method)| (run, (search, number, method))).collect())
    }

    /// A run's trial, if it is one: (search, number, method, based-on JSON).
    pub async fn trial_of(&self, run_id: i64) -> Result<Option<(i64, i64, String, Option<String>)>> {
        sqlx::query_as(
            "SELECT search, number, method, based_on_json FROM trials WHERE run_id = $1 ORDER BY sweep_id LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql())
    }
}
