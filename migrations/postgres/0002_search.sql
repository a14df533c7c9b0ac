-- Search (issue 18), as migrations/0008_search.sql does on SQLite: ASHA's settings per sweep,
-- each run's rung and where ASHA stopped it, the trials of TPE searches; runs_view gains the rung
-- (a column added at the end: CREATE OR REPLACE keeps the others).
ALTER TABLE sweeps ADD COLUMN early_terminate_json TEXT;
ALTER TABLE runs ADD COLUMN rung BIGINT;
ALTER TABLE runs ADD COLUMN stopped_at_rung BIGINT;
CREATE TABLE trials (
    sweep_id       BIGINT  NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    search         BIGINT  NOT NULL,
    number         BIGINT  NOT NULL,
    run_id         BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    method         TEXT    NOT NULL CHECK (method IN ('random', 'tpe')),
    params_json    TEXT    NOT NULL,
    based_on_json  TEXT,
    created_at     TEXT    NOT NULL DEFAULT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    PRIMARY KEY (sweep_id, search, number)
);
CREATE INDEX trials_by_run ON trials (run_id);
CREATE OR REPLACE VIEW runs_view AS
SELECT
    substr(r.key, 1, 10)                                  AS id,
    s.name                                                AS sweep,
    sr.name                                               AS name,
    r.status                                              AS status,
    r.config_json::jsonb ->> 'model'                      AS model,
    r.config_json::jsonb -> 'dataset' ->> 'name'          AS dataset,
    r.config_json::jsonb ->> 'augment'                    AS augment,
    (r.config_json::jsonb ->> 'batch_size')::bigint       AS batch_size,
    (r.config_json::jsonb ->> 'epochs')::bigint           AS epochs,
    r.config_json::jsonb -> 'optimizer' ->> 'name'        AS optimizer,
    (r.config_json::jsonb -> 'optimizer' ->> 'lr')::double precision AS lr,
    r.config_json::jsonb -> 'schedule' ->> 'name'         AS schedule,
    (r.config_json::jsonb ->> 'seed')::bigint             AS seed,
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
    coalesce(r.config_json::jsonb ->> 'precision', 'f32') AS precision,
    r.rung                                                AS rung
FROM runs r
JOIN sweep_runs sr ON sr.run_id = r.id
JOIN sweeps s ON s.id = sr.sweep_id;
