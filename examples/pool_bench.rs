//! One max-pool (3x3, stride 2, padding 1: the ResNet/DenseNet stem's) on an
//! `N C H H` input, best of 10 in each of three rounds: without indices (input
//! that tracks no gradient: test passes, frozen stems) and with them (training).
//!
//!     cargo run --release --example pool_bench -- 50 64 112    # ResNet18's stem at 224, batch 50

use candle_core::{Device, Tensor, Var};
use sweep::train::layers::{max_pool2d, PoolParams};

fn main() -> anyhow::Result<()> {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse()).collect::<Result<_, _>>()?;
    let [n, c, h] = a[..] else { anyhow::bail!("usage: pool_bench N C H") };
    let v: Vec<f32> = (0..n * c * h * h).map(|i| ((i * 7919) % 1000) as f32).collect();
    let plain = Tensor::from_vec(v.clone(), (n, c, h, h), &Device::Cpu)?;
    let tracked = Var::from_vec(v, (n, c, h, h), &Device::Cpu)?;
    let p = PoolParams { kernel: 3, stride: 2, padding: 1 };
    for _ in 0..3 {
        let mut best = [f64::MAX; 2];
        for _ in 0..10 {
            for (k, x) in [&plain, tracked.as_tensor()].into_iter().enumerate() {
                let start = std::time::Instant::now();
                drop(max_pool2d(x, p)?);
                best[k] = best[k].min(start.elapsed().as_secs_f64());
            }
        }
        println!("without indices {:.2} ms, with indices {:.2} ms", best[0] * 1e3, best[1] * 1e3);
    }
    Ok(())
}
