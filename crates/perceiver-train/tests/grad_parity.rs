//! One training step equals transformers + torch.optim's: the loss, every parameter's gradient,
//! and the parameters after gradient clipping and one AdamW update.
//!
//! Fixtures: `tests/fixtures/grad/*`, written by `scripts/make_grad_fixtures.py` (the masked
//! LMs) and `scripts/make_classifier_grad_fixture.py` (the classifiers of texts and images), with
//! pinned transformers / torch, computed in float64 from the float32 weights. Tolerances: loss
//! 1e-5 relative; a classifier's logits 1e-5 relative to their norm; each gradient 1e-4 relative to its own norm; updated parameters 1e-5 absolute.
//! Attention key biases get no gradient in exact arithmetic (the softmax ignores a constant
//! added to every key), so theirs are compared absolutely (1e-6 × global norm) and their updates
//! (driven by rounding noise through Adam's normalisation) to within the learning rate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use perceiver::ModelFiles;
use perceiver_train::classification::{ClassBatch, Example, ExampleInput};
use perceiver_train::gradients::Gradients;
use perceiver_train::masking::MaskedExample;
use perceiver_train::objective::{masked_lm_loss, MaskedBatch};
use perceiver_train::optim::{clip_factor, global_norm, AdamW, AdamWConfig};
use perceiver_train::trainer::{gradients, set_weights};
use perceiver_train::{ClassifierInputs, PerceiverClassifier, PerceiverForMaskedLM};

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/grad")
        .join(case)
}

fn scalar(step: &HashMap<String, Tensor>, name: &str) -> f64 {
    step[name].flatten_all().unwrap().to_vec1::<f64>().unwrap()[0]
}

fn norm(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

fn check_case(case: &str) {
    let dir = fixture_dir(case);
    let device = Device::Cpu;
    let step = candle_core::safetensors::load(dir.join("step.safetensors"), &device).unwrap();
    let files = ModelFiles::from_dir(&dir).unwrap();
    let (config, tensors) = perceiver_train::model::load_masked_lm_tensors(&files, &device).unwrap();
    let varmap = VarMap::new();
    let model =
        PerceiverForMaskedLM::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
    set_weights(&varmap, &tensors.into_iter().collect()).unwrap();

    // The batch, as our trainer builds it: unpadded windows with their masked targets.
    let ids = step["input_ids"].to_vec2::<i64>().unwrap();
    let mask = step["attention_mask"].to_vec2::<i64>().unwrap();
    let labels = step["labels"].to_vec2::<i64>().unwrap();
    let examples: Vec<MaskedExample> = (0..ids.len())
        .map(|b| {
            let len = mask[b].iter().filter(|&&m| m == 1).count();
            MaskedExample {
                input_ids: ids[b][..len].iter().map(|&i| i as u32).collect(),
                targets: (0..len)
                    .filter(|&i| labels[b][i] >= 0)
                    .map(|i| (i, labels[b][i] as u32))
                    .collect(),
            }
        })
        .collect();
    let batch = MaskedBatch::new(&examples, &device).unwrap();

    let out = masked_lm_loss(&model, &batch).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
    let want_loss = scalar(&step, "loss");
    let loss_rel = (loss - want_loss).abs() / want_loss.abs();
    println!("{case}: loss {loss:.8} vs {want_loss:.8} (relative {loss_rel:.2e}, tolerance 1e-5)");
    assert!(loss_rel < 1e-5, "{case}: loss differs by {loss_rel:e} relative");

    let mut optimizer = AdamW::new(
        &varmap,
        &config,
        AdamWConfig {
            beta1: scalar(&step, "beta1"),
            beta2: scalar(&step, "beta2"),
            eps: scalar(&step, "eps"),
            weight_decay: scalar(&step, "weight_decay"),
        },
    )
    .unwrap();
    let mut collected = Gradients::new(optimizer.vars());
    collected.accumulate(&out.loss).unwrap();
    let grads = gradients(&optimizer, collected).unwrap();
    let names: Vec<String> = optimizer.names().map(String::from).collect();
    assert_names_are_the_fixtures_gradients(case, &step, &names);
    let global = scalar(&step, "grad_norm");
    let mut worst = (0f64, String::new());
    for (name, grad) in names.iter().zip(&grads) {
        let want = step
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("{case}: fixture has no grad.{name}"));
        let diff = norm(&(grad.to_dtype(DType::F64).unwrap() - want).unwrap());
        if name.ends_with("key.bias") {
            assert!(
                diff < 1e-6 * global,
                "{case}: {name} gradient {diff:e} (should be ~0)"
            );
            continue;
        }
        let rel = diff / norm(want);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        assert!(
            rel < 1e-4,
            "{case}: gradient of {name} differs by {rel:e} of its norm"
        );
    }
    println!(
        "{case}: {} gradients, worst relative difference {:.2e} ({}), tolerance 1e-4",
        names.len(),
        worst.0,
        worst.1
    );

    let norm_before = global_norm(&grads).unwrap();
    assert!(
        (norm_before - global).abs() < 1e-5 * global,
        "{case}: grad norm {norm_before} vs {global}"
    );
    let grad_scale = clip_factor(norm_before, scalar(&step, "clip_max_norm"));
    optimizer.step(&grads, grad_scale, scalar(&step, "lr")).unwrap();
    let lr = scalar(&step, "lr");
    let mut worst = 0f64;
    for (name, var) in names.iter().zip(optimizer.vars()) {
        let want = &step[&format!("updated.{name}")];
        let diff = (var.as_tensor().to_dtype(DType::F64).unwrap() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        if name.ends_with("key.bias") {
            assert!(diff <= 1.01 * lr, "{case}: {name} moved {diff:e}, more than lr");
            continue;
        }
        worst = worst.max(diff);
        assert!(diff < 1e-5, "{case}: {name} after AdamW differs by {diff:e}");
    }
    println!("{case}: parameters after clipping + AdamW, worst |Δ| {worst:.2e} (tolerance 1e-5)");
}

/// The optimizer's parameters are exactly the tensors transformers took gradients of: none is
/// left unchecked on either side.
fn assert_names_are_the_fixtures_gradients(case: &str, step: &HashMap<String, Tensor>, names: &[String]) {
    let mut ours: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut theirs: Vec<&str> = step.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    assert_eq!(
        ours, theirs,
        "{case}: our parameters against the fixture's gradients"
    );
}

#[test]
fn training_step_matches_transformers_erf_query_residual_shared_blocks() {
    check_case("erf_residual");
}

#[test]
fn training_step_matches_transformers_tanh_no_residual_padded() {
    check_case("tanh_noresidual");
}

/// The sequence classifier's loss and every gradient equal transformers'
/// `PerceiverForSequenceClassification` (`scripts/make_classifier_grad_fixture.py`: a padded batch
/// of three texts, float64 there): the classification decoder (one query, one head, query
/// residual), the final layer and everything below them. The optimizer step after it is the
/// masked LM's, checked above.
#[test]
fn classifier_gradients_match_transformers() {
    check_classifier_case("classifier", |step, device| {
        let ids = step["input_ids"].to_vec2::<i64>().unwrap();
        let mask = step["attention_mask"].to_vec2::<i64>().unwrap();
        let labels = step["labels"].to_vec1::<i64>().unwrap();
        let examples: Vec<Example> = ids
            .iter()
            .zip(&mask)
            .zip(&labels)
            .map(|((row, m), &label)| Example {
                input: ExampleInput::Ids(
                    row.iter()
                        .zip(m)
                        .filter(|&(_, &m)| m == 1)
                        .map(|(&i, _)| i as u32)
                        .collect(),
                ),
                label: label as u32,
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        ClassBatch::new(&refs, None, device).unwrap()
    });
}

/// The three ImageNet classifiers' loss, logits and every gradient equal transformers' on a
/// batch of three images (`scripts/make_classifier_grad_fixture.py`, float64 there): the 1×1
/// convolution and projected learned positions, the pixels with Fourier features, and the conv
/// stem (its BatchNorm frozen on both sides: running statistics, trained scale and shift) with
/// its max-pool, under the same encoder and classification decoder.
#[test]
fn image_classifier_gradients_match_transformers() {
    for case in ["image_learned", "image_fourier", "image_conv"] {
        check_classifier_case(case, |step, device| {
            let pixels = step["pixel_values"].to_device(device).unwrap();
            let labels: Vec<u32> = step["labels"]
                .to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|l| l as u32)
                .collect();
            ClassBatch {
                size: labels.len(),
                labels: Tensor::new(labels, device).unwrap(),
                inputs: ClassifierInputs::Images(pixels),
                num_bytes: 0,
            }
        });
    }
}

/// One classifier fixture: the model of `case` on the batch `batch` makes of its step file; the
/// loss (and the logits, where the fixture has them) and every trained tensor's gradient against
/// transformers'.
fn check_classifier_case(case: &str, batch: impl FnOnce(&HashMap<String, Tensor>, &Device) -> ClassBatch) {
    use perceiver_train::classification::classification_loss;

    let dir = fixture_dir(case);
    let device = Device::Cpu;
    let step = candle_core::safetensors::load(dir.join("step.safetensors"), &device).unwrap();
    let files = ModelFiles::from_dir(&dir).unwrap();
    let (config, tensors) = perceiver_train::model::load_masked_lm_tensors(&files, &device).unwrap();
    let varmap = VarMap::new();
    let model =
        PerceiverClassifier::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
    set_weights(&varmap, &tensors.into_iter().collect()).unwrap();

    let batch = batch(&step, &device);
    if let Some(want) = step.get("logits") {
        let got = model
            .forward(&batch.inputs)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let diff = norm(&(got - want).unwrap()) / norm(want);
        println!("{case}: logits differ by {diff:.2e} of their norm (tolerance 1e-5)");
        assert!(diff < 1e-5, "{case}: logits differ by {diff:e} of their norm");
    }
    let out = classification_loss(&model, &batch).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
    let want_loss = scalar(&step, "loss");
    let loss_rel = (loss - want_loss).abs() / want_loss.abs();
    println!("{case}: loss {loss:.8} vs {want_loss:.8} (relative {loss_rel:.2e}, tolerance 1e-5)");
    assert!(loss_rel < 1e-5, "{case}: loss differs by {loss_rel:e} relative");

    let optimizer = AdamW::new(&varmap, &config, AdamWConfig::default()).unwrap();
    let mut collected = Gradients::new(optimizer.vars());
    collected.accumulate(&out.loss).unwrap();
    let grads = gradients(&optimizer, collected).unwrap();
    let global = scalar(&step, "grad_norm");
    let mut worst = (0f64, String::new());
    let names: Vec<String> = optimizer.names().map(String::from).collect();
    assert_names_are_the_fixtures_gradients(case, &step, &names);
    for (name, grad) in names.iter().zip(&grads) {
        let want = step
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("{case}: fixture has no grad.{name}"));
        let diff = norm(&(grad.to_dtype(DType::F64).unwrap() - want).unwrap());
        if name.ends_with("key.bias") {
            assert!(
                diff < 1e-6 * global,
                "{case}: {name} gradient {diff:e} (should be ~0)"
            );
            continue;
        }
        let rel = diff / norm(want);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        assert!(
            rel < 1e-4,
            "{case}: gradient of {name} differs by {rel:e} of its norm"
        );
    }
    println!(
        "{case}: {} gradients, worst relative difference {:.2e} ({}), tolerance 1e-4",
        names.len(),
        worst.0,
        worst.1
    );
}
