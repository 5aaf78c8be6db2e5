//! The pickle reader on arbitrary bytes, as a Haiku checkpoint and as a `torch.save` state dict:
//! it must return (a value or an error) without panicking, within its limits, and what it
//! returns must hold together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perceiver::checkpoint::haiku::pickle::{self, Limits, Value};
use perceiver::checkpoint::haiku::read_haiku_bytes_with;

/// Small bounds, so that each input is refused or read in microseconds.
fn limits() -> Limits {
    Limits {
        max_input_bytes: 1 << 20,
        max_depth: 32,
        max_memo: 1 << 12,
        max_array_elements: 1 << 16,
        max_objects: 1 << 16,
    }
}

/// Every array's data fills its shape exactly.
fn check(value: &Value, depth: usize) {
    assert!(depth <= 33, "nesting beyond the limit");
    match value {
        Value::List(items) | Value::Tuple(items) => items.iter().for_each(|v| check(v, depth + 1)),
        Value::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
            check(k, depth + 1);
            check(v, depth + 1);
        }),
        Value::Array(array) => {
            let count: usize = array.shape.iter().product();
            assert!(count as u64 <= 1 << 16);
            assert_eq!(array.data.len(), count * array.dtype.element.size());
        }
        // A tensor's view stays inside its storage and has no more elements than it.
        Value::Tensor(tensor) => {
            assert!(tensor.storage_len as u64 <= 1 << 16);
            assert_eq!(tensor.shape.len(), tensor.strides.len());
            assert!(tensor.shape.iter().product::<usize>() <= tensor.storage_len);
            assert!(tensor.offset <= tensor.storage_len);
            if !tensor.shape.contains(&0) {
                let last: usize = tensor.offset
                    + tensor
                        .shape
                        .iter()
                        .zip(&tensor.strides)
                        .map(|(d, s)| (d - 1) * s)
                        .sum::<usize>();
                assert!(last < tensor.storage_len);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = limits();
    if let Ok(value) = pickle::load(data, &limits) {
        check(&value, 0);
    }
    if let Ok(value) = pickle::load_torch(data, &limits) {
        check(&value, 0);
    }
    if let Ok(checkpoint) = read_haiku_bytes_with(data, &limits) {
        for arrays in checkpoint
            .params
            .values()
            .chain(checkpoint.state.iter().flat_map(|s| s.values()))
        {
            for array in arrays.values() {
                assert_eq!(array.data.len(), array.shape.iter().product::<usize>());
            }
        }
    }
});
