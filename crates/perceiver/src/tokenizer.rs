//! The bytes tokenizer of the Perceiver IO language model: one id per UTF-8 byte.
//!
//! Ids 0–5 are special (`[PAD]`, `[BOS]`, `[EOS]`, `[MASK]`, `[CLS]`, `[SEP]`); byte `b` is id
//! `b + 6`. This matches DeepMind's `bytes_tokenizer.py` and transformers' `PerceiverTokenizer`.
//! Masked texts are written with `[MASK]` (one masked byte, as in transformers) or `[MASK:n]`
//! (n masked bytes), or masked by byte range.

use std::ops::Range;

use crate::error::{Error, Result};

/// `[PAD]`: padding, attended to by nothing.
pub const PAD_ID: u32 = 0;
/// `[BOS]`: beginning of sequence.
pub const BOS_ID: u32 = 1;
/// `[EOS]`: end of sequence.
pub const EOS_ID: u32 = 2;
/// `[MASK]`: a byte for the model to predict.
pub const MASK_ID: u32 = 3;
/// `[CLS]`: what transformers' tokenizer puts first.
pub const CLS_ID: u32 = 4;
/// `[SEP]`: what transformers' tokenizer puts last.
pub const SEP_ID: u32 = 5;
/// Number of special ids before the first byte id.
pub const NUM_SPECIAL_TOKENS: u32 = 6;
/// 256 bytes + the special ids.
pub const VOCAB_SIZE: usize = 256 + NUM_SPECIAL_TOKENS as usize;

const SPECIAL_TOKENS: [&str; NUM_SPECIAL_TOKENS as usize] =
    ["[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"];

/// Most ids one text may expand to: far beyond any model's positions, and a bound on the memory
/// a hostile text such as `[MASK:1000000]` repeated can claim before the length check.
pub const MAX_TOKENS: usize = 1 << 20;

/// A tokenized text with some positions masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedText {
    /// Token ids, masked positions holding [`MASK_ID`].
    pub ids: Vec<u32>,
    /// Indices into `ids` of the masked positions, ascending.
    pub mask_positions: Vec<usize>,
}

/// The size of a tokenized masked text, without its ids ([`BytesTokenizer::masked_len`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskedLen {
    /// Token ids, special tokens included.
    pub ids: usize,
    /// Masked positions among them.
    pub masks: usize,
}

/// Byte-level tokenizer. Stateless; a unit struct so that call sites read as in other tokenizers.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesTokenizer;

impl BytesTokenizer {
    /// Ids of the UTF-8 bytes of `text`, no special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(|b| b as u32 + NUM_SPECIAL_TOKENS).collect()
    }

    /// Wraps ids as transformers' tokenizer does by default: `[CLS] ids [SEP]`.
    pub fn with_special_tokens(&self, ids: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.push(CLS_ID);
        out.extend_from_slice(ids);
        out.push(SEP_ID);
        out
    }

    /// Decodes ids to text, dropping special ids and replacing invalid UTF-8 with U+FFFD
    /// (DeepMind's `decode`, transformers' `decode(skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&id| byte_of(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Decodes ids to text keeping special ids as their names (`[CLS]`, `[MASK]`, …), invalid
    /// UTF-8 replaced with U+FFFD: transformers' `decode(skip_special_tokens=False)`, which its
    /// fill-mask pipeline uses for texts with several masks. Ids beyond the vocabulary are dropped.
    pub fn decode_with_special_tokens(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len());
        for &id in ids {
            match SPECIAL_TOKENS.get(id as usize) {
                Some(name) => bytes.extend_from_slice(name.as_bytes()),
                None => bytes.extend(byte_of(id)),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// One id decoded alone, as transformers' `tokenizer.decode([id])` (and so its fill-mask
    /// pipeline's `token_str`) renders it: special ids by name, a lone non-ASCII byte as U+FFFD.
    pub fn token_str(&self, id: u32) -> String {
        match SPECIAL_TOKENS.get(id as usize) {
            Some(name) => (*name).to_string(),
            None => match byte_of(id) {
                Some(b) => String::from_utf8_lossy(&[b]).into_owned(),
                None => char::REPLACEMENT_CHARACTER.to_string(),
            },
        }
    }

    /// Tokenizes a text in which `[MASK]` stands for one masked byte and `[MASK:n]` for `n`.
    ///
    /// As in transformers' `PerceiverTokenizer`, the other special-token names (`[PAD]`,
    /// `[BOS]`, `[EOS]`, `[CLS]`, `[SEP]`) written in the text become their ids too. Any other
    /// text, including `[MASK` not followed by `]` or `:`, is literal. A `[MASK:` that is not
    /// followed by a positive integer and `]` is an error naming its byte offset; a text that
    /// expands to more than [`MAX_TOKENS`] ids is [`Error::TooLong`].
    pub fn encode_masked(&self, text: &str, add_special_tokens: bool) -> Result<MaskedText> {
        let mut ids = Vec::with_capacity(text.len() + 2);
        let mut mask_positions = Vec::new();
        if add_special_tokens {
            ids.push(CLS_ID);
        }
        scan_masked(text, |piece| {
            match piece {
                Piece::Literal(literal) => ids.extend(self.encode(literal)),
                Piece::Special { id, count } => {
                    if ids.len() + count > MAX_TOKENS {
                        return Err(too_long(ids.len() + count));
                    }
                    for _ in 0..count {
                        if id == MASK_ID {
                            mask_positions.push(ids.len());
                        }
                        ids.push(id);
                    }
                }
            }
            Ok(())
        })?;
        if add_special_tokens {
            ids.push(SEP_ID);
        }
        if ids.len() > MAX_TOKENS {
            return Err(too_long(ids.len()));
        }
        Ok(MaskedText { ids, mask_positions })
    }

    /// How many ids, and how many of them masks, [`encode_masked`](Self::encode_masked) would
    /// give `text`, counted without building them: a front end compares the count with the
    /// model's positions first, so that a short text such as `[MASK:1000000]` costs no memory
    /// for its expansion. Errors for malformed masks as `encode_masked` does, but has no upper
    /// limit (a run of more than [`MAX_TOKENS`] counts as `MAX_TOKENS + 1`; the sums saturate).
    pub fn masked_len(&self, text: &str, add_special_tokens: bool) -> Result<MaskedLen> {
        let mut len = MaskedLen {
            ids: if add_special_tokens { 2 } else { 0 },
            masks: 0,
        };
        scan_masked(text, |piece| {
            match piece {
                Piece::Literal(literal) => len.ids = len.ids.saturating_add(literal.len()),
                Piece::Special { id, count } => {
                    len.ids = len.ids.saturating_add(count);
                    if id == MASK_ID {
                        len.masks = len.masks.saturating_add(count);
                    }
                }
            }
            Ok(())
        })?;
        Ok(len)
    }

    /// Errors unless `range` is a non-empty range of `text`'s bytes.
    pub fn check_mask_range(text: &str, range: &Range<usize>) -> Result<()> {
        if range.start >= range.end || range.end > text.len() {
            return Err(Error::InvalidInput(format!(
                "mask range {}..{} is empty or outside the text's {} bytes",
                range.start,
                range.end,
                text.len()
            )));
        }
        Ok(())
    }

    /// Tokenizes plain `text` and masks the bytes in `range` (byte offsets into the text, as
    /// DeepMind's notebook does with `inputs[51:60] = MASK`).
    pub fn encode_with_mask_range(
        &self,
        text: &str,
        range: Range<usize>,
        add_special_tokens: bool,
    ) -> Result<MaskedText> {
        Self::check_mask_range(text, &range)?;
        let mut ids = self.encode(text);
        if add_special_tokens {
            ids = self.with_special_tokens(&ids);
        }
        let shift = usize::from(add_special_tokens);
        let mask_positions: Vec<usize> = (range.start + shift..range.end + shift).collect();
        for &p in &mask_positions {
            ids[p] = MASK_ID;
        }
        Ok(MaskedText { ids, mask_positions })
    }
}

/// A piece of a masked text: literal bytes, or a special id repeated `count` times (a
/// special-token name, `[MASK]`, or a `[MASK:n]` run).
enum Piece<'a> {
    Literal(&'a str),
    Special { id: u32, count: usize },
}

/// Splits a text written with `[MASK]` / `[MASK:n]` and special-token names into its pieces, in
/// order (the grammar of [`BytesTokenizer::encode_masked`]).
fn scan_masked(text: &str, mut piece: impl FnMut(Piece) -> Result<()>) -> Result<()> {
    const RUN_OPEN: &str = "[MASK:";
    let mut literal_start = 0;
    let mut cursor = 0;
    while let Some(found) = text[cursor..].find('[') {
        let at = cursor + found;
        let rest = &text[at..];
        // (id, how many times, bytes of text consumed)
        let token = if let Some(id) = SPECIAL_TOKENS.iter().position(|name| rest.starts_with(name)) {
            Some((id as u32, 1, SPECIAL_TOKENS[id].len()))
        } else if let Some(spec) = rest.strip_prefix(RUN_OPEN) {
            let (count, spec_len) = parse_mask_run(spec, at)?;
            Some((MASK_ID, count, RUN_OPEN.len() + spec_len))
        } else {
            None
        };
        let Some((id, count, consumed)) = token else {
            cursor = at + 1;
            continue;
        };
        piece(Piece::Literal(&text[literal_start..at]))?;
        piece(Piece::Special { id, count })?;
        cursor = at + consumed;
        literal_start = cursor;
    }
    piece(Piece::Literal(&text[literal_start..]))
}

/// Parses the `n]` after `[MASK:`; returns `n` and the bytes consumed (digits and `]`).
fn parse_mask_run(spec: &str, offset: usize) -> Result<(usize, usize)> {
    let malformed = || {
        Error::InvalidInput(format!(
            "malformed mask at byte {offset}: expected [MASK:n] with n a positive integer"
        ))
    };
    let close = spec.find(']').ok_or_else(malformed)?;
    let digits = &spec[..close];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    // A run beyond the bound (or beyond usize) counts as one id more than the bound: enough to
    // be refused, by the model's positions when the caller knows them, and a true "or more".
    match digits.parse::<usize>() {
        Ok(0) => Err(malformed()),
        Ok(n) => Ok((n.min(MAX_TOKENS + 1), close + 1)),
        Err(_) => Ok((MAX_TOKENS + 1, close + 1)),
    }
}

/// The too-long error ([`Error::TooLong`]), here against the tokenizer's own bound.
fn too_long(tokens: usize) -> Error {
    Error::TooLong {
        tokens,
        max: MAX_TOKENS,
    }
}

/// The byte an id stands for, or `None` for special and out-of-range ids.
fn byte_of(id: u32) -> Option<u8> {
    id.checked_sub(NUM_SPECIAL_TOKENS)
        .and_then(|b| u8::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOK: BytesTokenizer = BytesTokenizer;

    #[test]
    fn notebook_example_ids() {
        // DeepMind's notebook: " missing." predicted as these ids.
        assert_eq!(
            TOK.encode(" missing."),
            vec![38, 115, 111, 121, 121, 111, 116, 109, 52]
        );
        assert_eq!(
            TOK.decode(&[38, 115, 111, 121, 121, 111, 116, 109, 52]),
            " missing."
        );
    }

    #[test]
    fn mask_markers() {
        let m = TOK.encode_masked("a[MASK]b[MASK:3]", false).unwrap();
        assert_eq!(m.ids, vec![103, MASK_ID, 104, MASK_ID, MASK_ID, MASK_ID]);
        assert_eq!(m.mask_positions, vec![1, 3, 4, 5]);
        let m = TOK.encode_masked("[MASK]", true).unwrap();
        assert_eq!(m.ids, vec![CLS_ID, MASK_ID, SEP_ID]);
        assert_eq!(m.mask_positions, vec![1]);
    }

    #[test]
    fn mask_lookalikes_are_literal() {
        for text in ["[MASKED]", "[MASK", "[mask]", "[MASK [MASK"] {
            let m = TOK.encode_masked(text, false).unwrap();
            assert!(m.mask_positions.is_empty(), "{text}");
            assert_eq!(TOK.decode(&m.ids), text);
        }
    }

    #[test]
    fn malformed_masks_are_errors_naming_the_offset() {
        for (text, offset) in [
            ("ab[MASK:]", 2),
            ("[MASK:x]", 0),
            ("é[MASK:3", 2),
            ("[MASK:-1]", 0),
            ("[MASK: 2]", 0),
        ] {
            let err = TOK.encode_masked(text, false).unwrap_err().to_string();
            assert!(err.contains(&format!("byte {offset}")), "{text}: {err}");
        }
        assert!(TOK.encode_masked("[MASK:0]", false).is_err());
        let huge = "[MASK:99999999999999999999999]";
        let err = TOK.encode_masked(huge, false).unwrap_err().to_string();
        assert!(err.contains("1048577 tokens long or more"), "{err}");
        // Counted, it is refused by whatever bound the caller has (a model's positions).
        assert_eq!(TOK.masked_len(huge, false).unwrap().ids, MAX_TOKENS + 1);
    }

    #[test]
    fn many_long_runs_are_refused_before_allocating() {
        let hostile = "[MASK:1048576]".repeat(300);
        let err = TOK.encode_masked(&hostile, false).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
        let at_limit = format!("[MASK:{MAX_TOKENS}]");
        assert_eq!(TOK.encode_masked(&at_limit, false).unwrap().ids.len(), MAX_TOKENS);
        assert!(TOK.encode_masked(&at_limit, true).is_err());
    }

    #[test]
    fn masked_len_counts_what_encode_masked_builds() {
        for text in [
            "",
            "plain",
            "a[MASK]b[MASK:3]",
            "[CLS]a[MASK][SEP][PAD]",
            "[MASK [MASK:2] [MASKED]",
            "é[MASK:7]ü",
        ] {
            for special in [false, true] {
                let built = TOK.encode_masked(text, special).unwrap();
                let counted = TOK.masked_len(text, special).unwrap();
                assert_eq!(counted.ids, built.ids.len(), "{text:?}");
                assert_eq!(counted.masks, built.mask_positions.len(), "{text:?}");
            }
        }
        // Beyond what encode_masked builds: counted, not refused.
        let hostile = "[MASK:1048576]".repeat(300);
        assert_eq!(TOK.masked_len(&hostile, false).unwrap().ids, 300 * MAX_TOKENS);
        assert!(TOK.masked_len("[MASK:x]", false).is_err());
        assert_eq!(
            TOK.masked_len("[MASK:1048578]", false).unwrap().ids,
            MAX_TOKENS + 1
        );
    }

    #[test]
    fn special_token_names_become_ids_as_in_transformers() {
        let m = TOK
            .encode_masked("[CLS]a[MASK][SEP][PAD][BOS][EOS]", false)
            .unwrap();
        assert_eq!(m.ids, vec![CLS_ID, 103, MASK_ID, SEP_ID, PAD_ID, BOS_ID, EOS_ID]);
        assert_eq!(m.mask_positions, vec![2]);
    }

    #[test]
    fn mask_range() {
        let text = "This is an incomplete sentence where some words are missing.";
        let m = TOK.encode_with_mask_range(text, 51..60, false).unwrap();
        assert_eq!(m.mask_positions, (51..60).collect::<Vec<_>>());
        assert_eq!(TOK.decode(&m.ids), &text[..51]);
        let m = TOK.encode_with_mask_range(text, 51..60, true).unwrap();
        assert_eq!(m.mask_positions, (52..61).collect::<Vec<_>>());
        assert!(TOK.encode_with_mask_range(text, 5..5, false).is_err());
        assert!(TOK.encode_with_mask_range(text, 50..61, false).is_err());
    }

    #[test]
    fn decode_with_special_tokens_as_transformers() {
        // transformers: PerceiverTokenizer().decode(ids) for "a , b . c [MASK] \xc3" with [CLS]/[SEP].
        let ids = [4, 103, 38, 50, 38, 104, 38, 52, 38, 105, 38, 3, 38, 201, 137, 5];
        assert_eq!(
            TOK.decode_with_special_tokens(&ids),
            "[CLS]a , b . c [MASK] \u{c3}[SEP]"
        );
        assert_eq!(TOK.decode(&ids), "a , b . c  \u{c3}");
        // A lone lead byte before a special token is one U+FFFD, as Python's errors="replace".
        assert_eq!(
            TOK.decode_with_special_tokens(&[0xE6 + 6, 0x97 + 6, MASK_ID]),
            "\u{FFFD}[MASK]"
        );
    }

    #[test]
    fn token_str_as_transformers() {
        assert_eq!(TOK.token_str(MASK_ID), "[MASK]");
        assert_eq!(TOK.token_str(b'a' as u32 + 6), "a");
        assert_eq!(TOK.token_str(0xC3 + 6), "\u{FFFD}");
    }

    proptest! {
        #[test]
        fn any_text_round_trips(text in "\\PC*") {
            prop_assert_eq!(TOK.decode(&TOK.encode(&text)), text.clone());
            prop_assert_eq!(TOK.decode(&TOK.with_special_tokens(&TOK.encode(&text))), text);
        }

        #[test]
        fn masked_len_is_the_encoded_length(text in "(\\[MASK(:[0-9]{1,2})?\\]|\\[CLS\\]|[a-z\\[\\]:]){0,12}") {
            match TOK.encode_masked(&text, true) {
                Ok(m) => {
                    let counted = TOK.masked_len(&text, true).unwrap();
                    prop_assert_eq!((counted.ids, counted.masks), (m.ids.len(), m.mask_positions.len()));
                }
                Err(_) => prop_assert!(TOK.masked_len(&text, true).is_err()),
            }
        }

        #[test]
        fn text_without_markers_has_no_masks(text in "[^\\[]*") {
            let m = TOK.encode_masked(&text, false).unwrap();
            prop_assert!(m.mask_positions.is_empty());
            prop_assert_eq!(m.ids, TOK.encode(&text));
        }

        #[test]
        fn mask_runs_expand(prefix in "[a-z ]{0,10}", n in 1usize..20, suffix in "[a-z ]{0,10}") {
            let m = TOK.encode_masked(&format!("{prefix}[MASK:{n}]{suffix}"), false).unwrap();
            prop_assert_eq!(m.ids.len(), prefix.len() + n + suffix.len());
            prop_assert_eq!(m.mask_positions, (prefix.len()..prefix.len() + n).collect::<Vec<_>>());
        }
    }
}
