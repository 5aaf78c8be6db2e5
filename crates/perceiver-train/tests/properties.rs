//! Laws the architecture guarantees, checked on random inputs with a fixture model:
//! - the encoder is invariant to the order of its input array (positions are in the inputs);
//! - masked padding contributes nothing, whatever ids it holds;
//! - decoding any subset of output positions gives those rows of a full decode.

use candle_core::{Device, IndexOp, Tensor};
use common::max_abs_diff;
use perceiver_train::PerceiverForMaskedLM;

mod common;
use proptest::prelude::*;

fn model() -> &'static PerceiverForMaskedLM {
    static MODEL: std::sync::OnceLock<PerceiverForMaskedLM> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| common::load(&common::fixtures().join("parity/tiny_qk_v_explicit")))
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// Random byte ids (and some mask ids) of a length the fixture model takes.
fn token_ids() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(prop_oneof![6u32..262, Just(3u32)], 1..=40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn encoder_ignores_the_order_of_its_inputs(ids in token_ids(), seed in any::<u64>()) {
        let model = model();
        let inputs = model.embed(&ids_tensor(&ids)).unwrap();
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        // A seeded Fisher-Yates shuffle.
        let mut state = seed | 1;
        for i in (1..order.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let permuted = inputs.index_select(&Tensor::new(order.as_slice(), &Device::Cpu).unwrap(), 1).unwrap();
        let a = model.encoder().forward(&inputs, None).unwrap();
        let b = model.encoder().forward(&permuted, None).unwrap();
        prop_assert!(max_abs_diff(&a, &b) < 1e-4);
    }

    #[test]
    fn masked_padding_contributes_nothing(ids in token_ids(), pad in prop::collection::vec(0u32..262, 1..20)) {
        let model = model();
        let len = ids.len();
        prop_assume!(len + pad.len() <= model.max_len());
        let alone = model.forward(&ids_tensor(&ids), None).unwrap();
        let mut padded = ids.clone();
        padded.extend(&pad);
        let mask: Vec<u32> = (0..padded.len()).map(|i| u32::from(i < len)).collect();
        let with_garbage = model.forward(&ids_tensor(&padded), Some(&ids_tensor(&mask))).unwrap();
        prop_assert!(max_abs_diff(&alone, &with_garbage) < 1e-4);
    }

    #[test]
    fn any_subset_of_outputs_decodes_to_the_full_decode_rows(
        ids in token_ids(),
        picks in prop::collection::vec(0usize..64, 1..30),
    ) {
        let model = model();
        let latents = model.encode(&ids_tensor(&ids), None).unwrap();
        let full = model.decode_all(&latents).unwrap().i(0).unwrap();
        let positions: Vec<u32> = picks.iter().map(|&p| (p % model.max_len()) as u32).collect();
        let subset = model.decode(&latents, &ids_tensor(&positions)).unwrap().i(0).unwrap();
        let rows = full.index_select(&Tensor::new(positions.as_slice(), &Device::Cpu).unwrap(), 0).unwrap();
        prop_assert!(max_abs_diff(&subset, &rows) < 1e-5);
    }
}
