//! Learning-rate schedules as pure functions of the epoch.
//!
//! Epochs are 0-based here and stepped once per epoch, as PyTorch's epoch
//! schedulers are: `MultiStepLR(milestones=[5, 10])` trains epochs 0-4 at the base
//! lr and switches at epoch index 5 (the sixth epoch, shown as epoch 6).

use crate::spec::ScheduleSpec;

/// The learning rate of 0-based `epoch` for a run of `epochs` epochs.
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
}
