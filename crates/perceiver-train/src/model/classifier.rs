//! The byte-level sequence classifier (transformers' `PerceiverForSequenceClassification`).
//!
//! The masked LM's parts up to the latents (byte preprocessor, latents, encoder, latent stack),
//! then transformers' `PerceiverClassificationDecoder`: one trainable query of `d_latents`
//! channels cross-attends to the latents (one head, with the query residual), and a dense layer
//! maps the decoded row onto the labels. Fine-tuning starts from a masked LM's parts and a fresh
//! decoder ([`crate::classification::classifier_start`]).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::model::attention::Linear;
use crate::model::decoder::BasicDecoder;
use crate::model::encoder::PerceiverEncoder;
use crate::model::text::TextPreprocessor;
use perceiver::checkpoint::names::{ClassifierNames, InputNames};
use perceiver::config::{Architecture, PerceiverConfig};
use perceiver::error::Error;

/// The sequence classifier with trainable weights.
#[derive(Debug, Clone)]
pub struct PerceiverForSequenceClassification {
    preprocessor: TextPreprocessor,
    encoder: PerceiverEncoder,
    /// One query (`[1, d_latents]`) attending to the latents.
    decoder: BasicDecoder,
    /// `d_latents → num_labels`.
    final_layer: Linear,
    num_labels: usize,
    config: PerceiverConfig,
}

impl PerceiverForSequenceClassification {
    /// Builds the model from weights under the names of [`ClassifierNames`] (transformers'
    /// names). The config must be validated and name a `PerceiverForSequenceClassification`
    /// with its labels (`id2label` or `num_labels`).
    pub fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        let architecture = Architecture::of(cfg)?;
        if architecture != Architecture::SequenceClassification {
            return Err(Error::InvalidInput(format!(
                "a sequence classifier needs architectures [\"PerceiverForSequenceClassification\"], \
                 not {}",
                architecture.name()
            ))
            .into());
        }
        let num_labels = cfg.num_labels()?.ok_or_else(|| {
            Error::InvalidConfig("a classifier's config names its labels (id2label or num_labels)".into())
        })?;
        let names = ClassifierNames::new(cfg, num_labels);
        let InputNames::Text(text) = &names.preprocessor else {
            return Err(Error::InvalidInput("a sequence classifier reads text".into()).into());
        };
        Ok(Self {
            preprocessor: TextPreprocessor::new(text, &vb)?,
            encoder: PerceiverEncoder::new(&names.encoder, cfg.num_blocks, &vb)?,
            decoder: BasicDecoder::new(&names.decoder.decoder, &vb)?,
            final_layer: Linear::new(&names.decoder.final_layer, &vb)?,
            num_labels,
            config: cfg.clone(),
        })
    }

    /// The model's architecture.
    pub fn config(&self) -> &PerceiverConfig {
        &self.config
    }

    /// Number of labels (the logits of each text).
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// The device its weights are on.
    pub fn device(&self) -> &Device {
        self.preprocessor.table().device()
    }

    /// The longest input (in ids, special tokens included) the model takes.
    pub fn max_len(&self) -> usize {
        self.preprocessor.max_len()
    }

    /// Encodes a batch of ids into latents.
    ///
    /// # Shapes
    /// `input_ids`: `[batch, len]` u32 with `len ≤ max_len()`; `attention_mask`: `[batch, len]`,
    /// 1 = real id, 0 = padding. Returns `[batch, num_latents, d_latents]`.
    pub fn encode(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.encoder
            .forward(&self.preprocessor.forward(input_ids)?, attention_mask)
    }

    /// The label logits of encoded latents: `[batch, num_labels]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (batch, _, _) = latents.dims3()?;
        // The decoder's only query, for every text.
        let query = Tensor::zeros((batch, 1), DType::U32, latents.device())?;
        let decoded = self.decoder.forward(latents, &query)?; // [batch, 1, d_latents]
        Ok(self.final_layer.forward(&decoded)?.squeeze(1)?)
    }

    /// Full forward pass, as transformers' `PerceiverForSequenceClassification(inputs,
    /// attention_mask).logits`: `[batch, num_labels]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.decode(&self.encode(input_ids, attention_mask)?)
    }

    /// The most likely label of each row of `logits` (`[batch, num_labels]`).
    pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
        Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }
}
