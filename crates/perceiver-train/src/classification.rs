//! The classification objective, for texts and images: labels from the data, the classifier's
//! config and starting weights (a masked LM's parts and a fresh decoder, or a classifier with a
//! fresh final layer for new labels), texts as ids and images as files, the held-out split, the
//! order examples are drawn in, batches, the cross-entropy loss and the evaluation (accuracy,
//! confusion table).
//!
//! Choices, each the same wherever a run is started or resumed:
//! - **Label ids** are the labels sorted by their UTF-8 bytes, so the order of the rows does not
//!   change them; they become `id2label` / `label2id` in config.json.
//! - **Texts** become ids as transformers' `PerceiverTokenizer` makes them for classification
//!   (`[CLS]`, the UTF-8 bytes, `[SEP]`), as [`perceiver::Classifier::tokenize`] does. A text
//!   longer than the run's `seq_len` is cut to its first `seq_len − 2` bytes (then `[SEP]`), and
//!   the number cut is reported, rather than refused: real data has the odd long review.
//! - **Images** are read from their files for every batch, and prepared as inference prepares
//!   them (the model's image processor: crop, resize, normalise); each is read once when the
//!   data is loaded, so that a file that is not an image stops the run before it starts.
//! - **The held-out split** (`eval_fraction`) is stratified: of each label's `n` texts,
//!   `round(fraction × n)` are held out, at least one when `n ≥ 2` and at least one is left for
//!   training, chosen by the seed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use perceiver::checkpoint::names::ClassifierNames;
use perceiver::config::Architecture;
use perceiver::image::ImageProcessor;
use perceiver::tokenizer::{BytesTokenizer, PAD_ID};
use perceiver::{PerceiverConfig, Pixels};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::corpus::splitmix64;
use crate::error::{Error, Result};
use crate::init::{draw, transformers_param_init};
use crate::labelled::{self, Labelled, LabelledImage, LabelledText};
use crate::model::{ClassifierInputs, PerceiverClassifier};
use crate::objective::BatchLoss;

/// The run directory's file with the last evaluation of a classifier ([`EvalFile`]).
pub const EVAL_FILE: &str = "eval.json";

/// What a classifier reads of one example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExampleInput {
    /// A text's ids: `[CLS]`, the bytes, `[SEP]`.
    Ids(Vec<u32>),
    /// An image file, read for each batch.
    Image(PathBuf),
}

/// One text or image, with its label's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The text's ids or the image's file.
    pub input: ExampleInput,
    /// Index into the labels.
    pub label: u32,
}

/// The ids of `text` for a classifier taking at most `max_len` ids (`max_len ≥ 3`), and
/// whether the text had to be cut to fit.
pub fn tokenize(text: &str, max_len: usize) -> (Vec<u32>, bool) {
    let tokenizer = BytesTokenizer;
    let mut bytes = tokenizer.encode(text);
    let room = max_len.saturating_sub(2);
    let cut = bytes.len() > room;
    bytes.truncate(room);
    (tokenizer.with_special_tokens(&bytes), cut)
}

/// The distinct labels of `rows`, sorted by their bytes: label `i` is the `i`-th.
pub fn labels_of<'a, T: Labelled + 'a>(rows: impl IntoIterator<Item = &'a T>) -> Vec<String> {
    let mut labels: Vec<String> = rows.into_iter().map(|r| r.label().to_string()).collect();
    labels.sort();
    labels.dedup();
    labels
}

/// The config of a classifier with the body of `base` and `labels` (`id2label`, `label2id`): a
/// masked LM's becomes a `PerceiverForSequenceClassification`, a classifier's keeps its class.
pub fn classifier_config(base: &PerceiverConfig, labels: &[String]) -> Result<PerceiverConfig> {
    let mut config = base.clone();
    let is_classifier = Architecture::of(base).is_ok_and(|a| a.is_classifier());
    let extra = &mut config.extra;
    if !is_classifier {
        extra.insert(
            "architectures".into(),
            serde_json::json!([Architecture::SequenceClassification.name()]),
        );
    }
    extra.insert("model_type".into(), "perceiver".into());
    extra.insert(
        "id2label".into(),
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), serde_json::Value::from(l.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    extra.insert(
        "label2id".into(),
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), serde_json::Value::from(i)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    // transformers counts the labels from id2label; a stale count would contradict it.
    extra.remove("num_labels");
    extra.insert("problem_type".into(), "single_label_classification".into());
    config.validate()?;
    Ok(config)
}

/// The labels of a classifier's config, in id order.
pub fn config_labels(config: &PerceiverConfig) -> Result<Vec<String>> {
    let count = config.num_labels()?.ok_or_else(|| {
        perceiver::Error::InvalidConfig(
            "a classifier's config names its labels (id2label or num_labels)".into(),
        )
    })?;
    Ok(config.labels(count)?)
}

/// The starting point of fine-tuning a classifier with `labels` from `base` (a config and every
/// tensor by name), the new tensors drawn as transformers' `_init_weights` draws them:
/// normal(0, `initializer_range`) weights and query, zero biases, LayerNorms 1 and 0.
/// - From a byte masked LM: a `PerceiverForSequenceClassification` with its preprocessor,
///   latents, encoder and latent stack copied by name and a new decoder (query, cross-attention
///   and final layer); the masked LM's own decoder is left behind.
/// - From a classifier (text or image): the same class with everything copied but the final
///   layer, drawn new for the labels.
pub fn classifier_start(
    base_config: &PerceiverConfig,
    base: &BTreeMap<String, Tensor>,
    labels: &[String],
    seed: u64,
) -> Result<(PerceiverConfig, BTreeMap<String, Tensor>)> {
    let architecture = Architecture::of(base_config)?;
    if architecture != Architecture::MaskedLm && !architecture.is_classifier() {
        return Err(Error::Options(format!(
            "a classifier starts from a byte masked LM (PerceiverForMaskedLM) or a classifier, not a {}",
            architecture.name()
        )));
    }
    let config = classifier_config(base_config, labels)?;
    let names = ClassifierNames::new(&config, labels.len());
    let decoder = &names.decoder;
    let mut fresh = vec![&decoder.final_layer.weight, &decoder.final_layer.bias];
    if architecture == Architecture::MaskedLm {
        fresh.push(&decoder.decoder.queries);
        fresh.extend(decoder.decoder.cross_attention.tensors());
    }
    let device = base.values().next().map_or(Device::Cpu, |t| t.device().clone());
    let mut tensors = BTreeMap::new();
    for t in names.tensors() {
        let tensor = if fresh.contains(&t) {
            let init = transformers_param_init(t, config.initializer_range);
            draw(t, &t.shape, init, seed, &device)?
        } else {
            let tensor = base
                .get(&t.name)
                .ok_or_else(|| perceiver::Error::MissingTensor { name: t.name.clone() })?;
            if tensor.dims() != t.shape.as_slice() {
                return Err(perceiver::Error::ShapeMismatch {
                    name: t.name.clone(),
                    expected: t.shape.clone(),
                    found: tensor.dims().to_vec(),
                }
                .into());
            }
            tensor.clone()
        };
        tensors.insert(t.name.clone(), tensor);
    }
    Ok((config, tensors))
}

/// The image processor of an image classifier (for a run, or an evaluation): `given` (the
/// model's own `preprocessor_config.json`), else the one inference uses without one; `None` for a
/// text model. One that does not resize to the one size a learned-position model takes is refused.
pub fn image_processor_for(
    config: &PerceiverConfig,
    given: Option<ImageProcessor>,
) -> Result<Option<ImageProcessor>> {
    if config.image_input().is_none() {
        return Ok(None);
    }
    let processor = match given {
        Some(processor) => processor,
        None => perceiver::tasks::classify::default_image_processor(config)?
            .ok_or_else(|| Error::Options("an image classifier has an image processor".into()))?,
    };
    if let Some(perceiver::config::ImageInputSpec::Conv1x1 { .. }) = config.image_input() {
        let side = config.image_size();
        let c = processor.config();
        if !c.do_resize || (c.size.height, c.size.width) != (side, side) {
            return Err(Error::Options(format!(
                "the model takes {side}x{side} images, and its image processor does not resize to that size"
            )));
        }
    }
    Ok(Some(processor))
}

/// A classifier run's texts or images: the labels, the training and held-out examples.
#[derive(Debug, Clone)]
pub struct ClassifierData {
    /// Label names in id order.
    pub labels: Vec<String>,
    /// The examples trained on.
    pub train: Vec<Example>,
    /// The held-out examples (every one is evaluated).
    pub eval: Vec<Example>,
    /// Texts (of both parts) cut to the run's `seq_len`.
    pub truncated: usize,
    /// For images: how their files become pixels (the model's image processor).
    pub images: Option<ImageProcessor>,
}

impl ClassifierData {
    /// Reads the run's labelled data (`corpus`, and `eval_corpus` or `eval_fraction` for the
    /// held-out part): texts from labelled files, or with `images` (the model's image processor)
    /// image folders ([`labelled::read_image_folders`]), every image read once. With `known` (a
    /// classifier's labels, when fine-tuning or resuming one), every label of the data must be
    /// one of them (`advice` is appended to the refusal); otherwise the training examples'
    /// labels are the labels, and there must be at least two.
    pub fn load(
        options: &TrainConfig,
        known: Option<Vec<String>>,
        images: Option<ImageProcessor>,
        advice: &str,
    ) -> Result<Self> {
        let whose = match known {
            Some(_) => CLASSIFIERS,
            None => "the training examples'",
        };
        let data = match images {
            None => {
                let (train_rows, eval_rows) = train_and_held_out(options, labelled::read_all)?;
                let labels = checked_labels(known, &train_rows, "texts")?;
                let ids = LabelIds::new(&labels, whose, advice);
                let (train, cut_train) = texts_as_examples(&train_rows, &ids, options.seq_len)?;
                let (eval, cut_eval) = texts_as_examples(&eval_rows, &ids, options.seq_len)?;
                Self {
                    labels,
                    train,
                    eval,
                    truncated: cut_train + cut_eval,
                    images: None,
                }
            }
            Some(processor) => {
                let (train_rows, eval_rows) = train_and_held_out(options, labelled::read_image_folders)?;
                let labels = checked_labels(known, &train_rows, "images")?;
                let ids = LabelIds::new(&labels, whose, advice);
                let train = images_as_examples(&train_rows, &ids)?;
                let eval = images_as_examples(&eval_rows, &ids)?;
                check_images(train.iter().chain(&eval), &processor)?;
                Self {
                    labels,
                    train,
                    eval,
                    truncated: 0,
                    images: Some(processor),
                }
            }
        };
        if data.train.is_empty() {
            return Err(Error::Options(
                "nothing to train on: every example is held out".into(),
            ));
        }
        Ok(data)
    }
}

/// The run's training and held-out rows, each read by `read`: `eval_corpus`, or the stratified
/// `eval_fraction` of `corpus`.
fn train_and_held_out<T: Labelled>(
    options: &TrainConfig,
    read: impl Fn(&[String]) -> Result<Vec<T>>,
) -> Result<(Vec<T>, Vec<T>)> {
    let rows = read(&options.corpus)?;
    Ok(if options.eval_corpus.is_empty() {
        split(rows, options.eval_fraction, options.seed)
    } else {
        (rows, read(&options.eval_corpus)?)
    })
}

/// The run's labels: `known`, or those of the training rows; at least two.
fn checked_labels<T: Labelled>(known: Option<Vec<String>>, train: &[T], what: &str) -> Result<Vec<String>> {
    let labels = known.unwrap_or_else(|| labels_of(train));
    if labels.len() < 2 {
        return Err(Error::Options(format!(
            "the training {what} have one label ({}): a classifier needs at least two",
            labels.first().map_or("none", |l| l.as_str())
        )));
    }
    Ok(labels)
}

/// Label names to ids, and how an example with another label is refused.
struct LabelIds<'a> {
    labels: &'a [String],
    ids: HashMap<&'a str, u32>,
    /// Whose labels they are: "the classifier's", "the training examples'".
    whose: &'static str,
    /// Appended to the refusal: what to do about it ("" for nothing).
    advice: &'a str,
}

/// Labels named in full when an example's label is not among them; the rest are counted.
const LABELS_NAMED: usize = 10;

impl<'a> LabelIds<'a> {
    fn new(labels: &'a [String], whose: &'static str, advice: &'a str) -> Self {
        let ids = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i as u32))
            .collect();
        Self {
            labels,
            ids,
            whose,
            advice,
        }
    }

    /// The id of `label`, or an error naming where the example came from.
    fn id(&self, label: &str, path: &Path, line: Option<u64>) -> Result<u32> {
        self.ids.get(label).copied().ok_or_else(|| {
            let mut named = self.labels[..self.labels.len().min(LABELS_NAMED)].join(", ");
            if self.labels.len() > LABELS_NAMED {
                named.push_str(&format!(", … and {} more", self.labels.len() - LABELS_NAMED));
            }
            Error::Data {
                path: path.to_path_buf(),
                line,
                reason: format!(
                    "the label `{label}` is not one of {} labels ({named}){}",
                    self.whose, self.advice
                ),
            }
        })
    }
}

/// A classifier's own labels, to which data is held.
const CLASSIFIERS: &str = "the classifier's";

/// `rows` as examples for a classifier with `labels`; a row whose label is not one of `labels`
/// is an [`Error::Data`].
pub fn image_examples(rows: &[LabelledImage], labels: &[String]) -> Result<Vec<Example>> {
    images_as_examples(rows, &LabelIds::new(labels, CLASSIFIERS, ""))
}

fn images_as_examples(rows: &[LabelledImage], labels: &LabelIds) -> Result<Vec<Example>> {
    rows.iter()
        .map(|row| {
            Ok(Example {
                input: ExampleInput::Image(row.path.clone()),
                label: labels.id(&row.label, &row.path, None)?,
            })
        })
        .collect()
}

/// An image file as the model's input; a file that cannot be read or decoded is an
/// [`Error::Data`] naming it.
pub fn prepare_image(path: &Path, processor: &ImageProcessor) -> Result<Pixels> {
    let bytes = std::fs::read(path).map_err(crate::error::io_at(path))?;
    processor.preprocess_file_bytes(&bytes).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        line: None,
        reason: e.to_string(),
    })
}

/// Reads every image example once (in parallel): each must decode, and all must come out of the
/// processor at one size, since a batch is one tensor.
fn check_images<'a>(examples: impl Iterator<Item = &'a Example>, processor: &ImageProcessor) -> Result<()> {
    let paths: Vec<&Path> = examples
        .filter_map(|e| match &e.input {
            ExampleInput::Image(path) => Some(path.as_path()),
            ExampleInput::Ids(_) => None,
        })
        .collect();
    let sizes = paths
        .par_iter()
        .map(|path| prepare_image(path, processor).map(|p| (p.height, p.width)))
        .collect::<Result<Vec<_>>>()?;
    if let Some(i) = sizes.iter().position(|s| *s != sizes[0]) {
        return Err(Error::Data {
            path: paths[i].to_path_buf(),
            line: None,
            reason: format!(
                "comes out of the image processor at {}x{}, {} at {}x{}: the images of a batch \
                 share one size (use an image processor that resizes)",
                sizes[i].0,
                sizes[i].1,
                paths[0].display(),
                sizes[0].0,
                sizes[0].1
            ),
        });
    }
    Ok(())
}

/// `rows` as examples for a classifier with `labels` taking at most `max_len` ids, and how
/// many texts were cut to fit; a row whose label is not one of `labels` is an [`Error::Data`].
pub fn examples(rows: &[LabelledText], labels: &[String], max_len: usize) -> Result<(Vec<Example>, usize)> {
    texts_as_examples(rows, &LabelIds::new(labels, CLASSIFIERS, ""), max_len)
}

fn texts_as_examples(
    rows: &[LabelledText],
    labels: &LabelIds,
    max_len: usize,
) -> Result<(Vec<Example>, usize)> {
    let mut truncated = 0;
    let examples = rows
        .iter()
        .map(|row| {
            let label = labels.id(&row.label, &row.path, Some(row.line))?;
            let (ids, cut) = tokenize(&row.text, max_len);
            truncated += cut as usize;
            Ok(Example {
                input: ExampleInput::Ids(ids),
                label,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((examples, truncated))
}

/// The stratified held-out split of `rows` (see the module docs); both parts keep file order.
pub fn split<T: Labelled>(rows: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        by_label.entry(row.label()).or_default().push(i);
    }
    let mut held_out = vec![false; rows.len()];
    if fraction > 0.0 {
        for (index, (_, mut members)) in by_label.into_iter().enumerate() {
            let n = members.len();
            if n < 2 {
                continue;
            }
            let k = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
            let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ SPLIT_SALT ^ splitmix64(index as u64)));
            members.shuffle(&mut rng);
            for &i in &members[..k] {
                held_out[i] = true;
            }
        }
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (row, out) in rows.into_iter().zip(held_out) {
        if out {
            eval.push(row)
        } else {
            train.push(row)
        }
    }
    (train, eval)
}

const SPLIT_SALT: u64 = 0x5b11_7000_0000_0001;
const ORDER_SALT: u64 = 0x0bde_2000_0000_0001;

/// The order training texts are drawn in: every epoch a fresh permutation of them, a pure
/// function of the seed and the epoch, so a resumed run draws exactly what the uninterrupted
/// one would (skipping is free).
#[derive(Debug, Clone)]
pub struct ExampleStream {
    len: usize,
    seed: u64,
    consumed: u64,
    order: Option<(u64, Vec<usize>)>,
}

impl ExampleStream {
    /// A stream over `len` (≥ 1) texts.
    pub fn new(len: usize, seed: u64) -> Self {
        Self {
            len: len.max(1),
            seed,
            consumed: 0,
            order: None,
        }
    }

    /// Texts drawn so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Passes over the texts so far (the current one included once it has started).
    pub fn epoch(&self) -> u64 {
        self.consumed / self.len as u64
    }

    /// Skips `n` texts (a resume's position).
    pub fn skip(&mut self, n: u64) {
        self.consumed += n;
    }

    /// The index of the next text.
    pub fn next_index(&mut self) -> usize {
        let epoch = self.consumed / self.len as u64;
        let position = (self.consumed % self.len as u64) as usize;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.len).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(self.seed ^ ORDER_SALT ^ splitmix64(epoch)));
            order.shuffle(&mut rng);
            self.order = Some((epoch, order));
        }
        self.consumed += 1;
        self.order.as_ref().map_or(position, |(_, order)| order[position])
    }
}

/// A batch of examples as tensors: texts padded to the longest, or images stacked.
pub struct ClassBatch {
    /// The model's inputs.
    pub inputs: ClassifierInputs,
    /// `[batch]` u32 label ids.
    pub labels: Tensor,
    /// Examples in the batch.
    pub size: usize,
    /// Real (unpadded) ids in the batch; 0 for images.
    pub num_bytes: usize,
}

impl ClassBatch {
    /// `examples` as one batch on `device`: all texts, or all images read with `images` (the
    /// model's image processor).
    pub fn new(examples: &[&Example], images: Option<&ImageProcessor>, device: &Device) -> Result<Self> {
        let batch = examples.len();
        if batch == 0 {
            return Err(Error::Options("a batch needs at least one example".into()));
        }
        let labels: Vec<u32> = examples.iter().map(|e| e.label).collect();
        let labels = Tensor::from_vec(labels, batch, device)?;
        let texts: Option<Vec<&[u32]>> = examples
            .iter()
            .map(|e| match &e.input {
                ExampleInput::Ids(ids) => Some(ids.as_slice()),
                ExampleInput::Image(_) => None,
            })
            .collect();
        if let Some(texts) = texts {
            let (inputs, num_bytes) = text_inputs(&texts, device)?;
            return Ok(Self {
                inputs,
                labels,
                size: batch,
                num_bytes,
            });
        }
        let paths: Option<Vec<&Path>> = examples
            .iter()
            .map(|e| match &e.input {
                ExampleInput::Image(path) => Some(path.as_path()),
                ExampleInput::Ids(_) => None,
            })
            .collect();
        let (Some(paths), Some(processor)) = (paths, images) else {
            return Err(Error::Options(
                "a batch is all texts, or all images with an image processor".into(),
            ));
        };
        let pixels = paths
            .par_iter()
            .map(|path| prepare_image(path, processor))
            .collect::<Result<Vec<_>>>()?;
        let (height, width) = (pixels[0].height, pixels[0].width);
        if let Some(i) = pixels.iter().position(|p| (p.height, p.width) != (height, width)) {
            return Err(Error::Data {
                path: paths[i].to_path_buf(),
                line: None,
                reason: format!(
                    "comes out of the image processor at {}x{}, not {height}x{width} as the batch's first",
                    pixels[i].height, pixels[i].width
                ),
            });
        }
        let values: Vec<f32> = pixels.iter().flat_map(|p| p.values.iter().copied()).collect();
        Ok(Self {
            inputs: ClassifierInputs::Images(Tensor::from_vec(values, (batch, 3, height, width), device)?),
            labels,
            size: batch,
            num_bytes: 0,
        })
    }
}

/// Texts' ids padded into `[batch, len]` (with the mask when any is padded), and their real ids.
fn text_inputs(texts: &[&[u32]], device: &Device) -> Result<(ClassifierInputs, usize)> {
    let batch = texts.len();
    let len = texts.iter().map(|t| t.len()).max().unwrap_or(0);
    if len == 0 {
        return Err(Error::Options("a batch needs at least one id".into()));
    }
    let mut ids = vec![PAD_ID; batch * len];
    let mut mask = vec![0f32; batch * len];
    for (b, text) in texts.iter().enumerate() {
        ids[b * len..b * len + text.len()].copy_from_slice(text);
        mask[b * len..b * len + text.len()].fill(1.0);
    }
    let padded = texts.iter().any(|t| t.len() < len);
    let inputs = ClassifierInputs::Text {
        input_ids: Tensor::from_vec(ids, (batch, len), device)?,
        attention_mask: if padded {
            Some(Tensor::from_vec(mask, (batch, len), device)?)
        } else {
            None
        },
    };
    Ok((inputs, texts.iter().map(|t| t.len()).sum()))
}

/// The logits, the mean cross-entropy (a scalar to differentiate) and the predictions of a batch.
fn scored(model: &PerceiverClassifier, batch: &ClassBatch) -> Result<(Tensor, Vec<u32>)> {
    let logits = model.forward(&batch.inputs)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs.gather(&batch.labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let loss = (picked.mean_all()? * -1.0)?;
    let predicted = PerceiverClassifier::predictions(&logits)?;
    Ok((loss, predicted))
}

/// Cross-entropy of the batch's labels (transformers' classifiers' loss for
/// `single_label_classification`: the mean over the examples).
pub fn classification_loss(model: &PerceiverClassifier, batch: &ClassBatch) -> Result<BatchLoss> {
    let (loss, predicted) = scored(model, batch)?;
    let labels = batch.labels.to_vec1::<u32>()?;
    let correct = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
    Ok(BatchLoss { loss, correct })
}

/// A classifier's metrics on labelled texts or images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierEval {
    /// Mean cross-entropy over the examples, in nats.
    pub loss: f64,
    /// Fraction of examples whose most likely label is theirs.
    pub accuracy: f64,
    /// Examples evaluated.
    pub examples: usize,
    /// Label names in id order.
    pub labels: Vec<String>,
    /// `confusion[true][predicted]`: examples of each label by the label predicted.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates `examples` in batches of `batch_size` (no update); images are read with `images`.
pub fn evaluate_classifier(
    model: &PerceiverClassifier,
    examples: &[Example],
    batch_size: usize,
    labels: &[String],
    images: Option<&ImageProcessor>,
) -> Result<ClassifierEval> {
    if examples.is_empty() {
        return Err(Error::Options("nothing to evaluate".into()));
    }
    let n = labels.len();
    let mut confusion = vec![vec![0u64; n]; n];
    let mut total_loss = 0f64;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = ClassBatch::new(&refs, images, model.device())?;
        let (loss, predicted) = scored(model, &batch)?;
        total_loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
        for (example, &p) in chunk.iter().zip(&predicted) {
            if let Some(cell) = confusion
                .get_mut(example.label as usize)
                .and_then(|row| row.get_mut(p as usize))
            {
                *cell += 1;
            }
        }
    }
    let correct: u64 = (0..n).map(|i| confusion[i][i]).sum();
    Ok(ClassifierEval {
        loss: total_loss / examples.len() as f64,
        accuracy: correct as f64 / examples.len() as f64,
        examples: examples.len(),
        labels: labels.to_vec(),
        confusion,
    })
}

impl ClassifierEval {
    /// The confusion table as text: a row per true label, a column per predicted label, and
    /// each label's recall. Beyond [`TABLE_LABELS`] labels (an ImageNet classifier's 1,000) a
    /// line saying so instead: the table is in the evaluation's JSON.
    pub fn table(&self) -> String {
        if self.labels.len() > TABLE_LABELS {
            return format!(
                "({} labels: the confusion table is too wide to print; it is in the JSON)\n",
                self.labels.len()
            );
        }
        let header = "true \\ predicted";
        let first = self
            .labels
            .iter()
            .map(|l| l.chars().count())
            .chain([header.chars().count()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = self
            .labels
            .iter()
            .enumerate()
            .map(|(j, l)| {
                let most = self.confusion.iter().map(|row| row[j]).max().unwrap_or(0);
                l.chars().count().max(most.to_string().len())
            })
            .collect();
        let mut out = format!("{header:<first$}");
        for (label, width) in self.labels.iter().zip(&widths) {
            out.push_str(&format!("  {label:>width$}"));
        }
        out.push_str("  recall\n");
        for (i, label) in self.labels.iter().enumerate() {
            out.push_str(&format!("{label:<first$}"));
            for (count, width) in self.confusion[i].iter().zip(&widths) {
                out.push_str(&format!("  {count:>width$}"));
            }
            let total: u64 = self.confusion[i].iter().sum();
            let recall = match total {
                0 => "-".to_string(),
                _ => format!("{:.1}%", 100.0 * self.confusion[i][i] as f64 / total as f64),
            };
            out.push_str(&format!("  {recall:>6}\n"));
        }
        out
    }
}

/// The most labels whose confusion table [`ClassifierEval::table`] prints.
pub const TABLE_LABELS: usize = 30;

/// `eval.json`: a classifier's last evaluation in a run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalFile {
    /// The update after which it ran.
    pub step: u64,
    /// Its metrics and confusion table.
    #[serde(flatten)]
    pub result: ClassifierEval,
}

/// Writes `run_dir/eval.json`.
pub fn write_eval(run_dir: &Path, step: u64, result: &ClassifierEval) -> Result<()> {
    let path = run_dir.join(EVAL_FILE);
    let file = EvalFile {
        step,
        result: result.clone(),
    };
    let json = serde_json::to_string_pretty(&file).expect("evaluation serialises");
    crate::atomic::write(&path, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rows(labels: &[&str]) -> Vec<LabelledText> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| LabelledText {
                text: format!("text {i}"),
                label: l.to_string(),
                path: PathBuf::from("d.csv"),
                line: i as u64 + 2,
            })
            .collect()
    }

    #[test]
    fn texts_become_cls_bytes_sep_and_long_ones_are_cut() {
        assert_eq!(tokenize("ab", 10), (vec![4, 97 + 6, 98 + 6, 5], false));
        assert_eq!(tokenize("abcdef", 5), (vec![4, 97 + 6, 98 + 6, 99 + 6, 5], true));
        assert_eq!(tokenize("abc", 5), (vec![4, 103, 104, 105, 5], false));
    }

    #[test]
    fn labels_are_sorted_whatever_the_row_order() {
        assert_eq!(labels_of(&rows(&["fr", "en", "fr", "de"])), ["de", "en", "fr"]);
    }

    #[test]
    fn the_split_is_stratified_deterministic_and_keeps_order() {
        let data = rows(&["a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "b", "b", "c"]);
        let (train, eval) = split(data.clone(), 0.2, 7);
        let count = |rows: &[LabelledText], l: &str| rows.iter().filter(|r| r.label == l).count();
        assert_eq!(
            (count(&eval, "a"), count(&eval, "b"), count(&eval, "c")),
            (2, 1, 0)
        );
        assert_eq!(train.len() + eval.len(), data.len());
        assert!(eval.windows(2).all(|w| w[0].line < w[1].line));
        let (_, again) = split(data.clone(), 0.2, 7);
        assert_eq!(eval, again);
        let (_, other) = split(data.clone(), 0.2, 8);
        assert_ne!(eval, other, "the seed chooses");
        assert!(split(data, 0.0, 7).1.is_empty());
    }

    #[test]
    fn the_stream_permutes_each_epoch_and_resumes_exactly() {
        let mut stream = ExampleStream::new(5, 3);
        let drawn: Vec<usize> = (0..15).map(|_| stream.next_index()).collect();
        for epoch in drawn.chunks(5) {
            let mut sorted = epoch.to_vec();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3, 4]);
        }
        assert_ne!(drawn[..5], drawn[5..10]);
        let mut resumed = ExampleStream::new(5, 3);
        resumed.skip(7);
        let rest: Vec<usize> = (7..15).map(|_| resumed.next_index()).collect();
        assert_eq!(rest, drawn[7..]);
    }

    #[test]
    fn the_config_names_the_labels_both_ways() {
        let labels = vec!["de".to_string(), "en".to_string()];
        let config = classifier_config(&PerceiverConfig::default(), &labels).unwrap();
        assert_eq!(
            Architecture::of(&config).unwrap(),
            Architecture::SequenceClassification
        );
        assert_eq!(config_labels(&config).unwrap(), labels);
        assert_eq!(config.extra["label2id"], serde_json::json!({"de": 0, "en": 1}));
    }

    #[test]
    fn the_table_has_a_row_per_true_label() {
        let eval = ClassifierEval {
            loss: 0.5,
            accuracy: 0.75,
            examples: 8,
            labels: vec!["de".into(), "english".into()],
            confusion: vec![vec![3, 1], vec![1, 3]],
        };
        let table = eval.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("true \\ predicted") && lines[0].ends_with("recall"));
        assert!(
            lines[1].starts_with("de ") && lines[1].ends_with("75.0%"),
            "{table}"
        );
        assert!(lines[2].contains("english"));

        // An ImageNet classifier's table is not printed.
        let n = TABLE_LABELS + 1;
        let wide = ClassifierEval {
            labels: (0..n).map(|i| format!("label {i}")).collect(),
            confusion: vec![vec![0; n]; n],
            ..eval
        };
        assert_eq!(wide.table().lines().count(), 1, "{}", wide.table());
    }
}
