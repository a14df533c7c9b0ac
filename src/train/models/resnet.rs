//! torchvision's ResNet (`torchvision.models.resnet`): basic blocks for
//! ResNet18/34, bottlenecks (expansion 4, stride on the 3x3 conv) for
//! ResNet50/101/152. ImageNet stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool with
//! padding 1; CIFAR stem: 3x3/1 conv, BN, ReLU, no max-pool.

use super::nn::{BatchNorm, Builder, Conv, Init};
use super::{Classifier, HeadNet};
use crate::spec::{Head, Stem};
use crate::train::layers::{adaptive_avg_pool2d, max_pool2d, PoolParams};
use crate::train::rng::Rng;
use candle_core::{Result, Tensor};

struct Block {
    convs: Vec<(Conv, BatchNorm)>,
    downsample: Option<(Conv, BatchNorm)>,
}

impl Block {
    /// `relu(convs(xs) + identity)`, the last BatchNorm, the sum and the
    /// ReLU as one op where the backend fuses them.
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = xs.clone();
        let (last, rest) = self.convs.split_last().expect("a block has convolutions");
        for (conv, bn) in rest {
            y = bn.forward_relu(&conv.forward(&y)?, train)?;
        }
        let y = last.0.forward(&y)?;
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(xs)?, train)?,
            None => xs.clone(),
        };
        last.1.forward_add_relu(&y, &identity, train)
    }
}

pub struct ResNet {
    stem: (Conv, BatchNorm),
    max_pool: bool,
    blocks: Vec<Block>,
    head: HeadNet,
}

impl ResNet {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        b: &mut Builder,
        bottleneck: bool,
        layers: &[usize; 4],
        widths: &[usize; 4],
        stem: Stem,
        head: &Head,
        head_name: &str,
        classes: usize,
    ) -> Result<ResNet> {
        let conv = |b: &mut Builder, name: &str, cin, cout, k, s, p| {
            b.conv(name, cin, cout, k, s, p, false, Init::KaimingFanOut)
        };
        let mut inplanes = widths[0];
        let stem_conv = match stem {
            Stem::ImageNet => conv(b, "conv1", 3, inplanes, 7, 2, 3)?,
            Stem::Cifar => conv(b, "conv1", 3, inplanes, 3, 1, 1)?,
        };
        let stem_layers = (stem_conv, b.bn("bn1", inplanes)?);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut blocks = Vec::new();
        for (li, (&n, &planes)) in layers.iter().zip(widths).enumerate() {
            for bi in 0..n {
                let stride = if li > 0 && bi == 0 { 2 } else { 1 };
                let p = format!("layer{}.{bi}", li + 1);
                let mut convs = Vec::new();
                if bottleneck {
                    convs.push((
                        conv(b, &format!("{p}.conv1"), inplanes, planes, 1, 1, 0)?,
                        b.bn(&format!("{p}.bn1"), planes)?,
                    ));
                    convs.push((
                        conv(b, &format!("{p}.conv2"), planes, planes, 3, stride, 1)?,
                        b.bn(&format!("{p}.bn2"), planes)?,
                    ));
                    convs.push((
                        conv(b, &format!("{p}.conv3"), planes, planes * 4, 1, 1, 0)?,
                        b.bn(&format!("{p}.bn3"), planes * 4)?,
                    ));
                } else {
                    convs.push((
                        conv(b, &format!("{p}.conv1"), inplanes, planes, 3, stride, 1)?,
                        b.bn(&format!("{p}.bn1"), planes)?,
                    ));
                    convs.push((
                        conv(b, &format!("{p}.conv2"), planes, planes, 3, 1, 1)?,
                        b.bn(&format!("{p}.bn2"), planes)?,
                    ));
                }
                let downsample = if stride != 1 || inplanes != planes * expansion {
                    Some((
                        conv(b, &format!("{p}.downsample.0"), inplanes, planes * expansion, 1, stride, 0)?,
                        b.bn(&format!("{p}.downsample.1"), planes * expansion)?,
                    ))
                } else {
                    None
                };
                blocks.push(Block { convs, downsample });
                inplanes = planes * expansion;
            }
        }
        let head = HeadNet::build(b, head_name, head, inplanes, classes)?;
        Ok(ResNet { stem: stem_layers, max_pool: stem == Stem::ImageNet, blocks, head })
    }
}

impl Classifier for ResNet {
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let (conv, bn) = &self.stem;
        let mut xs = bn.forward_relu(&conv.forward(xs)?, train)?;
        if self.max_pool {
            xs = max_pool2d(&xs, PoolParams { kernel: 3, stride: 2, padding: 1 })?;
        }
        for block in &self.blocks {
            xs = block.forward(&xs, train)?;
        }
        let features = adaptive_avg_pool2d(&xs, 1, 1)?.flatten_from(1)?;
        self.head.forward(&features, train, rng)
    }
}
