//! The differentiable model from a checkpoint: the inference library's [`Loader`] resolves and
//! checks the files (every name and shape against the config, through the one name tree), and
//! its tensors become candle tensors here.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use perceiver::checkpoint::names::ModelNames;
use perceiver::{
    Checkpoint, LoadOptions, Loader, ModelFiles, Param, PerceiverConfig, PerceiverModel, Precision,
};

use super::{PerceiverClassifier, PerceiverForMaskedLM};
use crate::error::Result;

/// Every tensor of a checkpoint as a candle tensor on `device`, by transformers name: the
/// starting point for fine-tuning. BatchNorm's batch counts, which no model reads, are among
/// them (as f32), so that the checkpoints a run writes keep them.
pub fn checkpoint_tensors(checkpoint: &Checkpoint, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let counters = ModelNames::new(checkpoint.config(), 0)?
        .counters()
        .map(|t| Ok((t.name.clone(), checkpoint.get(&t.name)?)))
        .collect::<Result<Vec<_>>>()?;
    checkpoint
        .tensors()?
        .into_iter()
        .chain(counters)
        .map(|(name, param)| Ok((name, Tensor::from_slice(param.data(), param.shape(), device)?)))
        .collect()
}

/// The config and every tensor of the model in `files`, checked against the config.
pub fn load_masked_lm_tensors(
    files: &ModelFiles,
    device: &Device,
) -> Result<(PerceiverConfig, BTreeMap<String, Tensor>)> {
    let checkpoint = Checkpoint::open(files)?;
    let tensors = checkpoint_tensors(&checkpoint, device)?;
    Ok((checkpoint.config().clone(), tensors))
}

/// The differentiable model of a checkpoint.
pub fn masked_lm_of(checkpoint: &Checkpoint, device: &Device) -> Result<PerceiverForMaskedLM> {
    let tensors = checkpoint_tensors(checkpoint, device)?;
    PerceiverForMaskedLM::new(
        checkpoint.config(),
        VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, device),
    )
}

/// The differentiable classifier (of texts or images) of a checkpoint.
pub fn classifier_of(checkpoint: &Checkpoint, device: &Device) -> Result<PerceiverClassifier> {
    let tensors = checkpoint_tensors(checkpoint, device)?;
    PerceiverClassifier::new(
        checkpoint.config(),
        VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, device),
    )
}

/// The differentiable classifier of a directory, a hub id (as [`Loader`] resolves
/// them).
pub fn load_classifier_from(
    model: &str,
    options: &LoadOptions,
    device: &Device,
) -> Result<PerceiverClassifier> {
    classifier_of(&Loader::new(model).options(options.clone()).checkpoint()?, device)
}

/// The differentiable model of the files in `files`.
pub fn load_masked_lm(files: &ModelFiles, device: &Device) -> Result<PerceiverForMaskedLM> {
    masked_lm_of(&Checkpoint::open(files)?, device)
}

/// A directory, a hub id or `default` (the built-in model), as [`Loader`] resolves them.
pub fn load_masked_lm_from(
    model: &str,
    options: &LoadOptions,
    device: &Device,
) -> Result<PerceiverForMaskedLM> {
    masked_lm_of(&Loader::new(model).options(options.clone()).checkpoint()?, device)
}

/// The inference model of candle tensors by transformers name (a model being trained, for
/// instance); the tensors are copied and checked like a checkpoint's.
pub fn inference_model(
    config: &PerceiverConfig,
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
) -> Result<PerceiverModel> {
    let params = tensors
        .iter()
        .map(|(name, tensor)| {
            let values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((name.clone(), Param::owned(values, tensor.dims().to_vec())?))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(PerceiverModel::from_checkpoint(
        &Checkpoint::from_params(config.clone(), params)?,
        precision,
    )?)
}
