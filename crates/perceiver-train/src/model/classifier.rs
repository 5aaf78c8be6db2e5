//! The classifiers: transformers' `PerceiverForSequenceClassification` (bytes) and its three
//! ImageNet classes (`PerceiverForImageClassification{Learned,Fourier,ConvProcessing}`, pixels).
//!
//! A preprocessor (bytes or pixels), the latents, encoder and latent stack, then transformers'
//! `PerceiverClassificationDecoder`: one trainable query of `d_latents` channels cross-attends to
//! the latents (one head), and a dense layer maps the decoded row onto the labels. Fine-tuning a
//! text classifier starts from a masked LM's parts and a fresh decoder, an image classifier from
//! another one with a fresh final layer when the labels change
//! ([`crate::classification::classifier_start`]).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::model::attention::Linear;
use crate::model::decoder::BasicDecoder;
use crate::model::encoder::PerceiverEncoder;
use crate::model::image::ImagePreprocessor;
use crate::model::text::TextPreprocessor;
use perceiver::checkpoint::names::{ClassifierNames, InputNames};
use perceiver::config::PerceiverConfig;
use perceiver::error::Error;

/// What a classifier reads.
#[derive(Debug, Clone)]
enum Input {
    Text(TextPreprocessor),
    Image(ImagePreprocessor),
}

/// A batch of a classifier's inputs.
#[derive(Debug, Clone)]
pub enum ClassifierInputs {
    /// Texts as ids.
    Text {
        /// `[batch, len]` u32, `len ≤` [`PerceiverClassifier::max_len`].
        input_ids: Tensor,
        /// `[batch, len]` f32, 1 = real id, 0 = padding; `None` when nothing is padded.
        attention_mask: Option<Tensor>,
    },
    /// Images as transformers' `pixel_values`: `[batch, 3, height, width]` f32.
    Images(Tensor),
}

/// A classifier (bytes or pixels in, one logit per label out) with trainable weights.
#[derive(Debug, Clone)]
pub struct PerceiverClassifier {
    input: Input,
    encoder: PerceiverEncoder,
    /// One query (`[1, d_latents]`) attending to the latents.
    decoder: BasicDecoder,
    /// `d_latents → num_labels`.
    final_layer: Linear,
    num_labels: usize,
    config: PerceiverConfig,
}

impl PerceiverClassifier {
    /// Builds the model from weights under the names of [`ClassifierNames`] (transformers'
    /// names). The config must be validated and name a classifier
    /// (`PerceiverForSequenceClassification` or an ImageNet class) with its labels (`id2label`
    /// or `num_labels`).
    pub fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        let architecture = perceiver::Architecture::of(cfg)?;
        if !architecture.is_classifier() {
            return Err(Error::InvalidInput(format!(
                "a classifier needs architectures [\"PerceiverForSequenceClassification\"] or an \
                 ImageNet class, not {}",
                architecture.name()
            ))
            .into());
        }
        let num_labels = cfg.num_labels()?.ok_or_else(|| {
            Error::InvalidConfig("a classifier's config names its labels (id2label or num_labels)".into())
        })?;
        let names = ClassifierNames::new(cfg, num_labels);
        let input = match (&names.preprocessor, cfg.image_input()) {
            (InputNames::Text(text), None) => Input::Text(TextPreprocessor::new(text, &vb)?),
            (InputNames::Image(image), Some(spec)) => {
                Input::Image(ImagePreprocessor::new(spec, image, cfg.image_size(), &vb)?)
            }
            _ => {
                return Err(Error::InvalidConfig(
                    "the classifier's input names do not match its architecture".into(),
                )
                .into())
            }
        };
        Ok(Self {
            input,
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

    /// Number of labels (the logits of each input).
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// The device its weights are on.
    pub fn device(&self) -> &Device {
        self.final_layer.weight().device()
    }

    /// The longest text (in ids, special tokens included) a text classifier takes; `None` for
    /// an image classifier.
    pub fn max_len(&self) -> Option<usize> {
        match &self.input {
            Input::Text(text) => Some(text.max_len()),
            Input::Image(_) => None,
        }
    }

    /// The one image size an image classifier takes, if it has one (learned positions).
    pub fn image_size(&self) -> Option<(usize, usize)> {
        match &self.input {
            Input::Image(image) => image.required_size(),
            Input::Text(_) => None,
        }
    }

    /// Encodes a batch into latents, `[batch, num_latents, d_latents]`; an error when the
    /// inputs are not of the kind the model reads.
    pub fn encode(&self, inputs: &ClassifierInputs) -> Result<Tensor> {
        match (&self.input, inputs) {
            (
                Input::Text(text),
                ClassifierInputs::Text {
                    input_ids,
                    attention_mask,
                },
            ) => self
                .encoder
                .forward(&text.forward(input_ids)?, attention_mask.as_ref()),
            (Input::Image(image), ClassifierInputs::Images(pixels)) => {
                self.encoder.forward(&image.forward(pixels)?, None)
            }
            (Input::Text(_), ClassifierInputs::Images(_)) => {
                Err(Error::InvalidInput("a text classifier was given images".into()).into())
            }
            (Input::Image(_), ClassifierInputs::Text { .. }) => {
                Err(Error::InvalidInput("an image classifier was given texts".into()).into())
            }
        }
    }

    /// The label logits of encoded latents: `[batch, num_labels]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (batch, _, _) = latents.dims3()?;
        // The decoder's only query, for every input.
        let query = Tensor::zeros((batch, 1), DType::U32, latents.device())?;
        let decoded = self.decoder.forward(latents, &query)?; // [batch, 1, d_latents]
        Ok(self.final_layer.forward(&decoded)?.squeeze(1)?)
    }

    /// Full forward pass, as transformers' classifier's `(inputs, attention_mask).logits`:
    /// `[batch, num_labels]`.
    pub fn forward(&self, inputs: &ClassifierInputs) -> Result<Tensor> {
        self.decode(&self.encode(inputs)?)
    }

    /// The most likely label of each row of `logits` (`[batch, num_labels]`).
    pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
        Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }
}
