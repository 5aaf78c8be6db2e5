//! Fill-mask: masked texts in, ranked candidates per masked byte out. Front ends (the CLI, the
//! HTTP service) call this and differ only in where texts come from and answers go: a text is
//! validated here, once ([`FillMask::check`]), and the per-candidate sequence has one rule
//! ([`FillMaskOutput::candidate_sequence`]).
//!
//! Work is limited to what is asked: no text is padded, and the decoder runs only for the masked
//! positions.

use std::borrow::Borrow;
use std::ops::Range;

use perceiver_kernels::rows;
use serde::Serialize;

use crate::config::Architecture;
use crate::error::{Error, Result};
use crate::model::PerceiverModel;
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

impl FillMaskOutput {
    /// The text as transformers' fill-mask pipeline shows it for candidate `candidate` of mask
    /// `mask` (`input` is the text this answer is for): with one mask, the text with that
    /// candidate in its place, special ids dropped; with several, the other masks stay `[MASK]`
    /// and only padding is dropped. `None` when there is no such mask or candidate, or when
    /// `input` is not the text of this answer (its mask positions differ).
    pub fn candidate_sequence(&self, input: &MaskedText, mask: usize, candidate: usize) -> Option<String> {
        let same_masks = input
            .mask_positions
            .iter()
            .eq(self.masks.iter().map(|m| &m.position));
        let slot = self.masks.get(mask).filter(|_| same_masks)?;
        let token = slot.candidates.get(candidate)?.token;
        let tokenizer = BytesTokenizer;
        let mut ids = input.ids.clone();
        *ids.get_mut(slot.position)? = token;
        Some(if self.masks.len() == 1 {
            tokenizer.decode(&ids)
        } else {
            ids.retain(|&id| id != PAD_ID);
            tokenizer.decode_with_special_tokens(&ids)
        })
    }
}

/// A masked language model ready to fill masks.
#[derive(Debug, Clone)]
pub struct FillMask {
    model: PerceiverModel,
    tokenizer: BytesTokenizer,
}

impl FillMask {
    /// An error unless the task runs on models of this architecture (a masked language
    /// model): what [`new`](Self::new) checks, for checking a config before its weights load.
    pub fn check_architecture(architecture: Architecture) -> Result<()> {
        if architecture != Architecture::MaskedLm {
            return Err(Error::InvalidInput(format!(
                "fill-mask needs a PerceiverForMaskedLM, not a {}",
                architecture.name()
            )));
        }
        Ok(())
    }

    /// The task on a masked language model; an error for a model of another architecture.
    pub fn new(model: PerceiverModel) -> Result<Self> {
        Self::check_architecture(model.architecture())?;
        Ok(Self {
            model,
            tokenizer: BytesTokenizer,
        })
    }

    /// The model it runs.
    pub fn model(&self) -> &PerceiverModel {
        &self.model
    }

    /// Its tokenizer.
    pub fn tokenizer(&self) -> &BytesTokenizer {
        &self.tokenizer
    }

    /// The longest text, in ids with special tokens, the model takes.
    pub fn max_len(&self) -> usize {
        self.model.max_len()
    }

    /// Tokenizes a text written with `[MASK]` / `[MASK:n]` and checks the model can take it.
    pub fn prepare(&self, text: &str, add_special_tokens: bool) -> Result<MaskedText> {
        self.prepare_with(text, None, add_special_tokens)
    }

    /// [`prepare`](Self::prepare), or with `mask_range` a plain text whose bytes in the range are
    /// masked (byte offsets, end exclusive). A plain text is its bytes, one id each: special-token
    /// names such as `[PAD]` are not read as ids there, and a text that holds a mask marker
    /// (`[MASK]` or `[MASK:`) is an error, since the range and the markers would disagree. The
    /// text's ids are counted before they are built (`[MASK:1000000]` is 14 bytes of input),
    /// then built and [`check`](Self::check)ed.
    pub fn prepare_with(
        &self,
        text: &str,
        mask_range: Option<Range<usize>>,
        add_special_tokens: bool,
    ) -> Result<MaskedText> {
        Self::counted(text, mask_range.as_ref(), add_special_tokens, self.max_len())?;
        let input = match mask_range {
            Some(range) => self
                .tokenizer
                .encode_with_mask_range(text, range, add_special_tokens)?,
            None => self.tokenizer.encode_masked(text, add_special_tokens)?,
        };
        self.check(&input)?;
        Ok(input)
    }

    /// The checks [`prepare_with`](Self::prepare_with) can make without a model (syntax, a mask
    /// at least, the mask range, and length against the longest any model may take), building
    /// nothing: front ends that read many texts run it on all of them before loading a model, so
    /// a typo costs no load or download. A text too long for any model is an
    /// [`Error::InvalidInput`] that says so, not [`Error::TooLong`] (which names one model's
    /// bound, or the tokenizer's).
    pub fn precheck(text: &str, mask_range: Option<Range<usize>>, add_special_tokens: bool) -> Result<()> {
        let most = crate::config::bounds::MAX_POSITION_EMBEDDINGS.max as usize;
        match Self::counted(text, mask_range.as_ref(), add_special_tokens, most) {
            Ok(0) => Err(no_mask()),
            Ok(_) => Ok(()),
            // Said as the bound of every model, not of the one to come, which may take fewer.
            Err(Error::TooLong { tokens, max }) => Err(Error::InvalidInput(format!(
                "the text is {tokens} tokens long or more (special tokens included), more than any \
                 model takes: at most {max}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// [`check`](Self::check) on a text not yet built: whether
    /// [`prepare_with`](Self::prepare_with) would take it, answered by counting its ids (nothing
    /// is built). Front ends that report every text's errors before any answer use it, then
    /// build each text once.
    pub fn check_text(
        &self,
        text: &str,
        mask_range: Option<Range<usize>>,
        add_special_tokens: bool,
    ) -> Result<()> {
        let masks = Self::counted(text, mask_range.as_ref(), add_special_tokens, self.max_len())?;
        if masks == 0 {
            return Err(no_mask());
        }
        Ok(())
    }

    /// Counts the text's ids as they will be built (an error past `max`) and checks its mask
    /// range, if any; returns how many bytes are masked.
    fn counted(
        text: &str,
        mask_range: Option<&Range<usize>>,
        add_special_tokens: bool,
        max: usize,
    ) -> Result<usize> {
        let specials = if add_special_tokens { 2 } else { 0 };
        let (ids, masks) = match mask_range {
            // A plain text: one id per byte, as `encode_with_mask_range` builds it; the marker
            // grammar is not read, only a marker refused.
            Some(range) => {
                if text.contains("[MASK]") || text.contains("[MASK:") {
                    return Err(Error::InvalidInput(
                        "use either [MASK] markers or a mask range, not both: with a mask range \
                         the text is plain bytes"
                            .into(),
                    ));
                }
                BytesTokenizer::check_mask_range(text, range)?;
                (text.len().saturating_add(specials), range.len())
            }
            None => {
                let counted = BytesTokenizer.masked_len(text, add_special_tokens)?;
                (counted.ids, counted.masks)
            }
        };
        if ids > max {
            return Err(Error::TooLong { tokens: ids, max });
        }
        Ok(masks)
    }

    /// Errors unless `input` has at least one mask and fits the model's positions: the one check
    /// every fill-mask input passes.
    pub fn check(&self, input: &MaskedText) -> Result<()> {
        if input.mask_positions.is_empty() {
            return Err(no_mask());
        }
        self.check_len(input.ids.len())?;
        if let Some(&p) = input.mask_positions.iter().find(|&&p| p >= input.ids.len()) {
            return Err(Error::InvalidInput(format!(
                "mask position {p} is outside the text"
            )));
        }
        Ok(())
    }

    /// The one too-long check, on a text's length in ids (counted or built).
    fn check_len(&self, tokens: usize) -> Result<()> {
        let max = self.max_len();
        if tokens > max {
            return Err(Error::TooLong { tokens, max });
        }
        Ok(())
    }

    /// Fills the masks of `inputs` in one forward pass (each text at its own length, only the
    /// masked positions decoded).
    pub fn predict<T: Borrow<MaskedText>>(&self, inputs: &[T], top_k: usize) -> Result<Vec<FillMaskOutput>> {
        if top_k == 0 {
            return Err(top_k_zero());
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
        rows::softmax_rows(&mut probs, vocab);
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
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a `batch_size` or `top_k` of 0; otherwise as
    /// [`predict`](Self::predict).
    pub fn predict_many(
        &self,
        inputs: &[MaskedText],
        top_k: usize,
        batch_size: usize,
    ) -> Result<Vec<FillMaskOutput>> {
        if batch_size == 0 {
            return Err(Error::InvalidInput("the batch size must be at least 1".into()));
        }
        if top_k == 0 {
            return Err(top_k_zero());
        }
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

/// The one error for `top_k = 0`, which every task refuses: an answer of no candidates.
pub(crate) fn top_k_zero() -> Error {
    Error::InvalidInput("top-k must be at least 1".into())
}

fn no_mask() -> Error {
    Error::InvalidInput(
        "the text has no mask: mark masked bytes with [MASK] (one byte) or [MASK:n] (n bytes)".into(),
    )
}

/// The ids of the `k` highest values of `row`, highest first; ties keep the lower id first. Only
/// the top k are sorted: a full sort of the vocabulary at every decoded position is a visible
/// part of decoding long texts.
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
    use super::*;
    use crate::Loader;

    fn fill() -> FillMask {
        FillMask::new(Loader::new("default").load().unwrap()).unwrap()
    }

    #[test]
    fn candidate_sequence_is_none_for_a_mask_candidate_or_text_it_does_not_have() {
        let fill = fill();
        let input = fill.prepare("ab[MASK]d", false).unwrap();
        let out = &fill.predict(&[&input], 2).unwrap()[0];
        let top = out.masks[0].candidates[0].token_str.clone();
        assert_eq!(out.candidate_sequence(&input, 0, 0), Some(format!("ab{top}d")));
        assert!(out.candidate_sequence(&input, 0, 1).is_some());
        assert_eq!(out.candidate_sequence(&input, 1, 0), None);
        assert_eq!(out.candidate_sequence(&input, 0, 2), None);
        // Another text: its mask is elsewhere, or beyond this answer's positions.
        let other = fill.prepare("[MASK]bcd", false).unwrap();
        assert_eq!(out.candidate_sequence(&other, 0, 0), None);
        let short = MaskedText {
            ids: vec![],
            mask_positions: vec![2],
        };
        assert_eq!(out.candidate_sequence(&short, 0, 0), None);
    }

    /// With a mask range the text is plain bytes: the checks count its bytes as the build does
    /// (`[PAD]` is five ids, not one), and a mask marker is refused by every check alike.
    #[test]
    fn range_checks_count_plain_bytes_as_the_build_does() {
        let fill = fill();
        let pads = "[PAD]".repeat(60);
        let range = Some(0..1);
        for result in [
            fill.check_text(&pads, range.clone(), false),
            fill.prepare_with(&pads, range.clone(), false).map(|_| ()),
        ] {
            assert!(
                matches!(
                    result,
                    Err(Error::TooLong {
                        tokens: 300,
                        max: 256
                    })
                ),
                "{result:?}"
            );
        }
        assert!(FillMask::precheck(&pads, range.clone(), false).is_ok());
        let fits = "[PAD] and [CLS]";
        let built = fill.prepare_with(fits, range.clone(), true).unwrap();
        assert_eq!(built.ids.len(), fits.len() + 2);
        assert!(fill.check_text(fits, range.clone(), true).is_ok());
        for text in ["a [MASK:x] b", "a [MASK] b", "a [MASK:3] b"] {
            let errors = [
                FillMask::precheck(text, range.clone(), false),
                fill.check_text(text, range.clone(), false),
                fill.prepare_with(text, range.clone(), false).map(|_| ()),
            ];
            for e in errors {
                let e = e.unwrap_err().to_string();
                assert!(e.contains("not both"), "{text}: {e}");
            }
        }
        // `[MASK` not followed by `]` or `:` is no marker, in either mode.
        assert!(fill.prepare_with("a [MASK b", range, false).is_ok());
    }

    #[test]
    fn predict_many_refuses_a_batch_size_or_top_k_of_zero() {
        let fill = fill();
        let input = fill.prepare("a[MASK]c", false).unwrap();
        let inputs = [input];
        assert!(fill.predict_many(&inputs, 1, 1).is_ok());
        for (top_k, batch_size) in [(1, 0), (0, 1)] {
            assert!(matches!(
                fill.predict_many(&inputs, top_k, batch_size),
                Err(Error::InvalidInput(_))
            ));
        }
    }

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
