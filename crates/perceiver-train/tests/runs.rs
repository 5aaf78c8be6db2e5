//! What happens to a run around its steps: an error mid-run saves the last complete step first
//! (and the run resumed from it equals an uninterrupted one), a run directory is one process's
//! at a time, and a run's corpus is saved by absolute path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use perceiver_train::config::Task;
use perceiver_train::init::InitScheme;
use perceiver_train::optim::{AdamWConfig, Decay, Schedule};
use perceiver_train::{Error, Event, Masking, ModelInit, Outcome, TrainConfig, Trainer};

fn tiny() -> ModelInit {
    let mut config = perceiver_train::presets::preset("tiny").unwrap();
    config.max_position_embeddings = 32;
    ModelInit::Scratch(config)
}

/// Two files of different text, ~1 KB each: an epoch is a few steps, so each is read again soon.
fn write_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("a.txt"), "alpha beta gamma delta ".repeat(50)).unwrap();
    std::fs::write(corpus.join("b.txt"), "one two three four five ".repeat(40)).unwrap();
    corpus
}

fn options(corpus: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        task: Task::MaskedLm,
        model: "preset:tiny".into(),
        init: InitScheme::DeepMind,
        corpus: vec![corpus.to_string_lossy().into_owned()],
        eval_corpus: Vec::new(),
        eval_fraction: 0.0,
        eval_windows: 0,
        seq_len: 32,
        batch_size: 4,
        grad_accum: 1,
        steps,
        masking: Masking::default(),
        optimizer: AdamWConfig::default(),
        schedule: Schedule {
            peak_lr: 1e-3,
            warmup_steps: 2,
            total_steps: steps,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        },
        clip_norm: Some(1.0),
        seed: 7,
        save_every: 0,
        eval_every: 0,
        log_every: 3,
        keep_checkpoints: 2,
        shuffle_windows: 8,
        precision: perceiver::Precision::F32,
        new_labels: false,
    }
}

fn weights(trainer: &Trainer) -> BTreeMap<String, Vec<f32>> {
    trainer
        .weights()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// A corpus file that vanished mid-run used to stop it with every step since the last save lost
/// (and, before the first save, a directory nothing could resume). Now the last complete step is
/// saved first, the error says so, and once the file is back the resumed run ends exactly where
/// an uninterrupted one does.
#[test]
fn an_error_mid_run_saves_the_last_complete_step_and_the_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let steps = 40;

    let straight_dir = dir.path().join("straight");
    let mut straight = Trainer::start(options(&corpus, steps), &straight_dir, tiny()).unwrap();
    straight.run(&AtomicBool::new(false), None, &mut |_| {}).unwrap();

    let run = dir.path().join("run");
    let b = corpus.join("b.txt");
    let kept = std::fs::read(&b).unwrap();
    let mut trainer = Trainer::start(options(&corpus, steps), &run, tiny()).unwrap();
    let mut saved = Vec::new();
    let err = trainer
        .run(&AtomicBool::new(false), None, &mut |event| match event {
            Event::Step(m) if m.step == 4 => std::fs::remove_file(&b).unwrap(),
            Event::Saved(dir) => saved.push(dir.to_path_buf()),
            _ => {}
        })
        .unwrap_err();
    let step = trainer.progress().step;
    assert!(step >= 4 && step < steps, "stopped at step {step}");
    let Error::Stopped {
        error, checkpoint, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(matches!(**error, Error::Io { .. }), "{error}");
    let checkpoint = checkpoint.clone().unwrap();
    assert_eq!(checkpoint, run.join(format!("step-{step:06}")));
    assert_eq!(saved, [checkpoint]);
    let message = err.to_string();
    assert!(message.contains("b.txt"), "{message}");
    assert!(
        message.contains(&format!("the run is saved at step {step}"))
            && message.contains(&format!("perceiver train --resume {}", run.display())),
        "{message}"
    );
    drop(trainer);

    std::fs::write(&b, kept).unwrap();
    let mut resumed = Trainer::resume(&run, None).unwrap();
    assert_eq!(resumed.progress().step, step);
    let outcome = resumed.run(&AtomicBool::new(false), None, &mut |_| {}).unwrap();
    assert_eq!(outcome, Outcome::Finished(run.join(format!("step-{steps:06}"))));
    assert_eq!(weights(&straight), weights(&resumed));
    // The metrics too, but for the timing.
    let train_records = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
                r.as_object_mut().unwrap().remove("bytes_per_second");
                r.as_object_mut().unwrap().remove("examples_per_second");
                r
            })
            .collect()
    };
    assert_eq!(train_records(&straight_dir), train_records(&run));
}

/// An error before any step is new since the last save changes nothing: there is nothing to save.
#[test]
fn an_error_before_the_first_step_is_returned_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let run = dir.path().join("run");
    let mut trainer = Trainer::start(options(&corpus, 5), &run, tiny()).unwrap();
    std::fs::remove_dir_all(&corpus).unwrap();
    let err = trainer
        .run(&AtomicBool::new(false), None, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(trainer.progress().step, 0);
}

/// Two processes on one run directory used to both train in it (interleaved metrics, one's
/// partial checkpoint deleted under the other). The lock is per open file, so two trainers in one
/// process show it as well.
#[test]
fn a_run_directory_is_one_trainers_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let run = dir.path().join("run");
    let mut opts = options(&corpus, 4);
    opts.save_every = 2;
    let mut first = Trainer::start(opts.clone(), &run, tiny()).unwrap();
    first.run(&AtomicBool::new(false), Some(2), &mut |_| {}).unwrap();
    let in_use = format!(
        "run directory {} is in use by another training process",
        run.display()
    );
    let err = Trainer::start(opts.clone(), &run, tiny()).err().unwrap();
    assert!(err.to_string().contains(&in_use), "{err}");
    for path in [run.clone(), run.join("step-000002")] {
        let err = Trainer::resume(&path, None).err().unwrap();
        assert!(err.to_string().contains(&in_use), "{err}");
    }
    // The refused start left the directory as it was.
    assert!(run.join("step-000002/training.json").is_file());
    drop(first);
    let mut again = Trainer::resume(&run, None).unwrap();
    again.run(&AtomicBool::new(false), None, &mut |_| {}).unwrap();
    assert!(run.join("step-000004/training.json").is_file());
}

/// A run saves its corpus by absolute path, so a resume from another directory reads the same
/// files; a glob keeps matching below the directory it was given in.
// Unix paths: the relative path is built from `/`.
#[cfg(unix)]
#[test]
fn the_corpus_is_saved_by_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let real = dir.path().canonicalize().unwrap();
    let here = std::env::current_dir().unwrap();
    // Relative to the current directory (which other tests do not change: they name absolute
    // paths), by `..` steps from it.
    let up = here.components().count() - 1;
    let relative = |to: &Path| -> String {
        let mut path = PathBuf::new();
        (0..up).for_each(|_| path.push(".."));
        path.push(to.strip_prefix("/").unwrap());
        path.to_string_lossy().into_owned()
    };
    let mut opts = options(&real.join("corpus"), 2);
    opts.corpus = vec![relative(&real.join("corpus/a.txt"))];
    opts.eval_corpus = vec![relative(&real) + "/corpus/b.*"];
    opts.eval_windows = 4;
    let run = dir.path().join("run");
    let trainer = Trainer::start(opts, &run, tiny()).unwrap();
    assert_eq!(
        trainer.options().corpus,
        [real.join("corpus/a.txt").to_string_lossy()]
    );
    let pattern = &trainer.options().eval_corpus[0];
    assert!(Path::new(pattern).is_absolute(), "{pattern}");
    assert!(pattern.ends_with("/corpus/b.*"), "{pattern}");
    assert_eq!(trainer.eval_windows(), 4);
}

/// A resume of a directory that is no run (`--resume ~` by mistake) is refused and writes
/// nothing there, not even the lock file.
#[test]
fn a_resume_of_a_directory_that_is_no_run_leaves_it_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Trainer::resume(dir.path(), None).is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
