//! Overrides from the command line, in Hydra's multirun style:
//! `--set optimizer.lr=0.01,0.05 --set batch_size=64`. A single value
//! replaces the file's value in every run (grid axes included); a comma list
//! adds an axis over all the file's runs, each run once per value. Values are
//! TOML (`0.01`, `"sgd"`, `[5, 10]`, `{ name = "adam", lr = 1e-3 }`); a bare
//! word is a string (`model=resnet18`). Commas inside brackets, braces or
//! quotes do not split.

use std::fmt;
use std::str::FromStr;
use toml::Value;

/// One `--set KEY=VALUE[,VALUE...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// As written, for error messages.
    pub raw: String,
    /// The dotted path, e.g. `optimizer.lr`.
    pub path: String,
    /// One value (replaces) or several (an axis).
    pub values: Vec<Value>,
}

/// Why an override does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--set {raw}: {why}")]
pub struct BadOverride {
    /// As written.
    pub raw: String,
    /// What is wrong.
    pub why: String,
}

impl FromStr for Override {
    type Err = BadOverride;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BadOverride { raw: raw.to_owned(), why: why.to_owned() };
        let (path, values) = raw.split_once('=').ok_or_else(|| bad("expected KEY=VALUE or KEY=VALUE,VALUE,..."))?;
        let path = path.trim();
        let valid_key = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !path.split('.').all(valid_key) {
            return Err(bad("the key must be a dotted path such as optimizer.lr"));
        }
        let parts = split_top_level(values);
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(bad("an empty value (two commas, or nothing after `=`)"));
        }
        let values = parts.iter().map(|p| value(p.trim())).collect();
        Ok(Override { raw: raw.to_owned(), path: path.to_owned(), values })
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "--set {}", self.raw)
    }
}

/// A TOML value, or the text as a string when it is not one.
fn value(text: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

/// `text` split at the commas outside brackets, braces and quotes.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut quote, mut start) = (0i32, None, 0);
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml_bare_words_strings_and_lists_do_not_split() {
        let o: Override = "optimizer.lr=0.01,0.05".parse().unwrap();
        assert_eq!((o.path.as_str(), o.values.clone()), ("optimizer.lr", vec![Value::Float(0.01), Value::Float(0.05)]));
        let o: Override = "model=resnet18".parse().unwrap();
        assert_eq!(o.values, vec![Value::String("resnet18".into())]);
        let o: Override = "schedule.milestones=[5, 10],[3]".parse().unwrap();
        assert_eq!(o.values.len(), 2);
        let o: Override = r#"optimizer={ name = "adam", lr = 1e-3 }"#.parse().unwrap();
        assert!(o.values[0].is_table());
        for bad in ["lr", "=1", "optimizer.lr=", "a..b=1", "lr=1,,2"] {
            let e = bad.parse::<Override>().unwrap_err();
            assert!(e.to_string().starts_with(&format!("--set {bad}: ")), "{e}");
        }
    }
}
