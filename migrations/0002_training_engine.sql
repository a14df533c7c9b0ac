-- Training-engine records (issue 4): top-5 test accuracy per epoch, a note on
-- how a run ended (e.g. "stopped early after epoch 12: …"), and the test-set
-- confusion matrix of the best epoch (JSON rows = true class, columns =
-- predicted class; per-class accuracy is the diagonal over the row sums).
ALTER TABLE epochs ADD COLUMN test_top5 REAL;
ALTER TABLE runs ADD COLUMN note TEXT;
ALTER TABLE runs ADD COLUMN best_confusion_json TEXT;
