//! Times the CPU convolution forward and backward at given shapes.
//!
//!     cargo run --release --example conv_bench -- N C H W COUT [K STRIDE PAD] [reps]
use candle_core::{Device, Tensor, Var};
use sweep::train::layers::{conv2d, ConvParams};

fn main() -> anyhow::Result<()> {
    sweep::process::tune_for_training();
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse()).collect::<Result<_, _>>()?;
    let (n, c, h, w, cout) = (a[0], a[1], a[2], a[3], a[4]);
    let (k, stride, padding) = (*a.get(5).unwrap_or(&3), *a.get(6).unwrap_or(&1), *a.get(7).unwrap_or(&1));
    let reps = *a.get(8).unwrap_or(&10);
    // 0: both gradients, 1: the kernel's only, 2: the input's only.
    let mode = *a.get(9).unwrap_or(&0);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, c, k, k), &Device::Cpu)?)?;
    let p = ConvParams { padding, stride };
    let (mut f, mut b) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let (xa, wa) = (x.as_tensor().clone(), wt.as_tensor().clone());
        let xa = if mode == 1 { xa.detach() } else { xa };
        let wa = if mode == 2 { wa.detach() } else { wa };
        let y = conv2d(&xa, &wa, p)?;
        f.push(t.elapsed().as_secs_f64() * 1e3);
        let loss = y.sqr()?.sum_all()?;
        let t = std::time::Instant::now();
        let g = loss.backward()?;
        b.push(t.elapsed().as_secs_f64() * 1e3);
        drop(g);
    }
    f.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let flops = 2.0 * (n * cout * c * k * k) as f64 * ((h + 2 * padding - k) / stride + 1).pow(2) as f64;
    println!(
        "{n}x{c}x{h}x{w}->{cout} k{k}: fwd {:.2} ms ({:.0} GF/s)  bwd {:.2} ms ({:.0} GF/s)",
        f[reps / 2],
        flops / f[reps / 2] / 1e6,
        b[reps / 2],
        2.0 * flops / b[reps / 2] / 1e6
    );
    Ok(())
}
