//! Image transforms with torchvision's meaning: [`Transform`].

use super::{de, fmt, Deserialize, Deserializer, MapAccess, Serialize, Visitor};

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
    /// (also `cifar100`, `mnist`, `fashion-mnist`, `svhn`, `stl10`, `imagenet`).
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
pub const NORMALIZE_STATS: [(&str, [f64; 3], [f64; 3]); 7] = [
    ("cifar10", [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    ("cifar100", [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    // The grey sets' one channel, in each of the three (the images are grey in RGB).
    ("mnist", [0.1307; 3], [0.3081; 3]),
    ("fashion-mnist", [0.2860; 3], [0.3530; 3]),
    ("svhn", [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    ("stl10", [0.4467, 0.4398, 0.4066], [0.2603, 0.2566, 0.2713]),
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
                f.write_str(
                    "{ mean = [r, g, b], std = [r, g, b] } or a dataset name (cifar10, cifar100, mnist, fashion-mnist, \
                     svhn, stl10, imagenet)",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Normalize, E> {
                NORMALIZE_STATS
                    .iter()
                    .find(|(n, _, _)| *n == s)
                    .map(|&(_, mean, std)| Normalize { mean, std })
                    .ok_or_else(|| {
                        let known = NORMALIZE_STATS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ");
                        E::custom(format!("normalize: unknown dataset `{s}`; known: {known}"))
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
