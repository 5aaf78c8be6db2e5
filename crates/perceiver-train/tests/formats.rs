//! Every weights layout transformers writes loads to the same model: a single safetensors file,
//! sharded safetensors with an index, and `pytorch_model.bin`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs_diff};
use perceiver::{Error, ModelFiles};
use perceiver_train::model::load_masked_lm;
use perceiver_train::PerceiverForMaskedLM;

mod common;

const MODEL: &str = "tiny_v_only";

/// Max |Δ logit| of the model against transformers' logits for the fixture's `single` case.
fn worst_difference(model: &PerceiverForMaskedLM) -> f32 {
    let cases = candle_core::safetensors::load(
        fixtures().join("parity").join(MODEL).join("cases.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = cases["single.input_ids"].to_dtype(DType::U32).unwrap();
    max_abs_diff(&model.forward(&ids, None).unwrap(), &cases["single.logits"])
}

/// The model's logits equal transformers' within 1e-4 (the f32 parity tolerance).
fn assert_matches_transformers(weights: &str, model: &PerceiverForMaskedLM) {
    let worst = worst_difference(model);
    println!("{weights}: max |Δ logit| = {worst:.2e} (tolerance 1e-4)");
    assert!(worst <= 1e-4, "{weights}: max |Δ logit| {worst:.2e} > 1e-4");
}

#[test]
fn pytorch_bin_loads_the_same_model() {
    let files = ModelFiles::from_dir(&fixtures().join("pytorch_bin").join(MODEL)).unwrap();
    assert!(matches!(
        files.weights,
        perceiver::checkpoint::WeightFiles::PyTorch(_)
    ));
    let model = load_masked_lm(&files, &Device::Cpu).unwrap();
    assert_matches_transformers("pytorch_model.bin", &model);
}

/// Splits the fixture's safetensors into two shards with an index, as transformers does for
/// large models.
fn write_sharded(dir: &Path) {
    let source = fixtures().join("parity").join(MODEL);
    std::fs::copy(source.join("config.json"), dir.join("config.json")).unwrap();
    let tensors = candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let subset: HashMap<String, Tensor> =
            part.iter().map(|n| ((*n).clone(), tensors[*n].clone())).collect();
        candle_core::safetensors::save(&subset, dir.join(shard)).unwrap();
        for n in part.iter() {
            weight_map.insert((*n).clone(), shard.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_safetensors_load_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    let files = ModelFiles::from_dir(dir.path()).unwrap();
    match &files.weights {
        perceiver::checkpoint::WeightFiles::Safetensors(shards) => assert_eq!(shards.len(), 2),
        other => panic!("{other:?}"),
    }
    let model = load_masked_lm(&files, &Device::Cpu).unwrap();
    assert_matches_transformers("two safetensors shards", &model);
}

#[test]
fn a_missing_shard_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_masked_lm(&ModelFiles::from_dir(dir.path()).unwrap(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, perceiver_train::Error::Model(Error::Io { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn a_corrupt_pytorch_bin_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("pytorch_bin").join(MODEL);
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(source.join("pytorch_model.bin")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), &bytes[..bytes.len() / 3]).unwrap();
    let err = load_masked_lm(&ModelFiles::from_dir(dir.path()).unwrap(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, perceiver_train::Error::Model(Error::CorruptWeights { .. })),
        "{err}"
    );
}
