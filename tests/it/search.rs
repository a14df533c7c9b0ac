//! Search beyond the grid: `[[search]]` blocks (random, TPE) and ASHA across a
//! sweep's runs, from the sweep file through the worker to the records.

use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use sweep::record::EpochRecord;
use sweep::rng::{stream, Rng};
use sweep::search::{asha, tpe};
use sweep::spec;
use sweep::store::{Location, RunRow, Status, Store};
use sweep::worker::{self, WorkerOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

const HEAD: &str = r#"
name = "s"
dataset = { name = "synthetic", train_size = 48, test_size = 40 }
seed = 1
[defaults]
model = "smallcnn"
batch_size = 16
epochs = 2
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }
"#;

fn parse(text: &str) -> Result<spec::SweepSpec, spec::SpecErrors> {
    spec::parse(Path::new("s.toml"), text)
}

#[test]
fn random_search_is_deterministic_from_its_seed() {
    let text = format!(
        "{HEAD}\n[[search]]\nname = \"lr\"\nmethod = \"random\"\ncount = 12\nseed = 7\n\
         \"optimizer.lr\" = {{ log_uniform = [1e-4, 1e-1] }}\nbatch_size = {{ int = [8, 64], log = true }}\n\
         \"optimizer.momentum\" = {{ uniform = [0.5, 0.99] }}\nhead = {{ choice = [\"linear\", {{ hidden = [32], dropout = [0.1] }}] }}\n"
    );
    let a = parse(&text).unwrap();
    let b = parse(&text).unwrap();
    assert_eq!(a.runs.len(), 12);
    let keys = |s: &spec::SweepSpec| s.runs.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b), "the same file gives the same runs");
    assert!(a.runs[0].name.starts_with("lr-01:lr="), "{}", a.runs[0].name);
    for r in &a.runs {
        let c = &r.config;
        assert!((1e-4..=1e-1).contains(&c.optimizer.lr()), "{}", c.optimizer.lr());
        assert!((8..=64).contains(&c.batch_size));
    }
    let heads: std::collections::BTreeSet<String> =
        a.runs.iter().map(|r| serde_json::to_string(&r.config.head).unwrap()).collect();
    assert_eq!(heads.len(), 2, "both choices drawn in 12 trials: {heads:?}");
    // Another seed, other runs; the search's seed defaults to the file's.
    let other = parse(&text.replace("seed = 7", "seed = 8")).unwrap();
    assert!(keys(&other).iter().all(|k| !keys(&a).contains(k)));
    assert_eq!(a.searches[0].count, 12);
}

/// A random search's trials are recorded as TPE's are (`trials`, method
/// `random`), so that `show` says how each was sampled and the report plots
/// the search's history; submitting the file again records nothing twice.
#[test]
fn a_random_searchs_trials_are_recorded_and_plotted() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{HEAD}\n[[search]]\nname = \"rnd\"\nmethod = \"random\"\ncount = 3\nepochs = 1\n\
             \"optimizer.lr\" = {{ log_uniform = [1e-3, 0.3] }}\n"
        );
        let store = Store::open(dir.path()).await.unwrap();
        let s = parse(&text).unwrap();
        store.submit(&s).await.unwrap();
        assert_eq!(drain(&store).await.runs.len(), 3);
        store.submit(&s).await.unwrap();
        let rows = store.runs(None).await.unwrap();
        for (i, r) in rows.iter().enumerate() {
            let (search, number, method, based_on) = store.trial_of(r.id).await.unwrap().unwrap();
            assert_eq!((search, number, method.as_str(), based_on), (0, i as i64, "random", None), "{}", r.name);
        }
        let c = sweep::report::Comparison::load(&store, &[], true).await.unwrap();
        let h = sweep::report::history::History::of(&c).unwrap();
        assert_eq!(h.searches.len(), 1);
        assert_eq!(h.searches[0].label, "s / rnd");
        assert_eq!(
            h.searches[0].points.iter().map(|p| (p.number, p.proposed)).collect::<Vec<_>>(),
            [(1, false), (2, false), (3, false)]
        );
        let fig = sweep::report::charts::figures(&c, true).into_iter().find(|f| f.name == "history").unwrap();
        assert_eq!(fig.svg.matches("drawn at random): ").count(), 3);
        // The learning rate's axis is a log one because the search draws it so.
        assert_eq!(c.sampled_scales, [("optimizer.lr".to_owned(), true)].into());
        let rel = sweep::report::param_charts::Relation::of(&c).unwrap();
        let lr = rel.axes.iter().find(|a| a.path == "optimizer.lr").unwrap();
        assert!(matches!(lr.scale, sweep::report::param_charts::Scale::Numeric { log: true, .. }), "{:?}", lr.scale);
        store.close().await;
    });
}

/// Which stored sweeps a worker reads for TPE proposals: those with a TPE
/// search however TOML writes its method, not those with random ones only.
#[test]
fn a_tpe_search_is_found_without_expanding_the_file() {
    let with = |method: &str| format!("{HEAD}\n[[search]]\nmethod = {method}\ncount = 3\n");
    assert!(spec::has_tpe_search(&with("\"tpe\"")));
    assert!(spec::has_tpe_search(&with("'tpe'")));
    assert!(spec::has_tpe_search(&with("\"\\u0074pe\"")));
    assert!(spec::has_tpe_search(&format!("{}\n[[search]]\nmethod = \"tpe\"\n", with("\"random\""))));
    assert!(!spec::has_tpe_search(&with("\"random\"")));
    assert!(!spec::has_tpe_search(HEAD));
    assert!(spec::has_tpe_search("not = [toml"), "the full parse reports a broken file");
}

/// The scales a report's axes take from the searches: log where a search
/// draws on a log scale, linear where it draws uniformly, nothing for a
/// choice, a grid or a path two searches draw differently.
#[test]
fn the_searches_declare_their_parameters_scales() {
    let text = format!(
        r#"{HEAD}
[[search]]
method = "random"
count = 2
"optimizer.lr" = {{ log_uniform = [1e-3, 0.3] }}
optimizer.momentum = {{ uniform = [0.8, 0.99] }}
batch_size = {{ int = [8, 64], log = true }}
epochs = {{ choice = [1, 2] }}
[[search]]
method = "tpe"
count = 2
optimizer = {{ weight_decay = {{ uniform = [1e-5, 1e-2], log = true }} }}
batch_size = {{ int = [8, 64] }}
"#
    );
    let got = spec::sampled_scales(&text);
    let want: std::collections::BTreeMap<String, bool> =
        [("optimizer.lr", true), ("optimizer.momentum", false), ("optimizer.weight_decay", true)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    assert_eq!(got, want);
    assert!(parse(&text).is_ok(), "{:?}", parse(&text).err());
    assert!(spec::sampled_scales(HEAD).is_empty());
    assert!(spec::sampled_scales("not = [toml").is_empty());
}

#[test]
fn exclude_applies_to_sampled_trials() {
    let text = format!(
        "{HEAD}\n[[search]]\nmethod = \"random\"\ncount = 10\nbatch_size = {{ choice = [8, 16, 32] }}\n\
         \"optimizer.lr\" = {{ uniform = [0.01, 0.1] }}\nexclude = [{{ batch_size = 16 }}]\n"
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.runs.len(), 10);
    assert!(s.runs.iter().all(|r| r.config.batch_size != 16));
    assert!(s.runs.iter().any(|r| r.config.batch_size == 8) && s.runs.iter().any(|r| r.config.batch_size == 32));
}

#[test]
fn bad_searches_are_refused_at_their_lines_in_one_pass() {
    let text = format!(
        "{HEAD}\n[[search]]\nmethod = \"random\"\ncount = 3\n\
         \"optimizer.lr\" = {{ log_uniform = [0, 0.1] }}\n\
         batch_size = {{ uniform = [8, 64] }}\n\
         epochs = {{ int = [5, 2] }}\n\
         head = {{ choice = [] }}\n\
         \"optimizer.momentum\" = {{ uniform = [0.9, 0.1] }}\n\
         [[search]]\nmethod = \"bayes\"\ncount = 0\n\"optimizer.lr\" = {{ uniform = [0.1, 0.2] }}\n"
    );
    let errs = parse(&text).unwrap_err().0;
    let at = |line: usize, says: &str| {
        assert!(
            errs.iter().any(|e| e.line == line && e.message.contains(says)),
            "no error at line {line} saying {says:?}: {errs:#?}"
        );
    };
    let base = HEAD.lines().count() + 2;
    at(base + 3, "positive lower bound");
    at(base + 4, "expected usize");
    assert_eq!(errs.iter().filter(|e| e.line == base + 4).count(), 1, "one message per key");
    at(base + 5, "above the upper bound");
    at(base + 6, "at least one value");
    at(base + 7, "below the upper bound");
    at(base + 9, "unknown search method");
    at(base + 10, "`count` must be an integer of at least 1");
    let text =
        HEAD.replacen("[defaults]", "early_terminate = { method = \"asha\", reduction_factor = 1 }\n[defaults]", 1);
    let errs = parse(&text).unwrap_err().0;
    assert!(errs.iter().any(|e| e.key.as_deref() == Some("early_terminate.reduction_factor")), "{errs:?}");
}

#[test]
fn tpe_expands_its_start_up_trials_and_refuses_overrides() {
    let text = format!(
        "{HEAD}\n[[search]]\nmethod = \"tpe\"\ncount = 30\n\"optimizer.lr\" = {{ log_uniform = [1e-4, 1e-1] }}\n"
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.runs.len(), 10, "Optuna's 10 start-up trials");
    assert_eq!((s.searches[0].count, s.searches[0].startup), (30, 10));
    assert!(s.runs.iter().enumerate().all(|(i, r)| r.trial.as_ref().is_some_and(|t| t.number == i as u64)));
    let options = spec::Options { overrides: vec!["epochs=1".parse().unwrap()], ..spec::Options::default() };
    let errs = spec::parse_with(Path::new("s.toml"), &text, &options).unwrap_err();
    assert!(errs.to_string().contains("--set cannot change a TPE search"), "{errs}");
}

fn opts() -> WorkerOptions {
    WorkerOptions { device: spec::DeviceChoice::Cpu, exit_when_empty: true, ..WorkerOptions::default() }
}

async fn drain(store: &Store) -> worker::WorkerReport {
    worker::work(store, &opts(), Arc::new(AtomicBool::new(false))).await.unwrap()
}

fn by_lr(rows: &[RunRow], lr: f64) -> &RunRow {
    rows.iter().find(|r| serde_json::from_str::<spec::RunConfig>(&r.config_json).unwrap().optimizer.lr() == lr).unwrap()
}

const LRS: [f64; 4] = [0.08, 0.03, 0.01, 0.002];

fn runs_file(lrs: &[f64], asha: bool) -> String {
    let mut text = HEAD.to_owned();
    if asha {
        text = text.replacen(
            "[defaults]",
            "metric = \"test_loss\"\nearly_terminate = { method = \"asha\", min_epochs = 1, reduction_factor = 2 }\n[defaults]",
            1,
        );
    } else {
        text = text.replacen("[defaults]", "metric = \"test_loss\"\n[defaults]", 1);
    }
    for lr in lrs {
        let _ =
            writeln!(text, "[[run]]\nname = \"lr{lr}\"\noptimizer = {{ name = \"sgd\", lr = {lr}, momentum = 0.9 }}");
    }
    text
}

/// ASHA (η = 2, rung at epoch 1 of 2) on test loss. First the four runs
/// without ASHA, for their numbers; then, in another home, the best two of
/// epoch 1 are submitted first: the first goes on, the second stops at the
/// rung. Then the two worst arrive: each stops, and with four runs at the rung
/// the top two are the first two: the stopped one is promoted, resumes from
/// its rung checkpoint and ends with exactly the numbers of the run without
/// ASHA. Every decision agrees with a replay of the recorded arrivals.
#[test]
fn asha_stops_promotes_and_resumes_exactly() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("reference");
        let store = Store::open(&reference).await.unwrap();
        store.submit(&parse(&runs_file(&LRS, false)).unwrap()).await.unwrap();
        drain(&store).await;
        let rows = store.runs(None).await.unwrap();
        let mut full: Vec<(f64, Vec<EpochRecord>)> = Vec::new();
        for lr in LRS {
            full.push((lr, store.epochs(by_lr(&rows, lr).id).await.unwrap()));
        }
        store.close().await;
        // Best first by epoch 1's test loss.
        full.sort_by(|a, b| a.1[0].test_loss.total_cmp(&b.1[0].test_loss));
        let order: Vec<f64> = full.iter().map(|f| f.0).collect();

        for (i, loc) in crate::pg::locations(dir.path()).await.into_iter().enumerate() {
            let home = dir.path().join(format!("asha{i}"));
            let loc = match loc {
                Location::Sqlite(_) => Location::default_in(&home),
                pg @ Location::Postgres(_) => pg,
            };
            let store = Store::connect(&home, &loc).await.unwrap();
            store.submit(&parse(&runs_file(&order[..2], true)).unwrap()).await.unwrap();
            drain(&store).await;
            let rows = store.runs(None).await.unwrap();
            let (best, second) = (by_lr(&rows, order[0]), by_lr(&rows, order[1]));
            assert_eq!((best.epochs_done, best.rung), (2, Some(1)), "the first arrival goes on");
            assert_eq!((second.status, second.epochs_done), (Status::Done, 1));
            assert_eq!(second.note.as_deref(), Some("stopped by ASHA after epoch 1 (rank 2 of 2 at this rung)"));

            store.submit(&parse(&runs_file(&order, true)).unwrap()).await.unwrap();
            let report = drain(&store).await;
            let rows = store.runs(None).await.unwrap();
            let second = by_lr(&rows, order[1]);
            assert_eq!((second.status, second.epochs_done, second.attempts), (Status::Done, 2, 2), "{report:?}");
            assert_eq!(second.note.as_deref(), Some("promoted by ASHA at epoch 1 (now rank 2 of 4 at this rung)"));
            let resumed = store.epochs(second.id).await.unwrap();
            for (a, b) in resumed.iter().zip(&full[1].1) {
                assert_eq!(
                    (a.epoch, a.train_loss, a.test_loss, a.test_acc),
                    (b.epoch, b.train_loss, b.test_loss, b.test_acc)
                );
            }
            assert_eq!(resumed.len(), 2);
            for lr in &order[2..] {
                let r = by_lr(&rows, *lr);
                assert_eq!((r.epochs_done, r.rung), (1, Some(1)));
                assert!(r.note.as_deref().unwrap().starts_with("stopped by ASHA after epoch 1"));
                // Its checkpoint at the rung is kept, for a promotion.
                assert!(store
                    .checkpoints(r.id)
                    .await
                    .unwrap()
                    .iter()
                    .any(|c| c.epoch == 1 && c.kind.as_str() == "latest"));
            }
            // Replay: the decisions follow from the arrivals alone.
            let ctx = store.asha_context(second.id).await.unwrap().unwrap();
            let arrivals = store.rung_arrivals(&ctx, 1).await.unwrap();
            assert_eq!(
                arrivals.iter().map(|a| a.run).collect::<Vec<_>>(),
                order.iter().map(|lr| by_lr(&rows, *lr).id).collect::<Vec<_>>()
            );
            let rules = ctx.settings.asha();
            let went_on: Vec<bool> = arrivals
                .iter()
                .map(|a| {
                    let s = rules
                        .standing(&arrivals[..=arrivals.iter().position(|x| x.run == a.run).unwrap()], a.run)
                        .unwrap();
                    s.continues()
                })
                .collect();
            assert_eq!(went_on, vec![true, false, false, false]);
            assert_eq!(
                rules
                    .promotions(&arrivals, &[arrivals[1].run, arrivals[2].run, arrivals[3].run])
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>(),
                vec![arrivals[1].run]
            );
            assert_eq!(asha::STOP_NOTE, "stopped by ASHA");
            // Epochs recorded in one millisecond keep the order of their
            // (serialised) writes, as the decisions saw them, not their run
            // ids: one time for all the rung's arrivals, and the first
            // arrival's row written again (now the last write). SQLite's
            // rowid and PostgreSQL's `written` both follow the inserts.
            {
                use sqlx::Connection;
                let url = match &loc {
                    Location::Sqlite(path) => format!("sqlite://{}", path.display()),
                    Location::Postgres(url) => url.clone(),
                };
                let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
                let first = arrivals[0].run;
                let mut moves = vec![
                    "UPDATE epochs SET recorded_at = '2026-01-01T00:00:00.000Z' WHERE epoch = 1".to_string(),
                    format!("CREATE TEMP TABLE moved AS SELECT * FROM epochs WHERE run_id = {first} AND epoch = 1"),
                ];
                if matches!(loc, Location::Postgres(_)) {
                    moves.push("ALTER TABLE moved DROP COLUMN written".into()); // drawn again on insert
                }
                moves.push(format!("DELETE FROM epochs WHERE run_id = {first} AND epoch = 1"));
                moves.push("INSERT INTO epochs SELECT * FROM moved".into());
                for q in moves {
                    sqlx::query(&q).execute(&mut conn).await.unwrap();
                }
                conn.close().await.unwrap();
                let tied = store.rung_arrivals(&ctx, 1).await.unwrap();
                let mut written = arrivals.iter().map(|a| a.run).collect::<Vec<_>>();
                written.rotate_left(1);
                assert_eq!(tied.iter().map(|a| a.run).collect::<Vec<_>>(), written, "{loc:?}");
            }
            // The report: the rung column, and the metric by epoch with the stopped runs marked ×.
            let c = sweep::report::Comparison::load(&store, &[], true).await.unwrap();
            let table = sweep::report::render::markdown(&c, &[]);
            assert!(table.contains("rung"), "{table}");
            let figs = sweep::report::charts::figures(&c, true);
            let asha_fig = figs.iter().find(|f| f.name == "asha").expect("an ASHA figure");
            assert!(asha_fig.title.contains("rungs at epochs 1"), "{}", asha_fig.title);
            assert_eq!(
                asha_fig.svg.matches("stopped by ASHA after epoch 1").count(),
                2,
                "the two stopped runs are marked"
            );
            // A copy keeps each run's rung and where ASHA stopped it.
            let copy_home = tempfile::tempdir().unwrap();
            let target = Store::open(copy_home.path()).await.unwrap();
            store.copy_into(&target).await.unwrap();
            let copied = target.runs(None).await.unwrap();
            assert_eq!(
                copied.iter().map(|r| r.rung).collect::<Vec<_>>(),
                rows.iter().map(|r| r.rung).collect::<Vec<_>>()
            );
            let target_ctx = target.asha_context(copied[0].id).await.unwrap().unwrap();
            let stopped = target.stopped_at(&target_ctx, 1).await.unwrap();
            assert_eq!(stopped.len(), 2, "the two worst are still stopped at the rung");
            // ... and the rung's arrivals in the source's order, its same-millisecond ties included.
            let key_of = |runs: &[sweep::store::RunRow], id: i64| runs.iter().find(|r| r.id == id).unwrap().key.clone();
            let source_order: Vec<String> =
                store.rung_arrivals(&ctx, 1).await.unwrap().iter().map(|a| key_of(&rows, a.run)).collect();
            let target_order: Vec<String> =
                target.rung_arrivals(&target_ctx, 1).await.unwrap().iter().map(|a| key_of(&copied, a.run)).collect();
            assert_eq!(target_order, source_order, "{loc:?}");
            target.close().await;
            store.close().await;
        }
    });
}

/// A TPE search through the worker: the start-up trials, then proposals,
/// each recorded with the trials it was based on, and replayable.
#[test]
fn tpe_proposes_online_and_its_proposals_replay() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for loc in crate::pg::locations(dir.path()).await {
            let text = format!(
                "{HEAD}\n[[search]]\nmethod = \"tpe\"\ncount = 6\nstartup = 3\nseed = 5\nepochs = 1\n\
                 \"optimizer.lr\" = {{ log_uniform = [1e-3, 0.3] }}\nbatch_size = {{ choice = [8, 16] }}\n"
            );
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            let s = parse(&text).unwrap();
            store.submit(&s).await.unwrap();
            let report = drain(&store).await;
            assert_eq!(report.runs.len(), 6, "3 start-up trials and 3 proposals");
            let rows = store.runs(None).await.unwrap();
            assert_eq!(rows.len(), 6);
            assert!(rows.iter().all(|r| r.status == Status::Done));
            let mut seen = std::collections::HashSet::new();
            assert!(rows.iter().all(|r| seen.insert(r.key.clone())), "no duplicate trial");
            // Replay the 4th trial (number 3): TPE from trials 0-2 with the seed's stream.
            let mut trials = Vec::new();
            for r in &rows[..3] {
                let (search, number, method, based_on) = store.trial_of(r.id).await.unwrap().unwrap();
                assert_eq!((search, method.as_str(), based_on), (0, "random", None));
                let c: spec::RunConfig = serde_json::from_str(&r.config_json).unwrap();
                let choice = if c.batch_size == 8 { 0.0 } else { 1.0 };
                trials.push(tpe::Trial {
                    number: number as u64,
                    params: vec![c.optimizer.lr(), choice],
                    state: tpe::State::Complete(r.best_metric.unwrap()),
                });
            }
            let space: Vec<_> = s.searches[0].params.iter().map(|(_, d)| d.clone()).collect();
            let settings = tpe::Settings { n_startup_trials: 3, ..tpe::Settings::default() };
            let p = tpe::propose(&space, &trials, &mut Rng::derive(&[stream::TPE, 5, 0, 3, 0]), &settings);
            let fourth = &rows[3];
            let (_, number, method, based_on) = store.trial_of(fourth.id).await.unwrap().unwrap();
            assert_eq!((number, method.as_str()), (3, "tpe"));
            let c: spec::RunConfig = serde_json::from_str(&fourth.config_json).unwrap();
            assert_eq!(c.optimizer.lr(), p.params[0], "the recorded proposal is what TPE gives again");
            assert_eq!(c.batch_size, if p.params[1] == 0.0 { 8 } else { 16 });
            let based: serde_json::Value = serde_json::from_str(&based_on.unwrap()).unwrap();
            assert_eq!(based["below"].as_array().unwrap().len(), 1, "γ(3) = 1");
            assert_eq!(based["above"].as_array().unwrap().len(), 2);
            // The report's search history: six trials, the three start-up ones
            // hollow, the proposals filled, the best so far a step line.
            let c = sweep::report::Comparison::load(&store, &[], true).await.unwrap();
            let trials: Vec<_> = c.runs.iter().map(|r| r.trial.clone().unwrap()).collect();
            assert_eq!(trials.iter().map(|t| t.number).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
            let h = sweep::report::history::History::of(&c).unwrap();
            assert_eq!(h.searches.len(), 1);
            assert_eq!(h.searches[0].label, format!("{} / search1", c.runs[0].row.sweep));
            let proposed: Vec<bool> = h.searches[0].points.iter().map(|p| p.proposed).collect();
            assert_eq!(proposed, [false, false, false, true, true, true]);
            let best = h.best_so_far(&h.searches[0]);
            let top = rows.iter().map(|r| r.best_metric.unwrap()).fold(f64::MIN, f64::max);
            assert_eq!(best.last(), Some(&top));
            assert!(best.windows(2).all(|w| w[1] >= w[0]), "{best:?}");
            // `report --format json`: each run's trial, numbered from 1 as `show` and the names
            let j: serde_json::Value = serde_json::from_str(&sweep::report::json(&c)).unwrap();
            assert_eq!(j["runs"][3]["trial"], serde_json::json!({ "search": 0, "trial": 4, "method": "tpe" }));
            assert_eq!(j["runs"][0]["trial"]["method"], "random");
            let figs = sweep::report::charts::figures(&c, true);
            let fig = figs.iter().find(|f| f.name == "history").expect("a search history figure");
            assert_eq!(fig.svg.matches("<circle").count(), 6);
            assert_eq!(fig.svg.matches("drawn at random): ").count(), 3);
            // Submitting again: the start-up trials are done, nothing more is proposed.
            let again = store.submit(&s).await.unwrap();
            assert!(again.iter().all(|o| *o == sweep::store::SubmitOutcome::AlreadyDone));
            assert!(drain(&store).await.runs.is_empty());
            // `sweep store copy` carries the trials and their records along.
            let copy_home = tempfile::tempdir().unwrap();
            let target = Store::open(copy_home.path()).await.unwrap();
            store.copy_into(&target).await.unwrap();
            let copied = target.runs(None).await.unwrap();
            let fourth_copy = copied.iter().find(|r| r.key == fourth.key).unwrap();
            let (_, n, m, b) = target.trial_of(fourth_copy.id).await.unwrap().unwrap();
            assert_eq!((n, m.as_str(), b.is_some()), (3, "tpe", true));
            target.close().await;
            store.close().await;
        }
    });
}
