//! Every number in a sweep file is finite: TOML's `nan` and `inf` are refused
//! at their own line, wherever they are (optimizer, schedule, augmentation
//! sets, references), before anything is typed. A non-finite value would be
//! stored as JSON `null`, give `nan` and `inf` the same run key, and fail the
//! run only when a worker reads it back.

use super::{Source, SpecError};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The errors for every non-finite number in the file (none if it does not parse:
/// toml's own error is reported instead).
pub(super) fn non_finite(src: &Source) -> Vec<SpecError> {
    let mut errors = Vec::new();
    if let Ok(doc) = DeTable::parse(&src.text) {
        table(src, "", doc.get_ref(), &mut errors);
        // Keys inside `[[grid]]` and `[[run]]` are named as a run sets them.
        for e in &mut errors {
            if let Some(k) = &e.key {
                let short = k.strip_prefix("grid.").or_else(|| k.strip_prefix("run.")).unwrap_or(k);
                e.key = Some(short.to_owned());
            }
        }
    }
    errors
}

fn table(src: &Source, prefix: &str, t: &DeTable<'_>, errors: &mut Vec<SpecError>) {
    for (k, v) in t {
        let path = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
        value(src, &path, v, errors);
    }
}

fn value(src: &Source, path: &str, v: &Spanned<DeValue<'_>>, errors: &mut Vec<SpecError>) {
    match v.get_ref() {
        DeValue::Float(f) => {
            let text = f.as_str();
            let finite = text.parse::<f64>().is_ok_and(f64::is_finite);
            if !finite {
                let msg = format!("{text} is not a finite number; every number in a sweep file must be finite");
                errors.push(src.error(v.span().start, Some(path), msg));
            }
        }
        DeValue::Array(items) => {
            for item in items {
                value(src, path, item, errors);
            }
        }
        DeValue::Table(t) => table(src, path, t, errors),
        DeValue::String(_) | DeValue::Integer(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}
