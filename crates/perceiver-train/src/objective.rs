//! The masked-LM objective: batching masked windows, the loss over masked positions only, and
//! evaluation (accuracy, loss, bits per byte).
//!
//! Only masked positions are decoded. The decoder's queries are independent of each other, so the
//! loss and its gradients equal transformers' (which decodes every position and ignores the
//! unlabelled ones) at a fraction of the decoder's cost.

use crate::model::PerceiverForMaskedLM;
use candle_core::{DType, Device, Tensor, D};
use perceiver::tokenizer::PAD_ID;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::masking::MaskedExample;

/// Masked windows as tensors, padded to the batch's longest window and most masks.
pub struct MaskedBatch {
    /// `[batch, len]` u32.
    pub input_ids: Tensor,
    /// `[batch, len]` f32, 1 = real byte; `None` when no window is padded.
    pub attention_mask: Option<Tensor>,
    /// `[batch, n]` u32: masked positions (padding slots point at position 0 and weigh 0).
    pub positions: Tensor,
    /// `[batch, n]` u32: the original ids at `positions`.
    pub targets: Tensor,
    /// `[batch, n]` f32: 1 for real targets, 0 for padding slots.
    pub weights: Tensor,
    /// Real masked positions in the batch.
    pub num_targets: usize,
    /// Real (unpadded) bytes in the batch.
    pub num_bytes: usize,
}

impl MaskedBatch {
    /// Pads `examples` into one batch on `device`; an [`Error::Options`] when there is nothing to
    /// predict (no window, or no masked byte in any).
    pub fn new(examples: &[MaskedExample], device: &Device) -> Result<Self> {
        let batch = examples.len();
        let len = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
        let n = examples.iter().map(|e| e.targets.len()).max().unwrap_or(0);
        if batch == 0 || len == 0 || n == 0 {
            return Err(Error::Options(
                "a batch needs at least one window with a masked byte".into(),
            ));
        }
        let mut ids = vec![PAD_ID; batch * len];
        let mut mask = vec![0f32; batch * len];
        let mut positions = vec![0u32; batch * n];
        let mut targets = vec![PAD_ID; batch * n];
        let mut weights = vec![0f32; batch * n];
        for (b, e) in examples.iter().enumerate() {
            ids[b * len..b * len + e.input_ids.len()].copy_from_slice(&e.input_ids);
            mask[b * len..b * len + e.input_ids.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
            for (j, &(pos, target)) in e.targets.iter().enumerate() {
                positions[b * n + j] = pos as u32;
                targets[b * n + j] = target;
                weights[b * n + j] = 1.0;
            }
        }
        let padded = examples.iter().any(|e| e.input_ids.len() < len);
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (batch, len), device)?,
            attention_mask: if padded {
                Some(Tensor::from_vec(mask, (batch, len), device)?)
            } else {
                None
            },
            positions: Tensor::from_vec(positions, (batch, n), device)?,
            targets: Tensor::from_vec(targets, (batch, n), device)?,
            weights: Tensor::from_vec(weights, (batch, n), device)?,
            num_targets: examples.iter().map(|e| e.targets.len()).sum(),
            num_bytes: examples.iter().map(|e| e.input_ids.len()).sum(),
        })
    }
}

/// The loss of one batch and what it got right.
pub struct BatchLoss {
    /// Mean cross-entropy (nats) over the masked positions: a scalar to differentiate.
    pub loss: Tensor,
    /// Masked positions whose top-1 prediction is the original byte.
    pub correct: usize,
}

/// Cross-entropy over the masked positions of `batch` (transformers' `PerceiverForMaskedLM`
/// loss with labels -100 everywhere else).
pub fn masked_lm_loss(model: &PerceiverForMaskedLM, batch: &MaskedBatch) -> Result<BatchLoss> {
    let latents = model.encode(&batch.input_ids, batch.attention_mask.as_ref())?;
    let logits = model.decode(&latents, &batch.positions)?; // [batch, n, vocab]
    let (b, n, vocab) = logits.dims3()?;
    let logits = logits.reshape((b * n, vocab))?;
    let targets = batch.targets.reshape(b * n)?;
    let weights = batch.weights.reshape(b * n)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let loss = ((picked * &weights)?.sum_all()? * (-1.0 / batch.num_targets as f64))?;

    let predicted = logits.argmax(D::Minus1)?;
    let hits = predicted.eq(&targets)?.to_dtype(DType::F32)?;
    let correct = (hits * weights)?.sum_all()?.to_scalar::<f32>()?.round() as usize;
    Ok(BatchLoss { loss, correct })
}

/// Masked-byte metrics over a set of windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean cross-entropy over masked positions, in nats.
    pub loss: f64,
    /// Top-1 accuracy over masked positions.
    pub accuracy: f64,
    /// `loss / ln 2`: bits per masked byte.
    pub bits_per_byte: f64,
    /// Masked positions scored.
    pub masked_bytes: usize,
    /// Windows evaluated.
    pub windows: usize,
}

/// Evaluates `examples` in batches of `batch_size` (no gradients are kept).
pub fn evaluate(
    model: &PerceiverForMaskedLM,
    examples: &[MaskedExample],
    batch_size: usize,
) -> Result<EvalResult> {
    let (mut total_loss, mut correct, mut count) = (0f64, 0usize, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = MaskedBatch::new(chunk, model.device())?;
        let out = masked_lm_loss(model, &batch)?;
        total_loss += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * batch.num_targets as f64;
        correct += out.correct;
        count += batch.num_targets;
    }
    if count == 0 {
        return Err(Error::Options("nothing to evaluate".into()));
    }
    let loss = total_loss / count as f64;
    Ok(EvalResult {
        loss,
        accuracy: correct as f64 / count as f64,
        bits_per_byte: loss / std::f64::consts::LN_2,
        masked_bytes: count,
        windows: examples.len(),
    })
}
