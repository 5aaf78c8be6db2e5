//! A Perceiver IO model: the five parts in a row, the same for every task —
//! preprocessor → encoder (cross-attend onto latents) → latent stack → decoder (queries
//! cross-attend the latents) → postprocessor (transformers' `PerceiverModel(config,
//! input_preprocessor, decoder, output_postprocessor)`; DeepMind's `PerceiverIO`).
//!
//! Which parts a checkpoint needs comes from its config's `architectures` ([`Architecture`]);
//! tasks ([`crate::tasks`]) sit on top and turn inputs and answers into the parts' arrays.

use std::ops::Range;

use crate::attention::{layer_flops, STREAM_BLOCK_ROWS};
use crate::checkpoint::names::{
    ClassifierNames, FlowNames, InputNames, MaskedLmNames, Modality, MultimodalNames,
};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::Param;
use crate::config::{Architecture, MultimodalSpec, PerceiverConfig};
use crate::decoder::{BasicDecoder, Decoder, FlowDecoder, MultimodalDecoder, MultimodalQueries};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::layers::Precision;
use crate::postprocess::{ClassifierHead, EmbeddingDecoder, FlowHead, MultimodalHeads, Postprocessor};
use crate::preprocess::{
    FlowPreprocessor, FramePair, ImagePreprocessor, InputArray, MultimodalInput, MultimodalPreprocessor,
    Pixels, Preprocessor, RowSource, TextPreprocessor,
};
use crate::process::LatentStack;
use crate::runtime::{on_pool, side_by_side};

/// Seconds each part of a forward pass took, in order, each with the part's name (see
/// [`PerceiverModel::optical_flow_timed`]).
pub type PhaseTimes = Vec<(&'static str, f64)>;

/// What a model reads: token ids (text models), images (image models), frame pairs (optical
/// flow) or videos with audio (multimodal autoencoding), a batch of them.
#[derive(Debug, Clone, Copy)]
pub enum ModelInput<'a> {
    /// Each text's ids, unpadded.
    Tokens(&'a [&'a [u32]]),
    /// Each image's normalised pixels.
    Images(&'a [&'a Pixels]),
    /// Pairs of frames of the flow model's tile size.
    FramePairs(&'a [&'a FramePair]),
    /// Videos with their audio, of the multimodal model's sizes.
    Videos(&'a [&'a MultimodalInput]),
}

impl ModelInput<'_> {
    /// Inputs in the batch.
    pub fn len(&self) -> usize {
        match self {
            Self::Tokens(texts) => texts.len(),
            Self::Images(images) => images.len(),
            Self::FramePairs(pairs) => pairs.len(),
            Self::Videos(videos) => videos.len(),
        }
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs `range` of the batch.
    fn slice(&self, range: Range<usize>) -> Self {
        match *self {
            Self::Tokens(texts) => Self::Tokens(&texts[range]),
            Self::Images(images) => Self::Images(&images[range]),
            Self::FramePairs(pairs) => Self::FramePairs(&pairs[range]),
            Self::Videos(videos) => Self::Videos(&videos[range]),
        }
    }
}

/// Queries the multimodal decoder runs at once: its memory beyond the answer is bounded by this
/// many queries (about 100 MB for the released model), however many are asked. The blocks share
/// the latents' keys and values, projected once a call of `decode_multimodal` (once a clip in
/// `autoencode`, and for an [`EncodedClip`]).
pub const QUERY_BLOCK: usize = 4096;

/// Each input's rows of the encoder's input, made on demand ([`Encoder::forward_streamed`]).
type RowSources<'a> = dyn FnMut(usize) -> Result<Box<dyn RowSource + 'a>> + 'a;

/// The most threads a pass splits its work for ([`PerceiverModel::set_threads`]; the kernels'
/// own bound): past the cores more only add overhead.
pub use perceiver_kernels::MAX_THREADS;

/// The most chunks [`PerceiverModel::autoencode`] cuts its queries into (the `perceiver` tool's
/// `--chunks` bound): each chunk is a pass of the decoder, so a count of 10¹⁸ would never end;
/// past the queries' count (804,736 for the released model) chunks are only empty.
pub const MAX_CHUNKS: usize = 1_000_000;

/// Some decoded queries of the multimodal autoencoder, in the order asked.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedQueries {
    /// `samples_per_patch` samples per audio query.
    pub audio: Vec<f32>,
    /// RGB per pixel query.
    pub image: Vec<f32>,
    /// The label's logits, when asked.
    pub label: Option<Vec<f32>>,
}

/// One video with its audio encoded by the multimodal autoencoder
/// ([`PerceiverModel::encode_clip`]): its latents, and the decoder's keys and values projected
/// from them, which every decoding of the clip reads ([`PerceiverModel::decode_clip`]), so that
/// a clip decoded in many calls (a service's chunks) projects them once.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedClip {
    latents: Vec<f32>,
    keys_values: Vec<f32>,
}

impl EncodedClip {
    /// The latents, `[num_latents, d_latents]`: what
    /// [`decode_multimodal`](PerceiverModel::decode_multimodal) also takes.
    pub fn latents(&self) -> &[f32] {
        &self.latents
    }
}

/// The multimodal autoencoder's whole reconstruction of one video with its audio.
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalOutput {
    /// Frames of the reconstructed video (`output_shape[1]`).
    pub frames: usize,
    /// Rows of each frame (`output_shape[2]`).
    pub height: usize,
    /// Columns of each frame (`output_shape[3]`).
    pub width: usize,
    /// `[frames, height, width, 3]` RGB (in the Colab's scale: about [0, 1]).
    pub image: Vec<f32>,
    /// The audio samples.
    pub audio: Vec<f32>,
    /// The label's logits (`num_labels`).
    pub label: Vec<f32>,
}

/// A Perceiver IO model on packed weights, ready to run.
#[derive(Debug, Clone)]
pub struct PerceiverModel {
    config: PerceiverConfig,
    architecture: Architecture,
    preprocessor: Preprocessor,
    encoder: Encoder,
    process: LatentStack,
    decoder: Decoder,
    postprocessor: Postprocessor,
    precision: Precision,
    threads: usize,
}

impl PerceiverModel {
    /// Builds the model `config` describes from tensors by transformers name, its weight products
    /// in `precision` from the start (in bf16 no f32 copy of the weights is packed on the way).
    /// Each tensor `get` returns must have the shape the config implies, else
    /// [`Error::ShapeMismatch`] (the loader, [`crate::Loader`], checks every name and shape
    /// before calling this; other callers' tensors are checked as they are read).
    pub fn from_params(
        config: &PerceiverConfig,
        get: &mut dyn FnMut(&str) -> Result<Param>,
        precision: Precision,
    ) -> Result<Self> {
        config.validate()?;
        let architecture = Architecture::of(config)?;
        let expected: std::collections::HashMap<String, Vec<usize>> =
            crate::checkpoint::tensor_list(config)?.into_iter().collect();
        let mut checked_get = |name: &str| -> Result<Param> {
            let param = get(name)?;
            match expected.get(name) {
                Some(shape) if shape.as_slice() != param.shape() => Err(Error::ShapeMismatch {
                    name: name.into(),
                    expected: shape.clone(),
                    found: param.shape().to_vec(),
                }),
                _ => Ok(param),
            }
        };
        let get: &mut dyn FnMut(&str) -> Result<Param> = &mut checked_get;
        let model = match architecture {
            Architecture::MaskedLm => {
                let names = MaskedLmNames::new(config);
                let text = TextPreprocessor::load(get, &names.preprocessor)?;
                let embeddings = text.embeddings().clone();
                Self {
                    config: config.clone(),
                    architecture,
                    preprocessor: Preprocessor::Text(text),
                    encoder: Encoder::load(get, &names.encoder)?,
                    process: LatentStack::load(get, config.num_blocks, &names.encoder.self_attends)?,
                    decoder: Decoder::Basic(BasicDecoder::load(get, &names.decoder)?),
                    postprocessor: Postprocessor::Embedding(EmbeddingDecoder::load(
                        get,
                        embeddings,
                        &names.output_bias,
                    )?),
                    precision,
                    threads: 0,
                }
            }
            Architecture::OpticalFlow => {
                let names = FlowNames::new(config);
                Self {
                    config: config.clone(),
                    architecture,
                    preprocessor: Preprocessor::Flow(FlowPreprocessor::load(
                        get,
                        config.flow_input(),
                        &names.patch_projection,
                    )?),
                    encoder: Encoder::load(get, &names.encoder)?,
                    process: LatentStack::load(get, config.num_blocks, &names.encoder.self_attends)?,
                    decoder: Decoder::Flow(FlowDecoder::load(get, &names.cross_attention)?),
                    postprocessor: Postprocessor::Flow(FlowHead::load(get, &names.final_layer)?),
                    precision,
                    threads: 0,
                }
            }
            Architecture::MultimodalAutoencoding => {
                let names = MultimodalNames::new(config)?;
                let spec = config.multimodal()?;
                Self {
                    config: config.clone(),
                    architecture,
                    preprocessor: Preprocessor::Multimodal(MultimodalPreprocessor::load(get, spec, &names)?),
                    encoder: Encoder::load(get, &names.encoder)?,
                    process: LatentStack::load(get, config.num_blocks, &names.encoder.self_attends)?,
                    decoder: Decoder::Multimodal(Box::new(MultimodalDecoder::load(get, spec, &names)?)),
                    postprocessor: Postprocessor::Multimodal(Box::new(MultimodalHeads::load(
                        get,
                        &names.heads,
                    )?)),
                    precision,
                    threads: 0,
                }
            }
            classifier => {
                let labels = config.num_labels()?.ok_or_else(|| {
                    Error::InvalidConfig(
                        "a classifier's config names its labels (id2label or num_labels)".into(),
                    )
                })?;
                let names = ClassifierNames::new(config, labels);
                let preprocessor = match (&names.preprocessor, config.image_input()) {
                    (InputNames::Text(text), _) => Preprocessor::Text(TextPreprocessor::load(get, text)?),
                    (InputNames::Image(image), Some(spec)) => {
                        Preprocessor::Image(ImagePreprocessor::load(get, spec, image, config.image_size())?)
                    }
                    (InputNames::Image(_), None) => {
                        return Err(Error::UnsupportedArchitecture {
                            name: classifier.name().into(),
                        })
                    }
                };
                Self {
                    config: config.clone(),
                    architecture,
                    preprocessor,
                    encoder: Encoder::load(get, &names.encoder)?,
                    process: LatentStack::load(get, config.num_blocks, &names.encoder.self_attends)?,
                    decoder: Decoder::Basic(BasicDecoder::load(get, &names.decoder.decoder)?),
                    postprocessor: Postprocessor::Classifier(ClassifierHead::load(
                        get,
                        &names.decoder.final_layer,
                    )?),
                    precision,
                    threads: 0,
                }
            }
        };
        Ok(model.with_precision(precision))
    }

    /// The model of a checked checkpoint, its weight products in `precision` (safetensors
    /// weights are read in place until packed).
    pub fn from_checkpoint(checkpoint: &Checkpoint, precision: Precision) -> Result<Self> {
        Self::from_params(checkpoint.config(), &mut |name| checkpoint.get(name), precision)
    }

    fn with_precision(mut self, precision: Precision) -> Self {
        self.apply_precision(precision);
        self
    }

    /// The config it was built from.
    pub fn config(&self) -> &PerceiverConfig {
        &self.config
    }

    /// The transformers class it implements.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The input part.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// The latent stack.
    pub fn process(&self) -> &LatentStack {
        &self.process
    }

    /// The output part.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The longest input (in ids, special tokens included) a text model (masked LM or text
    /// classifier) takes; 0 for every other model (images, frame pairs, video).
    pub fn max_len(&self) -> usize {
        match &self.preprocessor {
            Preprocessor::Text(text) => text.max_len(),
            Preprocessor::Image(_) | Preprocessor::Flow(_) | Preprocessor::Multimodal(_) => 0,
        }
    }

    /// The one size (height, width) of image a model takes, if it takes only one: the
    /// learned-position image classifier's `image_size` square (its positions cover a fixed
    /// grid), the optical-flow model's tile (`train_size`), the multimodal autoencoder's frames
    /// (`output_shape`'s sides; not its `image_size`, which is only the positions' top
    /// frequency). `None` for the Fourier and conv image classifiers, which take any size, and
    /// for text models.
    pub fn image_size(&self) -> Option<(usize, usize)> {
        match &self.preprocessor {
            Preprocessor::Image(image) => image.required_size(),
            Preprocessor::Flow(flow) => Some(flow.frame_size()),
            Preprocessor::Multimodal(m) => Some(m.spec().frame_size()),
            Preprocessor::Text(_) => None,
        }
    }

    /// The postprocessor's values per decoded row: the vocabulary of the masked LM, the labels
    /// of a classifier.
    pub fn num_outputs(&self) -> usize {
        self.postprocessor.outputs()
    }

    /// Number type of the weight products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Switches the weight products to `precision` (bf16 packs a bf16 copy of every weight
    /// matrix: half the f32 size).
    pub fn set_precision(&mut self, precision: Precision) {
        if precision != self.precision {
            self.apply_precision(precision);
        }
    }

    /// Packs every weight matrix for `precision`'s kernel (also on construction).
    fn apply_precision(&mut self, precision: Precision) {
        self.preprocessor.set_precision(precision);
        self.encoder.set_precision(precision);
        self.process.set_precision(precision);
        self.decoder.set_precision(precision);
        self.postprocessor.set_precision(precision);
        self.precision = precision;
    }

    /// Threads for one forward pass; 0 (the default) means rayon's pool size. More than
    /// [`MAX_THREADS`] (1024, the `perceiver` tool's `--threads` bound) is taken as that many.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.min(MAX_THREADS);
    }

    fn threads(&self) -> usize {
        if self.threads == 0 {
            rayon::current_num_threads()
        } else {
            self.threads
        }
    }

    /// Encodes each text (ids, no padding) into latents: `[texts · num_latents, d_latents]`,
    /// text `i`'s latents in rows `i·num_latents..`.
    pub fn encode(&self, texts: &[&[u32]]) -> Result<Vec<f32>> {
        self.encode_input(ModelInput::Tokens(texts))
    }

    /// Encodes each input into latents: `[inputs · num_latents, d_latents]`, input `i`'s
    /// latents in rows `i·num_latents..`.
    pub fn encode_input(&self, input: ModelInput<'_>) -> Result<Vec<f32>> {
        on_pool(|| {
            self.batched(input.len(), |items, threads| {
                self.encode_on(input.slice(items), threads)
            })
        })
    }

    /// `pass(items, threads)` over a batch of `count` inputs, on the pool, the results
    /// concatenated in input order. Whole rounds of inputs run side by side, each input's pass
    /// alone on one thread: a pass on one thread needs no fork, join or wait between its ops,
    /// and its products keep their operands in their own core's caches, which makes it faster
    /// per input than one pass over a batch on all of them (the latent stack, most of an
    /// input's work, is the same for every input, so the threads finish together). What is
    /// left over, fewer inputs than threads, runs as one pass on all of them. On the packed
    /// kernels a text's result is the same either way, bit for bit (the parity tests check it).
    fn batched(
        &self,
        count: usize,
        pass: impl Fn(Range<usize>, usize) -> Result<Vec<f32>> + Sync,
    ) -> Result<Vec<f32>> {
        let threads = self.threads();
        let one_per_thread = if threads > 1 { count - count % threads } else { 0 };
        let mut out = Vec::new();
        for item in side_by_side(one_per_thread, threads, |i| pass(i..i + 1, 1)) {
            out.extend(item?);
        }
        if one_per_thread < count {
            out.extend(pass(one_per_thread..count, threads)?);
        }
        Ok(out)
    }

    /// [`encode_input`](Self::encode_input) on `threads` threads, already on the pool.
    fn encode_on(&self, input: ModelInput<'_>, threads: usize) -> Result<Vec<f32>> {
        let z = self.cross_attend(input, threads)?;
        let n = self.encoder.num_latents();
        Ok(self.process.forward(z, n, input.len(), threads))
    }

    /// The preprocessor and the encoder's cross-attention: each input onto the learned
    /// latents, before the latent stack.
    fn cross_attend(&self, input: ModelInput<'_>, threads: usize) -> Result<Vec<f32>> {
        match self.row_sources(input, threads)? {
            Some(mut sources) => {
                self.encoder
                    .forward_streamed(input.len(), &mut *sources, STREAM_BLOCK_ROWS, threads)
            }
            None => {
                let array = self.preprocess(input, threads)?;
                Ok(self.encoder.forward(&array, threads))
            }
        }
    }

    /// The row sources the encoder streams `input` from, input by input, every input checked
    /// first; `None` for inputs attended whole (text). An image's rows (50,176 at 224×224), a
    /// flow tile's (182,528) or a clip's (52,097), their keys and values would be most of the
    /// memory a pass needs: they are made and attended a block at a time.
    fn row_sources<'a>(
        &'a self,
        input: ModelInput<'a>,
        threads: usize,
    ) -> Result<Option<Box<RowSources<'a>>>> {
        Ok(Some(match (&self.preprocessor, input) {
            (Preprocessor::Image(preprocessor), ModelInput::Images(images)) => {
                preprocessor.check(images)?;
                Box::new(move |i| Ok(Box::new(preprocessor.rows(images[i], threads)?)))
            }
            (Preprocessor::Flow(preprocessor), ModelInput::FramePairs(pairs)) => {
                pairs.iter().try_for_each(|pair| preprocessor.check(pair))?;
                Box::new(move |i| Ok(Box::new(preprocessor.rows(pairs[i], threads)?)))
            }
            (Preprocessor::Multimodal(preprocessor), ModelInput::Videos(videos)) => {
                videos.iter().try_for_each(|video| preprocessor.check(video))?;
                Box::new(move |i| Ok(Box::new(preprocessor.rows(videos[i])?)))
            }
            _ => return Ok(None),
        }))
    }

    /// The preprocessor: each input → its rows of the encoder's input array.
    fn preprocess(&self, input: ModelInput<'_>, threads: usize) -> Result<InputArray> {
        let reads = match &self.preprocessor {
            Preprocessor::Text(text) => match input {
                ModelInput::Tokens(texts) => return text.forward(texts),
                _ => "text",
            },
            Preprocessor::Image(image) => match input {
                ModelInput::Images(images) => return image.forward(images, threads),
                _ => "images",
            },
            Preprocessor::Flow(flow) => match input {
                ModelInput::FramePairs(pairs) => return flow.forward(pairs, threads),
                _ => "pairs of frames",
            },
            Preprocessor::Multimodal(m) => match input {
                ModelInput::Videos(videos) => return m.forward(videos),
                _ => "videos with audio",
            },
        };
        let given = match input {
            ModelInput::Tokens(_) => "text",
            ModelInput::Images(_) => "images",
            ModelInput::FramePairs(_) => "pairs of frames",
            ModelInput::Videos(_) => "videos with audio",
        };
        Err(Error::InvalidInput(format!(
            "{} reads {reads}, not {given}",
            self.architecture.name()
        )))
    }

    /// The optical-flow model's output for each pair of frames of its tile size
    /// ([`image_size`](Self::image_size)): `[pairs, height · width, 2]`, (u, v) per pixel, as
    /// transformers' `PerceiverForOpticalFlow` logits (already divided by its
    /// `rescale_factor`; DeepMind's Colab multiplies them by 20 for pixels).
    pub fn optical_flow(&self, pairs: &[&FramePair]) -> Result<Vec<f32>> {
        self.optical_flow_timed(pairs).map(|(flow, _)| flow)
    }

    /// [`optical_flow`](Self::optical_flow), with the seconds each part of the pass took, in
    /// order: where the time goes (the bench prints it).
    pub fn optical_flow_timed(&self, pairs: &[&FramePair]) -> Result<(Vec<f32>, PhaseTimes)> {
        let Decoder::Flow(decoder) = &self.decoder else {
            return Err(Error::InvalidInput(format!(
                "{} is not an optical-flow model",
                self.architecture.name()
            )));
        };
        on_pool(|| {
            let threads = self.threads();
            let mut phases = Vec::with_capacity(4);
            let mut clock = std::time::Instant::now();
            let mut lap = |phase: &'static str| {
                phases.push((phase, clock.elapsed().as_secs_f64()));
                clock = std::time::Instant::now();
            };
            let Preprocessor::Flow(preprocessor) = &self.preprocessor else {
                unreachable!("a flow decoder comes with a flow preprocessor")
            };
            let rows = pairs
                .iter()
                .map(|pair| preprocessor.rows(pair, threads))
                .collect::<Result<Vec<_>>>()?;
            lap("preprocess (patches and their projection)");
            // The input array is never whole: the encoder makes it a block at a time (with its
            // normed copy, keys and values), the decoder a chunk of queries at a time.
            let z = self.encoder.forward_streamed(
                pairs.len(),
                &mut |i| Ok(Box::new(&rows[i])),
                STREAM_BLOCK_ROWS,
                threads,
            )?;
            lap("encoder cross-attention (latents over pixels)");
            let n = self.encoder.num_latents();
            let latents = self.process.forward(z, n, pairs.len(), threads);
            lap("latent self-attention stack");
            // Each chunk of decoded rows is projected onto (u, v) as soon as it is made.
            let project = |hidden: Vec<f32>| self.postprocessor.forward(&hidden, threads);
            let queries: Vec<&dyn RowSource> = rows.iter().map(|r| r as &dyn RowSource).collect();
            let flow = decoder.forward(&latents, n, &queries, threads, &project)?;
            lap("decoder cross-attention and final projection (pixels over latents)");
            Ok((flow, phases))
        })
    }

    /// The multimodal autoencoder's sizes; an error for other models.
    pub fn multimodal_spec(&self) -> Result<&MultimodalSpec> {
        self.multimodal_parts()
            .map(|(preprocessor, _, _)| preprocessor.spec())
    }

    fn multimodal_parts(&self) -> Result<(&MultimodalPreprocessor, &MultimodalDecoder, &MultimodalHeads)> {
        match (&self.preprocessor, &self.decoder, &self.postprocessor) {
            (Preprocessor::Multimodal(p), Decoder::Multimodal(d), Postprocessor::Multimodal(h)) => {
                Ok((p, d, h))
            }
            _ => Err(Error::InvalidInput(format!(
                "{} is not a multimodal autoencoder",
                self.architecture.name()
            ))),
        }
    }

    /// Encodes one video with its audio into latents, `[num_latents, d_latents]`: what
    /// [`decode_multimodal`](Self::decode_multimodal) decodes any queries from. The label row
    /// is the model's mask token (its `mask_probs` mask the label always), so no label is taken.
    pub fn encode_multimodal(&self, input: &MultimodalInput) -> Result<Vec<f32>> {
        self.multimodal_parts()?;
        self.encode_input(ModelInput::Videos(&[input]))
    }

    /// Decodes `queries` from one video's latents (as [`encode_multimodal`](Self::encode_multimodal)
    /// returns them): transformers' `PerceiverForMultimodalAutoencoding` logits with those
    /// `subsampled_output_points`. Each query is independent of the others, so decoding a set in
    /// pieces gives the same values as decoding it at once; the work runs in blocks of
    /// [`QUERY_BLOCK`] queries, so that memory beyond the answer itself does not grow with the
    /// number of queries.
    pub fn decode_multimodal(&self, latents: &[f32], queries: &MultimodalQueries) -> Result<DecodedQueries> {
        let (preprocessor, decoder, _) = self.multimodal_parts()?;
        let (n, d) = (self.encoder.num_latents(), self.encoder.d_latents());
        if latents.len() != n * d {
            return Err(Error::InvalidInput(format!(
                "{} latent values are not one video's {n}x{d}",
                latents.len()
            )));
        }
        queries.check(preprocessor.spec())?;
        on_pool(|| {
            let threads = self.threads();
            self.decode_multimodal_onto(&decoder.keys_values(latents, threads), queries, threads)
        })
    }

    /// Encodes one video with its audio ([`encode_multimodal`](Self::encode_multimodal)) and
    /// projects the decoder's keys and values of its latents, for
    /// [`decode_clip`](Self::decode_clip).
    pub fn encode_clip(&self, input: &MultimodalInput) -> Result<EncodedClip> {
        let (_, decoder, _) = self.multimodal_parts()?;
        on_pool(|| {
            let latents = self.encode_multimodal(input)?;
            let keys_values = decoder.keys_values(&latents, self.threads());
            Ok(EncodedClip { latents, keys_values })
        })
    }

    /// [`decode_multimodal`](Self::decode_multimodal) of a clip [`encode_clip`](Self::encode_clip)
    /// encoded (with this model: one of another layout is an error), over the keys and values
    /// projected there: the same values.
    pub fn decode_clip(&self, clip: &EncodedClip, queries: &MultimodalQueries) -> Result<DecodedQueries> {
        let (preprocessor, decoder, _) = self.multimodal_parts()?;
        let n = self.encoder.num_latents();
        let widths = (self.encoder.d_latents(), decoder.keys_values_width());
        if clip.latents.len() != n * widths.0 || clip.keys_values.len() != n * widths.1 {
            return Err(Error::InvalidInput(format!(
                "a clip of {} latent values and {} keys and values is not one encoded by this model \
                 ({n} latents of {} channels, {} of keys and values)",
                clip.latents.len(),
                clip.keys_values.len(),
                widths.0,
                widths.1
            )));
        }
        queries.check(preprocessor.spec())?;
        on_pool(|| self.decode_multimodal_onto(&clip.keys_values, queries, self.threads()))
    }

    /// [`decode_multimodal`](Self::decode_multimodal) from the decoder's keys and values of the
    /// latents (projected once for every block of queries, and every chunk of a clip), on
    /// `threads` threads, already on the pool; `queries` already checked.
    fn decode_multimodal_onto(
        &self,
        keys_values: &[f32],
        queries: &MultimodalQueries,
        threads: usize,
    ) -> Result<DecodedQueries> {
        let (preprocessor, decoder, heads) = self.multimodal_parts()?;
        let spec = preprocessor.spec();
        let n = self.encoder.num_latents();
        let decode = |modality: Modality, audio: &[usize], image: &[usize], label: bool| {
            let rows = decoder.queries(audio, image, label)?;
            let hidden = decoder.forward(keys_values, n, &rows, threads);
            Ok::<_, Error>(heads.forward(modality, &hidden, threads))
        };
        let mut out = DecodedQueries {
            audio: Vec::with_capacity(queries.audio.len() * spec.samples_per_patch),
            image: Vec::with_capacity(queries.image.len() * crate::config::IMAGE_CHANNELS),
            label: None,
        };
        for block in queries.audio.chunks(QUERY_BLOCK) {
            out.audio.extend(decode(Modality::Audio, block, &[], false)?);
        }
        for block in queries.image.chunks(QUERY_BLOCK) {
            out.image.extend(decode(Modality::Image, &[], block, false)?);
        }
        if queries.label {
            out.label = Some(decode(Modality::Label, &[], &[], true)?);
        }
        Ok(out)
    }

    /// Autoencodes one video with its audio, as DeepMind's Colab does: encodes once, then
    /// decodes every query in `chunks` chunks ([`MultimodalQueries::chunk`]; the Colab uses 128),
    /// 1 to [`MAX_CHUNKS`]. Memory beyond the answer does not grow with the number of queries
    /// (see [`decode_multimodal`](Self::decode_multimodal)); `chunks` only sets how the work is
    /// cut.
    pub fn autoencode(&self, input: &MultimodalInput, chunks: usize) -> Result<MultimodalOutput> {
        let spec = *self.multimodal_spec()?;
        check_chunks(chunks)?;
        let chunks = chunks.min(spec.most_chunks());
        on_pool(|| {
            let clip = self.encode_clip(input)?;
            let threads = self.threads();
            let [frames, height, width] = spec.output_dims;
            let mut out = MultimodalOutput {
                frames,
                height,
                width,
                image: Vec::with_capacity(spec.image_queries() * crate::config::IMAGE_CHANNELS),
                audio: Vec::with_capacity(spec.audio_samples()),
                label: Vec::new(),
            };
            // The chunks are consecutive ranges: their outputs follow each other.
            for index in 0..chunks {
                let queries = MultimodalQueries::chunk(&spec, index, chunks);
                let decoded = self.decode_multimodal_onto(&clip.keys_values, &queries, threads)?;
                out.image.extend(decoded.image);
                out.audio.extend(decoded.audio);
                if let Some(label) = decoded.label {
                    out.label = label;
                }
            }
            Ok(out)
        })
    }

    /// A classifier's label logits for each input: `[inputs, num_labels]` (transformers'
    /// `PerceiverClassifierOutput.logits`).
    pub fn classify(&self, input: ModelInput<'_>) -> Result<Vec<f32>> {
        if !self.architecture.is_classifier() {
            return Err(Error::InvalidInput(format!(
                "{} is not a classifier",
                self.architecture.name()
            )));
        }
        on_pool(|| {
            let latents = self.encode_input(input)?;
            // One query per input, its only output position, decoded input by input: the
            // decoder's keys and values of a whole batch's latents would be much of the batch's
            // peak memory for one query each.
            let (n, d) = (self.encoder.num_latents(), self.encoder.d_latents());
            let mut logits = Vec::new();
            for item in latents.chunks(n * d) {
                logits.extend(self.decode(item, &[&[0usize][..]])?);
            }
            Ok(logits)
        })
    }

    /// The model's outputs at the given output positions of each encoded text:
    /// `[Σ positions, outputs]` (logits for the masked LM), text `i`'s rows after those of the
    /// texts before it.
    pub fn decode(&self, latents: &[f32], positions: &[&[usize]]) -> Result<Vec<f32>> {
        let (n, d) = (self.encoder.num_latents(), self.encoder.d_latents());
        if latents.len() != positions.len() * n * d {
            return Err(Error::InvalidInput(format!(
                "{} latent values for {} texts of {n}x{d}",
                latents.len(),
                positions.len()
            )));
        }
        on_pool(|| self.decode_on(latents, positions, self.threads()))
    }

    /// [`decode`](Self::decode) on `threads` threads, already on the pool.
    fn decode_on(&self, latents: &[f32], positions: &[&[usize]], threads: usize) -> Result<Vec<f32>> {
        let n = self.encoder.num_latents();
        let hidden = self.decoder.forward(latents, n, positions, threads)?;
        Ok(self.postprocessor.forward(&hidden, threads))
    }

    /// Encodes the texts and decodes the given positions of each: `[Σ positions, outputs]`.
    pub fn logits_at(&self, texts: &[&[u32]], positions: &[&[usize]]) -> Result<Vec<f32>> {
        if texts.len() != positions.len() {
            return Err(Error::InvalidInput(format!(
                "{} texts but {} position lists",
                texts.len(),
                positions.len()
            )));
        }
        // One hop onto the pool for all of it; each text's pass encodes and decodes it.
        on_pool(|| {
            self.batched(texts.len(), |items, threads| {
                let latents = self.encode_on(ModelInput::Tokens(&texts[items.clone()]), threads)?;
                self.decode_on(&latents, &positions[items], threads)
            })
        })
    }

    /// What transformers' `PerceiverForMaskedLM` returns for one unpadded text: outputs at every
    /// output position, `[num_outputs, outputs]`.
    pub fn logits_all(&self, text: &[u32]) -> Result<Vec<f32>> {
        let all: Vec<usize> = (0..self.decoder.num_outputs()).collect();
        self.logits_at(&[text], &[&all])
    }

    /// Runs latent self-attention layer `index` (of `num_self_attends_per_block`; every block
    /// repeats the same layers) over `latents`, `[texts · num_latents, d_latents]` as
    /// [`encode`](Self::encode) returns them: one step of the latent stack, for timing one layer
    /// and for inspecting it. As in the stack, the layer's residuals are added onto `latents`
    /// themselves, which it returns.
    pub fn latent_layer(&self, index: usize, latents: Vec<f32>) -> Result<Vec<f32>> {
        let (n, d) = (self.encoder.num_latents(), self.encoder.d_latents());
        if latents.is_empty() || !latents.len().is_multiple_of(n * d) {
            return Err(Error::InvalidInput(format!(
                "{} latent values are not texts of {n}x{d}",
                latents.len()
            )));
        }
        let items = latents.len() / (n * d);
        on_pool(|| self.process.layer(index, latents, n, items, self.threads()))
    }

    /// Multiply-add work (2 FLOP each) of the matrix products of one masked-LM forward pass over
    /// texts of `input_lens` tokens with `output_counts` decoded positions each: what a speed in
    /// GFLOP/s is measured against. The decoder's query projection is not part of it: it is
    /// computed once at load ([`reference_flops`](Self::reference_flops) counts it). `None` for
    /// a model that is not a masked LM (its decoder and output are not the vocabulary's).
    pub fn forward_flops(&self, input_lens: &[usize], output_counts: &[usize]) -> Option<f64> {
        let decoder = self.config.masked_lm_decoder_spec();
        let projection = decoder.q_dim as f64 * decoder.qk_channels as f64;
        let outputs: f64 = output_counts.iter().map(|&n| n as f64).sum();
        Some(self.reference_flops(input_lens, output_counts)? - 2.0 * projection * outputs)
    }

    /// [`forward_flops`](Self::forward_flops) for an implementation that projects the decoder's
    /// queries in every pass, as transformers does: its pass over a padded batch is this with
    /// every length set to the padded length and every count to `max_len()`. `None` for a model
    /// that is not a masked LM.
    pub fn reference_flops(&self, input_lens: &[usize], output_counts: &[usize]) -> Option<f64> {
        if self.architecture != Architecture::MaskedLm {
            return None;
        }
        let c = &self.config;
        let latents = c.num_latents;
        let mut total = 0.0;
        for (&len, &outputs) in input_lens.iter().zip(output_counts) {
            total += layer_flops(&c.encoder_cross_attention_spec(), latents, len);
            total += (c.num_blocks * c.num_self_attends_per_block) as f64
                * layer_flops(&c.self_attention_spec(), latents, latents);
            total += layer_flops(&c.masked_lm_decoder_spec(), outputs, latents);
            // In f64: `outputs` is the caller's, its product with the widths may overflow usize.
            total += 2.0 * outputs as f64 * (c.d_model * c.vocab_size) as f64;
        }
        Some(total)
    }

    /// The multiply-add work (2 FLOP each) of one [`optical_flow`](Self::optical_flow) pass
    /// over one pair: the patch projection, the encoder over every pixel, the latent stack, the
    /// decoder from every pixel and the final projection. `None` for a model that is not an
    /// optical-flow model.
    pub fn optical_flow_flops(&self) -> Option<f64> {
        if self.architecture != Architecture::OpticalFlow {
            return None;
        }
        let c = &self.config;
        let [h, w] = c.train_size().unwrap_or(crate::config::DEFAULT_TRAIN_SIZE);
        let (pixels, latents) = (h * w, c.num_latents);
        let channels = c.input_channels();
        Some(
            2.0 * (pixels * crate::config::FLOW_PATCH_CHANNELS * crate::config::FLOW_FEATURES) as f64
                + layer_flops(&c.encoder_cross_attention_spec(), latents, pixels)
                + (c.num_blocks * c.num_self_attends_per_block) as f64
                    * layer_flops(&c.self_attention_spec(), latents, latents)
                + layer_flops(&c.flow_decoder_spec(), pixels, latents)
                + 2.0 * (pixels * channels * 2) as f64,
        )
    }

    /// The multiply-add work (2 FLOP each) of [`latent_layer`](Self::latent_layer) over `texts`
    /// inputs (of any model: every architecture's latent layers are alike): its six weight
    /// products and the attention's two.
    pub fn latent_layer_flops(&self, texts: usize) -> f64 {
        let n = self.config.num_latents;
        texts as f64 * layer_flops(&self.config.self_attention_spec(), n, n)
    }
}

/// Errors unless `chunks` is 1 to [`MAX_CHUNKS`].
pub(crate) fn check_chunks(chunks: usize) -> Result<()> {
    if !(1..=MAX_CHUNKS).contains(&chunks) {
        return Err(Error::InvalidInput(format!(
            "autoencoding needs at least one chunk and at most {MAX_CHUNKS}, not {chunks}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Architecture;
    use crate::Loader;

    fn fixture_model(name: &str) -> PerceiverModel {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity")
            .join(name);
        Loader::new(dir.to_str().unwrap()).load().unwrap()
    }

    /// The encoder's latents after its cross-attention, then each latent layer by
    /// `latent_layer`, block after block, give `encode`'s latents bit for bit (two texts of
    /// different lengths; a fixture with three blocks of two layers).
    #[test]
    fn latent_layers_in_turn_give_the_encoders_latents() {
        let model = fixture_model("tiny_shared_blocks");
        assert!(model.process.blocks() > 1 && model.process.layers_per_block() > 1);
        let texts: [&[u32]; 2] = [&[1, 70, 80, 90, 2], &[1, 100, 101, 2]];
        let encoded = model.encode(&texts).unwrap();
        let mut z = on_pool(|| model.cross_attend(ModelInput::Tokens(&texts), model.threads())).unwrap();
        for _ in 0..model.process.blocks() {
            for index in 0..model.process.layers_per_block() {
                z = model.latent_layer(index, z).unwrap();
            }
        }
        assert_eq!(z, encoded);
    }

    /// The largest difference of `got` from `expected`, relative to the value where it is over 1.
    fn worst_difference(expected: &[f32], got: &[f32]) -> f32 {
        assert_eq!(got.len(), expected.len());
        expected
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
            .fold(0f32, f32::max)
    }

    /// The encoder's cross-attention a block of rows at a time (any block size, several heads
    /// or one, a query residual or none) equals the whole one up to rounding.
    #[test]
    fn a_cross_attention_in_blocks_equals_the_whole_one() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let text: Vec<u32> = (1..45).map(|i| (i * 37 % 250) as u32 + 6).collect();
        let texts: [&[u32]; 2] = [&text, &text[..23]];
        // In bf16 both run their scores and weighted sums on the bf16 kernel (on `vdpbf16ps` and
        // AMX the whole one fused; on `vdpbf16ps` the blocks fused too, whatever the heads'
        // widths), rounding different values (each block's exponentials against its own running
        // maximum): their difference is bf16's rounding (8 bits of mantissa), far below a wrong
        // softmax's.
        let cases = [
            ("parity/tiny_shared_blocks", Precision::F32),
            ("classification/tiny_image_fourier", Precision::F32),
            ("classification/tiny_image_conv", Precision::F32),
            ("classification/tiny_image_learned", Precision::F32),
            ("parity/tiny_shared_blocks", Precision::Bf16),
            ("classification/tiny_image_fourier", Precision::Bf16),
        ];
        for (name, precision) in cases {
            let tolerance = match precision {
                Precision::F32 => 1e-5,
                Precision::Bf16 => 3e-2,
            };
            let mut model = Loader::new(fixtures.join(name).to_str().unwrap())
                .precision(precision)
                .load()
                .unwrap();
            // The fixtures' heads are narrow: let the blocks' unfused bf16 path (AMX, or blocks
            // over more keys than a fused head takes) run on them.
            model.encoder.set_bf16_min_head_width(1);
            let (height, width) = match &model.preprocessor {
                Preprocessor::Image(image) => image.required_size().unwrap_or((20, 24)),
                _ => (0, 0),
            };
            let image = Pixels {
                values: (0..3 * height * width)
                    .map(|i| ((i * 7919) % 255) as f32 / 64.0 - 2.0)
                    .collect(),
                height,
                width,
            };
            let images = [&image, &image];
            let input = match height {
                0 => ModelInput::Tokens(&texts),
                _ => ModelInput::Images(&images),
            };
            let array = model.preprocess(input, model.threads()).unwrap();
            let whole = on_pool(|| model.encoder.forward(&array, 2));
            for block_rows in [1, 7, 64, 100_000] {
                let streamed = on_pool(|| {
                    model.encoder.forward_streamed(
                        array.items.len(),
                        &mut |i| Ok(Box::new(array.item_rows(i))),
                        block_rows,
                        2,
                    )
                })
                .unwrap();
                let worst = worst_difference(&whole, &streamed);
                println!("{name} {precision:?}, blocks of {block_rows} rows: worst difference {worst:.2e}");
                assert!(
                    worst < tolerance,
                    "{name} {precision:?}, blocks of {block_rows}: {worst}"
                );
            }
        }
    }

    /// The flow model's and the multimodal autoencoder's encoders stream their inputs' rows
    /// from the preprocessors' row sources (`FlowRows`, `MultimodalRows`), a block at a time:
    /// in blocks of any size, and as `encode_input`'s pass runs them, that is the cross-attention
    /// of the whole array the preprocessors make, up to rounding.
    #[test]
    fn streamed_flow_and_multimodal_inputs_equal_their_whole_arrays() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for name in ["flow/tiny_flow", "multimodal/tiny_multimodal"] {
            let model = Loader::new(fixtures.join(name).to_str().unwrap()).load().unwrap();
            let (height, width) = model.image_size().unwrap();
            let frame = |seed: usize| {
                let values = (0..3 * height * width)
                    .map(|i| ((i * 7919 + seed) % 255) as f32 / 255.0)
                    .collect();
                Pixels::new(height, width, values).unwrap()
            };
            let pairs = [
                FramePair::new(frame(1), frame(2)).unwrap(),
                FramePair::new(frame(3), frame(4)).unwrap(),
            ];
            let pairs = [&pairs[0], &pairs[1]];
            let videos = match &model.preprocessor {
                Preprocessor::Multimodal(m) => {
                    let s = m.spec();
                    let audio = (0..s.audio_samples()).map(|i| (i as f32 * 0.37).sin()).collect();
                    vec![MultimodalInput::new((0..s.num_frames).map(frame).collect(), audio).unwrap()]
                }
                _ => Vec::new(),
            };
            let videos: Vec<&MultimodalInput> = videos.iter().collect();
            let input = match videos.is_empty() {
                true => ModelInput::FramePairs(&pairs),
                false => ModelInput::Videos(&videos),
            };
            let threads = model.threads();
            let array = model.preprocess(input, threads).unwrap();
            let whole = on_pool(|| model.encoder.forward(&array, threads));
            let passed = on_pool(|| model.cross_attend(input, threads)).unwrap();
            for block_rows in [1, 7, 100, STREAM_BLOCK_ROWS] {
                let streamed = on_pool(|| {
                    let mut sources = model.row_sources(input, threads)?.expect("streamed inputs");
                    model
                        .encoder
                        .forward_streamed(input.len(), &mut *sources, block_rows, threads)
                })
                .unwrap();
                let worst = worst_difference(&whole, &streamed);
                println!("{name}, blocks of {block_rows} rows: worst difference {worst:.2e}");
                assert!(worst < 1e-5, "{name}, blocks of {block_rows}: {worst}");
                if block_rows == STREAM_BLOCK_ROWS {
                    // The whole array's softmax rounds differently: equal to the streamed values
                    // and not to those, the pass is known to stream.
                    assert_eq!(passed, streamed, "{name}: encode_input's pass streams its rows");
                    assert_ne!(
                        passed, whole,
                        "{name}: the paths round alike and cannot be told apart"
                    );
                }
            }
        }
    }

    /// A clip decoded over the keys and values `encode_clip` projected once gives what decoding
    /// its latents gives, bit for bit; a clip whose sizes are not this model's is refused.
    #[test]
    fn an_encoded_clip_decodes_as_its_latents_do() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/multimodal/tiny_multimodal");
        let model = Loader::new(dir.to_str().unwrap()).load().unwrap();
        let spec = *model.multimodal_spec().unwrap();
        let (height, width) = model.image_size().unwrap();
        let frame = |seed: usize| {
            let values = (0..3 * height * width)
                .map(|i| ((i * 31 + seed * 17) % 255) as f32 / 255.0)
                .collect();
            Pixels::new(height, width, values).unwrap()
        };
        let audio = (0..spec.audio_samples())
            .map(|i| (i as f32 * 0.21).cos())
            .collect();
        let input = MultimodalInput::new((0..spec.num_frames).map(frame).collect(), audio).unwrap();
        let clip = model.encode_clip(&input).unwrap();
        assert_eq!(clip.latents(), model.encode_multimodal(&input).unwrap());
        let queries = MultimodalQueries::all(&spec);
        let decoded = model.decode_clip(&clip, &queries).unwrap();
        assert_eq!(
            decoded,
            model.decode_multimodal(clip.latents(), &queries).unwrap()
        );
        assert!(decoded.label.is_some() && !decoded.image.is_empty() && !decoded.audio.is_empty());
        for wrong in [
            EncodedClip {
                latents: clip.latents[1..].to_vec(),
                ..clip.clone()
            },
            EncodedClip {
                keys_values: clip.keys_values[1..].to_vec(),
                ..clip.clone()
            },
        ] {
            let err = model.decode_clip(&wrong, &queries).unwrap_err().to_string();
            assert!(err.contains("not one encoded by this model"), "{err}");
        }
    }

    /// The latent stack over a batch in groups of items (one, two, or all at once) gives every
    /// item's latents as the whole batch does.
    #[test]
    fn the_latent_stack_in_groups_equals_the_whole_batch() {
        let model = fixture_model("tiny_shared_blocks");
        let texts: [&[u32]; 5] = [
            &[1, 70, 80, 90, 2],
            &[1, 100, 2],
            &[1, 5, 6, 7, 8, 9, 2],
            &[1, 2],
            &[1, 50, 60, 2],
        ];
        let z = on_pool(|| model.cross_attend(ModelInput::Tokens(&texts), model.threads())).unwrap();
        let n = model.encoder.num_latents();
        let run = |group_rows| {
            on_pool(|| {
                model
                    .process
                    .forward_in_groups(z.clone(), n, texts.len(), group_rows, 2)
            })
        };
        let whole = run(usize::MAX);
        for group_rows in [1, n, 2 * n, 3 * n + 1] {
            let grouped = run(group_rows);
            let worst = whole
                .iter()
                .zip(&grouped)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                grouped.len() == whole.len() && worst <= 1e-6,
                "groups of {group_rows} rows: {worst}"
            );
        }
    }

    /// Tensors handed to `from_params` with shapes other than the config's are an error, not a
    /// panic in the layer that reads them: a weight of one dimension, one of another width, a
    /// bias of the wrong length.
    #[test]
    fn from_params_refuses_tensors_of_other_shapes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity/tiny_shared_blocks");
        let checkpoint = Loader::new(dir.to_str().unwrap()).checkpoint().unwrap();
        let config = checkpoint.config().clone();
        assert!(
            PerceiverModel::from_params(&config, &mut |name| checkpoint.get(name), Precision::F32).is_ok()
        );
        let tensors = crate::checkpoint::expected_tensors(&config).unwrap();
        let weight = tensors
            .iter()
            .find(|(name, shape)| name.ends_with(".weight") && shape.len() == 2);
        let bias = tensors.iter().find(|(name, _)| name.ends_with("query.bias"));
        let (weight, bias) = (&weight.unwrap().0, &bias.unwrap().0);
        for (target, shape) in [(weight, vec![6]), (weight, vec![2, 3]), (bias, vec![5])] {
            let mut get = |name: &str| match name == target.as_str() {
                true => Param::owned(vec![0.5; shape.iter().product()], shape.clone()),
                false => checkpoint.get(name),
            };
            let result = PerceiverModel::from_params(&config, &mut get, Precision::F32);
            assert!(
                matches!(&result, Err(Error::ShapeMismatch { name, found, .. }) if name == target && *found == shape),
                "{target} as {shape:?}: {:?}",
                result.map(|_| ())
            );
        }
    }

    /// A thread count beyond any machine (it overflowed the kernels' work splits) is taken as
    /// `MAX_THREADS`, and the answer is the one-thread answer.
    #[test]
    fn any_thread_count_runs() {
        let mut model = fixture_model("tiny_shared_blocks");
        let texts: [&[u32]; 3] = [&[1, 70, 80, 90, 2], &[1, 100, 2], &[1, 5, 6, 2]];
        model.set_threads(1);
        let one = model.logits_at(&texts, &[&[1], &[0, 2], &[3]]).unwrap();
        model.set_threads(usize::MAX);
        assert_eq!(model.threads(), MAX_THREADS);
        let many = model.logits_at(&texts, &[&[1], &[0, 2], &[3]]).unwrap();
        assert_eq!(one, many);
    }

    /// The flop counts are a masked LM's (or a flow model's) formula: other models get `None`,
    /// not a number from a formula that is not theirs.
    #[test]
    fn flop_counts_are_only_for_the_models_they_describe() {
        let mlm = fixture_model("tiny_shared_blocks");
        let forward = mlm.forward_flops(&[10, 20], &[1, 2]).unwrap();
        let reference = mlm.reference_flops(&[10, 20], &[1, 2]).unwrap();
        assert!(forward > 0.0 && reference > forward);
        assert_eq!(mlm.optical_flow_flops(), None);
        assert!(mlm.reference_flops(&[1], &[usize::MAX]).unwrap().is_finite());
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let classifier = Loader::new(
            fixtures
                .join("classification/tiny_text_classifier")
                .to_str()
                .unwrap(),
        )
        .load()
        .unwrap();
        assert_eq!(classifier.forward_flops(&[10], &[1]), None);
        assert_eq!(classifier.reference_flops(&[10], &[1]), None);
        assert_eq!(classifier.image_size(), None);
        let flow = Loader::new(fixtures.join("flow/tiny_flow").to_str().unwrap())
            .load()
            .unwrap();
        assert!(flow.optical_flow_flops().unwrap() > 0.0);
        assert_eq!(flow.forward_flops(&[10], &[1]), None);
        assert_eq!((flow.max_len(), flow.image_size()), (0, Some((48, 56))));
    }

    #[test]
    fn latent_layer_rejects_bad_input() {
        let model = fixture_model("tiny_shared_blocks");
        let (n, d) = (model.config.num_latents, model.config.d_latents);
        let z = vec![0.5f32; n * d];
        assert!(model.latent_layer(0, z.clone()).is_ok());
        assert!(model
            .latent_layer(model.process.layers_per_block(), z.clone())
            .is_err());
        assert!(model.latent_layer(0, z[1..].to_vec()).is_err());
        assert!(model.latent_layer(0, Vec::new()).is_err());
    }

    #[test]
    fn an_unknown_architecture_is_refused_by_name() {
        let mut config = PerceiverConfig::default();
        config.extra.insert(
            "architectures".into(),
            serde_json::json!(["PerceiverForImageClassificationLearnedXL"]),
        );
        match Architecture::of(&config) {
            Err(Error::UnsupportedArchitecture { name }) => {
                assert_eq!(name, "PerceiverForImageClassificationLearnedXL")
            }
            other => panic!("{other:?}"),
        }
    }
}
