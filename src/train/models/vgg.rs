//! torchvision's VGG (`torchvision.models.vgg`): `features` (3x3 convs with
//! bias, optional BatchNorm, ReLU, 2x2 max-pools; indices as in torchvision's
//! `nn.Sequential`, ReLU and pool layers included), a 7x7 adaptive average pool
//! and `classifier` = Linear(512·7·7, 4096)-ReLU-Dropout-Linear(4096, 4096)-
//! ReLU-Dropout-Linear(4096, classes). A linear head replaces `classifier.6`;
//! an MLP head replaces the whole `classifier` (same naming, `classifier.0/3/6`).

use super::nn::{self, BatchNorm, Builder, Conv, Init, Linear};
use super::{Arch, Classifier, HeadNet};
use crate::spec::Head;
use crate::train::layers::{adaptive_avg_pool2d, max_pool2d, PoolParams};
use crate::train::rng::Rng;
use candle_core::{Result, Tensor};

enum Layer {
    Conv(Conv, Option<BatchNorm>),
    Pool,
}

pub struct Vgg {
    features: Vec<Layer>,
    /// classifier.0 and classifier.3 when only classifier.6 is replaced.
    classifier: Vec<Linear>,
    head: HeadNet,
}

/// torchvision's `features` index of each entry of `cfg` (a conv takes 2 or 3
/// slots: conv, [bn,] relu; a pool one).
fn indices(cfg: &[usize], batch_norm: bool) -> Vec<usize> {
    let mut i = 0;
    cfg.iter()
        .map(|&c| {
            let at = i;
            i += if c == 0 {
                1
            } else if batch_norm {
                3
            } else {
                2
            };
            at
        })
        .collect()
}

/// Parameter prefixes of block `n` (1-based: the convs before the n-th pool).
pub fn block_prefixes(arch: &Arch, n: usize) -> Vec<String> {
    let Arch::Vgg { features, batch_norm, .. } = arch else { return vec![] };
    let idx = indices(features, *batch_norm);
    let mut block = 1;
    let mut out = Vec::new();
    for (&c, &i) in features.iter().zip(&idx) {
        if c == 0 {
            block += 1;
        } else if block == n {
            out.push(format!("features.{i}."));
            if *batch_norm {
                out.push(format!("features.{}.", i + 1));
            }
        }
    }
    out
}

impl Vgg {
    pub fn build(
        b: &mut Builder,
        cfg: &[usize],
        batch_norm: bool,
        hidden: usize,
        head: &Head,
        head_name: &str,
        classes: usize,
    ) -> Result<Vgg> {
        let mut features = Vec::new();
        let mut cin = 3;
        for (&c, i) in cfg.iter().zip(indices(cfg, batch_norm)) {
            if c == 0 {
                features.push(Layer::Pool);
                continue;
            }
            let conv = b.conv(&format!("features.{i}"), cin, c, 3, 1, 1, true, Init::KaimingFanOut)?;
            let bn = if batch_norm { Some(b.bn(&format!("features.{}", i + 1), c)?) } else { None };
            features.push(Layer::Conv(conv, bn));
            cin = c;
        }
        let flat = cin * 7 * 7;
        let (classifier, head) = match head {
            Head::Linear => {
                let lin = |b: &mut Builder, n: &str, i, o| b.linear(n, i, o, Init::Normal(0.01), Init::Const(0.0));
                let classifier = vec![lin(b, "classifier.0", flat, hidden)?, lin(b, "classifier.3", hidden, hidden)?];
                (classifier, HeadNet::build(b, head_name, head, hidden, classes)?)
            }
            Head::Mlp { .. } => (vec![], HeadNet::build(b, head_name, head, flat, classes)?),
        };
        Ok(Vgg { features, classifier, head })
    }
}

impl Classifier for Vgg {
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let mut xs = xs.clone();
        let mut layers = self.features.iter().peekable();
        while let Some(layer) = layers.next() {
            xs = match layer {
                // The bias and the ReLU: one op on the CPU.
                Layer::Conv(conv, None) => conv.forward_relu(&xs)?,
                Layer::Conv(conv, Some(bn)) => {
                    let y = conv.forward(&xs)?;
                    // BatchNorm, ReLU and the block's pool: one op on the CPU.
                    if matches!(layers.peek(), Some(Layer::Pool)) {
                        layers.next();
                        bn.forward_relu_max_pool2(&y, train)?
                    } else {
                        bn.forward_relu(&y, train)?
                    }
                }
                Layer::Pool => max_pool2d(&xs, PoolParams { kernel: 2, stride: 2, padding: 0 })?,
            };
        }
        let mut xs = adaptive_avg_pool2d(&xs, 7, 7)?.flatten_from(1)?;
        for lin in &self.classifier {
            xs = nn::dropout(&crate::train::layers::relu(&lin.forward(&xs)?)?, 0.5, train, rng)?;
        }
        self.head.forward(&xs, train, rng)
    }
}
