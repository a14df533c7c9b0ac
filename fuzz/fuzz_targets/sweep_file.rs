//! A sweep file: parsed, validated and expanded; its errors formatted; every
//! accepted run's configuration keyed as the store keys it and within the
//! bounds every run can use (as tests/it/fuzz.rs checks its mutants).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use sweep::spec;

#[path = "../../tests/it/sweep_oracle.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Leading `--set KEY=VALUE[,VALUE...]` lines are overrides, as on the command line.
    let (overrides, text) = match oracle::split_sets(text) {
        Ok(split) => split,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = spec::has_tpe_search(text);
    let _ = spec::sampled_scales(text);
    let options = spec::Options { overrides, ..spec::Options::default() };
    match spec::parse_with(Path::new("fuzz.toml"), text, &options) {
        Ok(spec) => {
            for run in &spec.runs {
                let _ = spec::run_key(&run.config);
                if let Some(why) = oracle::out_of_bounds(&run.config) {
                    panic!("accepted a value no run can use: {why}");
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
