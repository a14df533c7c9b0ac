//! Trainable models with torchvision-style parameter names.
//!
//! Every model is a [`Classifier`]: a backbone made of named stages (stem first)
//! and a head named `fc` (a Linear, or an MLP named like torchvision's
//! `nn.Sequential`: `fc.0`, `fc.3`, …). Parameters live in a candle `VarMap`
//! under those names, so checkpoints are state_dicts a PyTorch user can load.
//! BatchNorm running statistics are Vars too (saved, never optimised).
//!
//! Weights are initialised from the run seed (candle's CPU RNG cannot be seeded)
//! the way torchvision initialises ResNets: convolutions Kaiming-normal with
//! `fan_out`, BatchNorm weight 1 and bias 0, Linear layers PyTorch's default
//! U(±1/√fan_in).
//!
//! The model zoo (ResNet, DenseNet, VGG) plugs in here; this file has the layers
//! they share and `smallcnn`, a three-stage CNN for 32x32 images that trains in
//! seconds on a CPU.

use super::layers::{conv2d, max_pool2d, ConvParams};
use super::rng::{stream, Rng};
use crate::spec::{Freeze, Head, RunConfig};
use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{BatchNorm, BatchNormConfig, Linear, Module, VarBuilder, VarMap};

/// Names of the models this build can train.
pub const MODELS: &[&str] = &["smallcnn"];

/// A network that maps a batch of images to class logits.
pub trait Classifier: Send {
    /// Logits for `xs` (N, 3, H, W); `train` switches BatchNorm and dropout to
    /// training behaviour; `rng` draws dropout masks.
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor>;
}

/// A built model with its parameters.
pub struct Built {
    /// The network.
    pub model: Box<dyn Classifier>,
    /// Every parameter and buffer, by torchvision name.
    pub varmap: VarMap,
    /// The parameters the optimiser updates, sorted by name.
    pub trainable: Vec<(String, Var)>,
    /// The backbone's stages, stem first (for `freeze = { through = … }`).
    pub stages: Vec<&'static str>,
}

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// Kaiming normal, fan_out, ReLU gain (torchvision ResNet convs).
    ConvFanOut,
    /// U(±1/√fan_in) (PyTorch's Linear default, weight and bias).
    Uniform { fan_in: usize },
}

struct Builder {
    vb: VarBuilder<'static>,
    inits: Vec<(String, Init)>,
}

impl Builder {
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> Result<Conv> {
        self.inits.push((format!("{name}.weight"), Init::ConvFanOut));
        let weight = self.vb.pp(name).get((cout, cin, k, k), "weight")?;
        Ok(Conv { weight, params: ConvParams { padding, stride } })
    }
    fn bn(&mut self, name: &str, c: usize) -> Result<BatchNorm> {
        // PyTorch's defaults: eps 1e-5, momentum 0.1, affine.
        candle_nn::batch_norm(c, BatchNormConfig::default(), self.vb.pp(name))
    }
    fn linear(&mut self, name: &str, cin: usize, cout: usize) -> Result<Linear> {
        self.inits.push((format!("{name}.weight"), Init::Uniform { fan_in: cin }));
        self.inits.push((format!("{name}.bias"), Init::Uniform { fan_in: cin }));
        candle_nn::linear(cin, cout, self.vb.pp(name))
    }
}

/// A bias-free convolution (torchvision's convs before BatchNorm).
pub struct Conv {
    weight: Tensor,
    params: ConvParams,
}

impl Module for Conv {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        conv2d(xs, &self.weight, self.params)
    }
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

/// The classification head.
pub struct HeadNet {
    layers: Vec<Linear>,
    dropout: Vec<f64>,
}

impl HeadNet {
    fn build(b: &mut Builder, head: &Head, features: usize, classes: usize) -> Result<HeadNet> {
        match head {
            Head::Linear => Ok(HeadNet { layers: vec![b.linear("fc", features, classes)?], dropout: vec![] }),
            Head::Mlp { hidden, dropout } => {
                let mut layers = Vec::new();
                let mut cin = features;
                for (i, &h) in hidden.iter().enumerate() {
                    layers.push(b.linear(&format!("fc.{}", 3 * i), cin, h)?);
                    cin = h;
                }
                layers.push(b.linear(&format!("fc.{}", 3 * hidden.len()), cin, classes)?);
                Ok(HeadNet { layers, dropout: dropout.clone() })
            }
        }
    }

    fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let mut xs = xs.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs)?;
            if i < last {
                xs = dropout(&xs.relu()?, self.dropout[i], train, rng)?;
            }
        }
        Ok(xs)
    }
}

/// Three conv-BN-ReLU-maxpool stages (16, 32, 64 channels), global average
/// pooling and the head.
pub struct SmallCnn {
    convs: Vec<(Conv, BatchNorm)>,
    head: HeadNet,
}

impl SmallCnn {
    const WIDTHS: [usize; 3] = [16, 32, 64];
    const STAGES: [&'static str; 3] = ["stem", "layer1", "layer2"];

    fn build(b: &mut Builder, head: &Head, classes: usize) -> Result<SmallCnn> {
        let mut convs = Vec::new();
        let mut cin = 3;
        for (i, &c) in Self::WIDTHS.iter().enumerate() {
            let (conv, bn) = if i == 0 {
                ("conv1".to_owned(), "bn1".to_owned())
            } else {
                (format!("layer{i}.conv"), format!("layer{i}.bn"))
            };
            convs.push((b.conv(&conv, cin, c, 3, 1, 1)?, b.bn(&bn, c)?));
            cin = c;
        }
        Ok(SmallCnn { convs, head: HeadNet::build(b, head, cin, classes)? })
    }

    fn stage_prefixes(stage: &str) -> &'static [&'static str] {
        match stage {
            "stem" => &["conv1.", "bn1."],
            "layer1" => &["layer1."],
            _ => &["layer2."],
        }
    }
}

impl Classifier for SmallCnn {
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (conv, bn) in &self.convs {
            xs = max_pool2d(&xs.apply(conv)?.apply_t(bn, train)?.relu()?, 2)?;
        }
        let pooled = xs.mean(D::Minus1)?.mean(D::Minus1)?;
        self.head.forward(&pooled, train, rng)
    }
}

/// Why a configuration cannot be built, before any tensor is made.
pub fn check(config: &RunConfig) -> std::result::Result<(), String> {
    if !MODELS.contains(&config.model.as_str()) {
        return Err(format!(
            "model `{}` is not available in this build (available: {}); the torchvision model zoo is not implemented yet",
            config.model,
            MODELS.join(", ")
        ));
    }
    if let Some(p) = &config.pretrained {
        return Err(format!("pretrained = \"{p}\": loading pretrained weights is not implemented yet"));
    }
    match &config.freeze {
        Freeze::Through(stage) if !SmallCnn::STAGES.contains(&stage.as_str()) => Err(format!(
            "freeze: `{stage}` is not a stage of {} (stages: {})",
            config.model,
            SmallCnn::STAGES.join(", ")
        )),
        _ => Ok(()),
    }
}

/// Builds the model of `config` on `device`, initialised from the run seed.
pub fn build(config: &RunConfig, classes: usize, device: &Device) -> std::result::Result<Built, String> {
    check(config)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let mut b = Builder { vb, inits: Vec::new() };
    let model = SmallCnn::build(&mut b, &config.head, classes).map_err(|e| e.to_string())?;
    init_weights(&varmap, &b.inits, config.seed).map_err(|e| e.to_string())?;

    let stages: Vec<&'static str> = SmallCnn::STAGES.to_vec();
    let frozen_prefixes: Vec<String> = match &config.freeze {
        Freeze::None => vec![],
        Freeze::All => vec![String::new()],
        Freeze::Through(stage) => {
            let upto = stages.iter().position(|s| s == stage).expect("checked above");
            stages[..=upto].iter().flat_map(|s| SmallCnn::stage_prefixes(s)).map(|s| s.to_string()).collect()
        }
        Freeze::Prefixes(p) => p.clone(),
    };
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    if let Freeze::Prefixes(prefixes) = &config.freeze {
        if let Some(p) = prefixes.iter().find(|p| !names.iter().any(|n| n.starts_with(p.as_str()))) {
            return Err(format!("freeze: no parameter of {} starts with `{p}`", config.model));
        }
    }
    let trainable = names
        .into_iter()
        .filter(|n| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
        .filter(|n| n.starts_with("fc.") || !frozen_prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .map(|n| (n.clone(), data[n].clone()))
        .collect();
    drop(data);
    Ok(Built { model: Box::new(model), varmap, trainable, stages })
}

fn init_weights(varmap: &VarMap, inits: &[(String, Init)], seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (i, (name, init)) in inits.iter().enumerate() {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let mut rng = Rng::derive(&[stream::INIT, seed, i as u64]);
        let values: Vec<f32> = match *init {
            Init::ConvFanOut => {
                let fan_out = dims[0] * dims[2..].iter().product::<usize>();
                let std = (2.0 / fan_out as f64).sqrt();
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
            Init::Uniform { fan_in } => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
            }
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
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
}
