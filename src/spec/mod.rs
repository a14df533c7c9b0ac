//! Sweep file → validated [`SweepSpec`] → expanded [`PlannedRun`]s.
//!
//! This is the first stage of the pipeline and is pure: it reads TOML text and
//! returns values, touching neither the database nor candle.
//!
//! * [`file`](mod@file) is the serde mirror of the TOML (`deny_unknown_fields` everywhere, so
//!   a typo is an error, not a silently ignored key), keeping byte spans so that
//!   every error can name the file, line, column and key.
//! * [`config`] holds the canonical per-run configuration, [`RunConfig`].
//! * [`expand`] merges `[defaults]` with each `[[grid]]` combination and each
//!   `[[run]]`, fills in built-in defaults and validates the result.
//!
//! The format is documented with an example in the README.

pub mod config;
pub mod device;
pub mod expand;
pub mod file;
pub mod key;
pub mod limits;
pub mod overrides;

pub use config::*;
pub use device::DeviceChoice;
pub use expand::{
    next_repeat, EarlyTerminate, EarlyTerminateMethod, PlannedRun, Reference, Search, SearchMethod, SweepSpec, TrialRef,
};
pub use key::{canonical_json, run_key, RunKey};
pub use limits::Limits;
pub use overrides::Override;

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem in a sweep file, located to the character.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// The sweep file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The key (dotted path) the problem is about, when known.
    pub key: Option<String>,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        use crate::text::printable;
        let file = printable(&self.file.display().to_string()).into_owned();
        if self.line == 0 {
            // Not inside the file: it could not be read, or an override is wrong.
            write!(f, "{file}: ")?;
        } else {
            write!(f, "{file}:{}:{}: ", self.line, self.column)?;
        }
        if let Some(k) = &self.key {
            write!(f, "`{}`: ", printable(k))?;
        }
        f.write_str(&printable(&self.message))
    }
}

/// Every problem found in a sweep file (at least one).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of one source text to line and column.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path shown in messages.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
}

impl Source {
    /// 1-based (line, column) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// An error at a byte offset. A message that quotes a huge value is cut
    /// (see [`limits::quote`]).
    pub fn error(&self, offset: usize, key: Option<&str>, message: impl Into<String>) -> SpecError {
        let (line, column) = self.line_col(offset);
        let message = limits::quote_message(&message.into());
        SpecError { file: self.path.clone(), line, column, key: key.map(limits::quote), message }
    }
}

/// Whether this build can train a run: `Err` says why not.
pub type RunCheck = fn(&RunConfig) -> Result<(), String>;

/// How a sweep file is expanded beyond what it says itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Bounds (the most runs).
    pub limits: Limits,
    /// `--set` overrides, applied to every run.
    pub overrides: Vec<Override>,
    /// Whether this build can train a run (`train::check`): when the file has
    /// other errors, the runs it refuses are reported with them, in one pass.
    pub check: Option<RunCheck>,
    /// Build this trial of a TPE search too ([`SweepSpec::proposed`]).
    pub trial: Option<TrialRef>,
}

/// Reads and validates a sweep file and expands it into runs.
pub fn load(path: &Path) -> Result<SweepSpec, SpecErrors> {
    load_with(path, &Options::default())
}

/// [`load`] with [`Options`].
pub fn load_with(path: &Path, options: &Options) -> Result<SweepSpec, SpecErrors> {
    let error = |line, column, message: String| {
        SpecErrors(vec![SpecError { file: path.to_owned(), line, column, key: None, message }])
    };
    let bytes = std::fs::read(path).map_err(|e| error(0, 0, format!("cannot read the sweep file: {e}")))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // Point at the first byte that is not UTF-8.
            let at = e.utf8_error().valid_up_to();
            let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
            let (line, column) = Source { path: path.to_owned(), text: valid.clone() }.line_col(valid.len());
            let byte = e.as_bytes()[at];
            return Err(error(line, column, format!("the sweep file is not UTF-8 text (byte 0x{byte:02x} here)")));
        }
    };
    parse_with(path, &text, options)
}

/// Validates sweep-file text (named `path` in messages) and expands it into runs.
pub fn parse(path: &Path, text: &str) -> Result<SweepSpec, SpecErrors> {
    parse_with(path, text, &Options::default())
}

/// Whether a sweep file has a TPE `[[search]]` (one whose later trials are
/// proposed as trials finish), read from its TOML without expanding it: a
/// worker asks this of every sweep with trials each time it finds nothing
/// queued, and a random search's thousands of trials are not worth expanding
/// for the answer. A file that is not TOML answers true, so that the full
/// parse reports it.
#[must_use]
pub fn has_tpe_search(text: &str) -> bool {
    match text.parse::<toml::Table>() {
        Ok(t) => t
            .get("search")
            .and_then(toml::Value::as_array)
            .is_some_and(|blocks| blocks.iter().any(|b| b.get("method").and_then(toml::Value::as_str) == Some("tpe"))),
        Err(_) => true,
    }
}

/// The config paths that a sweep file's `[[search]]` blocks sample from a
/// numeric distribution, each with whether it is sampled on a log scale
/// (`log_uniform`, or `uniform`/`int` with `log = true`); read from the TOML
/// without expanding it, for the report's axes. A path that two searches
/// sample on different scales, and `choice`s, are left out; so is everything
/// of a file that is not TOML.
#[must_use]
pub fn sampled_scales(text: &str) -> std::collections::BTreeMap<String, bool> {
    use crate::search::space::Distribution;
    fn walk(path: &str, v: &toml::Value, out: &mut Vec<(String, bool)>) {
        if crate::search::space::is_distribution(v) {
            match Distribution::parse(v) {
                Ok(Distribution::LogUniform { .. }) => out.push((path.to_owned(), true)),
                Ok(Distribution::Uniform { .. }) => out.push((path.to_owned(), false)),
                Ok(Distribution::Int { log, .. }) => out.push((path.to_owned(), log)),
                _ => {}
            }
        } else if let Some(t) = v.as_table() {
            for (k, x) in t {
                walk(&if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, x, out);
            }
        }
    }
    let Ok(t) = text.parse::<toml::Table>() else { return std::collections::BTreeMap::new() };
    let mut found = Vec::new();
    for block in t.get("search").and_then(toml::Value::as_array).into_iter().flatten() {
        walk("", block, &mut found);
    }
    agreed_scales(found)
}

/// The paths of `scales` by their scale, less those given two different ones.
#[must_use]
pub fn agreed_scales(scales: impl IntoIterator<Item = (String, bool)>) -> std::collections::BTreeMap<String, bool> {
    let mut out = std::collections::BTreeMap::new();
    let mut mixed = Vec::new();
    for (path, log) in scales {
        if *out.entry(path.clone()).or_insert(log) != log {
            mixed.push(path);
        }
    }
    for path in mixed {
        out.remove(&path);
    }
    out
}

/// [`parse`] with [`Options`].
pub fn parse_with(path: &Path, text: &str, options: &Options) -> Result<SweepSpec, SpecErrors> {
    let src = Source { path: path.to_owned(), text: text.to_owned() };
    expand::expand(&src, options)
}
