//! The canonical configuration of one run: every field filled in.
//!
//! A [`RunConfig`] is what the trainer reads, what the queue stores (as JSON) and
//! what the run's key is a hash of (see [`crate::plan::key`]). The types here are
//! the single typed home of every hyper-parameter; the sweep file (see
//! [`super::file`]) is merged into them field by field.
//!
//! **Hash stability.** A field added after runs have been recorded must not change
//! the key of configs that do not use it: give it a default and
//! `#[serde(default, skip_serializing_if = "…is default…")]`.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Everything a run needs to be trained, with all defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Which images to train and test on.
    pub dataset: DatasetSpec,
    /// Backbone architecture, e.g. `smallcnn` (see [`crate::train::models`]).
    pub model: String,
    /// `"imagenet"` or a weights file; `None` trains from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// Which backbone parameters get no gradient update.
    #[serde(default)]
    pub freeze: Freeze,
    /// Frozen BatchNorm layers also keep their running statistics (eval mode in
    /// training). Off by default, as with `requires_grad = False` in PyTorch.
    #[serde(default, skip_serializing_if = "is_false")]
    pub freeze_bn: bool,
    /// The ResNet/DenseNet stem: `imagenet` (7x7/2 conv + max-pool) or `cifar`
    /// (3x3/1 conv, no max-pool).
    #[serde(default, skip_serializing_if = "Stem::is_imagenet")]
    pub stem: Stem,
    /// The classification head that replaces the backbone's last layer.
    #[serde(default)]
    pub head: Head,
    /// Name of the augmentation set (resolved into `train_transforms`/`test_transforms`).
    pub augment: String,
    /// Transforms applied to each training image, in order.
    pub train_transforms: Vec<Transform>,
    /// Transforms applied to each test image, in order.
    pub test_transforms: Vec<Transform>,
    /// Images per optimisation step.
    pub batch_size: usize,
    /// Number of passes over the training set.
    pub epochs: usize,
    /// Optimiser and its hyper-parameters.
    pub optimizer: OptimizerSpec,
    /// Learning-rate schedule.
    pub schedule: ScheduleSpec,
    /// Linear warmup before the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// Which checkpoints a finished run keeps. Not part of the run's key: it
    /// does not change the numbers.
    #[serde(default, skip_serializing_if = "Keep::is_default")]
    pub keep: Keep,
    /// Share of the training set held out as a validation split (seeded by the
    /// run seed), evaluated every epoch; `metric = "val_acc"` then chooses the
    /// best epoch on it. 0: no split (the term report chose on the test set).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub val_split: f64,
    /// Drop the last training batch of an epoch when it is short
    /// (`DataLoader(drop_last=True)`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_last: bool,
    /// Stop when a metric has not improved for `patience` epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStop>,
    /// Label smoothing of the training loss (`CrossEntropyLoss(label_smoothing=…)`);
    /// the test loss is always plain cross-entropy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Whether the schedule advances per epoch or per optimizer step.
    #[serde(default, skip_serializing_if = "LrInterval::is_epoch")]
    pub lr_interval: LrInterval,
    /// Arithmetic of convolutions and matrix products: `f32` (default),
    /// `tf32` (f32 with TensorFloat-32 matmuls on NVIDIA GPUs) or `bf16`.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// The metric whose best epoch is kept as the best checkpoint.
    pub metric: Metric,
    /// Seed for initialisation, shuffling, augmentation and dropout.
    pub seed: u64,
}

/// Whether `choice` names a device: `auto`, `cpu` or `cuda:N`.
pub fn valid_device(choice: &str) -> bool {
    matches!(choice, "cpu" | "auto") || choice.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok())
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The first layers of a ResNet or DenseNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// torchvision's: 7x7 conv with stride 2, then a 3x3/2 max-pool.
    #[default]
    #[serde(rename = "imagenet")]
    ImageNet,
    /// For 32x32 images from scratch: a 3x3 conv with stride 1, no max-pool.
    Cifar,
}

impl Stem {
    fn is_imagenet(&self) -> bool {
        *self == Stem::ImageNet
    }
}

/// Where the images come from.
///
/// `dataset = "synthetic"`, `dataset = "cifar10"` (found in the cache or
/// downloaded), `dataset = { name = "cifar100", path = "data" }`, or an image
/// folder `dataset = { folder = "images.tar.gz" }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetSpec {
    /// `synthetic`, `cifar10`, `cifar100` or `folder`.
    pub name: DatasetName,
    /// cifar: the release folder or a folder holding it; folder: the image
    /// tree, `.tar` or `.tar.gz`. Relative paths are relative to the sweep file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Number of training images (synthetic: generated; others: the first N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_size: Option<usize>,
    /// Number of test images (synthetic: generated; others: the first N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_size: Option<usize>,
    /// Seed of the generated images (synthetic) or of the `test_split` (folder),
    /// independent of the run seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    /// folder with a single `<class>/` tree: the share of each class held out as test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_split: Option<f64>,
}

impl Eq for DatasetSpec {}
impl std::hash::Hash for DatasetSpec {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.name, &self.path, self.train_size, self.test_size, self.data_seed, self.test_split.map(f64::to_bits))
            .hash(h);
    }
}

/// The datasets sweep can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    /// Coloured shapes and patterns, 10 classes, 32x32, generated from a seed.
    Synthetic,
    /// CIFAR-10, either official release.
    Cifar10,
    /// CIFAR-100 (fine labels), either official release.
    Cifar100,
    /// An image folder or archive in torchvision's `ImageFolder` layout.
    Folder,
}

impl DatasetSpec {
    /// A dataset given by name only, with every other field at its default.
    pub fn named(name: DatasetName) -> Self {
        DatasetSpec { name, path: None, train_size: None, test_size: None, data_seed: None, test_split: None }
    }
}

impl<'de> Deserialize<'de> for DatasetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Repr {
            name: Option<DatasetName>,
            folder: Option<String>,
            path: Option<String>,
            train_size: Option<usize>,
            test_size: Option<usize>,
            data_seed: Option<u64>,
            test_split: Option<f64>,
        }
        let r = Repr::deserialize(d)?;
        let (name, path) = match (r.name, r.folder, r.path) {
            (None | Some(DatasetName::Folder), Some(f), None) => (DatasetName::Folder, Some(f)),
            (Some(_), Some(_), _) | (None, Some(_), Some(_)) => {
                return Err(de::Error::custom("dataset: give either `folder = PATH` or `name` (and `path`), not both"))
            }
            (Some(n), None, p) => (n, p),
            (None, None, _) => return Err(de::Error::custom("dataset: missing `name` (or `folder = PATH`)")),
        };
        Ok(DatasetSpec {
            name,
            path,
            train_size: r.train_size,
            test_size: r.test_size,
            data_seed: r.data_seed,
            test_split: r.test_split,
        })
    }
}

/// `dataset = "synthetic"` or `dataset = { name = "cifar10", path = "…" }`.
pub(crate) fn deserialize_dataset<'de, D: Deserializer<'de>>(d: D) -> Result<DatasetSpec, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = DatasetSpec;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(
                "a dataset name (\"synthetic\", \"cifar10\", \"cifar100\") or a table { name = …, path = … } or { folder = … }",
            )
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<DatasetSpec, E> {
            let name = DatasetName::deserialize(de::value::StrDeserializer::<E>::new(s))?;
            Ok(DatasetSpec::named(name))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DatasetSpec, A::Error> {
            DatasetSpec::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V)
}

/// Which parameters are frozen (excluded from the optimiser).
///
/// `"none"`, `"all"` (only the head trains), `{ through = "layer2" }` (the stem and
/// every stage up to and including the named one), or a list of parameter-name
/// prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Freeze {
    /// Everything trains.
    #[default]
    None,
    /// Only the head trains.
    All,
    /// The stem and the stages up to and including this one are frozen.
    Through(String),
    /// Parameters whose name starts with one of these are frozen.
    Prefixes(Vec<String>),
}

impl Serialize for Freeze {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Freeze::None => s.serialize_str("none"),
            Freeze::All => s.serialize_str("all"),
            Freeze::Through(stage) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("through", stage)?;
                m.end()
            }
            Freeze::Prefixes(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Freeze {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Freeze;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"none\", \"all\", { through = \"STAGE\" } or a list of parameter-name prefixes")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Freeze, E> {
                match s {
                    "none" => Ok(Freeze::None),
                    "all" => Ok(Freeze::All),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Freeze, A::Error> {
                let mut out = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    out.push(p);
                }
                Ok(Freeze::Prefixes(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Freeze, A::Error> {
                let mut through = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "through" {
                        return Err(de::Error::unknown_field(&k, &["through"]));
                    }
                    through = Some(map.next_value::<String>()?);
                }
                through.map(Freeze::Through).ok_or_else(|| de::Error::missing_field("through"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The classification head.
///
/// `"linear"`: one Linear(features, classes). `{ hidden = [1024], dropout = [0.5] }`:
/// Linear-ReLU-Dropout per hidden layer, then Linear(…, classes), named like
/// torchvision's `nn.Sequential` (`fc.0`, `fc.3`, …).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Head {
    /// A single linear layer.
    #[default]
    Linear,
    /// A multi-layer perceptron.
    Mlp {
        /// Width of each hidden layer.
        hidden: Vec<usize>,
        /// Dropout probability after each hidden layer (same length as `hidden`).
        dropout: Vec<f64>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MlpRepr {
    hidden: Vec<usize>,
    #[serde(default)]
    dropout: Vec<f64>,
}

impl Serialize for Head {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Head::Linear => s.serialize_str("linear"),
            Head::Mlp { hidden, dropout } => MlpRepr { hidden: hidden.clone(), dropout: dropout.clone() }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Head;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"linear\" or { hidden = [N, …], dropout = [p, …] }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Head, E> {
                match s {
                    "linear" => Ok(Head::Linear),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Head, A::Error> {
                let r = MlpRepr::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let dropout = if r.dropout.is_empty() { vec![0.0; r.hidden.len()] } else { r.dropout };
                if dropout.len() != r.hidden.len() {
                    return Err(de::Error::custom(format!(
                        "head: `dropout` has {} values but `hidden` has {}",
                        dropout.len(),
                        r.hidden.len()
                    )));
                }
                if let Some(p) = dropout.iter().find(|p| !(0.0..1.0).contains(*p)) {
                    return Err(de::Error::custom(format!("head: dropout {p} is not in [0, 1)")));
                }
                if r.hidden.contains(&0) {
                    return Err(de::Error::custom("head: a hidden layer of width 0"));
                }
                Ok(Head::Mlp { hidden: r.hidden, dropout })
            }
        }
        d.deserialize_any(V)
    }
}

/// One image transform, with torchvision's meaning (`torchvision.transforms`
/// applied to a float tensor image in [0, 1]).
///
/// Written in TOML as a one-key table: `{ random_crop = { size = 32, padding = 4 } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// Bilinear resize with antialiasing (`Resize(size)`): the shorter side
    /// becomes `size` and the other keeps the aspect ratio, as in torchvision.
    Resize {
        /// Length of the shorter side after resizing, in pixels.
        size: usize,
    },
    /// Pad by `padding` on every side, then crop `size` x `size` at a random position.
    RandomCrop {
        /// Output side in pixels.
        size: usize,
        /// Pixels of padding on every side.
        #[serde(default)]
        padding: usize,
        /// `constant` (fill with `fill`) or `reflect`.
        #[serde(default)]
        padding_mode: PaddingMode,
        /// Fill value (0-255) for constant padding.
        #[serde(default)]
        fill: u8,
    },
    /// Crop `size` x `size` from the centre (padding with zeros when the image is smaller).
    CenterCrop {
        /// Output side in pixels.
        size: usize,
    },
    /// Mirror left-right with probability `p`.
    Hflip {
        /// Probability of flipping.
        #[serde(default = "half")]
        p: f64,
    },
    /// `RandomRotation(degrees)`: an angle drawn from [-degrees, degrees], nearest
    /// neighbour, the image size kept, uncovered pixels set to `fill`.
    Rotation {
        /// Maximum angle in degrees.
        degrees: f64,
        /// Fill value (0-255) outside the rotated image.
        #[serde(default)]
        fill: u8,
    },
    /// `RandomAffine`: rotation, translation, scale and x-shear drawn at random
    /// around the image centre, nearest neighbour.
    Affine {
        /// Maximum rotation in degrees.
        #[serde(default)]
        degrees: f64,
        /// Maximum translation as fractions of width and height.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        translate: Option<[f64; 2]>,
        /// Scale range.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scale: Option<[f64; 2]>,
        /// Maximum shear parallel to the x axis, in degrees.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shear: Option<f64>,
        /// Fill value (0-255) outside the transformed image.
        #[serde(default, skip_serializing_if = "is_zero_u8")]
        fill: u8,
    },
    /// `ColorJitter`: brightness, contrast, saturation and hue changed by random
    /// factors, in a random order.
    ColorJitter {
        /// Brightness factor range 1 ± b.
        #[serde(default)]
        brightness: f64,
        /// Contrast factor range 1 ± c.
        #[serde(default)]
        contrast: f64,
        /// Saturation factor range 1 ± s.
        #[serde(default)]
        saturation: f64,
        /// Hue shift range ± h (at most 0.5).
        #[serde(default)]
        hue: f64,
    },
    /// Per-channel `(x - mean) / std`: `{ normalize = { mean = [...], std = [...] } }`
    /// or a dataset's standard values by name, `{ normalize = "cifar10" }`
    /// (also `cifar100`, `imagenet`).
    Normalize(Normalize),
    /// Cutout (DeVries & Taylor, 2017): a `size` x `size` square at a random
    /// centre (clipped at the border) set to 0, with probability `p`.
    Cutout {
        /// Side of the square in pixels.
        size: usize,
        /// Probability of applying it.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        p: f64,
    },
    /// `RandomErasing`: with probability `p`, a rectangle of random area (a share
    /// of the image in `scale`) and aspect ratio (log-uniform in `ratio`) set to `value`.
    RandomErasing {
        /// Probability of erasing.
        #[serde(default = "half")]
        p: f64,
        /// Range of the erased share of the image.
        #[serde(default = "erase_scale")]
        scale: [f64; 2],
        /// Range of the aspect ratio.
        #[serde(default = "erase_ratio")]
        ratio: [f64; 2],
        /// The value written (in the units of the image at that point of the list).
        #[serde(default)]
        value: f64,
    },
}

/// Mean and standard deviation of [`Transform::Normalize`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Normalize {
    /// Channel means.
    pub mean: [f64; 3],
    /// Channel standard deviations.
    pub std: [f64; 3],
}

/// The standard per-channel statistics of the datasets `normalize` knows by name.
pub const NORMALIZE_STATS: [(&str, [f64; 3], [f64; 3]); 3] = [
    ("cifar10", [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    ("cifar100", [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    ("imagenet", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
];

impl<'de> Deserialize<'de> for Normalize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Repr {
            mean: [f64; 3],
            std: [f64; 3],
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Normalize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("{ mean = [r, g, b], std = [r, g, b] } or a dataset name (cifar10, cifar100, imagenet)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Normalize, E> {
                NORMALIZE_STATS
                    .iter()
                    .find(|(n, _, _)| *n == s)
                    .map(|&(_, mean, std)| Normalize { mean, std })
                    .ok_or_else(|| {
                        E::custom(format!("normalize: unknown dataset `{s}`; known: cifar10, cifar100, imagenet"))
                    })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Normalize, A::Error> {
                let r = Repr::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Normalize { mean: r.mean, std: r.std })
            }
        }
        d.deserialize_any(V)
    }
}

fn one() -> f64 {
    1.0
}
fn is_one(v: &f64) -> bool {
    *v == 1.0
}
fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}
fn erase_scale() -> [f64; 2] {
    [0.02, 0.33]
}
fn erase_ratio() -> [f64; 2] {
    [0.3, 3.3]
}

fn half() -> f64 {
    0.5
}

/// How [`Transform::RandomCrop`] pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingMode {
    /// Pad with a constant value.
    #[default]
    Constant,
    /// Mirror the image at its border (without repeating the edge pixel).
    Reflect,
}

impl Transform {
    /// The transform's name as written in the sweep file.
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Resize { .. } => "resize",
            Transform::RandomCrop { .. } => "random_crop",
            Transform::CenterCrop { .. } => "center_crop",
            Transform::Hflip { .. } => "hflip",
            Transform::Rotation { .. } => "rotation",
            Transform::Affine { .. } => "affine",
            Transform::ColorJitter { .. } => "color_jitter",
            Transform::Normalize(_) => "normalize",
            Transform::Cutout { .. } => "cutout",
            Transform::RandomErasing { .. } => "random_erasing",
        }
    }
}

/// The optimiser, with PyTorch's update rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// `torch.optim.SGD`.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// Dampening for momentum.
        #[serde(default)]
        dampening: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// `false`: no weight decay on BatchNorm weights and biases (parameters of
        /// rank 1), as with a second parameter group in PyTorch.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        decay_bn_bias: bool,
        /// Clip the gradients' global L2 norm to this value before each step
        /// (`torch.nn.utils.clip_grad_norm_`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip_grad_norm: Option<f64>,
    },
    /// `torch.optim.Adam` (L2 penalty added to the gradient).
    Adam {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages.
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Term added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// The AMSGrad variant (the maximum of the second moments).
        #[serde(default, skip_serializing_if = "is_false")]
        amsgrad: bool,
        /// `false`: no weight decay on BatchNorm weights and biases (parameters of
        /// rank 1), as with a second parameter group in PyTorch.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        decay_bn_bias: bool,
        /// Clip the gradients' global L2 norm to this value before each step
        /// (`torch.nn.utils.clip_grad_norm_`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip_grad_norm: Option<f64>,
    },
    /// `torch.optim.AdamW` (decoupled weight decay).
    Adamw {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages.
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Term added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay.
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
        /// The AMSGrad variant (the maximum of the second moments).
        #[serde(default, skip_serializing_if = "is_false")]
        amsgrad: bool,
        /// `false`: no weight decay on BatchNorm weights and biases (parameters of
        /// rank 1), as with a second parameter group in PyTorch.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        decay_bn_bias: bool,
        /// Clip the gradients' global L2 norm to this value before each step
        /// (`torch.nn.utils.clip_grad_norm_`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip_grad_norm: Option<f64>,
    },
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div_factor() -> f64 {
    25.0
}
fn default_final_div_factor() -> f64 {
    1e4
}
fn default_base_momentum() -> f64 {
    0.85
}
fn default_max_momentum() -> f64 {
    0.95
}

/// Linear warmup before the schedule (PyTorch's `LinearLR` then the schedule,
/// chained with `SequentialLR`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Length in epochs (or in optimizer steps with `lr_interval = "step"`).
    pub iters: usize,
    /// The first lr is base lr x start_factor, rising linearly to the base lr.
    #[serde(default = "default_warmup_start")]
    pub start_factor: f64,
}

fn default_warmup_start() -> f64 {
    0.1
}

/// Early stopping: after each epoch, a run whose `metric` has not improved by
/// more than `min_delta` on its best value for `patience` epochs stops (done,
/// with a note), like Keras'/Lightning's `EarlyStopping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStop {
    /// The metric watched (default: the sweep's metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

/// Checkpoint retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The best and the latest checkpoint (the latest resumes; both are kept).
    #[default]
    BestAndLatest,
    /// Only the best once the run is finished (the latest is needed only while
    /// it trains): one weights file per run for big sweeps.
    Best,
}

impl Keep {
    fn is_default(&self) -> bool {
        *self == Keep::BestAndLatest
    }
}

/// The arithmetic of a run's convolutions and matrix products.
///
/// `bf16` follows PyTorch's autocast split: convolutions and linear layers
/// compute in bfloat16 from f32 master weights (cast at each use, so the
/// optimizer updates f32 weights), their outputs return to f32, and
/// BatchNorm, activations, pooling and the loss stay in f32. `tf32` keeps f32
/// tensors and lets cuBLAS use TensorFloat-32 for f32 matmuls (no effect on a CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Plain f32.
    #[default]
    F32,
    /// f32 with TensorFloat-32 matmuls on the GPU.
    Tf32,
    /// bfloat16 convolutions and matmuls, f32 master weights.
    Bf16,
}

impl Precision {
    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

/// How often the schedule advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrInterval {
    /// Once per epoch: milestones, step sizes, t_max and warmup count epochs.
    #[default]
    Epoch,
    /// After every optimizer step: they count steps.
    Step,
}

impl LrInterval {
    fn is_epoch(&self) -> bool {
        *self == LrInterval::Epoch
    }
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_wd() -> f64 {
    0.01
}

impl OptimizerSpec {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } | OptimizerSpec::Adamw { lr, .. } => *lr,
        }
    }

    /// Whether BatchNorm weights and biases (rank-1 parameters) are decayed.
    pub fn decay_bn_bias(&self) -> bool {
        match self {
            OptimizerSpec::Sgd { decay_bn_bias, .. }
            | OptimizerSpec::Adam { decay_bn_bias, .. }
            | OptimizerSpec::Adamw { decay_bn_bias, .. } => *decay_bn_bias,
        }
    }

    /// The maximum global gradient norm, if clipping.
    pub fn clip_grad_norm(&self) -> Option<f64> {
        match self {
            OptimizerSpec::Sgd { clip_grad_norm, .. }
            | OptimizerSpec::Adam { clip_grad_norm, .. }
            | OptimizerSpec::Adamw { clip_grad_norm, .. } => *clip_grad_norm,
        }
    }
}

/// Learning-rate schedule, stepped once per epoch as PyTorch's epoch schedulers are:
/// the lr of (0-based) epoch `e` is `lr_at(e)`; milestones count completed epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScheduleSpec {
    /// The base lr throughout.
    Constant,
    /// `MultiStepLR`: from each milestone on, base lr x factor (or x gamma^k).
    Multistep {
        /// Epoch counts at which the lr changes, increasing.
        milestones: Vec<usize>,
        /// Factor of the base lr from each milestone on (same length as milestones).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        factors: Option<Vec<f64>>,
        /// Multiplicative decay at each milestone (when `factors` is absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gamma: Option<f64>,
    },
    /// `StepLR`: x gamma every `step_size` epochs.
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Multiplicative decay.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// `OneCycleLR` (cosine annealing, two phases), always stepped per batch over
    /// the whole run; cycles SGD's momentum (Adam's beta1) inversely, as PyTorch
    /// does by default.
    Onecycle {
        /// Peak learning rate (default: the optimizer's lr).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_lr: Option<f64>,
        /// Share of the steps spent increasing the lr.
        #[serde(default = "default_pct_start")]
        pct_start: f64,
        /// Initial lr = max_lr / div_factor.
        #[serde(default = "default_div_factor")]
        div_factor: f64,
        /// Final lr = initial lr / final_div_factor.
        #[serde(default = "default_final_div_factor")]
        final_div_factor: f64,
        /// Cycle momentum (beta1) between `max_momentum` and `base_momentum`.
        #[serde(default = "yes")]
        cycle_momentum: bool,
        /// Momentum at the lr peak.
        #[serde(default = "default_base_momentum")]
        base_momentum: f64,
        /// Momentum at the start and the end.
        #[serde(default = "default_max_momentum")]
        max_momentum: f64,
    },
    /// `CosineAnnealingLR` over `t_max` epochs (default: the run's epochs).
    Cosine {
        /// Half period in epochs; 0 means the run's epoch count.
        #[serde(default)]
        t_max: usize,
        /// Minimum learning rate.
        #[serde(default)]
        eta_min: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}

/// The per-epoch metric that decides which epoch is "best".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Top-1 accuracy on the test split (maximised).
    TestAcc,
    /// Mean cross-entropy on the test split (minimised).
    TestLoss,
    /// Top-1 accuracy on the training batches (maximised).
    TrainAcc,
    /// Mean cross-entropy on the training batches (minimised).
    TrainLoss,
    /// Top-1 accuracy on the validation split (`val_split`; maximised).
    ValAcc,
    /// Mean cross-entropy on the validation split (minimised).
    ValLoss,
}

impl Metric {
    /// Whether larger values are better.
    pub fn maximize(self) -> bool {
        matches!(self, Metric::TestAcc | Metric::TrainAcc | Metric::ValAcc)
    }

    /// Whether the metric needs a validation split.
    pub fn needs_validation(self) -> bool {
        matches!(self, Metric::ValAcc | Metric::ValLoss)
    }
    /// `maximize` or `minimize`.
    pub fn goal(self) -> &'static str {
        if self.maximize() {
            "maximize"
        } else {
            "minimize"
        }
    }
    /// The column name used in the database and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::TestAcc => "test_acc",
            Metric::TestLoss => "test_loss",
            Metric::TrainAcc => "train_acc",
            Metric::TrainLoss => "train_loss",
            Metric::ValAcc => "val_acc",
            Metric::ValLoss => "val_loss",
        }
    }
    /// Whether `new` is better than `old` under this metric's goal.
    pub fn improves(self, new: f64, old: Option<f64>) -> bool {
        match old {
            None => new.is_finite(),
            Some(old) => {
                if self.maximize() {
                    new > old
                } else {
                    new < old
                }
            }
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
