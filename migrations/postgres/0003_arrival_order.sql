-- The order in which epochs were written (issue 18's ASHA replays rung arrivals in that order).
-- recorded_at has millisecond resolution, and epoch writes of one sweep are serialised by the
-- row lock on the sweep, so a worker that waited for the lock often writes within the same
-- millisecond as the one before it. SQLite breaks such ties by its rowid; this is PostgreSQL's
-- counterpart: a number drawn at each insert (rows already there get theirs in storage order).
ALTER TABLE epochs ADD COLUMN written BIGINT GENERATED ALWAYS AS IDENTITY;
