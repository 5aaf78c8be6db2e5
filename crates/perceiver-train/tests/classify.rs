//! Fine-tuning the built-in byte model into a text classifier: language identification of short
//! sentences generated here (English, French, German), trained for a few dozen steps, reaches a
//! held-out accuracy far above chance; the checkpoint it writes loads in the inference library,
//! which gives the same logits and labels as the differentiable model.
//!
//! With `PERCEIVER_KEEP_CLASSIFIER=DIR` the checkpoint is copied to DIR with `ours.json` (texts,
//! ids and our logits) for `scripts/check_classifier_checkpoint.py`, which compares them with
//! transformers' `PerceiverForSequenceClassification`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{Device, Tensor};
use perceiver::{Architecture, Classifier, Loader, ModelInput};
use perceiver_train::classification::{tokenize, EvalFile, Example, ExampleInput, EVAL_FILE};
use perceiver_train::config::Task;
use perceiver_train::init::InitScheme;
use perceiver_train::optim::{AdamWConfig, Decay, Schedule};
use perceiver_train::{
    ClassifierInputs, Evaluation, Event, Masking, ModelInit, Outcome, PerceiverClassifier, TrainConfig,
    Trainer,
};

/// (label, subjects, verbs, objects, endings): every sentence is one of each, so the words, not
/// the sentences, repeat between the training and held-out texts.
type Language = (
    &'static str,
    [&'static str; 6],
    [&'static str; 6],
    [&'static str; 6],
    [&'static str; 6],
);

const LANGUAGES: [Language; 3] = [
    (
        "en",
        [
            "The child",
            "My neighbour",
            "A teacher",
            "The old woman",
            "Our friend",
            "The farmer",
        ],
        ["reads", "buys", "sees", "carries", "likes", "finds"],
        [
            "a small book",
            "the red car",
            "some fresh bread",
            "the long letter",
            "a warm coat",
            "the green apple",
        ],
        [
            "every morning.",
            "in the garden.",
            "after school.",
            "near the river.",
            "on Sunday.",
            "with great care.",
        ],
    ),
    (
        "fr",
        [
            "L'enfant",
            "Mon voisin",
            "Une enseignante",
            "La vieille femme",
            "Notre ami",
            "Le fermier",
        ],
        ["lit", "achète", "voit", "porte", "aime", "trouve"],
        [
            "un petit livre",
            "la voiture rouge",
            "du pain frais",
            "la longue lettre",
            "un manteau chaud",
            "la pomme verte",
        ],
        [
            "chaque matin.",
            "dans le jardin.",
            "après l'école.",
            "près de la rivière.",
            "le dimanche.",
            "avec grand soin.",
        ],
    ),
    (
        "de",
        [
            "Das Kind",
            "Mein Nachbar",
            "Eine Lehrerin",
            "Die alte Frau",
            "Unser Freund",
            "Der Bauer",
        ],
        ["liest", "kauft", "sieht", "trägt", "mag", "findet"],
        [
            "ein kleines Buch",
            "das rote Auto",
            "frisches Brot",
            "den langen Brief",
            "einen warmen Mantel",
            "den grünen Apfel",
        ],
        [
            "jeden Morgen.",
            "im Garten.",
            "nach der Schule.",
            "am Fluss.",
            "am Sonntag.",
            "mit großer Sorgfalt.",
        ],
    ),
];

/// Sentences per language.
const PER_LANGUAGE: usize = 40;

/// [`PER_LANGUAGE`] distinct sentences of each language, interleaved, as quoted CSV rows.
fn write_csv(path: &Path) {
    let mut csv = String::from("label,text\n");
    let mut seen = std::collections::HashSet::new();
    for i in 0..PER_LANGUAGE {
        for (label, subjects, verbs, objects, endings) in LANGUAGES {
            // Four digits of i in base 6, scrambled so neighbouring sentences differ everywhere.
            let k = i * 37 + 11;
            let sentence = format!(
                "{} {} {} {}",
                subjects[k % 6],
                verbs[(k / 6) % 6],
                objects[(k / 36 + i) % 6],
                endings[(k / 3 + 2 * i) % 6]
            );
            assert!(seen.insert(sentence.clone()), "every sentence once: {sentence}");
            csv.push_str(&format!("{label},\"{}\"\n", sentence.replace('"', "\"\"")));
        }
    }
    std::fs::write(path, csv).unwrap();
}

fn options(data: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        task: Task::Classify,
        model: "pretrained:default".into(),
        init: InitScheme::Transformers,
        corpus: vec![data.to_string_lossy().into_owned()],
        eval_corpus: Vec::new(),
        eval_fraction: 0.25,
        eval_windows: 0,
        seq_len: 256,
        batch_size: 12,
        grad_accum: 1,
        steps,
        masking: Masking::default(),
        optimizer: AdamWConfig::default(),
        schedule: Schedule {
            peak_lr: 1e-3,
            warmup_steps: 3,
            total_steps: steps,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        },
        clip_norm: Some(1.0),
        seed: 5,
        save_every: 0,
        eval_every: 0,
        log_every: 1,
        keep_checkpoints: 1,
        shuffle_windows: 1,
        precision: perceiver::Precision::F32,
        new_labels: false,
    }
}

fn text_ids(example: &Example) -> &[u32] {
    match &example.input {
        ExampleInput::Ids(ids) => ids,
        ExampleInput::Image(path) => panic!("a text example, not {}", path.display()),
    }
}

fn built_in() -> ModelInit {
    let checkpoint = Loader::new("default").checkpoint().unwrap();
    let tensors = perceiver_train::model::checkpoint_tensors(&checkpoint, &Device::Cpu).unwrap();
    ModelInit::Pretrained {
        config: checkpoint.config().clone(),
        tensors,
        image_processor: None,
    }
}

#[test]
fn the_built_in_model_learns_to_tell_languages_apart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("languages.csv");
    write_csv(&data);
    let run = dir.path().join("run");
    let steps = 24;
    let started = Instant::now();
    let mut trainer = Trainer::start(options(&data, steps), &run, built_in()).unwrap();
    let held_out = trainer.classifier_data().unwrap().eval.clone();
    assert_eq!(trainer.classifier_data().unwrap().labels, ["de", "en", "fr"]);
    assert_eq!(held_out.len(), 30, "a quarter of each language's 40");
    let mut losses = Vec::new();
    let mut last_eval = None;
    let outcome = trainer
        .run(&AtomicBool::new(false), None, &mut |event| match event {
            Event::Step(m) => losses.push(m.loss),
            Event::Eval { result, last, .. } => {
                assert!(last, "evaluated only at the end");
                last_eval = Some(result.clone());
            }
            Event::Saved(_) => {}
        })
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let Some(Evaluation::Classify(result)) = last_eval else {
        panic!("no classifier evaluation")
    };
    println!(
        "{steps} steps of 12 texts in {elapsed:.1} s: loss {:.3} → {:.3}, held-out accuracy {:.3} ({} texts)\n{}",
        losses[..3].iter().sum::<f64>() / 3.0,
        losses[losses.len() - 3..].iter().sum::<f64>() / 3.0,
        result.accuracy,
        result.examples,
        result.table()
    );
    // Chance is 1/3.
    assert!(result.accuracy >= 0.9, "held-out accuracy {}", result.accuracy);
    let total: u64 = result.confusion.iter().flatten().sum();
    assert_eq!(total as usize, held_out.len());

    // eval.json holds the same evaluation.
    let saved: EvalFile =
        serde_json::from_str(&std::fs::read_to_string(run.join(EVAL_FILE)).unwrap()).unwrap();
    assert_eq!((saved.step, &saved.result), (steps, &result));

    // The checkpoint is a transformers classifier the inference library loads.
    let Outcome::Finished(checkpoint) = outcome else {
        panic!("not finished")
    };
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["PerceiverForSequenceClassification"])
    );
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "de", "1": "en", "2": "fr"})
    );
    assert_eq!(config["label2id"], serde_json::json!({"de": 0, "en": 1, "fr": 2}));
    let classifier = Classifier::new(Loader::new(checkpoint.to_str().unwrap()).load().unwrap()).unwrap();
    assert_eq!(
        classifier.model().architecture(),
        Architecture::SequenceClassification
    );
    assert_eq!(classifier.labels(), ["de", "en", "fr"]);

    // … and it gives the differentiable model's logits on the held-out texts, and its labels.
    let model: &PerceiverClassifier = trainer.classifier().unwrap();
    let ids: Vec<&[u32]> = held_out.iter().map(text_ids).collect();
    let fast = classifier.logits(ModelInput::Tokens(&ids)).unwrap();
    let mut slow = Vec::new();
    for e in &held_out {
        let input = Tensor::new(text_ids(e), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let input = ClassifierInputs::Text {
            input_ids: input,
            attention_mask: None,
        };
        slow.extend(
            model
                .forward(&input)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    let worst = fast
        .iter()
        .zip(&slow)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("inference vs differentiable classifier: max |Δ logit| = {worst:.2e}");
    assert!(worst < 1e-4, "max |Δ logit| {worst}");
    let argmax = |row: &[f32]| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
    let predicted: Vec<usize> = fast.chunks(3).map(argmax).collect();
    let from_confusion: usize = (0..3).map(|i| result.confusion[i][i] as usize).sum();
    let correct = predicted
        .iter()
        .zip(&held_out)
        .filter(|(p, e)| **p == e.label as usize)
        .count();
    assert_eq!(correct, from_confusion);

    // Texts through the task, as a user classifies them.
    let texts = [
        "Der Bauer kauft frisches Brot am Sonntag.",
        "The farmer buys some fresh bread on Sunday.",
    ];
    let answers = classifier.classify_texts(&texts, 1).unwrap();
    assert_eq!(
        (answers[0][0].label.as_str(), answers[1][0].label.as_str()),
        ("de", "en")
    );

    if let Ok(keep) = std::env::var("PERCEIVER_KEEP_CLASSIFIER") {
        keep_for_transformers(&checkpoint, Path::new(&keep), &classifier);
    }
}

/// Copies the checkpoint to `keep` with `ours.json`: texts, their ids and our logits, for
/// `scripts/check_classifier_checkpoint.py`.
fn keep_for_transformers(checkpoint: &Path, keep: &Path, classifier: &Classifier) {
    std::fs::create_dir_all(keep).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(checkpoint.join(file), keep.join(file)).unwrap();
    }
    let mut texts: Vec<String> = Vec::new();
    for (i, (_, subjects, verbs, objects, endings)) in LANGUAGES.iter().enumerate() {
        texts.push(format!(
            "{} {} {} {}",
            subjects[i],
            verbs[i + 1],
            objects[i + 2],
            endings[i + 3]
        ));
    }
    texts.push("A sentence in no language of the three: 12345 !?".into());
    texts.push("Mixed: the child liest un petit livre.".into());
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tokenize(t, 256).0).collect();
    let refs: Vec<&[u32]> = ids.iter().map(|i| i.as_slice()).collect();
    let logits = classifier.logits(ModelInput::Tokens(&refs)).unwrap();
    let rows: Vec<&[f32]> = logits.chunks(classifier.labels().len()).collect();
    let ours = serde_json::json!({"texts": texts, "input_ids": ids, "logits": rows});
    std::fs::write(keep.join("ours.json"), ours.to_string()).unwrap();
    println!(
        "kept {} for scripts/check_classifier_checkpoint.py",
        keep.display()
    );
}

/// A run stopped and resumed draws the same texts and ends with the same weights as one run
/// straight through (a tiny layout from scratch, so the test stays quick).
#[test]
fn a_resumed_classifier_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("languages.csv");
    write_csv(&data);
    let tiny = perceiver_train::presets::preset("tiny").unwrap();
    let mut opts = options(&data, 6);
    opts.init = InitScheme::DeepMind;
    opts.batch_size = 4;
    opts.eval_every = 3;
    let weights_after = |run: &Path, stop_at: Option<u64>| -> BTreeMap<String, Vec<f32>> {
        let mut trainer = Trainer::start(opts.clone(), run, ModelInit::Scratch(tiny.clone())).unwrap();
        trainer
            .run(&AtomicBool::new(false), stop_at, &mut |_| {})
            .unwrap();
        if stop_at.is_some() {
            drop(trainer); // and with it the run directory's lock
            trainer = Trainer::resume(run, None).unwrap();
            assert_eq!(trainer.progress().step, 3);
            trainer.run(&AtomicBool::new(false), None, &mut |_| {}).unwrap();
        }
        trainer
            .weights()
            .into_iter()
            .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    };
    let straight = weights_after(&dir.path().join("straight"), None);
    let resumed = weights_after(&dir.path().join("resumed"), Some(3));
    assert!(straight.contains_key("perceiver.decoder.decoder.final_layer.weight"));
    assert_eq!(straight, resumed);
    // The metrics of both agree too (the held-out evaluations at steps 3 and 6).
    let read = |run: &str| std::fs::read_to_string(dir.path().join(run).join("metrics.jsonl")).unwrap();
    let evals = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("\"eval\""))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(evals(read("straight")), evals(read("resumed")));
    assert_eq!(evals(read("straight")).len(), 2);
}

/// A classifier starts from a masked LM only: the checkpoint's own labels are kept when it is
/// fine-tuned again, and a label the data adds is refused with its file and line.
#[test]
fn fine_tuning_a_classifier_again_keeps_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("languages.csv");
    write_csv(&data);
    let tiny = perceiver_train::presets::preset("tiny").unwrap();
    let mut opts = options(&data, 1);
    opts.batch_size = 2;
    let mut first = Trainer::start(opts.clone(), &dir.path().join("a"), ModelInit::Scratch(tiny)).unwrap();
    let Outcome::Finished(checkpoint) = first.run(&AtomicBool::new(false), None, &mut |_| {}).unwrap() else {
        panic!()
    };
    let loaded = Loader::new(checkpoint.to_str().unwrap()).checkpoint().unwrap();
    let init = || ModelInit::Pretrained {
        config: loaded.config().clone(),
        tensors: perceiver_train::model::checkpoint_tensors(&loaded, &Device::Cpu).unwrap(),
        image_processor: None,
    };
    let again = Trainer::start(opts.clone(), &dir.path().join("b"), init()).unwrap();
    assert_eq!(again.classifier_data().unwrap().labels, ["de", "en", "fr"]);

    let more = dir.path().join("more.csv");
    std::fs::write(&more, "text,label\nHola amigo,es\n").unwrap();
    let mut with_new_label = opts.clone();
    with_new_label.corpus.push(more.to_string_lossy().into_owned());
    let err = Trainer::start(with_new_label, &dir.path().join("c"), init())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("more.csv line 2") && err.contains("`es`"), "{err}");

    // A masked-LM run refuses the classifier.
    let mut mlm = opts;
    mlm.task = Task::MaskedLm;
    let err = Trainer::start(mlm, &dir.path().join("d"), init())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("classify"), "{err}");
}
