//! Bounds on every size and count a sweep file can give, so that a value no
//! real sweep uses is refused at its line instead of exhausting memory when a
//! worker starts the run. Each bound is far above what the largest real setup
//! needs (ImageNet-21k, a 4096-pixel crop, a 65,536-wide layer), and each error
//! says which bound and why.

/// The largest image side a transform may produce or use, in pixels.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// The largest batch.
pub const MAX_BATCH_SIZE: usize = 65_536;
/// The most epochs of one run.
pub const MAX_EPOCHS: usize = 100_000;
/// The widest hidden layer of a head.
pub const MAX_WIDTH: usize = 65_536;
/// The most images a split may be asked to have (ImageNet-21k has 14 million).
pub const MAX_IMAGES: usize = 50_000_000;
/// The most images the synthetic dataset may generate (it is held in memory:
/// a million 32x32 images are 3 GB).
pub const MAX_SYNTHETIC_IMAGES: usize = 1_000_000;
/// The most memory one batch of input images may take, as f32, in bytes.
pub const MAX_BATCH_BYTES: u64 = 64 << 30;
/// The most repeats of one configuration.
pub const MAX_REPEATS: u32 = 1_000;
/// The most runs one sweep file may expand to, unless raised (`--max-runs`).
pub const DEFAULT_MAX_RUNS: usize = 100_000;
/// The longest value quoted whole in an error message, in characters.
pub const MAX_QUOTED: usize = 200;

/// What expanding a sweep file may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most runs (all grids, runs and repeats together).
    pub max_runs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_runs: DEFAULT_MAX_RUNS }
    }
}

/// `value` is at most `max`, with the reason in the error.
pub fn at_most(value: usize, max: usize, what: &str) -> Result<(), String> {
    if value > max {
        Err(format!("{value} is more than the limit of {max} for {what}"))
    } else {
        Ok(())
    }
}

/// `text`, cut in the middle when it is longer than [`MAX_QUOTED`] characters.
pub fn quote(text: &str) -> String {
    let n = text.chars().count();
    if n <= MAX_QUOTED {
        return text.to_owned();
    }
    let head: String = text.chars().take(MAX_QUOTED - 40).collect();
    let tail: String = text.chars().skip(n - 30).collect();
    format!("{head}…[{} characters cut]…{tail}", n - (MAX_QUOTED - 40) - 30)
}

/// A message with every long word cut (see [`quote`]), and the whole cut
/// too if it is still long (many long words).
pub fn quote_message(message: &str) -> String {
    if message.chars().count() <= MAX_QUOTED {
        return message.to_owned();
    }
    let words = message.split(' ').map(quote).collect::<Vec<_>>().join(" ");
    if words.chars().count() <= 4 * MAX_QUOTED {
        words
    } else {
        quote(&words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_in_the_middle_and_short_ones_kept() {
        assert_eq!(quote("0.1"), "0.1");
        let long = "x".repeat(1_000_000);
        let q = quote(&long);
        assert!(q.chars().count() < 260 && q.contains("[999810 characters cut]"), "{}", q.len());
        assert!(at_most(5, 4, "a batch").unwrap_err().contains("limit of 4 for a batch"));
        assert!(at_most(4, 4, "a batch").is_ok());
        let m = quote_message(&format!("value {long}: expected a number"));
        assert!(m.starts_with("value xxx") && m.ends_with(": expected a number") && m.len() < 300, "{m}");
    }
}
