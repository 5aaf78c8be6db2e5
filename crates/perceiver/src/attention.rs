//! Multi-head attention and the Perceiver layer built on it (attention then MLP, each with a
//! residual), on packed weights: the block every encoder, latent stack and decoder is made of.
//!
//! Attention runs per batch item on that item's rows only (no padding, so no mask), with heads as
//! strided views into the projected queries, keys and values (no transposed copies).

use std::ops::Range;

use rayon::prelude::*;

use crate::checkpoint::names::LayerNames;
use crate::checkpoint::Param;
use crate::config::AttentionSpec;
use crate::error::Result;
use crate::layers::{Dense, Norm, Precision};
use crate::preprocess::RowSource;
use perceiver_kernels::cpu::{self, Bf16Kernel};
use perceiver_kernels::matmul::{matmul, Rhs, View};
use perceiver_kernels::{bf16, rows, sgemm, SendPtr};

/// A layer's queries.
#[derive(Clone, Copy)]
pub(crate) enum Queries<'a> {
    /// Every item's own rows, `[Σ query rows, q_dim]`.
    PerItem(&'a [f32]),
    /// One item's rows, the same for every item (the encoder's learned latents): their
    /// LayerNorm and projection are computed once for the batch (cross-attention only).
    Shared(&'a [f32]),
    /// Every item's own rows with their LayerNorm and query projection already applied
    /// (cross-attention only): the decoder's queries, projected once per position at load.
    Projected {
        /// `[Σ query rows, q_dim]`, for the residual (may be empty without one).
        rows: &'a [f32],
        /// `[Σ query rows, qk_channels]`.
        projected: &'a [f32],
    },
}

/// Attention then MLP, each with a residual: transformers' `PerceiverLayer`, DeepMind's
/// `CrossAttention` / `SelfAttention` modules.
#[derive(Debug, Clone)]
pub(crate) struct AttentionLayer {
    spec: AttentionSpec,
    q_norm: Norm,
    /// Cross-attention only: the norm of the keys'/values' input.
    kv_norm: Option<Norm>,
    query: Dense,
    key: Dense,
    value: Dense,
    /// The projections that read the same rows, run as one product ([`Dense::stacked`]): key
    /// and value in a cross-attention, query, key and value in a self-attention. Built by
    /// [`set_precision`](Self::set_precision) (which the model runs on construction); the
    /// stacked parts keep their weights as read, unpacked (a cross-attention's `query`, which
    /// reads other rows, is packed on its own for [`project_queries`](Self::project_queries)).
    stacked: Option<Dense>,
    output: Dense,
    mlp_norm: Norm,
    dense1: Dense,
    dense2: Dense,
    /// The kernels of attention's scores and weighted sums (the weight products' are the
    /// [`Dense`] layers' own).
    kernels: AttentionKernels,
}

/// Which kernel attention's two products per head run on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionKernels {
    precision: Precision,
    /// In bf16, the narrowest head side that runs on the bf16 kernel
    /// ([`bf16_min_head_width`]), for heads that do not run fused.
    bf16_min_head_width: usize,
    /// In bf16 where the bf16 products run on AMX tiles or on `vdpbf16ps`: a head's scores,
    /// softmax and weighted sum run as one ([`bf16::attention_head`]), whatever its widths.
    fused_heads: bool,
    /// In bf16 where the bf16 products run on `vdpbf16ps`: a streamed cross-attention's heads
    /// run each block of keys as one ([`bf16::attention_head_block`]), whatever their widths.
    fused_blocks: bool,
}

impl AttentionKernels {
    /// Whether a product over a head side `width` wide (`d_qk` for the scores, `d_v` for the
    /// weighted sum) runs on the bf16 kernel.
    fn bf16(&self, width: usize) -> bool {
        self.precision == Precision::Bf16 && width >= self.bf16_min_head_width
    }

    /// Whether a head over `keys` keys runs as one on [`bf16::attention_head`].
    fn fused(&self, keys: usize) -> bool {
        self.fused_heads && keys > 0 && keys <= bf16::ATTENTION_HEAD_MAX_KEYS
    }
}

impl AttentionLayer {
    /// Reads the layer's weights under `names` (cross-attention when they name a key/value norm).
    pub(crate) fn load(names: &LayerNames, get: &mut dyn FnMut(&str) -> Result<Param>) -> Result<Self> {
        Ok(Self {
            spec: names.spec,
            q_norm: Norm::load(get, &names.q_norm)?,
            kv_norm: names.kv_norm.as_ref().map(|n| Norm::load(get, n)).transpose()?,
            query: Dense::load(get, &names.query)?,
            key: Dense::load(get, &names.key)?,
            value: Dense::load(get, &names.value)?,
            stacked: None,
            output: Dense::load(get, &names.output)?,
            mlp_norm: Norm::load(get, &names.mlp_norm)?,
            dense1: Dense::load(get, &names.dense1)?,
            dense2: Dense::load(get, &names.dense2)?,
            kernels: AttentionKernels {
                precision: Precision::F32,
                bf16_min_head_width: bf16_min_head_width(),
                fused_heads: false,
                fused_blocks: false,
            },
        })
    }

    /// Packs the weights for `precision`'s kernels.
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        let stacked = match self.kv_norm {
            Some(_) => {
                self.query.set_precision(precision);
                Dense::stacked(&[&self.key, &self.value], precision)
            }
            None => Dense::stacked(&[&self.query, &self.key, &self.value], precision),
        };
        self.stacked = Some(stacked);
        for dense in [&mut self.output, &mut self.dense1, &mut self.dense2] {
            dense.set_precision(precision);
        }
        self.kernels.precision = precision;
        self.kernels.fused_heads = precision == Precision::Bf16 && bf16::attention_head_available();
        self.kernels.fused_blocks = precision == Precision::Bf16 && bf16::attention_head_block_available();
    }

    /// The stacked projections (the `stacked` field, built by
    /// [`set_precision`](Self::set_precision)).
    fn stacked(&self) -> &Dense {
        self.stacked
            .as_ref()
            .expect("the model packs every layer on construction")
    }

    /// Lets narrower heads run on the bf16 kernel (for tests on small models).
    #[cfg(test)]
    pub(crate) fn set_bf16_min_head_width(&mut self, width: usize) {
        self.kernels.bf16_min_head_width = width;
    }

    /// The widths of the layer.
    pub(crate) fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// The LayerNorm and projection of the queries (for queries projected once, ahead of passes).
    pub(crate) fn project_queries(&self, rows: &[f32], threads: usize) -> Vec<f32> {
        self.query.forward_normed(&self.q_norm, rows, None, threads)
    }

    /// `queries`: `[Σ query rows, q_dim]`, item `i`'s rows at `query_items[i]`; `inputs`: the
    /// keys'/values' input `[Σ rows, kv_dim]` with its item ranges, `None` for self-attention.
    ///
    /// Each intermediate is dropped as soon as the next one is made, so that a long input
    /// holds as few of its copies at once as it can (the longest, images, flow tiles and clips,
    /// are streamed instead: [`forward_streamed`](Self::forward_streamed)).
    pub(crate) fn forward(
        &self,
        queries: Queries<'_>,
        query_items: &[Range<usize>],
        inputs: Option<(&[f32], &[Range<usize>])>,
        threads: usize,
    ) -> Vec<f32> {
        let heads = self.attention(queries, query_items, inputs, threads);
        let residual = self.spec.use_query_residual.then(|| match queries {
            Queries::PerItem(rows) | Queries::Projected { rows, .. } => rows.to_vec(),
            Queries::Shared(rows) => rows.repeat(query_items.len()),
        });
        self.finish(heads, residual, threads)
    }

    /// A self-attention layer over `latents` (`[Σ rows, q_dim]`, item `i`'s rows at
    /// `items[i]`): [`forward`](Self::forward), with `latents` themselves taking the residuals
    /// instead of a copy of them.
    pub(crate) fn self_attend(&self, latents: Vec<f32>, items: &[Range<usize>], threads: usize) -> Vec<f32> {
        let heads = self.attention(Queries::PerItem(&latents), items, None, threads);
        let residual = self.spec.use_query_residual.then_some(latents);
        self.finish(heads, residual, threads)
    }

    /// The attention's heads side by side, `[Σ query rows, v_channels]`, before its output
    /// projection (see [`forward`](Self::forward)).
    fn attention(
        &self,
        queries: Queries<'_>,
        query_items: &[Range<usize>],
        inputs: Option<(&[f32], &[Range<usize>])>,
        threads: usize,
    ) -> Vec<f32> {
        let rows = match queries {
            Queries::PerItem(rows) | Queries::Shared(rows) | Queries::Projected { rows, .. } => rows,
        };
        let all_rows = |x: Vec<f32>| match queries {
            Queries::PerItem(_) | Queries::Projected { .. } => x,
            Queries::Shared(_) => x.repeat(query_items.len()),
        };
        let (qk, vc) = (self.spec.qk_channels, self.spec.v_channels);
        // For shared queries, the LayerNorm and the projection run on one copy.
        let (q_projected, kv, kv_items) = match (inputs, queries) {
            (Some((inputs, items)), Queries::Projected { .. }) => {
                (None, self.keys_values(inputs, threads), items)
            }
            (Some((inputs, items)), _) => {
                let q = all_rows(self.project_queries(rows, threads));
                (Some(q), self.keys_values(inputs, threads), items)
            }
            (None, _) => {
                assert!(
                    matches!(queries, Queries::PerItem(_)),
                    "self-attention needs every item's queries"
                );
                // Queries, keys and values from one product: each row `[q | k | v]`.
                let qkv = self.stacked().forward_normed(&self.q_norm, rows, None, threads);
                (None, qkv, query_items)
            }
        };
        // Each row of `kv` is `[k | v]`, or `[q | k | v]` in a self-attention.
        let (q, keys_at) = match (&q_projected, queries, inputs) {
            (Some(q), _, _) => (HeadRows::new(q, 0, qk), 0),
            (None, Queries::Projected { projected, .. }, _) => (HeadRows::new(projected, 0, qk), 0),
            (None, _, None) => (HeadRows::new(&kv, 0, 2 * qk + vc), qk),
            (None, _, Some(_)) => {
                unreachable!("cross-attention queries are projected above unless given projected")
            }
        };
        let stride = keys_at + qk + vc;
        let (k, v) = (
            HeadRows::new(&kv, keys_at, stride),
            HeadRows::new(&kv, keys_at + qk, stride),
        );
        attend(&self.spec, self.kernels, q, query_items, k, v, kv_items, threads)
    }

    /// A cross-attention of many per-item queries, `chunk_rows` query rows at a time: the keys
    /// and values are projected once, and each chunk's queries are made by their item's source
    /// and go through the whole layer before the next chunk's, so neither the queries nor the
    /// layer's intermediates are ever held beyond a chunk (what the flow decoder needs for its
    /// 182,528 queries). Rows are independent, so the output is the same as
    /// [`forward`](Self::forward)'s. Each chunk's output goes through `each_chunk` (the model's
    /// final projection) before the next chunk runs, so that only its result is kept for every
    /// row.
    pub(crate) fn forward_in_chunks(
        &self,
        queries: &[&dyn RowSource],
        (inputs, kv_items): (&[f32], &[Range<usize>]),
        chunk_rows: usize,
        threads: usize,
        each_chunk: &dyn Fn(Vec<f32>) -> Vec<f32>,
    ) -> Vec<f32> {
        let q_dim = self.spec.q_dim;
        assert!(
            queries.iter().all(|source| source.channels() == q_dim),
            "query rows are not {q_dim} wide"
        );
        let kv = self.keys_values(inputs, threads);
        let mut out = Vec::new();
        let mut chunk = Vec::new();
        for (source, kr) in queries.iter().zip(kv_items) {
            for start in (0..source.len()).step_by(chunk_rows.max(1)) {
                let end = (start + chunk_rows.max(1)).min(source.len());
                chunk.resize((end - start) * q_dim, 0.0);
                source.fill(start..end, &mut chunk);
                let chunk_queries = 0..end - start;
                out.extend(each_chunk(self.forward_onto(
                    &chunk,
                    std::slice::from_ref(&chunk_queries),
                    (&kv, std::slice::from_ref(kr)),
                    threads,
                )));
            }
        }
        out
    }

    /// [`forward`](Self::forward) of per-item queries (`[Σ query rows, q_dim]`, item `i`'s rows
    /// at `query_items[i]`) over keys and values already projected by
    /// [`keys_values`](Self::keys_values) (`[Σ rows, qk_channels + v_channels]`, item `i`'s at
    /// `kv_items[i]`): for queries decoded in many calls from the same inputs, which then
    /// project those once. The same values as `forward`.
    pub(crate) fn forward_onto(
        &self,
        queries: &[f32],
        query_items: &[Range<usize>],
        (kv, kv_items): (&[f32], &[Range<usize>]),
        threads: usize,
    ) -> Vec<f32> {
        let (qk, vc) = (self.spec.qk_channels, self.spec.v_channels);
        let q = self.project_queries(queries, threads);
        let heads = attend(
            &self.spec,
            self.kernels,
            HeadRows::new(&q, 0, qk),
            query_items,
            HeadRows::new(kv, 0, qk + vc),
            HeadRows::new(kv, qk, qk + vc),
            kv_items,
            threads,
        );
        drop(q);
        let residual = self.spec.use_query_residual.then(|| queries.to_vec());
        self.finish(heads, residual, threads)
    }

    /// A cross-attention of one item's queries over input rows made `block_rows` at a time
    /// ([`STREAM_BLOCK_ROWS`] in use), so that neither the input, nor its keys and values, nor
    /// the scores are ever whole: each block is normed and projected, and each head's softmax is
    /// carried from block to block by its running maximum and sum ([`rows::online_softmax_rows`]
    /// over blocks of query rows whose scores stay in cache, [`score_block_rows`]; in bf16 on
    /// `vdpbf16ps`, [`bf16::attention_head_block`], a strip of query rows at a time). `rows`
    /// are the queries before their LayerNorm (for the residual), `projected` after it and the
    /// query projection. The same as [`forward`](Self::forward) up to rounding.
    ///
    /// Where it is less work ([`AttentionSpec::absorbs_keys`]: inputs no wider than the keys,
    /// as pixels with their Fourier features are), the key and value projections are never
    /// applied to the input rows: see [`StreamedKeys::Absorbed`].
    pub(crate) fn forward_streamed(
        &self,
        rows: &[f32],
        projected: &[f32],
        input: &dyn RowSource,
        block_rows: usize,
        threads: usize,
    ) -> Vec<f32> {
        let nq = projected.len() / self.spec.qk_channels;
        let keys = StreamedKeys::for_layer(&self.spec, nq);
        self.forward_streamed_as(keys, rows, projected, input, block_rows, threads)
    }

    /// [`forward_streamed`](Self::forward_streamed) with its keys and values made as `keys` says.
    fn forward_streamed_as(
        &self,
        keys: StreamedKeys,
        rows: &[f32],
        projected: &[f32],
        input: &dyn RowSource,
        block_rows: usize,
        threads: usize,
    ) -> Vec<f32> {
        let block_rows = block_rows.max(1);
        let spec = &self.spec;
        let (qk, vc, heads) = (spec.qk_channels, spec.v_channels, spec.num_heads);
        let (d_qk, d_v) = (qk / heads, vc / heads);
        let nq = projected.len() / qk;
        let scale = 1.0 / (d_qk as f32).sqrt();
        let channels = input.channels();
        // Absorbed, each head attends with its queries through the key projection, `[nq,
        // channels]` (heads side by side), over the normed input rows as both keys and values.
        let absorbed = match keys {
            StreamedKeys::Absorbed => Some(self.absorbed_queries(projected, channels, threads)),
            StreamedKeys::Projected => None,
        };
        let (queries, q_stride, d_k, d_val) = match &absorbed {
            Some(queries) => (&queries[..], heads * channels, channels, channels),
            None => (projected, qk, d_qk, d_v),
        };
        let norm = self
            .kv_norm
            .as_ref()
            .expect("a cross-attention layer has a key/value LayerNorm");
        // Per head: each query row's running maximum and sum, and its weighted sum, `[nq, d_val]`.
        let mut max = vec![f32::NEG_INFINITY; heads * nq];
        let mut sum = vec![0f32; heads * nq];
        let mut acc = vec![0f32; heads * nq * d_val];
        let mut block = vec![0f32; block_rows.min(input.len()) * channels];
        let mut scores = Vec::new();
        // Where the heads run fused, each head's queries scaled and rounded to bf16 once, and
        // each block's scores never leave cache.
        let fused =
            self.kernels.fused_blocks && block_rows <= bf16::ATTENTION_HEAD_MAX_KEYS && d_k > 0 && d_val > 0;
        let fused_queries: Option<Vec<bf16::HeadQueries>> = fused.then(|| {
            (0..heads)
                .map(|h| bf16::HeadQueries::new(View::strided(&queries[h * d_k..], nq, d_k, q_stride), scale))
                .collect()
        });
        // Query rows a thread takes of each head's block: whole strips of the kernel's.
        let share = nq.div_ceil(threads.max(1)).next_multiple_of(bf16::MR).max(1);
        // Otherwise in bf16, scores and weighted sums run on the bf16 kernel too (they are most
        // of the work over a long input), for heads wide enough (as in `attend`): each head's
        // queries, scaled, kept dense for `matmul_accumulate` block after block.
        let bf16 = !fused && self.kernels.bf16(d_k) && self.kernels.bf16(d_val);
        let bf16_queries: Option<Vec<Vec<f32>>> = bf16.then(|| {
            (0..heads)
                .map(|h| scaled_head(View::strided(&queries[h * d_k..], nq, d_k, q_stride), scale))
                .collect()
        });
        for start in (0..input.len()).step_by(block_rows) {
            let end = (start + block_rows).min(input.len());
            let nk = end - start;
            let block = &mut block[..nk * channels];
            input.fill(start..end, block);
            // Each row `[k | v]`; absorbed, the normed row is both.
            let kv = match absorbed {
                Some(_) => norm.forward(block),
                None => self.stacked().forward_normed(norm, block, None, threads),
            };
            for h in 0..heads {
                let (k_h, v_h) = match absorbed {
                    Some(_) => (View::dense(&kv, nk, channels), View::dense(&kv, nk, channels)),
                    None => (
                        View::strided(&kv[h * d_qk..], nk, d_qk, qk + vc),
                        View::strided(&kv[qk + h * d_v..], nk, d_v, qk + vc),
                    ),
                };
                let acc_h = &mut acc[h * nq * d_val..][..nq * d_val];
                if let Some(queries) = &fused_queries {
                    let keys = bf16::PackedMatrix::pack_view(k_h, true, true);
                    let values = bf16::PackedMatrix::pack_view(v_h, false, true);
                    max[h * nq..][..nq]
                        .par_chunks_mut(share)
                        .zip(sum[h * nq..][..nq].par_chunks_mut(share))
                        .zip(acc_h.par_chunks_mut(share * d_val))
                        .enumerate()
                        .for_each(|(i, ((max, sum), acc))| {
                            bf16::attention_head_block(&queries[h], i * share, &keys, &values, max, sum, acc)
                        });
                    continue;
                }
                if let Some(queries) = &bf16_queries {
                    scores.clear();
                    scores.resize(nq * nk, 0.0);
                    bf16::PackedMatrix::pack_view(k_h, true, true).matmul_accumulate(
                        &queries[h],
                        nq,
                        &mut scores,
                        threads,
                    );
                    rows::online_softmax(
                        &mut scores,
                        nk,
                        &mut max[h * nq..][..nq],
                        &mut sum[h * nq..][..nq],
                        acc_h,
                        d_val,
                    );
                    bf16::PackedMatrix::pack_view(v_h, false, true)
                        .matmul_accumulate(&scores, nq, acc_h, threads);
                    continue;
                }
                // In f32, each thread takes blocks of the head's query rows whose scores stay
                // in cache from the product that writes them, through the running softmax, to
                // the product that reads them; the block's keys and values packed once.
                // (The values are packed row by row: see `sgemm::PackedWeights::pack_view`.)
                let packed = sgemm::available().then(|| {
                    (
                        sgemm::PackedWeights::pack_view(k_h, true, scale, threads > 1),
                        sgemm::PackedWeights::pack_view(v_h, false, 1.0, false),
                    )
                });
                let rows_per_task = score_block_rows(nk).min(nq.div_ceil(threads.max(1))).max(1);
                let attend_rows =
                    |scores: &mut Vec<f32>, i: usize, max: &mut [f32], sum: &mut [f32], acc: &mut [f32]| {
                        let (first, n) = (i * rows_per_task, max.len());
                        let q = View::strided(&queries[first * q_stride + h * d_k..], n, d_k, q_stride);
                        scores.clear();
                        match &packed {
                            Some((keys, values)) => {
                                scores.reserve(n * nk);
                                // SAFETY: `scores` has room for n × nk values at row stride nk; the
                                // product sets every one of them (overwrite), so the length can then
                                // cover them.
                                unsafe {
                                    keys.matmul_view_raw(q, scores.as_mut_ptr(), nk, 1, true);
                                    scores.set_len(n * nk);
                                }
                                rows::online_softmax_rows(scores, nk, max, sum, acc, d_val);
                                values.matmul_view(View::dense(scores, n, nk), acc, d_val, 1);
                            }
                            None => {
                                scores.resize(n * nk, 0.0);
                                matmul(scores, nk, q, Rhs::Transposed(k_h), scale, false, 1);
                                rows::online_softmax_rows(scores, nk, max, sum, acc, d_val);
                                let weights = View::dense(scores, n, nk);
                                matmul(acc, d_val, weights, Rhs::Plain(v_h), 1.0, true, 1);
                            }
                        }
                    };
                let (max_h, sum_h) = (&mut max[h * nq..][..nq], &mut sum[h * nq..][..nq]);
                if threads > 1 {
                    max_h
                        .par_chunks_mut(rows_per_task)
                        .zip(sum_h.par_chunks_mut(rows_per_task))
                        .zip(acc_h.par_chunks_mut(rows_per_task * d_val))
                        .enumerate()
                        .for_each_init(Vec::new, |scores, (i, ((max, sum), acc))| {
                            attend_rows(scores, i, max, sum, acc)
                        });
                } else {
                    // One thread (an input of a batch run side by side): no fork.
                    let mut scores = Vec::new();
                    let chunks = max_h
                        .chunks_mut(rows_per_task)
                        .zip(sum_h.chunks_mut(rows_per_task))
                        .zip(acc_h.chunks_mut(rows_per_task * d_val));
                    for (i, ((max, sum), acc)) in chunks.enumerate() {
                        attend_rows(&mut scores, i, max, sum, acc);
                    }
                }
            }
        }
        // Each row divided by its sum; heads side by side.
        for h in 0..heads {
            for (r, row) in acc[h * nq * d_val..][..nq * d_val]
                .chunks_exact_mut(d_val)
                .enumerate()
            {
                let inverse = 1.0 / sum[h * nq + r];
                row.iter_mut().for_each(|x| *x *= inverse);
            }
        }
        drop((absorbed, scores));
        let out = match keys {
            StreamedKeys::Absorbed => self.values_of_absorbed(&acc, nq, channels, threads),
            StreamedKeys::Projected if heads == 1 => acc,
            StreamedKeys::Projected => {
                let mut out = vec![0f32; nq * vc];
                for h in 0..heads {
                    for r in 0..nq {
                        let from = &acc[(h * nq + r) * d_v..][..d_v];
                        out[r * vc + h * d_v..][..d_v].copy_from_slice(from);
                    }
                }
                out
            }
        };
        let residual = self.spec.use_query_residual.then(|| rows.to_vec());
        self.finish(out, residual, threads)
    }

    /// Each head's queries through its key projection, `[nq, heads · kv_dim]` (head `h`'s
    /// columns `h·kv_dim..`): `q_h·W_k,h` (`W_k,h` the head's `[d_qk, kv_dim]` rows of the key
    /// weight as stored), so that `q_h·k_hᵀ` with `k_h = x·W_k,hᵀ + b_k,h` is that times `xᵀ`
    /// plus `q_h·b_k,h`, one amount for every score of a query, which its softmax takes away.
    fn absorbed_queries(&self, projected: &[f32], kv_dim: usize, threads: usize) -> Vec<f32> {
        let (qk, heads) = (self.spec.qk_channels, self.spec.num_heads);
        let (d_qk, nq) = (qk / heads, projected.len() / qk);
        let (weight, _) = self.key.parts().expect("a cross-attention keeps its key weights");
        let mut out = vec![0f32; nq * heads * kv_dim];
        for h in 0..heads {
            accumulate_product(
                &mut out[h * kv_dim..],
                heads * kv_dim,
                View::strided(&projected[h * d_qk..], nq, d_qk, qk),
                Rhs::Plain(View::dense(&weight.data()[h * d_qk * kv_dim..], d_qk, kv_dim)),
                threads,
            );
        }
        out
    }

    /// The heads' attention over the normed input rows (`[heads, nq, kv_dim]`, each row's
    /// weights summing to one) through the value projection: `[nq, v_channels]`, heads side by
    /// side. Since each row's weights sum to one, the value bias is added once, here.
    fn values_of_absorbed(&self, weighted: &[f32], nq: usize, kv_dim: usize, threads: usize) -> Vec<f32> {
        let (vc, heads) = (self.spec.v_channels, self.spec.num_heads);
        let d_v = vc / heads;
        let (weight, bias) = self
            .value
            .parts()
            .expect("a cross-attention keeps its value weights");
        let mut out = rows::repeat_rows(bias.data(), nq);
        for h in 0..heads {
            accumulate_product(
                &mut out[h * d_v..],
                vc,
                View::dense(&weighted[h * nq * kv_dim..][..nq * kv_dim], nq, kv_dim),
                Rhs::Transposed(View::dense(&weight.data()[h * d_v * kv_dim..], d_v, kv_dim)),
                threads,
            );
        }
        out
    }

    /// The cross-attention's keys and values of `inputs` (`[rows, kv_dim]`): `[rows,
    /// qk_channels + v_channels]`, each row `[k | v]` (their LayerNorm dropped once used).
    pub(crate) fn keys_values(&self, inputs: &[f32], threads: usize) -> Vec<f32> {
        let norm = self
            .kv_norm
            .as_ref()
            .expect("a cross-attention layer has a key/value LayerNorm");
        self.stacked().forward_normed(norm, inputs, None, threads)
    }

    /// The attention's output projection (onto `residual`, the queries before their LayerNorm,
    /// when the layer has one), then the MLP with its residual.
    fn finish(&self, heads: Vec<f32>, residual: Option<Vec<f32>>, threads: usize) -> Vec<f32> {
        let mut x = match residual {
            Some(mut x) => {
                self.output.forward_into(&heads, &mut x, threads);
                x
            }
            None => self.output.forward(&heads, threads),
        };
        drop(heads);
        let (norm, activation) = (&self.mlp_norm, Some(self.spec.activation));
        // On AMX, where the hidden width is whole 32-column panels, the MLP's hidden rows go
        // from the first product's tiles to the second's input as bf16, never stored in f32.
        match self
            .dense1
            .forward_normed_to_tiles(norm, &x, activation, &self.dense2, threads)
        {
            Some(hidden) => self.dense2.forward_into_from_tiles(&hidden, &mut x, threads),
            None => {
                let hidden = self.dense1.forward_normed(norm, &x, activation, threads);
                self.dense2.forward_into(&hidden, &mut x, threads);
            }
        }
        x
    }
}

/// How a streamed cross-attention ([`AttentionLayer::forward_streamed`]) makes its keys and
/// values from its input rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamedKeys {
    /// Each normed row through the key and value projections, as the model is written.
    Projected,
    /// The projections moved off the input ([`AttentionSpec::absorbs_keys`]): each head scores
    /// its queries through the key projection against the normed rows themselves, and weighs
    /// the normed rows, whose weighted sum then goes through the value projection.
    Absorbed,
}

impl StreamedKeys {
    /// The one with fewer multiply-adds for `queries` query rows of `spec`.
    pub(crate) fn for_layer(spec: &AttentionSpec, queries: usize) -> Self {
        match spec.absorbs_keys(queries) {
            true => Self::Absorbed,
            false => Self::Projected,
        }
    }
}

/// `out += a · b`, `out` with row stride `ldo`: a product made once a pass, whose right side
/// is packed for it on the f32 kernel where that runs (else `matmul`, on `gemm`).
fn accumulate_product(out: &mut [f32], ldo: usize, a: View, b: Rhs, threads: usize) {
    if !sgemm::available() {
        return matmul(out, ldo, a, b, 1.0, true, threads);
    }
    let packed = match b {
        Rhs::Plain(b) => sgemm::PackedWeights::pack_view(b, false, 1.0, threads > 1),
        Rhs::Transposed(b) => sgemm::PackedWeights::pack_view(b, true, 1.0, threads > 1),
    };
    packed.matmul_view(a, out, ldo, threads);
}

/// Input rows a streamed cross-attention ([`AttentionLayer::forward_streamed`]) makes, norms
/// and projects at a time: large enough for efficient products, small enough that the block,
/// its keys and values and its scores stay a few MiB.
pub(crate) const STREAM_BLOCK_ROWS: usize = 1024;

/// Scores an unfused head computes at a time (256 KiB of f32): its query rows are attended a
/// block at a time, so that the scores stay in cache from the product that writes them,
/// through the softmax, to the product that reads them, and (with
/// [`LONG_SCORE_BLOCK_VALUES`]) no `queries × keys` matrix is ever whole (the flow model's
/// would be 2,048 × 182,528). Each query row's softmax is its own, so blocking changes
/// nothing.
const SCORE_BLOCK_VALUES: usize = 1 << 16;

/// The fewest query rows of a block of [`SCORE_BLOCK_VALUES`]: each block streams its head's
/// keys and values through the products once, for this much work at least.
const MIN_SCORE_BLOCK_ROWS: usize = 32;

/// Scores of a block of query rows over more keys than [`MIN_SCORE_BLOCK_ROWS`] rows of
/// [`SCORE_BLOCK_VALUES`] hold (64 MiB of f32): no block's scores stay in cache there, so the
/// blocks are large, each streaming the keys and values once.
const LONG_SCORE_BLOCK_VALUES: usize = 1 << 24;

/// Query rows of a block of scores over `keys` keys: [`SCORE_BLOCK_VALUES`] over up to 2,048
/// keys, else [`LONG_SCORE_BLOCK_VALUES`].
fn score_block_rows(keys: usize) -> usize {
    let keys = keys.max(1);
    match keys * MIN_SCORE_BLOCK_ROWS <= SCORE_BLOCK_VALUES {
        true => SCORE_BLOCK_VALUES / keys,
        false => (LONG_SCORE_BLOCK_VALUES / keys).max(1),
    }
}

/// Multi-head attention of each item's queries over that item's keys; heads concatenated. In
/// bf16, the scores and the weighted sum run on the bf16 kernel where their head side is at
/// least [`AttentionKernels::bf16_min_head_width`] (never where bf16 widens to f32); where that
/// kernel is AMX or `vdpbf16ps`, each head over up to [`bf16::ATTENTION_HEAD_MAX_KEYS`] keys
/// runs its scores, softmax and weighted sum as one ([`bf16::attention_head`]), a strip of
/// query rows at a time.
///
/// Work is split over (item, head) pairs; when there are fewer pairs than threads (one image,
/// one head), over blocks of query rows within each pair instead.
#[allow(clippy::too_many_arguments)]
fn attend(
    spec: &AttentionSpec,
    kernels: AttentionKernels,
    q: HeadRows,
    query_items: &[Range<usize>],
    k: HeadRows,
    v: HeadRows,
    kv_items: &[Range<usize>],
    threads: usize,
) -> Vec<f32> {
    let heads = spec.num_heads;
    let total_queries = query_items.last().map_or(0, |r| r.end);
    let tasks: Vec<(usize, usize)> = (0..query_items.len())
        .flat_map(|item| (0..heads).map(move |head| (item, head)))
        .collect();
    // Every (item, head) task sets its block of `out` (the item's rows × the head's columns,
    // which together cover it), so it starts uninitialised.
    let out_len = total_queries * spec.v_channels;
    let mut out: Vec<f32> = Vec::with_capacity(out_len);
    let head = HeadAttention {
        spec,
        kernels,
        q,
        k,
        v,
        out: SendPtr(out.as_mut_ptr()),
        out_len,
    };
    if tasks.len() >= threads {
        tasks.par_iter().for_each(|&(item, h)| {
            let (qr, kr) = (&query_items[item], &kv_items[item]);
            if kernels.fused(kr.len()) {
                if qr.is_empty() {
                    return;
                }
                let (keys, values) = head.fused_operands(h, kr, false);
                return head.run_fused(h, qr.clone(), &keys, &values);
            }
            let packed = head.pack(h, kr);
            for rows in row_blocks(qr, kr.len()) {
                head.run(h, rows, kr, packed.as_ref(), 1);
            }
        });
    } else {
        for &(item, h) in &tasks {
            let (qr, kr) = (&query_items[item], &kv_items[item]);
            if kernels.fused(kr.len()) {
                // The head's keys and values packed once, its query rows in whole strips over
                // the threads: a row's output does not depend on its strip.
                let (keys, values) = head.fused_operands(h, kr, true);
                let per_thread = qr
                    .len()
                    .div_ceil(threads)
                    .next_multiple_of(bf16::ATTENTION_HEAD_STRIP_ROWS);
                let strips: Vec<Range<usize>> = (qr.start..qr.end)
                    .step_by(per_thread.max(1))
                    .map(|start| start..(start + per_thread).min(qr.end))
                    .collect();
                strips
                    .into_par_iter()
                    .for_each(|rows| head.run_fused(h, rows, &keys, &values));
                continue;
            }
            let packed = head.pack(h, kr);
            let blocks = row_blocks(qr, kr.len());
            // Few tasks (one text, one head) leave threads for the products themselves.
            let inner_threads = (threads / blocks.len()).max(1);
            blocks
                .into_par_iter()
                .for_each(|rows| head.run(h, rows, kr, packed.as_ref(), inner_threads));
        }
    }
    // SAFETY: the tasks have set every value of `out` (their blocks cover it; an item without
    // queries has no rows).
    unsafe { out.set_len(out_len) };
    out
}

/// The query rows of `rows` in blocks of [`score_block_rows`].
fn row_blocks(rows: &Range<usize>, keys: usize) -> Vec<Range<usize>> {
    let size = score_block_rows(keys);
    (rows.start..rows.end)
        .step_by(size)
        .map(|start| start..(start + size).min(rows.end))
        .collect()
}

/// Rows of a projection's heads side by side, `stride` values apart: a product's output of its
/// own, or its part of a stacked product's rows (`offset` values into each).
#[derive(Clone, Copy)]
struct HeadRows<'a> {
    data: &'a [f32],
    stride: usize,
}

impl<'a> HeadRows<'a> {
    fn new(rows: &'a [f32], offset: usize, stride: usize) -> Self {
        Self {
            data: rows.get(offset..).unwrap_or_default(),
            stride,
        }
    }

    /// Head `head` (`width` wide) of rows `first..first + rows`.
    fn head(&self, first: usize, rows: usize, head: usize, width: usize) -> View<'a> {
        View::strided(
            &self.data[first * self.stride + head * width..],
            rows,
            width,
            self.stride,
        )
    }
}

/// One attention's operands, shared by the tasks that each compute a block of its output.
struct HeadAttention<'a> {
    spec: &'a AttentionSpec,
    kernels: AttentionKernels,
    q: HeadRows<'a>,
    k: HeadRows<'a>,
    v: HeadRows<'a>,
    out: SendPtr,
    out_len: usize,
}

impl HeadAttention<'_> {
    /// The output's width (`v_channels`) and a head's on each side (`d_qk`, `d_v`).
    fn widths(&self) -> (usize, usize, usize) {
        let (qk, vc) = (self.spec.qk_channels, self.spec.v_channels);
        (vc, qk / self.spec.num_heads, vc / self.spec.num_heads)
    }

    /// Head `head`'s keys and values over the key rows `kr`, packed for their kernels: they are
    /// small next to the products. In bf16 a product runs on the bf16 kernel when the head is at
    /// least [`AttentionKernels::bf16_min_head_width`] wide on its side (keys: `d_qk`, values: `d_v`), else on the
    /// f32 kernel (the keys scaled there). `None` without an f32 kernel where one is needed.
    fn pack(&self, head: usize, kr: &Range<usize>) -> Option<(Packed, Packed)> {
        if kr.is_empty() {
            return None;
        }
        let (_, d_qk, d_v) = self.widths();
        let (keys_bf16, values_bf16) = (self.kernels.bf16(d_qk), self.kernels.bf16(d_v));
        if (!keys_bf16 || !values_bf16) && !sgemm::available() {
            return None;
        }
        let scale = 1.0 / (d_qk as f32).sqrt();
        let nk = kr.len();
        let k_h = self.k.head(kr.start, nk, head, d_qk);
        let v_h = self.v.head(kr.start, nk, head, d_v);
        let keys = match keys_bf16 {
            true => Packed::Bf16(bf16::PackedMatrix::pack_view(k_h, true, false)),
            false => Packed::F32(sgemm::PackedWeights::pack_view(k_h, true, scale, false)),
        };
        let values = match values_bf16 {
            true => Packed::Bf16(bf16::PackedMatrix::pack_view(v_h, false, false)),
            false => Packed::F32(sgemm::PackedWeights::pack_view(v_h, false, 1.0, false)),
        };
        Some((keys, values))
    }

    /// Attention of head `head` for the query rows `rows` over the key rows `kr`: sets that
    /// block of `out` (those rows × the head's `d_v` columns).
    fn run(
        &self,
        head: usize,
        rows: Range<usize>,
        kr: &Range<usize>,
        packed: Option<&(Packed, Packed)>,
        threads: usize,
    ) {
        let (vc, d_qk, d_v) = self.widths();
        let (nq, nk) = (rows.len(), kr.len());
        if nq == 0 {
            return;
        }
        let q_h = self.q.head(rows.start, nq, head, d_qk);
        let offset = rows.start * vc + head * d_v;
        assert!(offset + (nq - 1) * vc + d_v <= self.out_len);
        let mut scores = Vec::with_capacity(nq * nk);
        match packed {
            Some((keys, values)) => {
                match keys {
                    Packed::Bf16(keys) => {
                        // `matmul_accumulate` takes a dense A: the head's queries, scaled.
                        let queries = scaled_head(q_h, 1.0 / (d_qk as f32).sqrt());
                        scores.resize(nq * nk, 0.0);
                        keys.matmul_accumulate(&queries, nq, &mut scores, threads);
                    }
                    // SAFETY: `scores` has room for nq × nk values at row stride nk; the product
                    // sets every one of them (overwrite), so the length can then cover them.
                    Packed::F32(keys) => unsafe {
                        keys.matmul_view_raw(q_h, scores.as_mut_ptr(), nk, threads, true);
                        scores.set_len(nq * nk);
                    },
                }
                match values {
                    Packed::Bf16(values) => {
                        // Each row's softmax is taken in a scratch row and converted to bf16
                        // from there: the weights are never written back in f32.
                        let weights = |r: usize, row: &mut [f32]| {
                            rows::softmax_row_into(&scores[r * nk..(r + 1) * nk], row)
                        };
                        // SAFETY: as for the f32 kernel below; the product sets the block
                        // without reading it.
                        unsafe {
                            values.matmul_rows_raw(
                                bf16::Rows::Made(&weights),
                                nq,
                                self.out.get().add(offset),
                                vc,
                                threads,
                            )
                        }
                    }
                    Packed::F32(values) => {
                        rows::softmax_rows(&mut scores, nk);
                        // SAFETY: the block lies inside `out`'s allocation (asserted above) and
                        // is set (overwrite) by the product; blocks are disjoint, and nothing
                        // reads `out` until every task is done.
                        unsafe {
                            values.matmul_view_raw(
                                View::dense(&scores, nq, nk),
                                self.out.get().add(offset),
                                vc,
                                threads,
                                true,
                            )
                        }
                    }
                }
            }
            None => {
                let scale = 1.0 / (d_qk as f32).sqrt();
                let k_h = self.k.head(kr.start, nk, head, d_qk);
                let v_h = self.v.head(kr.start, nk, head, d_v);
                scores.resize(nq * nk, 0.0);
                let mut head_out = vec![0f32; nq * d_v];
                matmul(&mut scores, nk, q_h, Rhs::Transposed(k_h), scale, false, threads);
                rows::softmax_rows(&mut scores, nk);
                matmul(
                    &mut head_out,
                    d_v,
                    View::dense(&scores, nq, nk),
                    Rhs::Plain(v_h),
                    1.0,
                    false,
                    threads,
                );
                self.write_rows(&head_out, offset, d_v, vc);
            }
        }
    }

    /// A head's keys (packed transposed) and values over the keys `kr`, for
    /// [`run_fused`](Self::run_fused); packed over the pool when `parallel`.
    fn fused_operands(
        &self,
        head: usize,
        kr: &Range<usize>,
        parallel: bool,
    ) -> (bf16::PackedMatrix, bf16::PackedMatrix) {
        let (_, d_qk, d_v) = self.widths();
        let k_h = self.k.head(kr.start, kr.len(), head, d_qk);
        let v_h = self.v.head(kr.start, kr.len(), head, d_v);
        (
            bf16::PackedMatrix::pack_view(k_h, true, parallel),
            bf16::PackedMatrix::pack_view(v_h, false, parallel),
        )
    }

    /// [`run`](Self::run) as one bf16 kernel ([`bf16::attention_head_packed`]), on this thread,
    /// over the head's [`fused_operands`](Self::fused_operands): its output goes straight into
    /// its block of `out`.
    fn run_fused(
        &self,
        head: usize,
        rows: Range<usize>,
        keys: &bf16::PackedMatrix,
        values: &bf16::PackedMatrix,
    ) {
        let (vc, d_qk, d_v) = self.widths();
        let nq = rows.len();
        if nq == 0 {
            return;
        }
        let q_h = self.q.head(rows.start, nq, head, d_qk);
        let offset = rows.start * vc + head * d_v;
        assert!(offset + (nq - 1) * vc + d_v <= self.out_len);
        // SAFETY: the block (nq rows × d_v at row stride vc from `offset`) lies inside `out`'s
        // allocation (asserted above) and is set by the kernel; blocks are disjoint, and nothing
        // reads `out` until every task is done.
        unsafe {
            bf16::attention_head_packed(
                q_h,
                keys,
                values,
                1.0 / (d_qk as f32).sqrt(),
                self.out.get().add(offset),
                vc,
            )
        };
    }

    /// Writes a head's `[rows, d_v]` output into its block of `out` (row stride `vc`, from
    /// `offset`), which [`run`](Self::run) has checked lies inside `out`.
    fn write_rows(&self, head_out: &[f32], offset: usize, d_v: usize, vc: usize) {
        for (r, values) in head_out.chunks_exact(d_v).enumerate() {
            // SAFETY: row r of the block lies inside `out` (asserted by `run`); blocks are
            // disjoint, and nothing reads `out` until every task is done.
            unsafe {
                std::ptr::copy_nonoverlapping(values.as_ptr(), self.out.get().add(offset + r * vc), d_v)
            };
        }
    }
}

/// A head's queries (a strided view) as a dense `[rows, d_qk]` matrix times `scale`: the dense
/// left operand of `bf16::PackedMatrix::matmul_accumulate`, with attention's scale folded in.
fn scaled_head(q_h: View, scale: f32) -> Vec<f32> {
    (0..q_h.rows)
        .flat_map(|r| {
            q_h.data[r * q_h.stride..][..q_h.cols]
                .iter()
                .map(move |&x| x * scale)
        })
        .collect()
}

/// One head's keys or values, packed for the kernel that multiplies them.
enum Packed {
    /// For the f32 kernel (keys with the scale folded in).
    F32(sgemm::PackedWeights),
    /// For the bf16 kernel (the scale goes on the queries).
    Bf16(bf16::PackedMatrix),
}

/// The narrowest head side (`d_qk` for the scores, `d_v` for the weighted sum) whose product
/// runs on the bf16 kernel in bf16: narrower ones (the flow model's 32-wide heads) were faster
/// on the f32 kernel, product by product. (Where the heads run fused,
/// [`AttentionKernels::fused`], this does not apply.)
const BF16_MIN_HEAD_WIDTH: usize = 64;

/// The narrowest head side whose product runs on the bf16 kernel in bf16: [`BF16_MIN_HEAD_WIDTH`],
/// or none where that kernel widens bf16 to f32 (AVX2, and AVX-512 without AMX or a fast
/// `vdpbf16ps`): there the f32 kernel does the same multiply-adds without rounding and widening
/// the operands first.
fn bf16_min_head_width() -> usize {
    match cpu::bf16_kernel() {
        Bf16Kernel::Avx2 | Bf16Kernel::Avx512Widened => usize::MAX,
        _ => BF16_MIN_HEAD_WIDTH,
    }
}

/// Multiply-add work (2 FLOP each) of one layer of `spec` with `nq` queries over `nk` keys: the
/// query, key, value, output and MLP products and the attention's scores and weighted sum.
pub(crate) fn layer_flops(spec: &AttentionSpec, nq: usize, nk: usize) -> f64 {
    let (nq, nk) = (nq as f64, nk as f64);
    let (q, kv, qk, v) = (
        spec.q_dim as f64,
        spec.kv_dim as f64,
        spec.qk_channels as f64,
        spec.v_channels as f64,
    );
    let hidden = (spec.q_dim * spec.widening_factor) as f64;
    2.0 * (nq * q * qk + nk * kv * (qk + v) + nq * nk * (qk + v) + nq * v * q + 2.0 * nq * q * hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Activation;
    use crate::preprocess::InputArray;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// An attention of 8-wide queries and inputs, `qk` and `vc` channels over `heads` heads.
    fn spec(qk: usize, vc: usize, heads: usize) -> AttentionSpec {
        AttentionSpec {
            q_dim: 8,
            kv_dim: 8,
            qk_channels: qk,
            v_channels: vc,
            num_heads: heads,
            widening_factor: 1,
            use_query_residual: false,
            activation: Activation::GeluErf,
        }
    }

    /// The largest absolute difference between two outputs of the same length (infinite where
    /// either is NaN).
    fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "outputs of different lengths");
        a.iter()
            .zip(b)
            .map(|(x, y)| match (x - y).abs() {
                d if d.is_nan() => f32::INFINITY,
                d => d,
            })
            .fold(0f32, f32::max)
    }

    /// [`attend`] of `spec` over dense rows (`q` and `k` `qk_channels` wide, `v` `v_channels`),
    /// in `precision`, its heads fused or not.
    #[allow(clippy::too_many_arguments)]
    fn attend_dense(
        spec: &AttentionSpec,
        precision: Precision,
        fused_heads: bool,
        (q, k, v): (&[f32], &[f32], &[f32]),
        query_items: &[Range<usize>],
        kv_items: &[Range<usize>],
        threads: usize,
    ) -> Vec<f32> {
        let kernels = AttentionKernels {
            precision,
            bf16_min_head_width: BF16_MIN_HEAD_WIDTH,
            fused_heads,
            fused_blocks: false,
        };
        let (qk, vc) = (spec.qk_channels, spec.v_channels);
        let rows = |data, width| HeadRows::new(data, 0, width);
        attend(
            spec,
            kernels,
            rows(q, qk),
            query_items,
            rows(k, qk),
            rows(v, vc),
            kv_items,
            threads,
        )
    }

    /// A head run fused (on AMX or `vdpbf16ps`, natively or under `PERCEIVER_EMULATE_AMX` or
    /// `PERCEIVER_EMULATE_AVX512`): one item's one head
    /// with its 100 query rows in strips over three threads (0..64, 64..100) gives the rows of the
    /// whole head on one thread bit for bit, within bf16's rounding of f32 attention.
    #[test]
    fn fused_heads_shared_out_over_threads_equal_one_thread() {
        if !bf16::attention_head_available() {
            println!("skipped: no fused bf16 heads here (set PERCEIVER_EMULATE_AMX=1 or PERCEIVER_EMULATE_AVX512=1)");
            return;
        }
        let (qk, vc) = (40, 72);
        let spec = spec(qk, vc, 1);
        let (queries, keys) = (0..100, 0..70);
        let (q, k, v) = (random(100 * qk, 4), random(70 * qk, 5), random(70 * vc, 6));
        let run = |precision, fused_heads, threads| {
            let (queries, keys) = (std::slice::from_ref(&queries), std::slice::from_ref(&keys));
            attend_dense(
                &spec,
                precision,
                fused_heads,
                (&q, &k, &v),
                queries,
                keys,
                threads,
            )
        };
        let alone = run(Precision::Bf16, true, 1);
        assert_eq!(run(Precision::Bf16, true, 3), alone, "strips over three threads");
        let exact = run(Precision::F32, false, 1);
        let worst = max_difference(&exact, &alone);
        println!("one head fused against f32: worst {worst:.2e}");
        assert!(worst < 2e-2 && worst > 0.0, "{worst}");
    }

    /// Softmax attention in f64 of one item's queries over its keys, heads side by side.
    fn attention_in_f64(q: &[f32], k: &[f32], v: &[f32], qk: usize, vc: usize, heads: usize) -> Vec<f32> {
        let (d_qk, d_v) = (qk / heads, vc / heads);
        let (nq, nk) = (q.len() / qk, k.len() / qk);
        let mut out = vec![0f32; nq * vc];
        for h in 0..heads {
            for r in 0..nq {
                let scores: Vec<f64> = (0..nk)
                    .map(|c| {
                        let dot: f64 = (0..d_qk)
                            .map(|i| q[r * qk + h * d_qk + i] as f64 * k[c * qk + h * d_qk + i] as f64)
                            .sum();
                        dot / (d_qk as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for j in 0..d_v {
                    let weighted: f64 = (0..nk).map(|c| weights[c] * v[c * vc + h * d_v + j] as f64).sum();
                    out[r * vc + h * d_v + j] = (weighted / total) as f32;
                }
            }
        }
        out
    }

    /// Unfused f32 attention, whose heads run their query rows in blocks of
    /// [`score_block_rows`] (here 100 rows over 2,000 keys: four blocks, the last short; 40
    /// rows over 3,000 keys: one long block), on one thread per (item, head) and with the
    /// blocks over the threads, against softmax in f64.
    #[test]
    fn f32_attention_in_row_blocks_equals_softmax_in_f64() {
        let (qk, vc, heads) = (16, 24, 2);
        let spec = spec(qk, vc, heads);
        let (query_items, kv_items) = (vec![0..100, 100..140], vec![0..2000, 2000..5000]);
        assert!(score_block_rows(2000) < 100 && score_block_rows(3000) > 40);
        let q = random(140 * qk, 7);
        // Keys spread wide enough that the softmax is far from uniform.
        let k: Vec<f32> = random(5000 * qk, 8).iter().map(|x| 4.0 * x).collect();
        let v = random(5000 * vc, 9);
        let mut expected = attention_in_f64(&q[..100 * qk], &k[..2000 * qk], &v[..2000 * vc], qk, vc, heads);
        expected.extend(attention_in_f64(
            &q[100 * qk..],
            &k[2000 * qk..],
            &v[2000 * vc..],
            qk,
            vc,
            heads,
        ));
        for threads in [1, 2, 8] {
            let out = attend_dense(
                &spec,
                Precision::F32,
                false,
                (&q, &k, &v),
                &query_items,
                &kv_items,
                threads,
            );
            let worst = max_difference(&expected, &out);
            println!("f32 attention in row blocks, {threads} threads: worst {worst:.2e} against f64");
            assert!(worst < 1e-5, "{threads} threads: {worst}");
        }
    }

    /// A cross-attention layer of `spec` with seeded random weights, packed for f32.
    fn random_cross_attention(spec: AttentionSpec) -> AttentionLayer {
        random_cross_attention_in(spec, Precision::F32)
    }

    /// [`random_cross_attention`] packed for `precision`.
    fn random_cross_attention_in(spec: AttentionSpec, precision: Precision) -> AttentionLayer {
        let names = LayerNames::new("layer", spec, true);
        let shapes: std::collections::HashMap<String, Vec<usize>> = names
            .tensors()
            .into_iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let mut seed = 100;
        let mut layer = AttentionLayer::load(&names, &mut |name| {
            let shape = shapes[name].clone();
            seed += 1;
            Param::owned(random(shape.iter().product(), seed), shape)
        })
        .unwrap();
        layer.set_precision(precision);
        layer
    }

    /// A streamed cross-attention's case: two heads over 2,500 input rows 6 wide, with 100
    /// latents 8 wide (where absorbing the projections is less work).
    fn streamed_case() -> (AttentionSpec, Vec<f32>, InputArray) {
        let spec = AttentionSpec {
            q_dim: 8,
            kv_dim: 6,
            ..spec(16, 24, 2)
        };
        let latents = random(100 * 8, 11);
        let input = InputArray {
            values: random(2500 * 6, 12).iter().map(|x| 3.0 * x).collect(),
            items: crate::runtime::item_ranges([2500]),
        };
        assert_eq!(StreamedKeys::for_layer(&spec, 100), StreamedKeys::Absorbed);
        (spec, latents, input)
    }

    /// An f32 cross-attention streamed over its input (its heads' query rows in several blocks
    /// of scores over each block of keys, over two threads or one), with its keys projected or
    /// absorbed, equals the whole one up to rounding.
    #[test]
    fn a_streamed_f32_cross_attention_over_many_rows_equals_the_whole_one() {
        let (spec, latents, input) = streamed_case();
        let layer = random_cross_attention(spec);
        let queries = 0..100;
        let whole = layer.forward(
            Queries::Shared(&latents),
            std::slice::from_ref(&queries),
            Some((&input.values, &input.items)),
            2,
        );
        let projected = layer.project_queries(&latents, 2);
        assert!(
            score_block_rows(1000) < 100,
            "several blocks of scores over a block of keys"
        );
        let rows = input.item_rows(0);
        for keys in [StreamedKeys::Projected, StreamedKeys::Absorbed] {
            for (block_rows, threads) in [(7, 2), (1000, 2), (1000, 1), (2500, 2)] {
                let streamed =
                    layer.forward_streamed_as(keys, &latents, &projected, &rows, block_rows, threads);
                let worst = max_difference(&whole, &streamed);
                println!(
                    "streamed f32 ({keys:?}), blocks of {block_rows} rows, {threads} threads: worst {worst:.2e}"
                );
                assert!(
                    worst < 1e-4,
                    "{keys:?}, blocks of {block_rows}, {threads} threads: {worst}"
                );
            }
        }
    }

    /// In bf16 too (on the fused blocks where `vdpbf16ps` runs them, else on the bf16 kernel
    /// with an f32 softmax), a streamed cross-attention with its keys projected or absorbed is
    /// the f32 one up to bf16's rounding.
    #[test]
    fn a_streamed_bf16_cross_attention_is_the_f32_one_rounded() {
        let (spec, latents, input) = streamed_case();
        let exact = random_cross_attention(spec);
        let mut layer = random_cross_attention_in(spec, Precision::Bf16);
        layer.set_bf16_min_head_width(1);
        let rows = input.item_rows(0);
        let f32_projected = exact.project_queries(&latents, 2);
        let whole =
            exact.forward_streamed_as(StreamedKeys::Projected, &latents, &f32_projected, &rows, 1000, 2);
        let projected = layer.project_queries(&latents, 2);
        let largest = whole.iter().fold(0f32, |m, x| m.max(x.abs()));
        for keys in [StreamedKeys::Projected, StreamedKeys::Absorbed] {
            let streamed = layer.forward_streamed_as(keys, &latents, &projected, &rows, 1000, 2);
            let worst = max_difference(&whole, &streamed) / largest;
            println!("streamed bf16 ({keys:?}): worst {worst:.2e} of the largest value against f32");
            assert!(worst < 1e-2, "{keys:?}: {worst}");
        }
    }

    /// Key and value projections move off the input where that is fewer multiply-adds: the
    /// released image and flow encoders' (pixels with Fourier features, 1 head), not the
    /// language model's (768-wide bytes, 8 heads, narrow keys).
    #[test]
    fn streamed_keys_are_absorbed_where_that_is_less_work() {
        let cross = |kv_dim, qk, vc, heads| AttentionSpec {
            kv_dim,
            ..spec(qk, vc, heads)
        };
        let fourier = cross(261, 1024, 1024, 1);
        assert_eq!(StreamedKeys::for_layer(&fourier, 512), StreamedKeys::Absorbed);
        let flow = cross(322, 512, 512, 1);
        assert_eq!(StreamedKeys::for_layer(&flow, 2048), StreamedKeys::Absorbed);
        let language = cross(768, 256, 1280, 8);
        assert_eq!(StreamedKeys::for_layer(&language, 256), StreamedKeys::Projected);
    }

    /// Attention in bf16 (each product on the bf16 kernel where its head side is wide enough,
    /// else f32; and where the heads run fused, each as one) against f32, for heads of
    /// both kinds and two items of different lengths.
    #[test]
    fn bf16_attention_is_f32_attention_rounded() {
        // (qk_channels, v_channels, heads): both sides bf16; keys f32 and values bf16; both f32.
        for (qk, vc, heads) in [(256, 192, 2), (64, 160, 2), (64, 64, 2)] {
            let spec = spec(qk, vc, heads);
            let (query_items, kv_items) = (vec![0..37, 37..50], vec![0..70, 70..75]);
            let q = random(50 * qk, 1);
            let k = random(75 * qk, 2);
            let v = random(75 * vc, 3);
            let run = |precision, fused_heads| {
                // The bf16 kernel's products whatever the CPU's kernel (a widening one keeps
                // attention in f32 in the model).
                attend_dense(
                    &spec,
                    precision,
                    fused_heads,
                    (&q, &k, &v),
                    &query_items,
                    &kv_items,
                    2,
                )
            };
            let exact = run(Precision::F32, false);
            let worst = |rounded: &[f32]| max_difference(&exact, rounded);
            let rounded = run(Precision::Bf16, false);
            let products = worst(&rounded);
            println!("qk {qk}, v {vc}, {heads} heads: bf16 against f32, worst {products:.2e}");
            assert!(products < 2e-2, "qk {qk}, v {vc}: {products}");
            if qk / heads < BF16_MIN_HEAD_WIDTH && vc / heads < BF16_MIN_HEAD_WIDTH {
                assert_eq!(exact, rounded, "narrow heads stay f32");
            } else {
                assert!(products > 0.0, "wide heads run in bf16");
            }
            if bf16::attention_head_available() {
                let fused = worst(&run(Precision::Bf16, true));
                println!("qk {qk}, v {vc}, {heads} heads: fused heads against f32, worst {fused:.2e}");
                assert!(fused < 2e-2 && fused > 0.0, "qk {qk}, v {vc} fused: {fused}");
            }
        }
    }
}
