//! Optical flow against transformers and DeepMind's Colab: the tiny `PerceiverForOpticalFlow`
//! models `scripts/make_flow_fixtures.py` wrote to `tests/fixtures/flow/` (configs unlike the
//! released one), transformers' logits on one tile, and the Colab's tiling around transformers'
//! model (transcribed in NumPy by the script) on frames larger than the tile; and the released
//! layout's tensor names and shapes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use perceiver::checkpoint::expected_tensors;
use perceiver::image::{decode_image, RgbImage};
use perceiver::preprocess::FramePair;
use perceiver::tasks::flow::{OpticalFlow, Tile};
use perceiver::{Architecture, Loader, PerceiverConfig, PerceiverModel, Precision};

/// Largest accepted |Δ| against the reference, relative to the largest |value| of the
/// reference (the model runs in float64 there, f32 here).
const RELATIVE_TOLERANCE: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flow")
}

fn load(name: &str, precision: Precision) -> PerceiverModel {
    Loader::new(root().join(name).to_str().unwrap())
        .precision(precision)
        .load()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn cases(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join(name).join("cases.safetensors"), &Device::Cpu).unwrap()
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn frame(file: &str) -> RgbImage {
    decode_image(&std::fs::read(root().join("frames").join(file)).unwrap()).unwrap()
}

#[derive(serde::Deserialize)]
struct Pair {
    model: String,
    pair: String,
    frames: [String; 2],
    height: usize,
    width: usize,
    tile: [usize; 2],
    grid: Vec<[usize; 2]>,
}

fn pairs() -> Vec<Pair> {
    serde_json::from_str(&std::fs::read_to_string(root().join("pairs.json")).unwrap()).unwrap()
}

fn frames(pair: &Pair) -> FramePair {
    FramePair::from_images(&frame(&pair.frames[0]), &frame(&pair.frames[1])).unwrap()
}

/// Worst |Δ| and the reference's largest |value|.
fn compare(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len());
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let scale = theirs.iter().map(|v| v.abs()).fold(0.0, f32::max);
    (worst, scale)
}

/// The patches we cut from the first tile are transformers' `inputs` (`[1, 2, 27, H, W]`),
/// value for value.
#[test]
fn patches_equal_the_reference_input() {
    let mut checked = 0;
    for pair in pairs() {
        let cases = cases(&pair.model);
        let Some(reference) = cases.get(&format!("{}.patches", pair.pair)) else {
            continue;
        };
        let reference = values(reference);
        let [th, tw] = pair.tile;
        let tile = frames(&pair).crop(0, 0, th, tw).unwrap();
        let ours = tile.patches();
        for t in 0..2 {
            for c in 0..27 {
                for p in 0..th * tw {
                    let theirs = reference[((t * 27 + c) * th * tw) + p];
                    assert_eq!(
                        ours[p * 54 + t * 27 + c],
                        theirs,
                        "{} frame {t} channel {c} pixel {p}",
                        pair.pair
                    );
                }
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no fixture has patches");
}

/// The model on one tile against transformers' logits.
#[test]
fn tile_logits_equal_transformers() {
    for pair in pairs() {
        let model = load(&pair.model, Precision::F32);
        let cases = cases(&pair.model);
        let expected = values(&cases[&format!("{}.tile_logits", pair.pair)]);
        let [th, tw] = pair.tile;
        let tile = frames(&pair).crop(0, 0, th, tw).unwrap();
        let ours = model.optical_flow(&[&tile]).unwrap();
        let (worst, scale) = compare(&ours, &expected);
        println!(
            "{}/{}: max |Δ logit| = {worst:.3e} (largest |logit| {scale:.3})",
            pair.model, pair.pair
        );
        assert!(
            worst <= RELATIVE_TOLERANCE * scale,
            "{}/{}",
            pair.model,
            pair.pair
        );
    }
}

/// Two tiles in one batch give each tile's own logits.
#[test]
fn a_batch_of_tiles_gives_each_tiles_logits() {
    let pair = pairs().into_iter().find(|p| p.grid.len() > 1).unwrap();
    let model = load(&pair.model, Precision::F32);
    let [th, tw] = pair.tile;
    let all = frames(&pair);
    let a = all.crop(0, 0, th, tw).unwrap();
    let b = all.crop(pair.height - th, pair.width - tw, th, tw).unwrap();
    let batch = model.optical_flow(&[&a, &b]).unwrap();
    let (one_a, one_b) = (
        model.optical_flow(&[&a]).unwrap(),
        model.optical_flow(&[&b]).unwrap(),
    );
    let (worst_a, _) = compare(&batch[..one_a.len()], &one_a);
    let (worst_b, _) = compare(&batch[one_a.len()..], &one_b);
    assert!(worst_a <= 1e-6 && worst_b <= 1e-6, "{worst_a} {worst_b}");
}

/// Frames larger than the tile, tiled and blended as the Colab does, against the Colab's
/// tiling around transformers' model; the grid is the Colab's.
#[test]
fn tiled_flow_equals_the_colab_around_transformers() {
    for pair in pairs() {
        let task = OpticalFlow::new(load(&pair.model, Precision::F32)).unwrap();
        let expected_grid: Vec<Tile> = pair.grid.iter().map(|&[top, left]| Tile { top, left }).collect();
        assert_eq!(
            task.grid(pair.height, pair.width).unwrap(),
            expected_grid,
            "{}",
            pair.pair
        );
        let cases = cases(&pair.model);
        let expected = values(&cases[&format!("{}.flow", pair.pair)]);
        let output = task.flow(&frames(&pair)).unwrap();
        assert_eq!(
            (output.field.height(), output.field.width()),
            (pair.height, pair.width)
        );
        // Each distinct tile runs once: the grid's repeats (4 of one tile for a frame of the
        // tile's size) are summed as the Colab sums them, not run again.
        // The grid is in (top, left) order, so sorting keeps the order they ran in.
        let mut distinct = expected_grid.clone();
        distinct.sort_by_key(|t| (t.top, t.left));
        distinct.dedup();
        assert_eq!(output.tiles, distinct, "{}", pair.pair);
        let (worst, scale) = compare(output.field.values(), &expected);
        println!(
            "{}/{} ({}x{}, {} tiles): max |Δ flow| = {worst:.3e} px (largest |flow| {scale:.3} px)",
            pair.model,
            pair.pair,
            pair.height,
            pair.width,
            output.tiles.len()
        );
        assert!(
            worst <= RELATIVE_TOLERANCE * scale,
            "{}/{}",
            pair.model,
            pair.pair
        );
    }
}

/// Tiles run one by one elsewhere (as the HTTP service queues them) and assembled after give
/// the flow of the whole-frame call, bit for bit, on every fixture pair (repeated tiles
/// included); a missing tile or a flow of the wrong length is an error.
#[test]
fn tiles_run_apart_assemble_to_the_same_flow() {
    for pair in pairs() {
        let task = OpticalFlow::new(load(&pair.model, Precision::F32)).unwrap();
        let frames = frames(&pair);
        let whole = task.flow(&frames).unwrap();
        let tiles = task.distinct_tiles(pair.height, pair.width).unwrap();
        assert_eq!(tiles, whole.tiles, "{}", pair.pair);
        // Run in reverse: the blend follows the grid, not the order the flows come in.
        let flows: Vec<(Tile, Vec<f32>)> = tiles
            .iter()
            .rev()
            .map(|&tile| (tile, task.tile_flow(&frames, tile).unwrap()))
            .collect();
        let apart = task.assemble(pair.height, pair.width, flows.clone()).unwrap();
        assert_eq!(apart.field, whole.field, "{}", pair.pair);
        assert_eq!(apart.tiles, whole.tiles, "{}", pair.pair);
        if flows.len() > 1 {
            let err = task
                .assemble(pair.height, pair.width, flows[1..].to_vec())
                .unwrap_err()
                .to_string();
            assert!(err.contains("no flow for the tile"), "{err}");
        }
        let mut stray = flows.clone();
        stray.push((Tile { top: 1, left: 1 }, flows[0].1.clone()));
        let err = task
            .assemble(pair.height, pair.width, stray)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not of the grid"), "{err}");
        let mut short = flows.clone();
        short[0].1.pop();
        let err = task
            .assemble(pair.height, pair.width, short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("values, not"), "{err}");
    }
}

/// `flow_with_progress` tells each distinct tile once, in order, out of their number (a
/// repeated tile counted once), and gives the flow `flow` gives.
#[test]
fn flow_progress_counts_each_tile_run_once() {
    for pair in pairs() {
        let task = OpticalFlow::new(load(&pair.model, Precision::F32)).unwrap();
        let frames = frames(&pair);
        let mut told = Vec::new();
        let reported = task
            .flow_with_progress(&frames, &mut |done, total| told.push((done, total)))
            .unwrap();
        let total = task.distinct_tiles(pair.height, pair.width).unwrap().len();
        let expected: Vec<(usize, usize)> = (1..=total).map(|done| (done, total)).collect();
        assert_eq!(told, expected, "{}", pair.pair);
        let whole = task.flow(&frames).unwrap();
        assert_eq!(reported.field, whole.field, "{}", pair.pair);
        assert_eq!(reported.tiles, whole.tiles, "{}", pair.pair);
    }
}

/// bf16 weight products stay close to f32 on the tiled flow (not a parity claim: a sanity
/// bound on the bf16 path for this model).
#[test]
fn bf16_flow_stays_near_f32() {
    let pair = pairs().into_iter().find(|p| p.grid.len() > 1).unwrap();
    let frames = frames(&pair);
    let f32_flow = OpticalFlow::new(load(&pair.model, Precision::F32))
        .unwrap()
        .flow(&frames)
        .unwrap();
    let bf16_flow = OpticalFlow::new(load(&pair.model, Precision::Bf16))
        .unwrap()
        .flow(&frames)
        .unwrap();
    let (worst, scale) = compare(bf16_flow.field.values(), f32_flow.field.values());
    println!("bf16 against f32: max |Δ flow| = {worst:.3e} px (largest {scale:.3} px)");
    assert!(worst <= 0.05 * scale, "{worst} of {scale}");
}

/// The Colab's grid: starts every `tile − 20` pixels, the last flush with the border; starts
/// that would run off the frame are clamped to it.
#[test]
fn grid_follows_the_colab_and_clamps_off_frame_starts() {
    let pair = pairs().into_iter().find(|p| p.model == "tiny_flow").unwrap();
    let task = OpticalFlow::new(load(&pair.model, Precision::F32)).unwrap();
    assert_eq!(task.tile_size(), (48, 56));
    let tiles = |h, w| -> Vec<(usize, usize)> {
        task.grid(h, w)
            .unwrap()
            .into_iter()
            .map(|t| (t.top, t.left))
            .collect()
    };
    // One tile: range(0, 48, 28) = [0, 28] → [0, 0] (the Colab runs it twice).
    assert_eq!(tiles(48, 56), vec![(0, 0); 4]);
    // Rows: range(0, 60, 28) = [0, 28, 56], last → 12; 28 > 12 would run off the frame.
    assert_eq!(
        tiles(60, 56),
        vec![(0, 0), (0, 0), (12, 0), (12, 0), (12, 0), (12, 0)]
    );
    // Columns: range(0, 100, 36) = [0, 36, 72], last → 44.
    assert_eq!(tiles(48, 100)[..3], [(0, 0), (0, 36), (0, 44)]);
    let small = task.grid(47, 56).unwrap_err().to_string();
    assert!(small.contains("smaller than the model's 48x56 tile"), "{small}");
    assert!(task.clone().with_min_overlap(48).is_err());
}

#[test]
fn bad_frames_are_refused() {
    let pair = pairs().into_iter().find(|p| p.model == "tiny_flow").unwrap();
    let task = OpticalFlow::new(load(&pair.model, Precision::F32)).unwrap();
    let a = frame(&pair.frames[0]);
    // Different sizes.
    let smaller = RgbImage::new(
        a.width() - 1,
        a.height(),
        vec![0; 3 * (a.width() - 1) * a.height()],
    )
    .unwrap();
    let err = task.flow_images(&a, &smaller).unwrap_err().to_string();
    assert!(err.contains("differ in size"), "{err}");
    // Smaller than the tile.
    let tiny = RgbImage::new(20, 20, vec![0; 3 * 400]).unwrap();
    let err = task.flow_images(&tiny, &tiny).unwrap_err().to_string();
    assert!(err.contains("smaller than"), "{err}");
    // The model runs on its tile size only.
    let frames = frames(&pair);
    let err = task.model().optical_flow(&[&frames]).unwrap_err().to_string();
    assert!(err.contains("runs on 48x56 frames"), "{err}");
    // Frames whose flow field would exceed its bound: refused by the grid, before any tile runs.
    let err = task.grid(1 << 14, 1 << 14).unwrap_err().to_string();
    assert!(err.contains("pixels a flow field holds"), "{err}");
    assert!(task.grid(usize::MAX, usize::MAX).is_err());
}

#[test]
fn other_models_are_not_flow_models() {
    let mlm = Loader::new("default").load().unwrap();
    let err = OpticalFlow::new(mlm.clone()).unwrap_err().to_string();
    assert!(err.contains("PerceiverForOpticalFlow"), "{err}");
    let pair = pairs().into_iter().next().unwrap();
    let frames = frames(&pair);
    assert!(mlm.optical_flow(&[&frames]).is_err());
    let flow = load(&pair.model, Precision::F32);
    assert!(flow.logits_all(&[1, 2]).is_err());
}

#[derive(serde::Deserialize)]
struct Layout {
    class: String,
    config: serde_json::Value,
    tensors: Vec<(String, Vec<usize>)>,
    parameters: usize,
}

/// Every tensor name and shape of `deepmind/optical-flow-perceiver`'s layout (transformers'
/// `state_dict` of a model built from its config), against ours.
#[test]
fn released_layout_matches_transformers_state_dict() {
    let text = std::fs::read_to_string(root().join("released_layout.json")).unwrap();
    let layout: Layout = serde_json::from_str(&text).unwrap();
    let config = PerceiverConfig::from_json_str(&layout.config.to_string()).unwrap();
    assert_eq!(Architecture::of(&config).unwrap().name(), layout.class);
    let ours: BTreeMap<String, Vec<usize>> = expected_tensors(&config).unwrap().into_iter().collect();
    let theirs: BTreeMap<String, Vec<usize>> = layout.tensors.into_iter().collect();
    assert_eq!(ours, theirs);
    let parameters: usize = theirs.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(parameters, layout.parameters);
    assert_eq!(config.num_parameters() as usize, parameters);
    println!(
        "{}: {} tensors, {parameters} parameters",
        layout.class,
        theirs.len()
    );
}
