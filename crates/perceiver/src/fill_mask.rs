//! Fill-mask: masked texts in, ranked candidates per masked byte out. Front ends (the CLI, and
//! later the HTTP service) call this and differ only in where texts come from and answers go.
//!
//! Work is limited to what is asked: a batch is padded only to its own longest text (padding is
//! masked out), and the decoder runs only for the masked positions.

use std::borrow::Borrow;

use candle_core::{Tensor, D};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::heads::masked_lm::PerceiverForMaskedLM;
use crate::tokenizer::{BytesTokenizer, MaskedText, PAD_ID};

/// One candidate id for a masked position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Token id (byte + 6, or a special id).
    pub token: u32,
    /// The id decoded alone, as transformers' fill-mask pipeline shows it.
    pub token_str: String,
    /// Softmax probability over the vocabulary.
    pub score: f32,
}

/// The candidates for one masked position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskPrediction {
    /// Index in the token ids (special tokens included).
    pub position: usize,
    /// Best first.
    pub candidates: Vec<Candidate>,
}

/// The answer for one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillMaskOutput {
    /// The text with every mask replaced by its top-1 byte, special ids dropped, decoded lossily.
    pub sequence: String,
    /// One entry per masked position, in position order.
    pub masks: Vec<MaskPrediction>,
}

/// A masked language model ready to fill masks.
#[derive(Debug, Clone)]
pub struct FillMask {
    model: PerceiverForMaskedLM,
    tokenizer: BytesTokenizer,
}

impl FillMask {
    pub fn new(model: PerceiverForMaskedLM) -> Self {
        Self {
            model,
            tokenizer: BytesTokenizer,
        }
    }

    pub fn model(&self) -> &PerceiverForMaskedLM {
        &self.model
    }

    pub fn tokenizer(&self) -> &BytesTokenizer {
        &self.tokenizer
    }

    /// Tokenizes a text written with `[MASK]` / `[MASK:n]` and checks the model can take it.
    pub fn prepare(&self, text: &str, add_special_tokens: bool) -> Result<MaskedText> {
        let input = self.tokenizer.encode_masked(text, add_special_tokens)?;
        self.check(&input)?;
        Ok(input)
    }

    /// Errors unless `input` has at least one mask and fits the model's positions.
    pub fn check(&self, input: &MaskedText) -> Result<()> {
        if input.mask_positions.is_empty() {
            return Err(Error::InvalidInput(
                "the text has no mask: mark masked bytes with [MASK] (one byte) or [MASK:n] (n bytes)".into(),
            ));
        }
        let max = self.model.max_len();
        if input.ids.len() > max {
            return Err(Error::InvalidInput(format!(
                "the text is {} tokens long (special tokens included), the model takes at most {max}",
                input.ids.len()
            )));
        }
        if let Some(&p) = input.mask_positions.iter().find(|&&p| p >= input.ids.len()) {
            return Err(Error::InvalidInput(format!(
                "mask position {p} is outside the text"
            )));
        }
        Ok(())
    }

    /// Fills the masks of `inputs` in one forward pass (one batch, padded to its longest text).
    pub fn predict<T: Borrow<MaskedText>>(&self, inputs: &[T], top_k: usize) -> Result<Vec<FillMaskOutput>> {
        if top_k == 0 {
            return Err(Error::InvalidInput("top-k must be at least 1".into()));
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<&MaskedText> = inputs.iter().map(Borrow::borrow).collect();
        for input in &inputs {
            self.check(input)?;
        }
        let device = self.model.device();
        let batch = inputs.len();
        let len = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let num_queries = inputs.iter().map(|i| i.mask_positions.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * len);
        let mut positions = Vec::with_capacity(batch * num_queries);
        for input in &inputs {
            ids.extend_from_slice(&input.ids);
            ids.resize(ids.len() + len - input.ids.len(), PAD_ID);
            // Short query lists are padded with a real query; its row is ignored.
            let queries = input.mask_positions.iter().map(|&p| p as u32);
            positions.extend(queries.clone());
            positions.extend(std::iter::repeat_n(
                input.mask_positions[0] as u32,
                num_queries - queries.len(),
            ));
        }
        // Only a batch that mixes lengths needs a padding mask.
        let mask = if inputs.iter().any(|i| i.ids.len() != len) {
            let mask: Vec<u8> = inputs
                .iter()
                .flat_map(|i| (0..len).map(move |p| u8::from(p < i.ids.len())))
                .collect();
            Some(Tensor::from_vec(mask, (batch, len), device)?)
        } else {
            None
        };
        let ids = Tensor::from_vec(ids, (batch, len), device)?;
        let positions = Tensor::from_vec(positions, (batch, num_queries), device)?;
        let latents = self.model.encode(&ids, mask.as_ref())?;
        let logits = self.model.decode(&latents, &positions)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec3::<f32>()?;
        Ok(inputs
            .iter()
            .zip(probs)
            .map(|(input, probs)| self.rank(input, &probs, top_k))
            .collect())
    }

    /// Fills many texts, `batch_size` at a time, grouping texts of similar length so that
    /// batches carry little padding. Answers come back in input order.
    pub fn predict_many(
        &self,
        inputs: &[MaskedText],
        top_k: usize,
        batch_size: usize,
    ) -> Result<Vec<FillMaskOutput>> {
        let batch_size = batch_size.max(1);
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].ids.len());
        let mut outputs: Vec<Option<FillMaskOutput>> = vec![None; inputs.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&MaskedText> = chunk.iter().map(|&i| &inputs[i]).collect();
            for (&i, out) in chunk.iter().zip(self.predict(&batch, top_k)?) {
                outputs[i] = Some(out);
            }
        }
        Ok(outputs
            .into_iter()
            .map(|o| o.expect("every input answered"))
            .collect())
    }

    fn rank(&self, input: &MaskedText, probs: &[Vec<f32>], top_k: usize) -> FillMaskOutput {
        let mut filled = input.ids.clone();
        let masks = input
            .mask_positions
            .iter()
            .zip(probs)
            .map(|(&position, row)| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                // Highest probability first; ties keep the lower id first.
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                filled[position] = order[0] as u32;
                let candidates = order
                    .into_iter()
                    .take(top_k)
                    .map(|id| Candidate {
                        token: id as u32,
                        token_str: self.tokenizer.token_str(id as u32),
                        score: row[id],
                    })
                    .collect();
                MaskPrediction { position, candidates }
            })
            .collect();
        FillMaskOutput {
            sequence: self.tokenizer.decode(&filled),
            masks,
        }
    }
}
