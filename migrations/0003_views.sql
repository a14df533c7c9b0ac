-- Reports (issue 6):
-- * runs.classes_json: the dataset's class names (JSON list, label order), recorded when a
--   run starts, so reports can name the rows of best_confusion_json;
-- * two read-only views, a stable interface for sqlite3, pandas or Datasette. Their columns
--   are documented in the README and only ever added to, never renamed or removed.
ALTER TABLE runs ADD COLUMN classes_json TEXT;
-- The mean training images/s over a run's epochs, kept up to date by each epoch's record (a
-- per-run aggregate over `epochs` was half of `sweep results`' time at 10,000 runs).
ALTER TABLE runs ADD COLUMN images_per_sec REAL;
UPDATE runs SET images_per_sec = (SELECT avg(e.images_per_sec) FROM epochs e WHERE e.run_id = runs.id);
-- Runs of a sweep in the order the sweep file lists them, without a sort.
CREATE INDEX sweep_runs_by_position ON sweep_runs (sweep_id, position);

-- One row per (sweep, run): the run's short id (first 10 hex digits of its key, as
-- `sweep results` shows it), its name in that sweep, status, the main parameters pulled
-- out of its canonical configuration, and its summary numbers.
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
    r.config_json                                         AS config_json
FROM runs r
JOIN sweep_runs sr ON sr.run_id = r.id
JOIN sweeps s ON s.id = sr.sweep_id;

-- One row per (sweep, run, epoch).
CREATE VIEW epochs_view AS
SELECT
    substr(r.key, 1, 10)  AS id,
    s.name                AS sweep,
    sr.name               AS name,
    e.epoch               AS epoch,
    e.train_loss          AS train_loss,
    e.train_acc           AS train_acc,
    e.test_loss           AS test_loss,
    e.test_acc            AS test_acc,
    e.test_top5           AS test_top5,
    e.val_loss            AS val_loss,
    e.val_acc             AS val_acc,
    e.lr                  AS lr,
    e.seconds             AS seconds,
    e.images_per_sec      AS images_per_sec,
    (e.epoch = r.best_epoch) AS is_best,
    e.recorded_at         AS recorded_at
FROM epochs e
JOIN runs r ON r.id = e.run_id
JOIN sweep_runs sr ON sr.run_id = r.id
JOIN sweeps s ON s.id = sr.sweep_id;
