//! Training BatchNorm + ReLU on the CPU at the shapes of DenseNet169's
//! layers at 32x32 (batch 128): the best of REPS calls (default 50) of the
//! forward pass (the batch statistics and the normalisation) and of the
//! backward pass, for the benchmarks of BENCHMARKS.md ("small planes").
//!
//!     RAYON_NUM_THREADS=1 cargo run --release --example bn_bench [-- N C H W]
//!
//! The backward pass is timed through `(y * g).sum()`, whose own backward
//! (timed alone with `y = x`) is subtracted: the `net` column.

use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;

/// The best of `reps` runs of `f`, in milliseconds.
fn best(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut t = f64::MAX;
    for _ in 0..reps {
        t = t.min(f()?);
    }
    Ok(t * 1e3)
}

fn main() -> Result<()> {
    sweep::process::tune_for_training();
    let dev = Device::Cpu;
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("N C H W: whole numbers")).collect();
    let shapes = match args[..] {
        [n, c, h, w] => vec![(n, c, h, w)],
        _ => vec![(128, 224, 8, 8), (128, 480, 4, 4), (128, 1248, 2, 2), (128, 1632, 1, 1)],
    };
    let reps = std::env::var("REPS").map_or(50, |v| v.parse().expect("REPS: a whole number"));
    for (n, c, h, w) in shapes {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let weight = Var::from_tensor(&Tensor::ones(c, DType::F32, &dev)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(c, DType::F32, &dev)?)?;
        let g = Tensor::randn(0f32, 1., (n, c, h, w), &dev)?;
        let forward = || {
            let (mean, var) = sweep::train::layers::channel_stats(x.as_tensor())?;
            let (x, weight, bias) = (x.as_tensor(), weight.as_tensor(), bias.as_tensor());
            sweep::train::layers::batch_norm_cpu(x, weight, bias, mean, &var, 1e-5, true, true)
        };
        let timed_backward = |y: Tensor| {
            let loss = y.mul(&g)?.sum_all()?;
            let t = Instant::now();
            let grads = loss.backward()?;
            let s = t.elapsed().as_secs_f64();
            drop(grads);
            Ok(s)
        };
        let fwd = best(reps, || {
            let t = Instant::now();
            let y = forward()?;
            let s = t.elapsed().as_secs_f64();
            drop(y);
            Ok(s)
        })?;
        let bwd = best(reps, || timed_backward(forward()?))?;
        let alone = best(reps, || timed_backward(x.as_tensor().clone()))?;
        println!(
            "{n}x{c}x{h}x{w}: forward {fwd:.3} ms, backward {bwd:.3} ms (net {:.3} ms; the product and sum alone {alone:.3} ms)",
            bwd - alone
        );
    }
    Ok(())
}
