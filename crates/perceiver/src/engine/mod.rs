//! The inference engine: the masked language model's forward pass on plain `f32` buffers, on
//! the kernels of [`perceiver_kernels`]: vectorised row kernels ([`rows`]), AVX-512 f32 products
//! ([`sgemm`]; the `gemm` crate on strided views, [`matmul`](mod@perceiver_kernels::matmul),
//! where AVX-512 is missing) and an optional bf16 path ([`bf16`], [`perceiver_kernels::amx`]).
//!
//! It computes what [`crate::PerceiverForMaskedLM`] (candle, trainable) computes, and the
//! parity tests hold both to transformers' numbers. It is faster because it does only the work
//! the answer needs:
//! - no padding: every text of a batch is encoded at its own length (the cross-attention runs per
//!   text), and only the asked output positions are decoded;
//! - heads are strided views into q/k/v (no transposed copies), and biases and residuals are
//!   accumulated into the product's output;
//! - LayerNorm, softmax and GELU are single passes, vectorised for the CPU at hand;
//! - weight matrices are packed once for their kernel, and their pages of the memory-mapped file
//!   ([`weights`]) released, so the process holds one copy.

pub mod linear;
pub mod weights;

use std::ops::Range;

use perceiver_kernels::matmul::{matmul, Rhs, View};
use perceiver_kernels::{bf16, rows, sgemm, SendPtr};
use rayon::prelude::*;

use crate::config::{Activation, AttentionSpec, PerceiverConfig, LAYER_NORM_EPS};
use crate::error::{Error, Result};
pub use linear::Linear;
pub use weights::Param;

/// Number type of the weight matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32: transformers' numbers.
    #[default]
    F32,
    /// Weight matrix products with bf16 operands and f32 accumulation (on AMX tiles or AVX-512
    /// BF16 where the CPU has them); attention, norms and activations stay in f32.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(Error::InvalidInput(format!(
                "unknown precision {other:?}: use f32 or bf16"
            ))),
        }
    }
}

/// A dense layer `x·Wᵀ + b` (W stored `[out, in]` as transformers stores it).
#[derive(Debug, Clone)]
struct Dense {
    weight: Param,
    bias: Param,
    /// W packed for the bf16 kernel, when the engine runs in bf16.
    packed: Option<bf16::PackedMatrix>,
    /// W packed for the f32 kernel (AVX-512 or AVX2), when the engine runs in f32 on such a CPU
    /// (shared by clones).
    packed_f32: Option<std::sync::Arc<sgemm::PackedWeights>>,
}

impl Dense {
    fn load(get: &mut dyn FnMut(&str) -> Result<Param>, prefix: &str) -> Result<Self> {
        Ok(Self {
            weight: get(&format!("{prefix}.weight"))?,
            bias: get(&format!("{prefix}.bias"))?,
            packed: None,
            packed_f32: None,
        })
    }

    fn out_dim(&self) -> usize {
        self.weight.shape()[0]
    }

    fn in_dim(&self) -> usize {
        self.weight.shape()[1]
    }

    fn set_precision(&mut self, precision: Precision) {
        let (n, k) = (self.out_dim(), self.in_dim());
        match precision {
            Precision::F32 => {
                self.packed = None;
                if sgemm::available() && self.packed_f32.is_none() {
                    self.packed_f32 = Some(std::sync::Arc::new(sgemm::PackedWeights::pack(
                        self.weight.data(),
                        n,
                        k,
                    )));
                    self.weight.release_pages();
                }
            }
            Precision::Bf16 => {
                self.packed = Some(bf16::PackedMatrix::pack_transposed(self.weight.data(), n, k));
                self.packed_f32 = None;
                self.weight.release_pages();
            }
        }
    }

    /// `x` (`[rows, in]`) → `[rows, out]`.
    fn forward(&self, x: &[f32], threads: usize) -> Vec<f32> {
        self.forward_activated(x, None, threads)
    }

    /// `act(x·Wᵀ + b)`: on the packed kernels the bias and the activation are applied by the
    /// product's tasks on their blocks of the output ([`sgemm::PackedWeights::linear`],
    /// [`bf16::PackedMatrix::linear`]).
    fn forward_activated(&self, x: &[f32], activation: Option<Activation>, threads: usize) -> Vec<f32> {
        let activation = activation.map(perceiver_kernels::Activation::from);
        let rows = x.len() / self.in_dim();
        match (&self.packed, &self.packed_f32) {
            (Some(bf16), _) => return bf16.linear(x, rows, self.bias.data(), activation, threads),
            (None, Some(f32)) => return f32.linear(x, rows, self.bias.data(), activation, threads),
            (None, None) => {}
        }
        let mut out = rows::repeat_rows(self.bias.data(), rows);
        self.accumulate(x, &mut out, threads);
        if let Some(act) = activation {
            rows::activate(&mut out, act);
        }
        out
    }

    /// `out += x·Wᵀ + b`: the residual stream takes the layer's output without another pass.
    fn forward_into(&self, x: &[f32], out: &mut [f32], threads: usize) {
        rows::add_to_rows(out, self.bias.data());
        self.accumulate(x, out, threads);
    }

    fn accumulate(&self, x: &[f32], out: &mut [f32], threads: usize) {
        let (n, k) = (self.out_dim(), self.in_dim());
        let rows = x.len() / k;
        match (&self.packed, &self.packed_f32) {
            (Some(bf16), _) => bf16.matmul_accumulate(x, rows, out, threads),
            (None, Some(f32)) => f32.matmul_accumulate(x, rows, out, threads),
            (None, None) => matmul(
                out,
                n,
                View::dense(x, rows, k),
                Rhs::Transposed(View::dense(self.weight.data(), n, k)),
                1.0,
                true,
                threads,
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Norm {
    weight: Param,
    bias: Param,
}

impl Norm {
    fn load(get: &mut dyn FnMut(&str) -> Result<Param>, prefix: &str) -> Result<Self> {
        Ok(Self {
            weight: get(&format!("{prefix}.weight"))?,
            bias: get(&format!("{prefix}.bias"))?,
        })
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        rows::layer_norm(x, self.weight.data(), self.bias.data(), LAYER_NORM_EPS as f32)
    }
}

/// A layer's queries.
#[derive(Clone, Copy)]
enum Queries<'a> {
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

/// Attention then MLP, each with a residual: transformers' `PerceiverLayer`.
#[derive(Debug, Clone)]
struct Layer {
    spec: AttentionSpec,
    q_norm: Norm,
    /// Cross-attention only: the norm of the keys'/values' input.
    kv_norm: Option<Norm>,
    query: Dense,
    key: Dense,
    value: Dense,
    output: Dense,
    mlp_norm: Norm,
    dense1: Dense,
    dense2: Dense,
}

impl Layer {
    fn load(
        spec: AttentionSpec,
        is_cross: bool,
        get: &mut dyn FnMut(&str) -> Result<Param>,
        prefix: &str,
    ) -> Result<Self> {
        let inner = format!("{prefix}.attention.self");
        Ok(Self {
            spec,
            q_norm: Norm::load(get, &format!("{inner}.layernorm1"))?,
            kv_norm: if is_cross {
                Some(Norm::load(get, &format!("{inner}.layernorm2"))?)
            } else {
                None
            },
            query: Dense::load(get, &format!("{inner}.query"))?,
            key: Dense::load(get, &format!("{inner}.key"))?,
            value: Dense::load(get, &format!("{inner}.value"))?,
            output: Dense::load(get, &format!("{prefix}.attention.output.dense"))?,
            mlp_norm: Norm::load(get, &format!("{prefix}.layernorm"))?,
            dense1: Dense::load(get, &format!("{prefix}.mlp.dense1"))?,
            dense2: Dense::load(get, &format!("{prefix}.mlp.dense2"))?,
        })
    }

    fn dense_layers(&mut self) -> [&mut Dense; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.output,
            &mut self.dense1,
            &mut self.dense2,
        ]
    }

    /// `queries`: `[Σ query rows, q_dim]`, item `i`'s rows at `query_items[i]`; `inputs`: the
    /// keys'/values' input `[Σ rows, kv_dim]` with its item ranges, `None` for self-attention.
    fn forward(
        &self,
        queries: Queries<'_>,
        query_items: &[Range<usize>],
        inputs: Option<(&[f32], &[Range<usize>])>,
        threads: usize,
    ) -> Vec<f32> {
        let rows = match queries {
            Queries::PerItem(rows) | Queries::Shared(rows) | Queries::Projected { rows, .. } => rows,
        };
        // For shared queries, the LayerNorm and the projection run on one copy.
        let q_in = match queries {
            Queries::Projected { .. } => Vec::new(),
            _ => self.q_norm.forward(rows),
        };
        let kv_norm;
        let (kv_in, kv_items) = match (inputs, &self.kv_norm) {
            (Some((inputs, items)), Some(norm)) => {
                kv_norm = norm.forward(inputs);
                (&kv_norm[..], items)
            }
            _ => {
                assert!(
                    matches!(queries, Queries::PerItem(_)),
                    "self-attention needs every item's queries"
                );
                (&q_in[..], query_items)
            }
        };
        let all_rows = |x: Vec<f32>| match queries {
            Queries::PerItem(_) | Queries::Projected { .. } => x,
            Queries::Shared(_) => x.repeat(query_items.len()),
        };
        let q_projected;
        let q = match queries {
            Queries::Projected { projected, .. } => projected,
            _ => {
                q_projected = all_rows(self.query.forward(&q_in, threads));
                &q_projected[..]
            }
        };
        let k = self.key.forward(kv_in, threads);
        let v = self.value.forward(kv_in, threads);
        let heads = attend(&self.spec, q, query_items, &k, &v, kv_items, threads);
        let mut x = if self.spec.use_query_residual {
            // The residual is the queries before their LayerNorm.
            let mut x = all_rows(rows.to_vec());
            self.output.forward_into(&heads, &mut x, threads);
            x
        } else {
            self.output.forward(&heads, threads)
        };
        let hidden =
            self.dense1
                .forward_activated(&self.mlp_norm.forward(&x), Some(self.spec.activation), threads);
        self.dense2.forward_into(&hidden, &mut x, threads);
        x
    }
}

/// Multi-head attention of each item's queries over that item's keys; heads concatenated.
/// Work is split over (item, head) pairs.
fn attend(
    spec: &AttentionSpec,
    q: &[f32],
    query_items: &[Range<usize>],
    k: &[f32],
    v: &[f32],
    kv_items: &[Range<usize>],
    threads: usize,
) -> Vec<f32> {
    let heads = spec.num_heads;
    let (qk, vc) = (spec.qk_channels, spec.v_channels);
    let (d_qk, d_v) = (qk / heads, vc / heads);
    let scale = 1.0 / (d_qk as f32).sqrt();
    let total_queries = query_items.last().map_or(0, |r| r.end);
    let tasks: Vec<(usize, usize)> = (0..query_items.len())
        .flat_map(|item| (0..heads).map(move |head| (item, head)))
        .collect();
    // Few tasks (one text, one head) leave threads for the products themselves.
    let inner_threads = (threads / tasks.len().max(1)).max(1);
    // Every (item, head) task sets its block of `out` (the item's rows × the head's columns,
    // which together cover it), so it starts uninitialised.
    let packed = sgemm::available();
    let out_len = total_queries * vc;
    let mut out: Vec<f32> = Vec::with_capacity(out_len);
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&(item, head)| {
        let (qr, kr) = (&query_items[item], &kv_items[item]);
        let (nq, nk) = (qr.len(), kr.len());
        if nq == 0 {
            return;
        }
        let q_h = View::strided(&q[qr.start * qk + head * d_qk..], nq, d_qk, qk);
        let k_h = View::strided(&k[kr.start * qk + head * d_qk..], nk, d_qk, qk);
        let v_h = View::strided(&v[kr.start * vc + head * d_v..], nk, d_v, vc);
        // This head's block of `out`: the item's rows, the head's d_v columns (row stride vc).
        let offset = qr.start * vc + head * d_v;
        assert!(offset + (nq - 1) * vc + d_v <= out_len);
        if packed {
            // Keys and values packed per head (they are small next to the products), the
            // scale folded into the keys.
            let keys = sgemm::PackedWeights::pack_view(k_h, true, scale, false);
            let mut scores = Vec::with_capacity(nq * nk);
            // SAFETY: `scores` has room for nq × nk values at row stride nk; the product sets
            // every one of them (overwrite), so the length can then cover them.
            unsafe {
                keys.matmul_view_raw(q_h, scores.as_mut_ptr(), nk, inner_threads, true);
                scores.set_len(nq * nk);
            }
            rows::softmax_rows(&mut scores, nk);
            let values = sgemm::PackedWeights::pack_view(v_h, false, 1.0, false);
            // SAFETY: the block lies inside `out`'s allocation (asserted above) and is set
            // (overwrite) by the product; tasks write disjoint blocks, and nothing reads `out`
            // until every task is done.
            unsafe {
                values.matmul_view_raw(
                    View::dense(&scores, nq, nk),
                    out_ptr.get().add(offset),
                    vc,
                    inner_threads,
                    true,
                )
            };
        } else {
            let mut scores = vec![0f32; nq * nk];
            let mut head_out = vec![0f32; nq * d_v];
            matmul(
                &mut scores,
                nk,
                q_h,
                Rhs::Transposed(k_h),
                scale,
                false,
                inner_threads,
            );
            rows::softmax_rows(&mut scores, nk);
            matmul(
                &mut head_out,
                d_v,
                View::dense(&scores, nq, nk),
                Rhs::Plain(v_h),
                1.0,
                false,
                inner_threads,
            );
            for (r, values) in head_out.chunks_exact(d_v).enumerate() {
                // SAFETY: as above; row r of the block lies inside `out`.
                unsafe {
                    std::ptr::copy_nonoverlapping(values.as_ptr(), out_ptr.get().add(offset + r * vc), d_v)
                };
            }
        }
    });
    // SAFETY: the tasks have set every value of `out` (their blocks cover it; an item without
    // queries has no rows).
    unsafe { out.set_len(out_len) };
    out
}

/// Runs a forward pass on a thread of rayon's pool (`rayon::scope` runs it in place when called
/// on one, so passes nest without another hop). Called from outside the pool, each of a pass's
/// ~100 parallel ops would be injected into the pool and waited for on a futex by the calling
/// thread, which sleeps and is woken per op; inside, the ops fork and join on the workers' own
/// queues. (Paired passes on a 2-core Zen 3: the default model 0.92 of the time at batch 1,
/// 0.98 at 16; the 201M model unchanged at batch 1, 0.95–0.99 on 1833 tokens all decoded.)
fn on_pool<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| pass())
}

/// Multiply-add work (2 FLOP each) of one layer of `spec` with `nq` queries over `nk` keys: the
/// query, key, value, output and MLP products and the attention's scores and weighted sum.
fn layer_flops(spec: &AttentionSpec, nq: usize, nk: usize) -> f64 {
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

/// Row ranges of consecutive items with the given row counts.
fn item_ranges(counts: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
    let mut start = 0;
    counts
        .into_iter()
        .map(|n| {
            let range = start..start + n;
            start += n;
            range
        })
        .collect()
}

/// The byte-level masked language model on the engine (weights as transformers names them).
#[derive(Debug, Clone)]
pub struct MaskedLmEngine {
    config: PerceiverConfig,
    /// `[vocab, d_model]`, also the tied output projection.
    embeddings: Param,
    input_positions: Param,
    latents: Param,
    encoder_cross_attention: Layer,
    self_attends: Vec<Layer>,
    /// `[max_positions, d_model]`: the decoder's queries.
    output_queries: Param,
    /// `[max_positions, qk_channels]`: the decoder's queries after its LayerNorm and query
    /// projection, the same for every pass (computed whenever the weights are packed). On the
    /// packed kernels a row's values do not depend on the rows computed with it, so gathering
    /// them gives bit for bit what projecting the gathered rows would; on the `gemm` crate's
    /// path, the same up to rounding.
    projected_output_queries: Vec<f32>,
    decoder: Layer,
    /// The tied embedding decoder, `hidden · Eᵀ + bias` (E shared with `embeddings`). It stays
    /// f32 in bf16 mode: it is ~1% of the work and its rounding would reach every logit.
    output: Dense,
    precision: Precision,
    threads: usize,
}

impl MaskedLmEngine {
    /// Builds the engine from tensors by transformers name; `get` must return each with the shape
    /// `config` implies (the loaders check every shape before calling this). Its products run in
    /// f32; see [`from_params_as`](Self::from_params_as).
    pub fn from_params(config: &PerceiverConfig, get: &mut dyn FnMut(&str) -> Result<Param>) -> Result<Self> {
        Self::from_params_as(config, get, Precision::F32)
    }

    /// [`from_params`](Self::from_params) with the weight products in `precision` from the
    /// start: in bf16 no f32 copy of the weights is packed on the way (the 201M model's peak
    /// memory is then about its bf16 copy plus the mapped file, instead of the f32 copy plus
    /// the bf16 one).
    pub fn from_params_as(
        config: &PerceiverConfig,
        get: &mut dyn FnMut(&str) -> Result<Param>,
        precision: Precision,
    ) -> Result<Self> {
        config.validate()?;
        let p = "perceiver";
        let self_spec = config.self_attention_spec();
        let self_attends = (0..config.num_self_attends_per_block)
            .map(|i| {
                Layer::load(
                    self_spec.clone(),
                    false,
                    get,
                    &format!("{p}.encoder.self_attends.{i}"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let embeddings = get(&format!("{p}.input_preprocessor.embeddings.weight"))?;
        Ok(Self {
            config: config.clone(),
            output: Dense {
                weight: embeddings.clone(),
                bias: get("embedding_decoder.bias")?,
                packed: None,
                packed_f32: None,
            },
            embeddings,
            input_positions: get(&format!("{p}.input_preprocessor.position_embeddings.weight"))?,
            latents: get(&format!("{p}.embeddings.latents"))?,
            encoder_cross_attention: Layer::load(
                config.encoder_cross_attention_spec(),
                true,
                get,
                &format!("{p}.encoder.cross_attention"),
            )?,
            self_attends,
            output_queries: get(&format!(
                "{p}.decoder.output_position_encodings.position_embeddings"
            ))?,
            decoder: Layer::load(
                config.masked_lm_decoder_spec(),
                true,
                get,
                &format!("{p}.decoder.decoding_cross_attention"),
            )?,
            projected_output_queries: Vec::new(),
            precision: Precision::F32,
            threads: 0,
        }
        .with_packed_weights(precision))
    }

    fn with_packed_weights(mut self, precision: Precision) -> Self {
        self.apply_precision(precision);
        self
    }

    pub fn config(&self) -> &PerceiverConfig {
        &self.config
    }

    /// The longest input (in ids, special tokens included) the model takes.
    pub fn max_len(&self) -> usize {
        self.config.max_position_embeddings
    }

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

    /// Packs every weight matrix for `precision`'s kernel (also on construction, for f32).
    fn apply_precision(&mut self, precision: Precision) {
        let layers = std::iter::once(&mut self.encoder_cross_attention)
            .chain(self.self_attends.iter_mut())
            .chain(std::iter::once(&mut self.decoder));
        for layer in layers {
            for dense in layer.dense_layers() {
                dense.set_precision(precision);
            }
        }
        self.output.set_precision(Precision::F32);
        self.precision = precision;
        let threads = rayon::current_num_threads();
        self.projected_output_queries = on_pool(|| {
            let normed = self.decoder.q_norm.forward(self.output_queries.data());
            self.decoder.query.forward(&normed, threads)
        });
    }

    /// Threads for one forward pass; 0 (the default) means rayon's pool size.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads;
    }

    fn threads(&self) -> usize {
        if self.threads == 0 {
            rayon::current_num_threads()
        } else {
            self.threads
        }
    }

    fn check_ids(&self, texts: &[&[u32]]) -> Result<()> {
        let vocab = self.config.vocab_size as u32;
        for text in texts {
            if text.is_empty() {
                return Err(Error::InvalidInput("the input is empty".into()));
            }
            if text.len() > self.max_len() {
                return Err(Error::InvalidInput(format!(
                    "input is {} tokens long, the model takes at most {}",
                    text.len(),
                    self.max_len()
                )));
            }
            if let Some(id) = text.iter().find(|&&id| id >= vocab) {
                return Err(Error::InvalidInput(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    /// Encodes each text (ids, no padding) into latents: `[texts · num_latents, d_latents]`,
    /// text `i`'s latents in rows `i·num_latents..`.
    pub fn encode(&self, texts: &[&[u32]]) -> Result<Vec<f32>> {
        on_pool(|| self.encode_here(texts))
    }

    fn encode_here(&self, texts: &[&[u32]]) -> Result<Vec<f32>> {
        self.check_ids(texts)?;
        let mut z = self.cross_attend(texts);
        let n = self.config.num_latents;
        let latent_items = item_ranges(std::iter::repeat_n(n, texts.len()));
        let threads = self.threads();
        for _ in 0..self.config.num_blocks {
            for layer in &self.self_attends {
                z = layer.forward(Queries::PerItem(&z), &latent_items, None, threads);
            }
        }
        Ok(z)
    }

    /// The encoder's cross-attention: each (checked) text's embedded bytes onto the learned
    /// latents, `[texts · num_latents, d_latents]`.
    fn cross_attend(&self, texts: &[&[u32]]) -> Vec<f32> {
        let threads = self.threads();
        let d_model = self.config.d_model;
        let positions = self.input_positions.data();
        let table = self.embeddings.data();
        let mut inputs = Vec::with_capacity(texts.iter().map(|t| t.len()).sum::<usize>() * d_model);
        for text in texts {
            for (p, &id) in text.iter().enumerate() {
                let e = &table[id as usize * d_model..][..d_model];
                let pos = &positions[p * d_model..][..d_model];
                inputs.extend(e.iter().zip(pos).map(|(a, b)| a + b));
            }
        }
        let input_items = item_ranges(texts.iter().map(|t| t.len()));
        let n = self.config.num_latents;
        let latent_items = item_ranges(std::iter::repeat_n(n, texts.len()));
        // Every text's queries are the same learned latents.
        self.encoder_cross_attention.forward(
            Queries::Shared(self.latents.data()),
            &latent_items,
            Some((&inputs, &input_items)),
            threads,
        )
    }

    /// Logits at the given output positions of each encoded text: `[Σ positions, vocab]`, text
    /// `i`'s rows after those of texts before it.
    pub fn decode(&self, latents: &[f32], positions: &[&[usize]]) -> Result<Vec<f32>> {
        on_pool(|| self.decode_here(latents, positions))
    }

    fn decode_here(&self, latents: &[f32], positions: &[&[usize]]) -> Result<Vec<f32>> {
        let (n, d_latents, d_model) = (
            self.config.num_latents,
            self.config.d_latents,
            self.config.d_model,
        );
        if latents.len() != positions.len() * n * d_latents {
            return Err(Error::InvalidInput(format!(
                "{} latent values for {} texts of {n}x{d_latents}",
                latents.len(),
                positions.len()
            )));
        }
        let table = self.output_queries.data();
        let qk = self.decoder.spec.qk_channels;
        let count = positions.iter().map(|p| p.len()).sum::<usize>();
        // The queries themselves serve only as the residual.
        let residual = self.decoder.spec.use_query_residual;
        let mut queries = Vec::with_capacity(if residual { count * d_model } else { 0 });
        let mut projected = Vec::with_capacity(count * qk);
        for &p in positions.iter().flat_map(|p| p.iter()) {
            if p >= self.max_len() {
                return Err(Error::InvalidInput(format!(
                    "output position {p} is outside the model's {}",
                    self.max_len()
                )));
            }
            if residual {
                queries.extend_from_slice(&table[p * d_model..][..d_model]);
            }
            projected.extend_from_slice(&self.projected_output_queries[p * qk..][..qk]);
        }
        let threads = self.threads();
        let query_items = item_ranges(positions.iter().map(|p| p.len()));
        let latent_items = item_ranges(std::iter::repeat_n(n, positions.len()));
        let hidden = self.decoder.forward(
            Queries::Projected {
                rows: &queries,
                projected: &projected,
            },
            &query_items,
            Some((latents, &latent_items)),
            threads,
        );
        Ok(self.logits(&hidden, threads))
    }

    /// Tied embedding decoder: `hidden · Eᵀ + bias`.
    fn logits(&self, hidden: &[f32], threads: usize) -> Vec<f32> {
        self.output.forward(hidden, threads)
    }

    /// Multiply-add work (2 FLOP each) of the matrix products of one forward pass over texts of
    /// `input_lens` tokens with `output_counts` decoded positions each: what a speed in GFLOP/s
    /// is measured against. The decoder's query projection is not part of it: it is computed
    /// once at load ([`reference_flops`](Self::reference_flops) counts it).
    pub fn forward_flops(&self, input_lens: &[usize], output_counts: &[usize]) -> f64 {
        let decoder = self.config.masked_lm_decoder_spec();
        let projection = (decoder.q_dim * decoder.qk_channels) as f64;
        self.reference_flops(input_lens, output_counts)
            - 2.0 * projection * output_counts.iter().sum::<usize>() as f64
    }

    /// [`forward_flops`](Self::forward_flops) for an implementation that projects the decoder's
    /// queries in every pass, as transformers does: its pass over a padded batch is this with
    /// every length set to the padded length and every count to `max_len()`.
    pub fn reference_flops(&self, input_lens: &[usize], output_counts: &[usize]) -> f64 {
        let c = &self.config;
        let latents = c.num_latents;
        let mut total = 0.0;
        for (&len, &outputs) in input_lens.iter().zip(output_counts) {
            total += layer_flops(&c.encoder_cross_attention_spec(), latents, len);
            total += (c.num_blocks * c.num_self_attends_per_block) as f64
                * layer_flops(&c.self_attention_spec(), latents, latents);
            total += layer_flops(&c.masked_lm_decoder_spec(), outputs, latents);
            total += 2.0 * (outputs * c.d_model * c.vocab_size) as f64;
        }
        total
    }

    /// Runs latent self-attention layer `index` (of `num_self_attends_per_block`; every block
    /// repeats the same layers) over `latents`, `[texts · num_latents, d_latents]` as
    /// [`encode`](Self::encode) returns them: what each step of the encoder's latent stack
    /// does, exposed for timing one layer (`perceiver bench latent`) and for inspecting it.
    pub fn latent_layer(&self, index: usize, latents: &[f32]) -> Result<Vec<f32>> {
        let layers = self.self_attends.len();
        if index >= layers {
            return Err(Error::InvalidInput(format!(
                "latent layer {index} does not exist: the model has {layers}"
            )));
        }
        let (n, d) = (self.config.num_latents, self.config.d_latents);
        if latents.is_empty() || latents.len() % (n * d) != 0 {
            return Err(Error::InvalidInput(format!(
                "{} latent values are not texts of {n}x{d}",
                latents.len()
            )));
        }
        let items = item_ranges(std::iter::repeat_n(n, latents.len() / (n * d)));
        let threads = self.threads();
        Ok(on_pool(|| {
            self.self_attends[index].forward(Queries::PerItem(latents), &items, None, threads)
        }))
    }

    /// The multiply-add work (2 FLOP each) of [`latent_layer`](Self::latent_layer) over `texts`
    /// texts: its six weight products and the attention's two.
    pub fn latent_layer_flops(&self, texts: usize) -> f64 {
        let n = self.config.num_latents;
        texts as f64 * layer_flops(&self.config.self_attention_spec(), n, n)
    }

    /// Encodes the texts and decodes the given positions of each: logits `[Σ positions, vocab]`.
    pub fn logits_at(&self, texts: &[&[u32]], positions: &[&[usize]]) -> Result<Vec<f32>> {
        if texts.len() != positions.len() {
            return Err(Error::InvalidInput(format!(
                "{} texts but {} position lists",
                texts.len(),
                positions.len()
            )));
        }
        // One hop onto the pool for both halves.
        on_pool(|| {
            let latents = self.encode(texts)?;
            self.decode(&latents, positions)
        })
    }

    /// What transformers' `PerceiverForMaskedLM` returns for one unpadded text: logits at every
    /// output position, `[max_len, vocab]`.
    pub fn logits_all(&self, text: &[u32]) -> Result<Vec<f32>> {
        let all: Vec<usize> = (0..self.max_len()).collect();
        self.logits_at(&[text], &[&all])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loading::{load_engine, ModelFiles};

    fn fixture_engine(name: &str) -> MaskedLmEngine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity")
            .join(name);
        load_engine(&ModelFiles::from_dir(&dir).unwrap()).unwrap()
    }

    /// The encoder's latents after its cross-attention, then each latent layer by
    /// `latent_layer`, block after block, give `encode`'s latents bit for bit (two texts of
    /// different lengths; a fixture with three blocks of two layers).
    #[test]
    fn latent_layers_in_turn_give_the_encoders_latents() {
        let engine = fixture_engine("tiny_shared_blocks");
        assert!(engine.config.num_blocks > 1 && engine.self_attends.len() > 1);
        let texts: [&[u32]; 2] = [&[1, 70, 80, 90, 2], &[1, 100, 101, 2]];
        let encoded = engine.encode(&texts).unwrap();
        let mut z = on_pool(|| engine.cross_attend(&texts));
        for _ in 0..engine.config.num_blocks {
            for index in 0..engine.self_attends.len() {
                z = engine.latent_layer(index, &z).unwrap();
            }
        }
        assert_eq!(z, encoded);
    }

    #[test]
    fn latent_layer_rejects_bad_input() {
        let engine = fixture_engine("tiny_shared_blocks");
        let (n, d) = (engine.config.num_latents, engine.config.d_latents);
        let z = vec![0.5f32; n * d];
        assert!(engine.latent_layer(0, &z).is_ok());
        assert!(engine.latent_layer(engine.self_attends.len(), &z).is_err());
        assert!(engine.latent_layer(0, &z[1..]).is_err());
        assert!(engine.latent_layer(0, &[]).is_err());
    }
}
