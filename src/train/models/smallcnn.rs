//! `smallcnn`: three conv-BN-ReLU-maxpool stages (16, 32, 64 channels), global
//! average pooling and the head. Trains in seconds on a CPU at 32x32; the
//! embedded quickstart uses it.

use super::nn::{BatchNorm, Builder, Conv, Init};
use super::{Classifier, HeadNet};
use crate::spec::Head;
use crate::train::layers::adaptive_avg_pool2d;
use crate::train::rng::Rng;
use candle_core::{Result, Tensor};

pub struct SmallCnn {
    convs: Vec<(Conv, BatchNorm)>,
    head: HeadNet,
}

impl SmallCnn {
    const WIDTHS: [usize; 3] = [16, 32, 64];

    pub fn build(b: &mut Builder, head: &Head, head_name: &str, classes: usize) -> Result<SmallCnn> {
        let mut convs = Vec::new();
        let mut cin = 3;
        for (i, &c) in Self::WIDTHS.iter().enumerate() {
            let (conv, bn) = if i == 0 {
                ("conv1".to_owned(), "bn1".to_owned())
            } else {
                (format!("layer{i}.conv"), format!("layer{i}.bn"))
            };
            convs.push((b.conv(&conv, cin, c, 3, 1, 1, false, Init::KaimingFanOut)?, b.bn(&bn, c)?));
            cin = c;
        }
        Ok(SmallCnn { convs, head: HeadNet::build(b, head_name, head, cin, classes)? })
    }
}

impl Classifier for SmallCnn {
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (conv, bn) in &self.convs {
            // conv, BatchNorm, ReLU, max-pool 2x2/2 (the last three one op on the CPU).
            xs = bn.forward_relu_max_pool2(&conv.forward(&xs)?, train)?;
        }
        let pooled = adaptive_avg_pool2d(&xs, 1, 1)?.flatten_from(1)?;
        self.head.forward(&pooled, train, rng)
    }
}
