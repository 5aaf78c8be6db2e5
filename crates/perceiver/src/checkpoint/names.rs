//! The one tree of checkpoint tensor names: every tensor of a model, under transformers' name,
//! with its shape (from the config) and its role.
//!
//! The inference parts read their weights through it, the differentiable model in
//! `perceiver-train` builds its variables from it, initialisation picks each tensor's
//! distribution by its [`Role`], and the optimiser decides weight decay by the same role. A name
//! is spelled here and nowhere else.
//!
//! The tree mirrors transformers' module tree (`modeling_perceiver.py`): `perceiver.` holds the
//! input preprocessor, the latents, the encoder and the decoder; the task head's own tensors sit
//! beside it (`embedding_decoder.bias` for the masked LM).

use crate::config::{
    Architecture, AttentionSpec, ImageInputSpec, PerceiverConfig, FLOW_FEATURES, FLOW_PATCH_CHANNELS,
    IMAGE_CHANNELS,
};
use crate::error::Result;

/// What a tensor is for: initialisation and weight decay are chosen by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The `[out, in]` matrix of a dense layer.
    LinearWeight,
    /// The bias of a dense layer (or of a tied output projection).
    LinearBias,
    /// A LayerNorm's scale.
    NormWeight,
    /// A LayerNorm's shift.
    NormBias,
    /// A token embedding table, `[vocab, channels]`.
    Embedding,
    /// A trainable position table, `[positions, channels]`.
    PositionTable,
    /// The learned latent array, `[num_latents, d_latents]`.
    Latents,
    /// A convolution kernel, `[out, in, height, width]`.
    ConvWeight,
    /// A BatchNorm running mean or variance: statistics, not trained by gradients.
    NormStatistic,
    /// BatchNorm's count of batches seen (an integer PyTorch keeps; never read).
    Counter,
}

/// One tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorName {
    /// transformers' state-dict key.
    pub name: String,
    /// The shape the config implies.
    pub shape: Vec<usize>,
    /// What the tensor is for.
    pub role: Role,
}

impl TensorName {
    fn new(name: String, shape: Vec<usize>, role: Role) -> Self {
        Self { name, shape, role }
    }
}

/// A dense layer `x·Wᵀ + b` (transformers' `nn.Linear`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearNames {
    /// `[out, in]`.
    pub weight: TensorName,
    /// `[out]`.
    pub bias: TensorName,
}

impl LinearNames {
    fn new(prefix: &str, inputs: usize, outputs: usize) -> Self {
        Self {
            weight: TensorName::new(
                format!("{prefix}.weight"),
                vec![outputs, inputs],
                Role::LinearWeight,
            ),
            bias: TensorName::new(format!("{prefix}.bias"), vec![outputs], Role::LinearBias),
        }
    }
}

/// A LayerNorm (transformers' `nn.LayerNorm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormNames {
    /// `[width]`.
    pub weight: TensorName,
    /// `[width]`.
    pub bias: TensorName,
}

impl NormNames {
    fn new(prefix: &str, width: usize) -> Self {
        Self {
            weight: TensorName::new(format!("{prefix}.weight"), vec![width], Role::NormWeight),
            bias: TensorName::new(format!("{prefix}.bias"), vec![width], Role::NormBias),
        }
    }
}

/// One attention + MLP layer (transformers' `PerceiverLayer`): cross-attention when `kv_norm`
/// is present, self-attention otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerNames {
    /// The widths the names' shapes come from.
    pub spec: AttentionSpec,
    /// LayerNorm of the queries' input (`attention.self.layernorm1`).
    pub q_norm: NormNames,
    /// Cross-attention only: LayerNorm of the keys'/values' input (`attention.self.layernorm2`).
    pub kv_norm: Option<NormNames>,
    /// `q_dim → qk_channels`.
    pub query: LinearNames,
    /// `kv_dim → qk_channels`.
    pub key: LinearNames,
    /// `kv_dim → v_channels`.
    pub value: LinearNames,
    /// `v_channels → q_dim` (`attention.output.dense`).
    pub output: LinearNames,
    /// LayerNorm before the MLP (`layernorm`).
    pub mlp_norm: NormNames,
    /// `q_dim → widening_factor·q_dim`.
    pub dense1: LinearNames,
    /// `widening_factor·q_dim → q_dim`.
    pub dense2: LinearNames,
}

impl LayerNames {
    /// The layer at `prefix` with the widths of `spec`.
    pub fn new(prefix: &str, spec: AttentionSpec, is_cross: bool) -> Self {
        let inner = format!("{prefix}.attention.self");
        let hidden = spec.widening_factor * spec.q_dim;
        Self {
            spec,
            q_norm: NormNames::new(&format!("{inner}.layernorm1"), spec.q_dim),
            kv_norm: is_cross.then(|| NormNames::new(&format!("{inner}.layernorm2"), spec.kv_dim)),
            query: LinearNames::new(&format!("{inner}.query"), spec.q_dim, spec.qk_channels),
            key: LinearNames::new(&format!("{inner}.key"), spec.kv_dim, spec.qk_channels),
            value: LinearNames::new(&format!("{inner}.value"), spec.kv_dim, spec.v_channels),
            output: LinearNames::new(
                &format!("{prefix}.attention.output.dense"),
                spec.v_channels,
                spec.q_dim,
            ),
            mlp_norm: NormNames::new(&format!("{prefix}.layernorm"), spec.q_dim),
            dense1: LinearNames::new(&format!("{prefix}.mlp.dense1"), spec.q_dim, hidden),
            dense2: LinearNames::new(&format!("{prefix}.mlp.dense2"), hidden, spec.q_dim),
        }
    }

    /// Every tensor of the layer, in the order transformers registers them.
    pub fn tensors(&self) -> Vec<&TensorName> {
        fn linear(l: &LinearNames) -> [&TensorName; 2] {
            [&l.weight, &l.bias]
        }
        let mut all: Vec<&TensorName> = vec![&self.q_norm.weight, &self.q_norm.bias];
        if let Some(kv) = &self.kv_norm {
            all.extend([&kv.weight, &kv.bias]);
        }
        for l in [&self.query, &self.key, &self.value, &self.output] {
            all.extend(linear(l));
        }
        all.extend([&self.mlp_norm.weight, &self.mlp_norm.bias]);
        all.extend(linear(&self.dense1));
        all.extend(linear(&self.dense2));
        all
    }
}

/// The byte preprocessor (transformers' `PerceiverTextPreprocessor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPreprocessorNames {
    /// `[vocab_size, d_model]`.
    pub embeddings: TensorName,
    /// `[max_position_embeddings, d_model]`, added to the embeddings.
    pub positions: TensorName,
}

/// A 2-D convolution (PyTorch's `nn.Conv2d`): `[out, in, k, k]` kernel, optional bias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvNames {
    /// `[out, in, k, k]`.
    pub weight: TensorName,
    /// `[out]`, when the convolution has one.
    pub bias: Option<TensorName>,
}

impl ConvNames {
    fn new(prefix: &str, inputs: usize, outputs: usize, kernel: usize, bias: bool) -> Self {
        Self {
            weight: TensorName::new(
                format!("{prefix}.weight"),
                vec![outputs, inputs, kernel, kernel],
                Role::ConvWeight,
            ),
            bias: bias.then(|| TensorName::new(format!("{prefix}.bias"), vec![outputs], Role::LinearBias)),
        }
    }
}

/// A BatchNorm over channels (PyTorch's `nn.BatchNorm2d`), read in its inference form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchNormNames {
    /// `[channels]` scale.
    pub weight: TensorName,
    /// `[channels]` shift.
    pub bias: TensorName,
    /// `[channels]`.
    pub running_mean: TensorName,
    /// `[channels]`.
    pub running_var: TensorName,
    /// `[]`, an integer: listed so that a checkpoint holding it is complete; never read.
    pub num_batches_tracked: TensorName,
}

impl BatchNormNames {
    fn new(prefix: &str, channels: usize) -> Self {
        let t =
            |name: &str, shape: Vec<usize>, role| TensorName::new(format!("{prefix}.{name}"), shape, role);
        Self {
            weight: t("weight", vec![channels], Role::NormWeight),
            bias: t("bias", vec![channels], Role::NormBias),
            running_mean: t("running_mean", vec![channels], Role::NormStatistic),
            running_var: t("running_var", vec![channels], Role::NormStatistic),
            num_batches_tracked: t("num_batches_tracked", vec![], Role::Counter),
        }
    }
}

/// The image preprocessors (transformers' `PerceiverImagePreprocessor` as each ImageNet class
/// builds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagePreprocessorNames {
    /// 1×1 convolution + trainable positions, projected.
    Conv1x1 {
        /// `convnet_1x1`: 3 → channels.
        conv: ConvNames,
        /// `[image_size², channels]`.
        positions: TensorName,
        /// `positions_projection`: channels → channels.
        projection: LinearNames,
    },
    /// Raw pixels: no tensors.
    Pixels,
    /// The convolutional stem (`convnet.conv`, `convnet.batchnorm`).
    Conv {
        /// 7×7, stride 2, no bias.
        conv: ConvNames,
        /// After the convolution.
        batchnorm: BatchNormNames,
    },
}

impl ImagePreprocessorNames {
    fn new(prefix: &str, input: ImageInputSpec, image_size: usize) -> Self {
        match input {
            ImageInputSpec::Conv1x1 { channels } => Self::Conv1x1 {
                conv: ConvNames::new(
                    &format!("{prefix}.convnet_1x1"),
                    IMAGE_CHANNELS,
                    channels,
                    1,
                    true,
                ),
                positions: TensorName::new(
                    format!("{prefix}.position_embeddings.position_embeddings"),
                    vec![image_size * image_size, channels],
                    Role::PositionTable,
                ),
                projection: LinearNames::new(&format!("{prefix}.positions_projection"), channels, channels),
            },
            ImageInputSpec::Pixels { .. } => Self::Pixels,
            ImageInputSpec::Conv { channels, .. } => Self::Conv {
                conv: ConvNames::new(
                    &format!("{prefix}.convnet.conv"),
                    IMAGE_CHANNELS,
                    channels,
                    7,
                    false,
                ),
                batchnorm: BatchNormNames::new(&format!("{prefix}.convnet.batchnorm"), channels),
            },
        }
    }

    fn tensors(&self) -> Vec<&TensorName> {
        match self {
            Self::Conv1x1 {
                conv,
                positions,
                projection,
            } => {
                let mut all = vec![&conv.weight];
                all.extend(&conv.bias);
                all.extend([positions, &projection.weight, &projection.bias]);
                all
            }
            Self::Pixels => Vec::new(),
            Self::Conv { conv, batchnorm } => {
                let mut all = vec![&conv.weight];
                all.extend(&conv.bias);
                all.extend([
                    &batchnorm.weight,
                    &batchnorm.bias,
                    &batchnorm.running_mean,
                    &batchnorm.running_var,
                    &batchnorm.num_batches_tracked,
                ]);
                all
            }
        }
    }
}

/// The encoder: the latent array, its cross-attention onto the input, and the latent
/// self-attention layers of one block (every block repeats them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderNames {
    /// `[num_latents, d_latents]` (`perceiver.embeddings.latents`).
    pub latents: TensorName,
    /// The latents attend to the input.
    pub cross_attention: LayerNames,
    /// `num_self_attends_per_block` layers.
    pub self_attends: Vec<LayerNames>,
}

/// The basic decoder with trainable output-position queries (transformers'
/// `PerceiverBasicDecoder` with `output_position_encodings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicDecoderNames {
    /// `[num_outputs, query channels]`.
    pub queries: TensorName,
    /// The queries attend to the latents.
    pub cross_attention: LayerNames,
}

/// `PerceiverForMaskedLM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedLmNames {
    /// Bytes + positions in.
    pub preprocessor: TextPreprocessorNames,
    /// Input onto latents, then the latent stack.
    pub encoder: EncoderNames,
    /// Output positions query the latents.
    pub decoder: BasicDecoderNames,
    /// `[vocab_size]`: the bias of the tied output projection (`embedding_decoder.bias`); its
    /// matrix is [`TextPreprocessorNames::embeddings`].
    pub output_bias: TensorName,
}

impl MaskedLmNames {
    /// The masked LM's tensors for `config` (not validated here: shapes are whatever the
    /// config's widths give).
    pub fn new(config: &PerceiverConfig) -> Self {
        let p = "perceiver";
        Self {
            preprocessor: TextPreprocessorNames::new(config),
            encoder: EncoderNames::new(config),
            decoder: BasicDecoderNames {
                queries: TensorName::new(
                    format!("{p}.decoder.output_position_encodings.position_embeddings"),
                    vec![config.max_position_embeddings, config.d_model],
                    Role::PositionTable,
                ),
                cross_attention: LayerNames::new(
                    &format!("{p}.decoder.decoding_cross_attention"),
                    config.masked_lm_decoder_spec(),
                    true,
                ),
            },
            output_bias: TensorName::new(
                "embedding_decoder.bias".into(),
                vec![config.vocab_size],
                Role::LinearBias,
            ),
        }
    }

    /// Every tensor, in the order the model reads them.
    pub fn tensors(&self) -> Vec<&TensorName> {
        let mut all = vec![&self.preprocessor.embeddings, &self.preprocessor.positions];
        all.extend(self.encoder.tensors());
        all.push(&self.decoder.queries);
        all.extend(self.decoder.cross_attention.tensors());
        all.push(&self.output_bias);
        all
    }
}

impl EncoderNames {
    fn new(config: &PerceiverConfig) -> Self {
        let p = "perceiver";
        let self_spec = config.self_attention_spec();
        Self {
            latents: TensorName::new(
                format!("{p}.embeddings.latents"),
                vec![config.num_latents, config.d_latents],
                Role::Latents,
            ),
            cross_attention: LayerNames::new(
                &format!("{p}.encoder.cross_attention"),
                config.encoder_cross_attention_spec(),
                true,
            ),
            self_attends: (0..config.num_self_attends_per_block)
                .map(|i| LayerNames::new(&format!("{p}.encoder.self_attends.{i}"), self_spec, false))
                .collect(),
        }
    }

    fn tensors(&self) -> Vec<&TensorName> {
        let mut all = vec![&self.latents];
        all.extend(self.cross_attention.tensors());
        for layer in &self.self_attends {
            all.extend(layer.tensors());
        }
        all
    }
}

impl TextPreprocessorNames {
    fn new(config: &PerceiverConfig) -> Self {
        let p = "perceiver.input_preprocessor";
        Self {
            embeddings: TensorName::new(
                format!("{p}.embeddings.weight"),
                vec![config.vocab_size, config.d_model],
                Role::Embedding,
            ),
            positions: TensorName::new(
                format!("{p}.position_embeddings.weight"),
                vec![config.max_position_embeddings, config.d_model],
                Role::PositionTable,
            ),
        }
    }
}

/// A classifier's input part.
// One per model, built once at load; boxing would also break matching on the variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputNames {
    /// Bytes (`PerceiverForSequenceClassification`).
    Text(TextPreprocessorNames),
    /// Pixels (the ImageNet classes).
    Image(ImagePreprocessorNames),
}

/// The classification decoder (transformers' `PerceiverClassificationDecoder`, a
/// `PerceiverBasicDecoder` with one trainable query and a final projection onto the labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassificationDecoderNames {
    /// One query (`[1, d_latents]`) attending to the latents.
    pub decoder: BasicDecoderNames,
    /// `final_layer`: `d_latents → num_labels`.
    pub final_layer: LinearNames,
}

/// A classifier: `PerceiverForSequenceClassification` or one of the ImageNet classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierNames {
    /// Bytes or pixels in.
    pub preprocessor: InputNames,
    /// Input onto latents, then the latent stack.
    pub encoder: EncoderNames,
    /// One query, then the labels.
    pub decoder: ClassificationDecoderNames,
}

impl ClassifierNames {
    /// The tensors of the classifier `config` describes with `num_labels` labels.
    pub fn new(config: &PerceiverConfig, num_labels: usize) -> Self {
        let p = "perceiver.decoder.decoder";
        let preprocessor = match config.image_input() {
            None => InputNames::Text(TextPreprocessorNames::new(config)),
            Some(input) => InputNames::Image(ImagePreprocessorNames::new(
                "perceiver.input_preprocessor",
                input,
                config.image_size(),
            )),
        };
        Self {
            preprocessor,
            encoder: EncoderNames::new(config),
            decoder: ClassificationDecoderNames {
                decoder: BasicDecoderNames {
                    queries: TensorName::new(
                        format!("{p}.output_position_encodings.position_embeddings"),
                        vec![1, config.d_latents],
                        Role::PositionTable,
                    ),
                    cross_attention: LayerNames::new(
                        &format!("{p}.decoding_cross_attention"),
                        config.classification_decoder_spec(),
                        true,
                    ),
                },
                final_layer: LinearNames::new(&format!("{p}.final_layer"), config.d_latents, num_labels),
            },
        }
    }

    /// Every tensor, in the order the model reads them.
    pub fn tensors(&self) -> Vec<&TensorName> {
        let mut all = match &self.preprocessor {
            InputNames::Text(text) => vec![&text.embeddings, &text.positions],
            InputNames::Image(image) => image.tensors(),
        };
        all.extend(self.encoder.tensors());
        all.push(&self.decoder.decoder.queries);
        all.extend(self.decoder.decoder.cross_attention.tensors());
        all.extend([&self.decoder.final_layer.weight, &self.decoder.final_layer.bias]);
        all
    }
}

/// `PerceiverForOpticalFlow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowNames {
    /// `conv_after_patches`: a pixel's patches in both frames (54 values) → 64 channels.
    pub patch_projection: LinearNames,
    /// Input onto latents, then the latent stack.
    pub encoder: EncoderNames,
    /// Every input row queries the latents (`decoder.decoder.decoding_cross_attention`).
    pub cross_attention: LayerNames,
    /// `decoder.decoder.final_layer`: the queries' width → the two flow channels.
    pub final_layer: LinearNames,
}

impl FlowNames {
    /// The optical-flow model's tensors for `config`.
    pub fn new(config: &PerceiverConfig) -> Self {
        let p = "perceiver.decoder.decoder";
        Self {
            patch_projection: LinearNames::new(
                "perceiver.input_preprocessor.conv_after_patches",
                FLOW_PATCH_CHANNELS,
                FLOW_FEATURES,
            ),
            encoder: EncoderNames::new(config),
            cross_attention: LayerNames::new(
                &format!("{p}.decoding_cross_attention"),
                config.flow_decoder_spec(),
                true,
            ),
            final_layer: LinearNames::new(&format!("{p}.final_layer"), config.input_channels(), 2),
        }
    }

    /// Every tensor, in the order the model reads them.
    pub fn tensors(&self) -> Vec<&TensorName> {
        let mut all = vec![&self.patch_projection.weight, &self.patch_projection.bias];
        all.extend(self.encoder.tensors());
        all.extend(self.cross_attention.tensors());
        all.extend([&self.final_layer.weight, &self.final_layer.bias]);
        all
    }
}

/// The modalities of `PerceiverForMultimodalAutoencoding`, in transformers' sorted order (the
/// order of the input's rows and of the decoded queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    /// Audio patches.
    Audio,
    /// Video patches in, pixels out.
    Image,
    /// The class label (one row in, logits out).
    Label,
}

impl Modality {
    /// All three, in order.
    pub const ALL: [Modality; 3] = [Self::Audio, Self::Image, Self::Label];

    /// transformers' key for it (`ModuleDict` / `ParameterDict` names).
    pub fn name(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Image => "image",
            Self::Label => "label",
        }
    }
}

/// `PerceiverForMultimodalAutoencoding`. Per-modality arrays are in [`Modality::ALL`]'s order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultimodalNames {
    /// `input_preprocessor.padding.<m>`: `[1, input channels − the modality's]`, appended to
    /// each of its rows.
    pub input_padding: [TensorName; 3],
    /// `input_preprocessor.mask.<m>`: `[1, input channels]`, the token that replaces a masked
    /// row (only the label's is ever used: its rows are always masked).
    pub mask: [TensorName; 3],
    /// Input onto latents, then the latent stack.
    pub encoder: EncoderNames,
    /// `decoder.modalities.label.decoder.output_position_encodings.position_embeddings`: the
    /// label's one query, `[1, _label_trainable_num_channels]`.
    pub label_query: TensorName,
    /// `decoder.padding.<m>`: `[1, query channels − the modality's]`, appended to its queries.
    pub query_padding: [TensorName; 3],
    /// Every query attends to the latents (`decoder.decoder.decoding_cross_attention`).
    pub cross_attention: LayerNames,
    /// `decoder.decoder.final_layer`: query channels → `output_num_channels`.
    pub final_layer: LinearNames,
    /// `output_postprocessor.modalities.<m>.classifier`: `output_num_channels` → samples per
    /// patch (audio), RGB (image), labels (label).
    pub heads: [LinearNames; 3],
}

impl MultimodalNames {
    /// The multimodal autoencoder's tensors for `config`; an error when its sizes are invalid.
    pub fn new(config: &PerceiverConfig) -> Result<Self> {
        let spec = config.multimodal()?;
        let p = "perceiver";
        let (input, query) = (spec.input_channels(), spec.query_channels());
        let row = |name: String, width: usize| TensorName::new(name, vec![1, width], Role::PositionTable);
        let channels = spec.modality_channels();
        let query_channels = spec.modality_query_channels();
        let outputs = [spec.samples_per_patch, IMAGE_CHANNELS, spec.num_labels];
        Ok(Self {
            input_padding: Modality::ALL.map(|m| {
                row(
                    format!("{p}.input_preprocessor.padding.{}", m.name()),
                    input - channels[m as usize],
                )
            }),
            mask: Modality::ALL.map(|m| row(format!("{p}.input_preprocessor.mask.{}", m.name()), input)),
            encoder: EncoderNames::new(config),
            label_query: row(
                format!("{p}.decoder.modalities.label.decoder.output_position_encodings.position_embeddings"),
                spec.label_query_channels,
            ),
            query_padding: Modality::ALL.map(|m| {
                row(
                    format!("{p}.decoder.padding.{}", m.name()),
                    query - query_channels[m as usize],
                )
            }),
            cross_attention: LayerNames::new(
                &format!("{p}.decoder.decoder.decoding_cross_attention"),
                config.multimodal_decoder_spec(),
                true,
            ),
            final_layer: LinearNames::new(
                &format!("{p}.decoder.decoder.final_layer"),
                query,
                spec.output_num_channels,
            ),
            heads: Modality::ALL.map(|m| {
                LinearNames::new(
                    &format!("{p}.output_postprocessor.modalities.{}.classifier", m.name()),
                    spec.output_num_channels,
                    outputs[m as usize],
                )
            }),
        })
    }

    /// Every tensor, in the order the model reads them.
    pub fn tensors(&self) -> Vec<&TensorName> {
        let mut all: Vec<&TensorName> = self.input_padding.iter().chain(&self.mask).collect();
        all.extend(self.encoder.tensors());
        all.push(&self.label_query);
        all.extend(&self.query_padding);
        all.extend(self.cross_attention.tensors());
        all.extend([&self.final_layer.weight, &self.final_layer.bias]);
        for head in &self.heads {
            all.extend([&head.weight, &head.bias]);
        }
        all
    }
}

/// The tensors of any model this library builds, by its config's architecture.
// One per model, built once at load; boxing would also break matching on the variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelNames {
    /// `PerceiverForMaskedLM`.
    MaskedLm(MaskedLmNames),
    /// A classifier.
    Classifier(ClassifierNames),
    /// `PerceiverForOpticalFlow`.
    OpticalFlow(FlowNames),
    /// `PerceiverForMultimodalAutoencoding`.
    MultimodalAutoencoding(MultimodalNames),
}

impl ModelNames {
    /// The names of the model `config` describes; a classifier whose config names no labels
    /// count gets `labels_if_unnamed` (the loader reads it from the weights).
    pub fn new(config: &PerceiverConfig, labels_if_unnamed: usize) -> Result<Self> {
        Ok(match Architecture::of(config)? {
            Architecture::MaskedLm => Self::MaskedLm(MaskedLmNames::new(config)),
            Architecture::OpticalFlow => Self::OpticalFlow(FlowNames::new(config)),
            Architecture::MultimodalAutoencoding => {
                Self::MultimodalAutoencoding(MultimodalNames::new(config)?)
            }
            _ => {
                let labels = config.num_labels()?.unwrap_or(labels_if_unnamed);
                Self::Classifier(ClassifierNames::new(config, labels))
            }
        })
    }

    /// Every tensor, in the order the model reads them.
    pub fn tensors(&self) -> Vec<&TensorName> {
        match self {
            Self::MaskedLm(names) => names.tensors(),
            Self::Classifier(names) => names.tensors(),
            Self::OpticalFlow(names) => names.tensors(),
            Self::MultimodalAutoencoding(names) => names.tensors(),
        }
    }

    /// BatchNorm's counts of batches seen ([`Role::Counter`]): integers PyTorch keeps and no
    /// model reads.
    pub fn counters(&self) -> impl Iterator<Item = &TensorName> {
        self.tensors().into_iter().filter(|t| t.role == Role::Counter)
    }
}

/// The name of a classifier's final projection, whose rows count its labels.
pub const CLASSIFIER_FINAL_WEIGHT: &str = "perceiver.decoder.decoder.final_layer.weight";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_perceiver_has_457_tensors_and_201m_parameters() {
        let config = PerceiverConfig::from_json_str(r#"{"qk_channels":256,"v_channels":1280}"#).unwrap();
        let names = MaskedLmNames::new(&config);
        let tensors = names.tensors();
        assert_eq!(tensors.len(), 457);
        let params: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
        assert_eq!(params, 201_108_230);
        let unique: std::collections::HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(unique.len(), tensors.len(), "every name once");
    }
}
