//! Dotted paths (`optimizer.lr`) in TOML tables: set, get, flatten, compare.

use toml::{Table, Value};

/// Sets a dotted path in a table (see the module doc for the merge rule).
pub fn set_path(table: &mut Table, path: &str, value: Value) {
    let mut parts = path.splitn(2, '.');
    let head = parts.next().unwrap_or_default();
    match parts.next() {
        Some(rest) => {
            let entry = table.entry(head.to_owned()).or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
        None => match (table.get_mut(head), value) {
            (Some(Value::Table(old)), Value::Table(new)) => {
                let renamed = matches!((old.get("name"), new.get("name")), (Some(a), Some(b)) if a != b);
                if renamed {
                    *old = new;
                } else {
                    for (k, v) in new {
                        set_path(old, &k, v);
                    }
                }
            }
            (_, value) => {
                table.insert(head.to_owned(), value);
            }
        },
    }
}

/// The value at a dotted path.
pub(super) fn get_path<'t>(table: &'t Table, path: &str) -> Option<&'t Value> {
    let mut parts = path.splitn(2, '.');
    let head = parts.next()?;
    match (table.get(head), parts.next()) {
        (Some(v), None) => Some(v),
        (Some(Value::Table(t)), Some(rest)) => get_path(t, rest),
        _ => None,
    }
}

/// Equality that treats `1` and `1.0` as the same number.
pub(super) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(x), Value::Float(y)) | (Value::Float(y), Value::Integer(x)) => (*x as f64) == *y,
        _ => a == b,
    }
}

/// Flattens nested tables into (dotted path, leaf) pairs.
pub(super) fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&path, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

/// Compact text of a value for run names.
pub(super) fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) if *f != 0.0 && (f.abs() >= 1e5 || f.abs() < 1e-3) => format!("{f:e}"),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => other.to_string().replace(['\n', '"', ' '], ""),
    }
}

pub(super) fn label(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}
