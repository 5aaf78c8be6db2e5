//! Parity of the differentiable (candle) model with transformers' `PerceiverForMaskedLM` on the tiny random models that
//! `scripts/make_parity_fixtures.py` wrote to `tests/fixtures/parity/` (see its README there).
//!
//! Logits must agree within [`LOGIT_TOLERANCE`]; the worst difference is printed per case
//! (`cargo test -- --nocapture` shows it).

use candle_core::{DType, Device, IndexOp, Tensor};
use common::parity_cases::{cases, fixture_dirs, within_tolerance};
use common::{load, max_abs_diff};

mod common;

/// transformers' way: the batch as given (padded to its longest row), every output decoded.
#[test]
fn full_decode_matches_transformers() {
    for dir in fixture_dirs() {
        let model = load(&dir);
        for case in cases(&dir) {
            let logits = model
                .forward(&case.input_ids, Some(&case.attention_mask))
                .unwrap();
            let worst = max_abs_diff(&logits, &case.logits);
            println!(
                "{:<28} {:<12} max |Δ logit| = {worst:.2e}",
                dir.file_name().unwrap().to_string_lossy(),
                case.name
            );
            within_tolerance(worst, || format!("{}/{}", dir.display(), case.name));
        }
    }
}

/// Our way: each text unpadded, only some output positions decoded; and the notebook's way,
/// padded to the maximum length. Both give transformers' logits for those rows.
#[test]
fn unpadded_subset_decode_equals_padded_full_decode() {
    let (mut worst_unpadded, mut worst_padded) = (0f32, 0f32);
    for dir in fixture_dirs() {
        let model = load(&dir);
        let max_len = model.max_len();
        for case in cases(&dir) {
            let (batch, _) = case.input_ids.dims2().unwrap();
            for row in 0..batch {
                let mask = case.attention_mask.i(row).unwrap();
                let len = mask.sum_all().unwrap().to_scalar::<u32>().unwrap() as usize;
                let ids = case
                    .input_ids
                    .i(row)
                    .unwrap()
                    .narrow(0, 0, len)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let expected = case.logits.i(row).unwrap();

                // Unpadded, decoding a scattered subset of positions (some past the text).
                let subset: Vec<u32> = (0..max_len as u32).filter(|p| p % 3 == 1 || *p == 0).collect();
                let positions = Tensor::new(subset.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let latents = model.encode(&ids, None).unwrap();
                let got = model.decode(&latents, &positions).unwrap().squeeze(0).unwrap();
                let want = expected.index_select(&positions.squeeze(0).unwrap(), 0).unwrap();
                worst_unpadded = worst_unpadded.max(within_tolerance(max_abs_diff(&got, &want), || {
                    format!("{}/{} row {row} unpadded subset", dir.display(), case.name)
                }));

                // Padded to the model's maximum length with a mask, every position decoded.
                let padded = ids.pad_with_zeros(1, 0, max_len - len).unwrap();
                let pad_mask = Tensor::ones((1, len), DType::U32, &Device::Cpu)
                    .unwrap()
                    .pad_with_zeros(1, 0, max_len - len)
                    .unwrap();
                let full = model
                    .forward(&padded, Some(&pad_mask))
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                worst_padded = worst_padded.max(within_tolerance(max_abs_diff(&full, &expected), || {
                    format!("{}/{} row {row} padded to max", dir.display(), case.name)
                }));
            }
        }
    }
    println!(
        "every row: unpadded subset decode max |Δ logit| = {worst_unpadded:.2e}, padded to max {worst_padded:.2e}"
    );
}
