-- Reliability: how many times a run's worker died while it held the run (found gone by
-- recover_stale: kill -9, an abort, the kernel's OOM killer, a lost node). A run whose worker
-- died SWEEP_MAX_WORKER_DEATHS times (default 3) is failed instead of resumed again, so a run
-- that kills every worker that takes it cannot block the queue. Reset when a run is requeued.
ALTER TABLE runs ADD COLUMN worker_deaths INTEGER NOT NULL DEFAULT 0;
