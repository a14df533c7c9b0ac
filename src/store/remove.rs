//! Forgetting runs and sweeps (`sweep rm`), and the facts `sweep prune` and
//! `submit --rerun` decide from. Files are the caller's: the rows are the
//! commit point, so files are removed after the transaction, and a file left
//! behind by a crash is only unreferenced (`sweep prune` removes it).

use super::{Result, Status, Store, StoreError};
use std::collections::HashMap;

impl Store {
    /// Which sweeps list each run: run id -> sweep names, oldest sweep first.
    pub async fn memberships(&self) -> Result<HashMap<i64, Vec<String>>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT sr.run_id, s.name FROM sweep_runs sr JOIN sweeps s ON s.id = sr.sweep_id ORDER BY s.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        let mut out: HashMap<i64, Vec<String>> = HashMap::new();
        for (run, sweep) in rows {
            out.entry(run).or_default().push(sweep);
        }
        Ok(out)
    }

    /// Every run's key and status (what `submit --rerun` and `sweep prune` need).
    pub async fn key_statuses(&self) -> Result<HashMap<String, (i64, Status)>> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT key, id, status FROM runs").fetch_all(&self.pool).await.map_err(self.sql())?;
        rows.into_iter().map(|(key, id, s)| Ok((key, (id, self.parse_status(&s)?)))).collect()
    }

    /// Deletes runs with their epochs, checkpoint records and memberships, in
    /// one transaction; a sweep left with no run goes too. A running run is
    /// refused (cancel it first) and nothing is deleted.
    pub async fn remove_runs(&self, run_ids: &[i64]) -> Result<()> {
        let e = self.sql();
        let mut tx = self.write_tx().await?;
        for &id in run_ids {
            if self.status_in(&mut tx, id).await? == Some(Status::Running) {
                return Err(StoreError::NotRemovable {
                    run_id: id,
                    why: "it is running: `sweep cancel` it first, then remove it",
                });
            }
            // epochs, checkpoints and sweep_runs go with it (ON DELETE CASCADE).
            sqlx::query("DELETE FROM runs WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(&e)?;
        }
        sqlx::query("DELETE FROM sweeps WHERE id NOT IN (SELECT sweep_id FROM sweep_runs)")
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        self.checkpoint_wal().await;
        Ok(())
    }

    /// Deletes a sweep and those of its runs that no other sweep lists
    /// (`runs_only_here`, as the caller computed them from
    /// [`Store::memberships`] and showed them); the others stay, with their
    /// records, for the sweeps that still use them.
    pub async fn remove_sweep(&self, name: &str, runs_only_here: &[i64]) -> Result<()> {
        let e = self.sql();
        let mut tx = self.write_tx().await?;
        for &id in runs_only_here {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sweep_runs sr JOIN sweeps s ON s.id = sr.sweep_id
                 WHERE sr.run_id = $1 AND s.name != $2",
            )
            .bind(id)
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(&e)?;
            if others > 0 {
                return Err(StoreError::NotRemovable {
                    run_id: id,
                    why: "another sweep lists it now; nothing was removed (run the command again)",
                });
            }
            if self.status_in(&mut tx, id).await? == Some(Status::Running) {
                return Err(StoreError::NotRemovable {
                    run_id: id,
                    why: "it is running: `sweep cancel --sweep` first, then remove the sweep",
                });
            }
            sqlx::query("DELETE FROM runs WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(&e)?;
        }
        sqlx::query("DELETE FROM sweeps WHERE name = $1").bind(name).execute(&mut *tx).await.map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        self.checkpoint_wal().await;
        Ok(())
    }

    /// Forgets the latest-checkpoint record of a finished run (`sweep prune
    /// --keep best`); its files go unless the best checkpoint shares them.
    pub async fn drop_finished_latest(&self, run_id: i64) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM checkpoints WHERE run_id = $1 AND kind = 'latest'
               AND (SELECT status FROM runs WHERE id = $1) = 'done'",
        )
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(done.rows_affected() > 0)
    }
}
