//! Which parameters matter (W&B's parameter-importance panel, Optuna's
//! `get_param_importances`), measured on the runs themselves.
//!
//! For each parameter that differs between the runs with a best metric:
//!
//! * **main effect**: the share of the metric's variance that the parameter's
//!   values explain alone, the variance of the per-value mean metrics over
//!   the variance of the runs (η² of a one-way analysis of variance). On a
//!   full grid with one run per combination this is fANOVA's first-order
//!   importance (Hutter, Hoos and Leyton-Brown 2014) computed on the measured
//!   table itself instead of a random forest fitted to it, which is what
//!   Optuna's default evaluator does; with repeats the seeds' noise is part
//!   of the variance. A number with more than [`BINS`] distinct values (a random or TPE
//!   search) is cut into [`BINS`] groups of about equal counts first: with one
//!   run per value, every parameter would explain everything;
//! * **ρ**: Spearman's rank correlation of a numeric parameter with the
//!   metric (ties get their average rank), so the direction shows: 0.9 for
//!   `lr` means higher learning rates gave higher values of the metric (for a
//!   loss, lower is better: read the sign accordingly). Ranks make it the same
//!   on a log scale as on a linear one.
//!
//! Few runs make both noisy; the table says on how many runs it stands.

use super::Comparison;

/// Numbers with more distinct values than this are grouped into this many bins.
pub const BINS: usize = 5;

/// One parameter's importance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Importance {
    /// The parameter's path (`optimizer.lr`).
    pub param: String,
    /// How many groups its runs fall into (distinct values, or bins).
    pub groups: usize,
    /// Whether numbers were binned.
    pub binned: bool,
    /// The share of the metric's variance its values explain alone, in [0, 1].
    pub main_effect: f64,
    /// Spearman's rank correlation with the metric (numeric parameters).
    pub spearman: Option<f64>,
}

/// The metric the importances are of and the runs they stand on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Importances {
    /// The metric (`test_acc`): the one most of the runs are ranked by.
    pub metric: String,
    /// Runs with a value of it.
    pub runs: usize,
    /// One per differing parameter, by main effect, largest first.
    pub params: Vec<Importance>,
}

/// The parameters' importances over the runs of `c` that have a best value of
/// their sweep's metric; None with fewer than 3 such runs or nothing that
/// differs between them.
pub fn importances(c: &Comparison) -> Option<Importances> {
    let (metric, runs) = super::ranked_runs(c)?;
    if runs.len() < 3 {
        return None;
    }
    let y: Vec<f64> = runs.iter().map(|(_, v)| *v).collect();
    let mut params: Vec<Importance> = c
        .differing
        .iter()
        .filter_map(|path| {
            let values: Vec<&str> = runs.iter().map(|(r, _)| r.params.get(path).unwrap_or("-")).collect();
            one(path, &values, &y)
        })
        .collect();
    if params.is_empty() {
        return None;
    }
    params.sort_by(|a, b| b.main_effect.total_cmp(&a.main_effect).then_with(|| a.param.cmp(&b.param)));
    Some(Importances { metric, runs: runs.len(), params })
}

/// The importance of one parameter with `values` (as text, one per run) for
/// the metric values `y`; None when it takes one value only.
fn one(path: &str, values: &[&str], y: &[f64]) -> Option<Importance> {
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
    let mut distinct: Vec<&str> = values.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 2 {
        return None;
    }
    let (groups, binned): (Vec<usize>, bool) = match &numbers {
        Some(x) if distinct.len() > BINS => (bins(x, BINS), true),
        _ => (values.iter().map(|v| distinct.binary_search(v).unwrap_or(0)).collect(), false),
    };
    let spearman = numbers.as_ref().and_then(|x| spearman(x, y));
    let n_groups = groups.iter().max().map_or(0, |m| m + 1);
    Some(Importance {
        param: path.to_owned(),
        groups: n_groups,
        binned,
        main_effect: eta_squared(&groups, y),
        spearman,
    })
}

/// η²: the between-group sum of squares over the total one (0 when the
/// metric does not vary).
fn eta_squared(groups: &[usize], y: &[f64]) -> f64 {
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let total: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let k = groups.iter().max().map_or(0, |m| m + 1);
    let (mut sum, mut count) = (vec![0.0; k], vec![0usize; k]);
    for (&g, &v) in groups.iter().zip(y) {
        sum[g] += v;
        count[g] += 1;
    }
    let between: f64 =
        sum.iter().zip(&count).filter(|(_, &c)| c > 0).map(|(s, &c)| c as f64 * (s / c as f64 - mean).powi(2)).sum();
    (between / total).clamp(0.0, 1.0)
}

/// Each value's bin of `bins` groups of about equal counts, by rank; equal
/// values share a bin.
fn bins(x: &[f64], bins: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let n = x.len();
    let mut out = vec![0; n];
    let mut first = 0;
    for (pos, &i) in order.iter().enumerate() {
        if pos > 0 && x[i] != x[order[pos - 1]] {
            first = pos;
        }
        out[i] = first * bins / n;
    }
    // Renumber the bins used, in order, from 0.
    let mut used: Vec<usize> = out.clone();
    used.sort_unstable();
    used.dedup();
    out.iter().map(|b| used.binary_search(b).unwrap_or(0)).collect()
}

/// Ranks from 1, ties at their average rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && x[order[end + 1]] == x[order[start]] {
            end += 1;
        }
        let rank = (start + end) as f64 / 2.0 + 1.0;
        for &i in &order[start..=end] {
            out[i] = rank;
        }
        start = end + 1;
    }
    out
}

/// Spearman's ρ (Pearson's correlation of the ranks); None when either side
/// is constant.
fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    (vx > 0.0 && vy > 0.0).then(|| (cov / (vx * vy).sqrt()).clamp(-1.0, 1.0))
}

/// The table of a report: headers and rows.
pub fn table(imp: &Importances) -> (Vec<String>, Vec<Vec<String>>) {
    let headers =
        ["parameter", "values", "main effect", &format!("ρ with best {}", imp.metric)].map(str::to_owned).to_vec();
    let rows = imp
        .params
        .iter()
        .map(|p| {
            vec![
                p.param.clone(),
                match (p.binned, p.groups == imp.runs) {
                    (true, _) => format!("{} bins", p.groups),
                    // Each value's mean is one run's metric: it explains everything.
                    (false, true) => format!("{} (1 run each)", p.groups),
                    (false, false) => p.groups.to_string(),
                },
                format!("{:.0}%", 100.0 * p.main_effect),
                p.spearman.map_or_else(|| "-".to_owned(), |r| format!("{r:+.2}")),
            ]
        })
        .collect();
    (headers, rows)
}

/// The sentence under the table.
pub fn caption(imp: &Importances) -> String {
    format!(
        "On {} runs. Main effect: the share of the variance of the best {} that the parameter's values explain \
         alone (per-value means; numbers with more than {BINS} values in {BINS} bins of equal counts). ρ: rank \
         correlation with it. Few runs make both noisy.",
        imp.runs, imp.metric
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_effects_of_a_full_grid_are_the_shares_of_its_variance() {
        // y = 10·a + b over a 2x2 grid: a explains 100/101 of the variance, b 1/101.
        let a = ["0", "0", "1", "1"];
        let b = ["0", "1", "0", "1"];
        let y = [0.0, 1.0, 10.0, 11.0];
        let ia = one("a", &a, &y).unwrap();
        let ib = one("b", &b, &y).unwrap();
        assert!((ia.main_effect - 100.0 / 101.0).abs() < 1e-12, "{ia:?}");
        assert!((ib.main_effect - 1.0 / 101.0).abs() < 1e-12, "{ib:?}");
        assert_eq!((ia.groups, ia.binned, ia.spearman.map(|r| r > 0.89)), (2, false, Some(true)));
        // An interaction alone (y = a xor b) has no main effect.
        let xor = [0.0, 1.0, 1.0, 0.0];
        assert!(one("a", &a, &xor).unwrap().main_effect.abs() < 1e-12);
        // One value: nothing to say.
        assert_eq!(one("c", &["x", "x", "x"], &y[..3]), None);
        // Text values are groups, with no correlation.
        let opt = one("optimizer.name", &["sgd", "adam", "sgd", "adam"], &y).unwrap();
        assert_eq!((opt.groups, opt.spearman), (2, None));
    }

    #[test]
    fn many_values_are_binned_and_ranks_take_ties_and_scale_alike() {
        let x: Vec<f64> = (0..20).map(|i| 10f64.powf(-4.0 + f64::from(i) * 0.15)).collect();
        let y: Vec<f64> = x.iter().map(|v| v.log10()).collect();
        let text: Vec<String> = x.iter().map(f64::to_string).collect();
        let refs: Vec<&str> = text.iter().map(String::as_str).collect();
        let lr = one("lr", &refs, &y).unwrap();
        assert_eq!((lr.groups, lr.binned), (BINS, true));
        assert!((lr.spearman.unwrap() - 1.0).abs() < 1e-12, "a monotone relation on a log scale: {lr:?}");
        assert!(lr.main_effect > 0.9 && lr.main_effect < 1.0, "{lr:?}");
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        assert_eq!(bins(&[1.0, 1.0, 1.0, 2.0, 3.0, 4.0], 3), [0, 0, 0, 1, 2, 2]);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]), None);
        // Against scipy.stats.spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]): 0.8.
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]).unwrap() - 0.8).abs() < 1e-12);
    }
}
