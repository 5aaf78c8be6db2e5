//! Classification: texts or images in, the labels of config.json's `id2label` with their
//! probabilities out, best first (what transformers' `text-classification` and
//! `image-classification` pipelines return).

use crate::config::{Architecture, ImageInputSpec, PerceiverConfig};
use crate::error::{Error, Result};
use crate::image::{DecodeLimits, ImageProcessor, ImageProcessorConfig, Size};
use crate::model::{ModelInput, PerceiverModel};
use crate::preprocess::Pixels;
use crate::tasks::fill_mask::top_k_zero;
use crate::tokenizer::BytesTokenizer;

/// One label and its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelScore {
    /// The label's name (`id2label`, or `LABEL_i` when the config names none).
    pub label: String,
    /// Its probability: softmax over the labels (sigmoid for a one-label model, as the
    /// pipelines do).
    pub score: f32,
}

/// A classifier ready to classify: `PerceiverForSequenceClassification` or one of the ImageNet
/// classes.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: PerceiverModel,
    labels: Vec<String>,
    tokenizer: BytesTokenizer,
    /// Image models: files → pixels.
    image_processor: Option<ImageProcessor>,
    /// The largest image file [`prepare_image`](Self::prepare_image) decodes.
    decode_limits: DecodeLimits,
}

/// The image processor a classifier of `config` uses when its files have no
/// `preprocessor_config.json`: transformers' defaults ([`ImageProcessorConfig::default`]: crop,
/// then resize to 224 × 224), or for a model that takes one size of image only (learned
/// positions) those settings sized to it ([`ImageProcessorConfig::for_size`]); `None` for a
/// model that does not read images.
pub fn default_image_processor(config: &PerceiverConfig) -> Result<Option<ImageProcessor>> {
    Ok(match config.image_input() {
        None => None,
        // transformers' 224 × 224 would be refused by a model of another fixed size.
        Some(ImageInputSpec::Conv1x1 { .. }) => {
            let side = config.image_size();
            Some(ImageProcessor::new(ImageProcessorConfig::for_size(Size {
                height: side,
                width: side,
            }))?)
        }
        Some(_) => Some(ImageProcessor::default()),
    })
}

impl Classifier {
    /// An error unless the task runs on models of this architecture (a text or image
    /// classifier): what [`new`](Self::new) checks, for checking a config before its weights
    /// load.
    pub fn check_architecture(architecture: Architecture) -> Result<()> {
        if !architecture.is_classifier() {
            return Err(Error::InvalidInput(format!(
                "classification needs a classifier (PerceiverForSequenceClassification or \
                 PerceiverForImageClassification*), not a {}",
                architecture.name()
            )));
        }
        Ok(())
    }

    /// The task on a classifier; an error for a model of another architecture. An image
    /// model's images are prepared with transformers' default settings
    /// ([`ImageProcessorConfig::default`]: crop, then resize to 224 × 224), or for a model that
    /// takes one size of image only (learned positions) with those settings sized to it
    /// ([`ImageProcessorConfig::for_size`]), until
    /// [`with_image_processor`](Self::with_image_processor) gives the model's own.
    pub fn new(model: PerceiverModel) -> Result<Self> {
        Self::check_architecture(model.architecture())?;
        let labels = model.config().labels(model.num_outputs())?;
        let image_processor = default_image_processor(model.config())?;
        Ok(Self {
            model,
            labels,
            tokenizer: BytesTokenizer,
            image_processor,
            decode_limits: DecodeLimits::default(),
        })
    }

    /// Prepares images with `processor` (the model's `preprocessor_config.json`); an error for
    /// a text model, or when the processor's output size is not one the model takes.
    pub fn with_image_processor(mut self, processor: ImageProcessor) -> Result<Self> {
        if !self.reads_images() {
            return Err(Error::InvalidInput(format!(
                "{} classifies text: it has no image processor",
                self.model.architecture().name()
            )));
        }
        let config = processor.config();
        if let (Some((h, w)), true) = (self.model.image_size(), config.do_resize) {
            if (config.size.height, config.size.width) != (h, w) {
                return Err(Error::InvalidConfig(format!(
                    "the image processor resizes to {}x{}, but the model takes {h}x{w} images",
                    config.size.height, config.size.width
                )));
            }
        }
        self.image_processor = Some(processor);
        Ok(self)
    }

    /// Refuses image files larger than `limits` (checked on the file's header, before any pixel
    /// is decoded) instead of the default, Pillow's limit: what a service that takes images
    /// from anyone sets to bound the memory one request may take.
    pub fn with_decode_limits(mut self, limits: DecodeLimits) -> Self {
        self.decode_limits = limits;
        self
    }

    /// The largest image files [`prepare_image`](Self::prepare_image) decodes.
    pub fn decode_limits(&self) -> DecodeLimits {
        self.decode_limits
    }

    /// The image processor of an image model.
    pub fn image_processor(&self) -> Option<&ImageProcessor> {
        self.image_processor.as_ref()
    }

    /// Decodes an image file's bytes (JPEG, PNG, WebP, BMP, GIF, TIFF) as transformers'
    /// `load_image` does and prepares it as the model's image processor does; an image larger
    /// than the [decode limits](Self::with_decode_limits) is refused.
    pub fn prepare_image(&self, bytes: &[u8]) -> Result<Pixels> {
        match &self.image_processor {
            Some(processor) => processor.preprocess_file_bytes_with_limits(bytes, &self.decode_limits),
            None => Err(Error::InvalidInput(format!(
                "{} classifies text, not images",
                self.model.architecture().name()
            ))),
        }
    }

    /// The `top_k` best labels of each image file (its bytes); `top_k` at least 1.
    pub fn classify_images(&self, files: &[&[u8]], top_k: usize) -> Result<Vec<Vec<LabelScore>>> {
        if top_k == 0 {
            return Err(top_k_zero());
        }
        let pixels = files
            .iter()
            .map(|bytes| self.prepare_image(bytes))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Pixels> = pixels.iter().collect();
        self.classify_pixels(&refs, top_k)
    }

    /// The model it runs.
    pub fn model(&self) -> &PerceiverModel {
        &self.model
    }

    /// Every label, in id order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Whether it classifies images (else texts).
    pub fn reads_images(&self) -> bool {
        self.model.architecture().reads_images()
    }

    /// The ids of a text as transformers' `PerceiverTokenizer` makes them for classification:
    /// `[CLS]`, the UTF-8 bytes, `[SEP]`; an error when the model's positions do not cover it.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        if self.reads_images() {
            return Err(Error::InvalidInput(format!(
                "{} classifies images, not text",
                self.model.architecture().name()
            )));
        }
        let ids = self.tokenizer.with_special_tokens(&self.tokenizer.encode(text));
        if ids.len() > self.model.max_len() {
            return Err(Error::TooLong {
                tokens: ids.len(),
                max: self.model.max_len(),
            });
        }
        Ok(ids)
    }

    /// The label logits of each input, `[inputs, labels]`.
    pub fn logits(&self, input: ModelInput<'_>) -> Result<Vec<f32>> {
        self.model.classify(input)
    }

    /// The `top_k` best labels of each text (all of them when `top_k` is larger; at least 1).
    pub fn classify_texts(&self, texts: &[&str], top_k: usize) -> Result<Vec<Vec<LabelScore>>> {
        if top_k == 0 {
            return Err(top_k_zero());
        }
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u32]> = ids.iter().map(|i| i.as_slice()).collect();
        self.classify(ModelInput::Tokens(&refs), top_k)
    }

    /// The `top_k` best labels of each image (normalised pixels, as the model's image
    /// processor makes them; at least 1 label).
    pub fn classify_pixels(&self, images: &[&Pixels], top_k: usize) -> Result<Vec<Vec<LabelScore>>> {
        self.classify(ModelInput::Images(images), top_k)
    }

    /// The `top_k` best labels of each input (token ids as [`tokenize`](Self::tokenize) makes
    /// them, or pixels), best first, with their probabilities (softmax over the labels; a
    /// sigmoid for a one-label model, as the pipelines do).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a `top_k` of 0; otherwise as [`logits`](Self::logits).
    pub fn classify(&self, input: ModelInput<'_>, top_k: usize) -> Result<Vec<Vec<LabelScore>>> {
        if top_k == 0 {
            return Err(top_k_zero());
        }
        if input.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.logits(input)?;
        Ok(logits
            .chunks_exact(self.labels.len())
            .map(|row| top_labels(&self.labels, &probabilities(row), top_k))
            .collect())
    }
}

/// Softmax over the labels, or a sigmoid for a single label (the pipelines' default
/// `function_to_apply`), computed in f64.
pub(crate) fn probabilities(logits: &[f32]) -> Vec<f32> {
    if logits.len() == 1 {
        return vec![(1.0 / (1.0 + (-(logits[0] as f64)).exp())) as f32];
    }
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exps: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// The `top_k` best labels, best first; equal scores keep id order (the pipelines' stable
/// sort). Callers pass a score per label (the model's outputs and its config's labels); a score
/// without a label is left out rather than a panic.
pub(crate) fn top_labels(labels: &[String], scores: &[f32], top_k: usize) -> Vec<LabelScore> {
    debug_assert_eq!(labels.len(), scores.len());
    let mut order: Vec<usize> = (0..scores.len().min(labels.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
        .into_iter()
        .take(top_k)
        .map(|i| LabelScore {
            label: labels[i].clone(),
            score: scores[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_best_first_and_stable() {
        let labels: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let top = top_labels(&labels, &[0.1, 0.4, 0.1, 0.4], 3);
        let names: Vec<&str> = top.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(names, ["b", "d", "a"]);
        assert_eq!(top_labels(&labels, &[0.1, 0.2, 0.3, 0.4], 10).len(), 4);
    }

    #[test]
    fn probabilities_sum_to_one_or_use_a_sigmoid() {
        let p = probabilities(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        assert!((probabilities(&[0.0])[0] - 0.5).abs() < 1e-7);
        // Large logits do not overflow.
        let p = probabilities(&[1000.0, 0.0]);
        assert!((p[0] - 1.0).abs() < 1e-6);
    }
}
