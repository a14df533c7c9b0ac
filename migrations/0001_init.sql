-- sweep's schema, version 1. Never edit a released migration: add a new file.
-- Times are ISO-8601 UTC text, except runs.heartbeat (unix seconds, compared by
-- the stale-run check). Accuracies are percent (0-100).

CREATE TABLE sweeps (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    description  TEXT,
    source_path  TEXT    NOT NULL,
    source_toml  TEXT    NOT NULL,
    metric       TEXT    NOT NULL CHECK (metric IN ('test_acc', 'test_loss', 'train_acc', 'train_loss')),
    goal         TEXT    NOT NULL CHECK (goal IN ('maximize', 'minimize')),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- One row per distinct configuration (key = sha256 of its canonical JSON).
CREATE TABLE runs (
    id               INTEGER PRIMARY KEY,
    key              TEXT    NOT NULL UNIQUE,
    config_json      TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'done', 'failed', 'interrupted')),
    epochs_total     INTEGER NOT NULL CHECK (epochs_total >= 1),
    epochs_done      INTEGER NOT NULL DEFAULT 0,
    step             INTEGER NOT NULL DEFAULT 0,     -- batches done in the current epoch
    steps_per_epoch  INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,     -- times a worker claimed it
    worker           TEXT,                           -- host:pid of the worker that holds it
    heartbeat        REAL,                           -- unix seconds of the holder's last sign of life
    device           TEXT,
    error            TEXT,
    best_epoch       INTEGER,
    best_metric      REAL,
    train_seconds    REAL    NOT NULL DEFAULT 0,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at       TEXT,
    finished_at      TEXT
);
CREATE INDEX runs_by_status ON runs (status, id);

-- Which runs a sweep asked for (a run can belong to several sweeps).
CREATE TABLE sweep_runs (
    sweep_id        INTEGER NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    run_id          INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    reference_json  TEXT,
    PRIMARY KEY (sweep_id, run_id)
);
CREATE INDEX sweep_runs_by_run ON sweep_runs (run_id);

-- One row per finished epoch (1-based); the primary key makes a double record impossible.
CREATE TABLE epochs (
    run_id          INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch           INTEGER NOT NULL CHECK (epoch >= 1),
    train_loss      REAL    NOT NULL,
    train_acc       REAL    NOT NULL,
    test_loss       REAL    NOT NULL,
    test_acc        REAL    NOT NULL,
    lr              REAL    NOT NULL,
    seconds         REAL    NOT NULL,
    images_per_sec  REAL    NOT NULL,
    recorded_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, epoch)
);

-- The latest and the best checkpoint of each run. `epoch` counts finished epochs;
-- `step` > 0 marks a checkpoint taken mid-epoch (after Ctrl-C). Paths are relative
-- to the home folder.
CREATE TABLE checkpoints (
    run_id        INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL CHECK (kind IN ('latest', 'best')),
    epoch         INTEGER NOT NULL,
    step          INTEGER NOT NULL DEFAULT 0,
    path          TEXT    NOT NULL,
    sha256        TEXT    NOT NULL,
    state_path    TEXT    NOT NULL,
    state_sha256  TEXT    NOT NULL,
    metric        REAL,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, kind)
);
