//! Images in, `pixel_values` out: the input side of DeepMind's vision Perceivers
//! (`deepmind/vision-perceiver-*`), equal to what transformers feeds them.
//!
//! transformers' `image-classification` pipeline reads a file with `load_image` (Pillow's
//! `Image.open`, then `ImageOps.exif_transpose`, then `convert("RGB")`), and preprocesses it
//! with `PerceiverImageProcessorPil` (the backend it picks without torchvision) configured by
//! the model's `preprocessor_config.json`: a centre crop of `size / crop_size` × the shorter
//! side, a resize with PIL's filter, rescale to 0..1, ImageNet mean and std. Here:
//!
//! * [`decode_image`] is `load_image`: JPEG, PNG, WebP, BMP, GIF (first frame) and TIFF; the
//!   EXIF orientation applied; grey, alpha, palette and 16-bit samples made 8-bit RGB as
//!   Pillow's `convert("RGB")` does (alpha dropped, not composited; see [`decode`]). The size in
//!   the header is checked against [`DecodeLimits`] before any pixel is decoded.
//!   The processor itself applies no orientation and converts no mode: given a PIL image
//!   straight from `Image.open`, transformers would skip the EXIF rotation, and fail on grey or
//!   RGBA (a mean of 3 values for 1 or 4 channels). `load_image`, which the pipelines call on a
//!   path, URL or base64 string, is what makes the image upright RGB, so that is what is
//!   matched.
//! * [`ImageProcessor`] is `PerceiverImageProcessorPil`, with its settings read from the
//!   model's `preprocessor_config.json` ([`ImageProcessorConfig`]) and its resize equal to
//!   Pillow's to the last bit ([`resize()`]).
//!
//! # Example
//! ```
//! use perceiver::image::{decode_image, ImageProcessor, ImageProcessorConfig};
//!
//! # fn main() -> perceiver::Result<()> {
//! // A 2 x 1 PNG (one red pixel, one blue one).
//! let png: [u8; 70] = [
//!     0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
//!     0x44, 0x52, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00,
//!     0x00, 0x7b, 0x40, 0xe8, 0xdd, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78,
//!     0xda, 0x63, 0xf8, 0xcf, 0x00, 0x04, 0xff, 0x01, 0x07, 0x00, 0x01, 0xff, 0x3d, 0x7d,
//!     0x8c, 0x49, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
//! ];
//! let image = decode_image(&png)?;
//! assert_eq!((image.width(), image.height()), (2, 1));
//! assert_eq!(image.pixels(), &[255, 0, 0, 0, 0, 255]);
//!
//! // A model's preprocessor_config.json (here inline); absent fields take transformers' defaults.
//! let config = ImageProcessorConfig::from_json(r#"{"size": 4, "do_center_crop": false}"#)?;
//! let pixels = ImageProcessor::new(config)?.preprocess(&image)?;
//! assert_eq!((pixels.height, pixels.width, pixels.values.len()), (4, 4, 3 * 4 * 4));
//! # Ok(())
//! # }
//! ```

pub mod decode;
pub mod processor;
pub mod resize;
pub mod y4m;

pub use decode::{
    decode_image, decode_image_with_limits, decoded_size, has_image_extension, may_match, read_image_file,
    DecodeLimits, IMAGE_EXTENSIONS,
};
pub use processor::{ImageProcessor, ImageProcessorConfig, Pixels, Size};
pub use resize::{resize, Resample};
pub use y4m::read_y4m;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// An 8-bit RGB image: rows top to bottom, pixels left to right, `[r, g, b]` each (the layout of
/// `np.array(pil_image)` for an RGB image).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// An image of `width` × `height` pixels from its samples (`3 · width · height` bytes).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a side is zero or the length is not `3 · width · height`.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidInput(format!(
                "an image needs pixels, not {width} x {height}"
            )));
        }
        let want = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if want != Some(pixels.len()) {
            return Err(Error::InvalidInput(format!(
                "{} bytes are not a {width} x {height} RGB image ({} bytes)",
                pixels.len(),
                want.map_or_else(|| "too many".to_string(), |n| n.to_string())
            )));
        }
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }

    /// For the module's own buffers, whose length is right by construction.
    pub(crate) fn from_raw_unchecked(width: usize, height: usize, pixels: Vec<u8>) -> Self {
        debug_assert_eq!(pixels.len(), width * height * 3);
        RgbImage {
            width,
            height,
            pixels,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The samples, `[r, g, b]` a pixel, row after row.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The samples, taken.
    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }

    /// Writes the image as an 8-bit RGB PNG file at `path`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a side beyond PNG's (`u32`); [`Error::Write`] with `path`
    /// when the file cannot be created or written.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| Error::Write {
            path: path.to_path_buf(),
            source,
        };
        let sizes = self.png_sizes()?;
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        self.encode_png(sizes, &mut out).map_err(io)?;
        // BufWriter's drop would swallow a failure of the last write.
        out.flush().map_err(io)
    }

    /// The image as the bytes of an 8-bit RGB PNG file.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a side beyond PNG's (`u32`).
    pub fn png_bytes(&self) -> Result<Vec<u8>> {
        let sizes = self.png_sizes()?;
        let mut bytes = Vec::new();
        self.encode_png(sizes, &mut bytes)
            .map_err(|e| Error::InvalidInput(format!("the image could not be encoded as PNG: {e}")))?;
        Ok(bytes)
    }

    fn png_sizes(&self) -> Result<(u32, u32)> {
        match (u32::try_from(self.width), u32::try_from(self.height)) {
            (Ok(width), Ok(height)) => Ok((width, height)),
            _ => Err(Error::InvalidInput(format!(
                "a {} x {} image is larger than a PNG file holds",
                self.width, self.height
            ))),
        }
    }

    fn encode_png(&self, (width, height): (u32, u32), out: impl Write) -> std::io::Result<()> {
        use ::image::ImageEncoder;
        ::image::codecs::png::PngEncoder::new(out)
            .write_image(&self.pixels, width, height, ::image::ExtendedColorType::Rgb8)
            .map_err(|e| match e {
                ::image::ImageError::IoError(source) => source,
                // An RGB8 image of PNG's sizes always encodes: anything else is reported as I/O.
                other => std::io::Error::other(other),
            })
    }

    /// The pixel at column `x`, row `y`.
    ///
    /// # Panics
    /// If `(x, y)` is outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        assert!(
            x < self.width && y < self.height,
            "({x}, {y}) is outside {self:?}"
        );
        let i = (y * self.width + x) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({} x {})", self.width, self.height)
    }
}
