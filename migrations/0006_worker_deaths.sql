-- Reliability: how many times in a row a run's worker died at the same point while it held the
-- run (found gone by recover_stale: kill -9, an abort, the kernel's OOM killer, a lost node),
-- and where (epochs done, batch) it was last seen. A death after progress counts from 1 again.
-- A run whose worker died SWEEP_MAX_WORKER_DEATHS times (default 3) at the same point is failed
-- instead of resumed again, so a run that kills every worker that takes it cannot block the
-- queue, while workers killed from outside at random points (preemption) never fail a run.
-- Reset when a run is requeued.
ALTER TABLE runs ADD COLUMN worker_deaths INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN death_epoch INTEGER;
ALTER TABLE runs ADD COLUMN death_step INTEGER;
