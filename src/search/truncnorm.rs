//! The truncated normal distribution TPE's kernels use: log density, log
//! probability mass of an interval (tails computed in logs, as Optuna's
//! `_truncnorm`), and sampling by inverting the CDF.

use crate::rng::Rng;
use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// ln Φ(z), accurate far into the left tail.
pub fn log_ndtr(z: f64) -> f64 {
    if z > 6.0 {
        // ln(1 - Φ(-z)) ≈ -Φ(-z)
        -0.5 * libm::erfc(z * FRAC_1_SQRT_2)
    } else if z > -20.0 {
        (0.5 * libm::erfc(-z * FRAC_1_SQRT_2)).ln()
    } else {
        // Asymptotic series of Mills' ratio.
        let z2 = z * z;
        -0.5 * z2 - (-z).ln() - 0.5 * (2.0 * PI).ln() + (1.0 - 1.0 / z2 + 3.0 / (z2 * z2)).ln()
    }
}

/// ln(e^p - e^q) for p > q.
fn log_diff(p: f64, q: f64) -> f64 {
    if q == f64::NEG_INFINITY {
        return p;
    }
    p + (-(q - p).exp()).ln_1p()
}

/// ln(Φ(b) - Φ(a)) for a < b.
pub fn log_gauss_mass(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        log_diff(log_ndtr(b), log_ndtr(a))
    } else if a > 0.0 {
        log_diff(log_ndtr(-a), log_ndtr(-b))
    } else {
        // The central case: 1 - Φ(a) - Φ(-b), both small or moderate.
        (1.0 - 0.5 * libm::erfc(-a * FRAC_1_SQRT_2) - 0.5 * libm::erfc(b * FRAC_1_SQRT_2)).ln()
    }
}

/// ln of the density at `x` of N(`mu`, `sigma`) truncated to [`low`, `high`].
pub fn log_pdf(x: f64, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    let z = (x - mu) / sigma;
    -0.5 * z * z - 0.5 * (2.0 * PI).ln() - sigma.ln() - log_gauss_mass((low - mu) / sigma, (high - mu) / sigma)
}

/// Φ⁻¹(p) for 0 < p < 1: Acklam's rational approximation, refined by one
/// Halley step against erfc.
fn ndtri(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let x = if p < 0.02425 {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - 0.02425 {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let e = 0.5 * libm::erfc(-x * FRAC_1_SQRT_2) - p;
    let u = e * (2.0 * PI).sqrt() * (0.5 * x * x).exp();
    x - u / (1.0 + 0.5 * x * u)
}

/// A draw from N(`mu`, `sigma`) truncated to [`low`, `high`].
pub fn sample(rng: &mut Rng, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    let (a, b) = ((low - mu) / sigma, (high - mu) / sigma);
    let u = rng.next_f64();
    // Invert in the tail the interval lies in (by symmetry), where Φ is accurate.
    let z = if a > 0.0 {
        let (pa, pb) = (0.5 * libm::erfc(a * FRAC_1_SQRT_2), 0.5 * libm::erfc(b * FRAC_1_SQRT_2));
        -ndtri(pb + u * (pa - pb))
    } else {
        let (pa, pb) = (0.5 * libm::erfc(-a * FRAC_1_SQRT_2), 0.5 * libm::erfc(-b * FRAC_1_SQRT_2));
        ndtri(pa + u * (pb - pa))
    };
    let z = if z.is_finite() { z.clamp(a, b) } else { a + (b - a) * u };
    mu + sigma * z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_functions_agree_with_known_values() {
        // Φ(-1) = 0.158655253931457; Φ(-30) = 4.906713927148187e-198.
        assert!((log_ndtr(-1.0) - 0.158_655_253_931_457_f64.ln()).abs() < 1e-12);
        assert!((log_ndtr(-30.0) - 4.906_713_927_148_187e-198_f64.ln()).abs() < 1e-3);
        assert!((log_ndtr(8.0) - (-6.220_960_574_271_785e-16)).abs() < 1e-20);
        for p in [1e-10, 0.01, 0.3, 0.5, 0.9, 0.999_999] {
            let x = ndtri(p);
            assert!((0.5 * libm::erfc(-x * FRAC_1_SQRT_2) - p).abs() < 1e-12 * p.max(1e-3), "{p}");
        }
        // Mass of [-1, 1] = 0.682689492137086; of [5, 6] = 2.856649842341569e-07.
        assert!((log_gauss_mass(-1.0, 1.0).exp() - 0.682_689_492_137_086).abs() < 1e-12);
        assert!((log_gauss_mass(5.0, 6.0).exp() / 2.856_649_842_341_569e-7 - 1.0).abs() < 1e-9);
        assert!((log_gauss_mass(-6.0, -5.0) - log_gauss_mass(5.0, 6.0)).abs() < 1e-9);
    }

    #[test]
    fn samples_are_truncated_and_follow_the_density() {
        let mut rng = Rng::new(1);
        let xs: Vec<f64> = (0..20_000).map(|_| sample(&mut rng, 0.0, 1.0, -0.5, 2.0)).collect();
        assert!(xs.iter().all(|x| (-0.5..=2.0).contains(x)));
        // Mean of N(0,1) on [-0.5, 2]: (φ(-0.5) - φ(2)) / (Φ(2) - Φ(-0.5)) = 0.4457.
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.4457).abs() < 0.015, "{mean}");
        // A far tail interval still samples inside it.
        let ys: Vec<f64> = (0..100).map(|_| sample(&mut rng, 0.0, 1.0, 8.0, 9.0)).collect();
        assert!(ys.iter().all(|y| (8.0..=9.0).contains(y)));
        // The density integrates to 1.
        let n = 10_000u32;
        let integral: f64 = (0..n)
            .map(|i| {
                log_pdf(-0.5 + 2.5 * (f64::from(i) + 0.5) / f64::from(n), 0.3, 0.7, -0.5, 2.0).exp() * 2.5
                    / f64::from(n)
            })
            .sum();
        assert!((integral - 1.0).abs() < 1e-6, "{integral}");
    }
}
