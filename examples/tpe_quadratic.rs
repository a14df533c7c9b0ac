//! sweep's TPE against random search on the 2-D quadratic of
//! `scripts/tpe-vs-optuna.py`: f(x, y) = (x - 2)² + (y + 1)² on [-10, 10]²,
//! minimised, 30 trials, seeds 0..19. Prints what the script prints for Optuna.
//!
//! `cargo run --release --example tpe_quadratic`

use sweep::rng::Rng;
use sweep::search::tpe::{propose, Settings, State, Trial};
use sweep::search::Distribution;

fn best(seed: u64, tpe: bool) -> f64 {
    let space = vec![Distribution::Uniform { low: -10.0, high: 10.0 }; 2];
    let settings = Settings { n_startup_trials: if tpe { 10 } else { usize::MAX }, ..Settings::default() };
    let mut trials: Vec<Trial> = Vec::new();
    let mut best = f64::INFINITY;
    for n in 0..30 {
        let p = propose(&space, &trials, &mut Rng::derive(&[seed, n]), &settings);
        let v = (p.params[0] - 2.0).powi(2) + (p.params[1] + 1.0).powi(2);
        best = best.min(v);
        trials.push(Trial { number: n, params: p.params, state: State::Complete(-v) });
    }
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    f64::midpoint(v[v.len() / 2 - 1], v[v.len() / 2])
}

fn main() {
    let tpe: Vec<f64> = (0..20).map(|s| best(s, true)).collect();
    let rnd: Vec<f64> = (0..20).map(|s| best(s, false)).collect();
    let wins = tpe.iter().zip(&rnd).filter(|(t, r)| t < r).count();
    println!(
        "sweep: TPE beats random search on {wins} of 20 seeds; median best: TPE {:.3}, random {:.3}",
        median(tpe),
        median(rnd)
    );
}
