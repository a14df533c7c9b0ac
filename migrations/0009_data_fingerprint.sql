-- Reliability: runs.data_sha256, the fingerprint of the data a run trains on (train/data/
-- fingerprint.rs), recorded when it starts; a run resumed after its dataset changed fails instead
-- of training its later epochs on other data. NULL for runs recorded before (the next resume
-- records it).
ALTER TABLE runs ADD COLUMN data_sha256 TEXT;
