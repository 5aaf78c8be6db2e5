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

    // `[MASK:1000000]` expands to a million ids: legal, but building them would slow every run
    // that finds it a hundredfold. Long expansions are checked by count only (the tokenizer's
    // own tests cover its bound); texts whose runs are all short are built too.
    let short_runs = text
        .split("[MASK:")
        .skip(1)
        .all(|rest| rest.bytes().take_while(u8::is_ascii_digit).count() <= 3);
    match tokenizer.masked_len(text, special) {
        Ok(len) if len.ids > 1 << 12 => {}
        Ok(len) => {
            let masked = tokenizer
                .encode_masked(text, special)
                .expect("encode_masked refused a text masked_len counted");
            // The count without building agrees with what is built.
            assert_eq!(len.ids, masked.ids.len());
            assert_eq!(len.masks, masked.mask_positions.len());
            assert!(masked.ids.len() <= MAX_TOKENS);
            assert!(masked.mask_positions.windows(2).all(|w| w[0] < w[1]));
            assert!(masked.mask_positions.iter().all(|&p| masked.ids[p] == MASK_ID));
        }
        // A malformed mask: building refuses it too.
        Err(_) if short_runs => assert!(tokenizer.encode_masked(text, special).is_err()),
        Err(_) => {}
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
