//! CPU against a GPU on the same tiny batch: builds a model from one seed on
//! both devices, in f32 and in bf16, and compares the loss and the gradient
//! norm of one forward/backward. Exits 1 when they differ by more than the
//! precision allows (f32: 1e-4 relative; bf16: 2e-2), 0 otherwise, and says
//! so when this binary has no CUDA or no GPU answers (exit 0, nothing checked).
//!
//!     cargo run --release --features cuda --example device_check -- [model] [size] [cuda:N]

use candle_core::{DType, Device, Tensor};
use sweep::train::models::ModelSpec;
use sweep::train::rng::Rng;

fn loss_and_grad_norm(spec: &ModelSpec, device: &Device, compute: DType, size: usize) -> anyhow::Result<(f32, f32)> {
    let built = spec.build_with(10, device, 0, compute).map_err(anyhow::Error::msg)?;
    let mut rng = Rng::new(7);
    let n = 4;
    let x: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.next_f64() as f32).collect();
    let x = Tensor::from_vec(x, (n, 3, size, size), device)?;
    let y = Tensor::from_vec(vec![1u32, 3, 5, 7], n, device)?;
    let logits = built.model.forward(&x, true, &mut Rng::new(0))?;
    let loss = sweep::train::cross_entropy(&logits, &y, 0.0)?;
    let grads = loss.backward()?;
    let mut sq = 0f64;
    for (_, var) in &built.trainable {
        if let Some(g) = grads.get(var.as_tensor()) {
            sq += f64::from(g.sqr()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        }
    }
    Ok((loss.to_dtype(DType::F32)?.to_scalar::<f32>()?, sq.sqrt() as f32))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
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
    let spec = ModelSpec::plain(model).map_err(anyhow::Error::msg)?;
    let mut ok = true;
    for (compute, tol) in [(DType::F32, 1e-4f32), (DType::BF16, 2e-2)] {
        let (cl, cg) = loss_and_grad_norm(&spec, &Device::Cpu, compute, size)?;
        let (gl, gg) = loss_and_grad_norm(&spec, &gpu, compute, size)?;
        let (dl, dg) = ((cl - gl).abs() / cl.abs(), (cg - gg).abs() / cg.abs());
        let pass = dl < tol && dg < tol;
        ok &= pass;
        println!(
            "{model} {size}x{size} {compute:?}: loss cpu {cl:.6} gpu {gl:.6} (rel {dl:.1e}); grad norm cpu {cg:.6} gpu {gg:.6} (rel {dg:.1e}); tolerance {tol:.0e}: {}",
            if pass { "ok" } else { "DIFFERENT" }
        );
    }
    std::process::exit(i32::from(!ok));
}
