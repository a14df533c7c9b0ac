-- Daily use (issue 17): `sweep cancel`.
-- * runs.status may be 'cancelled': a person stopped it with `sweep cancel`. A queued run is
--   cancelled at once; a running one stops after its batch, checkpointed, and resumes from that
--   checkpoint when `sweep retry` (or submitting its sweep again) queues it again.
-- * runs.cancel_requested: set by `sweep cancel` on a running run; its worker reads it with
--   each heartbeat and stops the run. Cleared when the run is queued again.
-- Changing the CHECK constraint means rebuilding `runs` (as 0002 did); the views that read it
-- are dropped first and created again unchanged.
DROP VIEW runs_view;
DROP VIEW epochs_view;
CREATE TABLE runs_new (
    id               INTEGER PRIMARY KEY,
    key              TEXT    NOT NULL UNIQUE,
    config_json      TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'done', 'failed', 'interrupted', 'diverged', 'cancelled')),
    epochs_total     INTEGER NOT NULL CHECK (epochs_total >= 1),
    epochs_done      INTEGER NOT NULL DEFAULT 0,
    step             INTEGER NOT NULL DEFAULT 0,
    steps_per_epoch  INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker           TEXT,
    heartbeat        REAL,
    device           TEXT,
    error            TEXT,
    best_epoch       INTEGER,
    best_metric      REAL,
    train_seconds    REAL    NOT NULL DEFAULT 0,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at       TEXT,
    finished_at      TEXT,
    note             TEXT,
    best_confusion_json TEXT,
    classes_json     TEXT,
    images_per_sec   REAL,
    final_train_acc  REAL,
    final_test_acc   REAL,
    final_test_loss  REAL,
    peak_memory_bytes INTEGER,
    worker_deaths    INTEGER NOT NULL DEFAULT 0,
    death_epoch      INTEGER,
    death_step       INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
INSERT INTO runs_new (id, key, config_json, status, epochs_total, epochs_done, step, steps_per_epoch, attempts,
                      worker, heartbeat, device, error, best_epoch, best_metric, train_seconds, created_at,
                      started_at, finished_at, note, best_confusion_json, classes_json, images_per_sec,
                      final_train_acc, final_test_acc, final_test_loss, peak_memory_bytes, worker_deaths,
                      death_epoch, death_step)
SELECT id, key, config_json, status, epochs_total, epochs_done, step, steps_per_epoch, attempts,
       worker, heartbeat, device, error, best_epoch, best_metric, train_seconds, created_at,
       started_at, finished_at, note, best_confusion_json, classes_json, images_per_sec,
       final_train_acc, final_test_acc, final_test_loss, peak_memory_bytes, worker_deaths,
       death_epoch, death_step
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_status ON runs (status, id);
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
JOIN sweeps s ON s.id = sr.sweep_id
;
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
JOIN sweeps s ON s.id = sr.sweep_id
;
