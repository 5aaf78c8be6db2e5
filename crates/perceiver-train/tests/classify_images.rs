//! Fine-tuning ImageNet-style classifiers on a folder of images per label, with new labels: the
//! tiny Fourier classifier of the parity fixtures learns to tell three kinds of generated image
//! apart, far above chance; the conv stem's BatchNorm statistics stay as loaded while its
//! weights train; and the checkpoints (with their `preprocessor_config.json`) load in the
//! inference library, which prepares the same images and gives the differentiable model's logits.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use perceiver::image::ImageProcessor;
use perceiver::{Architecture, Loader, ModelInput, Pixels, Precision};
use perceiver_train::classification::{prepare_image, ExampleInput};
use perceiver_train::config::Task;
use perceiver_train::init::InitScheme;
use perceiver_train::optim::{AdamWConfig, Decay, Schedule};
use perceiver_train::{
    ClassifierInputs, Evaluation, Event, Masking, ModelInit, Outcome, PerceiverClassifier, TrainConfig,
    Trainer,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classification")
        .join(name)
}

/// The three labels: which colour channel dominates a picture of random waves.
const LABELS: [&str; 3] = ["blue", "green", "red"];

/// `per_label` PNG images of `width × height` for each label under `dir/<label>/`, from a fixed
/// generator: smooth waves of random frequency and phase in every channel, the label's channel
/// brighter than the other two.
fn write_images(dir: &Path, per_label: usize, width: u32, height: u32) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    for (label_index, label) in LABELS.iter().enumerate() {
        let folder = dir.join(label);
        std::fs::create_dir_all(&folder).unwrap();
        // The label's channel: blue is 2, green 1, red 0 in RGB order.
        let bright = 2 - label_index;
        for i in 0..per_label {
            let waves: Vec<[f32; 3]> = (0..3)
                .map(|_| [uniform() * 6.0, uniform() * 6.0, uniform() * 6.3])
                .collect();
            let image = image::RgbImage::from_fn(width, height, |x, y| {
                let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
                let pixel: [u8; 3] = std::array::from_fn(|c| {
                    let [fx, fy, phase] = waves[c];
                    let wave = 0.5 + 0.5 * (fx * u + fy * v + phase).sin();
                    let level = if c == bright {
                        120.0 + 135.0 * wave
                    } else {
                        110.0 * wave
                    };
                    level as u8
                });
                image::Rgb(pixel)
            });
            image.save(folder.join(format!("{i:02}.png"))).unwrap();
        }
    }
}

fn options(data: &Path, steps: u64, batch_size: usize) -> TrainConfig {
    TrainConfig {
        task: Task::Classify,
        model: "pretrained:fixture".into(),
        init: InitScheme::Transformers,
        corpus: vec![data.to_string_lossy().into_owned()],
        eval_corpus: Vec::new(),
        eval_fraction: 0.25,
        eval_windows: 0,
        seq_len: 64,
        batch_size,
        grad_accum: 1,
        steps,
        masking: Masking::default(),
        optimizer: AdamWConfig::default(),
        schedule: Schedule {
            peak_lr: 2e-3,
            warmup_steps: 2,
            total_steps: steps,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        },
        clip_norm: Some(1.0),
        seed: 3,
        save_every: 0,
        eval_every: 0,
        log_every: 1,
        keep_checkpoints: 1,
        shuffle_windows: 1,
        precision: perceiver::Precision::F32,
        new_labels: true,
    }
}

/// A classifier fixture (an ImageNet class with its own labels and image processor) as the start
/// of a run.
fn pretrained(name: &str) -> ModelInit {
    let (checkpoint, processor) = Loader::new(fixture(name).to_str().unwrap())
        .checkpoint_with_preprocessor_config()
        .unwrap();
    ModelInit::Pretrained {
        config: checkpoint.config().clone(),
        tensors: perceiver_train::model::checkpoint_tensors(&checkpoint, &Device::Cpu).unwrap(),
        image_processor: processor.map(|p| ImageProcessor::from_file(p).unwrap()),
    }
}

/// Runs `trainer` to the end; the last evaluation and the checkpoint.
fn run(trainer: &mut Trainer) -> (Option<Evaluation>, PathBuf, Vec<f64>) {
    let mut last_eval = None;
    let mut losses = Vec::new();
    let outcome = trainer
        .run(&AtomicBool::new(false), None, &mut |event| match event {
            Event::Step(m) => losses.push(m.loss),
            Event::Eval { result, .. } => last_eval = Some(result.clone()),
            Event::Saved(_) => {}
        })
        .unwrap();
    let Outcome::Finished(checkpoint) = outcome else {
        panic!("not finished")
    };
    (last_eval, checkpoint, losses)
}

/// The differentiable model's logits of one image.
fn differentiable_logits(model: &PerceiverClassifier, pixels: &Pixels) -> Vec<f32> {
    let input =
        Tensor::from_slice(&pixels.values, (1, 3, pixels.height, pixels.width), &Device::Cpu).unwrap();
    let logits = model.forward(&ClassifierInputs::Images(input)).unwrap();
    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The largest difference between two sets of logits of the same length.
fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// The checkpoint loads in the inference library with the labels and the image processor of the
/// run, and gives the differentiable model's logits on the held-out images (prepared by each
/// side from the files).
fn check_checkpoint(trainer: &Trainer, checkpoint: &Path, architecture: Architecture) {
    let classifier = Loader::new(checkpoint.to_str().unwrap()).classifier().unwrap();
    assert_eq!(classifier.model().architecture(), architecture);
    assert_eq!(classifier.labels(), LABELS);
    let data = trainer.classifier_data().unwrap();
    let processor = data.images.as_ref().unwrap();
    assert_eq!(
        classifier.image_processor(),
        Some(processor),
        "the run's image processor is saved"
    );

    let model = trainer.classifier().unwrap();
    let mut worst = 0f32;
    for example in &data.eval {
        let ExampleInput::Image(path) = &example.input else {
            panic!("an image example")
        };
        let bytes = std::fs::read(path).unwrap();
        let pixels = classifier.prepare_image(&bytes).unwrap();
        assert_eq!(pixels, prepare_image(path, processor).unwrap());
        let fast = classifier.logits(ModelInput::Images(&[&pixels])).unwrap();
        worst = worst.max(largest_difference(&fast, &differentiable_logits(model, &pixels)));
    }
    println!(
        "{}: inference vs differentiable classifier on {} images: max |Δ logit| = {worst:.2e}",
        architecture.name(),
        data.eval.len()
    );
    assert!(worst < 1e-4, "max |Δ logit| {worst}");
}

#[test]
fn a_fourier_classifier_learns_new_labels_from_image_folders() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    write_images(&data, 16, 40, 32);
    // Not an image: skipped.
    std::fs::write(data.join("red").join("notes.txt"), "taken at noon").unwrap();
    let steps = 30;
    let mut trainer = Trainer::start(
        options(&data, steps, 8),
        &dir.path().join("run"),
        pretrained("tiny_image_fourier"),
    )
    .unwrap();
    let loaded = trainer.classifier_data().unwrap();
    assert_eq!(loaded.labels, LABELS);
    assert_eq!(
        (loaded.train.len(), loaded.eval.len()),
        (36, 12),
        "a quarter of each label's 16"
    );
    let (evaluation, checkpoint, losses) = run(&mut trainer);
    let Some(Evaluation::Classify(result)) = evaluation else {
        panic!("no classifier evaluation")
    };
    println!(
        "{steps} steps of 8 images: loss {:.3} → {:.3}, held-out accuracy {:.3} ({} images)\n{}",
        losses[..3].iter().sum::<f64>() / 3.0,
        losses[losses.len() - 3..].iter().sum::<f64>() / 3.0,
        result.accuracy,
        result.examples,
        result.table()
    );
    // Chance is 1/3.
    assert!(result.accuracy >= 0.9, "held-out accuracy {}", result.accuracy);

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["PerceiverForImageClassificationFourier"])
    );
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "blue", "1": "green", "2": "red"})
    );
    check_checkpoint(&trainer, &checkpoint, Architecture::ImageClassificationFourier);
}

/// Mixed precision (the dense layers' and attention's products on bf16 operands) learns the same task: its first
/// steps' losses and gradient norms are within 2% of f32's, and not equal to them (its products
/// did round); its held-out accuracy is as high; and the run's precision is saved, so that a
/// resume keeps it.
#[test]
fn a_fourier_classifier_learns_in_mixed_precision() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    write_images(&data, 16, 40, 32);
    let steps = 30;
    let start = |precision, run: &str| {
        let options = TrainConfig {
            precision,
            ..options(&data, steps, 8)
        };
        Trainer::start(options, &dir.path().join(run), pretrained("tiny_image_fourier")).unwrap()
    };
    let (mut f32_run, mut bf16_run) = (start(Precision::F32, "f32"), start(Precision::Bf16, "bf16"));
    for _ in 0..3 {
        let (want, got) = (f32_run.train_step().unwrap(), bf16_run.train_step().unwrap());
        println!(
            "step {}: loss {:.6} / {:.6}, gradient norm {:.6} / {:.6} (f32 / bf16)",
            got.step, want.loss, got.loss, want.grad_norm, got.grad_norm
        );
        for (what, want, got) in [
            ("loss", want.loss, got.loss),
            ("gradient norm", want.grad_norm, got.grad_norm),
        ] {
            assert!(
                (got - want).abs() <= 0.02 * want.abs(),
                "{what}: bf16 {got}, f32 {want}"
            );
            if perceiver_kernels::sgemm::available() {
                assert_ne!(got, want, "{what}: the bf16 products rounded nothing");
            }
        }
    }
    drop(f32_run);
    let (evaluation, checkpoint, losses) = run(&mut bf16_run);
    let Some(Evaluation::Classify(result)) = evaluation else {
        panic!("no classifier evaluation")
    };
    println!(
        "bf16, {steps} steps: last loss {:.3}, held-out accuracy {:.3}",
        losses[losses.len() - 1],
        result.accuracy
    );
    assert!(result.accuracy >= 0.9, "held-out accuracy {}", result.accuracy);
    let training: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("training.json")).unwrap()).unwrap();
    assert_eq!(training["options"]["precision"], "bf16");
    drop(bf16_run);
    let resumed = Trainer::resume(&dir.path().join("bf16"), Some(steps + 1)).unwrap();
    assert_eq!(resumed.options().precision, Precision::Bf16);
}

#[test]
fn the_conv_stems_batch_norm_statistics_stay_as_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    write_images(&data, 4, 44, 36);
    let prefix = "perceiver.input_preprocessor.convnet";
    let before = Loader::new(fixture("tiny_image_conv").to_str().unwrap())
        .checkpoint()
        .unwrap();
    let mut trainer = Trainer::start(
        options(&data, 3, 4),
        &dir.path().join("run"),
        pretrained("tiny_image_conv"),
    )
    .unwrap();
    let (_, checkpoint, _) = run(&mut trainer);
    let saved = candle_core::safetensors::load(checkpoint.join("model.safetensors"), &Device::Cpu).unwrap();
    for name in ["batchnorm.running_mean", "batchnorm.running_var"] {
        let name = format!("{prefix}.{name}");
        let want = before.get(&name).unwrap();
        assert_eq!(
            saved[&name].to_vec1::<f32>().unwrap(),
            want.data(),
            "{name} unchanged"
        );
    }
    let counter = &saved[&format!("{prefix}.batchnorm.num_batches_tracked")];
    assert_eq!(counter.dtype(), DType::I64, "PyTorch's int64 count");
    for name in ["conv.weight", "batchnorm.weight", "batchnorm.bias"] {
        let name = format!("{prefix}.{name}");
        let trained = saved[&name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(trained, before.get(&name).unwrap().data(), "{name} trains");
    }
    check_checkpoint(
        &trainer,
        &checkpoint,
        Architecture::ImageClassificationConvProcessing,
    );

    // A resumed run reads the saved image processor back, and goes on.
    let images = trainer.classifier_data().unwrap().images.clone();
    drop(trainer);
    let mut resumed = Trainer::resume(&dir.path().join("run"), Some(4)).unwrap();
    assert_eq!(resumed.classifier_data().unwrap().images, images);
    let (_, last, losses) = run(&mut resumed);
    assert_eq!(
        (last.file_name().unwrap(), losses.len()),
        ("step-000004".as_ref(), 1)
    );
}

#[test]
fn a_learned_position_classifier_trains_at_its_one_image_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    write_images(&data, 4, 20, 17);
    let mut trainer = Trainer::start(
        options(&data, 2, 4),
        &dir.path().join("run"),
        pretrained("tiny_image_learned"),
    )
    .unwrap();
    assert_eq!(trainer.classifier().unwrap().image_size(), Some((12, 12)));
    let (_, checkpoint, _) = run(&mut trainer);
    check_checkpoint(&trainer, &checkpoint, Architecture::ImageClassificationLearned);
}

/// The conv stem padded as DeepMind's Haiku stem pads ('SAME', as DeepMind's checkpoints are
/// read), at an even and an odd size: the differentiable model gives the inference library's
/// logits (whose 'SAME' stem is held to DeepMind's own numbers).
#[test]
fn the_conv_stems_same_padding_is_the_inference_librarys() {
    let checkpoint = Loader::new(fixture("tiny_image_conv").to_str().unwrap())
        .checkpoint()
        .unwrap();
    let mut config = checkpoint.config().clone();
    config
        .extra
        .insert(perceiver::config::STEM_PADDING_KEY.into(), "same".into());
    let tensors = perceiver_train::model::checkpoint_tensors(&checkpoint, &Device::Cpu).unwrap();
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = PerceiverClassifier::new(&config, vb).unwrap();
    perceiver_train::trainer::set_weights(&varmap, &tensors.clone().into_iter().collect()).unwrap();
    let engine =
        perceiver_train::model::loading::inference_model(&config, &tensors, perceiver::Precision::F32)
            .unwrap();
    for (height, width) in [(16, 20), (17, 21)] {
        let values: Vec<f32> = (0..3 * height * width)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        let pixels = perceiver::Pixels::new(height, width, values).unwrap();
        let fast = engine.classify(ModelInput::Images(&[&pixels])).unwrap();
        let worst = largest_difference(&fast, &differentiable_logits(&model, &pixels));
        println!("'SAME' stem, {height}x{width}: max |Δ logit| = {worst:.2e}");
        assert!(worst < 1e-4, "{height}x{width}: max |Δ logit| {worst}");
    }
}
