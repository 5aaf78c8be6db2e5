//! Choosing which bytes of a training window to mask, and what to put in their place.
//!
//! Every choice comes from a caller-seeded RNG, so a window masked with the same seed is masked the
//! same way on every run (which is what makes `--resume` exact and evaluation repeatable).

use perceiver::tokenizer::{MASK_ID, NUM_SPECIAL_TOKENS as BYTE_OFFSET};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What gets masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskingStrategy {
    /// Each byte independently.
    Bytes,
    /// Whole words (maximal runs of non-whitespace bytes), until the rate is reached.
    WholeWords,
    /// Spans of consecutive bytes with geometrically distributed lengths (SpanBERT), until the rate
    /// is reached.
    Spans,
}

/// Its `--masking` name: `bytes`, `whole-words` or `spans`.
impl std::fmt::Display for MaskingStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bytes => "bytes",
            Self::WholeWords => "whole-words",
            Self::Spans => "spans",
        })
    }
}

impl std::str::FromStr for MaskingStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bytes" => Ok(Self::Bytes),
            "whole-words" | "words" => Ok(Self::WholeWords),
            "spans" => Ok(Self::Spans),
            _ => Err(format!("unknown masking {s:?} (bytes, whole-words, spans)")),
        }
    }
}

/// How to mask: which positions, how many, and what replaces them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Masking {
    /// What is chosen: single bytes, whole words or spans.
    pub strategy: MaskingStrategy,
    /// Fraction of the window's bytes to mask (0 < rate < 1).
    pub rate: f64,
    /// BERT's replacement: of the chosen bytes, 80% become `[MASK]`, 10% a random byte, 10% stay.
    /// Off: every chosen byte becomes `[MASK]`.
    pub bert_replacement: bool,
    /// Mean span length for [`MaskingStrategy::Spans`].
    pub mean_span: f64,
}

impl Default for Masking {
    fn default() -> Self {
        Self {
            strategy: MaskingStrategy::Bytes,
            rate: 0.15,
            bert_replacement: false,
            mean_span: 3.0,
        }
    }
}

/// One window, masked: the model input and what the loss compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedExample {
    /// Token ids the model sees (bytes + [`BYTE_OFFSET`], some replaced).
    pub input_ids: Vec<u32>,
    /// Chosen positions (ascending) and the original id at each.
    pub targets: Vec<(usize, u32)>,
}

impl Masking {
    /// Checks that `rate` is in (0, 1) and, for spans, that `mean_span` is at least 1: an
    /// [`Error::Options`] otherwise.
    pub fn validate(&self) -> Result<()> {
        if !(self.rate > 0.0 && self.rate < 1.0) {
            return Err(Error::Options(format!(
                "mask rate must be in (0, 1), got {}",
                self.rate
            )));
        }
        // NaN is refused too (it would make the span lengths meaningless).
        if self.strategy == MaskingStrategy::Spans && (self.mean_span.is_nan() || self.mean_span < 1.0) {
            return Err(Error::Options(format!(
                "mean span must be ≥ 1, got {}",
                self.mean_span
            )));
        }
        Ok(())
    }

    /// Masks `bytes`. At least one byte is always chosen, so every window adds to the loss.
    pub fn apply(&self, bytes: &[u8], rng: &mut impl Rng) -> MaskedExample {
        let len = bytes.len();
        let mut chosen = vec![false; len];
        if len > 0 {
            match self.strategy {
                MaskingStrategy::Bytes => chosen.iter_mut().for_each(|c| *c = rng.random_bool(self.rate)),
                MaskingStrategy::WholeWords => self.choose_words(bytes, &mut chosen, rng),
                MaskingStrategy::Spans => self.choose_spans(&mut chosen, rng),
            }
            if !chosen.contains(&true) {
                chosen[rng.random_range(0..len)] = true;
            }
        }
        let mut input_ids: Vec<u32> = bytes.iter().map(|&b| b as u32 + BYTE_OFFSET).collect();
        let mut targets = Vec::new();
        for (pos, _) in chosen.iter().enumerate().filter(|(_, &c)| c) {
            targets.push((pos, input_ids[pos]));
            input_ids[pos] = if self.bert_replacement {
                let roll: f64 = rng.random();
                if roll < 0.8 {
                    MASK_ID
                } else if roll < 0.9 {
                    rng.random_range(0..256u32) + BYTE_OFFSET
                } else {
                    input_ids[pos]
                }
            } else {
                MASK_ID
            };
        }
        MaskedExample { input_ids, targets }
    }

    /// Words in random order until `rate` of the bytes are chosen; a word that would overshoot
    /// the budget by more than half of itself is skipped.
    fn choose_words(&self, bytes: &[u8], chosen: &mut [bool], rng: &mut impl Rng) {
        let mut words = Vec::new();
        let mut start = None;
        for (i, b) in bytes.iter().enumerate() {
            match (b.is_ascii_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    words.push(s..i);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            words.push(s..bytes.len());
        }
        words.shuffle(rng);
        let budget = (self.rate * bytes.len() as f64).round() as usize;
        let mut taken = 0;
        for word in words {
            if taken >= budget {
                break;
            }
            if taken + word.len() > budget + word.len() / 2 {
                continue;
            }
            taken += word.len();
            chosen[word].iter_mut().for_each(|c| *c = true);
        }
    }

    /// Spans of length ~ Geometric(1/mean_span), clipped to 10, at random starts until `rate` of
    /// the bytes are chosen.
    fn choose_spans(&self, chosen: &mut [bool], rng: &mut impl Rng) {
        let len = chosen.len();
        let budget = ((self.rate * len as f64).round() as usize).max(1);
        let p = 1.0 / self.mean_span;
        let mut taken = 0;
        // Bounded: each attempt either adds bytes or hits already-chosen ones.
        for _ in 0..len * 4 {
            if taken >= budget {
                break;
            }
            let mut span = 1;
            while span < 10 && !rng.random_bool(p) {
                span += 1;
            }
            let span = span.min(budget - taken).min(len);
            let start = rng.random_range(0..=len - span);
            for c in &mut chosen[start..start + span] {
                if !*c {
                    *c = true;
                    taken += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn text() -> Vec<u8> {
        "The quick brown fox jumps over the lazy dog, and then it naps in the warm afternoon sun. "
            .repeat(12)
            .into_bytes()
    }

    fn rate_of(example: &MaskedExample, len: usize) -> f64 {
        example.targets.len() as f64 / len as f64
    }

    #[test]
    fn a_strategy_is_shown_by_its_flag_name() {
        for strategy in [
            MaskingStrategy::Bytes,
            MaskingStrategy::WholeWords,
            MaskingStrategy::Spans,
        ] {
            assert_eq!(strategy.to_string().parse::<MaskingStrategy>(), Ok(strategy));
        }
        assert_eq!(MaskingStrategy::WholeWords.to_string(), "whole-words");
    }

    #[test]
    fn every_strategy_masks_about_the_rate_and_labels_the_originals() {
        let bytes = text();
        for strategy in [
            MaskingStrategy::Bytes,
            MaskingStrategy::WholeWords,
            MaskingStrategy::Spans,
        ] {
            let masking = Masking {
                strategy,
                ..Masking::default()
            };
            let mut rates = Vec::new();
            for seed in 0..20 {
                let ex = masking.apply(&bytes, &mut ChaCha8Rng::seed_from_u64(seed));
                for &(pos, original) in &ex.targets {
                    assert_eq!(original, bytes[pos] as u32 + BYTE_OFFSET);
                    assert_eq!(ex.input_ids[pos], MASK_ID);
                }
                // Unchosen positions are untouched.
                let chosen: Vec<usize> = ex.targets.iter().map(|t| t.0).collect();
                for (i, &id) in ex.input_ids.iter().enumerate() {
                    if !chosen.contains(&i) {
                        assert_eq!(id, bytes[i] as u32 + BYTE_OFFSET);
                    }
                }
                rates.push(rate_of(&ex, bytes.len()));
            }
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            assert!((mean - 0.15).abs() < 0.02, "{strategy:?}: mean rate {mean}");
        }
    }

    #[test]
    fn whole_words_masks_whole_words_only() {
        let bytes = text();
        let masking = Masking {
            strategy: MaskingStrategy::WholeWords,
            ..Masking::default()
        };
        let ex = masking.apply(&bytes, &mut ChaCha8Rng::seed_from_u64(7));
        let chosen: std::collections::HashSet<usize> = ex.targets.iter().map(|t| t.0).collect();
        for &pos in &chosen {
            assert!(!bytes[pos].is_ascii_whitespace(), "whitespace at {pos} masked");
            // A masked byte's neighbours inside the same word are masked too.
            for next in [pos.wrapping_sub(1), pos + 1] {
                if next < bytes.len() && !bytes[next].is_ascii_whitespace() {
                    assert!(chosen.contains(&next), "word cut at {pos}/{next}");
                }
            }
        }
    }

    #[test]
    fn bert_replacement_keeps_labels_and_mixes_replacements() {
        let bytes = text();
        let masking = Masking {
            bert_replacement: true,
            rate: 0.5,
            ..Masking::default()
        };
        let ex = masking.apply(&bytes, &mut ChaCha8Rng::seed_from_u64(3));
        let n = ex.targets.len() as f64;
        let masked = ex
            .targets
            .iter()
            .filter(|(p, _)| ex.input_ids[*p] == MASK_ID)
            .count() as f64;
        let kept = ex.targets.iter().filter(|(p, o)| ex.input_ids[*p] == *o).count() as f64;
        assert!((masked / n - 0.8).abs() < 0.06, "masked share {}", masked / n);
        assert!(kept / n > 0.04 && kept / n < 0.18, "kept share {}", kept / n);
    }

    #[test]
    fn same_seed_same_masks_and_never_empty() {
        let masking = Masking::default();
        let a = masking.apply(b"hi", &mut ChaCha8Rng::seed_from_u64(1));
        let b = masking.apply(b"hi", &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a, b);
        assert!(!a.targets.is_empty());
    }
}
