-- The last recorded epoch's train accuracy, test accuracy and test loss, kept on the run by
-- each epoch's record (in the same transaction as the epoch row), so that `sweep results`
-- reads one row per run: looking the last epoch up in `epochs` was a third of its SQLite
-- time at 10,000 runs x 20 epochs. Epoch rows are only ever added, and `epochs_done` is
-- the last one added, so these always equal the epoch row at `epochs_done`.
ALTER TABLE runs ADD COLUMN final_train_acc REAL;
ALTER TABLE runs ADD COLUMN final_test_acc REAL;
ALTER TABLE runs ADD COLUMN final_test_loss REAL;
UPDATE runs SET
    final_train_acc = (SELECT e.train_acc FROM epochs e WHERE e.run_id = runs.id AND e.epoch = runs.epochs_done),
    final_test_acc  = (SELECT e.test_acc  FROM epochs e WHERE e.run_id = runs.id AND e.epoch = runs.epochs_done),
    final_test_loss = (SELECT e.test_loss FROM epochs e WHERE e.run_id = runs.id AND e.epoch = runs.epochs_done);
