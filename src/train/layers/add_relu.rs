//! `relu(a + b)` as one op each way (the end of every ResNet block), and ReLU.

use super::{cpu_f32, with_cpu_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task of the elementwise loops.
const GRAIN: usize = 1 << 14;

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "sweep-add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add_relu: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let (a, b) = (cpu_f32(s1, l1, "add_relu")?, cpu_f32(s2, l2, "add_relu")?);
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(GRAIN).zip(a.par_chunks(GRAIN)).zip(b.par_chunks(GRAIN)).for_each(|((o, a), b)| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = (a + b).max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// Both inputs get the incoming gradient where the output is positive
    /// (PyTorch's ReLU backward), computed once.
    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_grad(res, grad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// The gradient through a ReLU on the CPU (f32): `grad` where the ReLU's
/// output `out` is positive, else 0 (PyTorch's ReLU backward).
pub(super) fn relu_grad(out: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let g = with_cpu_f32(&out.detach(), |out| {
        with_cpu_f32(&grad.detach(), |dy| {
            let mut g = vec![0f32; dy.len()];
            g.par_chunks_mut(GRAIN).zip(dy.par_chunks(GRAIN)).zip(out.par_chunks(GRAIN)).for_each(|((g, dy), out)| {
                for ((g, &d), &o) in g.iter_mut().zip(dy).zip(out) {
                    *g = if o > 0.0 { d } else { 0.0 };
                }
            });
            g
        })
    })??;
    Tensor::from_vec(g, out.shape(), out.device())
}

/// `relu(a + b)` for tensors of one shape: on the CPU (f32), and on CUDA
/// with `SWEEP_GPU_KERNELS=cudnn` (f32 or bf16), one op whose backward masks
/// the gradient once for both inputs; elsewhere candle's ops.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == candle_core::DType::F32 && b.dtype() == candle_core::DType::F32 {
        return a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu);
    }
    #[cfg(feature = "cudnn")]
    if fused(a) && a.dtype() == b.dtype() && a.shape() == b.shape() {
        return super::relu_cuda::add_relu(a, b);
    }
    (a + b)?.relu()
}

/// ReLU: on CUDA with `SWEEP_GPU_KERNELS=cudnn` (f32 or bf16) one kernel each
/// way; elsewhere candle's.
pub fn relu(xs: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if fused(xs) {
        return super::relu_cuda::relu(xs);
    }
    xs.relu()
}

/// Whether `t` takes the fused CUDA kernels.
#[cfg(feature = "cudnn")]
fn fused(t: &Tensor) -> bool {
    matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::BF16) && super::kernels::use_cudnn(t.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and both gradients equal candle's `(a + b).relu()` (away from 0,
    /// where candle's ReLU passes the gradient and PyTorch's does not).
    #[test]
    fn matches_add_then_relu() {
        let av: Vec<f32> = (0..24).map(|i| (i as f32 * 0.7).sin()).collect();
        let bv: Vec<f32> = (0..24).map(|i| (i as f32 * 1.3).cos() * 0.5).collect();
        let a = Var::from_vec(av.clone(), (2, 3, 2, 2), &Device::Cpu).unwrap();
        let b = Var::from_vec(bv.clone(), (2, 3, 2, 2), &Device::Cpu).unwrap();
        let (a2, b2) = (
            Var::from_vec(av, (2, 3, 2, 2), &Device::Cpu).unwrap(),
            Var::from_vec(bv, (2, 3, 2, 2), &Device::Cpu).unwrap(),
        );
        let w = Tensor::arange(0f32, 24., &Device::Cpu).unwrap().reshape((2, 3, 2, 2)).unwrap();
        let ours = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let theirs = (a2.as_tensor() + b2.as_tensor()).unwrap().relu().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&theirs));
        assert!(flat(&ours).contains(&0.0) && flat(&ours).iter().any(|&v| v > 0.0));
        let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(flat(g1.get(&a).unwrap()), flat(g2.get(&a2).unwrap()));
        assert_eq!(flat(g1.get(&b).unwrap()), flat(g2.get(&b2).unwrap()));
    }
}
