//! The model spec that fits a weights file: head and stem read from the
//! tensors' shapes (`sweep eval`, loading a checkpoint without its config).

use super::{Arch, ModelError, ModelSpec};
use crate::spec::{Freeze, Head, Stem};
use std::path::Path;

impl ModelSpec {
    /// The spec of model `name` for the weights in `path` (a sweep checkpoint or
    /// any state_dict with a replaced head): the head's layers and the number of
    /// classes are read from the tensors' shapes, as is the stem. Returns the
    /// spec (loading `path`) and the number of classes.
    pub fn for_weights(name: &str, path: &Path) -> std::result::Result<(ModelSpec, usize), ModelError> {
        let arch = Arch::named(name).ok_or_else(|| ModelError::unknown(name))?;
        let tensors = crate::train::weights::read(path)?;
        let out_dim = |k: &str| tensors.get(&format!("{k}.weight")).and_then(|t| t.dims().first().copied());
        let base = match arch {
            Arch::SmallCnn | Arch::ResNet { .. } => "fc",
            Arch::DenseNet { .. } | Arch::Vgg { .. } => "classifier",
        };
        let (head, classes) = match (out_dim(base), &arch) {
            (Some(c), a) if !matches!(a, Arch::Vgg { .. }) => (Head::Linear, c),
            _ => {
                let dims: Vec<usize> = (0..).map_while(|i| out_dim(&format!("{base}.{}", 3 * i))).collect();
                let Some((&classes, hidden)) = dims.split_last() else {
                    return Err(ModelError::Invalid(format!(
                        "{}: no `{base}.weight` or `{base}.0.weight`: not {name} weights",
                        path.display()
                    )));
                };
                (Head::Mlp { hidden: hidden.to_vec(), dropout: vec![0.0; hidden.len()] }, classes)
            }
        };
        let stem_conv = if matches!(arch, Arch::DenseNet { .. }) { "features.conv0.weight" } else { "conv1.weight" };
        let stem = match tensors.get(stem_conv).map(|t| t.dims().get(2).copied()) {
            Some(Some(3)) if !matches!(arch, Arch::SmallCnn) => Stem::Cifar,
            _ => Stem::ImageNet,
        };
        let spec = ModelSpec {
            name: name.to_owned(),
            arch,
            head,
            stem,
            freeze: Freeze::None,
            freeze_bn: false,
            pretrained: Some(path.display().to_string()),
        };
        Ok((spec, classes))
    }
}
