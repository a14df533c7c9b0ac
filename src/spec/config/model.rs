//! The network: [`Stem`], [`Freeze`], [`Head`].

use super::{de, fmt, Deserialize, Deserializer, MapAccess, SeqAccess, Serialize, Visitor};

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
    pub(super) fn is_imagenet(&self) -> bool {
        *self == Stem::ImageNet
    }
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
