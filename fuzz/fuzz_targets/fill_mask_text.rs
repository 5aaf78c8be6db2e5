//! The fill-mask text parser (`[MASK]`, `[MASK:n]`, special-token names, mask ranges) on
//! arbitrary text: no panic, and its three readings of a text agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perceiver::tokenizer::{BytesTokenizer, MASK_ID, MAX_TOKENS};
use perceiver::FillMask;

fuzz_target!(|data: &[u8]| {
    // First byte: flags; next four: a mask range; the rest: the text.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (range, text) = if rest.len() >= 4 {
        let (r, t) = rest.split_at(4);
        (
            u16::from_le_bytes([r[0], r[1]]) as usize..u16::from_le_bytes([r[2], r[3]]) as usize,
            t,
        )
    } else {
        (0..0, rest)
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let special = flags & 1 != 0;
    let tokenizer = BytesTokenizer;

    let counted = tokenizer.masked_len(text, special);
    match tokenizer.encode_masked(text, special) {
        Ok(masked) => {
            // The count without building agrees with what is built.
            let len = counted.expect("masked_len errs where encode_masked does not");
            assert_eq!(len.ids, masked.ids.len());
            assert_eq!(len.masks, masked.mask_positions.len());
            assert!(masked.ids.len() <= MAX_TOKENS);
            assert!(masked.mask_positions.windows(2).all(|w| w[0] < w[1]));
            assert!(masked.mask_positions.iter().all(|&p| masked.ids[p] == MASK_ID));
        }
        Err(_) => {
            // Only a malformed mask (which masked_len reports too) or too many ids.
            if let Ok(len) = counted {
                assert!(
                    len.ids > MAX_TOKENS,
                    "encode_masked refused a text masked_len counted"
                );
            }
        }
    }
    let _ = FillMask::precheck(text, None, special);
    if flags & 2 != 0 {
        let checked = FillMask::precheck(text, Some(range.clone()), special);
        match tokenizer.encode_with_mask_range(text, range.clone(), special) {
            Ok(masked) => {
                assert_eq!(masked.mask_positions.len(), range.len());
                assert!(masked.mask_positions.iter().all(|&p| masked.ids[p] == MASK_ID));
            }
            Err(_) => assert!(checked.is_err(), "precheck passed a range encoding refused"),
        }
    }
});
