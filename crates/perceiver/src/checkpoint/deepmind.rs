//! DeepMind's own checkpoints, read as transformers checkpoints.
//!
//! DeepMind released its Perceiver IO models as pickled Haiku parameters (read without running
//! any of their code by [`super::haiku`]): module path → parameter → array, e.g.
//! `perceiver_encoder/~/self_attention_3/attention/linear_2` → `w`. This module gives each of them
//! its transformers name (the mapping of transformers' `convert_perceiver_haiku_to_pytorch.py`,
//! written here from the module tree of DeepMind's `perceiver.py` and the names of
//! [`super::names`]) and transformers' layout: a Haiku `Linear`'s `w` is `[in, out]` and is
//! transposed to `[out, in]`; a LayerNorm's `scale` / `offset` are its `weight` / `bias`.
//!
//! The config comes from two places. Every width and count a tensor pins (vocabulary, `d_model`,
//! latents, the attentions' query/key and value widths, MLP widening, the number of latent
//! layers, positions) is read from the parameters' shapes. What no shape tells — the heads, how
//! many times the latent block runs (its weights are shared), whether the encoder adds its query
//! back, the flow model's tile size (`train_size`, which scales its Fourier features) — comes
//! from the Colab DeepMind published with the file ([`language_colab`], [`flow_colab`]), or from a
//! transformers `config.json` the caller names, which then decides everything and is checked
//! against every shape. A config taken from the Colab runs DeepMind's activation, the tanh GELU
//! (`jax.nn.gelu`), so the numbers are DeepMind's; transformers' own config for the released
//! model says `"gelu"` (exact), which moves the logits by up to ~1e-3.
//!
//! Six of DeepMind's models are mapped, told apart by their module names: the byte-level masked
//! language model (`language_perceiver_io_bytes.pickle`, [`language_colab`]), the optical-flow
//! model (`optical_flow_checkpoint.pystate`, [`flow_colab`]), the video autoencoder
//! (`video_autoencoding_checkpoint.pystate`, [`video_colab`]; its encoder is named `encoder`, not
//! `perceiver_encoder`) and the three ImageNet classifiers
//! (`imagenet_*.pystate`, [`imagenet_colab`]), whose `.pystate` is `{"params", "state"}`: the conv
//! stem's BatchNorm statistics are Haiku state (`mean_ema` / `var_ema`). A Haiku convolution's
//! kernel (`[kh, kw, in, out]`) becomes PyTorch's `[out, in, kh, kw]`; a BatchNorm's
//! `[1, 1, 1, channels]` arrays its `[channels]` ones. Where DeepMind's ImageNet code does what
//! transformers' classes do not (the stem's `'SAME'` padding, the learned model's decoder without
//! a query residual), the config says so under this library's own keys, which the model follows
//! and transformers ignores.

use std::collections::BTreeMap;
use std::path::Path;

use super::haiku::{read_haiku_file, HaikuCheckpoint, HaikuParams, NdArray};
use super::names::{
    ClassifierNames, FlowNames, ImagePreprocessorNames, InputNames, LayerNames, LinearNames, MaskedLmNames,
    Modality, MultimodalNames, NormNames, Role, TensorName,
};
use super::{Checkpoint, Param};
use crate::config::{
    Architecture, CrossAttentionShape, PerceiverConfig, CLASSIFIER_QUERY_RESIDUAL_KEY, STEM_PADDING_KEY,
};
use crate::error::{Error, Result};

/// File extensions taken as DeepMind checkpoints wherever a model is accepted: DeepMind's
/// `.pickle` (the language model) and `.pystate` (the others), and the common `.pkl`.
pub const EXTENSIONS: [&str; 3] = ["pickle", "pystate", "pkl"];

/// Whether `path` is a file named as a DeepMind checkpoint ([`EXTENSIONS`], any case).
pub fn is_deepmind_file(path: &Path) -> bool {
    path.is_file() && has_deepmind_extension(path)
}

/// Whether `path` ends in one of [`EXTENSIONS`] (any case), whether or not it exists.
pub fn has_deepmind_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// What DeepMind's masked_language_modelling Colab sets for `language_perceiver_io_bytes.pickle`
/// that the parameters' shapes cannot tell (its `encoder_config` and `decoder_config`).
///
/// The decoder's other settings (8 heads of 32 query/key channels, values as wide as `d_model`,
/// no query residual, no final projection) are those transformers' `PerceiverForMaskedLM`
/// hard-codes; the shapes confirm its widths.
pub mod language_colab {
    /// `num_self_attend_heads`.
    pub const NUM_SELF_ATTENTION_HEADS: usize = 8;
    /// `num_cross_attend_heads`.
    pub const NUM_CROSS_ATTENTION_HEADS: usize = 8;
    /// `num_blocks`: the latent layers run once.
    pub const NUM_BLOCKS: usize = 1;
    /// `use_query_residual` of the encoder's cross-attention.
    pub const USE_QUERY_RESIDUAL: bool = true;
    /// `jax.nn.gelu`'s default: the tanh approximation.
    pub const ACTIVATION: crate::config::Activation = crate::config::Activation::GeluTanh;
}

/// What DeepMind's optical_flow Colab sets for `optical_flow_checkpoint.pystate` that the
/// parameters' shapes cannot tell (its `optical_flow`: the `PerceiverEncoder`'s heads, blocks and
/// query residual, and `TRAIN_SIZE`, the tile the Fourier features are scaled to).
///
/// The rest is transformers' `PerceiverForOpticalFlow`'s, and DeepMind's too: 3×3 patches of both
/// frames projected to 64 channels, 64 Fourier bands, a decoder of one head whose queries and
/// keys take the latents' width (`shape_for_attn='kv'`), no query residual, 2 output channels;
/// the shapes confirm every width. The model's output is the decoder's, already divided by its
/// `rescale_factor` of 100 (transformers' logits); the Colab multiplies it by
/// [`FLOW_SCALE_FACTOR`](crate::tasks::flow::FLOW_SCALE_FACTOR) for pixels.
pub mod flow_colab {
    /// `num_self_attend_heads`.
    pub const NUM_SELF_ATTENTION_HEADS: usize = 16;
    /// `num_cross_attend_heads`.
    pub const NUM_CROSS_ATTENTION_HEADS: usize = 1;
    /// `num_blocks`: the latent layers run once.
    pub const NUM_BLOCKS: usize = 1;
    /// `use_query_residual` of the encoder's cross-attention (`PerceiverEncoder`'s default).
    pub const USE_QUERY_RESIDUAL: bool = true;
    /// `TRAIN_SIZE`, height then width: no parameter depends on it.
    pub const TRAIN_SIZE: [usize; 2] = [368, 496];
    /// `jax.nn.gelu`'s default: the tanh approximation.
    pub const ACTIVATION: crate::config::Activation = crate::config::Activation::GeluTanh;
}

/// What DeepMind's imagenet_classification Colab sets for its three checkpoints
/// (`imagenet_learned_position_encoding.pystate`, `imagenet_fourier_position_encoding.pystate`,
/// `imagenet_conv_preprocessing.pystate`) that the parameters' shapes cannot tell: the
/// `PerceiverEncoder`'s heads, blocks and query residual (the same in its three configs), and the
/// `ClassificationDecoder`'s query residual (not the same).
///
/// The rest is transformers' and DeepMind's alike: one decoder query of `d_latents` channels,
/// one head whose queries and keys take the latents' width, a final projection onto the labels;
/// a 1×1 convolution to 256 channels with 256 trainable positions per pixel projected by a
/// linear layer (learned), raw pixels with 64 Fourier bands over 224×224 (Fourier), a 7×7
/// stride-2 convolution to 64 channels with BatchNorm, ReLU and a 3×3 stride-2 max-pool, with 64
/// Fourier bands over 56×56 (conv). The shapes confirm every width.
///
/// Two things DeepMind's code fixes that transformers' classes do differently are written into
/// the config as this library's own keys (transformers keeps them as unused attributes):
/// the learned model's decoder has no query residual ([`CLASSIFIER_QUERY_RESIDUAL_KEY`] `false`;
/// transformers always adds it), and the conv stem pads as Haiku's `'SAME'` does
/// ([`STEM_PADDING_KEY`] `"same"`: 224 → 112 → 56, where transformers' stem gives 55). A named
/// config.json that leaves them out gets DeepMind's.
pub mod imagenet_colab {
    /// `num_self_attend_heads`.
    pub const NUM_SELF_ATTENTION_HEADS: usize = 8;
    /// `num_cross_attend_heads`.
    pub const NUM_CROSS_ATTENTION_HEADS: usize = 1;
    /// `num_blocks`: the 6 latent layers run 8 times (weights shared).
    pub const NUM_BLOCKS: usize = 8;
    /// `use_query_residual` of the encoder's cross-attention.
    pub const USE_QUERY_RESIDUAL: bool = true;
    /// The decoder's `use_query_residual` in `learned_pos_configs`.
    pub const LEARNED_DECODER_QUERY_RESIDUAL: bool = false;
    /// The decoder's `use_query_residual` in `fourier_pos_configs` and `conv_maxpool_configs`.
    pub const FOURIER_AND_CONV_DECODER_QUERY_RESIDUAL: bool = true;
    /// `jax.nn.gelu`'s default: the tanh approximation.
    pub const ACTIVATION: crate::config::Activation = crate::config::Activation::GeluTanh;
}

/// What DeepMind's video_autoencoding Colab sets for `video_autoencoding_checkpoint.pystate`
/// that the parameters' shapes cannot tell: the `PerceiverEncoder`'s heads, blocks and query
/// residual (its default), and the sizes of the video and audio it was built for (no parameter
/// depends on them: the Fourier features are computed). The shapes tell the samples per audio
/// patch (the audio head's outputs), the labels, the decoder's output channels and the label
/// query's width.
///
/// The rest is transformers' `PerceiverForMultimodalAutoencoding`'s and DeepMind's alike: 4×4
/// video patches with 32 Fourier bands over `(NUM_FRAMES, IMG_SZ, IMG_SZ)`, audio patches with
/// 192 bands over the audio's length, input rows padded to the widest modality + 4 and query rows
/// to the widest + 2, the label always masked (its row is the mask token), one decoder head whose
/// queries and keys take the latents' width, no query residual.
pub mod video_colab {
    /// `num_self_attend_heads`.
    pub const NUM_SELF_ATTENTION_HEADS: usize = 8;
    /// `num_cross_attend_heads`.
    pub const NUM_CROSS_ATTENTION_HEADS: usize = 1;
    /// `num_blocks`: the 8 latent layers run once.
    pub const NUM_BLOCKS: usize = 1;
    /// `use_query_residual` of the encoder's cross-attention (`PerceiverEncoder`'s default).
    pub const USE_QUERY_RESIDUAL: bool = true;
    /// `NUM_FRAMES`.
    pub const NUM_FRAMES: usize = 16;
    /// `AUDIO_SAMPLES_PER_FRAME` (48 kHz at 25 frames a second).
    pub const AUDIO_SAMPLES_PER_FRAME: usize = 48000 / 25;
    /// `IMG_SZ`: the video's Fourier features' top frequency in space (transformers'
    /// `image_size`); the patches of a 224×224 frame are 56×56.
    pub const IMAGE_SIZE: usize = 56;
    /// The decoded video, `[batch, frames, height, width]` (transformers' `output_shape`).
    pub const OUTPUT_SHAPE: [usize; 4] = [1, 16, 224, 224];
    /// `jax.nn.gelu`'s default: the tanh approximation.
    pub const ACTIVATION: crate::config::Activation = crate::config::Activation::GeluTanh;
}

/// Haiku's module paths in DeepMind's masked language model (the Colab's `apply_perceiver`) and
/// optical-flow model (the Colab's `optical_flow`): each spelled once, here.
mod haiku_names {
    /// `hk.Embed`: the byte embedding, `[vocab, d_model]`.
    pub const EMBED: (&str, &str) = ("embed", "embeddings");
    /// The input's trainable positions, `[positions, d_model]`.
    pub const INPUT_POSITIONS: (&str, &str) = ("trainable_position_encoding", "pos_embs");
    /// The latent array, `[num_latents, d_latents]`.
    pub const LATENTS: (&str, &str) = ("perceiver_encoder/~/trainable_position_encoding", "pos_embs");
    /// The encoder's cross-attention layer.
    pub const ENCODER_CROSS: &str = "perceiver_encoder/~/cross_attention";
    /// The decoder's queries, `[positions, d_model]`.
    pub const DECODER_QUERIES: (&str, &str) = ("basic_decoder/~/trainable_position_encoding", "pos_embs");
    /// The decoder's cross-attention layer.
    pub const DECODER_CROSS: &str = "basic_decoder/cross_attention";
    /// The bias of the tied output projection, `[vocab]`.
    pub const OUTPUT_BIAS: (&str, &str) = ("embedding_decoder", "bias");

    /// Flow: `ImagePreprocessor`'s `patches_linear`, both frames' 3×3 patches (54) → 64.
    pub const PATCHES: &str = "image_preprocessor/patches_linear";
    /// Flow: the `FlowDecoder`, whose `BasicDecoder` is made in its constructor (`/~/`) and
    /// makes its layers when called (`/`).
    pub const FLOW_DECODER: &str = "flow_decoder/";
    /// Flow: the decoder's cross-attention layer (each pixel's input row queries the latents).
    pub const FLOW_DECODER_CROSS: &str = "flow_decoder/~/basic_decoder/cross_attention";
    /// Flow: the decoder's final `hk.Linear` onto the two flow channels.
    pub const FLOW_OUTPUT: &str = "flow_decoder/~/basic_decoder/output";

    /// ImageNet: the `ClassificationDecoder` (its `BasicDecoder` is made in its constructor).
    pub const CLASSIFIER: &str = "classification_decoder/";
    /// ImageNet: the decoder's one query, `[1, d_latents]`.
    pub const CLASSIFIER_QUERY: (&str, &str) = (
        "classification_decoder/~/basic_decoder/~/trainable_position_encoding",
        "pos_embs",
    );
    /// ImageNet: the decoder's cross-attention layer.
    pub const CLASSIFIER_CROSS: &str = "classification_decoder/~/basic_decoder/cross_attention";
    /// ImageNet: the decoder's final `hk.Linear` onto the labels.
    pub const CLASSIFIER_OUTPUT: &str = "classification_decoder/~/basic_decoder/output";
    /// ImageNet: every module of the `ImagePreprocessor` starts so.
    pub const IMAGE_PREPROCESSOR: &str = "image_preprocessor/";
    /// Learned: the 1×1 `hk.Conv2D` (`w` `[1, 1, 3, 256]`, `b`).
    pub const CONV1X1: &str = "image_preprocessor/~/conv2_d";
    /// Learned: the trainable positions, `[image_size², 256]` (made when the preprocessor is
    /// called, in `_build_network_inputs`).
    pub const IMAGE_POSITIONS: (&str, &str) = (
        "image_preprocessor/~_build_network_inputs/trainable_position_encoding",
        "pos_embs",
    );
    /// Learned: the `PositionEncodingProjector`'s `hk.Linear`.
    pub const POSITIONS_PROJECTION: &str =
        "image_preprocessor/~_build_network_inputs/position_encoding_projector/linear";
    /// Conv: the `Conv2DDownsample` stem.
    pub const STEM: &str = "image_preprocessor/~/conv2_d_downsample";
    /// Conv: the stem's 7×7 `hk.Conv2D` (`w` `[7, 7, 3, 64]`, no bias).
    pub const STEM_CONV: &str = "image_preprocessor/~/conv2_d_downsample/~/conv";
    /// Conv: the stem's `hk.BatchNorm` (`scale`, `offset`, each `[1, 1, 1, 64]`).
    pub const STEM_BATCHNORM: &str = "image_preprocessor/~/conv2_d_downsample/~/batchnorm";
    /// Conv, in the `.pystate`'s `state`: the BatchNorm's moving mean (`average`, `hidden`,
    /// `counter`); `average` is what inference reads.
    pub const STEM_MEAN: &str = "image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/mean_ema";
    /// Conv, in `state`: the moving variance, as [`STEM_MEAN`].
    pub const STEM_VAR: &str = "image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/var_ema";

    /// The `PerceiverEncoder`'s name in every model but the video autoencoder.
    pub const ENCODER: &str = "perceiver_encoder";
    /// The video autoencoder's `PerceiverEncoder` (the Colab names it `encoder`).
    pub const VIDEO_ENCODER: &str = "encoder";

    /// Module path of latent layer `index`.
    pub fn self_attention(index: usize) -> String {
        self_attention_in(ENCODER, index)
    }

    /// Module path of latent layer `index` of the encoder named `encoder`.
    pub fn self_attention_in(encoder: &str, index: usize) -> String {
        if index == 0 {
            format!("{encoder}/~/self_attention")
        } else {
            format!("{encoder}/~/self_attention_{index}")
        }
    }

    /// The latent array of the encoder named `encoder`.
    pub fn latents_in(encoder: &str) -> (String, &'static str) {
        (format!("{encoder}/~/trainable_position_encoding"), "pos_embs")
    }

    /// The cross-attention of the encoder named `encoder`.
    pub fn encoder_cross_in(encoder: &str) -> String {
        format!("{encoder}/~/cross_attention")
    }

    /// Video: the `MultimodalPreprocessor`'s trainable rows: `{modality}_padding` (appended to
    /// each of the modality's rows) and `{modality}_mask_token`.
    pub const MULTIMODAL_PREPROCESSOR: &str = "multimodal_preprocessor";
    /// Video: the `MultimodalDecoder`; its query paddings are made in `decoder_query`.
    pub const MULTIMODAL_DECODER: &str = "multimodal_decoder";
    /// Video: the decoder's `{modality}_padding` rows.
    pub const MULTIMODAL_QUERY_PADDING: &str = "multimodal_decoder/~decoder_query";
    /// Video: the shared decoder's cross-attention.
    pub const MULTIMODAL_CROSS: &str = "multimodal_decoder/~/basic_decoder/cross_attention";
    /// Video: the shared decoder's final `hk.Linear`.
    pub const MULTIMODAL_OUTPUT: &str = "multimodal_decoder/~/basic_decoder/output";
    /// Video: each modality's postprocessor `hk.Linear` (audio, image, label).
    pub const MULTIMODAL_HEADS: [&str; 3] = [
        "audio_postprocessor/linear",
        "projection_postprocessor/linear",
        "classification_postprocessor/linear",
    ];
}

/// One Haiku parameter and the transformers tensor it becomes.
struct Pair<'a> {
    module: String,
    param: &'static str,
    tensor: &'a TensorName,
    layout: Layout,
}

/// How a Haiku array is laid out against its transformers tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// By the tensor's role ([`haiku_shape`]): a Linear's `w` is `[in, out]`, a convolution's
    /// `[kh, kw, in, out]`, everything else as transformers has it.
    ByRole,
    /// A BatchNorm's per-channel array, which Haiku keeps as `[1, 1, 1, channels]`.
    Channels,
}

impl<'a> Pair<'a> {
    fn new(module: impl Into<String>, param: &'static str, tensor: &'a TensorName) -> Self {
        Self {
            module: module.into(),
            param,
            tensor,
            layout: Layout::ByRole,
        }
    }

    fn channels(module: impl Into<String>, param: &'static str, tensor: &'a TensorName) -> Self {
        Self {
            layout: Layout::Channels,
            ..Self::new(module, param, tensor)
        }
    }

    fn haiku_name(&self) -> String {
        format!("{}/{}", self.module, self.param)
    }

    /// The shape Haiku stores the tensor in.
    fn haiku_shape(&self) -> Vec<usize> {
        match self.layout {
            Layout::ByRole => haiku_shape(self.tensor),
            Layout::Channels => {
                let mut shape = vec![1; 3];
                shape.extend(&self.tensor.shape);
                shape
            }
        }
    }
}

fn norm_pairs<'a>(module: String, norm: &'a NormNames, out: &mut Vec<Pair<'a>>) {
    out.push(Pair::new(module.clone(), "scale", &norm.weight));
    out.push(Pair::new(module, "offset", &norm.bias));
}

fn linear_pairs<'a>(module: String, linear: &'a LinearNames, out: &mut Vec<Pair<'a>>) {
    out.push(Pair::new(module.clone(), "w", &linear.weight));
    out.push(Pair::new(module, "b", &linear.bias));
}

/// A layer of DeepMind's `CrossAttention` / `SelfAttention`: Haiku numbers its LayerNorms and
/// Linears in the order the module creates them. Cross-attention: `layer_norm` (queries),
/// `layer_norm_1` (keys/values), the attention, `layer_norm_2` (before the MLP); self-attention
/// has no second input, so its MLP's LayerNorm is `layer_norm_1`. In `attention`, `linear` to
/// `linear_3` are the query, key, value and output projections; in `mlp`, `linear` and
/// `linear_1` are its two layers.
fn layer_pairs<'a>(prefix: &str, layer: &'a LayerNames, out: &mut Vec<Pair<'a>>) {
    norm_pairs(format!("{prefix}/layer_norm"), &layer.q_norm, out);
    let mlp_norm = match &layer.kv_norm {
        Some(kv) => {
            norm_pairs(format!("{prefix}/layer_norm_1"), kv, out);
            "layer_norm_2"
        }
        None => "layer_norm_1",
    };
    linear_pairs(format!("{prefix}/attention/linear"), &layer.query, out);
    linear_pairs(format!("{prefix}/attention/linear_1"), &layer.key, out);
    linear_pairs(format!("{prefix}/attention/linear_2"), &layer.value, out);
    linear_pairs(format!("{prefix}/attention/linear_3"), &layer.output, out);
    norm_pairs(format!("{prefix}/{mlp_norm}"), &layer.mlp_norm, out);
    linear_pairs(format!("{prefix}/mlp/linear"), &layer.dense1, out);
    linear_pairs(format!("{prefix}/mlp/linear_1"), &layer.dense2, out);
}

/// Every Haiku parameter of the masked language model with its transformers tensor, in the
/// order the model reads them.
fn masked_lm_pairs(names: &MaskedLmNames) -> Vec<Pair<'_>> {
    use haiku_names::*;
    let single = |(module, param): (&str, &'static str), tensor| Pair::new(module, param, tensor);
    let mut out = vec![
        single(EMBED, &names.preprocessor.embeddings),
        single(INPUT_POSITIONS, &names.preprocessor.positions),
        single(LATENTS, &names.encoder.latents),
    ];
    layer_pairs(ENCODER_CROSS, &names.encoder.cross_attention, &mut out);
    for (index, layer) in names.encoder.self_attends.iter().enumerate() {
        layer_pairs(&self_attention(index), layer, &mut out);
    }
    out.push(single(DECODER_QUERIES, &names.decoder.queries));
    layer_pairs(DECODER_CROSS, &names.decoder.cross_attention, &mut out);
    out.push(single(OUTPUT_BIAS, &names.output_bias));
    out
}

/// The `PerceiverEncoder`'s parameters (the latents, the cross-attention, the latent layers).
fn encoder_pairs<'a>(encoder: &'a super::names::EncoderNames, out: &mut Vec<Pair<'a>>) {
    encoder_pairs_in(haiku_names::ENCODER, encoder, out);
}

/// [`encoder_pairs`] of the encoder named `name`.
fn encoder_pairs_in<'a>(name: &str, encoder: &'a super::names::EncoderNames, out: &mut Vec<Pair<'a>>) {
    use haiku_names::*;
    let (module, param) = latents_in(name);
    out.push(Pair::new(module, param, &encoder.latents));
    layer_pairs(&encoder_cross_in(name), &encoder.cross_attention, out);
    for (index, layer) in encoder.self_attends.iter().enumerate() {
        layer_pairs(&self_attention_in(name, index), layer, out);
    }
}

/// Every Haiku parameter of an ImageNet classifier with its transformers tensor, in the order
/// the model reads them, then its state's (the conv stem's BatchNorm statistics).
fn classifier_pairs(names: &ClassifierNames) -> (Vec<Pair<'_>>, Vec<Pair<'_>>) {
    use haiku_names::*;
    let mut params = Vec::new();
    let mut state = Vec::new();
    match &names.preprocessor {
        // Not an image model: the pairs below find the first parameter missing.
        InputNames::Text(_) | InputNames::Image(ImagePreprocessorNames::Pixels) => {}
        InputNames::Image(ImagePreprocessorNames::Conv1x1 {
            conv,
            positions,
            projection,
        }) => {
            params.push(Pair::new(CONV1X1, "w", &conv.weight));
            params.extend(conv.bias.as_ref().map(|b| Pair::new(CONV1X1, "b", b)));
            params.push(Pair::new(IMAGE_POSITIONS.0, IMAGE_POSITIONS.1, positions));
            linear_pairs(POSITIONS_PROJECTION.to_string(), projection, &mut params);
        }
        InputNames::Image(ImagePreprocessorNames::Conv { conv, batchnorm }) => {
            params.push(Pair::new(STEM_CONV, "w", &conv.weight));
            params.extend(conv.bias.as_ref().map(|b| Pair::new(STEM_CONV, "b", b)));
            params.push(Pair::channels(STEM_BATCHNORM, "scale", &batchnorm.weight));
            params.push(Pair::channels(STEM_BATCHNORM, "offset", &batchnorm.bias));
            state.push(Pair::channels(STEM_MEAN, "average", &batchnorm.running_mean));
            state.push(Pair::channels(STEM_VAR, "average", &batchnorm.running_var));
            state.push(Pair::new(STEM_MEAN, "counter", &batchnorm.num_batches_tracked));
        }
    }
    encoder_pairs(&names.encoder, &mut params);
    let decoder = &names.decoder;
    params.push(Pair::new(
        CLASSIFIER_QUERY.0,
        CLASSIFIER_QUERY.1,
        &decoder.decoder.queries,
    ));
    layer_pairs(CLASSIFIER_CROSS, &decoder.decoder.cross_attention, &mut params);
    linear_pairs(CLASSIFIER_OUTPUT.to_string(), &decoder.final_layer, &mut params);
    (params, state)
}

/// Every Haiku parameter of the video autoencoder with its transformers tensor, in the order
/// the model reads them.
fn multimodal_pairs(names: &MultimodalNames) -> Vec<Pair<'_>> {
    use haiku_names::*;
    let mut out = Vec::new();
    for m in Modality::ALL {
        let i = m as usize;
        let name = m.name();
        out.push(Pair::new(
            format!("{MULTIMODAL_PREPROCESSOR}/{name}_padding"),
            "pos_embs",
            &names.input_padding[i],
        ));
        out.push(Pair::new(
            format!("{MULTIMODAL_PREPROCESSOR}/{name}_mask_token"),
            "pos_embs",
            &names.mask[i],
        ));
    }
    encoder_pairs_in(VIDEO_ENCODER, &names.encoder, &mut out);
    // The label's `ClassificationDecoder` is built outside the multimodal decoder, only for its
    // query.
    out.push(Pair::new(
        CLASSIFIER_QUERY.0,
        CLASSIFIER_QUERY.1,
        &names.label_query,
    ));
    for m in Modality::ALL {
        out.push(Pair::new(
            format!("{MULTIMODAL_QUERY_PADDING}/{}_padding", m.name()),
            "pos_embs",
            &names.query_padding[m as usize],
        ));
    }
    layer_pairs(MULTIMODAL_CROSS, &names.cross_attention, &mut out);
    linear_pairs(MULTIMODAL_OUTPUT.to_string(), &names.final_layer, &mut out);
    for (module, head) in MULTIMODAL_HEADS.iter().zip(&names.heads) {
        linear_pairs(module.to_string(), head, &mut out);
    }
    out
}

/// Every Haiku parameter of the optical-flow model with its transformers tensor, in the order
/// the model reads them.
fn flow_pairs(names: &FlowNames) -> Vec<Pair<'_>> {
    use haiku_names::*;
    let mut out = Vec::new();
    linear_pairs(PATCHES.to_string(), &names.patch_projection, &mut out);
    encoder_pairs(&names.encoder, &mut out);
    layer_pairs(FLOW_DECODER_CROSS, &names.cross_attention, &mut out);
    linear_pairs(FLOW_OUTPUT.to_string(), &names.final_layer, &mut out);
    out
}

/// The DeepMind models this module maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MaskedLm,
    OpticalFlow,
    ImageLearned,
    ImageFourier,
    ImageConv,
    Multimodal,
}

impl Kind {
    /// Which model `params` are, by their module names.
    fn of(params: &HaikuParams) -> Option<Self> {
        use haiku_names::*;
        if params.contains_key(EMBED.0) && params.contains_key(OUTPUT_BIAS.0) {
            Some(Self::MaskedLm)
        } else if params.contains_key(PATCHES) || params.keys().any(|m| m.starts_with(FLOW_DECODER)) {
            Some(Self::OpticalFlow)
        } else if params.keys().any(|m| {
            m.starts_with(&format!("{MULTIMODAL_PREPROCESSOR}/"))
                || m.starts_with(&format!("{MULTIMODAL_DECODER}/"))
        }) {
            // Before the classifiers: the video model's label query is a ClassificationDecoder's.
            Some(Self::Multimodal)
        } else if params.keys().any(|m| m.starts_with(CLASSIFIER)) {
            // The preprocessor tells the three apart: the Fourier model's has no parameters.
            let has = |prefix: &str| params.keys().any(|m| m.starts_with(prefix));
            Some(if has(STEM) {
                Self::ImageConv
            } else if has(IMAGE_PREPROCESSOR) {
                Self::ImageLearned
            } else {
                Self::ImageFourier
            })
        } else {
            None
        }
    }

    fn architecture(self) -> Architecture {
        match self {
            Self::MaskedLm => Architecture::MaskedLm,
            Self::OpticalFlow => Architecture::OpticalFlow,
            Self::ImageLearned => Architecture::ImageClassificationLearned,
            Self::ImageFourier => Architecture::ImageClassificationFourier,
            Self::ImageConv => Architecture::ImageClassificationConvProcessing,
            Self::Multimodal => Architecture::MultimodalAutoencoding,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::MaskedLm => "the masked language model",
            Self::OpticalFlow => "the optical-flow model",
            Self::ImageLearned => "the ImageNet classifier with learned positions",
            Self::ImageFourier => "the ImageNet classifier with Fourier positions",
            Self::ImageConv => "the ImageNet classifier with a conv stem",
            Self::Multimodal => "the video autoencoder",
        }
    }

    /// Whether the model keeps Haiku state (the conv stem's BatchNorm statistics).
    fn has_state(self) -> bool {
        self == Self::ImageConv
    }
}

/// An error about the checkpoint at `source`.
fn layout(source: &Path, reason: impl Into<String>) -> Error {
    Error::DeepMindCheckpoint {
        path: source.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens a DeepMind checkpoint file as a checked transformers checkpoint: its config inferred
/// (shapes + [`language_colab`], [`flow_colab`], [`imagenet_colab`] or [`video_colab`]) unless
/// `config` names a transformers `config.json`.
pub fn open(path: &Path, config: Option<&Path>) -> Result<Checkpoint> {
    // The (small) config first: a bad one should not cost reading a large pickle.
    let config = config.map(PerceiverConfig::from_file).transpose()?;
    from_haiku(read_haiku_file(path)?, config, path)
}

/// [`open`] on parameters already read; `source` names them in errors.
pub fn from_haiku(
    checkpoint: HaikuCheckpoint,
    config: Option<PerceiverConfig>,
    source: &Path,
) -> Result<Checkpoint> {
    let HaikuCheckpoint { params, state } = checkpoint;
    let Some(kind) = Kind::of(&params) else {
        let modules: Vec<&str> = params
            .keys()
            .map(|m| m.split('/').next().unwrap_or(m))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .take(8)
            .collect();
        return Err(layout(
            source,
            format!(
                "its top-level modules ({}) are not those of DeepMind's byte-level masked language \
                 model (embed, trainable_position_encoding, perceiver_encoder, basic_decoder, \
                 embedding_decoder), of its optical-flow model (image_preprocessor, \
                 perceiver_encoder, flow_decoder), of its ImageNet classifiers ([image_preprocessor,] \
                 perceiver_encoder, classification_decoder) nor of its video autoencoder \
                 (multimodal_preprocessor, encoder, multimodal_decoder, *_postprocessor)",
                modules.join(", ")
            ),
        ));
    };
    // Only the conv stem has batch norm; the other models' `.pystate` `state` is empty.
    if !kind.has_state() {
        if let Some((module, param)) = state.as_ref().and_then(first_param) {
            return Err(layout(
                source,
                format!(
                    "unexpected state {module}/{param}: {} keeps no Haiku state",
                    kind.describe()
                ),
            ));
        }
    }
    let config = match config {
        Some(config) => {
            config.validate()?;
            let named = Architecture::of(&config)?;
            if named != kind.architecture() {
                return Err(layout(
                    source,
                    format!(
                        "the file holds {}, and the config.json named is a {}'s, not a {}'s",
                        kind.describe(),
                        named.name(),
                        kind.architecture().name()
                    ),
                ));
            }
            with_deepmind_image_defaults(config, kind)
        }
        None => match kind {
            Kind::MaskedLm => infer_masked_lm_config(&params, source)?,
            Kind::OpticalFlow => infer_flow_config(&params, source)?,
            Kind::ImageLearned | Kind::ImageFourier | Kind::ImageConv => {
                infer_image_config(&params, kind.architecture(), source)?
            }
            Kind::Multimodal => infer_multimodal_config(&params, source)?,
        },
    };
    let tensors = match kind {
        Kind::MaskedLm => masked_lm_tensors(params, &config, source)?,
        Kind::OpticalFlow => flow_tensors(params, &config, source)?,
        Kind::ImageLearned | Kind::ImageFourier | Kind::ImageConv => {
            classifier_tensors(params, state, &config, source)?
        }
        Kind::Multimodal => multimodal_tensors(params, &config, source)?,
    };
    // BatchNorm's counter is kept as a float here, and is finite too.
    for (name, param) in &tensors {
        super::weights::check_finite(name, param.data()).map_err(|reason| Error::CorruptWeights {
            path: source.to_path_buf(),
            reason,
        })?;
    }
    Checkpoint::from_params(config, tensors)
}

/// A named config.json for an ImageNet file, with what DeepMind's code fixes filled in where
/// it says nothing: the conv stem's `'SAME'` padding and (the Colab's) no query residual in the
/// learned model's decoder. transformers' config.json files never say either.
fn with_deepmind_image_defaults(mut config: PerceiverConfig, kind: Kind) -> PerceiverConfig {
    let set = |config: &mut PerceiverConfig, key: &str, value: serde_json::Value| {
        if config.extra.get(key).is_none_or(|v| v.is_null()) {
            config.extra.insert(key.to_string(), value);
        }
    };
    match kind {
        Kind::ImageConv => set(&mut config, STEM_PADDING_KEY, serde_json::json!("same")),
        Kind::ImageLearned => set(
            &mut config,
            CLASSIFIER_QUERY_RESIDUAL_KEY,
            serde_json::json!(imagenet_colab::LEARNED_DECODER_QUERY_RESIDUAL),
        ),
        _ => {}
    }
    config
}

fn first_param(params: &HaikuParams) -> Option<(&str, &str)> {
    params
        .iter()
        .find_map(|(module, p)| p.keys().next().map(|name| (module.as_str(), name.as_str())))
}

/// The config of a DeepMind masked language model: widths and counts from the parameters'
/// shapes, the rest from [`language_colab`]; `architectures` is `PerceiverForMaskedLM` and the
/// activation DeepMind's tanh GELU.
pub fn infer_masked_lm_config(params: &HaikuParams, source: &Path) -> Result<PerceiverConfig> {
    use haiku_names::*;
    let (vocab_size, d_model) = matrix(params, EMBED, source)?;
    let (max_position_embeddings, _) = matrix(params, INPUT_POSITIONS, source)?;
    let encoder = EncoderShapes::read(params, source)?;
    let base = PerceiverConfig {
        d_model,
        num_blocks: language_colab::NUM_BLOCKS,
        num_self_attention_heads: language_colab::NUM_SELF_ATTENTION_HEADS,
        num_cross_attention_heads: language_colab::NUM_CROSS_ATTENTION_HEADS,
        hidden_act: language_colab::ACTIVATION,
        use_query_residual: language_colab::USE_QUERY_RESIDUAL,
        vocab_size,
        max_position_embeddings,
        extra: serde_json::Map::from_iter([
            (
                "architectures".to_string(),
                serde_json::json!([Architecture::MaskedLm.name()]),
            ),
            ("model_type".to_string(), serde_json::json!("perceiver")),
        ]),
        ..encoder.config()
    };
    let shapes = [CrossAttentionShape::KeyValue, CrossAttentionShape::Query];
    checked(encoder.widths(base, &shapes, source)?, source)
}

/// The config of a DeepMind optical-flow model: widths and counts from the parameters' shapes,
/// the rest from [`flow_colab`] (its `TRAIN_SIZE` too: no parameter depends on it);
/// `architectures` is `PerceiverForOpticalFlow`, `d_model` the input's width (as transformers'
/// config for the released model says) and the activation DeepMind's tanh GELU.
pub fn infer_flow_config(params: &HaikuParams, source: &Path) -> Result<PerceiverConfig> {
    let encoder = EncoderShapes::read(params, source)?;
    let mut base = PerceiverConfig {
        num_blocks: flow_colab::NUM_BLOCKS,
        num_self_attention_heads: flow_colab::NUM_SELF_ATTENTION_HEADS,
        num_cross_attention_heads: flow_colab::NUM_CROSS_ATTENTION_HEADS,
        hidden_act: flow_colab::ACTIVATION,
        use_query_residual: flow_colab::USE_QUERY_RESIDUAL,
        extra: serde_json::Map::from_iter([
            (
                "architectures".to_string(),
                serde_json::json!([Architecture::OpticalFlow.name()]),
            ),
            ("model_type".to_string(), serde_json::json!("perceiver")),
            (
                "train_size".to_string(),
                serde_json::json!(flow_colab::TRAIN_SIZE),
            ),
        ]),
        ..encoder.config()
    };
    base.d_model = base.input_channels();
    // DeepMind's flow decoder always sizes its queries and keys by the latents ('kv');
    // transformers' reads the config's shape for it, so only "kv" describes the file.
    checked(
        encoder.widths(base, &[CrossAttentionShape::KeyValue], source)?,
        source,
    )
}

/// The config of one of DeepMind's ImageNet classifiers (`architecture`): widths and counts
/// from the parameters' shapes (the learned model's image size from its position table), the
/// rest from [`imagenet_colab`]; `d_model` the input's width and the activation DeepMind's tanh
/// GELU. The labels are counted from the final layer when the checkpoint is built.
pub fn infer_image_config(
    params: &HaikuParams,
    architecture: Architecture,
    source: &Path,
) -> Result<PerceiverConfig> {
    use haiku_names::*;
    let encoder = EncoderShapes::read(params, source)?;
    let mut extra = serde_json::Map::from_iter([
        (
            "architectures".to_string(),
            serde_json::json!([architecture.name()]),
        ),
        ("model_type".to_string(), serde_json::json!("perceiver")),
    ]);
    let decoder_residual = match architecture {
        Architecture::ImageClassificationLearned => {
            let (rows, _) = matrix(params, IMAGE_POSITIONS, source)?;
            let side = rows.isqrt();
            if side * side != rows {
                return Err(layout(
                    source,
                    format!(
                        "{}/{} has {rows} rows, not one per pixel of a square image",
                        IMAGE_POSITIONS.0, IMAGE_POSITIONS.1
                    ),
                ));
            }
            extra.insert("image_size".to_string(), serde_json::json!(side));
            imagenet_colab::LEARNED_DECODER_QUERY_RESIDUAL
        }
        _ => imagenet_colab::FOURIER_AND_CONV_DECODER_QUERY_RESIDUAL,
    };
    extra.insert(
        CLASSIFIER_QUERY_RESIDUAL_KEY.to_string(),
        serde_json::json!(decoder_residual),
    );
    if architecture == Architecture::ImageClassificationConvProcessing {
        extra.insert(STEM_PADDING_KEY.to_string(), serde_json::json!("same"));
    }
    let mut base = PerceiverConfig {
        num_blocks: imagenet_colab::NUM_BLOCKS,
        num_self_attention_heads: imagenet_colab::NUM_SELF_ATTENTION_HEADS,
        num_cross_attention_heads: imagenet_colab::NUM_CROSS_ATTENTION_HEADS,
        hidden_act: imagenet_colab::ACTIVATION,
        use_query_residual: imagenet_colab::USE_QUERY_RESIDUAL,
        extra,
        ..encoder.config()
    };
    base.d_model = base.input_channels();
    // The Colab's encoders size unset query/key widths by the input ('kv').
    checked(
        encoder.widths(base, &[CrossAttentionShape::KeyValue], source)?,
        source,
    )
}

/// The config of DeepMind's video autoencoder: widths and counts from the parameters' shapes
/// (the encoder's, the samples per audio patch, the labels, the decoder's output channels, the
/// label query's width), the rest from [`video_colab`]; `d_model` the input's width and the
/// activation DeepMind's tanh GELU.
pub fn infer_multimodal_config(params: &HaikuParams, source: &Path) -> Result<PerceiverConfig> {
    use haiku_names::*;
    let encoder = EncoderShapes::read_in(params, VIDEO_ENCODER, source)?;
    let outputs = |module: &str| Ok::<_, Error>(matrix(params, (module, "w"), source)?.1);
    let [audio_head, _, label_head] = MULTIMODAL_HEADS;
    let extra = serde_json::Map::from_iter([
        (
            "architectures".to_string(),
            serde_json::json!([Architecture::MultimodalAutoencoding.name()]),
        ),
        ("model_type".to_string(), serde_json::json!("perceiver")),
        (
            "num_frames".to_string(),
            serde_json::json!(video_colab::NUM_FRAMES),
        ),
        (
            "audio_samples_per_frame".to_string(),
            serde_json::json!(video_colab::AUDIO_SAMPLES_PER_FRAME),
        ),
        (
            "samples_per_patch".to_string(),
            serde_json::json!(outputs(audio_head)?),
        ),
        (
            "image_size".to_string(),
            serde_json::json!(video_colab::IMAGE_SIZE),
        ),
        (
            "output_shape".to_string(),
            serde_json::json!(video_colab::OUTPUT_SHAPE),
        ),
        (
            "output_num_channels".to_string(),
            serde_json::json!(outputs(MULTIMODAL_OUTPUT)?),
        ),
        (
            "_label_trainable_num_channels".to_string(),
            serde_json::json!(matrix(params, CLASSIFIER_QUERY, source)?.1),
        ),
        ("num_labels".to_string(), serde_json::json!(outputs(label_head)?)),
    ]);
    let mut base = PerceiverConfig {
        num_blocks: video_colab::NUM_BLOCKS,
        num_self_attention_heads: video_colab::NUM_SELF_ATTENTION_HEADS,
        num_cross_attention_heads: video_colab::NUM_CROSS_ATTENTION_HEADS,
        hidden_act: video_colab::ACTIVATION,
        use_query_residual: video_colab::USE_QUERY_RESIDUAL,
        extra,
        ..encoder.config()
    };
    base.d_model = base.input_channels();
    checked(
        encoder.widths(base, &[CrossAttentionShape::KeyValue], source)?,
        source,
    )
}

/// [`masked_lm_tensors`] for the video autoencoder (`config` a
/// `PerceiverForMultimodalAutoencoding`'s).
pub fn multimodal_tensors(
    params: HaikuParams,
    config: &PerceiverConfig,
    source: &Path,
) -> Result<BTreeMap<String, Param>> {
    config.validate()?;
    if Architecture::of(config)? != Architecture::MultimodalAutoencoding {
        return Err(Error::InvalidConfig(format!(
            "{} is not the multimodal autoencoder",
            Architecture::of(config)?.name()
        )));
    }
    let names = MultimodalNames::new(config)?;
    take_tensors(params, multimodal_pairs(&names), Kind::Multimodal, source)
}

/// The 2-D shape of `module/param`.
fn matrix(params: &HaikuParams, (module, param): (&str, &str), source: &Path) -> Result<(usize, usize)> {
    let array = params
        .get(module)
        .and_then(|p| p.get(param))
        .ok_or_else(|| layout(source, format!("{module}/{param} is missing")))?;
    match array.shape[..] {
        [rows, columns] => Ok((rows, columns)),
        _ => Err(layout(
            source,
            format!(
                "{module}/{param} has shape {:?}, expected 2 dimensions",
                array.shape
            ),
        )),
    }
}

/// What the shapes of DeepMind's `PerceiverEncoder` (the same in every model) tell.
struct EncoderShapes {
    num_latents: usize,
    d_latents: usize,
    layers: usize,
    /// The cross-attention's query/key and value widths, then the latent layers'.
    widths: (usize, usize, usize, usize),
    self_widening: usize,
    cross_widening: usize,
}

impl EncoderShapes {
    fn read(params: &HaikuParams, source: &Path) -> Result<Self> {
        Self::read_in(params, haiku_names::ENCODER, source)
    }

    /// The shapes of the encoder named `name`.
    fn read_in(params: &HaikuParams, name: &str, source: &Path) -> Result<Self> {
        use haiku_names::*;
        let outputs = |module: String| Ok::<_, Error>(matrix(params, (&module, "w"), source)?.1);
        let (latents_module, latents_param) = latents_in(name);
        let (num_latents, d_latents) = matrix(params, (&latents_module, latents_param), source)?;
        let layers = count_self_attention_layers_in(params, name);
        let first = self_attention_in(name, 0);
        if layers == 0 {
            return Err(layout(
                source,
                format!("{first} is missing: the model has no latent self-attention layer"),
            ));
        }
        let cross = encoder_cross_in(name);
        let widening = |module: String| -> Result<usize> {
            let hidden = outputs(module.clone())?;
            if d_latents == 0 || hidden % d_latents != 0 {
                return Err(layout(
                    source,
                    format!("{module}/w widens {d_latents} channels to {hidden}, not a whole multiple"),
                ));
            }
            Ok(hidden / d_latents)
        };
        Ok(Self {
            num_latents,
            d_latents,
            layers,
            widths: (
                outputs(format!("{cross}/attention/linear"))?,
                outputs(format!("{cross}/attention/linear_2"))?,
                outputs(format!("{first}/attention/linear"))?,
                outputs(format!("{first}/attention/linear_2"))?,
            ),
            self_widening: widening(format!("{first}/mlp/linear"))?,
            cross_widening: widening(format!("{cross}/mlp/linear"))?,
        })
    }

    /// The defaults with the encoder's counts.
    fn config(&self) -> PerceiverConfig {
        PerceiverConfig {
            num_latents: self.num_latents,
            d_latents: self.d_latents,
            num_self_attends_per_block: self.layers,
            self_attention_widening_factor: self.self_widening,
            cross_attention_widening_factor: self.cross_widening,
            ..PerceiverConfig::default()
        }
    }

    /// `base` with the attention widths found. transformers has one qk_channels / v_channels
    /// for the encoder's cross-attention and its latent layers, each resolved from the other
    /// widths when unset (DeepMind's encoder passes its own two values to both, resolved the
    /// same way): the first setting (among `shapes`) that reproduces the four widths found.
    fn widths(
        &self,
        base: PerceiverConfig,
        shapes: &[CrossAttentionShape],
        source: &Path,
    ) -> Result<PerceiverConfig> {
        let (cross_qk, cross_v, self_qk, self_v) = self.widths;
        let mut candidates = Vec::new();
        for qk in [Some(cross_qk), None] {
            for v in [Some(cross_v), None] {
                for &shape in shapes {
                    candidates.push((qk, v, shape));
                }
            }
        }
        candidates
            .into_iter()
            .map(|(qk_channels, v_channels, shape)| PerceiverConfig {
                qk_channels,
                v_channels,
                cross_attention_shape_for_attention: shape,
                ..base.clone()
            })
            .find(|c| {
                let (cross, latent) = (c.encoder_cross_attention_spec(), c.self_attention_spec());
                (
                    cross.qk_channels,
                    cross.v_channels,
                    latent.qk_channels,
                    latent.v_channels,
                ) == self.widths
            })
            .ok_or_else(|| {
                layout(
                    source,
                    format!(
                        "the encoder's widths (cross-attention query/key {cross_qk}, value {cross_v}; \
                         latent self-attention query/key {self_qk}, value {self_v}) cannot be written \
                         as one transformers config (qk_channels, v_channels)"
                    ),
                )
            })
    }
}

/// `config` validated; an invalid one asks for the model's config.json.
fn checked(config: PerceiverConfig, source: &Path) -> Result<PerceiverConfig> {
    config.validate().map_err(|e| match e {
        e @ (Error::InvalidConfig(_) | Error::ConfigOutOfRange { .. }) => layout(
            source,
            format!(
                "the config DeepMind's Colab implies for these shapes is not valid ({e}); name the \
                 model's transformers config.json"
            ),
        ),
        other => other,
    })?;
    Ok(config)
}

/// Latent layers named in the parameters: one more than the highest index of a
/// `perceiver_encoder/~/self_attention[_i]` module (a gap shows later as a missing layer).
#[cfg(test)]
fn count_self_attention_layers(params: &HaikuParams) -> usize {
    count_self_attention_layers_in(params, haiku_names::ENCODER)
}

/// The latent layers named in the parameters of the encoder named `name` (see
/// `count_self_attention_layers`, the tests' name for the usual encoder).
fn count_self_attention_layers_in(params: &HaikuParams, name: &str) -> usize {
    let prefix = format!("{name}/~/self_attention");
    let mut count = 0;
    for module in params.keys() {
        let Some(rest) = module.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let index = if rest.starts_with('/') {
            Some(0)
        } else {
            rest.strip_prefix('_')
                .and_then(|r| r.split('/').next())
                .and_then(|n| n.parse::<usize>().ok())
        };
        if let Some(index) = index {
            // A name with an absurd index must not become an absurd count: no more layers
            // than modules can be present, and one more than that is already a missing layer.
            count = count.max(index.saturating_add(1).min(params.len() + 1));
        }
    }
    count
}

/// The masked language model's tensors under transformers' names, laid out as transformers
/// lays them out, for `config` (validated): the first missing parameter (in model order) or
/// mis-shaped one is the error, then any parameter the model has no place for, each named as
/// DeepMind's file names it.
pub fn masked_lm_tensors(
    params: HaikuParams,
    config: &PerceiverConfig,
    source: &Path,
) -> Result<BTreeMap<String, Param>> {
    config.validate()?;
    let names = MaskedLmNames::new(config);
    take_tensors(params, masked_lm_pairs(&names), Kind::MaskedLm, source)
}

/// [`masked_lm_tensors`] for the optical-flow model (`config` a `PerceiverForOpticalFlow`'s).
pub fn flow_tensors(
    params: HaikuParams,
    config: &PerceiverConfig,
    source: &Path,
) -> Result<BTreeMap<String, Param>> {
    config.validate()?;
    if Architecture::of(config)? != Architecture::OpticalFlow {
        return Err(Error::InvalidConfig(format!(
            "{} is not the optical-flow model",
            Architecture::of(config)?.name()
        )));
    }
    let names = FlowNames::new(config);
    take_tensors(params, flow_pairs(&names), Kind::OpticalFlow, source)
}

/// [`masked_lm_tensors`] for an ImageNet classifier (`config` one of the three
/// `PerceiverForImageClassification*`), its `state` the conv stem's BatchNorm statistics
/// (the moving averages' `average`; their `hidden` values and the variance's counter are not
/// read, the mean's counter becomes `num_batches_tracked`).
pub fn classifier_tensors(
    params: HaikuParams,
    state: Option<HaikuParams>,
    config: &PerceiverConfig,
    source: &Path,
) -> Result<BTreeMap<String, Param>> {
    use haiku_names::*;
    config.validate()?;
    let architecture = Architecture::of(config)?;
    let kind = match architecture {
        Architecture::ImageClassificationLearned => Kind::ImageLearned,
        Architecture::ImageClassificationFourier => Kind::ImageFourier,
        Architecture::ImageClassificationConvProcessing => Kind::ImageConv,
        other => {
            return Err(Error::InvalidConfig(format!(
                "{} is not an ImageNet classifier",
                other.name()
            )))
        }
    };
    // The labels are the final layer's outputs (a named config.json's are checked later).
    let labels = match config.num_labels()? {
        Some(labels) => labels,
        None => matrix(&params, (CLASSIFIER_OUTPUT, "w"), source)?.1,
    };
    let names = ClassifierNames::new(config, labels);
    let (param_pairs, state_pairs) = classifier_pairs(&names);
    let mut tensors = take_tensors(params, param_pairs, kind, source)?;
    if !state_pairs.is_empty() {
        let mut state = state.ok_or_else(|| {
            layout(
                source,
                format!(
                    "it has no state: {} needs its BatchNorm statistics ({STEM_MEAN}, {STEM_VAR}), \
                     which a .pystate keeps beside its params",
                    kind.describe()
                ),
            )
        })?;
        // What the moving averages keep and inference does not read.
        for (module, param) in [(STEM_MEAN, "hidden"), (STEM_VAR, "hidden"), (STEM_VAR, "counter")] {
            if let Some(p) = state.get_mut(module) {
                p.remove(param);
            }
        }
        state.retain(|_, p| !p.is_empty());
        tensors.extend(take_tensors(state, state_pairs, kind, source)?);
    }
    Ok(tensors)
}

/// Each pair's parameter, taken out of `params` and laid out as transformers' tensor; then
/// any parameter left over is an error.
fn take_tensors(
    mut params: HaikuParams,
    pairs: Vec<Pair<'_>>,
    kind: Kind,
    source: &Path,
) -> Result<BTreeMap<String, Param>> {
    let mut tensors = BTreeMap::new();
    for pair in pairs {
        let array = params
            .get_mut(&pair.module)
            .and_then(|p| p.remove(pair.param))
            .ok_or_else(|| {
                layout(
                    source,
                    format!(
                        "{} is missing (transformers' {})",
                        pair.haiku_name(),
                        pair.tensor.name
                    ),
                )
            })?;
        let param = to_transformers(array, &pair).map_err(|found| {
            layout(
                source,
                format!(
                    "{} has shape {found:?}, expected {:?} for transformers' {} {:?}",
                    pair.haiku_name(),
                    pair.haiku_shape(),
                    pair.tensor.name,
                    pair.tensor.shape,
                ),
            )
        })?;
        tensors.insert(pair.tensor.name.clone(), param);
    }
    if let Some((module, param)) = first_param(&params) {
        return Err(layout(
            source,
            format!(
                "unexpected {module}/{param}: {} this config describes has no place for it",
                kind.describe()
            ),
        ));
    }
    Ok(tensors)
}

/// The shape Haiku stores `tensor` in: a Linear's matrix is `[in, out]`, a convolution's
/// kernel `[kh, kw, in, out]` (transformers' `[out, in, kh, kw]`).
fn haiku_shape(tensor: &TensorName) -> Vec<usize> {
    match (tensor.role, &tensor.shape[..]) {
        (Role::LinearWeight, [outputs, inputs]) => vec![*inputs, *outputs],
        (Role::ConvWeight, [outputs, inputs, kh, kw]) => vec![*kh, *kw, *inputs, *outputs],
        _ => tensor.shape.clone(),
    }
}

/// The array in transformers' layout, or its shape when it is not the one the pair needs.
fn to_transformers(array: NdArray, pair: &Pair<'_>) -> std::result::Result<Param, Vec<usize>> {
    let tensor = pair.tensor;
    if array.shape != pair.haiku_shape() || array.data.len() != array.shape.iter().product::<usize>() {
        return Err(array.shape);
    }
    let data = match (pair.layout, tensor.role, &array.shape[..]) {
        (Layout::ByRole, Role::LinearWeight, &[inputs, outputs]) => {
            let mut transposed = vec![0f32; array.data.len()];
            for (i, row) in array.data.chunks_exact(outputs).enumerate() {
                for (o, &value) in row.iter().enumerate() {
                    transposed[o * inputs + i] = value;
                }
            }
            transposed
        }
        (Layout::ByRole, Role::ConvWeight, &[kh, kw, inputs, outputs]) => {
            // [kh, kw, in, out] → [out, in, kh, kw].
            let mut out = vec![0f32; array.data.len()];
            for (at, &value) in array.data.iter().enumerate() {
                let o = at % outputs;
                let i = (at / outputs) % inputs;
                let x = (at / (outputs * inputs)) % kw;
                let y = at / (outputs * inputs * kw);
                out[((o * inputs + i) * kh + y) * kw + x] = value;
            }
            out
        }
        _ => array.data,
    };
    Param::owned(data, tensor.shape.clone()).map_err(|_| tensor.shape.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Activation;

    fn tiny_config() -> PerceiverConfig {
        PerceiverConfig {
            num_latents: 4,
            d_latents: 16,
            d_model: 8,
            num_self_attends_per_block: 2,
            qk_channels: Some(8),
            v_channels: Some(16),
            max_position_embeddings: 6,
            ..PerceiverConfig::default()
        }
    }

    /// The Haiku params of `config`'s masked LM, every value its index in the tensor, so that
    /// a transposition or a swapped name shows.
    fn haiku_params(config: &PerceiverConfig) -> HaikuParams {
        let names = MaskedLmNames::new(config);
        let mut params = HaikuParams::new();
        for pair in masked_lm_pairs(&names) {
            let shape = haiku_shape(pair.tensor);
            let count: usize = shape.iter().product();
            let data = (0..count).map(|i| i as f32).collect();
            params
                .entry(pair.module.clone())
                .or_default()
                .insert(pair.param.to_string(), NdArray { shape, data });
        }
        params
    }

    fn source() -> &'static Path {
        Path::new("test.pickle")
    }

    fn reason_of(e: Error) -> String {
        match e {
            Error::DeepMindCheckpoint { reason, .. } => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_config_is_read_from_the_shapes_and_the_colab() {
        let params = haiku_params(&tiny_config());
        let config = infer_masked_lm_config(&params, source()).unwrap();
        assert_eq!((config.num_latents, config.d_latents, config.d_model), (4, 16, 8));
        assert_eq!(config.num_self_attends_per_block, 2);
        assert_eq!((config.qk_channels, config.v_channels), (Some(8), Some(16)));
        assert_eq!(config.max_position_embeddings, 6);
        assert_eq!(config.vocab_size, 262);
        assert_eq!(
            config.num_self_attention_heads,
            language_colab::NUM_SELF_ATTENTION_HEADS
        );
        assert_eq!(config.num_blocks, 1);
        assert_eq!(config.hidden_act, Activation::GeluTanh);
        assert_eq!(Architecture::of(&config).unwrap(), Architecture::MaskedLm);
    }

    #[test]
    fn unset_widths_are_found_as_unset() {
        let config = PerceiverConfig {
            qk_channels: None,
            v_channels: None,
            self_attention_widening_factor: 3,
            cross_attention_widening_factor: 2,
            ..tiny_config()
        };
        let found = infer_masked_lm_config(&haiku_params(&config), source()).unwrap();
        assert_eq!((found.qk_channels, found.v_channels), (None, None));
        let (want, got) = (
            config.encoder_cross_attention_spec(),
            found.encoder_cross_attention_spec(),
        );
        assert_eq!(
            (got.qk_channels, got.v_channels),
            (want.qk_channels, want.v_channels)
        );
        assert_eq!(
            (
                found.self_attention_widening_factor,
                found.cross_attention_widening_factor
            ),
            (3, 2)
        );
    }

    #[test]
    fn linear_weights_are_transposed_and_names_follow_transformers() {
        let config = tiny_config();
        let params = haiku_params(&config);
        let inferred = infer_masked_lm_config(&params, source()).unwrap();
        let checkpoint = from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap();
        assert_eq!(checkpoint.config(), &inferred);
        // query: Haiku [in 16, out 8] holds i*8 + o at (i, o); transformers [8, 16] at (o, i).
        let query = checkpoint
            .get("perceiver.encoder.self_attends.1.attention.self.query.weight")
            .unwrap();
        assert_eq!(query.shape(), &[8, 16]);
        assert_eq!(query.data()[3 * 16 + 5], (5 * 8 + 3) as f32);
        let embeddings = checkpoint
            .get("perceiver.input_preprocessor.embeddings.weight")
            .unwrap();
        assert_eq!(embeddings.shape(), &[262, 8]);
        assert_eq!(embeddings.data()[9], 9.0);
    }

    #[test]
    fn a_missing_parameter_is_named_as_deepmind_names_it() {
        let mut params = haiku_params(&tiny_config());
        params
            .get_mut("perceiver_encoder/~/self_attention_1/mlp/linear_1")
            .unwrap()
            .remove("b");
        let e = from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap_err();
        let reason = reason_of(e);
        assert!(
            reason.contains("perceiver_encoder/~/self_attention_1/mlp/linear_1/b is missing"),
            "{reason}"
        );
        assert!(
            reason.contains("perceiver.encoder.self_attends.1.mlp.dense2.bias"),
            "{reason}"
        );
    }

    #[test]
    fn a_missing_layer_in_the_middle_is_named() {
        let mut params = haiku_params(&PerceiverConfig {
            num_self_attends_per_block: 3,
            ..tiny_config()
        });
        params.retain(|module, _| !module.starts_with("perceiver_encoder/~/self_attention_1/"));
        let reason =
            reason_of(from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap_err());
        assert!(
            reason.contains("perceiver_encoder/~/self_attention_1/layer_norm/scale is missing"),
            "{reason}"
        );
    }

    #[test]
    fn an_unexpected_parameter_is_named() {
        let mut params = haiku_params(&tiny_config());
        params.entry("basic_decoder/output".into()).or_default().insert(
            "w".into(),
            NdArray {
                shape: vec![8, 16],
                data: vec![0.0; 128],
            },
        );
        let reason =
            reason_of(from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap_err());
        assert!(reason.contains("unexpected basic_decoder/output/w"), "{reason}");
    }

    #[test]
    fn a_wrong_shape_is_named_with_both_layouts() {
        let mut params = haiku_params(&tiny_config());
        let decoder_query = params
            .get_mut("basic_decoder/cross_attention/attention/linear")
            .unwrap()
            .get_mut("w")
            .unwrap();
        // A decoder with 128 query/key channels: transformers' masked LM hard-codes 256.
        *decoder_query = NdArray {
            shape: vec![8, 128],
            data: vec![0.0; 8 * 128],
        };
        let reason =
            reason_of(from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap_err());
        assert!(
            reason.contains(
                "basic_decoder/cross_attention/attention/linear/w has shape [8, 128], expected [8, 256]"
            ),
            "{reason}"
        );
    }

    #[test]
    fn a_named_config_decides_what_shapes_cannot_tell() {
        let config = PerceiverConfig {
            num_self_attention_heads: 2,
            num_cross_attention_heads: 1,
            num_blocks: 3,
            use_query_residual: false,
            ..tiny_config()
        };
        let params = haiku_params(&config);
        let checkpoint = from_haiku(
            HaikuCheckpoint {
                params: params.clone(),
                state: None,
            },
            Some(config.clone()),
            source(),
        )
        .unwrap();
        assert_eq!(checkpoint.config(), &config);
        // A config whose shapes disagree with the file is refused, naming the parameter.
        let wrong = PerceiverConfig {
            d_latents: 32,
            v_channels: Some(32),
            ..config
        };
        let reason = reason_of(
            from_haiku(HaikuCheckpoint { params, state: None }, Some(wrong), source()).unwrap_err(),
        );
        assert!(
            reason.contains("perceiver_encoder/~/trainable_position_encoding/pos_embs has shape [4, 16]"),
            "{reason}"
        );
    }

    #[test]
    fn other_models_and_state_are_refused() {
        let mut params = HaikuParams::new();
        params.entry("audio_decoder/~/output".into()).or_default();
        params.entry("some_preprocessor/~/conv2_d".into()).or_default();
        let reason =
            reason_of(from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap_err());
        assert!(reason.contains("audio_decoder, some_preprocessor"), "{reason}");

        let params = haiku_params(&tiny_config());
        let mut state = HaikuParams::new();
        state.entry("counter".into()).or_default().insert(
            "count".into(),
            NdArray {
                shape: vec![],
                data: vec![0.0],
            },
        );
        let reason = reason_of(
            from_haiku(
                HaikuCheckpoint {
                    params,
                    state: Some(state),
                },
                None,
                source(),
            )
            .unwrap_err(),
        );
        assert!(reason.contains("unexpected state counter/count"), "{reason}");
    }

    #[test]
    fn heads_that_do_not_divide_the_widths_ask_for_a_config() {
        // 12 query/key channels cannot be split into the Colab's 8 heads.
        let config = PerceiverConfig {
            qk_channels: Some(12),
            num_self_attention_heads: 4,
            num_cross_attention_heads: 4,
            ..tiny_config()
        };
        let params = haiku_params(&config);
        let reason = reason_of(infer_masked_lm_config(&params, source()).unwrap_err());
        assert!(
            reason.contains("name the model's transformers config.json"),
            "{reason}"
        );
        assert!(from_haiku(HaikuCheckpoint { params, state: None }, Some(config), source()).is_ok());
    }

    /// A Haiku kernel `[kh, kw, in, out]` becomes PyTorch's `[out, in, kh, kw]`, and a
    /// BatchNorm's `[1, 1, 1, c]` array its `[c]` one: every value its Haiku index, so that a
    /// wrong axis shows.
    #[test]
    fn conv_kernels_and_batchnorm_arrays_take_pytorchs_layout() {
        let kernel = TensorName {
            name: "conv.weight".into(),
            shape: vec![4, 3, 2, 5],
            role: Role::ConvWeight,
        };
        let pair = Pair::new("image_preprocessor/~/conv2_d", "w", &kernel);
        assert_eq!(pair.haiku_shape(), vec![2, 5, 3, 4]);
        let data: Vec<f32> = (0..120).map(|i| i as f32).collect();
        let param = to_transformers(
            NdArray {
                shape: vec![2, 5, 3, 4],
                data,
            },
            &pair,
        )
        .unwrap();
        assert_eq!(param.shape(), &[4, 3, 2, 5]);
        for (o, i, y, x) in [(0, 0, 0, 0), (3, 2, 1, 4), (1, 2, 0, 3), (2, 0, 1, 1)] {
            let haiku = ((y * 5 + x) * 3 + i) * 4 + o;
            assert_eq!(param.data()[((o * 3 + i) * 2 + y) * 5 + x], haiku as f32);
        }
        let scale = TensorName {
            name: "bn.weight".into(),
            shape: vec![6],
            role: Role::NormWeight,
        };
        let pair = Pair::channels("batchnorm", "scale", &scale);
        let wrong = NdArray {
            shape: vec![6],
            data: vec![0.0; 6],
        };
        assert_eq!(to_transformers(wrong, &pair).unwrap_err(), vec![6]);
        let right = NdArray {
            shape: vec![1, 1, 1, 6],
            data: (0..6).map(|i| i as f32).collect(),
        };
        assert_eq!(to_transformers(right, &pair).unwrap().data()[5], 5.0);
    }

    #[test]
    fn absurd_layer_indices_stay_bounded() {
        let mut params = haiku_params(&tiny_config());
        params
            .entry("perceiver_encoder/~/self_attention_18446744073709551615/x".into())
            .or_default();
        assert!(count_self_attention_layers(&params) <= params.len() + 1);
    }

    fn tiny_flow_config() -> PerceiverConfig {
        PerceiverConfig::from_json_str(
            r#"{"architectures": ["PerceiverForOpticalFlow"], "num_latents": 4, "d_latents": 16,
                "num_self_attends_per_block": 2, "qk_channels": 16, "train_size": [24, 32],
                "num_self_attention_heads": 2, "num_cross_attention_heads": 2,
                "self_attention_widening_factor": 2}"#,
        )
        .unwrap()
    }

    /// The Haiku params of `config`'s flow model, every value its index in the tensor.
    fn flow_haiku_params(config: &PerceiverConfig) -> HaikuParams {
        let names = FlowNames::new(config);
        let mut params = HaikuParams::new();
        for pair in flow_pairs(&names) {
            let shape = haiku_shape(pair.tensor);
            let count: usize = shape.iter().product();
            let data = (0..count).map(|i| i as f32).collect();
            params
                .entry(pair.module.clone())
                .or_default()
                .insert(pair.param.to_string(), NdArray { shape, data });
        }
        params
    }

    #[test]
    fn a_flow_config_is_read_from_the_shapes_and_the_flow_colab() {
        let params = flow_haiku_params(&tiny_flow_config());
        let config = infer_flow_config(&params, source()).unwrap();
        assert_eq!(Architecture::of(&config).unwrap(), Architecture::OpticalFlow);
        assert_eq!((config.num_latents, config.d_latents), (4, 16));
        assert_eq!(config.num_self_attends_per_block, 2);
        assert_eq!(config.self_attention_widening_factor, 2);
        assert_eq!(config.cross_attention_widening_factor, 1);
        let cross = config.encoder_cross_attention_spec();
        assert_eq!((cross.qk_channels, cross.v_channels, cross.kv_dim), (16, 16, 322));
        assert_eq!(
            (
                config.num_self_attention_heads,
                config.num_cross_attention_heads,
                config.num_blocks,
                config.use_query_residual
            ),
            (16, 1, 1, true)
        );
        // No parameter depends on the tile size: the Colab's.
        assert_eq!(config.train_size().unwrap(), flow_colab::TRAIN_SIZE);
        assert_eq!(config.d_model, 322);
        assert_eq!(config.hidden_act, Activation::GeluTanh);
        assert_eq!(
            config.cross_attention_shape_for_attention,
            CrossAttentionShape::KeyValue
        );
    }

    #[test]
    fn flow_weights_are_transposed_and_named_as_transformers() {
        let config = tiny_flow_config();
        let params = flow_haiku_params(&config);
        // A `.pystate` of `{"params", "state"}` with an empty state reads as bare params.
        let checkpoint = from_haiku(
            HaikuCheckpoint {
                params,
                state: Some(HaikuParams::new()),
            },
            Some(config),
            source(),
        )
        .unwrap();
        // patches_linear: Haiku [54, 64] holds i*64 + o at (i, o); transformers [64, 54].
        let patches = checkpoint
            .get("perceiver.input_preprocessor.conv_after_patches.weight")
            .unwrap();
        assert_eq!(patches.shape(), &[64, 54]);
        assert_eq!(patches.data()[7 * 54 + 11], (11 * 64 + 7) as f32);
        let output = checkpoint
            .get("perceiver.decoder.decoder.final_layer.weight")
            .unwrap();
        assert_eq!(output.shape(), &[2, 322]);
        assert_eq!(output.data()[322 + 5], (5 * 2 + 1) as f32);
        let dense = checkpoint
            .get("perceiver.decoder.decoder.decoding_cross_attention.mlp.dense2.bias")
            .unwrap();
        assert_eq!(dense.shape(), &[322]);
    }

    #[test]
    fn flow_params_missing_or_extra_are_named() {
        let mut params = flow_haiku_params(&tiny_flow_config());
        params
            .get_mut("flow_decoder/~/basic_decoder/cross_attention/layer_norm_2")
            .unwrap()
            .remove("offset");
        let reason = reason_of(
            from_haiku(
                HaikuCheckpoint { params, state: None },
                Some(tiny_flow_config()),
                source(),
            )
            .unwrap_err(),
        );
        assert!(
            reason.contains("flow_decoder/~/basic_decoder/cross_attention/layer_norm_2/offset is missing"),
            "{reason}"
        );
        assert!(
            reason.contains("perceiver.decoder.decoder.decoding_cross_attention.layernorm.bias"),
            "{reason}"
        );

        let mut params = flow_haiku_params(&tiny_flow_config());
        params
            .entry("image_preprocessor/~_build_network_inputs/linear".into())
            .or_default()
            .insert(
                "w".into(),
                NdArray {
                    shape: vec![258, 258],
                    data: vec![0.0; 258 * 258],
                },
            );
        let reason =
            reason_of(from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap_err());
        assert!(
            reason.contains("unexpected image_preprocessor/~_build_network_inputs/linear/w")
                && reason.contains("optical-flow model"),
            "{reason}"
        );
    }

    #[test]
    fn a_flow_file_with_another_models_config_is_refused() {
        let params = flow_haiku_params(&tiny_flow_config());
        let reason = reason_of(
            from_haiku(
                HaikuCheckpoint { params, state: None },
                Some(tiny_config()),
                source(),
            )
            .unwrap_err(),
        );
        assert!(
            reason.contains("optical-flow model") && reason.contains("PerceiverForMaskedLM"),
            "{reason}"
        );
    }

    #[test]
    fn flow_patches_of_another_width_are_refused_by_name() {
        // A model whose patches are projected to 32 channels, not transformers' fixed 64.
        let mut params = flow_haiku_params(&tiny_flow_config());
        *params
            .get_mut("image_preprocessor/patches_linear")
            .unwrap()
            .get_mut("w")
            .unwrap() = NdArray {
            shape: vec![54, 32],
            data: vec![0.0; 54 * 32],
        };
        let reason =
            reason_of(from_haiku(HaikuCheckpoint { params, state: None }, None, source()).unwrap_err());
        assert!(
            reason.contains("image_preprocessor/patches_linear/w has shape [54, 32], expected [54, 64]"),
            "{reason}"
        );
    }
}
