//! A run's configuration as flat `path -> value` parameters, and the
//! diff-only view over many runs.
//!
//! `sweep results` flattens every run it shows (10,000 in the benchmark), so
//! this is built for that: paths and values are interned ([`Interner`]), so
//! that the runs of a sweep share one copy of `optimizer.lr` and of `0.05`,
//! and comparing two values is mostly comparing two pointers; flattening reads
//! the JSON text directly, without building a `serde_json::Value` tree.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// One run's parameters, in the order of its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(Arc<str>, Arc<str>)>);

impl Params {
    /// The value at `path` (strings unquoted; numbers, booleans and lists as JSON).
    pub fn get(&self, path: &str) -> Option<&str> {
        self.get_shared(path).map(|v| &**v)
    }

    /// The value at `path`, shared.
    pub fn get_shared(&self, path: &str) -> Option<&Arc<str>> {
        self.0.iter().find(|(k, _)| &**k == path).map(|(_, v)| v)
    }

    /// Sets `path` to `value`, replacing a value it had.
    pub fn insert(&mut self, path: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| &**k == path) {
            Some((_, v)) => *v = value.into(),
            None => self.0.push((path.into(), value.into())),
        }
    }

    /// Every `(path, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `self` and `other` have the same paths in the same order
    /// (cheap for runs flattened by one [`Interner`]: pointer comparisons).
    fn same_layout(&self, other: &Params) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|((a, _), (b, _))| equal(a, b))
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut p = Params::default();
        for (k, v) in iter {
            p.insert(k.as_ref(), v.as_ref());
        }
        p
    }
}

/// FNV-1a: the interner hashes 400,000 short strings for 10,000 runs, and
/// SipHash (the default, built against hostile keys) cost more than the rest.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvSet<T> = HashSet<T, BuildHasherDefault<Fnv>>;

/// Shares the paths and values of the runs it flattens.
#[derive(Default)]
pub struct Interner {
    strings: FnvSet<Arc<str>>,
    path: String,
    number: Vec<u8>,
    /// Flattened top-level entries by `key NUL json-text`: the runs of a sweep
    /// differ in a few entries, so most are flattened once.
    memo: HashMap<Box<str>, Params, BuildHasherDefault<Fnv>>,
    memo_key: String,
}

impl Interner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.strings.insert(a.clone());
        a
    }

    /// Flattens a JSON config into dotted paths. Lists of transforms are
    /// summarised by the augmentation set's name, so they are left out.
    pub fn flatten(&mut self, text: &str) -> Result<Params, serde_json::Error> {
        self.flatten_after(text, None, &mut Vec::new())
    }

    /// [`Interner::flatten`] of each text, in order (an unreadable one gives
    /// no parameters). Runs listed one after another mostly differ in a few
    /// top-level entries: an entry whose text equals the previous run's is
    /// not looked at again.
    pub fn flatten_all<'t>(&mut self, texts: impl IntoIterator<Item = &'t str>) -> Vec<Params> {
        let mut out: Vec<Params> = Vec::new();
        let (mut entries, mut prev_entries) = (Vec::new(), Vec::new());
        for text in texts {
            entries.clear();
            let prev = out.last().map(|p| (p, prev_entries.as_slice()));
            let flat = self.flatten_after(text, prev, &mut entries).unwrap_or_else(|_| {
                entries.clear();
                Params::default()
            });
            out.push(flat);
            std::mem::swap(&mut entries, &mut prev_entries);
        }
        out
    }

    fn flatten_after<'t>(
        &mut self,
        text: &'t str,
        prev: Option<(&Params, &[Entry<'t>])>,
        entries: &mut Vec<Entry<'t>>,
    ) -> Result<Params, serde_json::Error> {
        use serde::de::DeserializeSeed;
        let mut out = Params(Vec::with_capacity(prev.map_or(32, |(p, _)| p.len())));
        let mut de = serde_json::Deserializer::from_str(text);
        let top = Top { int: self, out: &mut out, prev, entries };
        if top.deserialize(&mut de).and_then(|()| de.end()).is_err() {
            // Not an object (or not JSON): flattened as a whole, with the empty path.
            out.0.clear();
            entries.clear();
            self.path.clear();
            let mut de = serde_json::Deserializer::from_str(text);
            Walk { int: self, out: &mut out }.deserialize(&mut de)?;
            de.end()?;
        }
        Ok(out)
    }

    /// Flattens one top-level entry (`key: raw`) onto `out`, from the memo when it was seen.
    fn entry(&mut self, key: &str, raw: &str, out: &mut Params) -> Result<(), serde_json::Error> {
        use serde::de::DeserializeSeed;
        self.memo_key.clear();
        self.memo_key.push_str(key);
        self.memo_key.push('\0');
        self.memo_key.push_str(raw);
        if let Some(flat) = self.memo.get(self.memo_key.as_str()) {
            out.0.extend(flat.0.iter().cloned());
            return Ok(());
        }
        let mut part = Params::default();
        self.path.clear();
        self.path.push_str(key);
        if key == "head" && raw.trim_start().starts_with('{') {
            // A hidden-layer head is a table without a name: `head` says
            // `mlp` (beside `head.hidden` and `head.dropout`), so that it reads,
            // filters and groups as the linear head's `linear` does.
            self.push_value(&mut part, MLP_HEAD);
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        Walk { int: self, out: &mut part }.deserialize(&mut de)?;
        out.0.extend(part.0.iter().cloned());
        self.memo.insert(self.memo_key.as_str().into(), part);
        Ok(())
    }

    fn push_value(&mut self, out: &mut Params, value: &str) {
        let path = std::mem::take(&mut self.path);
        let k = self.intern(&path);
        self.path = path;
        let v = self.intern(value);
        out.0.push((k, v));
    }

    fn push_number(&mut self, out: &mut Params, v: &Value) {
        let mut buf = std::mem::take(&mut self.number);
        buf.clear();
        serde_json::to_writer(&mut buf, v).expect("a number serialises");
        self.push_value(out, std::str::from_utf8(&buf).expect("JSON is UTF-8"));
        self.number = buf;
    }
}

/// The `head` parameter of a head with hidden layers.
pub const MLP_HEAD: &str = "mlp";

/// The transform lists, left out: the augmentation set's name stands for them.
fn summarised(key: &str) -> bool {
    key == "train_transforms" || key == "test_transforms"
}

/// A top-level entry of a flattened config and where its parameters are in the output.
struct Entry<'t> {
    key: std::borrow::Cow<'t, str>,
    raw: &'t str,
    at: std::ops::Range<usize>,
}

/// Reads a config's top-level object entry by entry, each value unparsed,
/// reusing the previous run's parameters (and its entries) for an entry whose
/// text is unchanged.
struct Top<'a, 't> {
    int: &'a mut Interner,
    out: &'a mut Params,
    prev: Option<(&'a Params, &'a [Entry<'t>])>,
    entries: &'a mut Vec<Entry<'t>>,
}

impl<'t> serde::de::DeserializeSeed<'t> for Top<'_, 't> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'t>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'t> serde::de::Visitor<'t> for Top<'_, 't> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'t>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'t, str>>()? {
            let raw = map.next_value::<&'t serde_json::value::RawValue>()?.get();
            if summarised(&key) {
                continue;
            }
            let start = self.out.0.len();
            let unchanged = self.prev.and_then(|(params, entries)| {
                entries
                    .get(self.entries.len())
                    .filter(|p| p.raw == raw && p.key == key)
                    .map(|p| &params.0[p.at.clone()])
            });
            match unchanged {
                Some(pairs) => self.out.0.extend_from_slice(pairs),
                None => self.int.entry(&key, raw, self.out).map_err(serde::de::Error::custom)?,
            }
            self.entries.push(Entry { key, raw, at: start..self.out.0.len() });
        }
        Ok(())
    }
}

struct Walk<'a> {
    int: &'a mut Interner,
    out: &'a mut Params,
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let before = self.out.0.len();
        let (mut keys, mut only_key) = (0usize, None);
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            keys += 1;
            if summarised(&k) {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let len = self.int.path.len();
            if len > 0 {
                self.int.path.push('.');
            }
            self.int.path.push_str(&k);
            map.next_value_seed(Walk { int: &mut *self.int, out: &mut *self.out })?;
            self.int.path.truncate(len);
            only_key = Some(k);
        }
        // A tagged value, `freeze = { through = "layer2" }`, is one parameter
        // `freeze` = `through layer2`: one column beside runs where it is a
        // plain word (`freeze = "none"`), not two half-empty ones.
        if let (1, Some(k)) = (keys, only_key) {
            let tagged = k != "name" && !self.int.path.is_empty() && self.out.0.len() == before + 1;
            if tagged {
                let (_, v) = self.out.0.pop().expect("one value was added");
                let text = format!("{k} {v}");
                self.int.push_value(self.out, &text);
            }
        }
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let v = <Value as serde::Deserialize>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        self.int.push_value(self.out, &v.to_string());
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.int.push_value(self.out, v);
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.int.push_value(self.out, if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.int.push_number(self.out, &Value::from(v));
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.int.push_number(self.out, &Value::from(v));
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.int.push_number(self.out, &Value::from(v));
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.int.push_value(self.out, "null");
        Ok(())
    }
}

/// The values of `path` over `runs` (runs with one layout share its position).
fn column<'a>(runs: &[&'a Params], path: &str) -> Vec<Option<&'a Arc<str>>> {
    let mut last: Option<(&Params, Option<usize>)> = None;
    runs.iter()
        .map(|r| {
            let at = match last {
                Some((l, at)) if l.same_layout(r) => at,
                _ => r.0.iter().position(|(k, _)| &**k == path),
            };
            last = Some((r, at));
            at.map(|i| &r.0[i].1)
        })
        .collect()
}

/// Interned strings are equal when they are the same; others are compared.
fn equal(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn same(a: Option<&Arc<str>>, b: Option<&Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => equal(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Config paths whose values are not the same in every run, leaving out the
/// fields of a table that only follow its `name` (with an SGD and an Adam run,
/// `optimizer.betas` or `optimizer.momentum` say nothing `optimizer` does not).
pub fn differing(runs: &[&Params]) -> Vec<String> {
    // One pass over every run's values, keeping per path the first value, how
    // many runs have it, and whether another value was seen.
    struct State<'a> {
        first: &'a Arc<str>,
        count: usize,
        differs: bool,
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut states: Vec<(&str, State)> = Vec::new();
    let mut slots: Vec<usize> = Vec::new();
    let mut last: Option<&Params> = None;
    for r in runs {
        if !last.is_some_and(|l| l.same_layout(r)) {
            // A new layout: find (or add) each path's state once.
            slots =
                r.0.iter()
                    .map(|(k, v)| {
                        *index.entry(&**k).or_insert_with(|| {
                            states.push((k, State { first: v, count: 0, differs: false }));
                            states.len() - 1
                        })
                    })
                    .collect();
        }
        last = Some(r);
        for (&slot, (_, v)) in slots.iter().zip(&r.0) {
            let s = &mut states[slot].1;
            if !equal(s.first, v) {
                s.differs = true;
            }
            s.count += 1;
        }
    }
    let differs: BTreeSet<&str> =
        states.iter().filter(|(_, s)| s.differs || s.count < runs.len()).map(|(k, _)| *k).collect();
    let everywhere: std::collections::HashSet<&str> =
        states.iter().filter(|(_, s)| s.count == runs.len()).map(|(k, _)| *k).collect();
    // A field every run has is a value of its own even where the name differs
    // (an SGD run's lr beside an Adam run's): only a variant's own fields
    // (`momentum`, `betas`) are hidden behind the name.
    let follows_name = |k: &str| {
        if everywhere.contains(k) {
            return false;
        }
        let Some((table, field)) = k.rsplit_once('.') else { return false };
        let name = format!("{table}.name");
        if field == "name" || !differs.contains(name.as_str()) {
            return false;
        }
        let names = column(runs, &name);
        let values = column(runs, k);
        let mut seen: HashMap<Option<&str>, Option<&Arc<str>>> = HashMap::new();
        names.iter().zip(&values).all(|(n, v)| same(*seen.entry(n.map(|n| &**n)).or_insert(*v), *v))
    };
    differs.iter().filter(|k| !follows_name(k)).map(|k| (*k).to_owned()).collect()
}

/// Every config path of `runs`, sorted.
pub fn all_keys<'a>(runs: &[&'a Params]) -> BTreeSet<&'a str> {
    let mut keys = BTreeSet::new();
    let mut last: Option<&Params> = None;
    for r in runs {
        if last.is_some_and(|l| l.same_layout(r)) {
            continue;
        }
        keys.extend(r.0.iter().map(|(k, _)| &**k));
        last = Some(r);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().copied().collect()
    }

    /// The straightforward definition, to check the fast one against.
    fn flatten_value(value: &Value) -> BTreeMap<String, String> {
        fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
            match v {
                Value::Object(map) => {
                    if prefix == "head" {
                        out.insert(prefix.to_owned(), MLP_HEAD.to_owned());
                    }
                    for (k, v) in map {
                        if k == "train_transforms" || k == "test_transforms" {
                            continue;
                        }
                        let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        walk(&p, v, out);
                    }
                }
                Value::String(s) => {
                    out.insert(prefix.to_owned(), s.clone());
                }
                other => {
                    out.insert(prefix.to_owned(), other.to_string());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk("", value, &mut out);
        out
    }

    #[test]
    fn flatten_equals_the_straightforward_definition_and_shares_strings() {
        let text = r#"{"model":"resnet18","optimizer":{"name":"adam","lr":0.001,"betas":[0.9,0.999],"eps":1e-8,
            "amsgrad":false},"seed":3,"big":18446744073709551615,"neg":-2,"x":null,"train_transforms":[{"hflip":{}}],
            "dataset":{"name":"synthetic","train_size":100,"s":"a\"b"},"head":{"hidden":[512],"dropout":[0.5]}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let mut int = Interner::default();
        let flat = int.flatten(text).unwrap();
        let as_map: BTreeMap<String, String> = flat.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        assert_eq!(as_map, flatten_value(&v));
        assert_eq!(flat.get("optimizer.eps"), Some("1e-8"));
        assert_eq!(flat.get("dataset.s"), Some("a\"b"));
        assert_eq!(flat.get("optimizer.betas"), Some("[0.9,0.999]"));
        assert_eq!((flat.get("head"), flat.get("head.hidden")), (Some("mlp"), Some("[512]")));
        let again = int.flatten(text).unwrap();
        assert!(again.0.iter().zip(&flat.0).all(|(a, b)| Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.1, &b.1)));
        assert!(int.flatten("{\"a\": 1} x").is_err());
    }

    #[test]
    fn a_tagged_value_is_one_column_and_fields_every_run_has_show_beside_a_differing_name() {
        let mut int = Interner::default();
        let a = int.flatten(r#"{"freeze":"none","optimizer":{"name":"sgd","lr":0.01,"momentum":0.9}}"#).unwrap();
        let b = int
            .flatten(r#"{"freeze":{"through":"layer2"},"optimizer":{"name":"adam","lr":0.001,"betas":[0.9,0.999]}}"#)
            .unwrap();
        assert_eq!(b.get("freeze"), Some("through layer2"));
        assert_eq!(b.get("freeze.through"), None);
        // lr is in both: it shows; momentum and betas belong to one optimizer each: hidden.
        assert_eq!(differing(&[&a, &b]), ["freeze", "optimizer.lr", "optimizer.name"]);
        // A one-key table named by `name` stays as it is.
        let c = int.flatten(r#"{"schedule":{"name":"constant"}}"#).unwrap();
        assert_eq!(c.get("schedule.name"), Some("constant"));
    }

    #[test]
    fn flatten_all_equals_flattening_each_run_alone() {
        let texts = [
            r#"{"model":"a","optimizer":{"name":"sgd","lr":0.1},"seed":1}"#,
            r#"{"model":"a","optimizer":{"name":"sgd","lr":0.1},"seed":2}"#,
            r#"{"model":"b","optimizer":{"name":"sgd","lr":0.2},"seed":2}"#,
            // Same entries in another order, one missing, one added, a transform list.
            r#"{"seed":2,"model":"b","optimizer":{"name":"sgd","lr":0.2}}"#,
            r#"{"model":"b","train_transforms":[{"hflip":{}}],"extra":{"x":[1,2]},"seed":2}"#,
            "not json",
            r#"{"model":"b","seed":2}"#,
            "[1,2]",
            r#"{"model":"b","seed":2}"#,
        ];
        let mut one = Interner::default();
        let alone: Vec<Params> = texts.iter().map(|t| one.flatten(t).unwrap_or_default()).collect();
        assert_eq!(Interner::default().flatten_all(texts), alone);
        assert_eq!(alone[3].get("optimizer.lr"), Some("0.2"));
        // A one-key object is a tagged value: one parameter.
        assert_eq!(alone[4].get("extra"), Some("x [1,2]"));
        assert!(alone[5].is_empty());
        assert_eq!(alone[7].get(""), Some("[1,2]"));
    }

    #[test]
    fn differing_paths_include_missing_ones() {
        let runs = [
            run(&[("model", "a"), ("seed", "1"), ("only_here", "x")]),
            run(&[("model", "a"), ("seed", "2")]),
            run(&[("seed", "2"), ("model", "a")]),
        ];
        let refs: Vec<&Params> = runs.iter().collect();
        assert_eq!(differing(&refs), vec!["only_here", "seed"]);
        assert_eq!(differing(&refs[1..]), Vec::<String>::new());
        assert_eq!(all_keys(&refs).into_iter().collect::<Vec<_>>(), vec!["model", "only_here", "seed"]);
    }

    #[test]
    fn fields_that_follow_a_differing_name_are_left_out() {
        let runs = [
            run(&[("model", "a"), ("optimizer.name", "sgd"), ("optimizer.lr", "0.1"), ("optimizer.momentum", "0.9")]),
            run(&[("model", "a"), ("optimizer.name", "sgd"), ("optimizer.lr", "0.2"), ("optimizer.momentum", "0.9")]),
            run(&[("model", "a"), ("optimizer.name", "adam"), ("optimizer.lr", "0.001"), ("optimizer.betas", "[0.9]")]),
        ];
        let refs: Vec<&Params> = runs.iter().collect();
        assert_eq!(differing(&refs), vec!["optimizer.lr", "optimizer.name"]);
        // Momentum that varies within SGD runs is kept.
        let mut more = runs.to_vec();
        more[1].insert("optimizer.momentum", "0.5");
        let refs: Vec<&Params> = more.iter().collect();
        assert_eq!(differing(&refs), vec!["optimizer.lr", "optimizer.momentum", "optimizer.name"]);
    }
}
