//! DeepMind's initialisation for training from scratch (Haiku defaults in `perceiver.py`):
//! linear weights from a truncated normal with variance 1/fan_in (VarianceScaling(1.0)), biases 0,
//! LayerNorm scale 1 and offset 0, position tables and latents from a truncated normal with
//! std 0.02, the byte embedding from a truncated normal with std 1. transformers instead draws
//! everything from normal(0, 0.02).

use candle_core::Tensor;
use candle_nn::VarMap;
use std::collections::HashMap;

use perceiver::checkpoint::names::{MaskedLmNames, ModelNames, Role, TensorName};
use perceiver::config::PerceiverConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::corpus::splitmix64;
use crate::error::Result;

/// Haiku's correction so that a normal truncated at ±2σ keeps the requested std.
const TRUNCATION_STD_CORRECTION: f64 = 0.879_625_661_034_239_8;

/// How one parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// Every element set to this value.
    Constant(f64),
    /// Normal(0, std) truncated at ±2 std.
    TruncatedNormal(f64),
    /// Normal(0, std).
    Normal(f64),
}

/// Every tensor of the model `config` describes (its `architectures`: the masked LM or a
/// classifier), by name, from the one name tree.
pub fn tensor_names(config: &PerceiverConfig) -> Result<HashMap<String, TensorName>> {
    Ok(ModelNames::new(config, 1)?
        .tensors()
        .into_iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect())
}

/// DeepMind's initialisation of a tensor, chosen by its role.
pub fn param_init(tensor: &TensorName) -> ParamInit {
    if let Some(init) = batch_norm_statistic(tensor) {
        return init;
    }
    match tensor.role {
        Role::NormWeight => ParamInit::Constant(1.0),
        Role::NormBias | Role::LinearBias => ParamInit::Constant(0.0),
        Role::LinearWeight | Role::ConvWeight => {
            // A kernel's fan-in is its input channels times its window.
            let fan_in = tensor.shape.iter().skip(1).product::<usize>().max(1) as f64;
            ParamInit::TruncatedNormal((1.0 / fan_in).sqrt() / TRUNCATION_STD_CORRECTION)
        }
        Role::Embedding => ParamInit::TruncatedNormal(1.0),
        // Latents, input and output position tables.
        _ => ParamInit::TruncatedNormal(0.02),
    }
}

/// BatchNorm's running statistics start as PyTorch starts them, whatever the scheme: mean 0,
/// variance 1, no batches counted.
fn batch_norm_statistic(tensor: &TensorName) -> Option<ParamInit> {
    match tensor.role {
        Role::NormStatistic if tensor.name.ends_with("running_var") => Some(ParamInit::Constant(1.0)),
        Role::NormStatistic | Role::Counter => Some(ParamInit::Constant(0.0)),
        _ => None,
    }
}

/// Which initialisation a from-scratch run uses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// DeepMind's (see the module docs).
    #[default]
    DeepMind,
    /// transformers' `_init_weights`: normal(0, initializer_range) for every weight matrix, table
    /// and latent array; LayerNorm 1/0; biases 0.
    Transformers,
    /// DeepMind's, then [`local_attention_init`]: every latent starts attending to the bytes around
    /// its own span and every output position to the latents around it. From-scratch byte MLMs
    /// otherwise sit for thousands of steps at the unigram plateau (see the function's docs).
    Local,
}

impl std::str::FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deepmind" => Ok(Self::DeepMind),
            "transformers" | "hf" => Ok(Self::Transformers),
            "local" => Ok(Self::Local),
            _ => Err(format!("unknown init {s:?} (deepmind, transformers, local)")),
        }
    }
}

/// The initialisation of a tensor under transformers' scheme.
pub fn transformers_param_init(tensor: &TensorName, initializer_range: f64) -> ParamInit {
    if let Some(init) = batch_norm_statistic(tensor) {
        return init;
    }
    match tensor.role {
        Role::NormWeight => ParamInit::Constant(1.0),
        Role::NormBias | Role::LinearBias => ParamInit::Constant(0.0),
        _ => ParamInit::Normal(initializer_range),
    }
}

/// Re-initialises every variable of `varmap` (the model `config` describes) with `scheme`.
pub fn initialize(varmap: &VarMap, scheme: InitScheme, config: &PerceiverConfig, seed: u64) -> Result<()> {
    if scheme == InitScheme::Local
        && perceiver::Architecture::of(config)? != perceiver::Architecture::MaskedLm
    {
        return Err(crate::error::Error::Options(
            "--init local shapes a masked LM's attention; use deepmind or transformers for a classifier"
                .into(),
        ));
    }
    match scheme {
        InitScheme::DeepMind => fill(varmap, seed, config, param_init),
        InitScheme::Transformers => fill(varmap, seed, config, |t| {
            transformers_param_init(t, config.initializer_range)
        }),
        InitScheme::Local => {
            fill(varmap, seed, config, param_init)?;
            local_attention_init(varmap, config)
        }
    }
}

/// Query/key gain of the encoder cross-attention's position blocks: peak attention logit ≈ 4 g² × 8.
const LOCAL_ENCODER_GAIN: f64 = 0.8;
/// The same for the decoder cross-attention.
const LOCAL_DECODER_GAIN: f64 = 1.0;
/// Size of the latents' position code against their other channels, so that it stays dominant in
/// the residual stream of the latents until training changes it.
const LOCAL_LATENT_SCALE: f64 = 6.0;
/// Where each encoder head looks, in bytes from the latent's span.
const LOCAL_ENCODER_SHIFTS: [f64; 8] = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0];
/// Where each decoder head looks, in bytes from the output position.
const LOCAL_DECODER_SHIFTS: [f64; 8] = [-6.0, -4.0, -2.0, 0.0, 0.0, 2.0, 4.0, 6.0];
/// Heads of the masked LM's decoder cross-attention (fixed by transformers' PerceiverForMaskedLM).
const DECODER_HEADS: usize = 8;

/// Gives a freshly initialised masked LM an attention pattern that starts local.
///
/// Why: with random position tables every latent sees the same average of the input, and every
/// output query the same average of the latents, so the model can only learn byte frequencies. Both
/// cross-attentions must learn to route by position at once, and from there the gradient towards
/// that is tiny: with DeepMind's or transformers' init our 4M default model, and transformers'
/// own model in PyTorch, stay at the unigram plateau for 7,000+ steps whatever the learning rate,
/// batch size or position-table scale (scripts/explore_recipes_torch.py). With this init they leave
/// it within ~1,000 steps.
///
/// How: the first `r` channels of the byte stream, of the latents and of the output queries are
/// reserved for a position code (cos/sin at frequencies π/2, π/4, …, one octave apart, whose dot
/// product peaks sharply at equal positions). The byte embedding is zero there, the input position
/// table holds the code of each byte (as large as the byte embedding's other channels), each latent
/// the code of the centre of its span of `max_position_embeddings / num_latents` bytes, and each
/// output query the code of its position. In both cross-attentions every head's first `r` query/key
/// channels compare these codes (keys read them as they are, queries rotated by the head's shift),
/// so each head attends around a position a few bytes away. The encoder's output projections write
/// nothing into the reserved channels of the latents, so the latents' codes reach the decoder
/// intact. Everything else keeps DeepMind's values; training is free to change all of it.
pub fn local_attention_init(varmap: &VarMap, config: &PerceiverConfig) -> Result<()> {
    let positions = config.max_position_embeddings;
    let latents = config.num_latents;
    let mut vars = Params::read(varmap)?;
    let names = MaskedLmNames::new(config);
    let enc_q_name = names.encoder.cross_attention.query.weight.name.as_str();
    let enc_k_name = names.encoder.cross_attention.key.weight.name.as_str();
    let dec_q_name = names.decoder.cross_attention.query.weight.name.as_str();
    let dec_k_name = names.decoder.cross_attention.key.weight.name.as_str();
    let enc_heads = config.num_cross_attention_heads;
    let enc_head_dim = vars.get(enc_q_name)?.rows / enc_heads;
    let dec_head_dim = vars.get(dec_q_name)?.rows / DECODER_HEADS;
    let wanted = 2 * (positions.max(2) as f64).log2().ceil() as usize;
    let r = enc_head_dim.min(dec_head_dim).min(wanted).min(config.d_model / 2) / 2 * 2;
    if r < 2 {
        return Err(crate::error::Error::Options(format!(
            "--init local needs at least 2 query/key channels per cross-attention head (found {} in the \
             encoder, {} in the decoder)",
            enc_head_dim, dec_head_dim
        )));
    }
    let freqs = r / 2;
    let code = |p: f64, out: &mut [f32], scale: f64| {
        for k in 0..freqs {
            let angle = p * std::f64::consts::PI / 2f64.powi(k as i32 + 1);
            out[2 * k] = (angle.cos() * scale) as f32;
            out[2 * k + 1] = (angle.sin() * scale) as f32;
        }
    };
    // R with R·code(p) = code(p + shift), written into an [r, r] block at (row0, 0).
    let rotation = |w: &mut Matrix, row0: usize, shift: f64, gain: f64| {
        for k in 0..freqs {
            let angle = shift * std::f64::consts::PI / 2f64.powi(k as i32 + 1);
            let (s, c) = angle.sin_cos();
            w.set(row0 + 2 * k, 2 * k, gain * c);
            w.set(row0 + 2 * k, 2 * k + 1, -gain * s);
            w.set(row0 + 2 * k + 1, 2 * k, gain * s);
            w.set(row0 + 2 * k + 1, 2 * k + 1, gain * c);
        }
    };
    let identity = |w: &mut Matrix, row0: usize, gain: f64| {
        for i in 0..r {
            w.set(row0 + i, i, gain);
        }
    };

    let embedding = vars.get_mut(&names.preprocessor.embeddings.name)?;
    let content_norm = ((embedding.cols - r) as f64).sqrt();
    for row in 0..embedding.rows {
        embedding.row_mut(row)[..r].fill(0.0);
    }
    let input_positions = vars.get_mut(&names.preprocessor.positions.name)?;
    input_positions.data.fill(0.0);
    for p in 0..input_positions.rows {
        code(
            p as f64,
            &mut input_positions.row_mut(p)[..r],
            content_norm / (freqs as f64).sqrt(),
        );
    }
    let latent_array = vars.get_mut(&names.encoder.latents.name)?;
    for j in 0..latent_array.rows {
        let centre = (j as f64 + 0.5) * positions as f64 / latents as f64 - 0.5;
        code(centre, &mut latent_array.row_mut(j)[..r], LOCAL_LATENT_SCALE);
    }
    let enc_q = vars.get_mut(enc_q_name)?;
    enc_q.data.fill(0.0);
    for h in 0..enc_heads {
        let shift = LOCAL_ENCODER_SHIFTS[h % LOCAL_ENCODER_SHIFTS.len()];
        rotation(enc_q, h * enc_head_dim, shift, LOCAL_ENCODER_GAIN);
    }
    let enc_k = vars.get_mut(enc_k_name)?;
    enc_k.data.fill(0.0);
    for h in 0..enc_heads {
        identity(enc_k, h * enc_head_dim, LOCAL_ENCODER_GAIN);
    }
    // The encoder's layers that write into the latents' residual stream.
    let encoder_layers = std::iter::once(&names.encoder.cross_attention).chain(&names.encoder.self_attends);
    let writes_latents: std::collections::HashSet<&str> = encoder_layers
        .flat_map(|l| [l.output.weight.name.as_str(), l.dense2.weight.name.as_str()])
        .collect();
    for (name, w) in vars.tensors.iter_mut() {
        if writes_latents.contains(name.as_str()) {
            w.data[..r * w.cols].fill(0.0);
        }
    }
    let output_positions = vars.get_mut(&names.decoder.queries.name)?;
    output_positions.data.fill(0.0);
    for p in 0..output_positions.rows {
        code(p as f64, &mut output_positions.row_mut(p)[..r], 1.0);
    }
    let dec_q = vars.get_mut(dec_q_name)?;
    dec_q.data.fill(0.0);
    for (h, shift) in LOCAL_DECODER_SHIFTS.iter().enumerate() {
        rotation(dec_q, h * dec_head_dim, *shift, LOCAL_DECODER_GAIN);
    }
    let dec_k = vars.get_mut(dec_k_name)?;
    for h in 0..DECODER_HEADS {
        dec_k.data[h * dec_head_dim * dec_k.cols..(h * dec_head_dim + r) * dec_k.cols].fill(0.0);
        identity(dec_k, h * dec_head_dim, LOCAL_DECODER_GAIN);
    }
    vars.write(varmap)
}

/// A row-major 2-D (or 1-D, as one row) parameter read out of a VarMap.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    fn set(&mut self, row: usize, col: usize, value: f64) {
        self.data[row * self.cols + col] = value as f32;
    }
    #[cfg(test)]
    fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.cols..(row + 1) * self.cols]
    }
    fn row_mut(&mut self, row: usize) -> &mut [f32] {
        &mut self.data[row * self.cols..(row + 1) * self.cols]
    }
}

/// The VarMap's parameters as plain matrices, edited, then written back.
struct Params {
    tensors: std::collections::BTreeMap<String, Matrix>,
}

impl Params {
    fn read(varmap: &VarMap) -> Result<Self> {
        let vars = varmap.data().lock().expect("varmap lock");
        let mut tensors = std::collections::BTreeMap::new();
        for (name, var) in vars.iter() {
            let dims = var.dims();
            let (rows, cols) = match dims {
                [n] => (1, *n),
                [r, c] => (*r, *c),
                _ => continue,
            };
            let data = var
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            tensors.insert(name.clone(), Matrix { rows, cols, data });
        }
        Ok(Self { tensors })
    }

    fn get(&self, name: &str) -> Result<&Matrix> {
        self.tensors.get(name).ok_or_else(|| missing(name))
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut Matrix> {
        self.tensors.get_mut(name).ok_or_else(|| missing(name))
    }

    fn write(self, varmap: &VarMap) -> Result<()> {
        let vars = varmap.data().lock().expect("varmap lock");
        for (name, matrix) in self.tensors {
            let var = &vars[&name];
            let t = Tensor::from_vec(matrix.data, var.dims(), var.device())?.to_dtype(var.dtype())?;
            var.set(&t)?;
        }
        Ok(())
    }
}

fn missing(name: &str) -> crate::error::Error {
    crate::error::Error::Options(format!("--init local: the model has no parameter {name}"))
}

/// Re-initialises every variable of `varmap` as DeepMind does. Each parameter draws from its own
/// stream seeded by `seed` and its name, so the result does not depend on iteration order.
pub fn deepmind_init(varmap: &VarMap, config: &PerceiverConfig, seed: u64) -> Result<()> {
    fill(varmap, seed, config, param_init)
}

fn fill(
    varmap: &VarMap,
    seed: u64,
    config: &PerceiverConfig,
    init: impl Fn(&TensorName) -> ParamInit,
) -> Result<()> {
    let names = tensor_names(config)?;
    let vars = varmap.data().lock().expect("varmap lock");
    for (name, var) in vars.iter() {
        let tensor = names
            .get(name)
            .ok_or_else(|| perceiver::Error::UnexpectedTensor {
                name: name.clone(),
                shape: var.dims().to_vec(),
            })?;
        let values = draw(tensor, var.dims(), init(tensor), seed, var.device())?;
        var.set(&values.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The starting values of `tensor` (of `shape`) under `init`, f32. Each tensor draws from its own
/// stream seeded by `seed` and its name, so the result does not depend on the order tensors are
/// drawn in.
pub fn draw(
    tensor: &TensorName,
    shape: &[usize],
    init: ParamInit,
    seed: u64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    let mut h = seed;
    for b in tensor.name.bytes() {
        h = splitmix64(h ^ b as u64);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let values: Vec<f32> = match init {
        ParamInit::Constant(c) => vec![c as f32; count],
        ParamInit::Normal(std) => (0..count)
            .map(|_| (Distribution::<f64>::sample(&StandardNormal, &mut rng) * std) as f32)
            .collect::<Vec<f32>>(),
        ParamInit::TruncatedNormal(std) => (0..count)
            .map(|_| loop {
                let z: f64 = StandardNormal.sample(&mut rng);
                if z.abs() <= 2.0 {
                    break (z * std) as f32;
                }
            })
            .collect(),
    };
    Ok(Tensor::from_vec(values, shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PerceiverForMaskedLM;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn layer_norm(x: &[f32]) -> Vec<f32> {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        x.iter().map(|v| (v - mean) / (var + 1e-12).sqrt()).collect()
    }

    /// `W · LayerNorm(row)` for each row (LayerNorm at its init: scale 1, offset 0).
    fn normed_projections(vars: &Params, weight: &str, rows: &[impl AsRef<[f32]>]) -> Vec<Vec<f32>> {
        let w = vars.get(weight).unwrap();
        rows.iter()
            .map(|row| project(w, &layer_norm(row.as_ref())))
            .collect()
    }

    fn project(w: &Matrix, x: &[f32]) -> Vec<f32> {
        (0..w.rows)
            .map(|r| {
                w.data[r * w.cols..(r + 1) * w.cols]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect()
    }

    /// For each query and head, the key index with the largest attention logit.
    fn argmax_keys(queries: &[Vec<f32>], keys: &[Vec<f32>], heads: usize) -> Vec<Vec<usize>> {
        let dim = queries[0].len() / heads;
        queries
            .iter()
            .map(|q| {
                (0..heads)
                    .map(|h| {
                        let logit =
                            |k: &Vec<f32>| -> f32 { (h * dim..(h + 1) * dim).map(|i| q[i] * k[i]).sum() };
                        (0..keys.len())
                            .max_by(|&a, &b| logit(&keys[a]).total_cmp(&logit(&keys[b])))
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    /// The property `local_attention_init` promises, checked on the parameters themselves (the
    /// LayerNorms are at their init, scale 1 and offset 0): every encoder head's strongest key for
    /// latent j is a byte within a byte of the centre of j's span plus the head's shift, for random
    /// text; every decoder head's strongest latent for output position p covers p plus its shift.
    /// (A head whose target falls outside the window is not checked: the octave code nearly repeats
    /// there, and such a head may look at the far end.)
    #[test]
    fn local_init_makes_both_cross_attentions_local() {
        let config = crate::presets::preset("small").unwrap();
        let varmap = VarMap::new();
        PerceiverForMaskedLM::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        initialize(&varmap, InitScheme::Local, &config, 7).unwrap();
        let vars = Params::read(&varmap).unwrap();
        let m = config.max_position_embeddings;
        let per_latent = m as f64 / config.num_latents as f64;
        let centre = |j: usize| (j as f64 + 0.5) * per_latent - 0.5;

        let embedding = vars
            .get("perceiver.input_preprocessor.embeddings.weight")
            .unwrap();
        let positions = vars
            .get("perceiver.input_preprocessor.position_embeddings.weight")
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let inputs: Vec<Vec<f32>> = (0..m)
            .map(|p| {
                let byte = rand::Rng::random_range(&mut rng, 6..embedding.rows);
                embedding
                    .row(byte)
                    .iter()
                    .zip(positions.row(p))
                    .map(|(e, q)| e + q)
                    .collect()
            })
            .collect();
        let latent_array = vars.get("perceiver.embeddings.latents").unwrap();
        let latent_rows: Vec<&[f32]> = (0..latent_array.rows).map(|j| latent_array.row(j)).collect();
        let enc = "perceiver.encoder.cross_attention.attention.self";
        let keys = normed_projections(&vars, &format!("{enc}.key.weight"), &inputs);
        let queries = normed_projections(&vars, &format!("{enc}.query.weight"), &latent_rows);
        let heads = config.num_cross_attention_heads;
        for (j, best) in argmax_keys(&queries, &keys, heads).iter().enumerate() {
            for (h, &p) in best.iter().enumerate() {
                let want = centre(j) + LOCAL_ENCODER_SHIFTS[h % 8];
                if want < 0.0 || want > (m - 1) as f64 {
                    continue; // aims outside the window: the code does not say where it lands
                }
                assert!(
                    (p as f64 - want).abs() <= 1.0,
                    "latent {j} head {h}: strongest byte {p}, wanted ~{want}"
                );
            }
        }

        let outputs = vars
            .get("perceiver.decoder.output_position_encodings.position_embeddings")
            .unwrap();
        let output_rows: Vec<&[f32]> = (0..m).map(|p| outputs.row(p)).collect();
        let dec = "perceiver.decoder.decoding_cross_attention.attention.self";
        let latent_keys = normed_projections(&vars, &format!("{dec}.key.weight"), &latent_rows);
        let output_queries = normed_projections(&vars, &format!("{dec}.query.weight"), &output_rows);
        for (p, best) in argmax_keys(&output_queries, &latent_keys, DECODER_HEADS)
            .iter()
            .enumerate()
        {
            for (h, &j) in best.iter().enumerate() {
                let want = p as f64 + LOCAL_DECODER_SHIFTS[h];
                if want < 0.0 || want > (m - 1) as f64 {
                    continue;
                }
                assert!(
                    (centre(j) - want).abs() <= per_latent,
                    "output {p} head {h}: strongest latent {j} (centre {}), wanted one near {want}",
                    centre(j)
                );
            }
        }
    }

    #[test]
    fn roles_map_to_deepmind_inits() {
        let config = PerceiverConfig {
            d_latents: 64,
            d_model: 64,
            qk_channels: Some(256),
            num_latents: 8,
            ..Default::default()
        };
        let names = MaskedLmNames::new(&config);
        let q = &names.encoder.self_attends[0].query.weight;
        assert_eq!(q.shape, vec![256, 64]);
        assert_eq!(
            param_init(q),
            ParamInit::TruncatedNormal(0.125 / TRUNCATION_STD_CORRECTION)
        );
        let ln = &names.encoder.self_attends[0].q_norm;
        assert_eq!(param_init(&ln.weight), ParamInit::Constant(1.0));
        assert_eq!(
            param_init(&names.encoder.cross_attention.mlp_norm.bias),
            ParamInit::Constant(0.0)
        );
        assert_eq!(param_init(&names.output_bias), ParamInit::Constant(0.0));
        assert_eq!(
            param_init(&names.encoder.latents),
            ParamInit::TruncatedNormal(0.02)
        );
        assert_eq!(
            param_init(&names.preprocessor.embeddings),
            ParamInit::TruncatedNormal(1.0)
        );
        assert_eq!(
            param_init(&names.preprocessor.positions),
            ParamInit::TruncatedNormal(0.02)
        );
        assert_eq!(
            param_init(&names.decoder.queries),
            ParamInit::TruncatedNormal(0.02)
        );
    }
}
