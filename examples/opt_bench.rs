//! Times the optimiser's step on the CPU, for BENCHMARKS.md (PyTorch's side:
//! bench/opt_torch.py): `n` f32 weights in four tensors (ResNet18 has 11.7
//! million), gradients from a real backward pass, the median and best of 12
//! steps after the first.
//!
//!     cargo run --release --example opt_bench -- [n] [sgd|adam]
use candle_core::{Device, Tensor, Var};
use sweep::spec::OptimizerSpec;
use sweep::train::optim::Optimizer;

fn main() -> anyhow::Result<()> {
    sweep::process::tune_for_training();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(11_700_000);
    let rule = args.next().unwrap_or_else(|| "sgd".into());
    let spec = match rule.as_str() {
        "sgd" => OptimizerSpec::Sgd {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 5e-4,
            decay_bn_bias: true,
            clip_grad_norm: None,
        },
        "adam" => OptimizerSpec::Adam {
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            decay_bn_bias: true,
            clip_grad_norm: None,
        },
        other => anyhow::bail!("unknown rule {other:?} (sgd or adam)"),
    };
    let sizes = [n / 4, n / 4, n / 4, n - 3 * (n / 4)];
    let randn = |s: usize| Tensor::randn(0f32, 1.0, s, &Device::Cpu);
    let vars = sizes.iter().enumerate().map(|(i, &s)| Ok((format!("p{i}"), Var::from_tensor(&randn(s)?)?)));
    let vars: Vec<(String, Var)> = vars.collect::<candle_core::Result<_>>()?;
    let pulls: Vec<Tensor> = sizes.iter().map(|&s| randn(s)).collect::<candle_core::Result<_>>()?;
    let mut opt = Optimizer::new(spec, vars.clone());
    let mut ms = Vec::new();
    for _ in 0..13 {
        // loss = sum(w * c): each gradient is c, a tensor of its own.
        let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
        for ((_, v), c) in vars.iter().zip(&pulls) {
            loss = (loss + v.as_tensor().mul(c)?.sum_all()?)?;
        }
        let grads = loss.backward()?;
        let start = std::time::Instant::now();
        opt.step(&grads)?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut ms = ms.split_off(1);
    ms.sort_by(f64::total_cmp);
    println!("sweep {rule} step of {n} weights: median {:.2} ms, best {:.2} ms", ms[ms.len() / 2], ms[0]);
    Ok(())
}
