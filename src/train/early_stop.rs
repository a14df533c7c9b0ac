//! Early stopping as a pure decision: given the rule, the epoch's value of the
//! watched metric and the counters so far, whether to stop. The trainer keeps
//! the counters in the checkpoint's trainer state and acts on the decision.

use crate::spec::{EarlyStop, Metric};

/// Early stopping's memory between epochs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// The best value of the watched metric so far.
    pub best: Option<f64>,
    /// Epochs since it last improved by more than `min_delta`.
    pub since_improved: u64,
}

/// What early stopping decided after an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The counters to keep.
    pub counters: Counters,
    /// Stop now (never after the last epoch: the run is finished anyway).
    pub stop: bool,
}

/// The metric a rule watches: its own, else the sweep's.
pub fn watched(rule: &EarlyStop, sweep_metric: Metric) -> Metric {
    rule.metric.unwrap_or(sweep_metric)
}

/// The decision after epoch `epoch` (1-based) of `epochs`, in which the
/// watched metric (`maximize`d or not) was `value`.
pub fn after_epoch(
    rule: &EarlyStop,
    maximize: bool,
    value: f64,
    before: Counters,
    epoch: u64,
    epochs: u64,
) -> Decision {
    let better = match before.best {
        None => true,
        Some(b) if maximize => value > b + rule.min_delta,
        Some(b) => value < b - rule.min_delta,
    };
    if better {
        return Decision { counters: Counters { best: Some(value), since_improved: 0 }, stop: false };
    }
    let since_improved = before.since_improved + 1;
    Decision {
        counters: Counters { best: before.best, since_improved },
        stop: since_improved >= rule.patience as u64 && epoch < epochs,
    }
}

/// The run's note: "stopped early after epoch 4: test_loss did not improve for 2 epochs".
pub fn note(rule: &EarlyStop, sweep_metric: Metric, epoch: u64) -> String {
    let plural = if rule.patience == 1 { "" } else { "s" };
    format!(
        "stopped early after epoch {epoch}: {} did not improve for {} epoch{plural}",
        watched(rule, sweep_metric).as_str(),
        rule.patience
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(patience: usize, min_delta: f64) -> EarlyStop {
        EarlyStop { metric: None, patience, min_delta }
    }

    /// Feeds `values` epoch by epoch; returns the epoch at which it stopped.
    fn run(rule: &EarlyStop, maximize: bool, values: &[f64]) -> Option<u64> {
        let mut c = Counters::default();
        for (i, &v) in values.iter().enumerate() {
            let d = after_epoch(rule, maximize, v, c, i as u64 + 1, values.len() as u64);
            c = d.counters;
            if d.stop {
                return Some(i as u64 + 1);
            }
        }
        None
    }

    #[test]
    fn stops_after_patience_epochs_without_improvement() {
        // Accuracy peaks at epoch 2; patience 2 stops after epoch 4.
        assert_eq!(run(&rule(2, 0.0), true, &[50.0, 60.0, 59.0, 60.0, 70.0, 80.0]), Some(4));
        // A loss: lower is better.
        assert_eq!(run(&rule(1, 0.0), false, &[1.0, 0.5, 0.6, 0.4]), Some(3));
        // Always improving: never stops.
        assert_eq!(run(&rule(1, 0.0), true, &[1.0, 2.0, 3.0]), None);
    }

    #[test]
    fn min_delta_decides_what_counts_as_improvement() {
        // +0.5 is not an improvement with min_delta 1: the counter runs on.
        assert_eq!(run(&rule(2, 1.0), true, &[50.0, 50.5, 51.0, 60.0]), Some(3));
        assert_eq!(run(&rule(2, 0.1), true, &[50.0, 50.5, 51.0, 60.0]), None);
    }

    #[test]
    fn never_stops_on_the_last_epoch_and_counters_survive_a_resume() {
        // Patience reached exactly at the last epoch: the run just finishes.
        assert_eq!(run(&rule(2, 0.0), true, &[50.0, 40.0, 40.0]), None);
        // The counters are plain data: resuming from stored counters decides the same.
        let r = rule(2, 0.0);
        let c = after_epoch(&r, true, 50.0, Counters::default(), 1, 5).counters;
        let c = after_epoch(&r, true, 40.0, c, 2, 5).counters;
        assert_eq!(c, Counters { best: Some(50.0), since_improved: 1 });
        assert!(after_epoch(&r, true, 45.0, c, 3, 5).stop);
    }

    #[test]
    fn the_note_names_the_metric_and_the_patience() {
        let mut r = rule(1, 0.0);
        assert_eq!(note(&r, Metric::TestAcc, 3), "stopped early after epoch 3: test_acc did not improve for 1 epoch");
        r.metric = Some(Metric::TestLoss);
        r.patience = 2;
        assert_eq!(note(&r, Metric::TestAcc, 4), "stopped early after epoch 4: test_loss did not improve for 2 epochs");
    }
}
