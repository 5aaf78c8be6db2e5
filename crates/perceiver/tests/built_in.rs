//! The model built into the library loads by name and fills masks as transformers does with the
//! same weights (`tests/fixtures/built_in/fill_mask.json`, by `scripts/make_built_in_fixture.py`).

use perceiver::{default_model, FillMask, Loader, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;

/// transformers' float32 probabilities against ours: the parity tests' score tolerance.
const TOLERANCE: f64 = 2e-5;

#[test]
fn the_built_in_model_fills_masks_as_transformers() -> Result<()> {
    let path = common::fixtures().join("built_in").join("fill_mask.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let digest: String = Sha256::digest(default_model::WEIGHTS)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        fixture["sha256"].as_str().unwrap(),
        digest,
        "the fixture is of other weights: rerun scripts/make_built_in_fixture.py"
    );
    let fill = FillMask::new(Loader::new("default").load()?)?;
    let cases = fixture["cases"].as_array().unwrap();
    let (mut worst, mut masks) = (0f64, 0);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let input = fill.prepare(text, false)?;
        let out = &fill.predict(&[input], 5)?[0];
        let expected = case["masks"].as_array().unwrap();
        assert_eq!(out.masks.len(), expected.len(), "{text}");
        for (ours, theirs) in out.masks.iter().zip(expected) {
            assert_eq!(
                ours.position as u64,
                theirs["position"].as_u64().unwrap(),
                "{text}"
            );
            let want = theirs["candidates"].as_array().unwrap();
            assert_eq!(ours.candidates.len(), want.len(), "{text}");
            for (c, w) in ours.candidates.iter().zip(want) {
                assert_eq!(
                    u64::from(c.token),
                    w["token"].as_u64().unwrap(),
                    "{text} [{}]",
                    ours.position
                );
                let diff = (f64::from(c.score) - w["score"].as_f64().unwrap()).abs();
                assert!(
                    diff <= TOLERANCE,
                    "{text} [{}]: score {} against {w}",
                    ours.position,
                    c.score
                );
                worst = worst.max(diff);
            }
            masks += 1;
        }
    }
    println!(
        "{} texts, {masks} masked bytes: top-5 ids as transformers'; max |Δ score| = {worst:.2e} \
         (tolerance {TOLERANCE:e})",
        cases.len()
    );
    Ok(())
}
