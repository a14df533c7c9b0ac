-- Training-engine records (issue 4):
-- * runs.status may be 'diverged' (a NaN or infinite loss; error says where);
-- * runs.note: how a run ended (e.g. "stopped early after epoch 12: …");
-- * runs.best_confusion_json: the test confusion matrix of the best epoch (JSON,
--   rows = true class, columns = predicted; per-class accuracy = diagonal / row sum);
-- * epochs.test_top5: top-5 test accuracy; epochs.val_loss / val_acc: the
--   validation split held out of the training set (`val_split`);
-- * sweeps.metric may be 'val_acc' or 'val_loss'.
-- Changing a CHECK constraint means rebuilding `runs` and `sweeps` (SQLite's documented
-- procedure). Store::open runs migrations on a connection with foreign keys
-- off, or dropping the old table would cascade into epochs, checkpoints and
-- sweep_runs; the migration itself is one transaction (sqlx).
CREATE TABLE runs_new (
    id               INTEGER PRIMARY KEY,
    key              TEXT    NOT NULL UNIQUE,
    config_json      TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'done', 'failed', 'interrupted', 'diverged')),
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
    best_confusion_json TEXT
);
INSERT INTO runs_new (id, key, config_json, status, epochs_total, epochs_done, step, steps_per_epoch, attempts,
                      worker, heartbeat, device, error, best_epoch, best_metric, train_seconds, created_at,
                      started_at, finished_at)
SELECT id, key, config_json, status, epochs_total, epochs_done, step, steps_per_epoch, attempts,
       worker, heartbeat, device, error, best_epoch, best_metric, train_seconds, created_at,
       started_at, finished_at
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_status ON runs (status, id);
ALTER TABLE epochs ADD COLUMN test_top5 REAL;
ALTER TABLE epochs ADD COLUMN val_loss REAL;
ALTER TABLE epochs ADD COLUMN val_acc REAL;

CREATE TABLE sweeps_new (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    description  TEXT,
    source_path  TEXT    NOT NULL,
    source_toml  TEXT    NOT NULL,
    metric       TEXT    NOT NULL
                 CHECK (metric IN ('test_acc', 'test_loss', 'train_acc', 'train_loss', 'val_acc', 'val_loss')),
    goal         TEXT    NOT NULL CHECK (goal IN ('maximize', 'minimize')),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO sweeps_new SELECT id, name, description, source_path, source_toml, metric, goal, created_at, updated_at
FROM sweeps;
DROP TABLE sweeps;
ALTER TABLE sweeps_new RENAME TO sweeps;
