//! `[[grid]]` tables (the cartesian product of their axes, zipped groups) and
//! `[[run]]` tables, turned into merged tables and pushed as runs.

use super::paths::{flatten, get_path, label, same_value, set_path, short};
use super::{
    push_run, reserved_str, Ctx, Deserialize, PlannedRun, Reference, Spanned, SpannedTable, Value, RUN_RESERVED,
};

/// One axis of a grid: a plain key or a zipped group; each option is a list of
/// (path, value) assignments.
struct Axis {
    options: Vec<Vec<(String, Value)>>,
}

pub(super) fn expand_grid(ctx: &mut Ctx, index: usize, grid: &Spanned<SpannedTable>, runs: &mut Vec<PlannedRun>) {
    let errors_before = ctx.errors.len();
    let header = grid.span().start;
    let table = grid.get_ref();
    let gname = reserved_str(ctx, table, "name");
    let repeats = ctx.repeats_of(table);

    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);

    let mut axes = Vec::new();
    let mut axis_paths = Vec::new();
    let mut excludes: Vec<(usize, Vec<(String, Value)>)> = Vec::new();
    for (k, v) in entries {
        let key = k.get_ref().as_str();
        let offset = k.span().start;
        match key {
            // Not axes: handled above (`reserved_str`, `repeats_of`).
            "name" | "repeats" => {}
            "zip" => {
                let groups: Vec<&Value> = match v.get_ref() {
                    Value::Array(items) => items.iter().collect(),
                    t @ Value::Table(_) => vec![t],
                    _ => {
                        ctx.errors.push(ctx.src.error(
                            offset,
                            Some("zip"),
                            "`zip` must be a table of equally long lists, or a list of such tables",
                        ));
                        continue;
                    }
                };
                for group in groups {
                    let mut leaves = Vec::new();
                    flatten("", group, &mut leaves);
                    let mut len = None;
                    let mut ok = true;
                    for (path, arr) in &leaves {
                        match arr.as_array() {
                            Some(a) if len.is_none_or(|l| l == a.len()) && !a.is_empty() => len = Some(a.len()),
                            Some(a) => {
                                let msg = format!("zipped lists must have the same, non-zero length: `{path}` has {} values, expected {}", a.len(), len.unwrap_or(1));
                                ctx.errors.push(ctx.src.error(offset, Some(&format!("zip.{path}")), msg));
                                ok = false;
                            }
                            None => {
                                ctx.errors.push(ctx.src.error(
                                    offset,
                                    Some(&format!("zip.{path}")),
                                    format!("expected a list of values, found {arr}"),
                                ));
                                ok = false;
                            }
                        }
                    }
                    if !ok || leaves.is_empty() {
                        continue;
                    }
                    let n = len.unwrap_or(0);
                    let mut options = vec![Vec::new(); n];
                    for (path, arr) in leaves {
                        for (i, item) in arr.as_array().into_iter().flatten().enumerate() {
                            ctx.check_assignment(offset, &path, item);
                            options[i].push((path.clone(), item.clone()));
                        }
                        axis_paths.push(path);
                    }
                    axes.push(Axis { options });
                }
            }
            "exclude" => {
                let Some(items) = v.get_ref().as_array() else {
                    ctx.errors.push(ctx.src.error(
                        offset,
                        Some("exclude"),
                        "`exclude` must be a list of tables, e.g. [{ batch_size = 32, \"optimizer.lr\" = 0.1 }]",
                    ));
                    continue;
                };
                for item in items {
                    let mut leaves = Vec::new();
                    flatten("", item, &mut leaves);
                    if !item.is_table() || leaves.is_empty() {
                        ctx.errors.push(ctx.src.error(
                            offset,
                            Some("exclude"),
                            format!("each exclusion must be a non-empty table, found {item}"),
                        ));
                        continue;
                    }
                    excludes.push((offset, leaves));
                }
            }
            _ => {
                let mut leaves = Vec::new();
                flatten(key, v.get_ref(), &mut leaves);
                for (path, arr) in leaves {
                    let Some(values) = arr.as_array() else {
                        let msg = format!("a grid axis must be a list of values, found {arr}; write `{path} = [{arr}]` or set it in [defaults]");
                        ctx.errors.push(ctx.src.error(v.span().start, Some(&path), msg));
                        continue;
                    };
                    if values.is_empty() {
                        ctx.errors.push(ctx.src.error(
                            v.span().start,
                            Some(&path),
                            "an axis with no values would expand to no runs",
                        ));
                        continue;
                    }
                    for item in values {
                        ctx.check_assignment(offset, &path, item);
                    }
                    axis_paths.push(path.clone());
                    axes.push(Axis { options: values.iter().map(|x| vec![(path.clone(), x.clone())]).collect() });
                }
            }
        }
    }
    for (offset, ex) in &excludes {
        for (path, _) in ex {
            let related = axis_paths
                .iter()
                .any(|a| a == path || path.starts_with(&format!("{a}.")) || a.starts_with(&format!("{path}.")));
            if !related {
                let msg = format!("`{path}` is not an axis of this grid (axes: {})", axis_paths.join(", "));
                ctx.errors.push(ctx.src.error(*offset, Some("exclude"), msg));
            }
        }
    }

    if let Some((k, _)) = table.iter().find(|(k, _)| k.get_ref() == "name") {
        if gname.as_deref().is_some_and(|n| n.trim().is_empty()) {
            ctx.errors.push(ctx.src.error(k.span().start, Some("name"), "a grid's name must not be empty"));
        }
    }
    if ctx.errors.len() > errors_before {
        // The combinations would repeat the same problems.
        return;
    }
    // Counted before anything is built: a 10^6-combination grid is refused at once.
    let combinations = axes.iter().try_fold(1u64, |n, a| n.checked_mul(a.options.len() as u64)).unwrap_or(u64::MAX);
    if !ctx.plan(header, combinations.saturating_mul(u64::from(repeats))) {
        return;
    }
    // Cartesian product, first axis outermost.
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for axis in &axes {
        let mut next = Vec::with_capacity(combos.len() * axis.options.len());
        for combo in &combos {
            for option in &axis.options {
                let mut c = combo.clone();
                c.extend(option.iter().cloned());
                next.push(c);
            }
        }
        combos = next;
    }
    let mut used = vec![false; excludes.len()];
    let mut kept = 0usize;
    for combo in combos {
        let mut merged = ctx.defaults.clone();
        for (path, value) in &combo {
            set_path(&mut merged, path, value.clone());
        }
        let mut excluded = false;
        for (i, (_, ex)) in excludes.iter().enumerate() {
            if ex.iter().all(|(p, v)| get_path(&merged, p).is_some_and(|m| same_value(m, v))) {
                used[i] = true;
                excluded = true;
            }
        }
        if excluded {
            continue;
        }
        kept += 1;
        let parts: Vec<String> = combo.iter().map(|(p, v)| format!("{}={}", label(p), short(v))).collect();
        let base = match (&gname, parts.is_empty()) {
            (Some(g), true) => g.clone(),
            (Some(g), false) => format!("{g}:{}", parts.join(",")),
            (None, true) => format!("grid{}", index + 1),
            (None, false) => parts.join(","),
        };
        for r in 0..repeats {
            let name = if repeats > 1 { format!("{base},seed={}", ctx.seed + u64::from(r)) } else { base.clone() };
            push_run(ctx, name, merged.clone(), r, header, None, runs);
        }
    }
    if kept == 0 && !excludes.is_empty() {
        let msg = "`exclude` removes every combination of this grid: it would expand to no runs";
        ctx.errors.push(ctx.src.error(header, Some("exclude"), msg));
        return;
    }
    for (i, (offset, ex)) in excludes.iter().enumerate() {
        if !used[i] {
            let desc: Vec<_> = ex.iter().map(|(p, v)| format!("{p} = {v}")).collect();
            let msg =
                format!("this exclusion ({}) matches no combination of the grid: check its values", desc.join(", "));
            ctx.errors.push(ctx.src.error(*offset, Some("exclude"), msg));
        }
    }
}

pub(super) fn expand_run(ctx: &mut Ctx, index: usize, run: &Spanned<SpannedTable>, runs: &mut Vec<PlannedRun>) {
    let errors_before = ctx.errors.len();
    let header = run.span().start;
    let table = run.get_ref();
    let name = reserved_str(ctx, table, "name").unwrap_or_else(|| format!("run{}", index + 1));
    if name.trim().is_empty() {
        let at = table.iter().find(|(k, _)| k.get_ref() == "name").map_or(header, |(k, _)| k.span().start);
        ctx.errors.push(ctx.src.error(at, Some("name"), "a run's name must not be empty"));
    }
    let repeats = ctx.repeats_of(table);
    let mut reference = None;
    let mut merged = ctx.defaults.clone();
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (k, v) in entries {
        let key = k.get_ref().as_str();
        let offset = k.span().start;
        if key == "reference" {
            match Reference::deserialize(v.get_ref().clone()) {
                Ok(r) => reference = Some(r),
                Err(e) => ctx.errors.push(ctx.src.error(offset, Some("reference"), e.message().trim().to_owned())),
            }
            continue;
        }
        if RUN_RESERVED.contains(&key) {
            continue;
        }
        // A run's value is set whole: `optimizer = { name = "sgd", … }` replaces an
        // Adam default, `head = { hidden = …, dropout = … }` is checked as one head.
        ctx.check_assignment(offset, key, v.get_ref());
        set_path(&mut merged, key, v.get_ref().clone());
    }
    if ctx.errors.len() > errors_before || !ctx.plan(header, u64::from(repeats)) {
        return;
    }
    for r in 0..repeats {
        let rname = if repeats > 1 { format!("{name},seed={}", ctx.seed + u64::from(r)) } else { name.clone() };
        push_run(ctx, rname, merged.clone(), r, header, reference.clone(), runs);
    }
}
