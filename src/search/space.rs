//! The distributions a `[[search]]` samples from, written in the sweep file as
//! `{ uniform = [a, b] }`, `{ log_uniform = [a, b] }` (or `uniform` with
//! `log = true`), `{ int = [lo, hi] }` (with `log = true` on a log scale) and
//! `{ choice = [v1, v2, …] }` (values of any type).
//!
//! Each value has an internal representation as a number, as in Optuna: the
//! float itself, the integer as a float, or the index of a choice. Random
//! sampling follows Optuna's `RandomSampler`: uniform on the (log) range, an
//! integer drawn on `[lo - 0.5, hi + 0.5]` (in logs with `log`) and rounded.

use crate::rng::Rng;
use toml::Value;

/// One parameter's distribution.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// Uniform on `[low, high]`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Uniform in the logarithm on `[low, high]`, `0 < low`.
    LogUniform {
        /// Lower bound (positive).
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// An integer in `[low, high]` (inclusive), uniform or, with `log`, log-uniform.
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound (inclusive).
        high: i64,
        /// Sample on a log scale (`low >= 1`).
        log: bool,
    },
    /// One of the values, each equally likely.
    Choice(Vec<Value>),
}

/// The keys that make a table a distribution rather than a value.
pub const KINDS: &[&str] = &["uniform", "log_uniform", "int", "choice"];

/// Whether a TOML value is written as a distribution (a table with one of [`KINDS`]).
pub fn is_distribution(v: &Value) -> bool {
    v.as_table().is_some_and(|t| KINDS.iter().any(|k| t.contains_key(*k)))
}

fn bounds(v: &Value, kind: &str) -> Result<(f64, f64), String> {
    let pair = v
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| format!("`{kind}` takes two bounds, e.g. {kind} = [0.0, 1.0]; found {v}"))?;
    let num = |x: &Value| match x {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    };
    let (Some(a), Some(b)) = (num(&pair[0]), num(&pair[1])) else {
        return Err(format!("the bounds of `{kind}` must be numbers, found {v}"));
    };
    if !a.is_finite() || !b.is_finite() {
        return Err(format!("the bounds of `{kind}` must be finite, found {v}"));
    }
    Ok((a, b))
}

impl Distribution {
    /// Parses `{ uniform = [a, b] }` and its kin, checking the bounds.
    ///
    /// # Errors
    /// A message naming what is wrong (the caller adds the file and line).
    pub fn parse(v: &Value) -> Result<Distribution, String> {
        let t = v.as_table().ok_or_else(|| format!("expected a distribution, found {v}"))?;
        let kinds: Vec<&str> = KINDS.iter().copied().filter(|k| t.contains_key(*k)).collect();
        if kinds.len() != 1 {
            return Err(format!(
                "a distribution has exactly one of {}; found {}",
                KINDS.join(", "),
                if kinds.is_empty() { "none".to_owned() } else { kinds.join(" and ") }
            ));
        }
        let kind = kinds[0];
        for k in t.keys() {
            if k != kind && !(k == "log" && matches!(kind, "uniform" | "int")) {
                return Err(format!("unknown key `{k}` in a `{kind}` distribution"));
            }
        }
        let log = match t.get("log") {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(other) => return Err(format!("`log` must be true or false, found {other}")),
        };
        let spec = &t[kind];
        match kind {
            "uniform" | "log_uniform" => {
                let (low, high) = bounds(spec, kind)?;
                if low >= high {
                    return Err(format!("the lower bound {low} of `{kind}` must be below the upper bound {high}"));
                }
                if kind == "log_uniform" || log {
                    if low <= 0.0 {
                        return Err(format!("a log scale needs a positive lower bound, found {low}"));
                    }
                    Ok(Distribution::LogUniform { low, high })
                } else {
                    Ok(Distribution::Uniform { low, high })
                }
            }
            "int" => {
                let pair = spec.as_array().filter(|a| a.len() == 2);
                let ints = pair.and_then(|p| Some((p[0].as_integer()?, p[1].as_integer()?)));
                let Some((low, high)) = ints else {
                    return Err(format!("`int` takes two integer bounds, e.g. int = [16, 256]; found {spec}"));
                };
                if low > high {
                    return Err(format!("the lower bound {low} of `int` is above the upper bound {high}"));
                }
                if log && low < 1 {
                    return Err(format!("`int` with `log = true` needs a lower bound of at least 1, found {low}"));
                }
                Ok(Distribution::Int { low, high, log })
            }
            _ => {
                let items = spec.as_array().ok_or_else(|| format!("`choice` takes a list of values, found {spec}"))?;
                if items.is_empty() {
                    return Err("`choice` needs at least one value".to_owned());
                }
                Ok(Distribution::Choice(items.clone()))
            }
        }
    }

    /// Draws an internal value, as Optuna's `RandomSampler` does.
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            Distribution::Uniform { low, high } => rng.uniform(*low, *high).min(*high),
            Distribution::LogUniform { low, high } => rng.uniform(low.ln(), high.ln()).exp().clamp(*low, *high),
            Distribution::Int { low, high, log } => {
                let (lo, hi) = (*low as f64 - 0.5, *high as f64 + 0.5);
                let x = if *log { rng.uniform(lo.ln(), hi.ln()).exp() } else { rng.uniform(lo, hi) };
                x.round().clamp(*low as f64, *high as f64)
            }
            Distribution::Choice(items) => rng.below(items.len()) as f64,
        }
    }

    /// The value a run is given for an internal value.
    pub fn external(&self, x: f64) -> Value {
        match self {
            Distribution::Uniform { .. } | Distribution::LogUniform { .. } => Value::Float(x),
            Distribution::Int { low, high, .. } => Value::Integer((x.round() as i64).clamp(*low, *high)),
            Distribution::Choice(items) => items[(x as usize).min(items.len() - 1)].clone(),
        }
    }

    /// The number of choices, for a categorical distribution.
    pub fn choices(&self) -> Option<usize> {
        match self {
            Distribution::Choice(items) => Some(items.len()),
            _ => None,
        }
    }

    /// How `sweep plan` describes it: `log-uniform [0.0001, 0.1]`.
    pub fn describe(&self) -> String {
        match self {
            Distribution::Uniform { low, high } => format!("uniform [{low}, {high}]"),
            Distribution::LogUniform { low, high } => format!("log-uniform [{low}, {high}]"),
            Distribution::Int { low, high, log: false } => format!("integer [{low}, {high}]"),
            Distribution::Int { low, high, log: true } => format!("integer [{low}, {high}], log scale"),
            Distribution::Choice(items) => {
                let v: Vec<String> = items.iter().map(ToString::to_string).collect();
                format!("one of {}", v.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Distribution, String> {
        let t: toml::Table = toml::from_str(&format!("x = {s}")).unwrap();
        Distribution::parse(&t["x"])
    }

    #[test]
    fn every_kind_parses_and_bad_bounds_are_refused() {
        assert_eq!(parse("{ uniform = [0, 1] }"), Ok(Distribution::Uniform { low: 0.0, high: 1.0 }));
        assert_eq!(parse("{ log_uniform = [1e-4, 1e-1] }"), Ok(Distribution::LogUniform { low: 1e-4, high: 0.1 }));
        assert_eq!(parse("{ uniform = [1e-4, 1e-1], log = true }"), parse("{ log_uniform = [1e-4, 1e-1] }"));
        assert_eq!(parse("{ int = [16, 256], log = true }"), Ok(Distribution::Int { low: 16, high: 256, log: true }));
        assert!(matches!(parse(r#"{ choice = ["a", 1, { b = 2 }] }"#), Ok(Distribution::Choice(v)) if v.len() == 3));
        for (bad, says) in [
            ("{ uniform = [1, 0] }", "below the upper bound"),
            ("{ uniform = [1, 1] }", "below the upper bound"),
            ("{ uniform = [0] }", "two bounds"),
            ("{ uniform = [\"a\", 1] }", "must be numbers"),
            ("{ log_uniform = [0, 1] }", "positive lower bound"),
            ("{ int = [5, 4] }", "above the upper bound"),
            ("{ int = [0.5, 4] }", "integer bounds"),
            ("{ int = [0, 4], log = true }", "at least 1"),
            ("{ choice = [] }", "at least one value"),
            ("{ choice = 3 }", "a list of values"),
            ("{ uniform = [0, 1], int = [0, 1] }", "exactly one"),
            ("{ choice = [1], log = true }", "unknown key `log`"),
            ("{ uniform = [0, 1], log = 1 }", "true or false"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn samples_stay_in_bounds_and_cover_them() {
        let mut rng = Rng::new(7);
        let d = Distribution::LogUniform { low: 1e-4, high: 1e-1 };
        let xs: Vec<f64> = (0..2000).map(|_| d.sample(&mut rng)).collect();
        assert!(xs.iter().all(|x| (1e-4..=1e-1).contains(x)));
        // A log scale: about a third of the draws in each decade.
        let first = xs.iter().filter(|x| **x < 1e-3).count();
        assert!((550..780).contains(&first), "{first}");
        let d = Distribution::Int { low: 16, high: 256, log: true };
        let ys: Vec<f64> = (0..2000).map(|_| d.sample(&mut rng)).collect();
        assert!(ys.iter().all(|y| y.fract() == 0.0 && (16.0..=256.0).contains(y)));
        assert!(ys.contains(&16.0) && ys.contains(&256.0));
        assert!(ys.iter().filter(|y| **y < 64.0).count() > 800, "log scale favours small integers");
        let d = Distribution::Int { low: 1, high: 3, log: false };
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[d.sample(&mut rng) as usize - 1] += 1;
        }
        assert!(counts.iter().all(|c| (900..1100).contains(c)), "{counts:?}");
        let d = Distribution::Choice(vec![Value::from("a"), Value::from(2)]);
        assert_eq!(d.external(1.0), Value::from(2));
        assert_eq!(Distribution::Int { low: 1, high: 3, log: false }.external(2.0), Value::Integer(2));
    }
}
