//! The training loss and the per-batch numbers read back from it.

use candle_core::{DType, Tensor};

/// Mean cross-entropy of `logits` (N, C) against class indices `labels`, with
/// PyTorch's label smoothing: `(1 - ε) * nll + ε / C * Σ_c -log p_c`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    if smoothing == 0.0 {
        return candle_nn::loss::cross_entropy(logits, labels);
    }
    let log_p = candle_nn::ops::log_softmax(logits, 1)?;
    let nll = candle_nn::loss::nll(&log_p, labels)?;
    let uniform = (log_p.mean(1)?.mean_all()? * -1.0)?;
    (nll * (1.0 - smoothing))? + (uniform * smoothing)?
}

/// The batch's mean loss and number of correct top-1 predictions.
pub(crate) fn batch_stats(logits: &Tensor, labels: &Tensor, loss: &Tensor) -> candle_core::Result<(f32, u64)> {
    let (loss, correct) = batch_stats_on_device(logits, labels, loss)?;
    Ok((loss.to_scalar::<f32>()?, u64::from(correct.to_scalar::<u32>()?)))
}

/// [`batch_stats`] left on the device (f32 and u32 scalars, detached), to be
/// read later with other steps' (one synchronisation for many steps on a GPU).
pub(crate) fn batch_stats_on_device(
    logits: &Tensor,
    labels: &Tensor,
    loss: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let loss = loss.detach().to_dtype(DType::F32)?;
    let correct = logits.detach().argmax(1)?.eq(labels)?.to_dtype(DType::U32)?.sum_all()?;
    Ok((loss, correct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn label_smoothing_matches_pytorch() {
        // torch: F.cross_entropy(l, y, label_smoothing=0.1) = 1.6054563522338867, plain 1.5754563808441162
        let l = Tensor::from_vec(vec![2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0], (2, 3), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(vec![0u32, 1], 2, &Device::Cpu).unwrap();
        let smoothed = cross_entropy(&l, &y, 0.1).unwrap().to_scalar::<f32>().unwrap();
        let plain = cross_entropy(&l, &y, 0.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((smoothed - 1.605_456_4).abs() < 1e-6, "{smoothed}");
        assert!((plain - 1.575_456_4).abs() < 1e-6, "{plain}");
    }
}
