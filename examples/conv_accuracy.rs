//! How far the CPU convolution's output and both gradients are from the same
//! convolution in f64 (candle's own, on f64 copies of the inputs), relative
//! to the largest and to the root-mean-square reference value; a 3x3 kernel
//! with stride 1 and padding 1, He-initialised, through the path
//! `SWEEP_CPU_CONV` chooses:
//!
//!     SWEEP_CPU_CONV=winograd4 cargo run --release --example conv_accuracy -- 8 512 7 512   # N C HW C_out
use candle_core::{Device, Tensor, Var};
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (n, c, h, cout) = (a[0], a[1], a[2], a[3]);
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, h), &dev).unwrap()).unwrap();
    let std = (2.0 / (9.0 * c as f64)).sqrt() as f32;
    let w = Var::from_tensor(&Tensor::randn(0f32, std, (cout, c, 3, 3), &dev).unwrap()).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (n, cout, h, h), &dev).unwrap();
    let p = sweep::train::layers::ConvParams { padding: 1, stride: 1 };
    let y = sweep::train::layers::conv2d(x.as_tensor(), w.as_tensor(), p).unwrap();
    let g = (y.clone() * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let x64 = Var::from_tensor(&x.as_tensor().to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    let w64 = Var::from_tensor(&w.as_tensor().to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    let y64 = x64.as_tensor().conv2d(w64.as_tensor(), 1, 1, 1, 1).unwrap();
    let g64 =
        (y64.clone() * dy.to_dtype(candle_core::DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    let rel = |a: &Tensor, b: &Tensor| {
        let a = a.to_dtype(candle_core::DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        let rms = (b.iter().map(|v| v * v).sum::<f64>() / b.len() as f64).sqrt();
        let worst = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        format!("{:.1e} of max, {:.1e} of rms", worst / scale, worst / rms)
    };
    println!(
        "y {} | dx {} | dw {}",
        rel(&y, &y64),
        rel(g.get(&x).unwrap(), g64.get(&x64).unwrap()),
        rel(g.get(&w).unwrap(), g64.get(&w64).unwrap())
    );
}
