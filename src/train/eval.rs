//! Evaluation of a model on a split: loss, top-1, top-5 and the confusion matrix.

use super::loss::batch_stats;
use super::rng::Rng;
use super::{data, loader, models, TrainError};
use candle_core::{DType, Device};

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
    let (mut loss_sum, mut correct, mut top5) = (0.0f64, 0u64, 0u64);
    let mut confusion: Vec<Vec<u64>> = Vec::new();
    let mut rng = Rng::new(0);
    let all: Vec<usize>;
    let indices = if let Some(s) = subset {
        s
    } else {
        all = (0..split.len()).collect();
        &all
    };
    let chunks: Vec<&[usize]> = indices.chunks(batch_size.max(1)).collect();
    std::thread::scope(|scope| -> Result<(), TrainError> {
        let mut batches =
            loader::Loader::start(scope, pipe, split, chunks.clone(), seed, 0, loader::default_threads(), 2);
        for chunk in &chunks {
            let batch = batches.next_batch().ok_or(TrainError::LoaderStopped)?;
            let (x, y) = pipe.to_tensors(&batch, device)?;
            let logits = model.forward(&x.detach(), false, &mut rng)?.detach();
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let (l, c) = batch_stats(&logits, &y, &loss)?;
            loss_sum += f64::from(l) * chunk.len() as f64;
            correct += c;
            // The label is in the top 5 when fewer than 5 logits are larger.
            let own = logits.gather(&y.unsqueeze(1)?, 1)?;
            let above = logits.broadcast_gt(&own)?.to_dtype(DType::U32)?.sum(1)?;
            top5 += u64::from(above.lt(5u32)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?);
            let classes = logits.dim(1)?;
            if confusion.is_empty() {
                confusion = vec![vec![0; classes]; classes];
            }
            let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
            for (&t, &p) in batch.labels.iter().zip(&predicted) {
                if let Some(cell) = confusion.get_mut(t as usize).and_then(|row| row.get_mut(p as usize)) {
                    *cell += 1;
                }
            }
            done(chunk.len());
        }
        Ok(())
    })?;
    let n = indices.len().max(1) as f64;
    Ok(EvalStats {
        loss: loss_sum / n,
        top1: 100.0 * correct as f64 / n,
        top5: 100.0 * top5 as f64 / n,
        images: indices.len(),
        confusion,
    })
}
