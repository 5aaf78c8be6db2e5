//! Fill-mask: masked texts in, ranked candidates per masked byte out. Front ends (the CLI, and
//! later the HTTP service) call this and differ only in where texts come from and answers go.
//!
//! Work is limited to what is asked: no text is padded, and the decoder runs only for the masked
//! positions. The model runs on the inference engine ([`crate::engine`]).

use std::borrow::Borrow;

use serde::Serialize;

use crate::engine::{kernels, MaskedLmEngine};
use crate::error::{Error, Result};
use crate::tokenizer::{BytesTokenizer, MaskedText};

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
    model: MaskedLmEngine,
    tokenizer: BytesTokenizer,
}

impl FillMask {
    pub fn new(model: MaskedLmEngine) -> Self {
        Self {
            model,
            tokenizer: BytesTokenizer,
        }
    }

    pub fn model(&self) -> &MaskedLmEngine {
        &self.model
    }

    pub fn tokenizer(&self) -> &BytesTokenizer {
        &self.tokenizer
    }

    /// Tokenizes a text written with `[MASK]` / `[MASK:n]` and checks the model can take it.
    pub fn prepare(&self, text: &str, add_special_tokens: bool) -> Result<MaskedText> {
        // Counted before it is built: `[MASK:1000000]` is 14 bytes of request.
        self.check_len(self.tokenizer.masked_len(text, add_special_tokens)?.ids)?;
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
        self.check_len(input.ids.len())?;
        if let Some(&p) = input.mask_positions.iter().find(|&&p| p >= input.ids.len()) {
            return Err(Error::InvalidInput(format!(
                "mask position {p} is outside the text"
            )));
        }
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let max = self.model.max_len();
        if len > max {
            return Err(Error::InvalidInput(format!(
                "the text is {len} tokens long (special tokens included), the model takes at most {max}"
            )));
        }
        Ok(())
    }

    /// Fills the masks of `inputs` in one forward pass (each text at its own length, only the
    /// masked positions decoded).
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
        let texts: Vec<&[u32]> = inputs.iter().map(|i| i.ids.as_slice()).collect();
        let positions: Vec<&[usize]> = inputs.iter().map(|i| i.mask_positions.as_slice()).collect();
        let mut probs = self.model.logits_at(&texts, &positions)?;
        let vocab = self.model.config().vocab_size;
        kernels::softmax_rows(&mut probs, vocab);
        let mut rows = probs.chunks_exact(vocab);
        Ok(inputs
            .iter()
            .map(|input| {
                let mine: Vec<&[f32]> = rows.by_ref().take(input.mask_positions.len()).collect();
                self.rank(input, &mine, top_k)
            })
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

    fn rank(&self, input: &MaskedText, probs: &[&[f32]], top_k: usize) -> FillMaskOutput {
        let mut filled = input.ids.clone();
        let masks = input
            .mask_positions
            .iter()
            .zip(probs)
            .map(|(&position, row)| {
                let order = top_ids(row, top_k);
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

/// The ids of the `k` highest values of `row`, highest first; ties keep the lower id first. Only
/// the top k are sorted (sorting the whole vocabulary at every position was 2.6% of decoding 2048).
fn top_ids(row: &[f32], k: usize) -> Vec<usize> {
    let by_rank = |&a: &usize, &b: &usize| row[b].total_cmp(&row[a]).then(a.cmp(&b));
    let mut order: Vec<usize> = (0..row.len()).collect();
    let k = k.min(order.len());
    if k < order.len() {
        order.select_nth_unstable_by(k, by_rank);
        order.truncate(k);
    }
    order.sort_by(by_rank);
    order
}

#[cfg(test)]
mod tests {
    use super::top_ids;

    #[test]
    fn top_ids_equal_a_full_sort_with_ties_in_id_order() {
        // Few distinct values, so that ties are everywhere.
        let row: Vec<f32> = (0..262).map(|i| ((i * 7919) % 13) as f32 * 0.25).collect();
        let mut full: Vec<usize> = (0..row.len()).collect();
        full.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for k in [1, 2, 5, 13, 261, 262, 400] {
            assert_eq!(top_ids(&row, k), full[..k.min(262)], "k = {k}");
        }
    }
}
