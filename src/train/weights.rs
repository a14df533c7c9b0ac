//! Pretrained weights in: torchvision's `.pth` files (the zip format written by
//! `torch.save`) and safetensors files, and torchvision's ImageNet weights,
//! downloaded once into a cache folder.
//!
//! Names are torchvision's state_dict keys; the old DenseNet key style of
//! torchvision's published files (`denselayer1.norm.1.weight`) is renamed as
//! torchvision's own loader does (`denselayer1.norm1.weight`).
//!
//! Loading is strict about the backbone, like `load_state_dict(strict=True)`:
//! every backbone tensor must be in the file with the same shape, and the file
//! may hold nothing else but the head and `num_batches_tracked` counters. The
//! head is loaded when the file has it with the model's shapes (a sweep
//! checkpoint), and stays freshly initialised otherwise (ImageNet's 1000-class
//! layer, which `pretrained = "imagenet"` always replaces).
//!
//! Cache: `$SWEEP_CACHE/weights`, else `$XDG_CACHE_HOME/sweep/weights`, else
//! `~/.cache/sweep/weights`. A file already in torch's cache
//! (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`) is
//! used as is. `SWEEP_WEIGHTS_URL` replaces `https://download.pytorch.org/models`
//! (a mirror). A download is verified against the sha256 prefix in the file name,
//! as torch.hub does.

use crate::fetch::{self, FetchError};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or parsed.
    #[error("pretrained weights {}: {detail}", path.display())]
    Read {
        /// The weights file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The file does not fit the model.
    #[error("pretrained weights {}: {detail}", path.display())]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Which tensors do not fit.
        detail: String,
    },
    /// The ImageNet weights could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

const IMAGENET: &[(&str, &str)] = &[
    ("resnet18", "resnet18-f37072fd.pth"),
    ("resnet34", "resnet34-b627a593.pth"),
    ("resnet50", "resnet50-0676ba61.pth"),
    ("resnet101", "resnet101-63fe2227.pth"),
    ("resnet152", "resnet152-394f9c45.pth"),
    ("densenet121", "densenet121-a639ec97.pth"),
    ("densenet161", "densenet161-8d451a50.pth"),
    ("densenet169", "densenet169-b2777c0a.pth"),
    ("densenet201", "densenet201-c1103571.pth"),
    ("vgg11", "vgg11-8a719046.pth"),
    ("vgg11_bn", "vgg11_bn-6002323d.pth"),
    ("vgg13", "vgg13-19584684.pth"),
    ("vgg13_bn", "vgg13_bn-abd245e5.pth"),
    ("vgg16", "vgg16-397923af.pth"),
    ("vgg16_bn", "vgg16_bn-6c64b313.pth"),
    ("vgg19", "vgg19-dcbb9e9d.pth"),
    ("vgg19_bn", "vgg19_bn-c79401a0.pth"),
];

const DEFAULT_BASE: &str = "https://download.pytorch.org/models";

/// torchvision's IMAGENET1K_V1 URL for `model`.
pub fn imagenet_url(model: &str) -> Option<String> {
    IMAGENET.iter().find(|(m, _)| *m == model).map(|(_, f)| format!("{DEFAULT_BASE}/{f}"))
}

/// Where weights are cached and fetched from.
#[derive(Debug, Clone)]
pub struct WeightsCache {
    /// sweep's own folder (downloads go here).
    pub dir: PathBuf,
    /// torch's `hub/checkpoints` folder, searched first.
    pub torch_dir: Option<PathBuf>,
    /// Base URL of the files.
    pub base_url: String,
}

impl WeightsCache {
    /// The cache configured by the environment (see the module doc).
    pub fn from_env() -> WeightsCache {
        let dir = crate::env::cache_dir("weights");
        let torch_home = std::env::var_os("TORCH_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
        let torch_dir =
            torch_home.or_else(|| crate::env::xdg_cache().map(|x| x.join("torch"))).map(|t| t.join("hub/checkpoints"));
        let base_url = crate::env::WEIGHTS_URL.get().unwrap_or_else(|| DEFAULT_BASE.to_owned());
        WeightsCache { dir, torch_dir, base_url: base_url.trim_end_matches('/').to_owned() }
    }

    /// The local path of `file`, downloading it if no cache has it. The name's
    /// last `-` part before the extension must be a prefix of the sha256.
    pub fn fetch(&self, file: &str) -> Result<PathBuf, FetchError> {
        if let Some(t) = &self.torch_dir {
            if t.join(file).exists() {
                return Ok(t.join(file));
            }
        }
        let dest = self.dir.join(file);
        let expected = file.rsplit_once('-').and_then(|(_, h)| h.split('.').next()).unwrap_or("").to_owned();
        let verify = |d: &fetch::Digests| {
            let sha = &d.sha256;
            if expected.len() >= 6 && sha.starts_with(&expected) {
                Ok(())
            } else {
                Err(format!("its sha256 is {sha}, which does not start with `{expected}` from the file name"))
            }
        };
        let url = format!("{}/{file}", self.base_url);
        fetch::download(&url, &dest, &verify, true)?;
        Ok(dest)
    }
}

/// The ImageNet weights file of `model`, from the cache or downloaded.
pub fn imagenet_file(model: &str) -> Result<PathBuf, WeightsError> {
    let (_, file) = IMAGENET.iter().find(|(m, _)| *m == model).ok_or_else(|| WeightsError::Read {
        path: PathBuf::from(model),
        detail: "no ImageNet weights for this model".into(),
    })?;
    Ok(WeightsCache::from_env().fetch(file)?)
}

/// torchvision's renaming of old DenseNet keys: `…denselayerN.norm.1.weight`
/// becomes `…denselayerN.norm1.weight` (also `conv.2`, `relu.1`).
fn rename(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let n = parts.len();
    if n >= 4
        && parts[n - 4].starts_with("denselayer")
        && ["norm", "relu", "conv"].contains(&parts[n - 3])
        && ["1", "2"].contains(&parts[n - 2])
        && ["weight", "bias", "running_mean", "running_var"].contains(&parts[n - 1])
    {
        let mut out = parts[..n - 3].to_vec();
        let merged = format!("{}{}", parts[n - 3], parts[n - 2]);
        out.push(&merged);
        out.push(parts[n - 1]);
        return out.join(".");
    }
    key.to_owned()
}

/// Reads every tensor of a safetensors file or a torch zip `.pth` file (a
/// state_dict, or a checkpoint dict holding one: see [`super::pth::read`]), on
/// the CPU. The format is recognised by the file's first bytes. Keys saved
/// under DDP's `module.` or torch.compile's `_orig_mod.` lose that prefix.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>, WeightsError> {
    let bad = |detail: String| WeightsError::Read { path: path.to_owned(), detail };
    if !path.exists() {
        return Err(bad("no such file".into()));
    }
    // torch.save archives are zip files; anything else is read as safetensors
    // (whatever the extension: a converted file may keep its `.pth` name).
    let mut magic = [0u8; 4];
    let _ = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    let is_safetensors = magic != [0x50, 0x4b, 0x03, 0x04];
    let tensors: Vec<(String, Tensor)> = if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?.into_iter().collect()
    } else {
        super::pth::read(path).map_err(|e| match e {
            super::pth::PthError::Format(e) => bad(format!(
                "not a torch.save zip archive nor a safetensors file ({e}); legacy (pre-1.6) .pth files are not supported: re-save with torch.save"
            )),
            super::pth::PthError::Content(e) => bad(e),
        })?
    };
    if tensors.is_empty() {
        return Err(bad("no tensors found (expected a state_dict)".into()));
    }
    // A state_dict saved from a DistributedDataParallel / DataParallel
    // wrapper (`module.`) or a torch.compile'd model (`_orig_mod.`) has its
    // model's keys under that prefix.
    let mut tensors = tensors;
    for prefix in ["module.", "_orig_mod."] {
        if tensors.iter().all(|(k, _)| k.starts_with(prefix)) {
            tensors = tensors.into_iter().map(|(k, t)| (k[prefix.len()..].to_owned(), t)).collect();
        }
    }
    Ok(tensors.into_iter().map(|(k, t)| (rename(&k), t)).collect())
}

/// What [`load_into`] did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Tensors copied into the model.
    pub loaded: usize,
    /// Head tensors left freshly initialised.
    pub fresh_head: Vec<String>,
}

/// Copies the tensors of `path` into `varmap` (see the module doc for the rules);
/// `is_head` names the head's parameters, and with `replace_head` they are never
/// loaded.
pub fn load_into(
    varmap: &VarMap,
    path: &Path,
    is_head: &dyn Fn(&str) -> bool,
    replace_head: bool,
) -> Result<Loaded, WeightsError> {
    let file = read(path)?;
    let mismatch = |detail: String| WeightsError::Mismatch { path: path.to_owned(), detail };
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut out = Loaded::default();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for name in names {
        let var = &data[name];
        let head = is_head(name);
        match file.get(name.as_str()) {
            Some(t) if t.dims() == var.dims() && !(head && replace_head) => {
                let t = t
                    .to_dtype(var.dtype())
                    .and_then(|t| t.to_device(var.device()))
                    .map_err(|e| mismatch(e.to_string()))?;
                var.set(&t).map_err(|e| mismatch(format!("`{name}`: {e}")))?;
                out.loaded += 1;
            }
            _ if head => out.fresh_head.push(name.clone()),
            None if name.ends_with(".num_batches_tracked") => {}
            None => missing.push(format!("`{name}`")),
            Some(t) => wrong.push(format!("`{name}` is {:?} in the file, {:?} in the model", t.dims(), var.dims())),
        }
    }
    let mut unexpected: Vec<&String> = file
        .keys()
        .filter(|k| !data.contains_key(k.as_str()) && !is_head(k) && !k.ends_with(".num_batches_tracked"))
        .collect();
    unexpected.sort();
    let mut problems = Vec::new();
    if !wrong.is_empty() {
        problems.push(format!("{} tensors have the wrong shape ({})", wrong.len(), first(&wrong)));
    }
    if !missing.is_empty() {
        problems.push(format!("{} tensors are missing ({})", missing.len(), first(&missing)));
    }
    if !unexpected.is_empty() {
        let u: Vec<String> = unexpected.iter().map(|s| format!("`{s}`")).collect();
        problems.push(format!("{} tensors are not in the model ({})", u.len(), first(&u)));
    }
    if !problems.is_empty() {
        return Err(mismatch(format!("does not fit this model: {}", problems.join("; "))));
    }
    Ok(out)
}

fn first(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
    let more = if items.len() > 3 { format!(", … {} more", items.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_densenet_keys_are_renamed_as_torchvision_does() {
        assert_eq!(
            rename("features.denseblock1.denselayer1.norm.1.weight"),
            "features.denseblock1.denselayer1.norm1.weight"
        );
        assert_eq!(
            rename("features.denseblock4.denselayer32.conv.2.weight"),
            "features.denseblock4.denselayer32.conv2.weight"
        );
        assert_eq!(rename("features.norm0.running_mean"), "features.norm0.running_mean");
        assert_eq!(rename("layer1.0.conv1.weight"), "layer1.0.conv1.weight");
    }

    #[test]
    fn imagenet_urls_are_torchvisions() {
        assert_eq!(imagenet_url("resnet18").unwrap(), "https://download.pytorch.org/models/resnet18-f37072fd.pth");
        assert!(imagenet_url("smallcnn").is_none());
    }
}
