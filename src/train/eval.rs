//! Evaluation of a model on a split: loss, top-1, top-5 and the confusion matrix.

use super::loss::{batch_numbers, read_numbers};
use super::rng::Rng;
use super::{data, loader, models, TrainError};
use candle_core::Device;

/// What [`evaluate_model`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalStats {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent (100 with fewer than 6 classes).
    pub top5: f64,
    /// Images evaluated.
    pub images: usize,
    /// Confusion matrix: `confusion[true][predicted]` image counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Accuracy (percent) of each class from a confusion matrix (`None` for a
/// class without test images).
pub fn per_class_accuracy(confusion: &[Vec<u64>]) -> Vec<Option<f64>> {
    confusion
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let n: u64 = row.iter().sum();
            (n > 0).then(|| 100.0 * row[i] as f64 / n as f64)
        })
        .collect()
}

/// The test pass's batch size for a run of `batch_size`: on a GPU at least
/// 256 (fewer, larger launches); on the CPU twice the training batch, at most
/// 256, so that it takes less memory than a training step (ResNet18 at 224
/// tests 256 images at once in 2.6 GB and 32 in 0.7 GB, as fast per image).
pub fn eval_batch(batch_size: usize, device: &Device) -> usize {
    if device.is_cpu() {
        (2 * batch_size).min(batch_size.max(256))
    } else {
        batch_size.max(256)
    }
}

/// Evaluates `model` in eval mode on the images of `split` (or its `subset`), through `pipe`
/// (see [`super::pipeline`]: built once per split, so a GPU upload is not repeated per evaluation).
pub fn evaluate_model(
    model: &dyn models::Classifier,
    split: &data::Split,
    subset: Option<&[usize]>,
    pipe: &loader::Pipeline,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<EvalStats, TrainError> {
    evaluate_with_progress(model, split, subset, pipe, batch_size, seed, device, &|_| {})
}

/// [`evaluate_model`], calling `done(n)` after each batch of `n` images (the test pass's progress bar).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with_progress(
    model: &dyn models::Classifier,
    split: &data::Split,
    subset: Option<&[usize]>,
    pipe: &loader::Pipeline,
    batch_size: usize,
    seed: u64,
    device: &Device,
    done: &dyn Fn(usize),
) -> Result<EvalStats, TrainError> {
    let mut rng = Rng::new(0);
    let all: Vec<usize>;
    let indices = if let Some(s) = subset {
        s
    } else {
        all = (0..split.len()).collect();
        &all
    };
    let chunks: Vec<&[usize]> = indices.chunks(batch_size.max(1)).collect();
    // Each batch's numbers, and its labels; on CUDA with the `cudnn` kernel
    // sets the numbers stay on the device until the last batch (one
    // synchronisation per pass instead of four per batch).
    let mut queued = Vec::with_capacity(chunks.len());
    let mut labels = Vec::with_capacity(chunks.len());
    let mut classes = 0;
    std::thread::scope(|scope| -> Result<(), TrainError> {
        let mut batches =
            loader::Loader::start(scope, pipe, split, chunks.clone(), seed, 0, loader::default_threads(), 2);
        for chunk in &chunks {
            let batch = batches.next_batch().ok_or(TrainError::LoaderStopped)?;
            let (x, y) = pipe.to_tensors(&batch, device)?;
            let logits = model.forward(&x.detach(), false, &mut rng)?.detach();
            classes = logits.dim(1)?;
            queued.push(batch_numbers(&logits, &y)?);
            labels.push(batch.labels);
            done(chunk.len());
        }
        Ok(())
    })?;
    let (mut loss_sum, mut correct, mut top5) = (0.0f64, 0u64, 0u64);
    let mut confusion: Vec<Vec<u64>> = if labels.is_empty() { Vec::new() } else { vec![vec![0; classes]; classes] };
    for (b, labels) in read_numbers(queued)?.into_iter().zip(&labels) {
        loss_sum += b.loss_sum;
        correct += b.correct;
        top5 += b.top5;
        for (&t, &p) in labels.iter().zip(&b.predicted) {
            if let Some(cell) = confusion.get_mut(t as usize).and_then(|row| row.get_mut(p as usize)) {
                *cell += 1;
            }
        }
    }
    let n = indices.len().max(1) as f64;
    Ok(EvalStats {
        loss: loss_sum / n,
        top1: 100.0 * correct as f64 / n,
        top5: 100.0 * top5 as f64 / n,
        images: indices.len(),
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_pass_batch_is_twice_the_training_batch_on_the_cpu_and_large_on_a_gpu() {
        let cpu = Device::Cpu;
        let sizes: Vec<usize> = [1, 8, 50, 128, 200, 300].iter().map(|&b| eval_batch(b, &cpu)).collect();
        assert_eq!(sizes, [2, 16, 100, 256, 256, 300]);
    }
}
