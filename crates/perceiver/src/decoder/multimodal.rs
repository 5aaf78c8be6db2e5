//! The multimodal autoencoder's decoder (transformers' `PerceiverMultimodalDecoder` over its
//! position-only audio, video and classification decoders; DeepMind's `MultimodalDecoder`): one
//! query per audio patch, per pixel of every frame and one for the label, each padded to a common
//! width with its modality's trainable row, then one cross-attention onto the latents and a final
//! layer, shared by all of them.
//!
//! The audio and video queries are Fourier features of the query's position, which transformers
//! and DeepMind compute for `subsampled_output_points` as `-1 + 2·index/size` per dimension
//! ([`subsampled_position`](crate::position::subsampled_position)): the way the released model
//! is run (DeepMind's Colab decodes its 802,816 pixels in 128 chunks). transformers cannot decode
//! this model without subsampled points (it would build the video's positions over the input's
//! channels), so this is the only decode there is. Queries are independent of each other: any
//! subset, in any order, gives exactly those rows of a full decode.

use crate::attention::AttentionLayer;
use crate::checkpoint::names::MultimodalNames;
use crate::checkpoint::Param;
use crate::config::MultimodalSpec;
use crate::error::{Error, Result};
use crate::layers::{Dense, Precision};
use crate::position::FourierGrid;
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
    /// The audio queries' Fourier features, a row at a time.
    audio_queries: FourierGrid<1>,
    /// The pixel queries' Fourier features, a row at a time.
    image_queries: FourierGrid<3>,
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
            audio_queries: FourierGrid::subsampled(&spec.audio_fourier(), [spec.audio_patches()]),
            image_queries: FourierGrid::subsampled(&spec.video_fourier(), spec.output_dims),
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
        let mut out = vec![0f32; (audio.len() + image.len() + usize::from(label)) * width];
        let mut rows = out.chunks_exact_mut(width);
        let [audio_padding, image_padding, label_padding] = &self.padding;
        fill_queries(
            &mut rows,
            audio,
            &self.audio_queries,
            s.audio_patches(),
            audio_padding,
        )?;
        fill_queries(
            &mut rows,
            image,
            &self.image_queries,
            s.image_queries(),
            image_padding,
        )?;
        if let Some(row) = rows.next().filter(|_| label) {
            let (query, rest) = row.split_at_mut(self.label_query.data().len());
            query.copy_from_slice(self.label_query.data());
            rest.copy_from_slice(label_padding.data());
        }
        Ok(out)
    }

    /// The cross-attention's keys and values of one input's latents, projected once for all of
    /// its queries ([`forward`](Self::forward)).
    pub(crate) fn keys_values(&self, latents: &[f32], threads: usize) -> Vec<f32> {
        self.cross_attention.keys_values(latents, threads)
    }

    /// Values of each latent's row of [`keys_values`](Self::keys_values).
    pub(crate) fn keys_values_width(&self) -> usize {
        let spec = self.cross_attention.spec();
        spec.qk_channels + spec.v_channels
    }

    /// `queries` (`[n, query_channels]`) decoded from one input's latents, given as their
    /// [`keys_values`](Self::keys_values) (`num_latents` rows): `[n, channels]`.
    pub(crate) fn forward(
        &self,
        keys_values: &[f32],
        num_latents: usize,
        queries: &[f32],
        threads: usize,
    ) -> Vec<f32> {
        let n = queries.len() / self.query_channels();
        // One item: the queries' rows, the latents' rows.
        let (query_items, latent_items) = (item_ranges([n]), item_ranges([num_latents]));
        let hidden =
            self.cross_attention
                .forward_onto(queries, &query_items, (keys_values, &latent_items), threads);
        self.final_layer.forward(&hidden, threads)
    }
}

/// The next `indices.len()` rows of `rows`: each index's features in `grid` (a modality of
/// `count` queries), then the modality's `padding`.
fn fill_queries<'a, const N: usize>(
    rows: &mut impl Iterator<Item = &'a mut [f32]>,
    indices: &[usize],
    grid: &FourierGrid<N>,
    count: usize,
    padding: &Param,
) -> Result<()> {
    for (&i, row) in indices.iter().zip(rows) {
        if i >= count {
            return Err(Error::InvalidInput(format!(
                "query {i} is outside the model's {count} queries of its modality"
            )));
        }
        let (features, rest) = row.split_at_mut(row.len() - padding.data().len());
        grid.row_into(i, features);
        rest.copy_from_slice(padding.data());
    }
    Ok(())
}
