-- Search (issue 18): sampled trials, TPE proposals, ASHA across a sweep's runs.
-- * sweeps.early_terminate_json: the sweep file's `early_terminate` (ASHA's settings), or NULL.
-- * runs.rung: the last ASHA rung (an epoch) the run reached; runs.stopped_at_rung: the rung
--   where ASHA stopped it, while it is stopped there (NULL again once promoted).
-- * trials: each trial of a TPE search, with its parameters (internal values, as the sampler
--   sees them) and, for a proposal, the trials it was based on; the sequence can be replayed.
-- runs_view gains the rung; the other columns are unchanged.
ALTER TABLE sweeps ADD COLUMN early_terminate_json TEXT;
ALTER TABLE runs ADD COLUMN rung INTEGER;
ALTER TABLE runs ADD COLUMN stopped_at_rung INTEGER;
CREATE TABLE trials (
    sweep_id       INTEGER NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    search         INTEGER NOT NULL,                 -- 0-based index of the [[search]] block
    number         INTEGER NOT NULL,                 -- 0-based trial number in the search
    run_id         INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    method         TEXT    NOT NULL CHECK (method IN ('random', 'tpe')),
    params_json    TEXT    NOT NULL,                 -- internal values, in the block's key order
    based_on_json  TEXT,                             -- a proposal: {"below": [...], "above": [...]}
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (sweep_id, search, number)
);
CREATE INDEX trials_by_run ON trials (run_id);
DROP VIEW runs_view;
CREATE VIEW runs_view AS
SELECT
    substr(r.key, 1, 10)                                  AS id,
    s.name                                                AS sweep,
    sr.name                                               AS name,
    r.status                                              AS status,
    json_extract(r.config_json, '$.model')                AS model,
    json_extract(r.config_json, '$.dataset.name')         AS dataset,
    json_extract(r.config_json, '$.augment')              AS augment,
    json_extract(r.config_json, '$.batch_size')           AS batch_size,
    json_extract(r.config_json, '$.epochs')               AS epochs,
    json_extract(r.config_json, '$.optimizer.name')       AS optimizer,
    json_extract(r.config_json, '$.optimizer.lr')         AS lr,
    json_extract(r.config_json, '$.schedule.name')        AS schedule,
    json_extract(r.config_json, '$.seed')                 AS seed,
    s.metric                                              AS metric,
    r.best_epoch                                          AS best_epoch,
    r.best_metric                                         AS best_metric,
    r.epochs_done                                         AS epochs_done,
    (SELECT e.train_acc FROM epochs e WHERE e.run_id = r.id ORDER BY e.epoch DESC LIMIT 1) AS final_train_acc,
    (SELECT e.test_acc  FROM epochs e WHERE e.run_id = r.id ORDER BY e.epoch DESC LIMIT 1) AS final_test_acc,
    (SELECT e.test_loss FROM epochs e WHERE e.run_id = r.id ORDER BY e.epoch DESC LIMIT 1) AS final_test_loss,
    (SELECT max(e.test_acc)  FROM epochs e WHERE e.run_id = r.id) AS best_test_acc,
    (SELECT min(e.test_loss) FROM epochs e WHERE e.run_id = r.id) AS best_test_loss,
    r.images_per_sec                                      AS images_per_sec,
    r.train_seconds                                       AS train_seconds,
    r.device                                              AS device,
    r.error                                               AS error,
    r.note                                                AS note,
    r.created_at                                          AS created_at,
    r.finished_at                                         AS finished_at,
    r.key                                                 AS key,
    r.config_json                                         AS config_json,
    r.peak_memory_bytes                                   AS peak_memory_bytes,
    coalesce(json_extract(r.config_json, '$.precision'), 'f32') AS precision,
    r.rung                                                AS rung
FROM runs r
JOIN sweep_runs sr ON sr.run_id = r.id
JOIN sweeps s ON s.id = sr.sweep_id
;
