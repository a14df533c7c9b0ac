//! A small seedable random number generator (SplitMix64).
//!
//! candle's CPU RNG cannot be seeded, so every random draw in sweep (weight
//! initialisation, shuffling, augmentation, dropout) comes from here, derived from
//! the run seed and the draw's coordinates (epoch, batch, image index). A run is
//! therefore reproducible on CPU, independent of thread count, and a resumed run
//! needs no RNG state beyond its position.

/// SplitMix64: tiny, fast, good enough statistical quality for ML noise.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// Purpose tags mixed into derived seeds so that streams never coincide.
pub mod stream {
    /// Weight initialisation.
    pub const INIT: u64 = 0x1;
    /// Per-epoch shuffling.
    pub const SHUFFLE: u64 = 0x2;
    /// Per-image augmentation.
    pub const AUGMENT: u64 = 0x3;
    /// Per-batch dropout masks.
    pub const DROPOUT: u64 = 0x4;
    /// Synthetic data generation.
    pub const DATA: u64 = 0x5;
    /// Which training images are held out for validation (`val_split`).
    pub const VALIDATION: u64 = 0x6;
    /// A search's sampled trials (`[[search]]`, random and TPE start-up).
    pub const SEARCH: u64 = 0x7;
    /// TPE's candidates for a proposed trial.
    pub const TPE: u64 = 0x8;
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator from one seed.
    pub fn new(seed: u64) -> Self {
        Rng(mix(seed ^ 0x9e37_79b9_7f4a_7c15))
    }

    /// A generator for the draw at the given coordinates.
    pub fn derive(parts: &[u64]) -> Self {
        let mut h = 0x243f_6a88_85a3_08d3_u64;
        for &p in parts {
            h = mix(h ^ mix(p.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        }
        Rng(h)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::derive(&[1, 2, 3]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::derive(&[1, 2, 3]).next_u64(), Rng::derive(&[1, 2, 4]).next_u64());
        assert_ne!(Rng::derive(&[1, 2]).next_u64(), Rng::derive(&[2, 1]).next_u64());
    }

    #[test]
    fn uniform_and_normal_have_the_right_moments() {
        let mut r = Rng::new(7);
        let n = 20_000;
        let u: Vec<f64> = (0..n).map(|_| r.next_f64()).collect();
        let mean = u.iter().sum::<f64>() / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
        let g: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let m = g.iter().sum::<f64>() / f64::from(n);
        let var = g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / f64::from(n);
        assert!(m.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{m} {var}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        Rng::new(3).shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
