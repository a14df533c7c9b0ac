//! Trainable models with torchvision's architectures and parameter names.
//!
//! A model is a backbone ([`Arch`]: `smallcnn`, `resnet18/34/50/101/152`,
//! `densenet121/161/169/201`, `vgg11/13/16/19[_bn]`) plus a head that replaces
//! the backbone's last layer (`fc` for ResNet, `classifier` for DenseNet,
//! `classifier.6` for VGG, or VGG's whole `classifier` when the head is an MLP).
//! Parameters and buffers live in a candle `VarMap` under torchvision's
//! state_dict names, so a checkpoint loads into torchvision and torchvision's
//! weights load here ([`super::weights`]).
//!
//! Building takes two passes over the same `VarMap`: the first creates and
//! initialises every Var (from the run seed, with torchvision's initialisation
//! per architecture) and loads pretrained weights; the second builds the network
//! again with frozen parameters detached, so autograd computes no gradient for
//! them. Frozen and trainable weights share storage, so loading a checkpoint
//! later updates both.

mod densenet;
mod for_weights;
pub mod nn;
mod resnet;
mod smallcnn;
mod vgg;

use super::rng::Rng;
use crate::spec::{Freeze, Head, RunConfig, Stem};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use nn::{Builder, Init, Linear};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Names of the models this build can train.
pub const MODELS: &[&str] = &[
    "smallcnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
];

/// A backbone architecture with all its sizes (the named models are presets;
/// reduced-width variants exist for tests and parity fixtures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum Arch {
    /// Three conv-BN-ReLU-maxpool stages for 32x32 images.
    SmallCnn,
    /// torchvision's ResNet (v1.5: the stride of a bottleneck is on its 3x3 conv).
    ResNet {
        /// Bottleneck blocks (expansion 4) instead of basic blocks.
        bottleneck: bool,
        /// Blocks per stage.
        layers: [usize; 4],
        /// Channels of each stage (before expansion): 64, 128, 256, 512.
        widths: [usize; 4],
    },
    /// torchvision's DenseNet-BC.
    DenseNet {
        /// Channels each dense layer adds.
        growth: usize,
        /// Dense layers per block.
        blocks: Vec<usize>,
        /// Channels of the stem.
        init_features: usize,
        /// Bottleneck width factor (4).
        bn_size: usize,
    },
    /// torchvision's VGG: `features` (convs, `0` meaning a max-pool), a 7x7
    /// adaptive average pool and a three-layer classifier.
    Vgg {
        /// Conv widths in order, 0 for a max-pool.
        features: Vec<usize>,
        /// With BatchNorm after each conv.
        batch_norm: bool,
        /// Width of the classifier's hidden layers (4096).
        hidden: usize,
    },
}

impl Arch {
    /// The preset for a model name.
    pub fn named(name: &str) -> Option<Arch> {
        let resnet = |bottleneck, layers| Arch::ResNet { bottleneck, layers, widths: [64, 128, 256, 512] };
        let densenet = |growth, blocks: &[usize], init_features| Arch::DenseNet {
            growth,
            blocks: blocks.to_vec(),
            init_features,
            bn_size: 4,
        };
        let (base, batch_norm) = match name.strip_suffix("_bn") {
            Some(b) => (b, true),
            None => (name, false),
        };
        let vgg = |cfg: &[usize]| Arch::Vgg { features: cfg.to_vec(), batch_norm, hidden: 4096 };
        Some(match base {
            "smallcnn" if !batch_norm => Arch::SmallCnn,
            "resnet18" if !batch_norm => resnet(false, [2, 2, 2, 2]),
            "resnet34" if !batch_norm => resnet(false, [3, 4, 6, 3]),
            "resnet50" if !batch_norm => resnet(true, [3, 4, 6, 3]),
            "resnet101" if !batch_norm => resnet(true, [3, 4, 23, 3]),
            "resnet152" if !batch_norm => resnet(true, [3, 8, 36, 3]),
            "densenet121" if !batch_norm => densenet(32, &[6, 12, 24, 16], 64),
            "densenet161" if !batch_norm => densenet(48, &[6, 12, 36, 24], 96),
            "densenet169" if !batch_norm => densenet(32, &[6, 12, 32, 32], 64),
            "densenet201" if !batch_norm => densenet(32, &[6, 12, 48, 32], 64),
            "vgg11" => vgg(&[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0]),
            "vgg13" => vgg(&[64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0]),
            "vgg16" => vgg(&[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]),
            "vgg19" => {
                vgg(&[64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0])
            }
            _ => return None,
        })
    }

    /// The stages `freeze = { through = … }` can name, stem first.
    pub fn stages(&self) -> Vec<String> {
        match self {
            Arch::SmallCnn => vec!["stem".into(), "layer1".into(), "layer2".into()],
            Arch::ResNet { .. } => ["stem", "layer1", "layer2", "layer3", "layer4"].map(String::from).to_vec(),
            Arch::DenseNet { blocks, .. } => {
                std::iter::once("stem".to_owned()).chain((1..=blocks.len()).map(|i| format!("denseblock{i}"))).collect()
            }
            Arch::Vgg { features, .. } => {
                (1..=features.iter().filter(|&&c| c == 0).count()).map(|i| format!("block{i}")).collect()
            }
        }
    }

    /// Parameter-name prefixes of the stem and stages up to `stage` (inclusive),
    /// or `None` when `stage` is not one of [`Arch::stages`]. DenseNet also
    /// accepts `layerN` for `denseblockN` (the stage at the same resolution as
    /// ResNet's `layerN`).
    pub fn prefixes_through(&self, stage: &str) -> Option<Vec<String>> {
        let mut stage = stage.to_owned();
        if let (Arch::DenseNet { .. }, Some(n)) = (self, stage.strip_prefix("layer")) {
            stage = format!("denseblock{n}");
        }
        let stages = self.stages();
        let upto = stages.iter().position(|s| *s == stage)?;
        let mut out = Vec::new();
        for (i, s) in stages[..=upto].iter().enumerate() {
            match self {
                Arch::SmallCnn | Arch::ResNet { .. } if i == 0 => out.extend(["conv1.".into(), "bn1.".into()]),
                Arch::SmallCnn | Arch::ResNet { .. } => out.push(format!("{s}.")),
                Arch::DenseNet { .. } if i == 0 => out.extend(["features.conv0.".into(), "features.norm0.".into()]),
                Arch::DenseNet { blocks, .. } => {
                    out.push(format!("features.{s}."));
                    out.push(format!("features.transition{i}."));
                    if i == blocks.len() {
                        out.push("features.norm5.".into());
                    }
                }
                Arch::Vgg { .. } => out.extend(vgg::block_prefixes(self, i + 1)),
            }
        }
        Some(out)
    }

    /// The name of the layer (or `Sequential`) the head replaces.
    pub fn head_name(&self, head: &Head) -> &'static str {
        match (self, head) {
            (Arch::SmallCnn | Arch::ResNet { .. }, _) => "fc",
            (Arch::DenseNet { .. }, _) | (Arch::Vgg { .. }, Head::Mlp { .. }) => "classifier",
            (Arch::Vgg { .. }, Head::Linear) => "classifier.6",
        }
    }
}

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
    /// The same network over detached views of the same weights and
    /// statistics, for evaluation: no autograd graph, so each activation is
    /// freed once the next layer has read it, as under `torch.no_grad()`
    /// (through `model`, a batch's whole forward pass stays alive until its
    /// logits are dropped: 13 GiB of GPU memory for a test batch of 256
    /// ResNet18 images at 224). It sees every update of the weights (the
    /// optimiser and checkpoint loads write into the Vars' storage).
    pub inference: Box<dyn Classifier>,
    /// Every parameter and buffer, by torchvision name.
    pub varmap: VarMap,
    /// The parameters the optimiser updates, sorted by name.
    pub trainable: Vec<(String, Var)>,
    /// The backbone's stages, stem first (for `freeze = { through = … }`).
    pub stages: Vec<String>,
}

/// The classification head: a Linear, or Linear-ReLU-Dropout blocks and a last
/// Linear named like torchvision's `nn.Sequential` (`fc.0`, `fc.3`, …).
pub struct HeadNet {
    layers: Vec<Linear>,
    dropout: Vec<f64>,
}

impl HeadNet {
    /// Builds the head `name` mapping `features` to `classes`, with PyTorch's
    /// default Linear initialisation (a freshly replaced layer).
    pub fn build(b: &mut Builder, name: &str, head: &Head, features: usize, classes: usize) -> Result<HeadNet> {
        let lin = |b: &mut Builder, n: &str, cin: usize, cout: usize| {
            let bound = 1.0 / (cin as f64).sqrt();
            b.linear(n, cin, cout, Init::Uniform(bound), Init::Uniform(bound))
        };
        match head {
            Head::Linear => Ok(HeadNet { layers: vec![lin(b, name, features, classes)?], dropout: vec![] }),
            Head::Mlp { hidden, dropout } => {
                let mut layers = Vec::new();
                let mut cin = features;
                for (i, &h) in hidden.iter().enumerate() {
                    layers.push(lin(b, &format!("{name}.{}", 3 * i), cin, h)?);
                    cin = h;
                }
                layers.push(lin(b, &format!("{name}.{}", 3 * hidden.len()), cin, classes)?);
                Ok(HeadNet { layers, dropout: dropout.clone() })
            }
        }
    }

    /// Applies the head to features (N, F).
    pub fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let mut xs = xs.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs)?;
            if i < last {
                xs = nn::dropout(&crate::train::layers::relu(&xs)?, self.dropout[i], train, rng)?;
            }
        }
        Ok(xs)
    }
}

/// What to build: the architecture and the parts of a run's config that shape it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The model's name (for messages).
    pub name: String,
    /// The backbone.
    pub arch: Arch,
    /// The head replacing the last layer.
    pub head: Head,
    /// The stem (ResNet/DenseNet: `cifar` is a 3x3/1 conv without max-pool).
    pub stem: Stem,
    /// Which parameters get no gradient.
    pub freeze: Freeze,
    /// Frozen BatchNorm layers also keep their statistics fixed.
    pub freeze_bn: bool,
    /// Where the initial weights come from.
    pub pretrained: Option<String>,
}

impl ModelSpec {
    /// Model `name` as torchvision builds it, from scratch: its own last layer
    /// (a linear head), nothing frozen (benchmarks and device checks).
    pub fn plain(name: &str) -> std::result::Result<ModelSpec, ModelError> {
        let arch = Arch::named(name).ok_or_else(|| ModelError::unknown(name))?;
        Ok(ModelSpec {
            name: name.to_owned(),
            arch,
            head: Head::Linear,
            stem: Stem::ImageNet,
            freeze: Freeze::None,
            freeze_bn: false,
            pretrained: None,
        })
    }

    /// The model part of a run config.
    pub fn of(config: &RunConfig) -> std::result::Result<ModelSpec, ModelError> {
        let arch = Arch::named(&config.model).ok_or_else(|| ModelError::unknown(&config.model))?;
        let spec = ModelSpec {
            name: config.model.clone(),
            arch,
            head: config.head.clone(),
            stem: config.stem,
            freeze: config.freeze.clone(),
            freeze_bn: config.freeze_bn,
            pretrained: config.pretrained.clone(),
        };
        spec.check()?;
        Ok(spec)
    }

    /// Configuration errors found without building anything.
    pub fn check(&self) -> std::result::Result<(), ModelError> {
        let name = &self.name;
        let invalid = |m: String| Err(ModelError::Invalid(m));
        if self.stem == Stem::Cifar && matches!(self.arch, Arch::Vgg { .. } | Arch::SmallCnn) {
            return invalid(format!("stem = \"cifar\": {name} has no stem to replace (only ResNet and DenseNet do)"));
        }
        match self.pretrained.as_deref() {
            Some("imagenet") => {
                if super::weights::imagenet_url(name).is_none() {
                    return invalid(format!("pretrained = \"imagenet\": there are no ImageNet weights for {name}"));
                }
                if self.stem == Stem::Cifar {
                    return invalid(format!(
                        "pretrained = \"imagenet\" with stem = \"cifar\": the ImageNet weights of {name} are for the 7x7 ImageNet stem"
                    ));
                }
            }
            Some(path) if !Path::new(path).exists() => {
                return invalid(format!("pretrained = \"{path}\": no such file"));
            }
            _ => {}
        }
        if let Freeze::Through(stage) = &self.freeze {
            if self.arch.prefixes_through(stage).is_none() {
                return invalid(format!(
                    "freeze: `{stage}` is not a stage of {name} (stages: {})",
                    self.arch.stages().join(", ")
                ));
            }
        }
        Ok(())
    }

    fn frozen_prefixes(&self) -> Vec<String> {
        match &self.freeze {
            Freeze::None => vec![],
            Freeze::All => vec![String::new()],
            Freeze::Through(stage) => self.arch.prefixes_through(stage).unwrap_or_default(),
            Freeze::Prefixes(p) => p.clone(),
        }
    }

    fn network(&self, b: &mut Builder, classes: usize) -> Result<Box<dyn Classifier>> {
        let head_name = self.arch.head_name(&self.head);
        Ok(match &self.arch {
            Arch::SmallCnn => Box::new(smallcnn::SmallCnn::build(b, &self.head, head_name, classes)?),
            Arch::ResNet { bottleneck, layers, widths } => Box::new(resnet::ResNet::build(
                b,
                *bottleneck,
                layers,
                widths,
                self.stem,
                &self.head,
                head_name,
                classes,
            )?),
            Arch::DenseNet { growth, blocks, init_features, bn_size } => Box::new(densenet::DenseNet::build(
                b,
                *growth,
                blocks,
                *init_features,
                *bn_size,
                self.stem,
                &self.head,
                head_name,
                classes,
            )?),
            Arch::Vgg { features, batch_norm, hidden } => {
                Box::new(vgg::Vgg::build(b, features, *batch_norm, *hidden, &self.head, head_name, classes)?)
            }
        })
    }

    /// Builds the model on `device`: initialised from `seed`, then loaded with
    /// the pretrained weights, with frozen parameters detached.
    pub fn build(&self, classes: usize, device: &Device, seed: u64) -> std::result::Result<Built, ModelError> {
        self.build_with(classes, device, seed, DType::F32)
    }

    /// [`ModelSpec::build`] with convolutions and linear layers computing in
    /// `compute` (`BF16` for mixed precision; weights stay f32).
    pub fn build_with(
        &self,
        classes: usize,
        device: &Device,
        seed: u64,
        compute: DType,
    ) -> std::result::Result<Built, ModelError> {
        self.check()?;
        let err = |source: candle_core::Error| ModelError::Build { model: self.name.clone(), source };
        let varmap = VarMap::new();
        let nothing = |_: &str| false;
        let mut b = Builder::new(&varmap, device, &nothing, false);
        self.network(&mut b, classes).map_err(err)?;
        nn::init_weights(&varmap, &b.inits, seed).map_err(err)?;
        let head = format!("{}.", self.arch.head_name(&self.head));
        let is_head = |n: &str| n.starts_with(&head) || n == head.trim_end_matches('.');
        if let Some(source) = &self.pretrained {
            let path = match source.as_str() {
                "imagenet" => super::weights::imagenet_file(&self.name)?,
                p => p.into(),
            };
            let loaded = super::weights::load_into(&varmap, &path, &is_head, source == "imagenet")?;
            tracing::info!(
                model = %self.name,
                tensors = loaded.loaded,
                fresh_head = loaded.fresh_head.len(),
                "loaded pretrained weights from {}",
                path.display()
            );
        }

        let prefixes = self.frozen_prefixes();
        let user_prefixes = matches!(self.freeze, Freeze::Prefixes(_));
        let frozen = |n: &str| (user_prefixes || !is_head(n)) && prefixes.iter().any(|p| n.starts_with(p.as_str()));
        let mut b = Builder::new(&varmap, device, &frozen, self.freeze_bn).with_compute(compute);
        let model = self.network(&mut b, classes).map_err(err)?;
        let everything = |_: &str| true;
        let mut b = Builder::new(&varmap, device, &everything, false).with_compute(compute);
        let inference = self.network(&mut b, classes).map_err(err)?;

        let data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        if let Freeze::Prefixes(prefixes) = &self.freeze {
            if let Some(p) = prefixes.iter().find(|p| !names.iter().any(|n| n.starts_with(p.as_str()))) {
                return Err(ModelError::Invalid(format!("freeze: no parameter of {} starts with `{p}`", self.name)));
            }
        }
        let trainable: Vec<(String, Var)> =
            names.into_iter().filter(|n| !is_buffer(n) && !frozen(n)).map(|n| (n.clone(), data[n].clone())).collect();
        drop(data);
        if trainable.is_empty() {
            return Err(ModelError::Invalid(format!(
                "freeze: every parameter of {} is frozen, nothing would train",
                self.name
            )));
        }
        Ok(Built { model, inference, varmap, trainable, stages: self.arch.stages() })
    }
}

/// Why a model cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No such architecture.
    #[error("model `{name}` is not available{hint} (available: {available})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// `; did you mean `resnet18`?` where a name differs from it only
        /// in case and punctuation (`ResNet18`, `resnet-18`), else empty.
        hint: String,
        /// The names there are.
        available: String,
    },
    /// The configuration does not fit the architecture (stem, freeze, pretrained, head).
    #[error("{0}")]
    Invalid(String),
    /// The pretrained weights could not be had or do not fit.
    #[error(transparent)]
    Weights(#[from] super::weights::WeightsError),
    /// Building the layers failed.
    #[error("building {model}: {source}")]
    Build {
        /// The architecture.
        model: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
}

impl ModelError {
    fn unknown(name: &str) -> ModelError {
        let plain =
            |s: &str| s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect::<String>();
        let hint =
            MODELS.iter().find(|m| plain(m) == plain(name)).map_or(String::new(), |m| format!("; did you mean `{m}`?"));
        ModelError::Unknown { name: name.to_owned(), hint, available: MODELS.join(", ") }
    }
}

/// BatchNorm buffers: saved with the model, never optimised.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var") || name.ends_with(".num_batches_tracked")
}

/// Why a configuration cannot be built, before any tensor is made.
pub fn check(config: &RunConfig) -> std::result::Result<(), ModelError> {
    ModelSpec::of(config).map(|_| ())
}

/// Builds the model of `config` on `device`, initialised from the run seed (and
/// loaded with its pretrained weights).
pub fn build(config: &RunConfig, classes: usize, device: &Device) -> std::result::Result<Built, ModelError> {
    let compute = match config.precision {
        crate::spec::Precision::Bf16 => DType::BF16,
        crate::spec::Precision::F32 | crate::spec::Precision::Tf32 => DType::F32,
    };
    ModelSpec::of(config)?.build_with(classes, device, config.seed, compute)
}
