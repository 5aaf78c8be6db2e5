//! The Haiku checkpoint reader: the pickles `scripts/make_haiku_pickle_fixtures.py` wrote with
//! NumPy 1 and 2 read back to the values NumPy has, and hostile pickles (in
//! `tests/fixtures/hostile/haiku/` and written out below byte by byte) are refused with an error
//! that says why, without running anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use perceiver::checkpoint::haiku::pickle::{self, Limits, Value};
use perceiver::checkpoint::haiku::{read_haiku_bytes, read_haiku_bytes_with, read_haiku_file, HaikuParams};
use perceiver::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The file the hostile pickles would create if anything ran them.
const MARKER: &str = "/tmp/perceiver-haiku-pwned";

/// module → parameter → (shape, values).
type Expected = BTreeMap<String, BTreeMap<String, (Vec<usize>, Vec<f32>)>>;

fn expected_params(json: &serde_json::Value) -> Expected {
    let mut out = BTreeMap::new();
    for (module, names) in json.as_object().unwrap() {
        let mut arrays = BTreeMap::new();
        for (name, array) in names.as_object().unwrap() {
            let shape = array["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let data = array["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            arrays.insert(name.clone(), (shape, data));
        }
        out.insert(module.clone(), arrays);
    }
    out
}

fn assert_params_equal(file: &str, found: &HaikuParams, json: &serde_json::Value) {
    let expected = expected_params(json);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{file}: modules"
    );
    for (module, names) in &expected {
        let got = &found[module];
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            names.keys().collect::<Vec<_>>(),
            "{file}: {module}"
        );
        for (name, (shape, data)) in names {
            let array = &got[name];
            assert_eq!(&array.shape, shape, "{file}: {module}/{name} shape");
            // Bit for bit: the conversions to f32 are NumPy's.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&array.data), bits(data), "{file}: {module}/{name} values");
        }
    }
}

#[test]
fn benign_fixtures_read_back_numpys_values() {
    let dir = fixtures().join("haiku");
    let mut checked = 0;
    for numpy in [1, 2] {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("np{numpy}_expected.json"))).unwrap(),
        )
        .unwrap();
        for (file, entry) in json.as_object().unwrap() {
            let checkpoint = read_haiku_file(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_params_equal(file, &checkpoint.params, &entry["params"]);
            match (&checkpoint.state, entry.get("state")) {
                (Some(state), Some(expected)) => assert_params_equal(file, state, expected),
                (None, None) => {}
                (found, expected) => panic!("{file}: state {found:?} vs expected {expected:?}"),
            }
            checked += 1;
        }
    }
    // Protocols 2–5, FlatMapping/FlatMap/OrderedDict/JAX arrays and a .pystate, twice.
    assert_eq!(checked, 20);
}

#[test]
fn every_kind_of_array_is_in_the_fixtures() {
    // Guard against a fixture script that silently stops writing a case.
    let bytes = std::fs::read(fixtures().join("haiku/np1_params_p2.pickle")).unwrap();
    let Value::Dict(modules) = pickle::load(&bytes, &Limits::default()).unwrap() else {
        panic!("not a dict")
    };
    let mut elements = std::collections::BTreeSet::new();
    let mut big_endian = false;
    for (_, names) in &modules {
        let Value::Dict(names) = names else { panic!() };
        for (_, array) in names {
            let Value::Array(array) = array else { panic!() };
            elements.insert(format!("{:?}", array.dtype.element));
            big_endian |= array.dtype.big_endian;
        }
    }
    assert!(big_endian);
    for element in ["F16", "BF16", "F32", "F64", "I32", "I64", "U8", "Bool"] {
        assert!(elements.contains(element), "{element} missing from {elements:?}");
    }
}

fn pickle_error(result: perceiver::Result<impl std::fmt::Debug>) -> (Option<u64>, String) {
    match result {
        Err(Error::Pickle { offset, reason, .. }) => (offset, reason),
        other => panic!("expected a pickle error, got {other:?}"),
    }
}

fn refused(bytes: &[u8]) -> String {
    let (_, reason) = pickle_error(pickle::load(bytes, &Limits::default()));
    // The checkpoint reader refuses it the same way.
    let (_, again) = pickle_error(read_haiku_bytes(bytes));
    assert_eq!(reason, again);
    reason
}

#[test]
fn hostile_fixture_files_are_refused_naming_the_global() {
    let dir = fixtures().join("hostile/haiku");
    // Python 3 writes builtins under their Python 2 module name at protocol 2.
    let cases = [
        ("os_system", "posix.system", "posix.system"),
        ("builtins_eval", "__builtin__.eval", "builtins.eval"),
        ("builtins_exec", "__builtin__.exec", "builtins.exec"),
        // (which Python 3's unpickler maps back to subprocess.Popen)
        ("subprocess_popen", "commands.Popen", "subprocess.Popen"),
        ("nested_in_params", "posix.system", "posix.system"),
    ];
    for (name, global_2, global_4) in cases {
        for (protocol, global) in [(2, global_2), (4, global_4)] {
            let path = dir.join(format!("{name}_p{protocol}.pickle"));
            let err = read_haiku_file(&path).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(&format!(
                    "refused global {global}: a DeepMind checkpoint only needs numpy arrays and mappings"
                )),
                "{name}: {message}"
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
    }
    assert!(!Path::new(MARKER).exists(), "something ran a hostile pickle");
}

#[test]
fn a_global_is_refused_where_it_is_named() {
    // GLOBAL 'os system' at protocol 2, and STACK_GLOBAL at 4: the error points at the opcode.
    let (offset, reason) = pickle_error(pickle::load(b"\x80\x02cos\nsystem\n.", &Limits::default()));
    assert_eq!(offset, Some(2));
    assert_eq!(
        reason,
        "refused global os.system: a DeepMind checkpoint only needs numpy arrays and mappings"
    );
    let stack_global = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94.";
    assert!(refused(stack_global).starts_with("refused global builtins.eval"));
    // INST names a class too.
    assert!(refused(b"(isubprocess\nPopen\n.").starts_with("refused global subprocess.Popen"));
    // Close look-alikes of allowed names are refused as well.
    assert!(refused(b"\x80\x02cnumpy.core.multiarray\n_reconstructx\n.").contains("_reconstructx"));
    assert!(refused(b"\x80\x02cnumpy.testing\ndtype\n.").contains("numpy.testing.dtype"));
    assert!(!Path::new(MARKER).exists());
}

/// A protocol-2 prefix naming an allowed global.
fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

fn short_str(s: &str) -> Vec<u8> {
    let mut out = vec![0x8c, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// `numpy.dtype(name, False, True)` with a BUILD of `(3, order, None, None, None, -1, -1, 0)`.
fn dtype(name: &str, order: &str) -> Vec<u8> {
    let mut out = global("numpy", "dtype");
    out.extend(short_str(name));
    out.extend(b"\x89\x88\x87R(K\x03");
    out.extend(short_str(order));
    out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
    out
}

/// An ndarray by `_reconstruct` + BUILD with the given shape opcodes, dtype and data.
fn ndarray(shape: &[u64], dtype_bytes: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = b"\x80\x04".to_vec();
    out.extend(global("numpy.core.multiarray", "_reconstruct"));
    out.extend(global("numpy", "ndarray"));
    out.extend(b"K\x00\x85C\x01b\x87R(K\x01(");
    for &d in shape {
        out.push(0x8a);
        out.push(8);
        out.extend(d.to_le_bytes());
    }
    out.push(b't');
    out.extend(dtype_bytes);
    out.push(0x89);
    out.push(0x8e);
    out.extend((data.len() as u64).to_le_bytes());
    out.extend(data);
    out.extend(b"tb");
    out
}

#[test]
fn a_hand_written_array_reads() {
    let data: Vec<u8> = [1.0f32, -2.0, 3.5, 0.25, 5.0, 6.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let mut bytes = ndarray(&[2, 3], &dtype("f4", "<"), &data);
    bytes.push(b'.');
    let Value::Array(array) = pickle::load(&bytes, &Limits::default()).unwrap() else {
        panic!()
    };
    assert_eq!(array.shape, vec![2, 3]);
    assert_eq!(array.data, data);
}

#[test]
fn arrays_whose_data_does_not_match_their_shape_are_refused() {
    // Four bytes short.
    let mut short = ndarray(&[2, 3], &dtype("f4", "<"), &[0u8; 20]);
    short.push(b'.');
    assert_eq!(
        refused(&short),
        "an array of shape [2, 3] and F32 needs 24 bytes, its data has 20"
    );
    // Extra bytes are refused too (NumPy refuses them).
    let mut long = ndarray(&[2], &dtype("f8", "<"), &[0u8; 24]);
    long.push(b'.');
    assert!(refused(&long).contains("needs 16 bytes, its data has 24"));
    // 10⁹ elements claimed, eight bytes given: refused before anything is allocated.
    let mut billion = ndarray(&[1000, 1000, 1000], &dtype("f4", "<"), &[0u8; 8]);
    billion.push(b'.');
    assert!(refused(&billion).contains("needs 4000000000 bytes, its data has 8"));
    // A shape whose product overflows 64 bits.
    let mut overflow = ndarray(&[1 << 40, 1 << 40], &dtype("f4", "<"), &[]);
    overflow.push(b'.');
    assert!(
        refused(&overflow).contains("more than the 4294967296 elements allowed"),
        "{}",
        refused(&overflow)
    );
    // A negative dimension.
    let mut negative = ndarray(&[u64::MAX], &dtype("f4", "<"), &[]);
    negative.push(b'.');
    assert!(refused(&negative).contains("an array dimension of -1"));
}

#[test]
fn a_length_beyond_the_file_is_truncation_not_an_allocation() {
    // BINBYTES8 claiming 2⁶⁰ bytes, and BINUNICODE claiming 4 GB, in a 20-byte file.
    let mut huge = b"\x80\x04\x8e".to_vec();
    huge.extend((1u64 << 60).to_le_bytes());
    huge.extend(b"abc.");
    assert!(refused(&huge).starts_with("truncated"), "{}", refused(&huge));
    assert!(refused(b"\x80\x02X\xff\xff\xff\xffab.").starts_with("truncated"));
    // A frame longer than the file.
    let mut frame = b"\x80\x04\x95".to_vec();
    frame.extend(1000u64.to_le_bytes());
    frame.extend(b"N.");
    assert!(refused(&frame).starts_with("truncated: a frame of 1000 bytes"));
}

#[test]
fn every_truncation_of_a_real_checkpoint_is_an_error() {
    for file in [
        "np2_params_p2.pickle",
        "np2_params_p5.pickle",
        "np1_pystate_p4.pickle",
    ] {
        let bytes = std::fs::read(fixtures().join("haiku").join(file)).unwrap();
        assert!(read_haiku_bytes(&bytes).is_ok());
        for len in 0..bytes.len() {
            let result = pickle::load(&bytes[..len], &Limits::default());
            assert!(result.is_err(), "{file} cut at {len} read as {result:?}");
        }
    }
}

#[test]
fn reduce_of_an_allowed_callable_with_bad_arguments_is_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // dtype of Python objects.
        (
            [
                global("numpy", "dtype"),
                short_str("O8"),
                b"\x89\x88\x87R.".to_vec(),
            ]
            .concat(),
            "\"O8\" is not supported",
        ),
        // A structured dtype's state.
        (
            [
                global("numpy", "dtype"),
                short_str("V8"),
                b"\x89\x88\x87R.".to_vec(),
            ]
            .concat(),
            "\"V8\" is not supported",
        ),
        // _reconstruct of a class other than ndarray (here a dtype).
        (
            [
                global("numpy.core.multiarray", "_reconstruct"),
                global("numpy", "dtype"),
                b"K\x00\x85C\x01b\x87R.".to_vec(),
            ]
            .concat(),
            "expected numpy.ndarray as the class",
        ),
        // _codecs.encode to anything but latin-1.
        (
            [
                global("_codecs", "encode"),
                short_str("x"),
                short_str("rot13"),
                b"\x86R.".to_vec(),
            ]
            .concat(),
            "_codecs.encode called with unexpected arguments",
        ),
        // bytes() with arguments (bytes(10**9) would allocate a gigabyte in Python).
        (
            [global("builtins", "bytes"), b"J\x00\xca\x9a\x3b\x85R.".to_vec()].concat(),
            "bytes called with unexpected arguments",
        ),
        // FlatMapping of a number.
        (
            [
                global("haiku._src.data_structures", "FlatMapping"),
                b"K\x01\x85R.".to_vec(),
            ]
            .concat(),
            "a mapping class called with unexpected arguments (expected a dict)",
        ),
        // Arguments that are not a tuple.
        (
            [global("collections", "OrderedDict"), b"]R.".to_vec()].concat(),
            "the arguments of a mapping class are a list, not a tuple",
        ),
        // numpy.ndarray called directly.
        (
            [global("numpy", "ndarray"), b")R.".to_vec()].concat(),
            "REDUCE calls numpy.ndarray",
        ),
        // REDUCE of something that is not a global.
        (
            b"\x80\x02})R.".to_vec(),
            "REDUCE calls a dict, which is not callable here",
        ),
        // _frombuffer with an order NumPy never writes.
        (
            [
                global("numpy.core.numeric", "_frombuffer"),
                b"(C\x04abcd".to_vec(),
                dtype("f4", "<"),
                b"K\x01\x85".to_vec(),
                short_str("K"),
                b"tR.".to_vec(),
            ]
            .concat(),
            "array order \"K\"",
        ),
        // A jax array whose function is not numpy's _reconstruct.
        (
            [
                global("jax._src.device_array", "reconstruct_device_array"),
                b"(".to_vec(),
                global("numpy", "dtype"),
                b")NNtR.".to_vec(),
            ]
            .concat(),
            "expected numpy's _reconstruct as the function",
        ),
        // BUILD (which would set attributes) on a dict.
        (b"\x80\x02}}b.".to_vec(), "BUILD of a dict"),
        // An object array's state holds a list of objects.
        (
            [
                b"\x80\x02".to_vec(),
                global("numpy.core.multiarray", "_reconstruct"),
                global("numpy", "ndarray"),
                b"K\x00\x85C\x01b\x87R(K\x01K\x01\x85".to_vec(),
                dtype("f4", "<"),
                b"\x89]tb.".to_vec(),
            ]
            .concat(),
            "an array of Python objects",
        ),
    ];
    for (bytes, expected) in cases {
        let reason = refused(&bytes);
        assert!(
            reason.contains(expected),
            "{reason:?} should contain {expected:?}"
        );
    }
}

#[test]
fn opcodes_that_build_objects_or_reach_outside_are_refused() {
    let cases: [(&[u8], &str); 9] = [
        (
            b"\x80\x02cnumpy\nndarray\n)\x81.",
            "NEWOBJ makes an instance of a class",
        ),
        (
            b"\x80\x04cnumpy\nndarray\n)}\x92.",
            "NEWOBJ_EX makes an instance of a class",
        ),
        (b"(cnumpy\nndarray\no.", "OBJ makes an instance of a class"),
        (b"\x80\x02U\x01aQ.", "Python 2 or protocol 0 string"),
        (b"\x80\x02N\x82\x01.", "extension-registry global"),
        (b"\x80\x05\x97.", "out-of-band buffer"),
        (b"\x80\x04\x8f.", "sets are not part of a checkpoint"),
        (b"\x80\x06N.", "pickle protocol 6"),
        (b"\x80\x02\xff.", "unknown opcode 0xff"),
    ];
    for (bytes, expected) in cases {
        let reason = refused(bytes);
        assert!(
            reason.contains(expected),
            "{reason:?} should contain {expected:?}"
        );
    }
}

#[test]
fn malformed_streams_are_errors() {
    let cases: [(&[u8], &str); 10] = [
        (b"", "truncated"),
        (b"\x80\x02", "truncated"),
        (b"\x80\x02N", "truncated"),
        (b"\x80\x02h\x05.", "memo index 5 was never stored"),
        (
            b"\x80\x02Nq\x00j\x00\x01\x00\x00.",
            "memo index 256 was never stored",
        ),
        (b"\x80\x02.", "the stack is empty"),
        (b"\x80\x02NN.", "more than one object"),
        (b"\x80\x02N.N", "1 bytes after the pickle's end"),
        (b"\x80\x02(N.", "STOP with a MARK still open"),
        (b"\x80\x02Nt.", "needs a MARK"),
    ];
    for (bytes, expected) in cases {
        let reason = refused(bytes);
        assert!(
            reason.contains(expected),
            "{reason:?} should contain {expected:?}"
        );
    }
    // A global or an unfilled array cannot be the result.
    assert!(refused(b"\x80\x02cnumpy\nndarray\n.").contains("the result holds numpy.ndarray itself"));
    let unfilled = [
        global("numpy.core.multiarray", "_reconstruct"),
        global("numpy", "ndarray"),
        b"K\x00\x85C\x01b\x87R.".to_vec(),
    ]
    .concat();
    assert!(refused(&unfilled).contains("never filled"));
}

#[test]
fn deep_nesting_is_bounded() {
    // A hundred thousand open MARKs.
    let mut marks = b"\x80\x02".to_vec();
    marks.extend(std::iter::repeat_n(b'(', 100_000));
    assert!(refused(&marks).contains("more than 100 MARKs open"));
    // Lists nested 10 000 deep: `]` pushed 10 000 times, each appended to the one below.
    let mut lists = b"\x80\x02".to_vec();
    lists.extend(std::iter::repeat_n(b']', 10_000));
    lists.extend(std::iter::repeat_n(b'a', 9_999));
    lists.push(b'.');
    assert!(refused(&lists).contains("nests more than 100 deep"));
    // A list that holds itself.
    assert!(refused(b"\x80\x02]q\x00h\x00a.").contains("refers to itself"));
}

#[test]
fn references_to_references_cannot_blow_up() {
    // x = []; then 64 times x = (x, x), each memoised: 2⁶⁴ nodes if expanded.
    let mut bytes = b"\x80\x02]q\x000".to_vec();
    for i in 0..64u8 {
        bytes.extend([b'h', i, b'h', i, 0x86, b'q', i + 1, b'0']);
    }
    bytes.extend([b'h', 64, b'.']);
    let start = std::time::Instant::now();
    let reason = refused(&bytes);
    assert!(reason.contains("more than 67108864 objects"), "{reason}");
    assert!(start.elapsed().as_secs() < 30);
    // Smaller limits refuse it sooner.
    let limits = Limits {
        max_objects: 1000,
        ..Limits::default()
    };
    let (_, reason) = pickle_error(pickle::load(&bytes, &limits));
    assert!(reason.contains("more than 1000 objects"));
    // The same bound holds for a pytorch_model.bin's pickle.
    let (_, reason) = pickle_error(pickle::load_torch(&bytes, &limits));
    assert!(reason.contains("more than 1000 objects"));
    // The same pairs left on the stack instead of popped.
    let mut bomb = b"\x80\x02]q\x00".to_vec();
    for _ in 0..64 {
        bomb.extend(b"h\x00h\x00\x86q\x00");
    }
    bomb.push(b'.');
    assert_eq!(refused(&bomb), "STOP with more than one object on the stack");
}

#[test]
fn other_limits_hold() {
    let limits = Limits {
        max_input_bytes: 10,
        max_memo: 2,
        max_array_elements: 5,
        ..Limits::default()
    };
    let (offset, reason) = pickle_error(pickle::load(&[b'N'; 11], &limits));
    assert_eq!(
        (offset, reason.as_str()),
        (Some(0), "the pickle is 11 bytes, more than the 10 allowed")
    );
    let limits = Limits {
        max_memo: 2,
        max_array_elements: 5,
        ..Limits::default()
    };
    let (_, reason) = pickle_error(pickle::load(b"\x80\x04N\x94N\x94N\x94.", &limits));
    assert_eq!(reason, "more than 2 memo entries");
    let mut six = ndarray(&[2, 3], &dtype("f4", "<"), &[0u8; 24]);
    six.push(b'.');
    let (_, reason) = pickle_error(pickle::load(&six, &limits));
    assert!(reason.contains("more than the 5 elements allowed"));
    let (_, reason) = pickle_error(read_haiku_bytes_with(&six, &limits));
    assert!(reason.contains("more than the 5 elements allowed"));
}

#[test]
fn a_big_endian_array_in_a_hand_written_pickle_is_swapped() {
    let data: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    let mut bytes = b"\x80\x02}(\x8c\x06linear}\x8c\x01w".to_vec();
    bytes.extend(&ndarray(&[2], &dtype("f8", ">"), &data)[2..]);
    bytes.extend(b"su.");
    let checkpoint = read_haiku_bytes(&bytes).unwrap();
    assert_eq!(checkpoint.params["linear"]["w"].data, vec![1.5, -2.0]);
}

#[test]
fn contents_that_are_not_haiku_params_are_refused_by_path() {
    let not_a_mapping = b"\x80\x02]."; // a list
    let (offset, reason) = pickle_error(read_haiku_bytes(not_a_mapping));
    assert_eq!(offset, None);
    assert_eq!(reason, "the pickle holds a list, not a mapping of Haiku modules");
    // A parameter that is a string.
    let leaf = b"\x80\x02}(\x8c\x06linear}\x8c\x01w\x8c\x02hisu.";
    assert_eq!(
        pickle_error(read_haiku_bytes(leaf)).1,
        "linear/w is a string, not an array"
    );
    // A module key set twice.
    let twice = b"\x80\x02}(\x8c\x01a}\x8c\x01a}u.";
    assert_eq!(pickle_error(read_haiku_bytes(twice)).1, "a appears twice");
    // A .pystate whose state is not a mapping.
    let state = b"\x80\x02}(\x8c\x06params}\x8c\x05stateK\x01u.";
    assert_eq!(
        pickle_error(read_haiku_bytes(state)).1,
        "state is an int, not a mapping"
    );
}

#[test]
fn the_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.pickle");
    std::fs::write(&path, b"\x80\x02cos\nsystem\n.").unwrap();
    assert_eq!(
        read_haiku_file(&path).unwrap_err().to_string(),
        format!(
            "cannot read the pickle {} (at byte 2): refused global os.system: a DeepMind checkpoint only needs numpy arrays and mappings",
            path.display()
        )
    );
    let missing = dir.path().join("missing.pickle");
    assert!(matches!(read_haiku_file(&missing), Err(Error::Io { .. })));
}
