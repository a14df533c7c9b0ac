//! The training loss and the per-batch numbers read back from it.

use candle_core::{DType, Tensor};

/// Mean cross-entropy of `logits` (N, C) against class indices `labels`, with
/// PyTorch's label smoothing: `(1 - ε) * nll + ε / C * Σ_c -log p_c`. On CUDA
/// with the `cudnn` kernel sets (f32 logits, u32 labels) one kernel each way
/// (`layers/ce_cuda.rs`); elsewhere candle's log-softmax and gather.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if fused(logits, labels) {
        return crate::train::layers::cross_entropy_cuda(logits, labels, smoothing);
    }
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

/// [`batch_stats`] left on the device (an f32 scalar and a u32 one, or an
/// f32 one from the CUDA stats kernel; detached), to be read later with
/// other steps' (one synchronisation for many steps on a GPU).
pub(crate) fn batch_stats_on_device(
    logits: &Tensor,
    labels: &Tensor,
    loss: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let loss = loss.detach().to_dtype(DType::F32)?;
    #[cfg(feature = "cudnn")]
    if fused(logits, labels) {
        // [loss sum, top-1 hits, ...]: the hits as a view, no further kernel
        let stats = crate::train::layers::classifier_stats(logits, labels, 0.0)?;
        return Ok((loss, stats.narrow(0, 1, 1)?.squeeze(0)?));
    }
    let correct = logits.detach().argmax(1)?.eq(labels)?.to_dtype(DType::U32)?.sum_all()?;
    Ok((loss, correct))
}

/// One batch's numbers in a test pass.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNumbers {
    /// The sum of the images' cross-entropies.
    pub loss_sum: f64,
    /// Images whose first maximum is their label.
    pub correct: u64,
    /// Images with fewer than five logits above their label's.
    pub top5: u64,
    /// Each image's prediction (the first maximum).
    pub predicted: Vec<u32>,
}

/// [`BatchNumbers`] read at once, or still on the GPU (read with others by [`read_numbers`]).
#[derive(Debug)]
pub enum QueuedNumbers {
    /// Computed and read.
    Ready(BatchNumbers),
    /// `[loss sum, top-1 hits, top-5 hits, prediction of each image]` (f32) on the device.
    OnDevice(Tensor),
}

/// The numbers of a test batch: on CUDA with a `cudnn` kernel set one kernel
/// whose output stays on the device; elsewhere candle's ops, read at once.
pub fn batch_numbers(logits: &Tensor, labels: &Tensor) -> candle_core::Result<QueuedNumbers> {
    let logits = logits.detach();
    #[cfg(feature = "cudnn")]
    if fused(&logits, labels) {
        return Ok(QueuedNumbers::OnDevice(crate::train::layers::classifier_stats(&logits, labels, 0.0)?));
    }
    let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
    let (mean, correct) = batch_stats(&logits, labels, &loss)?;
    // The label is in the top 5 when fewer than 5 logits are larger.
    let own = logits.gather(&labels.unsqueeze(1)?, 1)?;
    let above = logits.broadcast_gt(&own)?.to_dtype(DType::U32)?.sum(1)?;
    let top5 = u64::from(above.lt(5u32)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?);
    Ok(QueuedNumbers::Ready(BatchNumbers {
        loss_sum: f64::from(mean) * logits.dim(0)? as f64,
        correct,
        top5,
        predicted: logits.argmax(1)?.to_vec1::<u32>()?,
    }))
}

/// The numbers of `queued`, in order: those on the device read together (one
/// synchronisation; counts and classes are exact in f32).
pub fn read_numbers(queued: Vec<QueuedNumbers>) -> candle_core::Result<Vec<BatchNumbers>> {
    let on_device: Vec<Tensor> = queued
        .iter()
        .filter_map(|q| match q {
            QueuedNumbers::OnDevice(t) => Some(t.clone()),
            QueuedNumbers::Ready(_) => None,
        })
        .collect();
    let values = if on_device.is_empty() { Vec::new() } else { Tensor::cat(&on_device, 0)?.to_vec1::<f32>()? };
    let mut at = 0;
    let mut out = Vec::with_capacity(queued.len());
    for q in queued {
        out.push(match q {
            QueuedNumbers::Ready(b) => b,
            QueuedNumbers::OnDevice(t) => {
                let row = &values[at..at + t.elem_count()];
                at += row.len();
                BatchNumbers {
                    loss_sum: f64::from(row[0]),
                    correct: row[1] as u64,
                    top5: row[2] as u64,
                    predicted: row[3..].iter().map(|&p| p as u32).collect(),
                }
            }
        });
    }
    Ok(out)
}

/// Whether the loss and its numbers of `logits` take the CUDA kernels of
/// `layers/ce_cuda.rs`: (N, C) f32 logits and u32 labels on CUDA with a
/// `cudnn` kernel set.
#[cfg(feature = "cudnn")]
pub(crate) fn fused(logits: &Tensor, labels: &Tensor) -> bool {
    logits.dtype() == DType::F32
        && labels.dtype() == DType::U32
        && logits.rank() == 2
        && crate::train::layers::use_cudnn(logits.device())
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
