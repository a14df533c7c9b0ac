//! The model zoo against torchvision: parity fixtures written by
//! `scripts/model_fixtures.py`, pretrained loading, heads and freezing.

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use sweep::spec::{Freeze, Head, Stem};
use sweep::train::models::{Arch, ModelSpec};
use sweep::train::rng::Rng;

#[derive(Deserialize)]
struct Fixture {
    arch: Arch,
    head: Head,
    stem: Stem,
    classes: usize,
    weights: String,
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    rel_err_floor(a, b, 1e-12)
}

/// max |a - b| / max(max |b|, floor): gradients that are zero in exact
/// arithmetic (a conv bias before BatchNorm) are compared absolutely.
fn rel_err_floor(a: &Tensor, b: &Tensor, floor: f32) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The fixture folder: the committed small models, or `SWEEP_PARITY_DIR`
/// (e.g. the full-size models written with `--full`).
fn fixture_dir() -> PathBuf {
    std::env::var_os("SWEEP_PARITY_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models"), PathBuf::from)
}

#[test]
fn parity_every_fixture_matches_torchvision_in_eval_and_train_mode() {
    let dir = fixture_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "fixtures in {}: {names:?}", dir.display());
    for name in names {
        let fx: Fixture =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let spec = ModelSpec {
            name: name.clone(),
            arch: fx.arch,
            head: fx.head,
            stem: fx.stem,
            freeze: Freeze::None,
            freeze_bn: false,
            pretrained: Some(dir.join(&fx.weights).display().to_string()),
        };
        // The head keeps the file's weights: shapes match and the source is a file.
        let built = spec.build(fx.classes, &Device::Cpu, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        let io: HashMap<String, Tensor> =
            candle_core::safetensors::load(dir.join(format!("{name}.io.safetensors")), &Device::Cpu).unwrap();
        let x = &io["__input__"];
        let mut rng = Rng::new(0);
        let eval = built.model.forward(x, false, &mut rng).unwrap();
        let e = rel_err(&eval, &io["__logits_eval__"]);
        assert!(e < 1e-4, "{name}: eval logits differ by {e:e} (relative)");

        let train = built.model.forward(x, true, &mut rng).unwrap();
        let mut checked = 0;
        // Full-size fixtures carry a looser bound for train mode: 3x PyTorch's own
        // float32 error against float64 for that model (deep nets at batch 3 are
        // ill-conditioned in train mode).
        let tol = io.get("__train_tolerance__").map_or(1e-4, |t| values(t)[0]);
        if let Some(expected) = io.get("__logits_train__") {
            let e = rel_err(&train, expected);
            assert!(e < tol, "{name}: train-mode logits differ by {e:e} (bound {tol:e})");
            println!("{name}: train-mode logits rel. err {e:.1e} (bound {tol:.1e})");
            let grads = train.mul(&io["__loss_weights__"]).unwrap().sum_all().unwrap().backward().unwrap();
            let vars: HashMap<String, Var> = built.varmap.data().lock().unwrap().clone();
            for (k, g) in io.iter().filter_map(|(k, g)| Some((k.strip_prefix("grad.")?, g))) {
                let ours = grads.get(&vars[k]).unwrap_or_else(|| panic!("{name}: no gradient for {k}"));
                let e = rel_err_floor(ours, g, 1e-3);
                if std::env::var_os("SWEEP_PARITY_VERBOSE").is_some() {
                    println!("  {k}: {e:.1e}");
                }
                assert!(e < 1e-2, "{name}: gradient of {k} differs by {e:e}");
                checked += 1;
            }
        }
        let vars = built.varmap.data().lock().unwrap();
        let mut stats = 0;
        for (k, v) in io.iter().filter_map(|(k, v)| Some((k.strip_prefix("after.")?, v))) {
            let e = rel_err(vars[k].as_tensor(), v);
            assert!(e < tol, "{name}: {k} after one training step differs by {e:e} (bound {tol:e})");
            stats += 1;
        }
        println!(
            "{name}: eval logits rel. err {:.1e}, {checked} gradients, {stats} BN statistics match",
            rel_err(&eval, &io["__logits_eval__"])
        );
    }
}

/// Serves files from memory over HTTP/1.0 on 127.0.0.1; counts requests.
pub struct Server {
    pub url: String,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub fn serve(files: HashMap<String, Vec<u8>>) -> Server {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
            match files.get(&path) {
                Some(body) => {
                    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
                }
                None => {
                    let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        }
    });
    Server { url, hits }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[test]
fn weights_are_downloaded_once_verified_and_cached() {
    use std::sync::atomic::Ordering;
    use sweep::train::weights::WeightsCache;
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let good = format!("tiny-{}.safetensors", &sha256_hex(&bytes)[..8]);
    let bad = "tiny-deadbeef.safetensors".to_owned();
    let server = serve(HashMap::from([(good.clone(), bytes.clone()), (bad.clone(), bytes.clone())]));
    let tmp = tempfile::tempdir().unwrap();
    let cache = WeightsCache { dir: tmp.path().join("cache"), torch_dir: None, base_url: server.url.clone() };

    let path = cache.fetch(&good).unwrap();
    assert_eq!(path, tmp.path().join("cache").join(&good));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    cache.fetch(&good).unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "the second fetch must come from the cache");

    // A file whose sha256 does not match its name is refused and not kept.
    let err = cache.fetch(&bad).unwrap_err().to_string();
    assert!(err.contains("does not start with `deadbeef`"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("cache")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from(&good)], "no partial or unverified file may remain");

    // A missing file and an unreachable server say where to put the file.
    let err = cache.fetch("other-12345678.pth").unwrap_err().to_string();
    assert!(err.contains("404"), "{err}");
    let offline = WeightsCache { base_url: "http://127.0.0.1:9".into(), ..cache.clone() };
    let err = offline.fetch("resnet18-f37072fd.pth").unwrap_err().to_string();
    let dest = tmp.path().join("cache").join("resnet18-f37072fd.pth");
    assert!(err.contains(&format!("put it at {}", dest.display())), "{err}");

    // A file already in torch's cache is used as is.
    let torch = tmp.path().join("torch");
    std::fs::create_dir_all(&torch).unwrap();
    std::fs::write(torch.join("resnet18-f37072fd.pth"), b"x").unwrap();
    let with_torch = WeightsCache { torch_dir: Some(torch.clone()), ..offline };
    assert_eq!(with_torch.fetch("resnet18-f37072fd.pth").unwrap(), torch.join("resnet18-f37072fd.pth"));
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// A torchvision-format ImageNet state_dict of `model` (1000 classes, no
/// `num_batches_tracked`, like torchvision's published files), generated.
pub fn imagenet_like(model: &str, dir: &Path) -> PathBuf {
    let spec = ModelSpec {
        name: model.into(),
        arch: Arch::named(model).unwrap(),
        head: Head::Linear,
        stem: Stem::ImageNet,
        freeze: Freeze::None,
        freeze_bn: false,
        pretrained: None,
    };
    let built = spec.build(1000, &Device::Cpu, 7).unwrap();
    let tensors: HashMap<String, Tensor> = built
        .varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let path = dir.join(format!("{model}-imagenet.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

/// The term report's four set-ups load ImageNet-format weights, replace the
/// head, freeze what they should, and train (a few SGD steps at 32x32).
#[test]
fn the_reports_model_setups_load_imagenet_weights_and_train() {
    let tmp = tempfile::tempdir().unwrap();
    let mlp = Head::Mlp { hidden: vec![32], dropout: vec![0.5] };
    let setups = [
        ("resnet18", Freeze::None, Head::Linear, "conv1.weight", None),
        (
            "resnet50",
            Freeze::Through("layer2".into()),
            mlp.clone(),
            "layer3.0.conv1.weight",
            Some("layer2.3.conv3.weight"),
        ),
        ("resnet152", Freeze::Through("layer2".into()), mlp, "layer4.2.conv3.weight", Some("layer1.0.conv1.weight")),
        ("densenet169", Freeze::None, Head::Linear, "features.denseblock4.denselayer32.conv2.weight", None),
    ];
    for (model, freeze, head, trains, frozen) in setups {
        let file = imagenet_like(model, tmp.path());
        let pretrained = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let spec = ModelSpec {
            name: model.into(),
            arch: Arch::named(model).unwrap(),
            head: head.clone(),
            stem: Stem::ImageNet,
            freeze: freeze.clone(),
            freeze_bn: false,
            pretrained: Some(file.display().to_string()),
        };
        let built = spec.build(10, &Device::Cpu, 0).unwrap_or_else(|e| panic!("{model}: {e}"));
        let vars: HashMap<String, Var> = built.varmap.data().lock().unwrap().clone();
        // Backbone from the file, the head replaced with a 10-class one.
        assert_eq!(values(vars[trains].as_tensor()), values(&pretrained[trains]), "{model}");
        let (head_w, features) = match (&head, model.starts_with("densenet")) {
            (Head::Linear, true) => ("classifier.weight", 1664),
            (Head::Linear, false) => ("fc.weight", 512),
            (Head::Mlp { .. }, _) => ("fc.3.weight", 32),
        };
        assert_eq!(vars[head_w].dims(), &[10, features], "{model}");
        let names: Vec<&str> = built.trainable.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&trains) && names.contains(&head_w), "{model}: {names:?}");
        if let Freeze::Through(_) = freeze {
            assert!(
                names.iter().all(|n| n.starts_with("layer3.") || n.starts_with("layer4.") || n.starts_with("fc.")),
                "{model}: {names:?}"
            );
        }

        let frozen_before = frozen.map(|f| values(vars[f].as_tensor()));
        let stats_before = values(
            vars[if model.starts_with("densenet") { "features.norm0.running_mean" } else { "bn1.running_mean" }]
                .as_tensor(),
        );
        let trains_before = values(vars[trains].as_tensor());
        let opt_spec: sweep::spec::OptimizerSpec =
            serde_json::from_str(r#"{"name": "sgd", "lr": 0.01, "momentum": 0.9}"#).unwrap();
        let mut opt = sweep::train::optim::Optimizer::new(opt_spec, built.trainable.clone());
        let mut rng = Rng::new(3);
        let mut losses = Vec::new();
        for step in 0..2u32 {
            let x: Vec<f32> = (0..4 * 3 * 32 * 32).map(|_| rng.normal() as f32).collect();
            let x = Tensor::from_vec(x, (4, 3, 32, 32), &Device::Cpu).unwrap();
            let y = Tensor::from_vec(vec![step, 1, 2, 3], 4, &Device::Cpu).unwrap();
            let logits = built.model.forward(&x, true, &mut rng).unwrap();
            assert_eq!(logits.dims(), &[4, 10]);
            let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        assert!(losses.iter().all(|l| l.is_finite()), "{model}: {losses:?}");
        assert_ne!(values(vars[trains].as_tensor()), trains_before, "{model}: {trains} did not train");
        if let (Some(f), Some(before)) = (frozen, frozen_before) {
            assert_eq!(values(vars[f].as_tensor()), before, "{model}: frozen {f} changed");
        }
        // Frozen BatchNorm layers still track statistics in train mode (PyTorch's requires_grad=False).
        let stats = if model.starts_with("densenet") { "features.norm0.running_mean" } else { "bn1.running_mean" };
        assert_ne!(values(vars[stats].as_tensor()), stats_before, "{model}");
        let count = if model.starts_with("densenet") {
            "features.norm0.num_batches_tracked"
        } else {
            "bn1.num_batches_tracked"
        };
        assert_eq!(vars[count].as_tensor().to_scalar::<i64>().unwrap(), 2, "{model}");
    }
}

#[test]
fn freeze_bn_keeps_frozen_statistics_and_bad_weights_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = imagenet_like("resnet18", tmp.path());
    let spec = ModelSpec {
        name: "resnet18".into(),
        arch: Arch::named("resnet18").unwrap(),
        head: Head::Linear,
        stem: Stem::ImageNet,
        freeze: Freeze::All,
        freeze_bn: true,
        pretrained: Some(file.display().to_string()),
    };
    let built = spec.build(10, &Device::Cpu, 0).unwrap();
    let names: Vec<&str> = built.trainable.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["fc.bias", "fc.weight"]);
    let before = values(built.varmap.data().lock().unwrap()["layer4.1.bn2.running_var"].as_tensor());
    let x = Tensor::ones((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    built.model.forward(&x, true, &mut Rng::new(0)).unwrap();
    assert_eq!(values(built.varmap.data().lock().unwrap()["layer4.1.bn2.running_var"].as_tensor()), before);

    // resnet18 weights into resnet34: every problem is named with the file.
    let wrong = ModelSpec { name: "resnet34".into(), arch: Arch::named("resnet34").unwrap(), ..spec.clone() };
    let err = wrong.build(10, &Device::Cpu, 0).err().unwrap().to_string();
    assert!(
        err.contains(&file.display().to_string()) && err.contains("tensors are missing (`layer1.2.bn1.bias`"),
        "{err}"
    );
    // A CIFAR stem does not fit ImageNet weights.
    let cifar = ModelSpec { stem: Stem::Cifar, pretrained: Some(file.display().to_string()), ..spec.clone() };
    let err = cifar.build(10, &Device::Cpu, 0).err().unwrap().to_string();
    assert!(err.contains("`conv1.weight` is [64, 3, 7, 7] in the file, [64, 3, 3, 3] in the model"), "{err}");
    // Not a weights file at all.
    std::fs::write(tmp.path().join("junk.pth"), b"PK\x03\x04 not really").unwrap();
    let junk = ModelSpec { pretrained: Some(tmp.path().join("junk.pth").display().to_string()), ..spec };
    let err = junk.build(10, &Device::Cpu, 0).err().unwrap().to_string();
    assert!(err.contains("junk.pth") && err.contains("not a torch.save zip archive"), "{err}");
}

/// Evaluation runs on the inference twin: no autograd graph (so a layer's
/// output is freed once the next has read it), the same logits as the model
/// in eval mode, and the weights and statistics of the latest step.
#[test]
fn the_inference_twin_records_no_graph_and_follows_every_update() {
    use sweep::spec::OptimizerSpec;
    use sweep::train::optim::Optimizer;
    for name in ["smallcnn", "resnet18", "densenet121"] {
        let built = ModelSpec::plain(name).unwrap().build_with(10, &Device::Cpu, 3, DType::F32).unwrap();
        let mut rng = Rng::new(4);
        let x: Vec<f32> = (0..2 * 3 * 64 * 64).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(x, (2, 3, 64, 64), &Device::Cpu).unwrap();
        // 64x64 and a small step: at 32x32 DenseNet's last planes are 1x1, two
        // images per batch leave BatchNorm two values per channel to normalise,
        // and the gradients through those (1 / sqrt(eps) where the two nearly
        // agree) blew the weights up to inf and NaN on some convolution paths.
        let spec: OptimizerSpec = serde_json::from_str(r#"{"name": "sgd", "lr": 0.001, "momentum": 0.9}"#).unwrap();
        let mut opt = Optimizer::new(spec, built.trainable.clone());
        let before = values(&built.inference.forward(&x, false, &mut Rng::new(0)).unwrap());
        for _ in 0..2 {
            let logits = built.model.forward(&x, true, &mut Rng::new(0)).unwrap();
            let y = Tensor::from_vec(vec![1u32, 7], 2, &Device::Cpu).unwrap();
            opt.step(&candle_nn::loss::cross_entropy(&logits, &y).unwrap().backward().unwrap()).unwrap();
        }
        let twin = built.inference.forward(&x, false, &mut Rng::new(0)).unwrap();
        let model = built.model.forward(&x, false, &mut Rng::new(0)).unwrap();
        assert!(!twin.track_op(), "{name}: the inference twin recorded a graph");
        assert!(model.track_op(), "{name}: the training model should record one");
        assert!(values(&twin).iter().all(|v| v.is_finite()), "{name}: {:?}", values(&twin));
        assert_eq!(values(&twin), values(&model), "{name}: the twin sees other weights or statistics");
        assert_ne!(values(&twin), before, "{name}: the steps changed nothing");
    }
}

/// `.pth` files as users save them (`scripts/model_fixtures.py --pth`): a
/// checkpoint dict holding the state_dict, DDP's and torch.compile's key
/// prefixes load as the plain state_dict; a whole pickled model, several
/// state_dicts or none are each an error that says what the file holds.
#[test]
fn pth_checkpoints_as_users_save_them_load_or_say_what_they_hold() {
    use sweep::train::weights::read;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let plain = read(&dir.join("pth_plain.pth")).unwrap();
    let mut keys: Vec<&String> = plain.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["0.bias", "0.weight", "1.bias", "1.num_batches_tracked", "1.running_mean", "1.running_var", "1.weight"]
    );
    for name in ["pth_checkpoint", "pth_one_entry", "pth_ddp", "pth_compiled"] {
        let got = read(&dir.join(format!("{name}.pth"))).unwrap();
        assert_eq!(got.len(), plain.len(), "{name}");
        for (k, t) in &plain {
            let g = got.get(k).unwrap_or_else(|| panic!("{name}: no `{k}`"));
            assert_eq!(g.dims(), t.dims(), "{name}: {k}");
            let diff = (g.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap()).unwrap();
            assert_eq!(diff.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap(), 0.0);
        }
    }
    let err = |name: &str| read(&dir.join(format!("{name}.pth"))).unwrap_err().to_string();
    assert!(
        err("pth_whole_model").ends_with(
            "pth_whole_model.pth: the file holds a whole `torch.nn.modules.container.Sequential` object, not a \
             state_dict: save the weights with `torch.save(model.state_dict(), PATH)`"
        ),
        "{}",
        err("pth_whole_model")
    );
    assert!(
        err("pth_two_models").contains("several state_dicts (`discriminator`, `generator`)"),
        "{}",
        err("pth_two_models")
    );
    assert!(
        err("pth_no_tensors").ends_with(
            "no tensors found: the file holds a dict with the keys `best_acc`, `epoch`, none of them a state_dict"
        ),
        "{}",
        err("pth_no_tensors")
    );
}

/// Images too small for a model's poolings are an error that says so (as
/// PyTorch's "Output size is too small"), in training and in evaluation.
#[test]
fn images_too_small_for_the_model_are_named_as_such() {
    let spec = ModelSpec {
        name: "smallcnn".into(),
        arch: Arch::named("smallcnn").unwrap(),
        head: Head::Linear,
        stem: Stem::ImageNet,
        freeze: Freeze::None,
        freeze_bn: false,
        pretrained: None,
    };
    let built = spec.build(10, &Device::Cpu, 0).unwrap();
    // 8x8 pools to 4, 2, 1; 4x5 to 2x2, then 1x1, which a third 2x2 pool cannot take.
    let ok = Tensor::ones((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    built.model.forward(&ok, true, &mut Rng::new(0)).unwrap();
    let small = Tensor::ones((2, 3, 4, 5), DType::F32, &Device::Cpu).unwrap();
    for train in [true, false] {
        let err = built.model.forward(&small, train, &mut Rng::new(0)).unwrap_err().to_string();
        assert!(err.contains("max-pool 2x2 of a 1x1 plane") && err.contains("too small for this model"), "{err}");
    }
}
