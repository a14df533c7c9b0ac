//! `sweep plan FILE`: the expanded grid, nothing queued.

use crate::cli::PlanFormat;
use std::path::Path;
use std::process::ExitCode;
use sweep::report::{column_names, differing, params::Interner, render::text_table};
use sweep::spec;
use sweep::text::printable;

pub fn plan(file: &Path, options: &spec::Options, format: PlanFormat) -> anyhow::Result<ExitCode> {
    let spec = match spec::load_with(file, options) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    match format {
        PlanFormat::Json => {
            let runs: Vec<_> = spec
                .runs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "key": r.key,
                        "line": r.line,
                        "supported": sweep::train::check(&r.config).err().map(|e| e.to_string()),
                        "config": r.config,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "sweep": spec.name, "runs": runs }))?);
        }
        PlanFormat::Table => {
            let mut interner = Interner::default();
            let flat: Vec<_> = spec
                .runs
                .iter()
                .map(|r| interner.flatten(&serde_json::to_string(&r.config)?))
                .collect::<Result<_, _>>()?;
            let diff = differing(&flat.iter().collect::<Vec<_>>());
            let mut headers = vec!["id".to_owned(), "name".to_owned()];
            headers.extend(column_names(&diff));
            headers.push("trainable here".into());
            let mut reasons: Vec<String> = Vec::new();
            let rows: Vec<Vec<String>> = spec
                .runs
                .iter()
                .zip(&flat)
                .map(|(r, f)| {
                    let mut row = vec![r.key.short().to_owned(), r.name.clone()];
                    row.extend(diff.iter().map(|p| f.get(p).unwrap_or("-").to_owned()));
                    row.push(match sweep::train::check(&r.config) {
                        Ok(()) => "yes".into(),
                        Err(e) => {
                            reasons.push(format!("  {}: {}", printable(&r.name), printable(&e.to_string())));
                            "no (see below)".into()
                        }
                    });
                    row
                })
                .collect();
            println!("sweep `{}`: {} run(s), best = {}", printable(&spec.name), spec.runs.len(), spec.metric);
            print!("{}", text_table(&headers, &rows));
            if !spec.duplicates.is_empty() {
                println!("dropped as duplicates of earlier runs: {}", printable(&spec.duplicates.join(", ")));
            }
            if !reasons.is_empty() {
                println!("cannot be trained by this build (submit would refuse the file):\n{}", reasons.join("\n"));
            }
        }
    }
    // Like `submit`, which would refuse the file: a script can tell.
    let trainable = spec.runs.iter().all(|r| sweep::train::check(&r.config).is_ok());
    Ok(if trainable { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
