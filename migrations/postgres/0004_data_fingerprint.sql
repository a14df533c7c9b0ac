-- As migrations/0009_data_fingerprint.sql does on SQLite: the fingerprint of the data each run
-- trains on.
ALTER TABLE runs ADD COLUMN data_sha256 TEXT;
