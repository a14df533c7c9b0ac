//! `submit --rerun`: a finished run trained again as a new repeat, the way
//! `repeats = N` makes repeats: the same configuration with the next seed.

use super::PlannedRun;
use crate::spec::run_key;

/// `run` as its next repeat: the first seed after its own whose key
/// `taken` does not know (a key in the database or elsewhere in the sweep),
/// named `NAME,seed=S` (a `,seed=…` the name already ends with is replaced).
pub fn next_repeat(run: &PlannedRun, taken: &dyn Fn(&str) -> bool) -> PlannedRun {
    let mut out = run.clone();
    let base = match run.name.rsplit_once(",seed=") {
        Some((head, tail)) if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit()) => head,
        _ => run.name.as_str(),
    };
    for k in 1..=u64::from(u32::MAX) {
        out.config.seed = run.config.seed.wrapping_add(k);
        out.key = run_key(&out.config);
        if !taken(&out.key.0) {
            break;
        }
    }
    out.name = format!("{base},seed={}", out.config.seed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;
    use std::path::Path;

    #[test]
    fn the_next_unused_seed_makes_the_repeat() {
        let text = "name = \"s\"\nseed = 7\n[dataset]\nname = \"synthetic\"\n[[run]]\nname = \"a\"\nmodel = \"smallcnn\"\nepochs = 1\nbatch_size = 8\naugment = \"none\"\noptimizer = { name = \"sgd\", lr = 0.1 }\n";
        let spec = parse(Path::new("s.toml"), text).expect("parses");
        let run = &spec.runs[0];
        let first = next_repeat(run, &|_| false);
        assert_eq!((first.config.seed, first.name.as_str()), (8, "a,seed=8"));
        assert_ne!(first.key, run.key);
        // Seed 8 is taken (an earlier rerun): the next one is 9, and the name's seed is replaced.
        let taken = first.key.0.clone();
        let second = next_repeat(&first, &|k| k == taken || k == run.key.0);
        assert_eq!((second.config.seed, second.name.as_str()), (9, "a,seed=9"));
    }
}
