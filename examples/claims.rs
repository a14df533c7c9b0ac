//! Claims under contention: W workers (threads, each with its own tokio
//! runtime and its own connection pool, as separate processes would have)
//! take runs from one queue of N until it is empty, each claim followed by the
//! run's end (claim + finish: no training). Prints one JSON line: claims per
//! second, and how many runs were handed out twice (must be 0) or never.
//!
//!   cargo run --release --example claims -- STORE [WORKERS] [RUNS]
//!
//! STORE is a SQLite file or a postgres:// URL (bench/claims.sh runs both,
//! PostgreSQL on a throwaway cluster).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use sweep::store::{Location, Status, Store};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let location: Location = args.get(1).expect("usage: claims STORE [WORKERS] [RUNS]").parse().expect("a store");
    let workers: usize = args.get(2).map_or(16, |s| s.parse().expect("a worker count"));
    let runs: usize = args.get(3).map_or(10_000, |s| s.parse().expect("a run count"));
    let home = tempfile::tempdir().expect("a temporary folder");
    let home = home.path().to_owned();

    // One sweep of `runs` runs (a grid over the learning rate).
    let lrs: Vec<String> = (1..=runs).map(|i| format!("{:e}", i as f64 * 1e-6)).collect();
    let text = format!(
        "name = \"claims\"\ndataset = \"synthetic\"\n[defaults]\nmodel = \"smallcnn\"\nepochs = 1\nbatch_size = 8\n\
         optimizer = {{ name = \"sgd\", lr = 0.1 }}\n[[grid]]\noptimizer.lr = [{}]\n",
        lrs.join(", ")
    );
    let spec = match sweep::spec::parse(Path::new("claims.toml"), &text) {
        Ok(s) => s,
        Err(e) => panic!("the sweep does not parse: {e}"),
    };
    let t = Instant::now();
    rt().block_on(async {
        let store = Store::connect(&home, &location).await.expect("the store opens");
        store.submit(&spec).await.expect("queued");
        store.close().await;
    });
    let submit_s = t.elapsed().as_secs_f64();

    let start = std::sync::Arc::new(std::sync::Barrier::new(workers + 1));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (home, location, start) = (home.clone(), location.clone(), start.clone());
            std::thread::spawn(move || {
                rt().block_on(async {
                    let store = Store::connect(&home, &location).await.expect("the store opens");
                    start.wait();
                    let mut mine = Vec::new();
                    let worker = format!("bench:{w}");
                    while let Some(run) = store.claim_next(&worker, "cpu").await.expect("a claim") {
                        store.finish(&run.lease(), Status::Done, None).await.expect("a finish");
                        mine.push(run.id);
                    }
                    store.close().await;
                    mine
                })
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    let claimed: Vec<Vec<i64>> = threads.into_iter().map(|t| t.join().expect("a worker")).collect();
    let seconds = t.elapsed().as_secs_f64();
    let mut times: HashMap<i64, usize> = HashMap::new();
    for id in claimed.iter().flatten() {
        *times.entry(*id).or_default() += 1;
    }
    let double = times.values().filter(|&&n| n > 1).count();
    let total: usize = claimed.iter().map(Vec::len).sum();
    let per_worker: Vec<usize> = claimed.iter().map(Vec::len).collect();
    println!(
        "{}",
        serde_json::json!({
            "store": location.backend().to_string(),
            "workers": workers,
            "runs": runs,
            "claims": total,
            "double_claims": double,
            "never_claimed": runs - times.len(),
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "claims_per_s": (total as f64 / seconds).round(),
            "submit_seconds": (submit_s * 1000.0).round() / 1000.0,
            "per_worker_min": per_worker.iter().min(),
            "per_worker_max": per_worker.iter().max(),
        })
    );
    assert_eq!(double, 0, "a run was claimed twice");
    assert_eq!(times.len(), runs, "a run was never claimed");
}
