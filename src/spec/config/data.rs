//! Where the images come from: [`DatasetSpec`].

use super::{de, fmt, Deserialize, Deserializer, MapAccess, Serialize, Visitor};

/// Where the images come from.
///
/// `dataset = "synthetic"`, `dataset = "cifar10"` (found in the cache or
/// downloaded; also `cifar100`, `mnist`, `fashion-mnist`, `svhn`, `stl10`),
/// `dataset = { name = "cifar100", path = "data" }`, or an image
/// folder `dataset = { folder = "images.tar.gz" }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetSpec {
    /// `synthetic`, `cifar10`, `cifar100`, `mnist`, `fashion-mnist`, `svhn`, `stl10` or `folder`.
    pub name: DatasetName,
    /// cifar, mnist, svhn, stl10: the release folder or a folder holding it; folder: the image
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
    /// folder: leave out the images that cannot be read or decoded (each
    /// named in the run's log) instead of failing the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_unreadable: bool,
    /// folder: resize every image once, at load, so that its shorter side is
    /// this many pixels (torchvision's `Resize(N)` on a PIL image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<usize>,
}

impl Eq for DatasetSpec {}
impl std::hash::Hash for DatasetSpec {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (
            self.name,
            &self.path,
            self.train_size,
            self.test_size,
            self.data_seed,
            self.test_split.map(f64::to_bits),
            self.skip_unreadable,
            self.resize,
        )
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
    /// MNIST's handwritten digits, 28x28 grey, from its IDX files.
    Mnist,
    /// Fashion-MNIST (Zalando Research), 28x28 grey, from its IDX files.
    #[serde(rename = "fashion-mnist", alias = "fashion_mnist")]
    FashionMnist,
    /// SVHN's cropped digits, 32x32, from its MATLAB files.
    Svhn,
    /// STL-10's labelled images, 96x96, from its binary release.
    Stl10,
    /// An image folder or archive in torchvision's `ImageFolder` layout.
    Folder,
}

impl DatasetSpec {
    /// A dataset given by name only, with every other field at its default.
    pub fn named(name: DatasetName) -> Self {
        DatasetSpec {
            name,
            path: None,
            train_size: None,
            test_size: None,
            data_seed: None,
            test_split: None,
            skip_unreadable: false,
            resize: None,
        }
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
            skip_unreadable: Option<bool>,
            resize: Option<usize>,
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
            skip_unreadable: r.skip_unreadable.unwrap_or(false),
            resize: r.resize,
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
                "a dataset name (\"synthetic\", \"cifar10\", \"cifar100\", \"mnist\", \"fashion-mnist\", \"svhn\", \"stl10\") or a table \
                 { name = …, path = … } or { folder = … }",
            )
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<DatasetSpec, E> {
            let name = DatasetName::deserialize(de::value::StrDeserializer::<E>::new(s)).map_err(|e| {
                // `CIFAR10`, `cifar-10`: say which name was meant.
                let plain =
                    |v: &str| v.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
                match ["synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "stl10"]
                    .into_iter()
                    .find(|n| plain(n) == plain(s))
                {
                    Some(n) => E::custom(format!("unknown dataset `{s}`; did you mean `{n}`?")),
                    None => e,
                }
            })?;
            Ok(DatasetSpec::named(name))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DatasetSpec, A::Error> {
            DatasetSpec::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V)
}
