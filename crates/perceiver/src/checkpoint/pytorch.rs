//! `pytorch_model.bin`: a `torch.save` archive, read without running any of its code.
//!
//! The archive is a zip (`torch.save`'s format since PyTorch 1.6) holding `<name>/data.pkl`, the
//! pickled state dict, and each tensor storage as `<name>/data/<key>`, raw and uncompressed,
//! in the byte order `<name>/byteorder` names (little-endian when absent). The pickle is read by
//! the same code-free machine as DeepMind's checkpoints ([`pickle::load_torch`]), which allows
//! only a state dict's globals and checks every tensor's view against its storage's declared
//! size; each storage is then read here, once, and must hold exactly that many bytes. So a
//! hostile file is refused with an error, and what it makes us read or allocate is bounded by
//! its own size (entries must be stored, not compressed; storages may not add up to more than
//! the file, nor tensors to more than twice its bytes in elements) and by the pickle
//! [`Limits`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::haiku::pickle::{self, Limits, TorchTensor, Value};
use super::haiku::{Array, Dtype, NdArray};
use super::weights::{check_finite, not_a_float_weight};
use super::Param;
use crate::error::{Error, Result};

/// The largest `data.pkl` read: a state dict's pickle holds names and shapes, some hundred
/// bytes a tensor (the 201M model's is about 100 KB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Reads every tensor of the state dict in the `torch.save` archive at `path` as f32.
pub(crate) fn read_pytorch(path: &Path) -> Result<BTreeMap<String, Param>> {
    let corrupt = |reason: String| Error::CorruptWeights {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut zip = ZipArchive::new(BufReader::new(file))
        .map_err(|e| corrupt(format!("not a torch.save archive (a zip file): {e}")))?;

    let pickles: Vec<String> = zip
        .file_names()
        .filter(|name| name.ends_with("/data.pkl") || *name == "data.pkl")
        .map(str::to_string)
        .collect();
    let [pickle_name] = &pickles[..] else {
        return Err(corrupt(format!(
            "a torch.save archive holds one data.pkl, this one {}",
            pickles.len()
        )));
    };
    let folder = &pickle_name[..pickle_name.len() - "data.pkl".len()];
    let big_endian = match read_entry(&mut zip, &format!("{folder}byteorder"), 16, file_len) {
        Err(EntryError::Missing) => false,
        Ok(order) if order.trim_ascii() == b"little" => false,
        Ok(order) if order.trim_ascii() == b"big" => true,
        Ok(order) => {
            return Err(corrupt(format!(
                "its byteorder says {:?}, not little or big",
                String::from_utf8_lossy(&order)
            )))
        }
        Err(e) => return Err(corrupt(e.describe("byteorder"))),
    };

    let bytes = read_entry(&mut zip, pickle_name, MAX_PICKLE_BYTES, file_len)
        .map_err(|e| corrupt(e.describe(pickle_name)))?;
    let value = pickle::load_torch(&bytes, &Limits::default()).map_err(|e| match e {
        Error::Pickle { offset, reason, .. } => Error::Pickle {
            path: Some(path.to_path_buf()),
            offset,
            reason: format!("{pickle_name}: {reason}"),
        },
        other => other,
    })?;
    let Value::Dict(entries) = value else {
        return Err(corrupt(format!(
            "{pickle_name} holds no state dict (a mapping of names to tensors)"
        )));
    };

    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let Value::Str(name) = name else {
            return Err(corrupt(format!(
                "{pickle_name}: a state dict key that is not a name"
            )));
        };
        let Value::Tensor(tensor) = value else {
            return Err(corrupt(format!("{pickle_name}: {name} is not a tensor")));
        };
        tensors.push((name, tensor));
    }
    // Each storage is read once, for all the tensors that view it (tied weights share one).
    tensors.sort_by(|(_, a), (_, b)| a.storage.cmp(&b.storage));

    // What a file makes us read and hold is bounded by its size: the storages read are distinct
    // entries of it (zip entries could overlap), and the tensors' elements take at least a
    // byte of it each, twice over for weights tied to another name.
    let mut bytes_read = 0u64;
    let mut elements = 0u64;
    let mut params = BTreeMap::new();
    let mut storage: (Option<&str>, Vec<u8>) = (None, Vec::new());
    for (name, tensor) in &tensors {
        elements += tensor.shape.iter().product::<usize>() as u64;
        if elements > 2 * file_len {
            return Err(corrupt(format!(
                "its tensors hold more than {} elements, twice its size in bytes: they view \
                 their storages over and over",
                2 * file_len
            )));
        }
        if storage.0 != Some(tensor.storage.as_str()) {
            let entry = format!("{folder}data/{}", tensor.storage);
            // Bounded by Limits::max_array_elements (2^32) times 8 bytes.
            let storage_bytes = tensor.storage_len as u64 * tensor.element.size() as u64;
            bytes_read += storage_bytes;
            if bytes_read > file_len {
                return Err(corrupt(format!(
                    "its storages add up to more than its {file_len} bytes: its entries overlap"
                )));
            }
            let bytes = read_entry(&mut zip, &entry, storage_bytes, file_len)
                .map_err(|e| corrupt(e.describe(&entry)))?;
            if bytes.len() as u64 != storage_bytes {
                return Err(corrupt(format!(
                    "{entry} holds {} bytes; {name}'s storage is {} elements of {:?}, {storage_bytes} bytes",
                    bytes.len(),
                    tensor.storage_len,
                    tensor.element
                )));
            }
            storage = (Some(tensor.storage.as_str()), bytes);
        } else if storage.1.len() != tensor.storage_len * tensor.element.size() {
            return Err(corrupt(format!(
                "{name} and another tensor disagree on the size of storage {}",
                tensor.storage
            )));
        }
        let array = Array {
            dtype: Dtype {
                element: tensor.element,
                big_endian,
            },
            shape: tensor.shape.clone(),
            data: view(tensor, &storage.1),
        };
        let values = NdArray::from_array(&array).map_err(|reason| corrupt(format!("{name}: {reason}")))?;
        // As for safetensors: integers only for BatchNorm's batch counter (PyTorch's name for
        // it), and no NaN or infinity in a weight.
        if tensor.element.is_float() {
            check_finite(name, &values.data).map_err(corrupt)?;
        } else if !name.ends_with(".num_batches_tracked") {
            return Err(corrupt(not_a_float_weight(name, tensor.element)));
        }
        if params
            .insert(name.clone(), Param::owned(values.data, values.shape)?)
            .is_some()
        {
            return Err(corrupt(format!("{pickle_name}: {name} appears twice")));
        }
    }
    Ok(params)
}

/// The bytes of the view `tensor` of `storage`, row-major. The pickle reader checked that the
/// view stays inside the storage, and the caller that the storage has all its bytes.
fn view(tensor: &TorchTensor, storage: &[u8]) -> Vec<u8> {
    let size = tensor.element.size();
    let count: usize = tensor.shape.iter().product();
    if count == 0 {
        return Vec::new();
    }
    let mut contiguous = true;
    let mut expected = 1;
    for (&d, &s) in tensor.shape.iter().zip(&tensor.strides).rev() {
        contiguous &= d <= 1 || s == expected;
        expected *= d;
    }
    if contiguous {
        let start = tensor.offset * size;
        return storage[start..start + count * size].to_vec();
    }
    // Any other layout (a transposed view, a slice): gathered element by element.
    let mut out = Vec::with_capacity(count * size);
    let mut index = vec![0usize; tensor.shape.len()];
    for _ in 0..count {
        let at = tensor.offset
            + index
                .iter()
                .zip(&tensor.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.extend_from_slice(&storage[at * size..(at + 1) * size]);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < tensor.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

/// Why an entry of the archive could not be read.
enum EntryError {
    Missing,
    Compressed(CompressionMethod),
    TooLarge(u64),
    Unreadable(String),
}

impl EntryError {
    fn describe(&self, name: &str) -> String {
        match self {
            EntryError::Missing => format!("the archive has no {name}"),
            EntryError::Compressed(method) => {
                format!("{name} is compressed ({method:?}); torch.save stores its entries uncompressed")
            }
            EntryError::TooLarge(limit) => format!("{name} is larger than the {limit} bytes expected"),
            EntryError::Unreadable(reason) => format!("cannot read {name}: {reason}"),
        }
    }
}

/// The entry `name`, when it is stored uncompressed and holds at most `limit` bytes. An entry
/// cannot hold more than the archive's `file_len` bytes, whatever its header says.
fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    limit: u64,
    file_len: u64,
) -> std::result::Result<Vec<u8>, EntryError> {
    let entry = zip.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => EntryError::Missing,
        other => EntryError::Unreadable(other.to_string()),
    })?;
    if entry.compression() != CompressionMethod::Stored {
        return Err(EntryError::Compressed(entry.compression()));
    }
    if entry.size() > limit {
        return Err(EntryError::TooLarge(limit));
    }
    let mut bytes = Vec::with_capacity(entry.size().min(file_len) as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| EntryError::Unreadable(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(EntryError::TooLarge(limit));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::SimpleFileOptions;
    use zip::ZipWriter;

    use super::*;

    /// A storage file: its key and bytes.
    type Storage<'a> = (&'a str, Vec<u8>);

    /// Pickle opcodes, as `torch.save` writes them (protocol 2).
    fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }

    fn text(s: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
        out
    }

    fn int(n: i32) -> Vec<u8> {
        let mut out = vec![b'J'];
        out.extend(n.to_le_bytes());
        out
    }

    fn tuple(items: &[i32]) -> Vec<u8> {
        let mut out = vec![b'('];
        items.iter().for_each(|&n| out.extend(int(n)));
        out.push(b't');
        out
    }

    /// `OrderedDict()`.
    fn ordered_dict() -> Vec<u8> {
        [global("collections", "OrderedDict"), b")R".to_vec()].concat()
    }

    /// `_rebuild_tensor_v2` of a view of storage `key` (`len` elements of `class`) with these
    /// arguments.
    fn tensor(class: &str, key: &str, len: i32, offset: i32, shape: &[i32], strides: &[i32]) -> Vec<u8> {
        tensor_with(class, key, len, offset, shape, strides, &[])
    }

    /// The same with `extra` arguments after the hooks (torch writes its metadata there).
    fn tensor_with(
        class: &str,
        key: &str,
        len: i32,
        offset: i32,
        shape: &[i32],
        strides: &[i32],
        extra: &[u8],
    ) -> Vec<u8> {
        let storage = [
            b"(".to_vec(),
            text("storage"),
            global("torch", class),
            text(key),
            text("cpu"),
            int(len),
            b"tQ".to_vec(),
        ]
        .concat();
        [
            global("torch._utils", "_rebuild_tensor_v2"),
            b"(".to_vec(),
            storage,
            int(offset),
            tuple(shape),
            tuple(strides),
            vec![0x89],
            ordered_dict(),
            extra.to_vec(),
            b"tR".to_vec(),
        ]
        .concat()
    }

    /// `_rebuild_parameter(tensor, True, OrderedDict())`, as a `torch.nn.Parameter` is saved.
    fn parameter(tensor: Vec<u8>) -> Vec<u8> {
        [
            global("torch._utils", "_rebuild_parameter"),
            b"(".to_vec(),
            tensor,
            vec![0x88],
            ordered_dict(),
            b"tR".to_vec(),
        ]
        .concat()
    }

    /// A state dict of named entries, with `_metadata` set as `state_dict()` does.
    fn state_dict(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"\x80\x02".to_vec();
        out.extend(ordered_dict());
        out.push(b'(');
        for (name, value) in entries {
            out.extend(text(name));
            out.extend(value);
        }
        out.push(b'u');
        out.extend(b"}");
        out.extend(text("_metadata"));
        out.extend(ordered_dict());
        out.extend(b"sb.");
        out
    }

    /// A `torch.save` archive of `pickle` and these storages, in folder `archive/`.
    fn archive(
        pickle: &[u8],
        byteorder: Option<&str>,
        storages: &[(&str, Vec<u8>)],
    ) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut zip = ZipWriter::new(file.reopen().unwrap());
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored).unwrap();
        zip.write_all(pickle).unwrap();
        if let Some(order) = byteorder {
            zip.start_file("archive/byteorder", stored).unwrap();
            zip.write_all(order.as_bytes()).unwrap();
        }
        for (key, bytes) in storages {
            zip.start_file(format!("archive/data/{key}"), stored).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        file
    }

    fn floats(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    fn read(pickle: &[u8], storages: &[Storage]) -> Result<BTreeMap<String, Param>> {
        let file = archive(pickle, Some("little"), storages);
        read_pytorch(file.path())
    }

    #[test]
    fn views_of_a_storage_are_read_in_row_major_order() {
        let six = floats((0..6).map(|i| i as f32));
        let pickle = state_dict(&[
            ("whole", tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1])),
            // The transpose of the same storage, and a slice of it from its third element.
            ("transposed", tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3])),
            ("slice", tensor("FloatStorage", "0", 6, 2, &[2], &[1])),
            // A parameter, with the metadata argument torch adds for tensors that have some.
            (
                "half",
                parameter(tensor_with("HalfStorage", "1", 2, 0, &[2], &[1], &ordered_dict())),
            ),
        ]);
        let halves = [half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let params = read(&pickle, &[("0", six), ("1", halves)]).unwrap();
        let got = |name: &str| (params[name].shape().to_vec(), params[name].data().to_vec());
        assert_eq!(got("whole"), (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
        assert_eq!(
            got("transposed"),
            (vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0])
        );
        assert_eq!(got("slice"), (vec![2], vec![2.0, 3.0]));
        assert_eq!(got("half"), (vec![2], vec![1.5, -2.0]));
    }

    /// Integers only for BatchNorm's batch counter, and finite weights, as for safetensors.
    #[test]
    fn integer_and_non_finite_weights_are_refused_by_name() {
        let long = |v: i64| v.to_le_bytes().to_vec();
        let pickle = state_dict(&[(
            "bn.num_batches_tracked",
            tensor("LongStorage", "0", 1, 0, &[], &[]),
        )]);
        assert_eq!(
            read(&pickle, &[("0", long(7))]).unwrap()["bn.num_batches_tracked"].data(),
            &[7.0]
        );
        let pickle = state_dict(&[("w", tensor("LongStorage", "0", 1, 0, &[1], &[1]))]);
        let e = read(&pickle, &[("0", long(7))]).unwrap_err().to_string();
        assert!(e.contains("tensor w has dtype I64"), "{e}");
        let pickle = state_dict(&[("w", tensor("FloatStorage", "0", 2, 0, &[2], &[1]))]);
        let e = read(&pickle, &[("0", floats([1.0, f32::NAN]))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor w holds NaN (at flat index 1)"), "{e}");
    }

    #[test]
    fn big_endian_storages_are_swapped() {
        let pickle = state_dict(&[("w", tensor("FloatStorage", "0", 2, 0, &[2], &[1]))]);
        let bytes = [1.25f32, -3.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let file = archive(&pickle, Some("big\n"), &[("0", bytes)]);
        assert_eq!(read_pytorch(file.path()).unwrap()["w"].data(), &[1.25, -3.0]);
    }

    #[test]
    fn hostile_archives_are_refused_with_what_is_wrong() {
        let six = || floats([0.0; 6]);
        // A tensor memoised once (BINPUT 7) and named 100 times (BINGET 7): 100 views of one
        // 1,000-element storage, from a few bytes each.
        let mut repeated = [b"\x80\x02".to_vec(), ordered_dict(), b"(".to_vec()].concat();
        repeated.extend(text("t0"));
        repeated.extend(tensor("FloatStorage", "0", 1000, 0, &[1000], &[1]));
        repeated.extend(b"q\x07");
        for i in 1..100 {
            repeated.extend(text(&format!("t{i}")));
            repeated.extend(b"h\x07");
        }
        repeated.extend(b"u.");
        let cases: [(Vec<u8>, Vec<Storage>, &str); 12] = [
            (
                repeated,
                vec![("0", floats([0.0; 1000]))],
                "view their storages over and over",
            ),
            // An expanded view: one element standing for 2^30.
            (
                state_dict(&[("w", tensor("FloatStorage", "0", 1, 0, &[1 << 30], &[0]))]),
                vec![("0", floats([0.0]))],
                "more elements than its storage's 1",
            ),
            (
                state_dict(&[(
                    "w",
                    tensor_with(
                        "FloatStorage",
                        "0",
                        6,
                        0,
                        &[6],
                        &[1],
                        &[ordered_dict(), ordered_dict()].concat(),
                    ),
                )]),
                vec![("0", six())],
                "unexpected arguments",
            ),
            // candle's reader panicked on a rebuild call without its arguments.
            (
                state_dict(&[(
                    "w",
                    [global("torch._utils", "_rebuild_tensor_v2"), b")R".to_vec()].concat(),
                )]),
                vec![],
                "unexpected arguments",
            ),
            // A view of 2^30 elements of a storage of 6: candle allocated it from the pickle.
            (
                state_dict(&[("w", tensor("FloatStorage", "0", 6, 0, &[1 << 30], &[1]))]),
                vec![("0", six())],
                "more elements than its storage's 6",
            ),
            (
                state_dict(&[("w", tensor("FloatStorage", "0", 6, 5, &[2], &[1]))]),
                vec![("0", six())],
                "reaches past",
            ),
            // As many elements as the storage, but strided past its end.
            (
                state_dict(&[("w", tensor("FloatStorage", "0", 6, 0, &[2, 3], &[4, 1]))]),
                vec![("0", six())],
                "reaches past its storage's 6 elements",
            ),
            // An empty view cannot start past its storage either.
            (
                state_dict(&[("w", tensor("FloatStorage", "0", 6, 100, &[0], &[1]))]),
                vec![("0", six())],
                "offset is not an element of its storage of 6",
            ),
            // A storage that holds less than its pickle says.
            (
                state_dict(&[("w", tensor("FloatStorage", "0", 6, 0, &[6], &[1]))]),
                vec![("0", floats([0.0; 5]))],
                "archive/data/0 holds 20 bytes",
            ),
            (
                state_dict(&[("w", tensor("FloatStorage", "../0", 6, 0, &[6], &[1]))]),
                vec![],
                "a storage key \"../0\"",
            ),
            (
                state_dict(&[("w", tensor("FloatStorage", "1", 6, 0, &[6], &[1]))]),
                vec![("0", six())],
                "the archive has no archive/data/1",
            ),
            // What Python would run.
            (
                state_dict(&[(
                    "w",
                    [global("os", "system"), text("true"), b"\x85R".to_vec()].concat(),
                )]),
                vec![],
                "refused global os.system: a PyTorch state dict only needs tensors",
            ),
        ];
        for (pickle, storages, needle) in cases {
            let message = read(&pickle, &storages).unwrap_err().to_string();
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
        // A Haiku checkpoint refuses torch's globals.
        let pickle = state_dict(&[("w", tensor("FloatStorage", "0", 6, 0, &[6], &[1]))]);
        let message = pickle::load(&pickle, &Limits::default()).unwrap_err().to_string();
        assert!(
            message.contains("refused global torch._utils._rebuild_tensor_v2"),
            "{message}"
        );
    }

    #[test]
    fn archives_that_are_not_state_dicts_are_refused() {
        let not_zip = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_zip.path(), b"PK\x03\x04 not really").unwrap();
        let message = read_pytorch(not_zip.path()).unwrap_err().to_string();
        assert!(message.contains("not a torch.save archive"), "{message}");

        let list = [b"\x80\x02]".to_vec(), b".".to_vec()].concat();
        let message = read(&list, &[]).unwrap_err().to_string();
        assert!(message.contains("holds no state dict"), "{message}");

        let file = archive(&state_dict(&[]), Some("middle"), &[]);
        let message = read_pytorch(file.path()).unwrap_err().to_string();
        assert!(message.contains("byteorder says \"middle\""), "{message}");
    }
}
