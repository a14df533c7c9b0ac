-- Peak memory (GPU issue): the most memory a run used, in bytes, per epoch and over the run.
-- On a GPU: device memory in use, sampled after every batch; on the CPU: the process's peak
-- resident set since the run started. NULL where it was not measured (older runs).
ALTER TABLE epochs ADD COLUMN peak_memory_bytes INTEGER;
ALTER TABLE runs ADD COLUMN peak_memory_bytes INTEGER;

-- runs_view gains two columns at the end (its columns are only ever added): the peak memory
-- and the run's precision.
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
    coalesce(json_extract(r.config_json, '$.precision'), 'f32') AS precision
FROM runs r
JOIN sweep_runs sr ON sr.run_id = r.id
JOIN sweeps s ON s.id = sr.sweep_id;
