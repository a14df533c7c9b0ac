//! CPU against a GPU on the same tiny batch: builds a model from one seed on
//! both devices, in f32 and in bf16, and compares the loss and the gradient
//! norm of one forward/backward, and the eval-mode loss after it (the running
//! statistics). Exits 1 when they differ by more than the precision allows
//! (f32: 1e-4 relative; bf16: 5e-2 for a whole model), 0 otherwise, and says
//! so when this binary has no CUDA or no GPU answers (exit 0, nothing checked).
//!
//! `ops` instead of a model checks the convolution alone at the zoo's shapes
//! (ResNet's 7x7/2 stem, 3x3 stride 1 and 2, 1x1 stride 1 and 2, DenseNet's
//! 3x3 over a concatenation, VGG's 224x224 layers): output, input gradient
//! and kernel gradient, CPU against the GPU with the kernels that
//! `SWEEP_GPU_KERNELS` chooses (f32: 1e-4, bf16: 2e-2, of the largest value);
//! then max-pooling, BatchNorm (training and eval), three steps of each
//! optimiser (1e-5), the cross-entropy with its gradient and a test
//! batch's numbers (1e-5; counts and predictions equal), and a resident
//! split's batches (1e-5).
//!
//! With `SWEEP_GPU_KERNELS=cudnn-nhwc` the GPU side runs channels-last: the
//! convolutions turn their inputs channels-last themselves; max-pool and
//! BatchNorm are fed channels-last inputs (as a convolution would give them),
//! and every GPU output is checked to have kept that layout.
//!
//!     cargo run --release --features cuda --example device_check -- [model|ops] [size] [cuda:N]

use candle_core::{DType, Device, Tensor, Var};
use sweep::train::layers::{as_activation, conv2d, is_channels_last, max_pool2d, ConvParams, PoolParams};
use sweep::train::models::ModelSpec;
use sweep::train::rng::Rng;

/// Each parameter's gradient norm, by name.
type Norms = Vec<(String, f32)>;

/// Loss and gradient norm of one training step, and the loss in eval mode
/// after it (which reads the running statistics that step updated); with
/// each parameter's gradient norm.
fn loss_and_grad_norm(
    spec: &ModelSpec,
    device: &Device,
    compute: DType,
    size: usize,
) -> anyhow::Result<(f32, f32, f32, Norms)> {
    let built = spec.build_with(10, device, 0, compute).map_err(anyhow::Error::msg)?;
    let mut rng = Rng::new(7);
    let n = 4;
    let x: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.next_f64() as f32).collect();
    let x = Tensor::from_vec(x, (n, 3, size, size), device)?;
    let y = Tensor::from_vec(vec![1u32, 3, 5, 7], n, device)?;
    let logits = built.model.forward(&x, true, &mut Rng::new(0))?;
    let loss = sweep::train::cross_entropy(&logits, &y, 0.0)?;
    let grads = loss.backward_freeing_graph()?;
    let mut sq = 0f64;
    let mut norms = Vec::new();
    for (name, var) in &built.trainable {
        if let Some(g) = grads.get(var.as_tensor()) {
            let s = f64::from(g.sqr()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            sq += s;
            norms.push((name.clone(), s.sqrt() as f32));
        }
    }
    // the trainer evaluates through the inference twin (no graph; on CUDA
    // BatchNorm's eval kernel)
    let eval = sweep::train::cross_entropy(&built.inference.forward(&x, false, &mut Rng::new(0))?, &y, 0.0)?;
    let scalar = |t: &Tensor| -> anyhow::Result<f32> { Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?) };
    Ok((scalar(&loss)?, sq.sqrt() as f32, scalar(&eval)?, norms))
}

/// Output, input gradient and kernel gradient of one convolution on `device`
/// in `compute`, all as f32; the loss is `sum(y * r)`, so dy = r.
fn conv_case(
    device: &Device,
    compute: DType,
    (x, xd): (&[f32], (usize, usize, usize, usize)),
    (w, wd): (&[f32], (usize, usize, usize, usize)),
    p: ConvParams,
) -> anyhow::Result<[Vec<f32>; 3]> {
    let xv = Var::from_vec(x.to_vec(), xd, device)?;
    let wv = Var::from_vec(w.to_vec(), wd, device)?;
    let y = conv2d(&xv.to_dtype(compute)?, &wv.to_dtype(compute)?, p)?;
    layout_kept(device, &y, "conv2d");
    let mut rng = Rng::new(3);
    let r: Vec<f32> = (0..y.elem_count()).map(|_| rng.normal() as f32).collect();
    let r = Tensor::from_vec(r, y.shape(), device)?.to_dtype(compute)?.to_dtype(DType::F32)?;
    let y = y.to_dtype(DType::F32)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let flat =
        |t: &Tensor| -> anyhow::Result<Vec<f32>> { Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?) };
    let dx = grads.get(xv.as_tensor()).ok_or_else(|| anyhow::anyhow!("no input gradient"))?;
    let dw = grads.get(wv.as_tensor()).ok_or_else(|| anyhow::anyhow!("no kernel gradient"))?;
    Ok([flat(&y)?, flat(dx)?, flat(dw)?])
}

/// Under `SWEEP_GPU_KERNELS=cudnn-nhwc`, says so when a GPU op's output is
/// not channels-last (a silent fall-back to NCHW would pass the value checks).
fn layout_kept(device: &Device, y: &Tensor, what: &str) {
    let nhwc = sweep::train::layers::gpu_kernels() == sweep::train::layers::GpuKernels::CudnnNhwc;
    if nhwc && device.is_cuda() && !is_channels_last(y) {
        println!("   {what}: output NOT channels-last (dims {:?}, strides {:?})", y.dims(), y.stride());
        NOT_KEPT.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Set when an output lost the channels-last layout (fails the check).
static NOT_KEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Largest difference relative to the reference's largest magnitude.
fn rel(a: &[f32], reference: &[f32]) -> f32 {
    if a.len() != reference.len() {
        return f32::INFINITY;
    }
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(reference).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check_ops(gpu: &Device) -> anyhow::Result<bool> {
    // (name, input dims, output channels, kernel, padding, stride)
    let cases = [
        ("resnet stem 7x7/2", (8, 3, 224, 224), 64, 7, 3, 2),
        ("resnet 3x3", (8, 64, 56, 56), 64, 3, 1, 1),
        ("resnet 3x3/2", (8, 64, 56, 56), 128, 3, 1, 2),
        ("resnet downsample 1x1/2", (8, 64, 56, 56), 128, 1, 0, 2),
        ("bottleneck 1x1", (8, 256, 56, 56), 64, 1, 0, 1),
        ("densenet 3x3 after concat", (8, 128, 28, 28), 32, 3, 1, 1),
        ("densenet 1x1 over 544 channels", (8, 544, 14, 14), 128, 1, 0, 1),
        ("vgg 3x3 at 224, 3 channels", (2, 3, 224, 224), 64, 3, 1, 1),
        ("vgg 3x3 at 224, 64 channels", (2, 64, 224, 224), 64, 3, 1, 1),
    ];
    let mut ok = true;
    for (name, xd, cout, k, padding, stride) in cases {
        let mut rng = Rng::new(11);
        // bf16-representable inputs (candle's rounding), so the two precisions see the same values
        let bf = |v: Vec<f32>| -> anyhow::Result<Vec<f32>> {
            let n = v.len();
            Ok(Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.to_vec1()?)
        };
        let x = bf((0..xd.0 * xd.1 * xd.2 * xd.3).map(|_| rng.normal() as f32).collect())?;
        let wd = (cout, xd.1, k, k);
        let w = bf((0..cout * xd.1 * k * k).map(|_| rng.normal() as f32 * 0.1).collect())?;
        let p = ConvParams { padding, stride };
        let reference = conv_case(&Device::Cpu, DType::F32, (&x, xd), (&w, wd), p)?;
        for (compute, tol) in [(DType::F32, 1e-4f32), (DType::BF16, 2e-2)] {
            let got = conv_case(gpu, compute, (&x, xd), (&w, wd), p)?;
            let errs: Vec<f32> = got.iter().zip(&reference).map(|(g, r)| rel(g, r)).collect();
            let pass = errs.iter().all(|e| *e < tol);
            ok &= pass;
            println!(
                "conv {name} {xd:?} -> {cout}: {compute:?} y {:.1e} dx {:.1e} dw {:.1e} (tolerance {tol:.0e}): {}",
                errs[0],
                errs[1],
                errs[2],
                if pass { "ok" } else { "DIFFERENT" }
            );
        }
    }
    Ok(ok)
}

/// Max-pool output and input gradient, CPU against the GPU (f32, random
/// inputs, so no ties): the ResNet/DenseNet stem's 3x3/2 with padding 1 and
/// VGG's 2x2/2.
fn check_pools(gpu: &Device) -> anyhow::Result<bool> {
    let cases = [
        ("stem 3x3/2 pad 1", (8, 64, 112, 112), PoolParams { kernel: 3, stride: 2, padding: 1 }),
        ("2x2/2", (8, 64, 56, 56), PoolParams { kernel: 2, stride: 2, padding: 0 }),
        ("2x2/2 odd size", (4, 32, 15, 15), PoolParams { kernel: 2, stride: 2, padding: 0 }),
    ];
    let mut ok = true;
    for (name, xd, p) in cases {
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..xd.0 * xd.1 * xd.2 * xd.3).map(|_| rng.normal() as f32).collect();
        let run = |device: &Device| -> anyhow::Result<[Vec<f32>; 2]> {
            let xv = Var::from_vec(x.clone(), xd, device)?;
            let y = max_pool2d(&as_activation(xv.as_tensor())?, p)?;
            layout_kept(device, &y, "max_pool2d");
            let mut rng = Rng::new(9);
            let r: Vec<f32> = (0..y.elem_count()).map(|_| rng.normal() as f32).collect();
            let r = Tensor::from_vec(r, y.shape(), device)?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let dx = grads.get(xv.as_tensor()).ok_or_else(|| anyhow::anyhow!("no input gradient"))?;
            Ok([y.flatten_all()?.to_vec1::<f32>()?, dx.flatten_all()?.to_vec1::<f32>()?])
        };
        let (want, got) = (run(&Device::Cpu)?, run(gpu)?);
        let (ey, edx) = (rel(&got[0], &want[0]), rel(&got[1], &want[1]));
        let pass = ey < 1e-6 && edx < 1e-6;
        ok &= pass;
        println!(
            "max_pool {name} {xd:?}: y {ey:.1e} dx {edx:.1e} (tolerance 1e-6): {}",
            if pass { "ok" } else { "DIFFERENT" }
        );
    }
    Ok(ok)
}

/// Three optimiser steps on a conv weight and a bias (weight decay skips
/// neither here), CPU against the GPU (with `SWEEP_GPU_KERNELS=cudnn`, the
/// fused in-place kernels): SGD with momentum and weight decay, Nesterov,
/// plain SGD, Adam with coupled weight decay, AdamW with AMSGrad.
fn check_optimizers(gpu: &Device) -> anyhow::Result<bool> {
    use sweep::spec::OptimizerSpec;
    use sweep::train::optim::Optimizer;
    let specs = [
        r#"{"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}"#,
        r#"{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": true, "weight_decay": 1e-3}"#,
        r#"{"name": "sgd", "lr": 0.05}"#,
        r#"{"name": "adam", "lr": 1e-3, "weight_decay": 1e-4}"#,
        r#"{"name": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "amsgrad": true}"#,
    ];
    let mut ok = true;
    for json in specs {
        let spec: OptimizerSpec = serde_json::from_str(json)?;
        let run = |device: &Device| -> anyhow::Result<Vec<f32>> {
            let mut rng = Rng::new(21);
            let mut randn = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
            let w = Var::from_vec(randn(64 * 3 * 3 * 3), (64, 3, 3, 3), device)?;
            let b = Var::from_vec(randn(64), 64, device)?;
            let mut opt = Optimizer::new(spec.clone(), vec![("w".into(), w.clone()), ("b".into(), b.clone())]);
            for _ in 0..3 {
                let rw = Tensor::from_vec(randn(64 * 27), (64, 3, 3, 3), device)?;
                let rb = Tensor::from_vec(randn(64), 64, device)?;
                let loss = ((w.as_tensor() * &rw)?.sum_all()? + (b.as_tensor() * &rb)?.sum_all()?)?;
                opt.step(&loss.backward()?)?;
            }
            let mut out = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            out.extend(b.as_tensor().to_vec1::<f32>()?);
            Ok(out)
        };
        let (want, got) = (run(&Device::Cpu)?, run(gpu)?);
        let e = rel(&got, &want);
        let pass = e < 1e-5;
        ok &= pass;
        println!(
            "optimizer {json}: 3 steps, weights {e:.1e} (tolerance 1e-5): {}",
            if pass { "ok" } else { "DIFFERENT" }
        );
    }
    Ok(ok)
}

/// The training loss (with and without label smoothing) and its logits'
/// gradient, and a test batch's numbers (loss sum, top-1 and top-5 hits,
/// each prediction), CPU (candle's ops) against the GPU (with the `cudnn`
/// sets one kernel each: `ce_cuda.rs`), at the trainer's and the test pass's
/// batch sizes, 10 and 1000 classes, with a tie for the first maximum.
fn check_cross_entropy(gpu: &Device) -> anyhow::Result<bool> {
    let mut ok = true;
    for (n, c, smoothing) in [(50, 10, 0.0), (50, 10, 0.1), (256, 10, 0.0), (256, 1000, 0.1), (300, 7, 0.0)] {
        let mut rng = Rng::new(5);
        let mut x: Vec<f32> = (0..n * c).map(|_| 3.0 * rng.normal() as f32).collect();
        (x[2], x[3]) = (40.0, 40.0);
        let y: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % c) as u32).collect();
        let run = |device: &Device| -> anyhow::Result<(f32, Vec<f32>, sweep::train::BatchNumbers)> {
            let logits = Var::from_vec(x.clone(), (n, c), device)?;
            let labels = Tensor::from_vec(y.clone(), n, device)?;
            let loss = sweep::train::cross_entropy(logits.as_tensor(), &labels, smoothing)?;
            let grads = loss.backward()?;
            let dx = grads.get(logits.as_tensor()).expect("a gradient").flatten_all()?.to_vec1::<f32>()?;
            let numbers = sweep::train::batch_numbers(logits.as_tensor(), &labels)?;
            let numbers = sweep::train::read_numbers(vec![numbers])?.remove(0);
            Ok((loss.to_scalar::<f32>()?, dx, numbers))
        };
        let ((cl, cdx, cn), (gl, gdx, gn)) = (run(&Device::Cpu)?, run(gpu)?);
        let (el, edx, es) = (rel(&[gl], &[cl]), rel(&gdx, &cdx), rel(&[gn.loss_sum as f32], &[cn.loss_sum as f32]));
        let counts = (gn.correct, gn.top5) == (cn.correct, cn.top5) && gn.predicted == cn.predicted;
        let pass = el < 1e-5 && edx < 1e-5 && es < 1e-5 && counts;
        ok &= pass;
        println!(
            "cross_entropy ({n}, {c}) smoothing {smoothing}: loss {el:.1e} dx {edx:.1e}; test numbers: loss sum {es:.1e}, top-1 {} / {}, top-5 {} / {}, predictions {} (tolerance 1e-5): {}",
            gn.correct,
            cn.correct,
            gn.top5,
            cn.top5,
            if gn.predicted == cn.predicted { "equal" } else { "differ" },
            if pass { "ok" } else { "DIFFERENT" }
        );
    }
    Ok(ok)
}

/// A resident split's batches (`Pipeline::resident`: the split uploaded once,
/// crops and flips as index maps, the resize and normalisation on the
/// device), the CPU's tensor ops against the GPU's (with the `cudnn` sets
/// one kernel per batch, `pixels_cuda.rs`): images within 1e-5, labels equal;
/// the report's chains, the term report's 32 -> 224 among them.
fn check_resident_batches(gpu: &Device) -> anyhow::Result<bool> {
    use sweep::spec::Transform;
    use sweep::train::data::Split;
    use sweep::train::loader::Pipeline;
    #[derive(serde::Deserialize)]
    struct T {
        t: Vec<Transform>,
    }
    let chains = [
        r#"t = [{ random_crop = { size = 32, padding = 4 } }, { hflip = {} }, { resize = { size = 224 } }, { normalize = "cifar10" }]"#,
        r#"t = [{ resize = { size = 224 } }, { normalize = "cifar10" }]"#,
        r#"t = [{ random_crop = { size = 28, padding = 3, padding_mode = "reflect" } }, { hflip = { p = 0.7 } }]"#,
        r"t = [{ hflip = {} }, { random_crop = { size = 30, padding = 5, fill = 128 } }, { center_crop = { size = 26 } }]",
        r#"t = [{ center_crop = { size = 36 } }, { resize = { size = 20 } }, { normalize = "imagenet" }]"#,
    ];
    let n = 23;
    let bytes: Vec<u8> = (0..n * 3 * 32 * 32).map(|i| (i * 31 % 256) as u8).collect();
    let split = Split::uniform(bytes, (0..n as u32).map(|i| i % 10).collect(), 32, 32);
    let order: Vec<usize> = (0..n).rev().collect();
    let mut ok = true;
    for text in chains {
        let t = toml::from_str::<T>(text)?.t;
        let run = |device: &Device| -> anyhow::Result<Vec<(Vec<f32>, Vec<u32>)>> {
            let pipe =
                Pipeline::resident(&t, &split, device)?.ok_or_else(|| anyhow::anyhow!("not resident: {text}"))?;
            let mut out = Vec::new();
            for idx in order.chunks(8) {
                let (x, y) = pipe.to_tensors(&pipe.host_batch(&split, idx, 7, 3), device)?;
                out.push((x.flatten_all()?.to_vec1::<f32>()?, y.to_vec1::<u32>()?));
            }
            Ok(out)
        };
        let (want, got) = (run(&Device::Cpu)?, run(gpu)?);
        let mut e = 0f32;
        let mut labels = want.len() == got.len();
        for ((wx, wy), (gx, gy)) in want.iter().zip(&got) {
            e = e.max(rel(gx, wx));
            labels &= wy == gy;
        }
        let pass = e < 1e-5 && labels;
        ok &= pass;
        println!(
            "resident batches {text}: images {e:.1e}, labels {} (tolerance 1e-5): {}",
            if labels { "equal" } else { "differ" },
            if pass { "ok" } else { "DIFFERENT" }
        );
    }
    Ok(ok)
}

/// BatchNorm in training (batch statistics: output, the three gradients,
/// the running statistics after the step) and in eval mode without
/// gradients, CPU against the GPU, f32 and bf16 activations, at the stem's
/// shape and an odd one; alone, followed by a ReLU, and as a ResNet block's
/// end `relu(bn(x) + residual)` (with the residual's gradient), each of which
/// the GPU computes in the same kernels.
fn check_batch_norm(gpu: &Device) -> anyhow::Result<bool> {
    use sweep::train::models::nn::Builder;
    let mut ok = true;
    for dims in [(8usize, 64usize, 112usize, 112usize), (3, 5, 7, 9)] {
        let mut rng = Rng::new(13);
        let bf = |v: Vec<f32>| -> anyhow::Result<Vec<f32>> {
            let n = v.len();
            Ok(Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.to_vec1()?)
        };
        let x = bf((0..dims.0 * dims.1 * dims.2 * dims.3).map(|_| rng.normal() as f32 * 2.0 + 0.5).collect())?;
        let r: Vec<f32> = bf((0..x.len()).map(|_| rng.normal() as f32).collect())?;
        let residual = bf((0..x.len()).map(|_| rng.normal() as f32 * 0.5).collect())?;
        let gamma: Vec<f32> = (0..dims.1).map(|_| 1.0 + rng.normal() as f32 * 0.2).collect();
        let run = |device: &Device, dtype: DType, mode: &str| -> anyhow::Result<Vec<Vec<f32>>> {
            let varmap = candle_nn::VarMap::new();
            let no = |_: &str| false;
            let mut b = Builder::new(&varmap, device, &no, false);
            let bn = b.bn("bn", dims.1)?;
            let data = varmap.data().lock().expect("varmap").clone();
            data["bn.weight"].set(&Tensor::from_vec(gamma.clone(), dims.1, device)?)?;
            data["bn.bias"].set(&(Tensor::from_vec(gamma.clone(), dims.1, device)? - 1.0)?)?;
            data["bn.running_var"].set(&Tensor::ones(dims.1, DType::F32, device)?)?;
            // the same layer over detached views (the inference twin's)
            let all = |_: &str| true;
            let frozen = Builder::new(&varmap, device, &all, false).bn("bn", dims.1)?;
            let xv = Var::from_vec(x.clone(), dims, device)?;
            let rv = Var::from_vec(residual.clone(), dims, device)?;
            let apply = |bn: &sweep::train::models::nn::BatchNorm, x: &Tensor, res: &Tensor, train: bool| match mode {
                "relu" => bn.forward_relu(x, train),
                "add_relu" => bn.forward_add_relu(x, res, train),
                _ => bn.forward(x, train),
            };
            let (xa, ra) =
                (as_activation(&xv.as_tensor().to_dtype(dtype)?)?, as_activation(&rv.as_tensor().to_dtype(dtype)?)?);
            let y = apply(&bn, &xa, &ra, true)?;
            layout_kept(device, &y, "batch_norm");
            let y = y.to_dtype(DType::F32)?;
            let rt = Tensor::from_vec(r.clone(), dims, device)?;
            let grads = (&y * &rt)?.sum_all()?.backward()?;
            let flat = |t: &Tensor| -> anyhow::Result<Vec<f32>> {
                Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            };
            let g = |v: &Var| grads.get(v.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient"));
            let plain = |v: &Vec<f32>| as_activation(&Tensor::from_vec(v.clone(), dims, device)?.to_dtype(dtype)?);
            let eval = apply(&frozen, &plain(&x)?, &plain(&residual)?, false)?;
            layout_kept(device, &eval, "batch_norm eval");
            Ok(vec![
                flat(&y)?,
                flat(g(&xv)?)?,
                flat(g(&data["bn.weight"])?)?,
                flat(g(&data["bn.bias"])?)?,
                flat(data["bn.running_mean"].as_tensor())?,
                flat(data["bn.running_var"].as_tensor())?,
                flat(&eval)?,
                if mode == "add_relu" { flat(g(&rv)?)? } else { Vec::new() },
            ])
        };
        for mode in ["alone", "relu", "add_relu"] {
            let want = run(&Device::Cpu, DType::F32, mode)?;
            for (dtype, tol) in [(DType::F32, 1e-4f32), (DType::BF16, 2e-2)] {
                let got = run(gpu, dtype, mode)?;
                // A pre-activation within rounding of zero may be clipped on one side and
                // not the other: such elements (a tiny output against a zero) pass the
                // gradient on one side only, and are left out of the gradients' comparison.
                let (gy, wy) = (&got[0], &want[0]);
                let tiny = 1e-3 * wy.iter().fold(0f32, |m, v| m.max(v.abs()));
                let tie: Vec<bool> =
                    gy.iter().zip(wy).map(|(a, b)| (*a == 0.0) != (*b == 0.0) && a.abs().max(b.abs()) < tiny).collect();
                let keep = |v: &[f32]| -> Vec<f32> {
                    if v.len() == tie.len() {
                        v.iter().zip(&tie).map(|(x, t)| if *t { 0.0 } else { *x }).collect()
                    } else {
                        v.to_vec()
                    }
                };
                let errs: Vec<f32> = got.iter().zip(&want).map(|(g, w)| rel(&keep(g), &keep(w))).collect();
                let pass = errs.iter().all(|e| *e < tol);
                ok &= pass;
                let dres = if mode == "add_relu" { format!(" dresidual {:.1e}", errs[7]) } else { String::new() };
                let ties = tie.iter().filter(|t| **t).count();
                let ties = if ties > 0 { format!(" ({ties} ties at zero left out)") } else { String::new() };
                println!(
                    "batch_norm {mode} {dims:?} {dtype:?}: y {:.1e} dx {:.1e} dw {:.1e} db {:.1e} running mean {:.1e} var {:.1e} eval {:.1e}{dres}{ties} (tolerance {tol:.0e}): {}",
                    errs[0], errs[1], errs[2], errs[3], errs[4], errs[5], errs[6],
                    if pass { "ok" } else { "DIFFERENT" }
                );
            }
        }
    }
    Ok(ok)
}

/// The f32 CPU step of [`loss_and_grad_norm`] with the 3x3 convolutions on
/// the CPU path `mode` (`SWEEP_CPU_CONV` is read once per process, so in a
/// child process).
fn cpu_step_with(mode: &str, model: &str, size: usize) -> anyhow::Result<(f32, f32, f32)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--cpu-step", model, &size.to_string()])
        .env("SWEEP_CPU_CONV", mode)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f32> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match v.as_slice() {
        [l, g, e] => Ok((*l, *g, *e)),
        _ => anyhow::bail!("the {mode} CPU step printed {text:?} ({})", String::from_utf8_lossy(&out.stderr)),
    }
}

#[allow(unsafe_code)] // setting SWEEP_CPU_CONV at start-up: see the SAFETY comment
fn main() -> anyhow::Result<()> {
    if std::env::var_os(sweep::env::CPU_CONV.name).is_none() {
        // The CPU reference computes its 3x3 stride-1 layers directly, which rounds as
        // im2col does: `auto` would take Winograd's F(4x4, 3x3) on VGG's layers at these
        // sizes, whose 1e-5 of the largest value (BENCHMARKS.md) is a tenth of the f32
        // tolerance of a whole model's check.
        // SAFETY: at start-up, before this process starts other threads.
        unsafe { std::env::set_var(sweep::env::CPU_CONV.name, "direct") };
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--cpu-step") {
        let spec = ModelSpec::plain(&args[2]).map_err(anyhow::Error::msg)?;
        let (l, g, e, _) = loss_and_grad_norm(&spec, &Device::Cpu, DType::F32, args[3].parse()?)?;
        println!("{l} {g} {e}");
        return Ok(());
    }
    let model = args.get(1).map_or("resnet18", String::as_str);
    let size: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let which = args.get(3).map_or("cuda:0", String::as_str);
    let choice: sweep::spec::DeviceChoice = which.parse()?;
    let gpu = match sweep::train::device(choice) {
        Ok((d, text)) if !d.is_cpu() => {
            println!("device: {text}");
            d
        }
        Ok(_) | Err(_) => {
            println!("device_check: no GPU ({which}) in this build or on this machine; nothing checked");
            return Ok(());
        }
    };
    if model == "ops" {
        let ok = check_ops(&gpu)?
            & check_pools(&gpu)?
            & check_batch_norm(&gpu)?
            & check_optimizers(&gpu)?
            & check_cross_entropy(&gpu)?
            & check_resident_batches(&gpu)?;
        let kept = !NOT_KEPT.load(std::sync::atomic::Ordering::Relaxed);
        if !kept {
            println!("channels-last: some GPU outputs lost the layout: DIFFERENT");
        }
        std::process::exit(i32::from(!(ok && kept)));
    }
    let spec = ModelSpec::plain(model).map_err(anyhow::Error::msg)?;
    let mut ok = true;
    // bf16 over a whole model: the CPU emulation rounds what the GPU rounds
    // to bf16 (operands, convolution and BatchNorm outputs) but sums in
    // another order and keeps ReLU's and the residual sums' inputs in f32,
    // and the difference grows with depth (2-6% on the 50-121-layer models),
    // so 5e-2 there; each op alone is held to 2e-2 (`ops`).
    // f32: 1e-4, or 4x what the CPU's own convolution paths (auto, direct and
    // im2col: the same arithmetic summed in other orders) differ by, where
    // the step amplifies rounding more than that (resnet50 at init: its
    // gradient norm, 98% the stem's, moves by 1.2e-3 between them on one CPU).
    for (compute, base) in [(DType::F32, 1e-4f32), (DType::BF16, 5e-2)] {
        let (cl, cg, ce, cpu_norms) = loss_and_grad_norm(&spec, &Device::Cpu, compute, size)?;
        let (gl, gg, ge, gpu_norms) = loss_and_grad_norm(&spec, &gpu, compute, size)?;
        let r = |a: f32, b: f32| (a - b).abs() / a.abs();
        let (dl, dg, de) = (r(cl, gl), r(cg, gg), r(ce, ge));
        let (tol, spread) = if compute == DType::F32 {
            // the CPU's four paths (auto, im2col, direct, winograd), every pair
            let mut runs = vec![(cl, cg, ce)];
            for mode in ["im2col", "direct", "winograd"] {
                runs.push(cpu_step_with(mode, model, size)?);
            }
            let mut spread = 0f32;
            for (i, a) in runs.iter().enumerate() {
                for b in &runs[i + 1..] {
                    spread = spread.max(r(a.0, b.0)).max(r(a.1, b.1)).max(r(a.2, b.2));
                }
            }
            (base.max(4.0 * spread), format!("; the CPU's own convolution paths differ by {spread:.1e}"))
        } else {
            (base, String::new())
        };
        let pass = dl < tol && dg < tol && de < tol;
        ok &= pass;
        println!(
            "{model} {size}x{size} {compute:?}: loss cpu {cl:.6} gpu {gl:.6} (rel {dl:.1e}); grad norm cpu {cg:.6} gpu {gg:.6} (rel {dg:.1e}); eval loss after the step cpu {ce:.6} gpu {ge:.6} (rel {de:.1e}){spread}; tolerance {tol:.1e}: {}",
            if pass { "ok" } else { "DIFFERENT" }
        );
        if !pass {
            // where it differs: the parameters whose gradient norms differ most
            let mut worst: Vec<(f32, &str, f32, f32)> = cpu_norms
                .iter()
                .zip(&gpu_norms)
                .map(|((name, c), (_, g))| ((c - g).abs() / c.abs().max(1e-12), name.as_str(), *c, *g))
                .collect();
            worst.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (d, name, c, g) in worst.iter().take(6) {
                println!("   {name}: gradient norm cpu {c:.6} gpu {g:.6} (rel {d:.1e})");
            }
        }
    }
    std::process::exit(i32::from(!ok));
}
