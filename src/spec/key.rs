//! The stable identity of a run: a hash of its canonical configuration.
//!
//! The canonical form is the [`RunConfig`] serialised to JSON with every object's
//! keys sorted and no whitespace; the key is the SHA-256 of that text in hex. Two
//! runs with the same key are the same experiment, whichever sweep file they came
//! from, so a finished key is never trained again.

use super::RunConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// SHA-256 (hex) of a run's canonical configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunKey(pub String);

impl RunKey {
    /// The short id shown to users (first 10 hex digits).
    pub fn short(&self) -> &str {
        &self.0[..10.min(self.0.len())]
    }
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The canonical JSON text of a configuration (sorted keys, compact).
pub fn canonical_json(config: &RunConfig) -> String {
    let value = serde_json::to_value(config).expect("RunConfig always serialises");
    serde_json::to_string(&sorted(value)).expect("JSON value always serialises")
}

fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The key of a configuration: the hash of its canonical JSON without the
/// fields that cannot change a run's numbers (`keep`).
pub fn run_key(config: &RunConfig) -> RunKey {
    let mut value = serde_json::to_value(config).expect("RunConfig always serialises");
    if let Some(map) = value.as_object_mut() {
        map.remove("keep");
    }
    let text = serde_json::to_string(&sorted(value)).expect("JSON value always serialises");
    let digest = Sha256::digest(text.as_bytes());
    RunKey(digest.iter().fold(String::with_capacity(64), |mut hex, b| {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
        hex
    }))
}
