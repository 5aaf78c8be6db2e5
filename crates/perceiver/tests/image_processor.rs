//! The image module against transformers' `PerceiverImageProcessorPil` and Pillow 12.0, on the
//! fixtures `scripts/make_image_fixtures.py` wrote to `tests/fixtures/images/` (see its
//! README.md for what each image and config covers).
//!
//! Tolerances:
//! * decoding (`np.array(load_image(path))`): exact for PNG, BMP, GIF, TIFF and WebP (lossy
//!   too: image-webp rounds as libwebp does); JPEG within [`LOSSY_LEVELS`] (zune-jpeg, not
//!   Pillow's libjpeg-turbo), and within [`LOSSY_INTERIOR_LEVELS`] away from the image's border;
//! * the processor from Pillow's decoded pixels (centre crop, resize, rescale, normalise): exact
//!   (tolerance 0);
//! * from file bytes: exact where decoding is; for JPEG, [`LOSSY_LEVELS`] decoded
//!   levels carried through resize (whose weights sum to 1 with lobes up to ~1.3 in absolute
//!   sum, plus one level of rounding) and scaled to the config's units.
//!
//! Each test prints the worst difference it saw.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use perceiver::image::{
    decode_image, decode_image_with_limits, resize, DecodeLimits, ImageProcessor, ImageProcessorConfig,
    Resample, RgbImage, Size,
};
use perceiver::Error;
use proptest::prelude::*;
use safetensors::{Dtype, SafeTensors};

/// Largest accepted |Δ sample| between our decoding of a JPEG and Pillow's. Inside the image
/// the two decoders differ by their IDCT and colour-conversion rounding (2 levels at most in the
/// fixtures). On the last column (row) of a 4:2:0 JPEG of even width (height) that is not a
/// multiple of 16, libjpeg-turbo's "fancy" chroma upsampling replicates the last chroma sample
/// where zune-jpeg reads the encoder's padding sample: up to 9 levels in the fixtures.
const LOSSY_LEVELS: u8 = 10;
/// [`LOSSY_LEVELS`] for the pixels off the image's border.
const LOSSY_INTERIOR_LEVELS: u8 = 3;

fn dir() -> PathBuf {
    common::fixtures().join("images")
}

struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    fn load() -> Self {
        let path = dir().join("expected.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Expected { bytes }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = self.tensors();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        (t.shape().to_vec(), t.data().to_vec())
    }

    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.tensors();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    }

    fn rgb(&self, name: &str) -> RgbImage {
        let (shape, data) = self.u8(name);
        assert_eq!(shape.len(), 3, "{name}");
        assert_eq!(shape[2], 3, "{name}");
        RgbImage::new(shape[1], shape[0], data).unwrap()
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.tensors().names().into_iter().map(str::to_string).collect();
        n.sort();
        n
    }
}

/// The fixture images, with the key stem `make_image_fixtures.py` gives them.
fn images() -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            ["png", "jpg", "webp", "bmp", "gif", "tif"].contains(&ext)
        })
        .map(|p| (p.file_name().unwrap().to_str().unwrap().replace('.', "_"), p))
        .collect();
    v.sort();
    assert!(
        v.len() >= 15,
        "expected the image fixtures in {}",
        dir().display()
    );
    v
}

fn configs() -> Vec<(String, ImageProcessor)> {
    let mut v: Vec<(String, ImageProcessor)> = std::fs::read_dir(dir().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            (
                name,
                ImageProcessor::from_file(p.join("preprocessor_config.json")).unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(v.len(), 4);
    v
}

fn is_jpeg(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jpg")
}

/// The image without its outermost rows and columns.
fn interior(img: &RgbImage) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    (1..h.saturating_sub(1))
        .flat_map(|y| (1..w.saturating_sub(1)).flat_map(move |x| img.pixel(x, y)))
        .collect()
}

fn max_level_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn decoding_matches_pillow() {
    let expected = Expected::load();
    let (mut worst_lossy, mut worst_interior) = (0u8, 0u8);
    for (stem, path) in images() {
        let bytes = std::fs::read(&path).unwrap();
        let ours = decode_image(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let pil = expected.rgb(&format!("{stem}.rgb"));
        assert_eq!(
            (ours.width(), ours.height()),
            (pil.width(), pil.height()),
            "{}: size (width, height)",
            path.display()
        );
        let d = max_level_diff(ours.pixels(), pil.pixels());
        let inner = max_level_diff(&interior(&ours), &interior(&pil));
        println!(
            "{:<16} {:>3} x {:<3} max |Δ level| {d} ({inner} off the border)",
            stem,
            ours.width(),
            ours.height()
        );
        if is_jpeg(&path) {
            worst_lossy = worst_lossy.max(d);
            worst_interior = worst_interior.max(inner);
            assert!(
                d <= LOSSY_LEVELS,
                "{}: max |Δ level| {d} > {LOSSY_LEVELS}",
                path.display()
            );
            assert!(
                inner <= LOSSY_INTERIOR_LEVELS,
                "{}: max |Δ level| off the border {inner} > {LOSSY_INTERIOR_LEVELS}",
                path.display()
            );
        } else {
            assert_eq!(d, 0, "{}: decoded samples differ from Pillow's", path.display());
        }
    }
    println!(
        "worst |Δ level|: 0 for PNG, BMP, GIF, TIFF, WebP; JPEG {worst_lossy} (tolerance {LOSSY_LEVELS}), \
         {worst_interior} off the border (tolerance {LOSSY_INTERIOR_LEVELS})"
    );
}

#[test]
fn processor_matches_transformers_on_pillows_pixels() {
    let expected = Expected::load();
    let mut worst = 0f32;
    let mut n = 0;
    for (stem, _) in images() {
        let rgb = expected.rgb(&format!("{stem}.rgb"));
        for (cname, proc) in configs() {
            let key = format!("{stem}.{cname}");
            let (shape, want) = expected.f32(&key);
            let got = proc.preprocess(&rgb).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(vec![3, got.height, got.width], shape, "{key}: shape");
            let d = max_abs_diff(&got.values, &want);
            worst = worst.max(d);
            n += 1;
            assert_eq!(d, 0.0, "{key}: max |Δ| {d:e} (expected bit-equal pixel_values)");
        }
    }
    println!("{n} (image, config) pairs, worst max |Δ pixel_values| {worst:e} (tolerance 0)");
}

#[test]
fn end_to_end_from_file_bytes() {
    let expected = Expected::load();
    let mut worst_exact = 0f32;
    let mut worst_lossy_levels = 0f32;
    for (stem, path) in images() {
        let bytes = std::fs::read(&path).unwrap();
        for (cname, proc) in configs() {
            let key = format!("{stem}.{cname}");
            let (shape, want) = expected.f32(&key);
            let got = proc
                .preprocess_file_bytes(&bytes)
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(vec![3, got.height, got.width], shape, "{key}: shape");
            let d = max_abs_diff(&got.values, &want);
            let c = proc.config();
            // One level of the decoded image in the units of pixel_values.
            let level = (if c.do_rescale { c.rescale_factor } else { 1.0 })
                / (if c.do_normalize {
                    c.image_std.iter().fold(f64::MAX, |a, s| a.min(s.abs()))
                } else {
                    1.0
                });
            if is_jpeg(&path) {
                // Resize weights sum to 1 with |lobes| summing to at most ~1.3, plus one level of rounding.
                let tol_levels = (1.3 * f64::from(LOSSY_LEVELS)).ceil() + 1.0;
                let levels = (f64::from(d) / level) as f32;
                worst_lossy_levels = worst_lossy_levels.max(levels);
                assert!(
                    f64::from(d) <= tol_levels * level + 1e-6,
                    "{key}: max |Δ| {d:e} = {levels:.2} levels > {tol_levels}"
                );
            } else {
                worst_exact = worst_exact.max(d);
                assert_eq!(d, 0.0, "{key}: max |Δ| {d:e}");
            }
        }
    }
    println!(
        "from file bytes: worst max |Δ| {worst_exact:e} for lossless formats (tolerance 0); \
         {worst_lossy_levels:.2} decoded levels for JPEG (tolerance {})",
        (1.3 * f64::from(LOSSY_LEVELS)).ceil() + 1.0
    );
}

#[test]
fn resize_matches_pillow_for_every_filter() {
    let expected = Expected::load();
    let names = expected.names();
    let mut n = 0;
    for name in names
        .iter()
        .filter(|n| n.starts_with("resize.") && !n.ends_with(".input"))
    {
        // resize.<input>.<filter>.<h>x<w>
        let parts: Vec<&str> = name.split('.').collect();
        let input = expected.rgb(&format!("resize.{}.input", parts[1]));
        let filter = Resample::from_pil(parts[2].parse().unwrap()).unwrap();
        let want = expected.rgb(name);
        let got = resize(&input, want.width(), want.height(), filter).unwrap();
        let d = max_level_diff(got.pixels(), want.pixels());
        assert_eq!(
            d,
            0,
            "{name}: {} -> {:?} with {filter}: max |Δ level| {d}",
            input.width(),
            (want.width(), want.height())
        );
        n += 1;
    }
    assert!(n >= 90, "only {n} resize cases");
    println!("{n} resize cases bit-equal to Pillow (all six filters)");
}

#[test]
fn fixture_configs_parse_as_transformers_reads_them() {
    let get = |name: &str| {
        ImageProcessorConfig::from_file(dir().join("configs").join(name).join("preprocessor_config.json"))
            .unwrap()
    };
    let d = get("deepmind_style");
    assert_eq!((d.size, d.crop_size), (Size::square(12), Size::square(15)));
    assert_eq!(
        d.extra.get("feature_extractor_type").and_then(|v| v.as_str()),
        Some("PerceiverFeatureExtractor")
    );
    let n = get("nonsquare_pad");
    assert_eq!(
        n.size,
        Size {
            height: 14,
            width: 10
        }
    );
    assert_eq!(n.image_mean, [0.5; 3]);
    assert_eq!(n.rescale_factor, 0.00390625);
    // The unread fields survive a round trip.
    let json = serde_json::to_string(&n).unwrap();
    let back: ImageProcessorConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, n);
    assert!(
        json.contains("\"image_processor_type\":\"PerceiverImageProcessor\""),
        "{json}"
    );
    let c = get("no_crop_bilinear");
    assert!(!c.do_center_crop && !c.do_rescale);
    assert_eq!(c.resample, Resample::Bilinear);
}

// ---------------------------------------------------------------------------------------------
// Bad input: one clear error each, never a panic.
// ---------------------------------------------------------------------------------------------

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    // CRC-32 (ISO-HDLC), bitwise: enough for a few test chunks.
    let mut crc = 0xffff_ffffu32;
    for &b in kind.iter().chain(data) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

/// A PNG whose header states `width` × `height` RGB pixels, with one small IDAT chunk (a
/// zlib stream of a few zero rows' worth, far less than the header claims) and IEND.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // zlib: header 78 01, one stored block of 4 zero bytes, Adler-32 of 4 zeros = 0x00040001.
    let idat = [
        0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01,
    ];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &idat));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

fn invalid_image(r: perceiver::Result<RgbImage>) -> (Option<&'static str>, String) {
    match r {
        Err(Error::InvalidImage { format, reason }) => (format, reason),
        other => panic!("expected Error::InvalidImage, got {other:?}"),
    }
}

#[test]
fn empty_bytes_are_refused() {
    let (format, reason) = invalid_image(decode_image(&[]));
    assert_eq!(format, None);
    assert!(reason.contains("empty"), "{reason}");
}

#[test]
fn a_text_file_is_not_an_image() {
    let text = b"{\"size\": 224, \"crop_size\": 256}\n";
    let e = decode_image(text).unwrap_err();
    assert!(matches!(e, Error::InvalidImage { format: None, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("not a JPEG, PNG, WebP, BMP, GIF or TIFF file") && msg.contains("size"),
        "{msg}"
    );
}

#[test]
fn truncated_files_are_refused() {
    for name in [
        "rgb.png",
        "rgb.jpg",
        "orient8.webp",
        "rgb.bmp",
        "palette.gif",
        "orient7.tif",
    ] {
        let bytes = std::fs::read(dir().join(name)).unwrap();
        for cut in [bytes.len() / 2, 40.min(bytes.len() - 1), 12] {
            // Pillow refuses every one of these ("image file is truncated" and the like).
            let e = decode_image(&bytes[..cut]).unwrap_err();
            assert!(matches!(e, Error::InvalidImage { .. }), "{name}[..{cut}]: {e:?}");
            println!("{name}[..{cut}]: {e}");
        }
    }
    // A JPEG that only lacks its last byte (the end-of-image marker's) is truncated for Pillow
    // too; bytes after a complete JPEG are ignored by both.
    let jpg = std::fs::read(dir().join("rgb.jpg")).unwrap();
    assert!(matches!(
        decode_image(&jpg[..jpg.len() - 1]),
        Err(Error::InvalidImage {
            format: Some("JPEG"),
            ..
        })
    ));
    let mut padded = jpg.clone();
    padded.extend_from_slice(b"trailing bytes");
    assert_eq!(decode_image(&padded).unwrap(), decode_image(&jpg).unwrap());
}

#[test]
fn corrupt_png_data_is_an_error() {
    let mut bytes = std::fs::read(dir().join("rgb.png")).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 2..n - 20] {
        *b ^= 0x5a;
    }
    let (format, reason) = invalid_image(decode_image(&bytes));
    assert_eq!(format, Some("PNG"));
    println!("corrupt PNG: {reason}");
}

#[test]
fn a_damaged_png_chunk_is_named_by_its_crc() {
    let png = std::fs::read(dir().join("rgb.png")).unwrap();
    for kind in [b"IHDR", b"IDAT"] {
        let mut bytes = png.clone();
        let data = png.windows(4).position(|w| w == kind).unwrap() + 4;
        bytes[data + 2] ^= 0xff;
        let (format, reason) = invalid_image(decode_image(&bytes));
        assert_eq!(format, Some("PNG"));
        let kind = std::str::from_utf8(kind).unwrap();
        assert_eq!(reason, format!("CRC error in chunk {kind} (the file is damaged)"));
    }
    // With the CRCs right, the decoder's own message, without the image crate's prefix and with
    // chunk types by name (not `ChunkType { type: gAMA, critical: false, ... }`).
    let mut misordered = png[..8].to_vec();
    misordered.extend(png_chunk(b"gAMA", &100_000u32.to_be_bytes()));
    misordered.extend_from_slice(&png[8..]);
    let (format, reason) = invalid_image(decode_image(&misordered));
    assert_eq!(format, Some("PNG"));
    assert_eq!(reason, "gAMA chunk appeared before IHDR chunk");
}

#[test]
fn a_60000_by_60000_png_is_refused_from_its_header() {
    let png = png_claiming(60_000, 60_000);
    assert!(png.len() < 100);
    match decode_image(&png) {
        Err(
            e @ Error::ImageTooLarge {
                width: 60_000,
                height: 60_000,
                max_pixels: DecodeLimits::PIL_MAX_PIXELS,
                limit,
            },
        ) => {
            assert_eq!(limit, "image");
            let msg = e.to_string();
            assert!(
                msg.contains(
                    "the image is 60000 x 60000 pixels (width x height: 3600000000), more than the limit of 178956970 pixels"
                ),
                "{msg}"
            );
            println!("{msg}");
        }
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
    // A lower limit applies the same way, and an image under it decodes (its data is too
    // short, so decoding then fails as truncated, not as too large).
    let limits = DecodeLimits { max_pixels: 100 };
    assert!(matches!(
        decode_image_with_limits(&png_claiming(11, 10), &limits),
        Err(Error::ImageTooLarge { .. })
    ));
    assert!(matches!(
        decode_image_with_limits(&png_claiming(10, 10), &limits),
        Err(Error::InvalidImage { .. })
    ));
}

#[test]
fn every_format_checks_the_limit_before_decoding() {
    let limits = DecodeLimits { max_pixels: 50 };
    for (stem, path) in images() {
        let bytes = std::fs::read(&path).unwrap();
        match decode_image_with_limits(&bytes, &limits) {
            Err(Error::ImageTooLarge { max_pixels: 50, .. }) => {}
            other => panic!("{stem}: expected ImageTooLarge, got {other:?}"),
        }
    }
}

#[test]
fn bad_preprocessor_configs_are_refused() {
    let bad = [
        (r#"{"size": 0}"#, "size.height"),
        (r#"{"size": {"height": 224, "width": 0}}"#, "size.width"),
        (r#"{"crop_size": [256, 100000]}"#, "crop_size.width"),
        (r#"{"size": "224"}"#, "size must be"),
        (r#"{"size": 224.0}"#, "size.height must be a positive integer"),
        (r#"{"size": {"shortest_edge": 224}}"#, "size must be {\"height\""),
        (r#"{"do_resize": "yes"}"#, "do_resize must be true or false"),
        // A long value is cut short for the message, on a character boundary.
        (
            r#"{"do_resize": "a€€€€€€€€€€€€€€€€€€€€€€€€"}"#,
            "got \"a€€€€€€€€€€€€€€€€€€...",
        ),
        (r#"{"resample": 7}"#, "resample is 7"),
        (r#"{"resample": "bicubic"}"#, "resample must be"),
        (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean must be"),
        (r#"{"image_std": [0.5, 0.0, 0.5]}"#, "image_std[1] = 0"),
        (
            r#"{"rescale_factor": "1/255"}"#,
            "rescale_factor must be a finite number",
        ),
        ("[1, 2, 3]", "preprocessor_config.json"),
        ("{\"size\": 224", "preprocessor_config.json"),
        ("", "preprocessor_config.json"),
    ];
    for (json, needle) in bad {
        let e = ImageProcessorConfig::from_json(json).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig(_) | Error::ConfigOutOfRange { .. }),
            "{json}: {e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(needle), "{json}: {msg:?} lacks {needle:?}");
    }
    // Missing fields and nulls take transformers' defaults.
    let c = ImageProcessorConfig::from_json(r#"{"size": null, "crop_size": 300}"#).unwrap();
    assert_eq!(c.size, Size::square(224));
    assert_eq!(c.crop_size, Size::square(300));
    assert_eq!(c.image_std, [0.229, 0.224, 0.225]);
    // A hand-built config is checked too.
    let hand = ImageProcessorConfig {
        size: Size {
            height: 5000,
            width: 1,
        },
        ..Default::default()
    };
    assert!(matches!(
        ImageProcessor::new(hand),
        Err(Error::ConfigOutOfRange {
            field: "size.height",
            ..
        })
    ));
    let e = ImageProcessor::from_file(dir().join("no such dir/preprocessor_config.json")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}

#[test]
fn an_image_too_small_for_the_crop_is_an_error() {
    // 224/256 x 1 = 0.875 -> a crop of 0 rows.
    let tiny = RgbImage::new(1, 5, vec![7; 15]).unwrap();
    let e = ImageProcessor::default().preprocess(&tiny).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains("too small for the centre crop"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The resampler on shapes the fixtures do not reach.
// ---------------------------------------------------------------------------------------------

fn image_strategy() -> impl Strategy<Value = RgbImage> {
    (1usize..40, 1usize..40)
        .prop_flat_map(|(w, h)| {
            (
                Just(w),
                Just(h),
                proptest::collection::vec(any::<u8>(), w * h * 3),
            )
        })
        .prop_map(|(w, h, px)| RgbImage::new(w, h, px).unwrap())
}

fn filter_strategy() -> impl Strategy<Value = Resample> {
    proptest::sample::select(Resample::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any size to any size (1 x 1, 1 x N, N x 1, up, down, mixed): the right shape, no panic;
    /// filters without negative lobes (and nearest) stay within the input's range per channel.
    #[test]
    fn resize_any_shape(img in image_strategy(), w in 1usize..60, h in 1usize..60, filter in filter_strategy()) {
        let out = resize(&img, w, h, filter).unwrap();
        prop_assert_eq!((out.width(), out.height()), (w, h));
        if matches!(filter, Resample::Nearest | Resample::Box | Resample::Bilinear) {
            for c in 0..3 {
                let channel = |i: &RgbImage| i.pixels().iter().skip(c).step_by(3).copied().collect::<Vec<u8>>();
                let (src, dst) = (channel(&img), channel(&out));
                let (lo, hi) = (*src.iter().min().unwrap(), *src.iter().max().unwrap());
                prop_assert!(dst.iter().all(|v| (lo..=hi).contains(v)), "{} channel {} left {}..={}", filter, c, lo, hi);
            }
        }
    }

    /// A constant image stays that constant under every filter and shape.
    #[test]
    fn resize_keeps_constants(w0 in 1usize..30, h0 in 1usize..30, w in 1usize..70, h in 1usize..70,
                              px in any::<[u8; 3]>(), filter in filter_strategy()) {
        let img = RgbImage::new(w0, h0, px.repeat(w0 * h0)).unwrap();
        let out = resize(&img, w, h, filter).unwrap();
        prop_assert!(out.pixels().chunks(3).all(|p| p == px));
    }

    /// Nearest neighbour at an integer upscale repeats each pixel.
    #[test]
    fn nearest_integer_upscale_repeats(img in image_strategy(), k in 1usize..4) {
        let out = resize(&img, img.width() * k, img.height() * k, Resample::Nearest).unwrap();
        for y in 0..out.height() {
            for x in 0..out.width() {
                prop_assert_eq!(out.pixel(x, y), img.pixel(x / k, y / k));
            }
        }
    }
}

#[test]
fn one_pixel_and_one_row_images() {
    let px = RgbImage::new(1, 1, vec![200, 17, 99]).unwrap();
    for filter in Resample::ALL {
        for (w, h) in [(1, 1), (1, 9), (9, 1), (13, 7)] {
            let out = resize(&px, w, h, filter).unwrap();
            assert!(
                out.pixels().chunks(3).all(|p| p == [200, 17, 99]),
                "{filter} {w}x{h}"
            );
        }
    }
    let row = RgbImage::new(50, 1, (0..150).map(|i| (i * 5 % 256) as u8).collect()).unwrap();
    let col = RgbImage::new(1, 50, row.pixels().to_vec()).unwrap();
    for filter in Resample::ALL {
        // Resizing only along the line does not depend on its orientation.
        let a = resize(&row, 17, 1, filter).unwrap();
        let b = resize(&col, 1, 17, filter).unwrap();
        assert_eq!(a.pixels(), b.pixels(), "{filter}");
        let a = resize(&row, 123, 1, filter).unwrap();
        let b = resize(&col, 1, 123, filter).unwrap();
        assert_eq!(a.pixels(), b.pixels(), "{filter}");
    }
}

#[test]
fn processor_output_size_follows_the_config() {
    let img = RgbImage::new(37, 29, vec![128; 37 * 29 * 3]).unwrap();
    let sizes: HashMap<&str, (usize, usize)> = [
        ("deepmind_style", (12, 12)),
        ("nonsquare_pad", (14, 10)),
        ("no_crop_bilinear", (24, 7)),
        // int(8 / 16 x 29) = 14, no resize.
        ("crop_only", (14, 14)),
    ]
    .into();
    for (name, proc) in configs() {
        let p = proc.preprocess(&img).unwrap();
        let want = sizes[name.as_str()];
        assert_eq!((p.height, p.width), want, "{name}");
        assert_eq!(p.values.len(), 3 * want.0 * want.1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// Damaged files (bytes overwritten, then possibly cut short) decode or fail with an error;
    /// they never panic.
    #[test]
    fn damaged_files_never_panic(
        which in 0usize..18,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let all = images();
        let (_, path) = &all[which % all.len()];
        let mut bytes = std::fs::read(path).unwrap();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        match decode_image(&bytes) {
            Ok(img) => prop_assert!(img.width() > 0 && img.height() > 0),
            Err(e) => prop_assert!(
                matches!(e, Error::InvalidImage { .. } | Error::ImageTooLarge { .. }),
                "{}: {:?}", path.display(), e
            ),
        }
    }
}
