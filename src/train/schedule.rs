//! Learning-rate schedules as pure functions of the position in training, so a
//! resumed run needs no scheduler state.
//!
//! Positions are 0-based and count epochs (`lr_interval = "epoch"`, the default,
//! as PyTorch's epoch schedulers: `MultiStepLR(milestones=[5, 10])` trains epochs
//! 0-4 at the base lr and switches at epoch index 5, shown as epoch 6) or
//! optimizer steps (`lr_interval = "step"`, a scheduler stepped after every
//! batch). `onecycle` always counts steps over the whole run, as `OneCycleLR`.
//! A warmup is PyTorch's `LinearLR` chained to the schedule with `SequentialLR`:
//! the schedule then starts from its own position 0.

use crate::spec::{LrInterval, RunConfig, ScheduleSpec};

/// The learning rate and, for onecycle with `cycle_momentum`, the momentum (SGD)
/// or beta1 (Adam) of batch `batch` of 0-based `epoch`.
pub fn at(cfg: &RunConfig, epoch: usize, batch: usize, steps_per_epoch: usize) -> (f64, Option<f64>) {
    let base = cfg.optimizer.lr();
    let per_step = cfg.lr_interval == LrInterval::Step || matches!(cfg.schedule, ScheduleSpec::Onecycle { .. });
    let (t, total) =
        if per_step { (epoch * steps_per_epoch + batch, cfg.epochs * steps_per_epoch) } else { (epoch, cfg.epochs) };
    if let ScheduleSpec::Onecycle { cycle_momentum: true, base_momentum, max_momentum, .. } = &cfg.schedule {
        return (
            lr_at(&cfg.schedule, base, t, total),
            Some(onecycle_phase(&cfg.schedule, t, total, *max_momentum, *base_momentum)),
        );
    }
    match &cfg.warmup {
        Some(w) if t < w.iters => (base * (w.start_factor + (1.0 - w.start_factor) * t as f64 / w.iters as f64), None),
        Some(w) => (lr_at(&cfg.schedule, base, t - w.iters, total.saturating_sub(w.iters)), None),
        None => (lr_at(&cfg.schedule, base, t, total), None),
    }
}

/// OneCycleLR's cosine interpolation: from `start` to `peak` over the first
/// `pct_start` of the steps, then from `peak` to `end`.
fn onecycle_phase(s: &ScheduleSpec, t: usize, total: usize, start: f64, peak: f64) -> f64 {
    onecycle_value(s, t, total, start, peak, start)
}

fn onecycle_value(s: &ScheduleSpec, t: usize, total: usize, start: f64, peak: f64, end: f64) -> f64 {
    let ScheduleSpec::Onecycle { pct_start, .. } = s else { return start };
    let anneal = |a: f64, b: f64, pct: f64| b + (a - b) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
    let up_end = pct_start * total as f64 - 1.0;
    let down_end = total as f64 - 1.0;
    let t = t as f64;
    if t <= up_end {
        anneal(start, peak, t / up_end)
    } else {
        anneal(peak, end, (t - up_end) / (down_end - up_end))
    }
}

/// The learning rate at 0-based position `epoch` of `epochs` (both in the
/// schedule's unit: epochs or steps).
pub fn lr_at(schedule: &ScheduleSpec, base: f64, epoch: usize, epochs: usize) -> f64 {
    match schedule {
        ScheduleSpec::Constant => base,
        ScheduleSpec::Multistep { milestones, factors, gamma } => {
            let passed = milestones.iter().filter(|&&m| m <= epoch).count();
            match (factors, gamma) {
                (_, _) if passed == 0 => base,
                (Some(f), _) => base * f[passed - 1],
                (None, Some(g)) => base * g.powi(passed as i32),
                (None, None) => base,
            }
        }
        ScheduleSpec::Step { step_size, gamma } => base * gamma.powi((epoch / step_size) as i32),
        ScheduleSpec::Onecycle { max_lr, div_factor, final_div_factor, .. } => {
            let peak = max_lr.unwrap_or(base);
            let initial = peak / div_factor;
            onecycle_value(schedule, epoch, epochs, initial, peak, initial / final_div_factor)
        }
        ScheduleSpec::Cosine { t_max, eta_min } => {
            let t = if *t_max == 0 { epochs } else { *t_max } as f64;
            eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * epoch as f64 / t).cos()) / 2.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reports_resnet18_schedule() {
        // lr 0.01, x0.5 from milestone 5, x0.1 from milestone 10 (relative to the base).
        let s = ScheduleSpec::Multistep { milestones: vec![5, 10], factors: Some(vec![0.5, 0.1]), gamma: None };
        let lrs: Vec<f64> = (0..12).map(|e| lr_at(&s, 0.01, e, 20)).collect();
        assert_eq!(&lrs[..5], &[0.01; 5]);
        assert_eq!(&lrs[5..10], &[0.005; 5]);
        assert!((lrs[10] - 0.001).abs() < 1e-15 && (lrs[11] - 0.001).abs() < 1e-15);
    }

    #[test]
    fn gamma_step_and_cosine_follow_pytorch() {
        let s = ScheduleSpec::Multistep { milestones: vec![2, 4], factors: None, gamma: Some(0.1) };
        assert!((lr_at(&s, 1.0, 4, 6) - 0.01).abs() < 1e-12);
        let st = ScheduleSpec::Step { step_size: 3, gamma: 0.5 };
        assert_eq!([0, 2, 3, 6].map(|e| lr_at(&st, 1.0, e, 9)), [1.0, 1.0, 0.5, 0.25]);
        // CosineAnnealingLR(T_max=4, eta_min=0): 1, 0.8536, 0.5, 0.1464, 0
        let c = ScheduleSpec::Cosine { t_max: 4, eta_min: 0.0 };
        let v: Vec<f64> = (0..5).map(|e| lr_at(&c, 1.0, e, 4)).collect();
        for (a, b) in v.iter().zip([1.0, 0.853_553_390_593_273_8, 0.5, 0.146_446_609_406_726_24, 0.0]) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
        assert_eq!(lr_at(&ScheduleSpec::Constant, 0.3, 7, 9), 0.3);
    }

    fn cfg(extra: &str) -> RunConfig {
        let text = format!(
            "name = \"s\"\ndataset = {{ name = \"synthetic\" }}\n[defaults]\nmodel = \"smallcnn\"\nbatch_size = 8\n{extra}\n[[run]]\n"
        );
        crate::spec::parse(std::path::Path::new("s.toml"), &text).unwrap().runs[0].config.clone()
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9 * y.abs().max(1e-3), "{a:?} vs {b:?}");
        }
    }

    /// Values printed by torch.optim.lr_scheduler (PyTorch 2.15).
    #[test]
    fn onecycle_warmup_and_per_step_schedules_follow_pytorch() {
        // OneCycleLR(SGD(lr=0.1, momentum=0.9), max_lr=0.1, total_steps=10): 2 epochs x 5 steps.
        let c = cfg(
            "epochs = 2\noptimizer = { name = \"sgd\", lr = 0.1, momentum = 0.9 }\nschedule = { name = \"onecycle\" }",
        );
        let (lrs, moms): (Vec<f64>, Vec<f64>) =
            (0..10).map(|i| at(&c, i / 5, i % 5, 5)).map(|(l, m)| (l, m.unwrap())).unzip();
        close(
            &lrs,
            &[
                0.004,
                0.052,
                0.1,
                0.095048463201,
                0.081174565395,
                0.061126202194,
                0.038874197806,
                0.018825834605,
                0.004951936799,
                4e-07,
            ],
        );
        close(
            &moms,
            &[
                0.95,
                0.9,
                0.85,
                0.854951556605,
                0.868825509907,
                0.888873953302,
                0.911126046698,
                0.931174490093,
                0.945048443395,
                0.95,
            ],
        );
        // OneCycleLR(Adam, max_lr=0.01, total_steps=6, pct_start=0.5, div_factor=10, final_div_factor=100)
        let c = cfg("epochs = 2\noptimizer = { name = \"adam\", lr = 0.1 }\nschedule = { name = \"onecycle\", max_lr = 0.01, pct_start = 0.5, div_factor = 10.0, final_div_factor = 100.0 }");
        let (lrs, b1): (Vec<f64>, Vec<f64>) =
            (0..6).map(|i| at(&c, i / 3, i % 3, 3)).map(|(l, m)| (l, m.unwrap())).unzip();
        close(&lrs, &[0.001, 0.0055, 0.01, 0.0075025, 0.0025075, 1e-05]);
        close(&b1, &[0.95, 0.9, 0.85, 0.875, 0.925, 0.95]);
        // SequentialLR([LinearLR(start_factor=0.1, total_iters=3), MultiStepLR([2], 0.1)], milestones=[3]), lr 1.
        let c = cfg("epochs = 7\noptimizer = { name = \"sgd\", lr = 1.0 }\nschedule = { name = \"multistep\", milestones = [2], gamma = 0.1 }\nwarmup = { iters = 3 }");
        let lrs: Vec<f64> = (0..7).map(|e| at(&c, e, 0, 4).0).collect();
        close(&lrs, &[0.1, 0.4, 0.7, 1.0, 1.0, 0.1, 0.1]);
        // Per-step cosine: CosineAnnealingLR(T_max = total steps) stepped every batch.
        let c =
            cfg("epochs = 2\noptimizer = { name = \"sgd\", lr = 1.0 }\nschedule = { name = \"cosine\" }\nlr_interval = \"step\"");
        let lrs: Vec<f64> = (0..4).map(|i| at(&c, i / 2, i % 2, 2).0).collect();
        close(&lrs, &[1.0, 0.853553390593, 0.5, 0.146446609407]);
    }
}
