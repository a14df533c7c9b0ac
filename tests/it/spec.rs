//! Sweep files → expanded runs.

use std::path::Path;
use sweep::spec::{self, DatasetName, Freeze, Head, OptimizerSpec, ScheduleSpec, SpecError};

fn parse(text: &str) -> Result<spec::SweepSpec, Vec<SpecError>> {
    spec::parse(Path::new("test.toml"), text).map_err(|e| e.0)
}

const BASE: &str = r#"
name = "t"
dataset = "synthetic"
[defaults]
model = "smallcnn"
batch_size = 32
epochs = 2
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
"#;

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn one_error(text: &str) -> SpecError {
    let errs = parse(text).expect_err("the file should be refused");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn defaults_alone_make_one_run_with_everything_filled_in() {
    let s = parse(BASE).unwrap();
    assert_eq!(s.runs.len(), 1);
    let c = &s.runs[0].config;
    assert_eq!(c.model, "smallcnn");
    assert_eq!(c.freeze, Freeze::None);
    assert_eq!(c.head, Head::Linear);
    assert_eq!(c.augment, "none");
    assert_eq!(c.schedule, ScheduleSpec::Constant);
    assert_eq!(
        c.optimizer,
        OptimizerSpec::Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            decay_bn_bias: true,
            clip_grad_norm: None
        }
    );
    assert_eq!(c.metric, spec::Metric::TestAcc);
}

#[test]
fn grid_is_a_cartesian_product_in_file_order() {
    let s = parse(&with("[[grid]]\noptimizer.lr = [0.01, 0.1]\nbatch_size = [16, 32, 64]\n")).unwrap();
    let got: Vec<(f64, usize)> = s.runs.iter().map(|r| (r.config.optimizer.lr(), r.config.batch_size)).collect();
    assert_eq!(got, vec![(0.01, 16), (0.01, 32), (0.01, 64), (0.1, 16), (0.1, 32), (0.1, 64)]);
    assert_eq!(s.runs[0].name, "lr=0.01,batch_size=16");
    // Setting optimizer.lr keeps the other optimizer fields from the defaults.
    assert!(matches!(s.runs[0].config.optimizer, OptimizerSpec::Sgd { momentum, .. } if momentum == 0.9));
}

#[test]
fn zip_pairs_values_and_exclude_removes_combinations() {
    let s = parse(&with(
        r#"
[[grid]]
name = "z"
epochs = [1, 2]
exclude = [{ epochs = 2, batch_size = 8 }]
[grid.zip]
batch_size = [8, 16]
"optimizer.lr" = [0.2, 0.4]
"#,
    ))
    .unwrap();
    let got: Vec<(usize, usize, f64)> =
        s.runs.iter().map(|r| (r.config.epochs, r.config.batch_size, r.config.optimizer.lr())).collect();
    assert_eq!(got, vec![(1, 8, 0.2), (1, 16, 0.4), (2, 16, 0.4)]);
    assert!(s.runs[0].name.starts_with("z:"), "{}", s.runs[0].name);
}

#[test]
fn repeats_vary_the_seed_and_the_key() {
    let s = parse(&format!("seed = 10\nrepeats = 3\n{BASE}")).unwrap();
    let seeds: Vec<u64> = s.runs.iter().map(|r| r.config.seed).collect();
    assert_eq!(seeds, vec![10, 11, 12]);
    let mut keys: Vec<_> = s.runs.iter().map(|r| r.key.clone()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 3);
}

#[test]
fn an_optimizer_of_another_name_replaces_the_defaults_table() {
    let s = parse(&with("[[grid]]\noptimizer = [{ name = \"adam\", lr = 0.001 }, { lr = 0.5 }]\n")).unwrap();
    assert_eq!(
        s.runs[0].config.optimizer,
        OptimizerSpec::Adam {
            lr: 0.001,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            decay_bn_bias: true,
            clip_grad_norm: None
        }
    );
    assert!(
        matches!(s.runs[1].config.optimizer, OptimizerSpec::Sgd { lr, momentum, .. } if lr == 0.5 && momentum == 0.9)
    );
}

#[test]
fn explicit_runs_heads_freezing_and_references() {
    let s = parse(&with(
        r#"
[[run]]
name = "mlp"
head = { hidden = [64], dropout = [0.5] }
freeze = { through = "layer1" }
reference = { test_acc = 95.9, test_acc_epoch = 10, source = "term report" }
[[run]]
freeze = ["conv1", "bn1"]
"#,
    ))
    .unwrap();
    assert_eq!(s.runs.len(), 2);
    assert_eq!(s.runs[0].name, "mlp");
    assert_eq!(s.runs[0].config.head, Head::Mlp { hidden: vec![64], dropout: vec![0.5] });
    assert_eq!(s.runs[0].config.freeze, Freeze::Through("layer1".into()));
    assert_eq!(s.runs[0].reference.as_ref().unwrap().test_acc, Some(95.9));
    assert_eq!(s.runs[1].name, "run2");
    assert_eq!(s.runs[1].config.freeze, Freeze::Prefixes(vec!["conv1".into(), "bn1".into()]));
}

#[test]
fn keys_are_stable_and_independent_of_how_a_config_is_written() {
    let a = parse(&with("[[grid]]\nbatch_size = [16]\n")).unwrap();
    let b = parse(&with("[[run]]\nbatch_size = 16\nname = \"other name\"\n")).unwrap();
    assert_eq!(a.runs[0].key, b.runs[0].key);
    // Pinned: changing the canonical form silently would re-run every finished config.
    let canonical = spec::canonical_json(&a.runs[0].config);
    assert!(
        canonical.starts_with(r#"{"augment":"none","batch_size":16,"dataset":{"name":"synthetic"},"epochs":2,"#),
        "{canonical}"
    );
    assert_eq!(a.runs[0].key, spec::run_key(&a.runs[0].config));
    assert_eq!(a.runs[0].key.0.len(), 64);
    let c = parse(&with("[[run]]\nbatch_size = 17\n")).unwrap();
    assert_ne!(a.runs[0].key, c.runs[0].key);
}

#[test]
fn duplicate_configs_are_dropped_and_reported() {
    let s = parse(&with("[[grid]]\nbatch_size = [32, 16]\n[[run]]\nname = \"again\"\nbatch_size = 16\n")).unwrap();
    assert_eq!(s.runs.len(), 2);
    assert_eq!(s.duplicates, vec!["again".to_owned()]);
}

#[test]
fn unknown_top_level_key_names_line_and_column() {
    // The file has no model either: both are said in one pass.
    let errs = parse("name = \"t\"\ndataset = \"synthetic\"\nlearning_rate = 3\n").expect_err("refused");
    assert!(errs.iter().any(|e| e.message.contains("no `model` given")), "{errs:#?}");
    let e = errs.into_iter().find(|e| e.line == 3).expect("the unknown field");
    assert_eq!((e.line, e.column), (3, 1), "{e}");
    assert!(e.message.contains("unknown field `learning_rate`"), "{e}");
    assert!(e.to_string().starts_with("test.toml:3:1: "), "{e}");
}

#[test]
fn unknown_key_inside_defaults_is_located() {
    let e = one_error(&BASE.replace("momentum = 0.9", "momentum = 0.9, nestrov = true"));
    assert_eq!(e.line, 8, "{e}");
    assert!(e.message.contains("nestrov"), "{e}");
}

#[test]
fn bad_grid_value_names_the_key_and_the_value() {
    let e = one_error(&with("\n[[grid]]\nbatch_size = [32, \"big\"]\n"));
    assert_eq!(e.line, 11, "{e}");
    assert_eq!(e.key.as_deref(), Some("batch_size"));
    assert!(e.message.contains("\"big\""), "{e}");
}

#[test]
fn unknown_grid_axis_and_scalar_axis_are_errors() {
    let e = one_error(&with("[[grid]]\nlearning_rate = [0.1]\n"));
    assert_eq!(e.key.as_deref(), Some("learning_rate"));
    assert!(e.message.contains("unknown key"), "{e}");
    let e = one_error(&with("[[grid]]\nbatch_size = 32\n"));
    assert!(e.message.contains("must be a list"), "{e}");
}

#[test]
fn semantic_errors_point_at_the_run() {
    let e = one_error(&with(
        "[[run]]\nname = \"bad\"\nschedule = { name = \"multistep\", milestones = [5, 3], gamma = 0.1 }\n",
    ));
    // At the line inside the run that sets the key (the run's header is line 9).
    assert_eq!(e.line, 11, "{e}");
    assert!(e.message.contains("strictly increasing"), "{e}");
    let e = one_error(&with("[[run]]\naugment = \"heavy\"\n"));
    assert!(e.message.contains("no augmentation set named `heavy`"), "{e}");
    let e = one_error(&with("[[grid]]\nbatch_size = [8]\nexclude = [{ batch_size = 9 }]\n"));
    assert!(e.message.contains("matches no combination"), "{e}");
    let e = one_error("name = \"t\"\ndataset = { name = \"cifar10\", test_split = 0.2 }\n[defaults]\nmodel = \"smallcnn\"\nbatch_size = 1\nepochs = 1\noptimizer = { name = \"sgd\", lr = 0.1 }\n");
    assert!(e.message.contains("`test_split` is only for an image folder"), "{e}");
    assert_eq!(e.key.as_deref(), Some("dataset.test_split"), "{e}");
    let e = one_error("name = \"t\"\ndataset = { name = \"synthetic\", skip_unreadable = true }\n[defaults]\nmodel = \"smallcnn\"\nbatch_size = 1\nepochs = 1\noptimizer = { name = \"sgd\", lr = 0.1 }\n");
    assert!(e.message.contains("`skip_unreadable` is only for an image folder"), "{e}");
    assert_eq!((e.line, e.key.as_deref()), (2, Some("dataset.skip_unreadable")), "{e}");
    let e = one_error("name = \"t\"\ndataset = { name = \"cifar10\", resize = 64 }\n[defaults]\nmodel = \"smallcnn\"\nbatch_size = 1\nepochs = 1\noptimizer = { name = \"sgd\", lr = 0.1 }\n");
    assert!(e.message.contains("only for an image folder"), "{e}");
    assert_eq!(e.key.as_deref(), Some("dataset.resize"), "{e}");
    let e = one_error("name = \"t\"\ndataset = { folder = \"x\", resize = 0 }\n[defaults]\nmodel = \"smallcnn\"\nbatch_size = 1\nepochs = 1\noptimizer = { name = \"sgd\", lr = 0.1 }\n");
    assert!(e.message.contains("must be between 1 and"), "{e}");
    let e = one_error(&BASE.replace("epochs = 2\n", ""));
    assert!(e.message.contains("no `epochs` given"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let errs = parse(&with("[[grid]]\nbatch_size = [\"x\"]\n[[grid]]\nmodle = [\"a\"]\n")).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn a_single_bracket_grid_run_or_search_says_to_write_two_and_nothing_cascades() {
    // `[grid]` for `[[grid]]`: one error per block, at its header, and the
    // block's keys are not then read as `[defaults]`'s.
    let errs = parse(&with(
        "[grid]\nhead = [\"linear\", { hidden = [8] }]\n[run]\nname = \"a\"\nbatch_size = [1]\n[search]\nmethod = \"random\"\n",
    ))
    .unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:#?}");
    for (e, (name, line)) in errs.iter().zip([("grid", 9), ("run", 11), ("search", 14)]) {
        assert_eq!(e.line, line, "{e}");
        assert!(e.message.contains(&format!("write `[[{name}]]` (two brackets)")), "{e}");
    }
}

#[test]
fn errors_after_a_multi_line_value_keep_their_line() {
    // The first error (a file shape error: the typed `[defaults]`) is a value
    // over three lines; the next, in a grid, is on line 12.
    let text = BASE.replace("batch_size = 32", "batch_size = [\n 1,\n 2]") + "[[grid]]\nepochs = [1, \"x\"]\n";
    let errs = parse(&text).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!((errs[0].line, errs[1].line), (6, 12), "{errs:#?}");
    assert_eq!(errs[1].key.as_deref(), Some("epochs"), "{errs:#?}");
}

#[test]
fn near_misses_say_what_was_meant() {
    // A dataset's or model's name in another case or spelling.
    let e = one_error(&BASE.replace("dataset = \"synthetic\"", "dataset = \"CIFAR-10\""));
    assert_eq!((e.line, e.message.as_str()), (3, "unknown dataset `CIFAR-10`; did you mean `cifar10`?"), "{e}");
    let e = one_error(&BASE.replace("dataset = \"synthetic\"", "dataset = \"FashionMNIST\""));
    assert_eq!(e.message, "unknown dataset `FashionMNIST`; did you mean `fashion-mnist`?", "{e}");
    let e = one_error(&BASE.replace("dataset = \"synthetic\"", "dataset = \"SVHN\""));
    assert_eq!(e.message, "unknown dataset `SVHN`; did you mean `svhn`?", "{e}");
    let e = one_error(&BASE.replace("dataset = \"synthetic\"", "dataset = \"STL-10\""));
    assert_eq!(e.message, "unknown dataset `STL-10`; did you mean `stl10`?", "{e}");
    // torchvision's and Hugging Face's spellings of the one name both read.
    for name in ["fashion-mnist", "fashion_mnist"] {
        let s = parse(&BASE.replace("dataset = \"synthetic\"", &format!("dataset = \"{name}\""))).unwrap();
        assert_eq!(s.runs[0].config.dataset.name, DatasetName::FashionMnist);
    }
    let s = parse(&BASE.replace("\"smallcnn\"", "\"ResNet18\"")).unwrap();
    let e = sweep::train::check(&s.runs[0].config).unwrap_err().to_string();
    assert!(e.starts_with("model `ResNet18` is not available; did you mean `resnet18`? (available: "), "{e}");
    let s = parse(&BASE.replace("\"smallcnn\"", "\"resnet19\"")).unwrap();
    let e = sweep::train::check(&s.runs[0].config).unwrap_err().to_string();
    assert!(e.starts_with("model `resnet19` is not available (available: "), "{e}");
    // The optimizer's and the schedule's fields at the run's level.
    let e = one_error(&BASE.replace("epochs = 2", "epochs = 2\nlr = 0.1"));
    assert!(e.message.starts_with("unknown field `lr`, expected one of"), "{e}");
    assert!(e.message.ends_with("(`lr` belongs to a table: write `optimizer.lr`)"), "{e}");
    // Not inside the optimizer's own table: Adam has no `momentum`.
    let e = one_error(&BASE.replace("name = \"sgd\", lr = 0.1, momentum = 0.9", "name = \"adam\", momentum = 0.9"));
    assert!(e.message.starts_with("unknown field `momentum`") && !e.message.contains("belongs"), "{e}");
    let errs = parse(&with("[[grid]]\nmomentum = [0.9]\nmilestones = [[1]]\n")).unwrap_err();
    let hints: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        hints,
        [
            "unknown key `momentum`; it belongs to a table: write `optimizer.momentum`",
            "unknown key `milestones`; it belongs to a table: write `schedule.milestones`"
        ]
    );
    // W&B's `seed` parameter, the dataset's sizes and the file's settings
    // written where a run's keys go.
    let errs = parse(&with("[[grid]]\nseed = [1, 2]\ntrain_size = [100]\nmetric = [\"test_loss\"]\n")).unwrap_err();
    let hints: Vec<_> = errs.iter().map(|e| (e.line, e.message.as_str())).collect();
    assert_eq!(hints.len(), 3, "{errs:#?}");
    assert!(hints[0].1.starts_with("unknown key `seed`; it is not a run setting: `repeats = N`"), "{errs:#?}");
    assert!(
        hints[0].1.ends_with("seeds seed, seed+1, ..., seed+N-1; the top-level `seed` sets the first"),
        "{errs:#?}"
    );
    let dataset =
        "unknown key `train_size`; it belongs to the dataset: `dataset = { name = \"...\", train_size = ... }`";
    assert!(hints[1].1.starts_with(dataset), "{errs:#?}");
    assert!(hints[2].1.starts_with("unknown key `metric`; it is the file's own setting"), "{errs:#?}");
    // In [defaults], where toml names the fields it expected.
    let e = one_error(&BASE.replace("epochs = 2", "epochs = 2\nrepeats = 3"));
    assert!(
        e.message.ends_with("(`repeats` is set at the top of the file or in a grid or run, not in [defaults])"),
        "{e}"
    );
    let e = one_error(&BASE.replace("epochs = 2", "epochs = 2\ntest_size = 50"));
    assert!(e.message.ends_with("(`test_size` belongs to the dataset: `dataset = { name = \"...\", test_size = ... }` at the top of the file)"), "{e}");
}

#[test]
fn a_missing_name_or_dataset_is_one_error_among_the_others() {
    let text =
        with("[[grid]]\nbatch_size = [\"x\"]\n").replace("name = \"t\"\n", "").replace("dataset = \"synthetic\"\n", "");
    let errs = parse(&text).unwrap_err();
    let got: Vec<_> = errs.iter().map(|e| (e.line, e.message.split(':').next().unwrap_or_default())).collect();
    assert_eq!(got, [(1, "missing field `name`"), (1, "missing field `dataset`"), (8, "value \"x\"")], "{errs:#?}");
    // A bad dataset value is one error, not also "missing field".
    let errs = parse(&BASE.replace("dataset = \"synthetic\"", "dataset = 3")).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].line, 3, "{errs:#?}");
}

#[test]
fn the_repository_sweep_files_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let qs = spec::load(&root.join("experiments/quickstart.toml")).unwrap();
    assert_eq!(qs.runs.len(), 4);
    assert!(qs.runs.iter().all(|r| sweep::train::check(&r.config).is_ok()));
    let report = spec::load(&root.join("experiments/report.toml")).unwrap();
    assert!(report.runs.len() >= 5, "{}", report.runs.len());
    assert!(report.runs.iter().any(|r| r.reference.as_ref().and_then(|x| x.test_acc) == Some(95.9)));
}

#[test]
fn the_readme_example_parses_and_expands_as_documented() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## The sweep file").unwrap();
    let block = &readme[start..];
    let body = &block[block.find("```toml\n").unwrap() + 8..];
    let toml = &body[..body.find("```").unwrap()];
    let s = parse(toml).unwrap();
    // lr grid: 3 x 2 - 1 excluded = 5 combinations x 2 repeats; zip: 2; run: 1; but the
    // zip's (smallcnn, linear) is the defaults, already in the lr grid as lr=0.05, batch 64.
    assert_eq!(s.runs.len(), 12, "{:#?}", s.runs.iter().map(|r| &r.name).collect::<Vec<_>>());
    assert_eq!(s.duplicates, vec!["model=smallcnn,head=linear".to_owned()]);
    assert_eq!(s.runs[0].name, "lr:lr=0.01,batch_size=32,seed=0");
    assert_eq!(s.runs[10].name, "model=smallcnn,head={hidden=[128],dropout=[0.5]}");
    assert!(s.runs.iter().all(|r| sweep::train::check(&r.config).is_ok()), "every run can be trained");
}

/// `device` is a sweep-level choice, checked at its line, and no part of a
/// run's key; `precision` is a run field and is.
#[test]
fn device_is_checked_and_precision_is_part_of_the_key() {
    let plain = parse(BASE).unwrap();
    assert_eq!(plain.device, None);
    let on_cpu = parse(&BASE.replace("dataset = \"synthetic\"", "dataset = \"synthetic\"\ndevice = \"cpu\"")).unwrap();
    assert_eq!(on_cpu.device, Some(spec::DeviceChoice::Cpu));
    assert_eq!(on_cpu.runs[0].key, plain.runs[0].key);
    let e = one_error(&BASE.replace("dataset = \"synthetic\"", "dataset = \"synthetic\"\ndevice = \"gpu0\""));
    assert_eq!((e.line, e.key.as_deref()), (4, Some("device")), "{e}");
    assert!(e.message.contains("unknown device `gpu0`"), "{e}");
    let bf16 = parse(&BASE.replace("epochs = 2", "epochs = 2\nprecision = \"bf16\"")).unwrap();
    assert_eq!(bf16.runs[0].config.precision, spec::Precision::Bf16);
    assert_ne!(bf16.runs[0].key, plain.runs[0].key);
    assert_eq!(plain.runs[0].config.precision, spec::Precision::F32);
    let e = one_error(&BASE.replace("epochs = 2", "epochs = 2\nprecision = \"fp8\""));
    assert_eq!(e.line, 8, "{e}");
}

/// Values no real sweep uses, each refused at its own line with the reason,
/// instead of exhausting memory or failing the run when a worker starts it.
#[test]
fn hostile_values_are_refused_at_their_line() {
    // (extra text, line, key, part of the message); the extra text starts at line 9.
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[[run]]\noptimizer = { name = \"sgd\", lr = 0.1, weight_decay = nan }\n",
            10,
            "optimizer.weight_decay",
            "nan is not a finite number",
        ),
        // Said once: not again by the learning rate's range check.
        ("[[run]]\noptimizer = { name = \"sgd\", lr = nan }\n", 10, "optimizer.lr", "nan is not a finite number"),
        (
            "[[run]]\nschedule = { name = \"step\", step_size = 2, gamma = inf }\n",
            10,
            "schedule.gamma",
            "inf is not a finite number",
        ),
        (
            "[augment.a]\ntrain = [{ normalize = { mean = [0.5, -nan, 0.5], std = [1.0, 1.0, 1.0] } }]\n",
            10,
            "augment.a.train.normalize.mean",
            "nan is not a finite",
        ),
        (
            "[[run]]\nschedule = { name = \"multistep\", milestones = [1], factors = [-0.5] }\n",
            10,
            "schedule.factors",
            "each factor must be > 0",
        ),
        ("[[run]]\nschedule = { name = \"cosine\", eta_min = -0.1 }\n", 10, "schedule.eta_min", "must be >= 0"),
        (
            "[[run]]\noptimizer = { name = \"sgd\", lr = 0.1, dampening = -5 }\n",
            10,
            "optimizer.dampening",
            "must be in [0, 1]",
        ),
        (
            "[[run]]\nschedule = { name = \"onecycle\", max_momentum = 5 }\n",
            10,
            "schedule.max_momentum",
            "must be in [0, 1]",
        ),
        ("[[run]]\nname = \"\"\n", 10, "name", "must not be empty"),
        ("[[grid]]\nbatch_size = [8]\nexclude = [{ batch_size = 8 }]\n", 9, "exclude", "removes every combination"),
        ("[[run]]\nbatch_size = 1000000\n", 10, "batch_size", "limit of 65536 for a batch"),
        ("[[run]]\nepochs = 1000000000\n", 10, "epochs", "limit of 100000"),
        ("[[run]]\nhead = { hidden = [9223372036854775807] }\n", 10, "head.hidden", "limit of 65536"),
        ("[[run]]\nrepeats = 4294967295\n", 10, "repeats", "from 1 to 1000"),
        (
            "[augment.big]\ntrain = [{ resize = { size = 1000000 } }]\n",
            9,
            "augment.big.train",
            "resize: 1000000 is more than the limit of 4096",
        ),
        ("[augment.big]\ntest = [{ center_crop = { size = 1000000000 } }]\n", 9, "augment.big.test", "limit of 4096"),
    ];
    for (extra, line, key, part) in cases {
        let e = one_error(&with(extra));
        assert_eq!((e.line, e.key.as_deref()), (*line, Some(*key)), "{extra}: {e}");
        assert!(e.message.contains(part), "{extra}: {e}");
    }
    // A split that large is refused where the dataset is given.
    let e = one_error(
        &BASE.replace("dataset = \"synthetic\"", "dataset = { name = \"synthetic\", test_size = 1000000000000 }"),
    );
    assert_eq!((e.line, e.key.as_deref()), (3, Some("dataset.test_size")), "{e}");
    assert!(e.message.contains("limit of 50000000"), "{e}");
    // Generated images are held in memory.
    let e = one_error(
        &BASE.replace("dataset = \"synthetic\"", "dataset = { name = \"synthetic\", train_size = 10000000 }"),
    );
    assert!(e.message.contains("10000000 generated images is more than the limit of 1000000"), "{e}");
    // Each value within its bound, the batch they make together is not.
    let e = one_error(&with(
        "[augment.big]\ntrain = [{ resize = { size = 4096 } }]\n[[run]]\naugment = \"big\"\nbatch_size = 65536\n",
    ));
    assert_eq!(e.key.as_deref(), Some("batch_size"), "{e}");
    assert!(e.message.contains("one batch of 65536 images of 4096x4096 is 12288 GiB as f32"), "{e}");
    // Errors about [defaults] point at the key inside it, not at 1:1.
    let e = one_error(&BASE.replace("batch_size = 32", "batch_size = 0"));
    assert_eq!((e.line, e.key.as_deref()), (6, Some("batch_size")), "{e}");
}

#[test]
fn the_run_count_is_checked_before_the_grid_is_built() {
    let axis = format!("{:?}", (1..=100).collect::<Vec<_>>());
    let grid = format!("[[grid]]\nbatch_size = {axis}\nepochs = {axis}\nwarmup.iters = {axis}\n");
    let start = std::time::Instant::now();
    let e = one_error(&with(&grid));
    assert!(start.elapsed() < std::time::Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(e.line, 9, "{e}");
    assert!(e.message.contains("1000000 runs, more than the limit of 100000 (raise it with --max-runs)"), "{e}");
    // The limit can be raised.
    let small = format!("[[grid]]\nbatch_size = {axis}\nepochs = [1, 2]\n");
    let limits = spec::Options { limits: spec::Limits { max_runs: 100 }, ..Default::default() };
    assert!(spec::parse_with(Path::new("t.toml"), &with(&small), &limits).is_err());
    assert_eq!(
        spec::parse_with(
            Path::new("t.toml"),
            &with(&small),
            &spec::Options { limits: spec::Limits { max_runs: 200 }, ..Default::default() },
        )
        .unwrap()
        .runs
        .len(),
        200
    );
}

#[test]
fn long_values_are_cut_in_messages_and_bad_bytes_are_located() {
    let huge = "a".repeat(1_000_000);
    let e = one_error(&with(&format!("[[run]]\nepochs = \"{huge}\"\n")));
    assert!(e.to_string().len() < 1_000, "{} bytes", e.to_string().len());
    assert!(e.message.contains("characters cut"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, b"name = \"t\"\n# caf\xe9\n").unwrap();
    let e = spec::load(&file).unwrap_err().0.remove(0);
    assert_eq!((e.line, e.column), (2, 6), "{e}");
    assert!(e.message.contains("not UTF-8 text (byte 0xe9 here)"), "{e}");
}

fn with_overrides(text: &str, sets: &[&str]) -> Result<spec::SweepSpec, Vec<SpecError>> {
    let overrides = sets.iter().map(|s| s.parse().unwrap()).collect();
    let options = spec::Options { overrides, ..Default::default() };
    spec::parse_with(Path::new("test.toml"), text, &options).map_err(|e| e.0)
}

/// `--set KEY=V` replaces a value in every run, grid axes included;
/// `--set KEY=V1,V2` adds an axis over all the file's runs; an error names the
/// override.
#[test]
fn overrides_replace_values_or_add_an_axis_over_every_run() {
    let grid = with("[[grid]]\noptimizer.lr = [0.1, 0.01]\n");
    let s = with_overrides(&grid, &["batch_size=64", "optimizer.lr=0.5"]).unwrap();
    assert_eq!(s.runs.len(), 1, "both grid values became 0.5: one configuration");
    assert_eq!((s.runs[0].config.batch_size, s.runs[0].config.optimizer.lr()), (64, 0.5));
    let s = with_overrides(&grid, &["batch_size=16,32,64"]).unwrap();
    let names: Vec<&str> = s.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lr=0.1,batch_size=16",
            "lr=0.1,batch_size=32",
            "lr=0.1,batch_size=64",
            "lr=0.01,batch_size=16",
            "lr=0.01,batch_size=32",
            "lr=0.01,batch_size=64"
        ]
    );
    // The same configuration as writing it in the file: the same key.
    let written = parse(&BASE.replace("batch_size = 32", "batch_size = 64")).unwrap();
    assert_eq!(with_overrides(BASE, &["batch_size=64"]).unwrap().runs[0].key, written.runs[0].key);
    // Errors name the override.
    // Once each: a bad override is not applied to the runs, which would repeat it.
    let errs = with_overrides(BASE, &["learning_rate=0.1"]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].to_string().starts_with("--set learning_rate=0.1: `learning_rate`: unknown key"), "{}", errs[0]);
    assert!(errs[0].message.contains("write `optimizer.lr`"), "{}", errs[0]);
    let errs = with_overrides(BASE, &["batch_size=big,8"]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].to_string().starts_with("--set batch_size=big,8: `batch_size`: value \"big\""), "{}", errs[0]);
    let e = with_overrides(BASE, &["optimizer.lr=-1"]).unwrap_err().remove(0);
    assert!(e.to_string().starts_with("--set optimizer.lr=-1: `optimizer.lr`: run `default`:"), "{e}");
    // The run count includes the overrides' axes.
    let axis = format!("{:?}", (1..=400).collect::<Vec<_>>()).replace(' ', "");
    let sets = [format!("epochs={}", &axis[1..axis.len() - 1]), format!("batch_size={}", &axis[1..axis.len() - 1])];
    let e = with_overrides(BASE, &[&sets[0], &sets[1]]).unwrap_err().remove(0);
    assert!(e.message.contains("160000 runs, more than the limit of 100000"), "{e}");
}
