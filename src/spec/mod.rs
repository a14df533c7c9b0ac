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

pub use config::*;
pub use device::DeviceChoice;
pub use expand::{PlannedRun, Reference, SweepSpec};
pub use key::{canonical_json, run_key, RunKey};

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
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(k) = &self.key {
            write!(f, "`{k}`: ")?;
        }
        f.write_str(&self.message)
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

    /// An error at a byte offset.
    pub fn error(&self, offset: usize, key: Option<&str>, message: impl Into<String>) -> SpecError {
        let (line, column) = self.line_col(offset);
        SpecError { file: self.path.clone(), line, column, key: key.map(str::to_owned), message: message.into() }
    }
}

/// Reads and validates a sweep file and expands it into runs.
pub fn load(path: &Path) -> Result<SweepSpec, SpecErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecErrors(vec![SpecError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read the sweep file: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Validates sweep-file text (named `path` in messages) and expands it into runs.
pub fn parse(path: &Path, text: &str) -> Result<SweepSpec, SpecErrors> {
    let src = Source { path: path.to_owned(), text: text.to_owned() };
    expand::expand(&src)
}
