//! The multimodal autoencoder's decoder (transformers' `PerceiverMultimodalDecoder` over its
//! position-only audio, video and classification decoders; DeepMind's `MultimodalDecoder`): one
//! query per audio patch, per pixel of every frame and one for the label, each padded to a common
//! width with its modality's trainable row, then one cross-attention onto the latents and a final
//! layer, shared by all of them.
//!
//! The audio and video queries are Fourier features of the query's position, which transformers
//! and DeepMind compute for `subsampled_output_points` as `-1 + 2·index/size` per dimension
//! ([`subsampled_position`]): the way the released model is run (DeepMind's Colab decodes its
//! 802,816 pixels in 128 chunks). transformers cannot decode this model without subsampled
//! points (it would build the video's positions over the input's channels), so this is the only
//! decode there is. Queries are independent of each other: any subset, in any order, gives
//! exactly those rows of a full decode.

use crate::attention::{AttentionLayer, Queries};
use crate::checkpoint::names::MultimodalNames;
use crate::checkpoint::Param;
use crate::config::MultimodalSpec;
use crate::error::{Error, Result};
use crate::layers::{Dense, Precision};
use crate::position::{fourier_features_at, subsampled_position};
use crate::runtime::item_ranges;

/// Which output queries of the multimodal autoencoder to decode: indices into each modality's
/// queries (audio patches; video pixels, row-major over `(frame, row, column)` of
/// `output_shape`), in any order, and whether to decode the label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MultimodalQueries {
    /// Audio patches to decode (`samples_per_patch` samples each).
    pub audio: Vec<usize>,
    /// Pixels to decode (RGB each).
    pub image: Vec<usize>,
    /// Decode the label's logits.
    pub label: bool,
}

impl MultimodalQueries {
    /// Every query of the model `spec` describes.
    pub fn all(spec: &MultimodalSpec) -> Self {
        Self::chunk(spec, 0, 1)
    }

    /// Chunk `index` of `chunks` (DeepMind's Colab: 128): a contiguous range of the audio
    /// patches and one of the pixels, `n·index/chunks .. n·(index + 1)/chunks` of each (the
    /// Colab's ranges when `chunks` divides the counts; the chunks cover every query when it does
    /// not), with the label in the last chunk. An empty set of queries when `index ≥ chunks`.
    pub fn chunk(spec: &MultimodalSpec, index: usize, chunks: usize) -> Self {
        let (audio, image, label) = Self::chunk_ranges(spec, index, chunks);
        Self {
            audio: audio.collect(),
            image: image.collect(),
            label,
        }
    }

    /// What [`chunk`](Self::chunk) holds, as ranges: its audio patches, its pixels, and whether
    /// it has the label; empty past the last chunk.
    pub(crate) fn chunk_ranges(
        spec: &MultimodalSpec,
        index: usize,
        chunks: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>, bool) {
        if index >= chunks {
            return (0..0, 0..0, false);
        }
        // In u128: n · (index + 1) overflows usize for large chunk counts; the quotient is at
        // most n.
        let bound = |n: usize, i: usize| (n as u128 * i as u128 / chunks as u128) as usize;
        let range = |n: usize| bound(n, index)..bound(n, index + 1);
        (
            range(spec.audio_patches()),
            range(spec.image_queries()),
            index + 1 == chunks,
        )
    }

    /// Queries in all.
    pub fn len(&self) -> usize {
        self.audio.len() + self.image.len() + usize::from(self.label)
    }

    /// Whether there is no query.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An error naming the first index past its modality's queries.
    pub fn check(&self, spec: &MultimodalSpec) -> Result<()> {
        let sets = [
            ("audio", &self.audio, spec.audio_patches(), "audio patches"),
            (
                "image",
                &self.image,
                spec.image_queries(),
                "pixels (output_shape)",
            ),
        ];
        for (modality, indices, count, what) in sets {
            if let Some(&bad) = indices.iter().find(|&&i| i >= count) {
                return Err(Error::InvalidInput(format!(
                    "{modality} query {bad} is outside the model's {count} {what}"
                )));
            }
        }
        Ok(())
    }
}

/// The queries of every modality cross-attending the latents, then the final layer.
#[derive(Debug, Clone)]
pub struct MultimodalDecoder {
    spec: MultimodalSpec,
    /// The label's one query, `[label_query_channels]`.
    label_query: Param,
    /// Per modality (audio, image, label): the row appended to each of its queries.
    padding: [Param; 3],
    cross_attention: AttentionLayer,
    final_layer: Dense,
}

impl MultimodalDecoder {
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        spec: MultimodalSpec,
        names: &MultimodalNames,
    ) -> Result<Self> {
        let [audio, image, label] = &names.query_padding;
        Ok(Self {
            spec,
            label_query: get(&names.label_query.name)?,
            padding: [get(&audio.name)?, get(&image.name)?, get(&label.name)?],
            cross_attention: AttentionLayer::load(&names.cross_attention, get)?,
            final_layer: Dense::load(get, &names.final_layer)?,
        })
    }

    /// Channels of each query.
    pub fn query_channels(&self) -> usize {
        self.cross_attention.spec().q_dim
    }

    /// Channels of each decoded row (`output_num_channels`).
    pub fn channels(&self) -> usize {
        self.final_layer.out_dim()
    }

    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.cross_attention.set_precision(precision);
        self.final_layer.set_precision(precision);
    }

    /// The padded queries of `audio` patches, then `image` pixels, then the label if asked:
    /// `[queries, query_channels]`; an error for an index outside its modality's queries.
    pub(crate) fn queries(&self, audio: &[usize], image: &[usize], label: bool) -> Result<Vec<f32>> {
        let s = &self.spec;
        let width = self.query_channels();
        let mut out = Vec::with_capacity((audio.len() + image.len() + usize::from(label)) * width);
        let [audio_padding, image_padding, label_padding] = &self.padding;
        let positions: Vec<[f32; 1]> = audio
            .iter()
            .map(|&i| subsampled_position(i, [s.audio_patches()]))
            .collect::<Result<_>>()?;
        let features = fourier_features_at(&s.audio_fourier(), &positions);
        for row in features.chunks_exact(s.audio_fourier().channels()) {
            out.extend_from_slice(row);
            out.extend_from_slice(audio_padding.data());
        }
        let positions: Vec<[f32; 3]> = image
            .iter()
            .map(|&i| subsampled_position(i, s.output_dims))
            .collect::<Result<_>>()?;
        let features = fourier_features_at(&s.video_fourier(), &positions);
        for row in features.chunks_exact(s.video_fourier().channels()) {
            out.extend_from_slice(row);
            out.extend_from_slice(image_padding.data());
        }
        if label {
            out.extend_from_slice(self.label_query.data());
            out.extend_from_slice(label_padding.data());
        }
        Ok(out)
    }

    /// `queries` (`[n, query_channels]`) decoded from one input's latents: `[n, channels]`.
    pub(crate) fn forward(
        &self,
        latents: &[f32],
        num_latents: usize,
        queries: &[f32],
        threads: usize,
    ) -> Vec<f32> {
        let n = queries.len() / self.query_channels();
        // One item: the queries' rows, the latents' rows.
        let (query_items, latent_items) = (item_ranges([n]), item_ranges([num_latents]));
        let hidden = self.cross_attention.forward(
            Queries::PerItem(queries),
            &query_items,
            Some((latents, &latent_items)),
            threads,
        );
        self.final_layer.forward(&hidden, threads)
    }
}
