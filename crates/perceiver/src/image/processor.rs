//! transformers' `PerceiverImageProcessorPil`: an RGB image to the model's `pixel_values`.
//!
//! Mirrors `transformers/models/perceiver/image_processing_pil_perceiver.py` (5.24) and the
//! numpy/PIL helpers it calls, step by step, in its order and its number types:
//!
//! 1. centre crop (`do_center_crop`) to `int(size.height / crop_size.height × min(H, W))` ×
//!    `int(size.width / crop_size.width × min(H, W))`, computed in `f64`; the window starts at
//!    `floor((H − h) / 2)`, `floor((W − w) / 2)`, and where it leaves the image (a crop larger
//!    than the image, when `size` exceeds `crop_size`) the pixels are zero, as numpy's
//!    padding makes them;
//! 2. resize (`do_resize`) to `size` with PIL's filter `resample` ([`resize()`]), on 8-bit
//!    samples;
//! 3. rescale (`do_rescale`): `f32(f64(v) × rescale_factor)` (numpy upcasts to float64,
//!    multiplies, then casts to float32);
//! 4. normalise (`do_normalize`): `(x − f32(mean[c])) / f32(std[c])` in `f32` (numpy casts the
//!    mean and std to the image's float32);
//! 5. pad (`do_pad` with `pad_size`): zeros below and to the right, after normalisation.
//!
//! The result is `pixel_values[0]`, channels first, bit for bit (the image fixtures compare it
//! with transformers' output with tolerance 0).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::resize::{resize, Resample};
use super::RgbImage;
use crate::config::bounds::Range;
use crate::error::{Error, Result};

/// The range of `size` and `crop_size` sides. The released vision Perceivers use 224 (and the
/// optical-flow model 368 × 496); 4096 leaves room for any real model while keeping the
/// resize's output sums (4 bytes a sample) under 201 MB.
pub const SIDE: Range = Range {
    min: 1,
    max: 4096,
    why: "preprocessor_config.json sizes: released Perceivers use 224, and a 4096 x 4096 output already needs 201 MB of sums",
};

/// A height and a width in pixels (transformers' `SizeDict` with `height` and `width`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Size {
    /// A square.
    pub fn square(side: usize) -> Self {
        Size {
            height: side,
            width: side,
        }
    }
}

/// The settings of transformers' `PerceiverImageProcessor`, as a model's
/// `preprocessor_config.json` writes them. Absent fields (and JSON `null`s, which transformers
/// also replaces by the class default) take transformers' defaults, which are [`Default`]'s.
///
/// A size is accepted in each spelling transformers accepts for these processors: an integer
/// (a square, as DeepMind's `deepmind/vision-perceiver-*` files write it), `[height, width]`,
/// or `{"height": h, "width": w}`. `image_mean` and `image_std` are a number (for all three
/// channels) or a list of three. Fields transformers does not read for this processor (e.g.
/// `feature_extractor_type`, `image_processor_type`) are kept in [`extra`](Self::extra) and
/// written back by `Serialize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>")]
pub struct ImageProcessorConfig {
    /// Crop the centre first (default `true`).
    pub do_center_crop: bool,
    /// With `size`, the crop's fraction of the shorter side: `size / crop_size` (default 256 × 256).
    pub crop_size: Size,
    /// Resize to `size` (default `true`).
    pub do_resize: bool,
    /// The output size (default 224 × 224).
    pub size: Size,
    /// The resize filter (default bicubic, 3).
    pub resample: Resample,
    /// Multiply by `rescale_factor` (default `true`).
    pub do_rescale: bool,
    /// Default 1/255.
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std`, per channel (default `true`).
    pub do_normalize: bool,
    /// Default ImageNet's, `[0.485, 0.456, 0.406]`.
    pub image_mean: [f64; 3],
    /// Default ImageNet's, `[0.229, 0.224, 0.225]`.
    pub image_std: [f64; 3],
    /// Pad to `pad_size` after normalisation (default `false`). Without `pad_size`
    /// transformers pads a batch to its largest image, which for one image is nothing.
    pub do_pad: bool,
    /// The size to pad to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_size: Option<Size>,
    /// transformers' `do_convert_rgb`: composite alpha onto white. It has no effect on the
    /// images of this module, which are RGB already (as `load_image` makes them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_convert_rgb: Option<bool>,
    /// The fields this processor does not read, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for ImageProcessorConfig {
    /// transformers' `PerceiverImageProcessor` class defaults.
    fn default() -> Self {
        ImageProcessorConfig {
            do_center_crop: true,
            crop_size: Size::square(256),
            do_resize: true,
            size: Size::square(224),
            resample: Resample::Bicubic,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            do_pad: false,
            pad_size: None,
            do_convert_rgb: None,
            extra: Map::new(),
        }
    }
}

fn bad(field: &str, want: &str, got: &Value) -> Error {
    let mut got = got.to_string();
    if got.len() > 60 {
        // JSON text keeps non-ASCII characters as they are: cut on a character's boundary.
        let mut end = 57;
        while !got.is_char_boundary(end) {
            end -= 1;
        }
        got.truncate(end);
        got.push_str("...");
    }
    Error::InvalidConfig(format!(
        "preprocessor_config.json: {field} must be {want}, got {got}"
    ))
}

fn side(field: &'static str, v: &Value) -> Result<usize> {
    let n = v.as_u64().ok_or_else(|| bad(field, "a positive integer", v))?;
    SIDE.check(field, n)?;
    Ok(n as usize)
}

/// `get_size_dict`'s spellings of a height-and-width size.
fn parse_size(field: &'static str, v: &Value) -> Result<Size> {
    let [h_name, w_name] = match field {
        "size" => ["size.height", "size.width"],
        "crop_size" => ["crop_size.height", "crop_size.width"],
        _ => ["pad_size.height", "pad_size.width"],
    };
    let want = "an integer, [height, width] or {\"height\": h, \"width\": w}";
    match v {
        Value::Number(_) => {
            let n = side(h_name, v)?;
            Ok(Size::square(n))
        }
        Value::Array(a) if a.len() == 2 => Ok(Size {
            height: side(h_name, &a[0])?,
            width: side(w_name, &a[1])?,
        }),
        Value::Object(o) => {
            let (Some(h), Some(w), 2) = (o.get("height"), o.get("width"), o.len()) else {
                return Err(bad(
                    field,
                    "{\"height\": h, \"width\": w} (the Perceiver's processor crops and resizes to a height and a width)",
                    v,
                ));
            };
            Ok(Size {
                height: side(h_name, h)?,
                width: side(w_name, w)?,
            })
        }
        _ => Err(bad(field, want, v)),
    }
}

fn parse_bool(field: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| bad(field, "true or false", v))
}

fn parse_float(field: &str, v: &Value) -> Result<f64> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| bad(field, "a finite number", v))
}

fn parse_channels(field: &str, v: &Value) -> Result<[f64; 3]> {
    match v {
        Value::Number(_) => Ok([parse_float(field, v)?; 3]),
        Value::Array(a) if a.len() == 3 => Ok([
            parse_float(field, &a[0])?,
            parse_float(field, &a[1])?,
            parse_float(field, &a[2])?,
        ]),
        _ => Err(bad(
            field,
            "a number or a list of 3 numbers (one per RGB channel)",
            v,
        )),
    }
}

impl TryFrom<Map<String, Value>> for ImageProcessorConfig {
    type Error = Error;

    fn try_from(mut map: Map<String, Value>) -> Result<Self> {
        let mut c = ImageProcessorConfig::default();
        // transformers replaces a None (JSON null) by the class default.
        let mut take = |key: &str| map.remove(key).filter(|v| !v.is_null());
        if let Some(v) = take("do_center_crop") {
            c.do_center_crop = parse_bool("do_center_crop", &v)?;
        }
        if let Some(v) = take("crop_size") {
            c.crop_size = parse_size("crop_size", &v)?;
        }
        if let Some(v) = take("do_resize") {
            c.do_resize = parse_bool("do_resize", &v)?;
        }
        if let Some(v) = take("size") {
            c.size = parse_size("size", &v)?;
        }
        if let Some(v) = take("resample") {
            let n = v
                .as_u64()
                .ok_or_else(|| bad("resample", "PIL's filter number, 0 to 5", &v))?;
            c.resample = Resample::from_pil(n)?;
        }
        if let Some(v) = take("do_rescale") {
            c.do_rescale = parse_bool("do_rescale", &v)?;
        }
        if let Some(v) = take("rescale_factor") {
            c.rescale_factor = parse_float("rescale_factor", &v)?;
        }
        if let Some(v) = take("do_normalize") {
            c.do_normalize = parse_bool("do_normalize", &v)?;
        }
        if let Some(v) = take("image_mean") {
            c.image_mean = parse_channels("image_mean", &v)?;
        }
        if let Some(v) = take("image_std") {
            c.image_std = parse_channels("image_std", &v)?;
        }
        if let Some(v) = take("do_pad") {
            c.do_pad = parse_bool("do_pad", &v)?;
        }
        if let Some(v) = take("pad_size") {
            c.pad_size = Some(parse_size("pad_size", &v)?);
        }
        if let Some(v) = take("do_convert_rgb") {
            c.do_convert_rgb = Some(parse_bool("do_convert_rgb", &v)?);
        }
        c.extra = map;
        c.validate()?;
        Ok(c)
    }
}

impl ImageProcessorConfig {
    /// transformers' defaults for a model that takes `size` images: resized to `size`, after a
    /// centre crop whose `crop_size` is scaled with it (`size · 256 / 224`, rounded) so that the
    /// crop keeps about the defaults' 224/256 of the shorter side. For 224 × 224 these are
    /// exactly the defaults. A size outside [`SIDE`] is refused by [`validate`](Self::validate)
    /// (and so by [`ImageProcessor::new`]).
    pub fn for_size(size: Size) -> Self {
        let defaults = Self::default();
        let scale = |side: usize, default_crop: usize, default_size: usize| {
            // usize::MAX / 256 and above are refused by SIDE anyway; saturate on the way there.
            (side.saturating_mul(default_crop) + default_size / 2) / default_size
        };
        Self {
            crop_size: Size {
                height: scale(size.height, defaults.crop_size.height, defaults.size.height),
                width: scale(size.width, defaults.crop_size.width, defaults.size.width),
            },
            size,
            ..defaults
        }
    }

    /// The config in a `preprocessor_config.json` text.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for text that is not a JSON object or a field of the wrong
    /// type; [`Error::ConfigOutOfRange`] for a size outside [`SIDE`].
    pub fn from_json(text: &str) -> Result<Self> {
        let map: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("preprocessor_config.json: {e}")))?;
        Self::try_from(map)
    }

    /// The config in a `preprocessor_config.json` file.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, otherwise as [`from_json`](Self::from_json).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Checks what the parser checks, for a config built or changed in code.
    ///
    /// # Errors
    /// [`Error::ConfigOutOfRange`] for a size outside [`SIDE`]; [`Error::InvalidConfig`] for a
    /// non-finite `rescale_factor`, mean or std, or a zero std.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("size.height", self.size.height),
            ("size.width", self.size.width),
            ("crop_size.height", self.crop_size.height),
            ("crop_size.width", self.crop_size.width),
        ];
        let pad = self
            .pad_size
            .map(|p| [("pad_size.height", p.height), ("pad_size.width", p.width)]);
        for (field, n) in sizes.into_iter().chain(pad.into_iter().flatten()) {
            SIDE.check(field, n as u64)?;
        }
        if !self.rescale_factor.is_finite() {
            return Err(Error::InvalidConfig(format!(
                "preprocessor_config.json: rescale_factor must be a finite number, got {}",
                self.rescale_factor
            )));
        }
        for c in 0..3 {
            let (m, s) = (self.image_mean[c], self.image_std[c]);
            // transformers would divide by zero (inf / nan pixels) where this refuses.
            if !m.is_finite() || !s.is_finite() || s as f32 == 0.0 {
                return Err(Error::InvalidConfig(format!(
                    "preprocessor_config.json: image_mean[{c}] = {m} and image_std[{c}] = {s}: both must be finite and the std non-zero"
                )));
            }
        }
        Ok(())
    }
}

/// A model input: one image's `pixel_values`, channels first (`[3, height, width]`, row-major),
/// as transformers returns `pixel_values[0]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `3 × height × width` values: all of R, then G, then B.
    pub values: Vec<f32>,
}

impl Pixels {
    /// Pixels made elsewhere (e.g. by transformers' processor), [checked](Self::check).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn new(height: usize, width: usize, values: Vec<f32>) -> Result<Self> {
        let pixels = Self {
            height,
            width,
            values,
        };
        pixels.check()?;
        Ok(pixels)
    }

    /// Checks that `values` holds 3 × `height` × `width` values, every one finite. The fields
    /// are public, so every task and preprocessor that takes pixels checks them again.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero side, sizes whose product overflows or differs from
    /// `values.len()`, or a NaN or infinite value (the model would answer NaN scores).
    pub fn check(&self) -> Result<()> {
        let (height, width) = (self.height, self.width);
        let expected = height.checked_mul(width).and_then(|n| n.checked_mul(3));
        if height == 0 || width == 0 || expected != Some(self.values.len()) {
            return Err(Error::InvalidInput(format!(
                "{} values are not a 3x{height}x{width} image",
                self.values.len()
            )));
        }
        check_finite(&self.values, "pixel")
    }
}

/// An error naming the first value of `values` that is NaN or infinite.
pub(crate) fn check_finite(values: &[f32], what: &str) -> Result<()> {
    match crate::runtime::first_non_finite(values) {
        Some(i) => Err(Error::InvalidInput(format!(
            "{what} value {i} is {}, not a finite number",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// transformers' `PerceiverImageProcessorPil` (see the [module docs](self) for its steps).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
}

impl ImageProcessor {
    /// A processor with the settings of `config`.
    ///
    /// # Errors
    /// As [`ImageProcessorConfig::validate`].
    pub fn new(config: ImageProcessorConfig) -> Result<Self> {
        config.validate()?;
        Ok(ImageProcessor { config })
    }

    /// The processor a model's `preprocessor_config.json` describes.
    ///
    /// # Errors
    /// As [`ImageProcessorConfig::from_file`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(ImageProcessorConfig::from_file(path)?)
    }

    /// Its settings.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// The centre crop's height and width for an image of `height` × `width`, or `None` when
    /// the processor does not crop.
    pub fn crop_size_for(&self, height: usize, width: usize) -> Option<Size> {
        let c = &self.config;
        c.do_center_crop.then(|| {
            let min_dim = height.min(width) as f64;
            // Python: int((size.height / crop_size.height) * min_dim), float64 and truncation.
            let side = |s: usize, cs: usize| ((s as f64 / cs as f64) * min_dim) as usize;
            Size {
                height: side(c.size.height, c.crop_size.height),
                width: side(c.size.width, c.crop_size.width),
            }
        })
    }

    /// The model input for `image`: transformers' `processor(image).pixel_values[0]`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the image is too small for the centre crop (a crop of zero
    /// pixels) or larger than `pad_size`; [`Error::ImageTooLarge`] for a centre crop of more
    /// than [`DecodeLimits::PIL_MAX_PIXELS`](super::DecodeLimits::PIL_MAX_PIXELS) pixels (only a
    /// config whose `size` is many times its `crop_size` can ask for one).
    pub fn preprocess(&self, image: &RgbImage) -> Result<Pixels> {
        let c = &self.config;
        let cropped;
        let mut image = image;
        if let Some(crop) = self.crop_size_for(image.height(), image.width()) {
            cropped = centre_crop(image, crop)?;
            image = &cropped;
        }
        let resized;
        if c.do_resize {
            resized = resize(image, c.size.width, c.size.height, c.resample)?;
            image = &resized;
        }
        let (h, w) = (image.height(), image.width());
        let (out_h, out_w) = match (c.do_pad, c.pad_size) {
            (true, Some(p)) => {
                if p.height < h || p.width < w {
                    return Err(Error::InvalidInput(format!(
                        "the processed image is {h} x {w} (height x width), larger than pad_size {} x {}",
                        p.height, p.width
                    )));
                }
                (p.height, p.width)
            }
            _ => (h, w),
        };
        let mut values = vec![0f32; 3 * out_h * out_w];
        let px = image.pixels();
        for ch in 0..3 {
            let mean = c.image_mean[ch] as f32;
            let std = c.image_std[ch] as f32;
            let plane = &mut values[ch * out_h * out_w..(ch + 1) * out_h * out_w];
            for y in 0..h {
                for x in 0..w {
                    let v = px[(y * w + x) * 3 + ch];
                    let mut f = if c.do_rescale {
                        (f64::from(v) * c.rescale_factor) as f32
                    } else {
                        f32::from(v)
                    };
                    if c.do_normalize {
                        f = (f - mean) / std;
                    }
                    plane[y * out_w + x] = f;
                }
            }
        }
        Ok(Pixels {
            height: out_h,
            width: out_w,
            values,
        })
    }

    /// [`decode_image`](super::decode_image) then [`preprocess`](Self::preprocess): what the
    /// `image-classification` pipeline feeds the model for an image file.
    ///
    /// # Errors
    /// As the two steps.
    pub fn preprocess_file_bytes(&self, bytes: &[u8]) -> Result<Pixels> {
        self.preprocess_file_bytes_with_limits(bytes, &super::DecodeLimits::default())
    }

    /// [`preprocess_file_bytes`](Self::preprocess_file_bytes) with an image refused, before any
    /// pixel is decoded, when its header says it is larger than `limits` allow.
    pub fn preprocess_file_bytes_with_limits(
        &self,
        bytes: &[u8],
        limits: &super::DecodeLimits,
    ) -> Result<Pixels> {
        self.preprocess(&super::decode_image_with_limits(bytes, limits)?)
    }
}

/// numpy's `center_crop` of transformers' `image_transforms`: the window of `size` centred with
/// floor division, zeros where it leaves the image.
fn centre_crop(image: &RgbImage, size: Size) -> Result<RgbImage> {
    let (h, w) = (image.height(), image.width());
    if size.height == 0 || size.width == 0 {
        return Err(Error::InvalidInput(format!(
            "the image is {h} x {w} (height x width), too small for the centre crop: it would be {} x {}",
            size.height, size.width
        )));
    }
    let max = super::DecodeLimits::PIL_MAX_PIXELS;
    if (size.height as u64).saturating_mul(size.width as u64) > max {
        return Err(Error::ImageTooLarge {
            width: size.width as u64,
            height: size.height as u64,
            max_pixels: max,
            limit: "centre crop",
        });
    }
    if (size.height, size.width) == (h, w) {
        return Ok(image.clone());
    }
    // (H - h) // 2 in Python floors, also when negative (a crop larger than the image).
    let top = (h as i64 - size.height as i64).div_euclid(2);
    let left = (w as i64 - size.width as i64).div_euclid(2);
    let mut out = vec![0u8; size.height * size.width * 3];
    let src = image.pixels();
    for y in 0..size.height {
        let sy = top + y as i64;
        if !(0..h as i64).contains(&sy) {
            continue;
        }
        // The columns of this output row that fall inside the image.
        let x0 = (-left).max(0) as usize;
        let x1 = ((w as i64 - left).min(size.width as i64)).max(0) as usize;
        if x0 >= x1 {
            continue;
        }
        let sx0 = (left + x0 as i64) as usize;
        let from = (sy as usize * w + sx0) * 3;
        out[(y * size.width + x0) * 3..(y * size.width + x1) * 3]
            .copy_from_slice(&src[from..from + (x1 - x0) * 3]);
    }
    Ok(RgbImage::from_raw_unchecked(size.width, size.height, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(w: usize, h: usize) -> RgbImage {
        RgbImage::new(w, h, (0..w * h).flat_map(|i| [i as u8, 0, 1]).collect()).unwrap()
    }

    #[test]
    fn crop_inside_floors_the_offset() {
        // 5 x 4 -> 3 x 2: top = (4 - 2) // 2 = 1, left = (5 - 3) // 2 = 1.
        let out = centre_crop(&numbered(5, 4), Size { height: 2, width: 3 }).unwrap();
        let ids: Vec<u8> = out.pixels().chunks(3).map(|p| p[0]).collect();
        assert_eq!(ids, vec![6, 7, 8, 11, 12, 13]);
    }

    #[test]
    fn crop_larger_than_the_image_pads_with_zeros() {
        // 2 x 2 (ids 0..4, channel 2 = 1) -> 3 x 4: top = (2 - 3) // 2 = -1, left = (2 - 4) // 2 = -1.
        let out = centre_crop(&numbered(2, 2), Size { height: 3, width: 4 }).unwrap();
        let ch2: Vec<u8> = out.pixels().chunks(3).map(|p| p[2]).collect();
        assert_eq!(ch2, vec![0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0]);
        let ids: Vec<u8> = out.pixels().chunks(3).map(|p| p[0]).collect();
        assert_eq!(ids, vec![0, 0, 0, 0, 0, 0, 1, 0, 0, 2, 3, 0]);
    }

    #[test]
    fn pad_size_pads_after_normalisation() {
        let config = ImageProcessorConfig {
            do_center_crop: false,
            do_resize: false,
            do_pad: true,
            pad_size: Some(Size { height: 2, width: 3 }),
            ..Default::default()
        };
        let p = ImageProcessor::new(config)
            .unwrap()
            .preprocess(&numbered(2, 1))
            .unwrap();
        assert_eq!((p.height, p.width), (2, 3));
        let r = &p.values[..6];
        assert_eq!(r[0], (0f32 - 0.485f32) / 0.229f32);
        assert_eq!(r[1], ((1f64 / 255.0) as f32 - 0.485f32) / 0.229f32);
        assert_eq!(&r[2..], &[0.0; 4]);
        let e = ImageProcessor::new(ImageProcessorConfig {
            do_pad: true,
            pad_size: Some(Size::square(1)),
            do_center_crop: false,
            do_resize: false,
            ..Default::default()
        })
        .unwrap()
        .preprocess(&numbered(2, 1))
        .unwrap_err();
        assert!(e.to_string().contains("larger than pad_size"), "{e}");
    }

    #[test]
    fn a_config_for_a_size_scales_the_crop_with_it() {
        assert_eq!(
            ImageProcessorConfig::for_size(Size::square(224)),
            ImageProcessorConfig::default()
        );
        let c = ImageProcessorConfig::for_size(Size {
            height: 12,
            width: 448,
        });
        assert_eq!(
            c.size,
            Size {
                height: 12,
                width: 448
            }
        );
        assert_eq!(
            c.crop_size,
            Size {
                height: 14,
                width: 512
            }
        );
        assert!(ImageProcessor::new(c).is_ok());
        assert!(ImageProcessor::new(ImageProcessorConfig::for_size(Size::square(1 << 40))).is_err());
        // A 12 × 12 model's processor makes 12 × 12 pixels from any picture.
        let p = ImageProcessor::new(ImageProcessorConfig::for_size(Size::square(12)))
            .unwrap()
            .preprocess(&numbered(40, 30))
            .unwrap();
        assert_eq!((p.height, p.width), (12, 12));
    }

    #[test]
    fn pixel_sizes_that_overflow_are_refused() {
        // 3 × height × width overflows: an error, not a panic (or a wrapped product).
        assert!(Pixels::new(usize::MAX / 2, 3, vec![]).is_err());
        assert!(Pixels::new(1 << 62, 1 << 2, vec![]).is_err());
        assert!(Pixels::new(1, 1, vec![0.0; 3]).is_ok());
    }

    #[test]
    fn defaults_are_transformers() {
        let c = ImageProcessorConfig::from_json("{}").unwrap();
        assert_eq!(c, ImageProcessorConfig::default());
        assert_eq!(c.size, Size::square(224));
        assert_eq!(c.crop_size, Size::square(256));
        assert_eq!(c.resample, Resample::Bicubic);
        assert_eq!(ImageProcessor::default().config(), &c);
    }
}
