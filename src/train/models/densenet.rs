//! torchvision's DenseNet-BC (`torchvision.models.densenet`): a stem
//! (`features.conv0/norm0`, 3x3/2 max-pool), dense blocks of BN-ReLU-1x1 conv
//! (`bn_size * growth` channels)-BN-ReLU-3x3 conv (`growth` channels) layers whose
//! outputs are concatenated, transitions (BN-ReLU-1x1 conv halving the channels,
//! 2x2 average pool), a final BN, ReLU, global average pool and `classifier`.

use super::nn::{BatchNorm, Builder, Conv, Init};
use super::{Classifier, HeadNet};
use crate::spec::{Head, Stem};
use crate::train::layers::{adaptive_avg_pool2d, avg_pool2d, cat_channels, max_pool2d, PoolParams};
use crate::train::rng::Rng;
use candle_core::{Result, Tensor};

struct DenseLayer {
    norm1: BatchNorm,
    conv1: Conv,
    norm2: BatchNorm,
    conv2: Conv,
}

struct Transition {
    norm: BatchNorm,
    conv: Conv,
}

pub struct DenseNet {
    conv0: Conv,
    norm0: BatchNorm,
    max_pool: bool,
    blocks: Vec<(Vec<DenseLayer>, Option<Transition>)>,
    norm5: BatchNorm,
    head: HeadNet,
}

impl DenseNet {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        b: &mut Builder,
        growth: usize,
        block_config: &[usize],
        init_features: usize,
        bn_size: usize,
        stem: Stem,
        head: &Head,
        head_name: &str,
        classes: usize,
    ) -> Result<DenseNet> {
        let conv = |b: &mut Builder, name: &str, cin, cout, k, s, p| {
            b.conv(name, cin, cout, k, s, p, false, Init::KaimingFanIn)
        };
        let conv0 = match stem {
            Stem::ImageNet => conv(b, "features.conv0", 3, init_features, 7, 2, 3)?,
            Stem::Cifar => conv(b, "features.conv0", 3, init_features, 3, 1, 1)?,
        };
        let norm0 = b.bn("features.norm0", init_features)?;
        let mut c = init_features;
        let mut blocks = Vec::new();
        for (i, &n) in block_config.iter().enumerate() {
            let mut layers = Vec::new();
            for j in 0..n {
                let p = format!("features.denseblock{}.denselayer{}", i + 1, j + 1);
                let cin = c + j * growth;
                layers.push(DenseLayer {
                    norm1: b.bn(&format!("{p}.norm1"), cin)?,
                    conv1: conv(b, &format!("{p}.conv1"), cin, bn_size * growth, 1, 1, 0)?,
                    norm2: b.bn(&format!("{p}.norm2"), bn_size * growth)?,
                    conv2: conv(b, &format!("{p}.conv2"), bn_size * growth, growth, 3, 1, 1)?,
                });
            }
            c += n * growth;
            let transition = if i + 1 < block_config.len() {
                let p = format!("features.transition{}", i + 1);
                let t = Transition {
                    norm: b.bn(&format!("{p}.norm"), c)?,
                    conv: conv(b, &format!("{p}.conv"), c, c / 2, 1, 1, 0)?,
                };
                c /= 2;
                Some(t)
            } else {
                None
            };
            blocks.push((layers, transition));
        }
        let norm5 = b.bn("features.norm5", c)?;
        let head = HeadNet::build(b, head_name, head, c, classes)?;
        Ok(DenseNet { conv0, norm0, max_pool: stem == Stem::ImageNet, blocks, norm5, head })
    }
}

impl Classifier for DenseNet {
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let mut xs = self.norm0.forward_relu(&self.conv0.forward(xs)?, train)?;
        if self.max_pool {
            xs = max_pool2d(&xs, PoolParams { kernel: 3, stride: 2, padding: 1 })?;
        }
        for (layers, transition) in &self.blocks {
            let mut features = vec![xs];
            for l in layers {
                // torchvision concatenates every earlier output before each layer.
                let cat = cat_channels(&features.iter().collect::<Vec<_>>())?;
                let y = l.conv1.forward(&l.norm1.forward_relu(&cat, train)?)?;
                let y = l.conv2.forward(&l.norm2.forward_relu(&y, train)?)?;
                features.push(y);
            }
            xs = cat_channels(&features.iter().collect::<Vec<_>>())?;
            if let Some(t) = transition {
                xs = avg_pool2d(&t.conv.forward(&t.norm.forward_relu(&xs, train)?)?, 2)?;
            }
        }
        let xs = self.norm5.forward_relu(&xs, train)?;
        let features = adaptive_avg_pool2d(&xs, 1, 1)?.flatten_from(1)?;
        self.head.forward(&features, train, rng)
    }
}
