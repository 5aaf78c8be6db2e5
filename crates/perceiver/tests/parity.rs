//! Parity with transformers' `PerceiverForMaskedLM` on the tiny random models that
//! `scripts/make_parity_fixtures.py` wrote to `tests/fixtures/parity/` (see its README there).
//!
//! Logits must agree within [`LOGIT_TOLERANCE`]; the worst difference is printed per case
//! (`cargo test -- --nocapture` shows it).

use candle_core::{Device, IndexOp, Tensor};
use common::parity_cases::{cases, fixture_dirs, within_tolerance, Case, SCORE_TOLERANCE};
use common::{load_fast, max_abs_diff};
use perceiver::{FillMask, Loader, Precision};

mod common;

/// The inference engine, f32: every row of every case as one unpadded batch of mixed lengths,
/// each text decoded at every position; and alone, at a scattered subset of positions.
#[test]
fn engine_matches_transformers() {
    let mut worst_all = 0f32;
    for dir in fixture_dirs() {
        let engine = load_fast(&dir);
        let max_len = engine.max_len();
        for case in cases(&dir) {
            let (batch, _) = case.input_ids.dims2().unwrap();
            let texts = case.unpadded_texts();
            let all: Vec<usize> = (0..max_len).collect();
            let subset: Vec<usize> = (0..max_len).filter(|p| p % 3 == 1 || *p == 0).collect();
            let text_refs: Vec<&[u32]> = texts.iter().map(Vec::as_slice).collect();
            let logits = engine
                .logits_at(&text_refs, &vec![all.as_slice(); batch])
                .unwrap();
            let got =
                Tensor::from_vec(logits, (batch, max_len, engine.config().vocab_size), &Device::Cpu).unwrap();
            let worst = within_tolerance(max_abs_diff(&got, &case.logits), || {
                format!("{}/{} engine batch", dir.display(), case.name)
            });
            for (row, text) in texts.iter().enumerate() {
                let logits = engine.logits_at(&[text], &[&subset]).unwrap();
                let got = Tensor::from_vec(logits, (subset.len(), engine.config().vocab_size), &Device::Cpu)
                    .unwrap();
                let index = Tensor::new(
                    subset.iter().map(|&p| p as u32).collect::<Vec<_>>().as_slice(),
                    &Device::Cpu,
                )
                .unwrap();
                let want = case.logits.i(row).unwrap().index_select(&index, 0).unwrap();
                worst_all = worst_all.max(within_tolerance(max_abs_diff(&got, &want), || {
                    format!("{}/{} row {row} engine subset", dir.display(), case.name)
                }));
            }
            println!(
                "{:<28} {:<12} engine max |Δ logit| = {worst:.2e}",
                dir.file_name().unwrap().to_string_lossy(),
                case.name
            );
            worst_all = worst_all.max(worst);
        }
    }
    println!("engine, every case: max |Δ logit| = {worst_all:.2e}");
}

/// A text's logits do not depend on the texts batched with it, nor on the thread count, in f32
/// and bf16: bit for bit, so that the server's dynamic batching never changes an answer. (Every
/// reduction of the engine runs per row in a fixed order; a product that split a row's sum by its
/// block or thread would break this.) Holds on the packed AVX2/AVX-512/AMX products; the `gemm`
/// crate, used without them, sums differently by shape.
#[test]
fn a_texts_logits_do_not_depend_on_its_batch_or_the_threads() {
    if !perceiver_kernels::sgemm::available() {
        println!("no packed kernel on this CPU: the gemm crate's sums depend on the shape; skipped");
        return;
    }
    for (dir, precision) in fixture_dirs()
        .into_iter()
        .flat_map(|dir| [(dir.clone(), Precision::F32), (dir, Precision::Bf16)])
    {
        let mut engine = load_fast(&dir);
        engine.set_precision(precision);
        let max_len = engine.max_len();
        let positions: Vec<usize> = (0..max_len).filter(|p| p % 5 != 2).collect();
        let mut texts: Vec<Vec<u32>> = cases(&dir).iter().flat_map(Case::unpadded_texts).collect();
        // Odd lengths, so that texts start and end inside the products' blocks of rows.
        texts.push((0..max_len.min(37) as u32).map(|i| 7 + i % 200).collect());
        // An odd count: on two threads, a batch runs its texts side by side, one thread each,
        // and the one left over as a pass of its own on both.
        if texts.len().is_multiple_of(2) {
            texts.push((0..max_len.min(11) as u32).map(|i| 9 + i % 100).collect());
        }
        let refs: Vec<&[u32]> = texts.iter().map(Vec::as_slice).collect();
        engine.set_threads(1);
        let reference: Vec<Vec<f32>> = refs
            .iter()
            .map(|text| engine.logits_at(&[text], &[&positions]).unwrap())
            .collect();
        let differ = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count()
        };
        for threads in [1, 2, 3] {
            engine.set_threads(threads);
            let batched = engine
                .logits_at(&refs, &vec![positions.as_slice(); refs.len()])
                .unwrap();
            let per_text = batched.len() / refs.len();
            for (i, text) in refs.iter().enumerate() {
                let alone = engine.logits_at(&[text], &[&positions]).unwrap();
                let in_batch = &batched[i * per_text..(i + 1) * per_text];
                assert_eq!(
                    differ(&reference[i], in_batch),
                    0,
                    "{} ({precision:?}): text {i} in a batch on {threads} threads differs from it alone on one",
                    dir.display()
                );
                assert_eq!(
                    differ(&reference[i], &alone),
                    0,
                    "{} ({precision:?}): text {i} alone on {threads} threads differs from it alone on one",
                    dir.display()
                );
            }
        }
    }
}

/// The bf16 engine's top-1 prediction equals the f32 engine's at ≥ 99% of the masked positions
/// of the fill-mask fixtures. Agreement at every output position of the logit cases is printed
/// too: these random models have near-ties everywhere, the hardest case for bf16.
#[test]
fn bf16_top1_agrees_with_f32() {
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&x, &y| r[x].total_cmp(&r[y])).unwrap();
    let agree = |a: &[f32], b: &[f32], vocab: usize| -> (usize, usize) {
        let same = a
            .chunks_exact(vocab)
            .zip(b.chunks_exact(vocab))
            .filter(|(x, y)| argmax(x) == argmax(y))
            .count();
        (same, a.len() / vocab)
    };
    let (mut masked_same, mut masked_total, mut all_same, mut all_total) = (0, 0, 0, 0);
    for dir in fixture_dirs() {
        let f32_engine = load_fast(&dir);
        let mut bf16_engine = f32_engine.clone();
        bf16_engine.set_precision(Precision::Bf16);
        let vocab = f32_engine.config().vocab_size;
        let fill = FillMask::new(f32_engine.clone()).unwrap();
        let expected: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("fill_mask.json")).unwrap()).unwrap();
        for case in &expected {
            let input = fill.prepare(case["text"].as_str().unwrap(), true).unwrap();
            let (ids, positions) = (&input.ids[..], &input.mask_positions[..]);
            let a = f32_engine.logits_at(&[ids], &[positions]).unwrap();
            let b = bf16_engine.logits_at(&[ids], &[positions]).unwrap();
            let (same, n) = agree(&a, &b, vocab);
            masked_same += same;
            masked_total += n;
        }
        for case in cases(&dir) {
            for ids in case.unpadded_texts() {
                let positions: Vec<usize> = (0..ids.len()).collect();
                let a = f32_engine.logits_at(&[&ids], &[&positions]).unwrap();
                let b = bf16_engine.logits_at(&[&ids], &[&positions]).unwrap();
                let (same, n) = agree(&a, &b, vocab);
                all_same += same;
                all_total += n;
            }
        }
    }
    let agreement = masked_same as f64 / masked_total as f64;
    println!(
        "bf16 vs f32 top-1: masked positions {masked_same}/{masked_total} = {:.2}%, every position of the logit cases {all_same}/{all_total} = {:.2}%",
        100.0 * agreement,
        100.0 * all_same as f64 / all_total as f64
    );
    assert!(
        masked_total >= 20,
        "too few masked positions to judge: {masked_total}"
    );
    assert!(
        agreement >= 0.99,
        "bf16 top-1 agrees with f32 on only {:.2}% of masked positions",
        100.0 * agreement
    );
}

/// An engine loaded in bf16 (which never packs the f32 weights) gives bit for bit the logits of
/// one loaded in f32 and switched to bf16.
#[test]
fn loading_in_bf16_equals_switching_to_bf16() {
    for dir in fixture_dirs() {
        let mut switched = load_fast(&dir);
        switched.set_precision(Precision::Bf16);
        let loaded = Loader::new(dir.to_string_lossy())
            .precision(Precision::Bf16)
            .load()
            .unwrap();
        assert_eq!(loaded.precision(), Precision::Bf16);
        for case in cases(&dir) {
            for ids in case.unpadded_texts() {
                let positions: Vec<usize> = (0..ids.len()).collect();
                let a = switched.logits_at(&[&ids], &[&positions]).unwrap();
                let b = loaded.logits_at(&[&ids], &[&positions]).unwrap();
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same && a.len() == b.len(),
                    "{}: loaded in bf16 differs",
                    dir.display()
                );
            }
        }
    }
}

/// transformers' fill-mask pipeline on texts with `[MASK]` (its tokenizer adds [CLS]/[SEP]).
#[test]
fn fill_mask_matches_transformers_pipeline() {
    for dir in fixture_dirs() {
        let fill = FillMask::new(load_fast(&dir)).unwrap();
        let expected: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("fill_mask.json")).unwrap()).unwrap();
        let mut worst = 0f32;
        for case in &expected {
            let text = case["text"].as_str().unwrap();
            let top_k = case["top_k"].as_u64().unwrap() as usize;
            let input = fill.prepare(text, true).unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            assert_eq!(input.ids, ids, "{text}: token ids");
            let out = &fill.predict(std::slice::from_ref(&input), top_k).unwrap()[0];
            // One mask: a flat list; several: a list per mask.
            let per_mask: Vec<Vec<serde_json::Value>> = if input.mask_positions.len() == 1 {
                vec![serde_json::from_value(case["output"].clone()).unwrap()]
            } else {
                serde_json::from_value(case["output"].clone()).unwrap()
            };
            assert_eq!(out.masks.len(), per_mask.len());
            for (mask, want) in out.masks.iter().zip(&per_mask) {
                assert_eq!(mask.candidates.len(), want.len());
                for (got, want) in mask.candidates.iter().zip(want) {
                    let score = want["score"].as_f64().unwrap() as f32;
                    worst = worst.max((got.score - score).abs());
                    assert!(
                        (got.score - score).abs() <= SCORE_TOLERANCE,
                        "{text}: score {} vs {score}",
                        got.score
                    );
                    let want_token = want["token"].as_u64().unwrap() as u32;
                    if got.token == want_token {
                        assert_eq!(got.token_str, want["token_str"].as_str().unwrap(), "{text}");
                    } else {
                        // Only a near-tie may swap order: their token must be among ours, same score.
                        let ours = mask.candidates.iter().find(|c| c.token == want_token);
                        assert!(
                            ours.is_some_and(|c| (c.score - score).abs() <= SCORE_TOLERANCE),
                            "{text}: transformers ranks token {want_token} where we rank {}",
                            got.token
                        );
                    }
                }
            }
        }
        println!(
            "{:<28} fill-mask max |Δ score| = {worst:.2e}",
            dir.file_name().unwrap().to_string_lossy()
        );
    }
}
