//! Named model layouts for training from scratch.

use perceiver::PerceiverConfig;

/// The layouts `perceiver train --preset` knows.
pub const PRESET_NAMES: [&str; 3] = ["tiny", "small", "base"];

/// The config of a named preset:
/// - `tiny`: ~0.45M parameters, 256 bytes, for tests and smoke runs.
/// - `small`: ~4M parameters, 256 bytes: the shipped default model's layout.
/// - `base`: the 201M layout of `deepmind/language-perceiver` (2048 bytes, 256×1280 latents,
///   26 latent layers).
pub fn preset(name: &str) -> Option<PerceiverConfig> {
    let config = match name {
        "tiny" => PerceiverConfig {
            d_model: 64,
            num_latents: 32,
            d_latents: 128,
            num_blocks: 1,
            num_self_attends_per_block: 2,
            num_self_attention_heads: 4,
            num_cross_attention_heads: 4,
            self_attention_widening_factor: 2,
            cross_attention_widening_factor: 1,
            max_position_embeddings: 256,
            // Attention dropout is not implemented by our trainer; say so in the config.
            attention_probs_dropout_prob: 0.0,
            ..PerceiverConfig::default()
        },
        "small" => PerceiverConfig {
            d_model: 128,
            num_latents: 128,
            d_latents: 256,
            num_blocks: 1,
            num_self_attends_per_block: 4,
            num_self_attention_heads: 8,
            num_cross_attention_heads: 8,
            self_attention_widening_factor: 4,
            cross_attention_widening_factor: 1,
            max_position_embeddings: 256,
            // Attention dropout is not implemented by our trainer; say so in the config.
            attention_probs_dropout_prob: 0.0,
            ..PerceiverConfig::default()
        },
        "base" => PerceiverConfig::language_perceiver(),
        _ => return None,
    };
    Some(config)
}
