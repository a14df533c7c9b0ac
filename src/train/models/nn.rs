//! The layers the models are built from, and the [`Builder`] that names and
//! creates their parameters.
//!
//! Every parameter and buffer is a candle [`Var`] in one `VarMap`, under the
//! name torchvision gives it (`layer1.0.conv1.weight`, `…bn1.running_mean`,
//! `…bn1.num_batches_tracked`), so a checkpoint is a state_dict. A layer holds
//! its weights as tensors: the Var itself when it trains, a detached view of the
//! same storage when it is frozen, so that no gradient is computed for it (and
//! autograd never walks into a fully frozen stem).

use super::super::layers::{
    add_channel_bias, add_relu, batch_norm_cpu, batch_norm_relu_max_pool2_cpu, channel_stats, conv2d, conv2d_layer,
    max_pool2d, ConvParams, PoolParams,
};
use super::super::rng::{stream, Rng};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;

/// How a parameter is initialised (torchvision's choices per architecture).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Kaiming normal with `fan_out` and ReLU gain (ResNet and VGG convs).
    KaimingFanOut,
    /// Kaiming normal with `fan_in` and ReLU gain (DenseNet convs).
    KaimingFanIn,
    /// U(±bound) (PyTorch's Linear default uses bound 1/√fan_in).
    Uniform(f64),
    /// N(0, std²) (VGG's Linear layers).
    Normal(f64),
    /// A constant (BatchNorm weight 1, biases 0).
    Const(f64),
}

/// Creates the Vars of a model under their torchvision names.
pub struct Builder<'a> {
    varmap: &'a VarMap,
    device: Device,
    /// Vars created by this builder with their initialisation, in creation order.
    pub(super) inits: Vec<(String, Init)>,
    frozen: &'a dyn Fn(&str) -> bool,
    freeze_bn: bool,
    compute: DType,
}

impl<'a> Builder<'a> {
    /// A builder over `varmap`; parameters for which `frozen(name)` holds are
    /// detached, and with `freeze_bn` frozen BatchNorm layers also stop
    /// updating their statistics.
    pub fn new(varmap: &'a VarMap, device: &Device, frozen: &'a dyn Fn(&str) -> bool, freeze_bn: bool) -> Self {
        Builder { varmap, device: device.clone(), inits: Vec::new(), frozen, freeze_bn, compute: DType::F32 }
    }

    /// Convolutions and linear layers built from here compute in `dtype`
    /// (`BF16` for mixed precision; the weights stay f32).
    #[must_use]
    pub fn with_compute(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    fn var(&mut self, name: &str, shape: &[usize], dtype: DType, init: Init) -> Result<Var> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            if v.dims() != shape {
                candle_core::bail!("parameter `{name}`: shape {:?} does not match {:?}", v.dims(), shape);
            }
            return Ok(v.clone());
        }
        let v = Var::zeros(shape, dtype, &self.device)?;
        data.insert(name.to_owned(), v.clone());
        self.inits.push((name.to_owned(), init));
        Ok(v)
    }

    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let v = self.var(name, shape, DType::F32, init)?;
        Ok(if (self.frozen)(name) { v.as_tensor().detach() } else { v.as_tensor().clone() })
    }

    /// A convolution `name` (square kernel), with or without bias.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        init: Init,
    ) -> Result<Conv> {
        let weight = self.param(&format!("{name}.weight"), &[cout, cin, k, k], init)?;
        let bias = if bias { Some(self.param(&format!("{name}.bias"), &[cout], Init::Const(0.0))?) } else { None };
        Ok(Conv { weight, bias, params: ConvParams { padding, stride }, compute: self.compute })
    }

    /// A BatchNorm2d `name` with PyTorch's defaults (eps 1e-5, momentum 0.1).
    pub fn bn(&mut self, name: &str, c: usize) -> Result<BatchNorm> {
        let weight_name = format!("{name}.weight");
        let frozen = (self.frozen)(&weight_name);
        Ok(BatchNorm {
            weight: self.param(&weight_name, &[c], Init::Const(1.0))?,
            bias: self.param(&format!("{name}.bias"), &[c], Init::Const(0.0))?,
            running_mean: self.var(&format!("{name}.running_mean"), &[c], DType::F32, Init::Const(0.0))?,
            running_var: self.var(&format!("{name}.running_var"), &[c], DType::F32, Init::Const(1.0))?,
            num_batches_tracked: self.var(&format!("{name}.num_batches_tracked"), &[], DType::I64, Init::Const(0.0))?,
            eps: 1e-5,
            momentum: 0.1,
            fixed_stats: frozen && self.freeze_bn,
            round: (self.compute != DType::F32).then_some(self.compute),
        })
    }

    /// A Linear `name` with the given weight initialisation and bias
    /// initialisation.
    pub fn linear(&mut self, name: &str, cin: usize, cout: usize, weight: Init, bias: Init) -> Result<Linear> {
        Ok(Linear {
            weight: self.param(&format!("{name}.weight"), &[cout, cin], weight)?,
            bias: self.param(&format!("{name}.bias"), &[cout], bias)?,
            compute: self.compute,
        })
    }
}

/// Fills the Vars created by a builder from the run seed: each Var gets its
/// own random stream, keyed by its creation index.
pub fn init_weights(varmap: &VarMap, inits: &[(String, Init)], seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (i, (name, init)) in inits.iter().enumerate() {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let mut rng = Rng::derive(&[stream::INIT, seed, i as u64]);
        let receptive: usize = dims.iter().skip(2).product();
        let values: Vec<f64> = match *init {
            Init::KaimingFanOut | Init::KaimingFanIn => {
                let fan = if matches!(init, Init::KaimingFanOut) { dims[0] } else { dims[1] } * receptive;
                let std = (2.0 / fan as f64).sqrt();
                (0..n).map(|_| rng.normal() * std).collect()
            }
            Init::Uniform(bound) => (0..n).map(|_| rng.uniform(-bound, bound)).collect(),
            Init::Normal(std) => (0..n).map(|_| rng.normal() * std).collect(),
            Init::Const(c) => vec![c; n],
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// `op(x, w)` (a convolution or matmul of an input and an f32 weight) in
/// `compute`. Mixed precision casts the weight at each use (so the gradient
/// reaches the f32 weight through the cast) and the input where it is not
/// already in `compute`; on a GPU the result stays in `compute` (bf16
/// activations between layers, as PyTorch's autocast: the next convolution
/// takes them as they are, BatchNorm normalises them with f32 statistics).
/// candle's CPU backend has no bfloat16 matmul, so on a CPU it is emulated the
/// way the GPU computes it: operands rounded to bf16, products accumulated in
/// f32, the result rounded to bf16 and kept in f32 (it checks a bf16 run's
/// numbers; it is not faster).
fn in_precision(
    compute: DType,
    x: &Tensor,
    w: &Tensor,
    op: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if compute == DType::F32 {
        op(x, w)
    } else if x.device().is_cpu() {
        round_to(compute, &op(&round_to(compute, x)?, &round_to(compute, w)?)?)
    } else {
        op(&x.to_dtype(compute)?, &w.to_dtype(compute)?)
    }
}

/// `t` rounded to `dtype` and back to f32 (with the same rounding of its
/// gradient on the way back): a bf16 value held in f32 (the CPU's stand-in).
fn round_to(dtype: DType, t: &Tensor) -> Result<Tensor> {
    t.to_dtype(dtype)?.to_dtype(DType::F32)
}

/// A 2-D convolution, optionally with bias.
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    params: ConvParams,
    compute: DType,
}

impl Conv {
    /// Applies the convolution.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = self.convolve(xs)?;
        match &self.bias {
            Some(b) => add_channel_bias(&y, b),
            None => Ok(y),
        }
    }

    /// `relu(self.forward(xs))`, the bias and the ReLU one op on the CPU
    /// (in place where no gradient is tracked), with the convolution where
    /// one is (f32 on the CPU: no tensor of the convolution's own output is
    /// kept for the backward pass).
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        if let (Some(b), DType::F32) = (&self.bias, self.compute) {
            if let Some(y) = crate::train::layers::conv2d_bias_relu(xs, &self.weight, b, self.params)? {
                return Ok(y);
            }
        }
        let y = self.convolve(xs)?;
        match &self.bias {
            Some(b) => crate::train::layers::bias_relu(y, b),
            None => crate::train::layers::relu(&y),
        }
    }

    /// The convolution without the bias.
    fn convolve(&self, xs: &Tensor) -> Result<Tensor> {
        match conv2d_layer(xs, &self.weight, self.params, self.compute)? {
            Some(y) => Ok(y),
            None => in_precision(self.compute, xs, &self.weight, |x, w| conv2d(x, w, self.params)),
        }
    }
}

/// A fully connected layer.
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    compute: DType,
}

impl Linear {
    /// `xs @ weightᵀ + bias` for `xs` of shape (N, in), in f32 (the heads'
    /// activations and the logits stay f32).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        in_precision(self.compute, xs, &self.weight, |x, w| x.matmul(&w.t()?))?
            .to_dtype(DType::F32)?
            .broadcast_add(&self.bias)
    }
}

/// BatchNorm2d with PyTorch's semantics.
///
/// Training: normalises with the batch mean and biased variance over (N, H, W),
/// and updates the running statistics with momentum 0.1 using the unbiased
/// variance; `num_batches_tracked` counts the updates. Eval (and training when
/// the layer is frozen with `freeze_bn = true`): the running statistics.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
    fixed_stats: bool,
    /// Mixed precision: on a CPU the output is rounded to this dtype (as the
    /// GPU's bf16 output is).
    round: Option<DType>,
}

impl BatchNorm {
    /// Applies the layer to `xs` (N, C, H, W).
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(xs, train, Then::default())
    }

    /// `relu(self.forward(xs, train))`, on the CPU and (with the cudnn
    /// kernels) on CUDA as one op each way.
    pub fn forward_relu(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(xs, train, Then { relu: true, ..Then::default() })
    }

    /// `max_pool2d(relu(self.forward(xs, train)), 2, 2)`, on the CPU as one op
    /// each way.
    pub fn forward_relu_max_pool2(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(xs, train, Then { relu: true, pool: true, residual: None })
    }

    /// `relu(self.forward(xs, train) + residual)` (a ResNet block's end): on
    /// CUDA with the cudnn kernels one op each way, so that no tensor of
    /// the normalised values is kept for the backward pass.
    pub fn forward_add_relu(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(xs, train, Then { relu: true, pool: false, residual: Some(residual) })
    }

    fn apply(&self, xs: &Tensor, train: bool, then: Then<'_>) -> Result<Tensor> {
        let (n, c, h, w) = xs.dims4()?;
        let batch_stats = train && !self.fixed_stats;
        let m = n * h * w;
        if batch_stats && m < 2 {
            candle_core::bail!(
                "BatchNorm in training needs more than one value per channel (got input {n}x{c}x{h}x{w})"
            );
        }
        if then.pool && (h < 2 || w < 2) {
            // PyTorch: "Calculated output size: (64x0x0). Output size is too small".
            candle_core::bail!(
                "max-pool 2x2 of a {h}x{w} plane (input {n}x{c}x{h}x{w}): the images are too small for this model"
            );
        }
        if xs.device().is_cpu() && xs.dtype() == DType::F32 {
            let (mean, var) = if batch_stats {
                channel_stats(xs)?
            } else {
                (self.running_mean.as_tensor().to_vec1::<f32>()?, self.running_var.as_tensor().to_vec1::<f32>()?)
            };
            // The residual joins the op when it is like x and no bf16 rounding comes between.
            let fused = then.residual.filter(|r| {
                self.round.is_none() && r.dtype() == DType::F32 && r.device().is_cpu() && r.shape() == xs.shape()
            });
            let y = if then.pool {
                batch_norm_relu_max_pool2_cpu(xs, &self.weight, &self.bias, mean.clone(), &var, self.eps, batch_stats)?
            } else if let Some(r) = fused {
                let (w, b) = (&self.weight, &self.bias);
                crate::train::layers::batch_norm_add_relu_cpu(xs, w, b, r, mean.clone(), &var, self.eps, batch_stats)?
            } else {
                let relu = then.relu && then.residual.is_none();
                batch_norm_cpu(xs, &self.weight, &self.bias, mean.clone(), &var, self.eps, batch_stats, relu)?
            };
            if batch_stats {
                let dev = xs.device();
                let unbiased: Vec<f32> = var.iter().map(|&v| v * m as f32 / (m - 1) as f32).collect();
                self.update_stats(&Tensor::from_vec(mean, c, dev)?, &Tensor::from_vec(unbiased, c, dev)?)?;
            }
            let y = match self.round {
                Some(dtype) => round_to(dtype, &y)?,
                None => y,
            };
            return Self::after(y, Then { relu: false, pool: false, residual: then.residual.xor(fused) });
        }
        // The residual joins the CUDA kernels when it is like x (else it is added after).
        #[cfg(feature = "cudnn")]
        let fused = then.residual.filter(|r| r.dtype() == xs.dtype() && r.shape() == xs.shape());
        // The kernels' ReLU comes after the residual: not theirs when the residual is added after.
        #[cfg(feature = "cudnn")]
        let relu = then.relu && (then.residual.is_none() || fused.is_some());
        // What is left after the kernels: the unfused residual (with its ReLU), the pool.
        #[cfg(feature = "cudnn")]
        let rest = Then { relu: false, pool: then.pool, residual: then.residual.xor(fused) };
        #[cfg(feature = "cudnn")]
        if batch_stats && matches!(xs.dtype(), DType::F32 | DType::BF16) && crate::train::layers::use_cudnn(xs.device())
        {
            let running = (
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                self.num_batches_tracked.as_tensor(),
                self.momentum,
            );
            let y = crate::train::layers::batch_norm_train_cuda(
                xs,
                &self.weight,
                &self.bias,
                self.eps,
                running,
                relu,
                fused,
            )?;
            return Self::after(y, rest);
        }
        #[cfg(feature = "cudnn")]
        if !batch_stats
            && matches!(xs.dtype(), DType::F32 | DType::BF16)
            && ![xs, &self.weight, &self.bias].iter().any(|t| t.track_op())
            && !fused.is_some_and(Tensor::track_op)
            && crate::train::layers::use_cudnn(xs.device())
        {
            let (rm, rv) = (self.running_mean.as_tensor(), self.running_var.as_tensor());
            let y = crate::train::layers::batch_norm_eval_cuda(
                xs,
                rm,
                rv,
                &self.weight,
                &self.bias,
                self.eps,
                relu,
                fused,
            )?;
            return Self::after(y, rest);
        }
        // Other devices: the same computation as tensor ops, in f32 (bf16
        // activations come back in bf16).
        let dtype = xs.dtype();
        let xs = &xs.to_dtype(DType::F32)?;
        let shape = (1, c, 1, 1);
        let weight = self.weight.reshape(shape)?;
        let bias = self.bias.reshape(shape)?;
        if !batch_stats {
            let inv = (self.running_var.as_tensor().detach() + self.eps)?.sqrt()?.recip()?.reshape(shape)?;
            let mean = self.running_mean.as_tensor().detach().reshape(shape)?;
            let y = xs.broadcast_sub(&mean)?.broadcast_mul(&inv.broadcast_mul(&weight)?)?.broadcast_add(&bias)?;
            return Self::after(y.to_dtype(dtype)?, then);
        }
        let mean = (xs.sum_keepdim((0, 2, 3))? / m as f64)?;
        let centered = xs.broadcast_sub(&mean)?;
        let var = (centered.sqr()?.sum_keepdim((0, 2, 3))? / m as f64)?;
        let inv = (&var + self.eps)?.sqrt()?.recip()?;
        let y = centered.broadcast_mul(&inv.broadcast_mul(&weight)?)?.broadcast_add(&bias)?;
        let unbiased = (var.detach().flatten_all()? * (m as f64 / (m - 1) as f64))?;
        self.update_stats(&mean.detach().flatten_all()?, &unbiased)?;
        Self::after(y.to_dtype(dtype)?, then)
    }

    /// What `then` asks for that the normalisation's op did not do: the
    /// residual and the ReLU, or the ReLU, then the 2x2/2 max-pool.
    fn after(y: Tensor, then: Then<'_>) -> Result<Tensor> {
        let y = match (then.residual, then.relu) {
            (Some(r), _) => add_relu(&y, r)?,
            (None, true) => crate::train::layers::relu(&y)?,
            (None, false) => y,
        };
        if then.pool {
            max_pool2d(&y, PoolParams { kernel: 2, stride: 2, padding: 0 })
        } else {
            Ok(y)
        }
    }

    /// `running = (1 - momentum) * running + momentum * batch`; counts the batch.
    fn update_stats(&self, mean: &Tensor, unbiased_var: &Tensor) -> Result<()> {
        let mom = self.momentum;
        self.running_mean.set(&((self.running_mean.as_tensor() * (1.0 - mom))? + (mean * mom)?)?)?;
        self.running_var.set(&((self.running_var.as_tensor() * (1.0 - mom))? + (unbiased_var * mom)?)?)?;
        self.num_batches_tracked.set(&(self.num_batches_tracked.as_tensor().detach() + 1.0)?)
    }
}

/// What follows a BatchNorm in the same op where a backend can fuse it: a
/// residual added, a ReLU, a 2x2/2 max-pool (a residual implies the ReLU:
/// `relu(bn(x) + residual)`).
#[derive(Clone, Copy, Default)]
struct Then<'a> {
    relu: bool,
    pool: bool,
    residual: Option<&'a Tensor>,
}

/// Inverted dropout with a mask from `rng` (identity when not training or p = 0).
pub fn dropout(xs: &Tensor, p: f64, train: bool, rng: &mut Rng) -> Result<Tensor> {
    if !train || p == 0.0 {
        return Ok(xs.clone());
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..xs.elem_count()).map(|_| if rng.next_f64() < p { 0.0 } else { keep }).collect();
    xs.mul(&Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_scales_and_is_seeded() {
        let x = Tensor::ones((1000,), DType::F32, &Device::Cpu).unwrap();
        let a = dropout(&x, 0.5, true, &mut Rng::new(5)).unwrap().to_vec1::<f32>().unwrap();
        let b = dropout(&x, 0.5, true, &mut Rng::new(5)).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = a.iter().filter(|&&v| v == 2.0).count();
        assert!((400..600).contains(&kept), "{kept}");
        assert_eq!(dropout(&x, 0.5, false, &mut Rng::new(5)).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 1000]);
    }

    #[test]
    fn batch_norm_trains_on_batch_statistics_and_updates_running_ones() {
        // torch: bn = nn.BatchNorm2d(1); x = tensor([1., 2., 3., 6.]).view(2,1,1,2); y = bn(x)
        // y = (x - 3) / sqrt(3.5 + 1e-5); running_mean = 0.3, running_var = 0.9 + 0.1 * 14/3
        let varmap = VarMap::new();
        let no = |_: &str| false;
        let mut b = Builder::new(&varmap, &Device::Cpu, &no, false);
        let bn = b.bn("bn", 1).unwrap();
        init_weights(&varmap, &b.inits, 0).unwrap();
        let x = Tensor::from_vec(vec![1f32, 2., 3., 6.], (2, 1, 1, 2), &Device::Cpu).unwrap();
        let y = bn.forward(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let s = (3.5f32 + 1e-5).sqrt();
        for (a, e) in y.iter().zip([-2.0 / s, -1.0 / s, 0.0, 3.0 / s]) {
            assert!((a - e).abs() < 1e-6, "{y:?}");
        }
        let data = varmap.data().lock().unwrap();
        let rm = data["bn.running_mean"].to_vec1::<f32>().unwrap()[0];
        let rv = data["bn.running_var"].to_vec1::<f32>().unwrap()[0];
        assert!((rm - 0.3).abs() < 1e-6 && (rv - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6, "{rm} {rv}");
        assert_eq!(data["bn.num_batches_tracked"].to_scalar::<i64>().unwrap(), 1);
        // Eval uses the running statistics.
        let e = bn.forward(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((e[0] - (1.0 - 0.3) / (rv + 1e-5).sqrt()).abs() < 1e-6);
    }

    /// VGG's convolutions end in `bias_relu`, in place where nothing tracks a
    /// gradient: the detached network (the evaluation's) gives the same bits
    /// as the tracked one, twice, and leaves its input and weights as they were.
    #[test]
    fn a_vgg_evaluated_in_place_equals_the_tracked_network() {
        use crate::train::models::{Arch, ModelSpec};
        // A small VGG: two blocks of 8 and 16 channels, a classifier 32 wide.
        let mut spec = ModelSpec::plain("vgg11").unwrap();
        spec.arch = Arch::Vgg { features: vec![8, 0, 16, 16, 0], batch_norm: false, hidden: 32 };
        let built = spec.build_with(10, &Device::Cpu, 3, DType::F32).unwrap();
        let mut rng = Rng::new(9);
        // Biases start at zero: give them values.
        for (name, var) in built.varmap.data().lock().unwrap().iter() {
            if name.ends_with(".bias") {
                let b: Vec<f32> = (0..var.elem_count()).map(|_| rng.normal() as f32 * 0.1).collect();
                var.set(&Tensor::from_vec(b, var.shape(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(x, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let before = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let tracked = flat(built.model.forward(&x, false, &mut rng).unwrap());
        let first = flat(built.inference.forward(&x, false, &mut rng).unwrap());
        let second = flat(built.inference.forward(&x, false, &mut rng).unwrap());
        assert_eq!(first, tracked);
        assert_eq!(second, tracked);
        assert_eq!(flat(x), before);
    }
}
