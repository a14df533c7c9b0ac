//! `results`, `show` and `report` on a real (tiny) sweep: filters, sorting,
//! grouping, the diff-only view, every export format, hostile names, and the
//! SQL views.

use crate::cli::{run, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};

const SWEEP: &str = r#"
name = "rep"
description = "grid <img src=x onerror=alert(1)> & more"
dataset = { name = "synthetic", train_size = 48, test_size = 40 }
metric = "test_acc"
seed = 1
device = "cpu"

[defaults]
model = "smallcnn"
batch_size = 16
epochs = 2
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }

[[grid]]
optimizer.lr = [0.02, 0.05]
repeats = 2

[[run]]
name = "<script>alert(1)</script>"
optimizer = { name = "adam", lr = 1e-3 }
reference = { test_acc = 50.0, test_loss = 1.5, source = "made up <b>" }
"#;

/// Trains the sweep once per test binary run; returns (dir, home).
fn trained() -> &'static (tempfile::TempDir, PathBuf) {
    static ONCE: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let f = crate::write_sweep(dir.path(), "rep.toml", SWEEP);
        assert!(run(&home, &["-q", "submit", f.to_str().unwrap()]).status.success());
        (dir, home)
    })
}

fn json(home: &Path, args: &[&str]) -> Value {
    let out = run(home, args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// RFC 4180 fields: quoted fields may hold commas, quotes doubled.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            let mut fields = vec![String::new()];
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        chars.next();
                        fields.last_mut().unwrap().push('"');
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(String::new()),
                    (c, _) => fields.last_mut().unwrap().push(c),
                }
            }
            fields
        })
        .collect()
}

fn rows(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap()
}

#[test]
fn results_filter_sort_group_and_show_only_what_differs() {
    let (_, home) = trained();
    let all = json(home, &["results", "--format", "json"]);
    assert_eq!(rows(&all).len(), 5);
    // Diff-only: lr, seed and the optimizer differ; the model does not.
    let keys: Vec<&String> = rows(&all)[0].as_object().unwrap().keys().collect();
    for k in [
        "id",
        "name",
        "lr",
        "seed",
        "optimizer",
        "status",
        "epochs_done",
        "epochs_total",
        "best_test_acc",
        "test_acc",
        "seconds",
        "img_per_s",
    ] {
        assert!(keys.iter().any(|x| *x == k), "{k} missing from {keys:?}");
    }
    assert!(!keys.iter().any(|x| *x == "model"), "{keys:?}");
    let every = json(home, &["results", "--all-params", "--format", "json"]);
    assert_eq!(rows(&every)[0]["model"], "smallcnn");

    // Filters.
    let lr = json(home, &["results", "--where", "lr=0.05", "--format", "json"]);
    assert_eq!(rows(&lr).len(), 2);
    // Among the runs shown, lr no longer differs: the diff-only view drops it.
    assert!(rows(&lr)[0].get("lr").is_none() && rows(&lr)[0].get("seed").is_some(), "{lr}");
    let lr = json(home, &["results", "--where", "lr=0.05", "--columns", "name,lr,test_acc", "--format", "json"]);
    assert!(rows(&lr).iter().all(|r| r["lr"] == 0.05), "{lr}");
    let two = json(
        home,
        &[
            "results",
            "--where",
            "optimizer.lr<0.04",
            "--where",
            "seed=2",
            "--columns",
            "name,lr,seed",
            "--format",
            "json",
        ],
    );
    assert_eq!(rows(&two).len(), 1);
    assert_eq!((rows(&two)[0]["lr"].as_f64(), rows(&two)[0]["seed"].as_i64()), (Some(0.02), Some(2)));
    let adam = json(home, &["results", "--where", "optimizer=adam", "--status", "done", "--format", "json"]);
    assert_eq!(rows(&adam).len(), 1);
    assert_eq!(rows(&adam)[0]["name"], "<script>alert(1)</script>");
    assert_eq!(rows(&json(home, &["results", "--where", "name~lr=0.0", "--format", "json"])).len(), 4);
    assert!(rows(&json(home, &["results", "--status", "failed", "--format", "json"])).is_empty());
    let bad = run(home, &["results", "--where", "colour=red"]);
    assert!(!bad.status.success() && stderr(&bad).contains("unknown column or parameter `colour`"), "{}", stderr(&bad));

    // Sorting: descending by the best metric, ties broken by name.
    let sorted = json(home, &["results", "--sort", "-best,name", "--format", "json"]);
    let best: Vec<f64> = rows(&sorted).iter().map(|r| r["best_test_acc"].as_f64().unwrap()).collect();
    assert!(best.windows(2).all(|w| w[0] >= w[1]), "{best:?}");
    let by_lr = json(home, &["results", "--sort", "lr,-seed", "--format", "json"]);
    let order: Vec<(f64, i64)> =
        rows(&by_lr).iter().map(|r| (r["lr"].as_f64().unwrap(), r["seed"].as_i64().unwrap())).collect();
    assert_eq!(order, vec![(0.001, 1), (0.02, 2), (0.02, 1), (0.05, 2), (0.05, 1)]);
    // --limit keeps the first rows after sorting: the best run, the first groups.
    let top = json(home, &["results", "--sort", "-best,name", "--limit", "2", "--format", "json"]);
    assert_eq!(rows(&top), &rows(&sorted)[..2]);
    let groups = json(home, &["results", "--group-by", "lr", "--sort", "lr", "--limit", "1", "--format", "json"]);
    assert_eq!(rows(&groups).len(), 1);
    assert_eq!(rows(&groups)[0]["lr"], 0.001);

    // Grouping: mean, std and count over the seeds.
    let g = json(home, &["results", "--group-by", "lr", "--sort", "lr", "--format", "json"]);
    assert_eq!(rows(&g).len(), 3);
    let g05 = rows(&g).iter().find(|r| r["lr"] == 0.05).unwrap();
    assert_eq!(g05["n"], 2);
    let accs: Vec<f64> = rows(&lr).iter().map(|r| r["test_acc"].as_f64().unwrap()).collect();
    let mean = f64::midpoint(accs[0], accs[1]);
    let std = ((accs[0] - mean).powi(2) + (accs[1] - mean).powi(2)).sqrt();
    assert!((g05["test_acc"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9, "{g05}");
    assert!((g05["test_acc"]["std"].as_f64().unwrap() - std).abs() < 1e-9, "{g05}");
    let table = stdout(&run(home, &["results", "--group-by", "lr"]));
    let head: Vec<&str> = table.lines().next().unwrap().split_whitespace().take(3).collect();
    assert_eq!(head, ["lr", "n", "best_test_acc"], "{table}");
    assert!(table.contains(" ± "), "{table}");

    // Chosen columns, CSV that parses back.
    let csv = parse_csv(&stdout(&run(home, &["results", "--columns", "name,lr,test_acc", "--format", "csv"])));
    assert_eq!(csv[0], ["name", "lr", "test_acc"]);
    assert_eq!(csv.len(), 6);
    for l in &csv[1..] {
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(l[2].parse::<f64>().is_ok(), "{l:?}");
    }
    assert!(csv.iter().any(|l| l[0] == "lr=0.05,seed=2"), "a quoted name with a comma reads back");

    // The device and the peak memory, only when named: what `show` says of each run.
    let hw = json(home, &["results", "--columns", "id,device,memory", "--where", "status=done", "--format", "json"]);
    assert!(!rows(&hw).is_empty(), "{hw}");
    for r in rows(&hw) {
        let shown = json(home, &["show", r["id"].as_str().unwrap(), "--format", "json"]);
        assert_eq!(r["device"], shown["device"], "{r}");
        assert!(r["device"].as_str().unwrap().starts_with("cpu ("), "{r}");
        let mib = shown["peak_memory_bytes"].as_f64().unwrap() / 1048576.0;
        assert!(mib > 1.0 && (r["memory_mib"].as_f64().unwrap() - mib).abs() <= 0.5, "{r} {mib}");
    }
    assert!(rows(&json(home, &["results", "--format", "json"]))[0].get("memory_mib").is_none());
}

#[test]
fn show_prints_one_run_by_id_or_name() {
    let (_, home) = trained();
    let all = json(home, &["results", "--format", "json"]);
    let id = rows(&all)[0]["id"].as_str().unwrap().to_owned();
    let name = rows(&all)[0]["name"].as_str().unwrap().to_owned();
    let by_id = stdout(&run(home, &["show", &id[..6]]));
    assert!(by_id.contains(&format!("run {id} (rep/{name})")), "{by_id}");
    assert!(by_id.contains("\"lr\": ") && by_id.contains("epoch") && by_id.contains("checkpoint best"), "{by_id}");
    let by_name = json(home, &["show", &format!("rep/{name}"), "--format", "json"]);
    assert_eq!(by_name["id"], id.as_str());
    assert_eq!(by_name["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(by_name["classes"][0], "disk");
    let none = run(home, &["show", "nope"]);
    assert!(!none.status.success() && stderr(&none).contains("no run `nope`"));
}

/// Tags balance (void elements aside) and nothing loads from elsewhere.
fn assert_well_formed_and_offline(html: &str) {
    let void = ["meta", "br", "hr", "img", "input", "link", "col", "wbr"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').expect("unclosed tag");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name: String = tag.trim_start_matches('/').chars().take_while(char::is_ascii_alphanumeric).collect();
        for attr in [" src=", " href=", " srcset=", " xlink:href=", " action=", " on"] {
            assert!(!tag.contains(attr), "tag <{tag}> has `{attr}`");
        }
        assert!(!["script", "img", "link", "iframe", "object", "embed"].contains(&name.as_str()), "<{name}>");
        if tag.starts_with('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "closing </{name}>");
        } else if !self_closing && !void.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    for bad in ["http://", "https://", "url(", "@import"] {
        assert!(!html.contains(bad), "the report contains `{bad}`");
    }
}

#[test]
fn every_report_format_exports_and_escapes() {
    let (dir, home) = trained();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    let html_path = out.join("r.html");
    assert!(run(home, &["report", "--format", "html", "-o", html_path.to_str().unwrap()]).status.success());
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_well_formed_and_offline(&html);
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; more"));
    for part in [
        "Summary",
        "Measured against reference",
        "Learning curves",
        "Best metric per run",
        "Confusion matrix",
        "Per-class test accuracy",
        "<svg",
        "<polyline",
    ] {
        assert!(html.contains(part), "{part} missing");
    }
    assert!(html.contains("★"), "the best run is marked");

    let md_path = out.join("r.md");
    assert!(run(home, &["report", "--sweep", "rep", "-o", md_path.to_str().unwrap()]).status.success());
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(md.contains("![Test accuracy (%)](r-test-acc.svg)"), "{md}");
    assert!(md.contains("&lt;script&gt;"), "{md}");
    for f in [
        "legend",
        "train-loss",
        "test-loss",
        "train-acc",
        "test-acc",
        "lr",
        "parallel",
        "slices",
        "best",
        "classes",
        "confusion",
    ] {
        let svg = std::fs::read_to_string(out.join(format!("r-{f}.svg"))).unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.ends_with("</svg>"), "{f}");
        assert!(!svg.contains("<script"), "{f}");
    }

    // The parameters against the metric: a line per run through an axis per
    // differing parameter (lr, optimizer, seed, ...) and the metric's; a dot
    // per run in each parameter's panel.
    assert!(html.contains("<h2>Parameters and test_acc</h2>"), "the section of the two figures");
    assert!(md.contains("](r-parallel.svg)") && md.contains("](r-slices.svg)"), "{md}");
    let parallel = std::fs::read_to_string(out.join("r-parallel.svg")).unwrap();
    assert_eq!(parallel.matches("<polyline").count(), 5, "{parallel}");
    assert!(parallel.contains("&lt;script&gt;alert(1)&lt;/script&gt;: test_acc = "), "{parallel}");
    for axis in [">lr<", ">optimizer<", ">seed<", ">test_acc<", ">adam<", ">sgd<", ">0.02<"] {
        assert!(parallel.contains(axis), "{axis} missing from the parallel coordinates");
    }
    // adam's betas and sgd's momentum split the runs as the optimizer's name
    // does: no axis of their own
    for field in [">momentum<", ">betas<", ">amsgrad<"] {
        assert!(!parallel.contains(field), "{field} repeats the optimizer axis");
    }
    let slices = std::fs::read_to_string(out.join("r-slices.svg")).unwrap();
    assert_eq!(slices.matches("<circle").count() % 5, 0, "{slices}");
    assert!(slices.matches("<circle").count() >= 15, "five runs in at least three panels: {slices}");

    let csv = parse_csv(&stdout(&run(home, &["report", "--format", "csv", "--where", "lr=0.05"])));
    assert_eq!(csv.len(), 1 + 2 * 2, "two runs x two epochs: {csv:?}");
    assert!(csv.iter().all(|l| l.len() == csv[0].len()), "{csv:?}");
    assert_eq!(csv[1][2], "lr=0.05,seed=1");
    let j: Value = serde_json::from_str(&stdout(&run(home, &["report", "--format", "json"]))).unwrap();
    assert_eq!(j["runs"].as_array().unwrap().len(), 5);
    assert_eq!(j["runs"][0]["epochs"].as_array().unwrap().len(), 2);

    // Which parameters matter: the learning rate's main effect is the share of
    // the best metric's variance that its per-value means explain, computed
    // here again from `results` (whose two decimals are exact: 40 test images).
    assert!(html.contains("<h2>Which parameters matter</h2>") && md.contains("## Which parameters matter"));
    let imp = &j["importance"];
    assert_eq!((imp["metric"].as_str(), imp["runs"].as_u64()), (Some("test_acc"), Some(5)), "{imp}");
    let effects: Vec<f64> =
        imp["params"].as_array().unwrap().iter().map(|p| p["main_effect"].as_f64().unwrap()).collect();
    assert!(effects.windows(2).all(|w| w[0] >= w[1]) && effects.iter().all(|e| (0.0..=1.0).contains(e)), "{imp}");
    let lr = imp["params"].as_array().unwrap().iter().find(|p| p["param"] == "optimizer.lr").unwrap();
    let rows = json(home, &["results", "--format", "json"]);
    let runs: Vec<(f64, f64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["lr"].as_f64().unwrap(), r["best_test_acc"].as_f64().unwrap()))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let all: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let total: f64 = all.iter().map(|y| (y - mean(&all)).powi(2)).sum();
    let mut between = 0.0;
    for value in [0.001, 0.02, 0.05] {
        let group: Vec<f64> = runs.iter().filter(|r| r.0 == value).map(|r| r.1).collect();
        between += group.len() as f64 * (mean(&group) - mean(&all)).powi(2);
    }
    let expected = if total > 0.0 { between / total } else { 0.0 };
    assert!((lr["main_effect"].as_f64().unwrap() - expected).abs() < 1e-9, "{lr} vs {expected}");
    assert_eq!(lr["groups"], 3);
    // The same from `results --importance`, which takes the filters.
    assert_eq!(&json(home, &["results", "--importance", "--format", "json"]), imp);
    let sgd = json(home, &["results", "--importance", "--where", "optimizer=sgd", "--format", "json"]);
    assert_eq!(sgd["runs"], 4);
    let out = run(home, &["results", "--importance", "--where", "lr=0.001"]);
    assert!(!out.status.success() && stderr(&out).contains("needs at least 3 runs"), "{}", stderr(&out));
}

#[test]
fn the_sql_views_answer_plain_queries() {
    let (_, home) = trained();
    let rows = crate::cli::block(async {
        use sqlx::Row;
        let url = format!("sqlite://{}?mode=ro", home.join(sweep::store::DB_FILE).display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let rows = sqlx::query(
            "SELECT name, model, lr, best_metric, final_test_acc, images_per_sec,
                    (SELECT count(*) FROM epochs_view e WHERE e.id = r.id) AS n_epochs,
                    (SELECT count(*) FROM epochs_view e WHERE e.id = r.id AND e.is_best) AS n_best
             FROM runs_view r WHERE sweep = 'rep' ORDER BY lr, seed",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        // The last epoch's numbers kept on each run equal its last epoch row.
        let (kept, stale): (i64, i64) = sqlx::query_as(
            "SELECT count(r.final_test_acc),
                    count(*) FILTER (WHERE (r.final_train_acc, r.final_test_acc, r.final_test_loss) IS NOT
                        (SELECT e.train_acc, e.test_acc, e.test_loss FROM epochs e WHERE e.run_id = r.id AND e.epoch = r.epochs_done))
             FROM runs r",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((kept, stale), (5, 0));
        // Migration 0005's columns at the end of runs_view.
        let (measured, f32_runs): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE peak_memory_bytes > 0), count(*) FILTER (WHERE precision = 'f32') FROM runs_view",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((measured, f32_runs), (5, 5));
        rows.iter()
            .map(|r| {
                (
                    r.get::<String, _>("name"),
                    r.get::<String, _>("model"),
                    r.get::<f64, _>("lr"),
                    r.get::<Option<f64>, _>("best_metric").is_some(),
                    r.get::<i64, _>("n_epochs"),
                    r.get::<i64, _>("n_best"),
                )
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.1 == "smallcnn" && r.3 && r.4 == 2 && r.5 == 1), "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.2).collect::<Vec<_>>(), vec![0.001, 0.02, 0.02, 0.05, 0.05]);
}

/// `sweep results | head -1`: the reader goes away before sweep writes; sweep
/// ends by SIGPIPE like other Unix tools, not with a panic on stderr.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_results_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (_, home) = trained();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sweep"))
        .arg("--home")
        .arg(home)
        .args(["results", "--all-params"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?} {err}", out.status);
}

/// Each run records the device it trained on, described, and its peak memory.
#[test]
fn runs_record_their_device_and_peak_memory() {
    let (_, home) = trained();
    let j: Value = serde_json::from_str(&stdout(&run(home, &["status", "--format", "json"]))).unwrap();
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 5);
    for r in runs {
        let device = r["device"].as_str().unwrap();
        assert!(device.starts_with("cpu (") && device.ends_with(" threads)"), "{device}");
        // At least the 4 MB of a model and a batch, at most a few GB.
        let peak = r["peak_memory_bytes"].as_i64().unwrap();
        assert!((4 << 20..8 << 30).contains(&peak), "{peak}");
    }
    let show = stdout(&run(home, &["show", "rep/<script>alert(1)</script>"]));
    assert!(show.contains("device:      cpu (") && show.contains("peak memory: "), "{show}");
}

/// A condition that can only be false is an error, not an empty table; so is
/// an id prefix too short to be one.
#[test]
fn a_where_with_a_bad_value_and_a_short_prefix_are_errors() {
    let (_, home) = trained();
    let err = |args: &[&str]| {
        let out = crate::cli::run(home, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        crate::cli::stderr(&out)
    };
    let e = err(&["results", "--where", "lr>abc"]);
    assert!(e.contains("--where `lr>abc`: `lr` is a number in every run shown and `abc` is not one"), "{e}");
    let e = err(&["results", "--where", "status=dne"]);
    assert!(e.contains("no status `dne` (statuses: queued, running, done"), "{e}");
    let e = err(&["show", "ab"]);
    assert!(e.contains("an id prefix needs at least 4 characters"), "{e}");
    // Text comparisons still work.
    let out = crate::cli::run(home, &["results", "--where", "model~small"]);
    assert!(out.status.success());
}

#[test]
fn plan_exits_non_zero_when_a_run_cannot_be_trained() {
    let dir = tempfile::tempdir().unwrap();
    let f = crate::write_sweep(dir.path(), "p.toml", &crate::tiny_sweep("p", 32, 1, "[[run]]\nmodel = \"resnet19\"\n"));
    let out = crate::cli::run(dir.path(), &["plan", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::cli::stdout(&out).contains("cannot be trained by this build"), "{}", crate::cli::stdout(&out));
    // A GPU this build cannot use, as `submit` refuses it, also without estimates.
    if !candle_core::utils::cuda_is_available() {
        let qs = crate::write_sweep(dir.path(), "q.toml", &crate::tiny_sweep("q", 32, 1, ""));
        let out = crate::cli::run(dir.path(), &["plan", qs.to_str().unwrap(), "--device", "cuda:0", "--no-estimate"]);
        assert_eq!(out.status.code(), Some(2));
        let err = crate::cli::stderr(&out);
        assert!(err.contains("device cuda:0: this binary was built without CUDA"), "{err}");
    }
}

/// Without --format the -o file's extension names the format; one that names
/// none is refused before anything is written.
#[test]
fn the_output_file_names_the_report_format() {
    let (dir, home) = trained();
    let at = |name: &str| dir.path().join(name);
    assert!(run(home, &["report", "-o", at("ext.HTML").to_str().unwrap()]).status.success());
    assert_well_formed_and_offline(&std::fs::read_to_string(at("ext.HTML")).unwrap());
    assert!(run(home, &["report", "-o", at("ext.json").to_str().unwrap()]).status.success());
    let j: Value = serde_json::from_str(&std::fs::read_to_string(at("ext.json")).unwrap()).unwrap();
    assert_eq!(j["runs"].as_array().unwrap().len(), 5);
    assert!(run(home, &["report", "-o", at("ext.csv").to_str().unwrap()]).status.success());
    assert!(std::fs::read_to_string(at("ext.csv")).unwrap().starts_with("id,sweep,name,"));
    assert!(run(home, &["report", "-o", at("ext.md").to_str().unwrap()]).status.success());
    assert!(std::fs::read_to_string(at("ext.md")).unwrap().starts_with('#'));
    // --format wins over the extension.
    assert!(run(home, &["report", "--format", "md", "-o", at("md.html").to_str().unwrap()]).status.success());
    assert!(std::fs::read_to_string(at("md.html")).unwrap().starts_with('#'));
    let out = run(home, &["report", "-o", at("r.pdf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no report format for `.pdf`: name the file .md, .html, .csv or .json"),
        "{}",
        stderr(&out)
    );
    assert!(!at("r.pdf").exists());
}

/// Markdown says where its figures went, or how to get them.
#[test]
fn markdown_says_where_the_figures_went() {
    let (dir, home) = trained();
    let out = run(home, &["report", "--format", "md"]);
    assert!(stderr(&out).contains("no figures on standard output: `-o report.md`"), "{}", stderr(&out));
    let md = dir.path().join("where.md");
    let out = run(home, &["report", "--format", "md", "-o", md.to_str().unwrap()]);
    assert!(stderr(&out).contains("figures written beside it as where-*.svg"), "{}", stderr(&out));
}

/// One schema: `results --format json|csv`, `report --format json` and
/// `submit --format json` name a run's numbers alike, as numbers, to the
/// digits shown, with the run id (never the database row id).
#[test]
fn results_report_and_submit_share_one_schema_without_float_noise() {
    let (_, home) = trained();
    let results = json(home, &["results", "--format", "json"]);
    let report = json(home, &["report", "--format", "json"]);
    let csv = crate::cli::stdout(&crate::cli::run(home, &["results", "--format", "csv"]));
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for r in rows(&results) {
        let id = r["id"].as_str().unwrap();
        assert_eq!(id.len(), 10);
        let rep = report["runs"].as_array().unwrap().iter().find(|x| x["id"] == id).unwrap();
        for k in [
            "name",
            "status",
            "epochs_done",
            "epochs_total",
            "best_epoch",
            "best_test_acc",
            "train_acc",
            "test_acc",
            "test_loss",
            "seconds",
            "img_per_s",
        ] {
            assert_eq!(r[k], rep[k], "{k} of {id}");
            assert!(header.contains(&k), "csv lacks {k}: {header:?}");
        }
        assert!(r["epochs_done"].is_i64() && r["img_per_s"].is_i64(), "{r}");
        for k in ["test_loss", "test_acc", "seconds"] {
            let text = r[k].to_string();
            assert!(text.split('.').nth(1).is_none_or(|d| d.len() <= 4), "{k} = {text}: float noise");
        }
        for e in rep["epochs"].as_array().unwrap() {
            assert!(e["img_per_s"].is_number() && e.get("images_per_sec").is_none(), "{e}");
        }
    }
    // submit --format json carries the same rows under `results`.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("home");
    let file = crate::write_sweep(dir.path(), "again.toml", &crate::tiny_sweep("again", 32, 1, ""));
    let out = crate::cli::run(&other, &["-q", "submit", "--format", "json", file.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&crate::cli::stdout(&out)).unwrap();
    let again = json(&other, &["results", "--format", "json"]);
    assert_eq!(&v["results"][0], &rows(&again)[0]);
}

/// Tables fit the terminal: with a narrow `COLUMNS` the long columns (names,
/// long values) are cut with `…`, the run ids never; a pipe without COLUMNS
/// gets them whole.
#[test]
fn tables_fit_the_terminal_width() {
    let (_, home) = trained();
    let args = ["results", "--columns", "id,name,optimizer,test_acc,sweep"];
    let whole = crate::cli::stdout(&crate::cli::run(home, &args));
    let widest = whole.lines().map(|l| l.chars().count()).max().unwrap();
    let limit = widest - 6;
    let out = crate::cli::sweep(home).env("COLUMNS", limit.to_string()).args(args).output().unwrap();
    let narrow = String::from_utf8_lossy(&out.stdout);
    assert!(narrow.lines().all(|l| l.chars().count() <= limit), "{limit}:\n{narrow}\n{whole}");
    assert!(narrow.contains('…'), "{narrow}");
    assert_eq!(narrow.lines().count(), whole.lines().count());
    let ids = |t: &str| t.lines().skip(2).map(|l| l[..10].to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&narrow), ids(&whole), "ids are never cut");
}
