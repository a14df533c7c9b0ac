-- Training-engine records (issue 4): top-5 test accuracy per epoch, and a
-- note on how a run ended (e.g. "stopped early at epoch 12: …").
ALTER TABLE epochs ADD COLUMN test_top5 REAL;
ALTER TABLE runs ADD COLUMN note TEXT;
