//! Asynchronous successive halving (ASHA) across the runs of a sweep, as pure
//! decisions over recorded epochs.
//!
//! Rungs are at `min_epochs · reduction_factor^k` epochs (below the run's last
//! epoch: there is nothing left to stop there). When a run records a rung's
//! epoch, Ray Tune's `ASHAScheduler` rule decides: the cutoff is the
//! `(1 - 1/η)` percentile (linear interpolation, as numpy's) of the metric of
//! the runs that reached the rung before it; a run below the cutoff stops, any
//! other run goes on (the first to arrive always does).
//!
//! A stopped run keeps its checkpoint. When later arrivals put it among the
//! top `⌊n/η⌋` of the `n` runs at that rung (the promotion rule of Li et al.'s
//! ASHA), it is promoted: queued again, it resumes exactly from the rung's
//! checkpoint. A stopped run is never in that top set at the moment it stops,
//! so the two rules agree.
//!
//! Decisions depend only on the arrivals (in the order their epochs were
//! recorded): replaying them gives the same decisions.

/// The `early_terminate` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asha {
    /// The first rung, in epochs.
    pub min_epochs: u64,
    /// η: the share of runs that go on from a rung is 1/η.
    pub reduction_factor: u64,
}

/// A run's value at a rung, in arrival order. `value` is oriented so that
/// larger is better (a loss is negated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// The run.
    pub run: i64,
    /// Its metric at the rung's epoch, larger is better.
    pub value: f64,
}

/// Where a run stands at a rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// 1-based rank among the runs at the rung (ties: the earlier arrival first).
    pub rank: usize,
    /// How many runs reached the rung so far.
    pub of: usize,
    /// Whether it fell below the cutoff when it arrived.
    pub stopped_on_arrival: bool,
    /// Whether it is now among the top ⌊n/η⌋.
    pub promotable: bool,
}

impl Standing {
    /// Whether the run trains on past the rung.
    pub fn continues(&self) -> bool {
        !self.stopped_on_arrival || self.promotable
    }
}

impl Asha {
    /// The rungs (epochs) of a run of `epochs` epochs.
    pub fn rungs(&self, epochs: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut m = self.min_epochs.max(1);
        while m < epochs {
            out.push(m);
            match m.checked_mul(self.reduction_factor.max(2)) {
                Some(next) => m = next,
                None => break,
            }
        }
        out
    }

    /// Whether epoch `epoch` of a run of `epochs` epochs is a rung.
    pub fn is_rung(&self, epoch: u64, epochs: u64) -> bool {
        self.rungs(epochs).contains(&epoch)
    }

    /// The cutoff of Ray Tune's `_Bracket.cutoff`: the `(1 - 1/η)·100`
    /// percentile of the values, NaN ignored; None without a value.
    pub fn cutoff(&self, values: &[f64]) -> Option<f64> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let q = 1.0 - 1.0 / self.reduction_factor as f64;
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
    }

    /// Where `run` stands among `arrivals` (every run that reached the rung,
    /// in arrival order); None when it has not arrived.
    pub fn standing(&self, arrivals: &[Arrival], run: i64) -> Option<Standing> {
        let at = arrivals.iter().position(|a| a.run == run)?;
        let me = arrivals[at].value;
        let before: Vec<f64> = arrivals[..at].iter().map(|a| a.value).collect();
        // Ray: `if cutoff is not None and cur_rew < cutoff: STOP` (a NaN never compares below).
        let stopped_on_arrival = self.cutoff(&before).is_some_and(|c| me < c);
        let mut order: Vec<usize> = (0..arrivals.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (arrivals[a].value, arrivals[b].value);
            match (x.is_nan(), y.is_nan()) {
                (false, false) => y.total_cmp(&x).then(a.cmp(&b)),
                (nx, ny) => nx.cmp(&ny).then(a.cmp(&b)),
            }
        });
        let rank = order.iter().position(|&i| i == at).expect("the run is among the arrivals") + 1;
        let of = arrivals.len();
        let top = of / self.reduction_factor.max(2) as usize;
        Some(Standing { rank, of, stopped_on_arrival, promotable: rank <= top && !me.is_nan() })
    }

    /// The runs of `stopped` (stopped at this rung) that the arrivals now
    /// promote, in rank order.
    pub fn promotions(&self, arrivals: &[Arrival], stopped: &[i64]) -> Vec<(i64, Standing)> {
        let mut out: Vec<(i64, Standing)> = stopped
            .iter()
            .filter_map(|&r| self.standing(arrivals, r).filter(|s| s.promotable).map(|s| (r, s)))
            .collect();
        out.sort_by_key(|(_, s)| s.rank);
        out
    }
}

/// How a note of a run ASHA stopped begins.
pub const STOP_NOTE: &str = "stopped by ASHA";

/// The run's note when ASHA stops it.
pub fn stop_note(epoch: u64, s: &Standing) -> String {
    format!("{STOP_NOTE} after epoch {epoch} (rank {} of {} at this rung)", s.rank, s.of)
}

/// The run's note when ASHA promotes it.
pub fn promote_note(epoch: u64, s: &Standing) -> String {
    format!("promoted by ASHA at epoch {epoch} (now rank {} of {} at this rung)", s.rank, s.of)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASHA: Asha = Asha { min_epochs: 1, reduction_factor: 3 };

    fn arrivals(values: &[f64]) -> Vec<Arrival> {
        values.iter().enumerate().map(|(i, &value)| Arrival { run: i as i64 + 1, value }).collect()
    }

    #[test]
    fn rungs_are_geometric_and_below_the_last_epoch() {
        assert_eq!(ASHA.rungs(9), vec![1, 3]);
        assert_eq!(ASHA.rungs(10), vec![1, 3, 9]);
        assert_eq!(Asha { min_epochs: 2, reduction_factor: 2 }.rungs(20), vec![2, 4, 8, 16]);
        assert!(ASHA.rungs(1).is_empty());
    }

    #[test]
    fn the_cutoff_is_numpys_linear_percentile() {
        // np.nanpercentile([10, 9], 66.67) = 9.667; [10, 9, 8] -> 9.333; [5] -> 5.
        let c = ASHA.cutoff(&[10.0, 9.0]).unwrap();
        assert!((c - (9.0 + 2.0 / 3.0)).abs() < 1e-12, "{c}");
        let c = ASHA.cutoff(&[10.0, 9.0, 8.0]).unwrap();
        assert!((c - (9.0 + 1.0 / 3.0)).abs() < 1e-12, "{c}");
        assert_eq!(ASHA.cutoff(&[5.0, f64::NAN]), Some(5.0));
        assert_eq!(ASHA.cutoff(&[]), None);
        assert_eq!(Asha { min_epochs: 1, reduction_factor: 2 }.cutoff(&[1.0, 2.0, 3.0, 4.0]), Some(2.5));
    }

    /// Worked by hand, η = 3, values arriving 10, 9, 8, 7, 11, 6:
    /// 10 first: no cutoff, goes on. 9: cutoff of {10} = 10, stops (rank 2 of 2).
    /// 8: cutoff of {10, 9} = 9.67, stops. 7: cutoff 9.33, stops.
    /// 11: cutoff of {10, 9, 8, 7} = 9.0, goes on (rank 1 of 5). With 5 runs
    /// the top ⌊5/3⌋ = 1 is 11: 9 stays stopped. 6 arrives: stops; now 6 runs,
    /// the top 2 are 11 and 10: still no stopped run among them.
    /// A 7th arrival, 12, makes the top 2 = 12, 11. Then 13: 8 runs, top 2.
    /// 14: 9 runs, top 3 = 14, 13, 12.
    #[test]
    fn a_hand_worked_sequence() {
        let a = arrivals(&[10.0, 9.0, 8.0, 7.0, 11.0, 6.0]);
        let go: Vec<bool> = (1..=6).map(|r| ASHA.standing(&a, r).unwrap().continues()).collect();
        assert_eq!(go, vec![true, false, false, false, true, false]);
        let s = ASHA.standing(&a, 2).unwrap();
        assert_eq!((s.rank, s.of, s.stopped_on_arrival, s.promotable), (3, 6, true, false));
        assert_eq!(
            stop_note(3, &ASHA.standing(&a[..2], 2).unwrap()),
            "stopped by ASHA after epoch 3 (rank 2 of 2 at this rung)"
        );
        assert!(ASHA.promotions(&a, &[2, 3, 4, 6]).is_empty());
    }

    /// Promotion: worse runs arriving later lift a stopped run into the top ⌊n/η⌋.
    /// η = 3: 10 goes on, 9 stops; then 1, 2, 3, 4 arrive (each stops: they are
    /// below the cutoff). With 6 runs the top 2 are 10 and 9: 9 is promoted.
    #[test]
    fn a_stopped_run_is_promoted_when_later_arrivals_rank_it_in_the_top_third() {
        let a = arrivals(&[10.0, 9.0, 1.0]);
        assert!(!ASHA.standing(&a, 2).unwrap().continues());
        assert!(ASHA.promotions(&a, &[2, 3]).is_empty());
        let a = arrivals(&[10.0, 9.0, 1.0, 2.0, 3.0, 4.0]);
        let p = ASHA.promotions(&a, &[2, 3, 4, 5, 6]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, 2);
        assert_eq!((p[0].1.rank, p[0].1.of), (2, 6));
        assert!(ASHA.standing(&a, 2).unwrap().continues(), "a promoted run trains on when it is claimed");
        assert_eq!(promote_note(1, &p[0].1), "promoted by ASHA at epoch 1 (now rank 2 of 6 at this rung)");
    }

    /// A run that the cutoff stops is never in the top ⌊n/η⌋ at that moment.
    #[test]
    fn stopping_and_promotion_never_disagree_on_arrival() {
        let mut rng = crate::rng::Rng::new(3);
        for eta in 2..=4 {
            let asha = Asha { min_epochs: 1, reduction_factor: eta };
            for _ in 0..200 {
                let n = 1 + rng.below(20);
                let vals: Vec<f64> = (0..n).map(|_| rng.below(8) as f64).collect();
                let a = arrivals(&vals);
                for k in 1..=n {
                    let s = asha.standing(&a[..k], k as i64).unwrap();
                    assert!(!(s.stopped_on_arrival && s.promotable), "{vals:?} at {k}");
                }
            }
        }
    }

    /// The decision at each arrival (with the arrivals before it).
    fn on_arrival(asha: Asha, values: &[f64]) -> Vec<bool> {
        let a = arrivals(values);
        (1..=a.len()).map(|k| asha.standing(&a[..k], k as i64).unwrap().continues()).collect()
    }

    /// Ray Tune's own tests of `AsyncHyperBandScheduler` (python/ray/tune/tests/
    /// test_trial_scheduler.py), as arrivals at one rung.
    #[test]
    fn ray_tunes_documented_cases() {
        let rf2 = Asha { min_epochs: 1, reduction_factor: 2 };
        // grace 1, max_t 10, η 2: rungs at 1, 2, 4, 8 (Ray's milestones).
        assert_eq!(rf2.rungs(10), vec![1, 2, 4, 8]);
        // testAsyncHBUsesPercentile: t1 reports 100·i, t2 450; t3 with 260 stops at
        // rung 1 (cutoff 275 of [100, 450]) and at rung 2 (325 of [200, 450]).
        assert_eq!(on_arrival(rf2, &[100.0, 450.0, 260.0]), vec![true, true, false]);
        assert_eq!(on_arrival(rf2, &[200.0, 450.0, 260.0]), vec![true, true, false]);
        // testAsyncHBNanPercentile: t2 reports NaN; the cutoff ignores it (450) and 260 stops.
        assert_eq!(on_arrival(rf2, &[450.0, f64::NAN, 260.0]), vec![true, true, false]);
        // testAsyncHBSaveRestore: five trials at 10 go on, then 5, 4 and 2 stop.
        assert_eq!(
            on_arrival(rf2, &[10.0, 10.0, 10.0, 10.0, 10.0, 5.0, 4.0, 2.0]),
            vec![true, true, true, true, true, false, false, false]
        );
        // testAsyncHBNonStopTrials (max_t 3: rungs 1, 2): at rung 2, 10 goes on, 8, 6 and 4 stop.
        assert_eq!(rf2.rungs(3), vec![1, 2]);
        assert_eq!(on_arrival(rf2, &[10.0, 8.0, 6.0, 4.0]), vec![true, false, false, false]);
        // Ray stops there for good; ASHA's promotion brings 8 back once it is in the
        // top ⌊4/2⌋ = 2 (the documented difference: stopped runs keep their checkpoint).
        assert_eq!(
            rf2.promotions(&arrivals(&[10.0, 8.0, 6.0, 4.0]), &[2, 3, 4]).iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![2]
        );
        // testAlternateMetricsMin: a loss is compared negated (the store orients values).
        assert_eq!(on_arrival(rf2, &[-100.0, -450.0, -260.0]), vec![true, false, true]);
    }

    /// Decisions are a function of the arrivals only.
    #[test]
    fn replaying_the_arrivals_gives_the_same_decisions() {
        let a = arrivals(&[0.3, 0.5, 0.1, 0.9, 0.2, 0.7, 0.4]);
        let decide = || (1..=7).map(|r| ASHA.standing(&a, r)).collect::<Vec<_>>();
        assert_eq!(decide(), decide());
    }
}
