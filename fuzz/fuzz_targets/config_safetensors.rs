//! The loading path of a model directory (config.json, then model.safetensors checked against
//! it, then every tensor read as f32) on arbitrary files: no panic, and a checkpoint that opens
//! hands out tensors of the shapes the config implies.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use perceiver::checkpoint::{expected_tensors, ModelFiles};
use perceiver::{Checkpoint, PerceiverConfig};

/// A directory of this process's own, rewritten for every input (on tmpfs where there is one:
/// the safetensors file is memory-mapped, as in real loads).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("perceiver-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes: the config's length; then the config; the rest: the safetensors.
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (config, weights) = rest.split_at(len);

    // The config parser alone, on text.
    if let Ok(text) = std::str::from_utf8(config) {
        if let Ok(config) = PerceiverConfig::from_json_str(text) {
            let _ = expected_tensors(&config);
        }
    }

    // The whole path, from files.
    let dir = dir();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    let files = ModelFiles::from_dir(dir).expect("both files are there");
    let Ok(checkpoint) = Checkpoint::open(&files) else {
        return;
    };
    let expected = expected_tensors(checkpoint.config()).expect("an opened checkpoint's config is valid");
    // Reading can still fail (a dtype it does not convert), never panic.
    if let Ok(tensors) = checkpoint.tensors() {
        assert_eq!(tensors.len(), expected.len());
        for ((name, param), (expected_name, shape)) in tensors.iter().zip(&expected) {
            assert_eq!(name, expected_name);
            assert_eq!(param.shape(), &shape[..]);
            assert_eq!(param.data().len(), shape.iter().product::<usize>());
        }
    }
});
