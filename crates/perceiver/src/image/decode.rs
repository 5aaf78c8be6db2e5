//! Image files to 8-bit RGB, as transformers' `load_image` reads them through Pillow.
//!
//! `load_image(path)` is `Image.open`, `ImageOps.exif_transpose`, `convert("RGB")`. What that
//! does, and what is done here to match it (the image fixtures check each case against
//! Pillow 12.0):
//!
//! * **Orientation.** The EXIF Orientation tag (2 to 8; other values do nothing) is applied:
//!   from the EXIF block of a JPEG, PNG (`eXIf`) or WebP, from the tag itself in a TIFF. Like
//!   Pillow, an XMP packet's `tiff:Orientation` is used when the EXIF block has none.
//! * **Grey and alpha.** `convert("RGB")` copies a grey sample to R, G and B and *drops* alpha:
//!   a transparent pixel keeps its stored colour; nothing is composited onto white or black.
//!   (transformers' own `convert_to_rgb` composites onto white, but the pipelines hand the
//!   processor an image that `load_image` already made RGB, so it never runs.) A palette image
//!   takes its palette colours, transparent entries included.
//! * **16 bits.** Pillow opens 16-bit RGB(A) and grey+alpha samples as 8-bit by keeping the high
//!   byte (`v >> 8`, no rounding), and 16-bit grey as mode `I;16`, whose conversion to RGB
//!   *clamps* (`min(v, 255)`): a 16-bit greyscale PNG comes out nearly white. Both are
//!   reproduced.
//! * **GIF.** The first frame, in a canvas the size of the logical screen (grown if the frame
//!   extends past it, as Pillow grows it), the rest of the canvas filled with the frame's
//!   transparent index, or index 0 without one; indices past the end of the palette are black.
//!   GIFs are read here with the `gif` crate's palette indices, because a decoder that
//!   composites the frame onto transparent black gives other colours outside the frame.
//! * **JPEG** is decoded by `zune-jpeg`, not libjpeg-turbo: samples differ by up to 2 levels
//!   inside the image (IDCT and colour-conversion rounding), and by up to ~10 on the last column
//!   (row) of a chroma-subsampled JPEG whose even width (height) is not a multiple of the block
//!   size, where libjpeg-turbo's upsampling repeats the last chroma sample and zune-jpeg reads
//!   the encoder's padding. The image tests bound both. A JPEG cut short is refused, as
//!   Pillow refuses it, although zune-jpeg would fill the missing part with grey.
//! * **WebP**, lossy or lossless, decodes to Pillow's (libwebp's) samples exactly.
//!
//! Not reproduced (not met by the fixtures; documented so nobody relies on them): CMYK JPEGs,
//! 16-bit greyscale PNGs with a `tRNS` chunk (decoded here as grey+alpha, high byte), PNG EXIF in
//! text chunks, GIFs without any palette (Pillow reads them as grey), 32-bit float images
//! (refused), and ICC profiles (ignored on both sides).

use std::error::Error as _;
use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use super::RgbImage;
use crate::error::{Error, Result};

/// File name extensions (lower case) of the formats [`decode_image`] reads: how the image files
/// of a directory are told from its other files, and one image from a video.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Whether `path`'s extension is one of [`IMAGE_EXTENSIONS`], in any case.
pub fn has_image_extension(path: &Path) -> bool {
    has_extension(path, IMAGE_EXTENSIONS)
}

/// Whether `path`'s extension is one of `extensions` (compared without case).
pub(crate) fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// How large an image [`decode_image_with_limits`] accepts, checked on the size in the file's
/// header before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most pixels (width × height) allowed.
    pub max_pixels: u64,
}

impl DecodeLimits {
    /// Pillow refuses an image of more than twice `Image.MAX_IMAGE_PIXELS` (1024³ / 4 / 3 =
    /// 89,478,485), 178,956,970 pixels, with a `DecompressionBombError`, so transformers cannot
    /// read anything larger either. At that size an RGB image is 537 MB.
    pub const PIL_MAX_PIXELS: u64 = 178_956_970;

    /// Bytes the decoders may allocate for an image of `max_pixels` pixels: the largest decoded
    /// layout read here (RGBA, 16 bits a sample) plus room for a decoder's own buffers.
    fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8).saturating_add(64 << 20)
    }

    /// The longest image file read for these limits ([`read_image_file`]): the pixels as the
    /// largest decoded layout (16-bit RGBA), as no file of a real image outgrows its pixels by
    /// more than its metadata, plus 64 MiB for that (EXIF, ICC profiles, text chunks).
    pub fn max_file_bytes(&self) -> u64 {
        self.max_alloc()
    }

    pub(crate) fn check(&self, width: u64, height: u64) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidImage {
                format: None,
                reason: format!("it has no pixels ({width} x {height})"),
            });
        }
        if width.saturating_mul(height) > self.max_pixels {
            return Err(Error::ImageTooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
                limit: "image",
            });
        }
        Ok(())
    }
}

impl Default for DecodeLimits {
    /// Pillow's limit, [`DecodeLimits::PIL_MAX_PIXELS`].
    fn default() -> Self {
        DecodeLimits {
            max_pixels: Self::PIL_MAX_PIXELS,
        }
    }
}

/// The image in `bytes` (a whole JPEG, PNG, WebP, BMP, GIF or TIFF file) as 8-bit RGB, upright,
/// with the [default limits](DecodeLimits::default): what transformers' `load_image` makes
/// of the same file (see the [module docs](self) for the details and the exceptions).
///
/// # Errors
/// [`Error::InvalidImage`] for empty bytes, other kinds of file, other image formats, and
/// truncated or corrupt files; [`Error::ImageTooLarge`] for an image over the limits.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    decode_image_with_limits(bytes, &DecodeLimits::default())
}

/// [`decode_image`] with other limits.
///
/// # Errors
/// As [`decode_image`].
pub fn decode_image_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    let (format, name) = format_of(bytes)?;
    if format == ImageFormat::Gif {
        return decode_gif(open_gif(bytes, limits)?);
    }
    let mut decoder = open_decoder(bytes, format, name, limits)?;
    if format == ImageFormat::Jpeg && !jpeg_reaches_eoi(bytes) {
        return Err(Error::InvalidImage {
            format: Some(name),
            reason: "the file is truncated (no end-of-image marker after the last scan)".into(),
        });
    }
    let orientation = orientation(&mut decoder, format);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(bytes, name, limits, e))?;
    let rgb = to_rgb(image).map_err(|e| with_format(e, name))?;
    Ok(orient(rgb, orientation))
}

/// The bytes of the image file at `path`, read no further than an image within `limits` can
/// need: a file that does not begin as an image is refused from its first bytes, and one longer
/// than [`DecodeLimits::max_file_bytes`] before it is read (or, for a file whose length is not
/// known in advance, a pipe or a device, once that much has been read). Reading a whole file
/// first would make a huge or endless one (`/dev/zero`) the memory's problem.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::InvalidImage`] for an empty file, another
/// kind of file, or one too long for the limits.
pub fn read_image_file(path: &Path, limits: &DecodeLimits) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let max = limits.max_file_bytes();
    let too_long = |format: Option<&'static str>| Error::InvalidImage {
        format,
        reason: format!(
            "the file is longer than {max} bytes, more than any image of at most {} pixels takes",
            limits.max_pixels
        ),
    };
    let known_length = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    // The first bytes tell the format: anything else is refused before the rest is read.
    let mut bytes = Vec::new();
    (&mut file)
        .take(SNIFF_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let (_, name) = format_of(&bytes)?;
    if known_length.is_some_and(|length| length > max) {
        return Err(too_long(Some(name)));
    }
    file.take(max.saturating_add(1).saturating_sub(bytes.len() as u64))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_long(Some(name)));
    }
    Ok(bytes)
}

/// Bytes enough for [`format_of`] to tell any format it reads.
const SNIFF_BYTES: u64 = 64;

/// Whether two sizes from [`decoded_size`] can decode to one size: equal, or equal with the
/// sides swapped (the EXIF orientation, applied when decoding, may swap a side pair, so headers
/// alone cannot tell those apart; the decoded images can).
pub fn may_match(a: (u64, u64), b: (u64, u64)) -> bool {
    a == b || a == (b.1, b.0)
}

/// The width and height of what [`decode_image_with_limits`] decodes `bytes` to (before the EXIF
/// orientation may swap them), read from the file's headers without decoding a pixel, by the
/// decoder's own code: for a GIF, the logical screen grown to hold the first frame. This is the
/// size the limits are checked against, and what decoding allocates, a few bytes a pixel; a
/// service can so budget its decodes before it starts them.
///
/// # Errors
/// As [`decode_image_with_limits`] for a file whose headers cannot be read or state more pixels
/// than `limits` allow. A file whose pixel data is corrupt or truncated passes: only decoding
/// tells.
pub fn decoded_size(bytes: &[u8], limits: &DecodeLimits) -> Result<(u64, u64)> {
    let (format, name) = format_of(bytes)?;
    if format == ImageFormat::Gif {
        let gif = open_gif(bytes, limits)?;
        return Ok((gif.width as u64, gif.height as u64));
    }
    let (width, height) = open_decoder(bytes, format, name, limits)?.dimensions();
    Ok((u64::from(width), u64::from(height)))
}

/// The format of an image file and its name in errors; an empty file, another kind of file or
/// another image format is refused.
fn format_of(bytes: &[u8]) -> Result<(ImageFormat, &'static str)> {
    if bytes.is_empty() {
        return Err(Error::InvalidImage {
            format: None,
            reason: "the file is empty".into(),
        });
    }
    let format = image::guess_format(bytes).map_err(|_| Error::InvalidImage {
        format: None,
        reason: format!(
            "not a JPEG, PNG, WebP, BMP, GIF or TIFF file (it begins {})",
            describe_start(bytes)
        ),
    })?;
    let name = match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Tiff => "TIFF",
        other => {
            return Err(Error::InvalidImage {
                format: None,
                reason: format!("{other:?} images are not read (JPEG, PNG, WebP, BMP, GIF and TIFF are)"),
            })
        }
    };
    Ok((format, name))
}

/// The `image` crate's decoder of a file in `format` (not GIF), its header read and its size
/// checked against `limits`.
fn open_decoder<'a>(
    bytes: &'a [u8],
    format: ImageFormat,
    name: &'static str,
    limits: &DecodeLimits,
) -> Result<impl ImageDecoder + 'a> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc());
    reader.limits(image_limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| image_error(bytes, name, limits, e))?;
    let (width, height) = decoder.dimensions();
    limits
        .check(u64::from(width), u64::from(height))
        .map_err(|e| with_format(e, name))?;
    Ok(decoder)
}

/// The start of a file that is not an image, for the error: text as text, anything else as bytes.
fn describe_start(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    match std::str::from_utf8(head) {
        Ok(text) if text.chars().all(|c| !c.is_control() || c.is_whitespace()) => {
            format!("with the text {text:?}")
        }
        _ => {
            let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
            format!("with the bytes {}", hex.join(" "))
        }
    }
}

fn with_format(e: Error, name: &'static str) -> Error {
    match e {
        Error::InvalidImage { format: None, reason } => Error::InvalidImage {
            format: Some(name),
            reason,
        },
        other => other,
    }
}

/// `e`, met decoding `bytes` (a `name` file), as the library's error.
fn image_error(bytes: &[u8], name: &'static str, limits: &DecodeLimits, e: ImageError) -> Error {
    let reason = match e {
        ImageError::Limits(e) => format!(
            "decoding it needs more memory than allowed ({} bytes, from the limit of {} pixels): {e}",
            limits.max_alloc(),
            limits.max_pixels
        ),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file is truncated".to_string()
        }
        ImageError::Unsupported(e) => format!("unsupported: {e}"),
        // A damaged PNG is named by the chunk whose CRC fails: the decoder reports what it met
        // first (in an IDAT, the garbage of the compressed data) and writes chunk types in their
        // Debug form. Otherwise the decoder's own message: the image crate's wrapper only adds
        // the format, which the error names already.
        ImageError::Decoding(e) => match png_damaged_chunk(name, bytes) {
            Some(chunk) => format!("CRC error in chunk {chunk} (the file is damaged)"),
            None => match e.source() {
                Some(source) => tidy_png_chunk_types(&source.to_string()),
                None => e.to_string(),
            },
        },
        other => other.to_string(),
    };
    Error::InvalidImage {
        format: Some(name),
        reason: one_line(&reason),
    }
}

/// For a PNG file (`name`), the type of its first critical chunk whose CRC does not match its
/// type and data, up to `IEND` or where the file is cut short. Ancillary chunks are left out:
/// the decoder passes over a bad CRC there, so it is not what made decoding fail.
fn png_damaged_chunk(name: &str, bytes: &[u8]) -> Option<String> {
    if name != "PNG" {
        return None;
    }
    let mut rest = bytes.get(8..)?; // after the signature
    while rest.len() >= 12 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let (typed, crc) = rest[4..].split_at_checked(4usize.checked_add(len)?)?;
        let crc = u32::from_be_bytes(crc.get(..4)?.try_into().ok()?);
        let kind = &typed[..4];
        // A critical chunk's type begins with an upper-case letter.
        if kind[0].is_ascii_uppercase() && crc32fast::hash(typed) != crc {
            return Some(kind.escape_ascii().to_string());
        }
        if kind == b"IEND" {
            return None;
        }
        rest = &rest[12 + len..];
    }
    None
}

/// The PNG decoder's message with each chunk type (written as `ChunkType { type: IHDR, critical:
/// true, ... }`) as its name alone.
fn tidy_png_chunk_types(message: &str) -> String {
    const DEBUG: &str = "ChunkType { type: ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(DEBUG) {
        let after = &rest[start + DEBUG.len()..];
        let (Some(comma), Some(end)) = (after.find(','), after.find('}')) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&after[..comma.min(end)]);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A decoder's message on one line, without the trailing newline some add.
fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

/// Whether a JPEG's segments run to an end-of-image marker. zune-jpeg (as the image crate runs
/// it) fills a scan cut short with grey; Pillow refuses such a file ("image file is
/// truncated"), and so does this module. Walks the marker segments (so that an EXIF
/// thumbnail's own markers are skipped whole) and each scan's entropy-coded data, where
/// 0xFF is followed by 0x00 (a stuffed byte) or a restart marker. Structure it does not
/// understand counts as complete: the decoder judges it.
fn jpeg_reaches_eoi(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        // A marker: 0xFF (any fill 0xFFs), then its code.
        match bytes.get(i) {
            None => return false,
            Some(0xff) => {}
            Some(_) => return true,
        }
        while bytes.get(i + 1) == Some(&0xff) {
            i += 1;
        }
        let Some(&code) = bytes.get(i + 1) else {
            return false;
        };
        i += 2;
        match code {
            0xd9 => return true,
            0x01 | 0xd0..=0xd7 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return false;
        };
        i += len;
        if code == 0xda {
            // Entropy-coded data up to the next marker that is not a stuffed byte or a restart.
            loop {
                let Some(at) = bytes
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|&b| b == 0xff))
                else {
                    return false;
                };
                let j = i + at;
                match bytes.get(j + 1) {
                    None => return false,
                    Some(0x00 | 0xd0..=0xd7 | 0xff) => i = j + 1,
                    Some(_) => {
                        i = j;
                        break;
                    }
                }
            }
        }
    }
}

/// The orientation Pillow's `exif_transpose` applies, as the EXIF value (1 = upright).
fn orientation(decoder: &mut impl ImageDecoder, format: ImageFormat) -> u8 {
    // Metadata that cannot be read is no orientation: the pixels decide whether the file is good.
    if format == ImageFormat::Tiff {
        // Pillow reads a TIFF's EXIF tags from the image's own directory.
        return decoder.orientation().map(|o| o.to_exif()).unwrap_or(1);
    }
    if let Some(value) = decoder
        .exif_metadata()
        .ok()
        .flatten()
        .and_then(|exif| image::metadata::Orientation::from_exif_chunk(&exif))
    {
        return value.to_exif();
    }
    decoder
        .xmp_metadata()
        .ok()
        .flatten()
        .and_then(|xmp| xmp_orientation(&xmp))
        .unwrap_or(1)
}

/// `tiff:Orientation="d"` or `<tiff:Orientation>d` in an XMP packet (Pillow's pattern
/// `tiff:Orientation(="|>)([0-9])`, first match).
fn xmp_orientation(xmp: &[u8]) -> Option<u8> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut rest = xmp;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        let after = &rest[at + KEY.len()..];
        let digit = match after {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(d - b'0'),
            _ => None,
        };
        if digit.is_some() {
            return digit;
        }
        rest = after;
    }
    None
}

/// The decoded samples as Pillow's `convert("RGB")` leaves them (see the module docs).
fn to_rgb(image: DynamicImage) -> Result<RgbImage> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let grey = |v: &mut dyn Iterator<Item = u8>| v.flat_map(|g| [g, g, g]).collect::<Vec<u8>>();
    let pixels = match image {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLuma8(b) => grey(&mut b.into_raw().into_iter()),
        DynamicImage::ImageLumaA8(b) => grey(&mut b.into_raw().into_iter().step_by(2)),
        // Pillow's mode I;16 to RGB clamps.
        DynamicImage::ImageLuma16(b) => grey(&mut b.into_raw().into_iter().map(|v| v.min(255) as u8)),
        // Pillow unpacks 16-bit grey+alpha ("LA;16B") and colour ("RGB;16B", "RGBA;16B") to
        // their high bytes.
        DynamicImage::ImageLumaA16(b) => {
            grey(&mut b.into_raw().into_iter().step_by(2).map(|v| (v >> 8) as u8))
        }
        DynamicImage::ImageRgb16(b) => b.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        other => {
            return Err(Error::InvalidImage {
                format: None,
                reason: format!("{:?} samples are not read", other.color()),
            })
        }
    };
    Ok(RgbImage::from_raw_unchecked(w, h, pixels))
}

/// `image` turned upright for EXIF orientation `o`, as Pillow's `exif_transpose`
/// (2: mirror, 3: rotate 180°, 4: flip, 5: transpose, 6: rotate 90° clockwise, 7: transverse,
/// 8: rotate 90° counter-clockwise; anything else: unchanged).
fn orient(image: RgbImage, o: u8) -> RgbImage {
    if !(2..=8).contains(&o) {
        return image;
    }
    let (w, h) = (image.width, image.height);
    let (ow, oh) = if o >= 5 { (h, w) } else { (w, h) };
    // The source (column, row) of output pixel (x, y).
    let source = |x: usize, y: usize| -> (usize, usize) {
        match o {
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            _ => (w - 1 - y, x), // 8
        }
    };
    let src = &image.pixels;
    let mut out = Vec::with_capacity(src.len());
    for y in 0..oh {
        for x in 0..ow {
            let (sx, sy) = source(x, y);
            let i = (sy * w + sx) * 3;
            out.extend_from_slice(&src[i..i + 3]);
        }
    }
    RgbImage::from_raw_unchecked(ow, oh, out)
}

/// A GIF decoder positioned at its first frame's pixels, with what the frame's descriptor says.
struct GifFrame<'a> {
    decoder: gif::Decoder<Cursor<&'a [u8]>>,
    left: usize,
    top: usize,
    frame_width: usize,
    frame_height: usize,
    fill: u8,
    palette: Vec<u8>,
    /// The canvas: the logical screen, grown to hold the frame.
    width: usize,
    height: usize,
}

fn gif_error(e: gif::DecodingError) -> Error {
    Error::InvalidImage {
        format: Some("GIF"),
        reason: match e {
            gif::DecodingError::UnexpectedEof => "the file is truncated".to_string(),
            gif::DecodingError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the file is truncated".to_string()
            }
            other => one_line(&other.to_string()),
        },
    }
}

/// Reads a GIF's headers up to its first frame's pixels; the canvas is checked against `limits`.
fn open_gif<'a>(bytes: &'a [u8], limits: &DecodeLimits) -> Result<GifFrame<'a>> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    if let Some(bytes) = std::num::NonZeroU64::new(limits.max_alloc()) {
        options.set_memory_limit(gif::MemoryLimit::Bytes(bytes));
    }
    let mut decoder = options.read_info(Cursor::new(bytes)).map_err(gif_error)?;
    let (screen_w, screen_h) = (usize::from(decoder.width()), usize::from(decoder.height()));
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder
        .next_frame_info()
        .map_err(gif_error)?
        .ok_or_else(|| Error::InvalidImage {
            format: Some("GIF"),
            reason: "it has no frame".into(),
        })?;
    let (left, top) = (usize::from(frame.left), usize::from(frame.top));
    let (frame_width, frame_height) = (usize::from(frame.width), usize::from(frame.height));
    let fill = frame.transparent.unwrap_or(0);
    let palette = frame.palette.clone().or(global).unwrap_or_default();
    // Pillow grows the image to hold a frame that extends past the screen.
    let (width, height) = (screen_w.max(left + frame_width), screen_h.max(top + frame_height));
    limits
        .check(width as u64, height as u64)
        .map_err(|e| with_format(e, "GIF"))?;
    Ok(GifFrame {
        decoder,
        left,
        top,
        frame_width,
        frame_height,
        fill,
        palette,
        width,
        height,
    })
}

/// The first frame of a GIF as Pillow's `GifImageFile` builds it (see the module docs).
fn decode_gif(gif: GifFrame<'_>) -> Result<RgbImage> {
    let GifFrame {
        mut decoder,
        left,
        top,
        frame_width: fw,
        frame_height: fh,
        fill,
        palette,
        width: w,
        height: h,
    } = gif;
    let mut indices = vec![0u8; fw * fh];
    if !indices.is_empty() {
        decoder.read_into_buffer(&mut indices).map_err(gif_error)?;
    }
    let mut canvas = vec![fill; w * h];
    for (row, line) in indices.chunks_exact(fw.max(1)).enumerate().take(fh) {
        let at = (top + row) * w + left;
        canvas[at..at + fw].copy_from_slice(line);
    }
    let pixels = canvas
        .into_iter()
        .flat_map(|i| {
            let i = usize::from(i) * 3;
            palette.get(i..i + 3).map_or([0, 0, 0], |c| [c[0], c[1], c[2]])
        })
        .collect();
    Ok(RgbImage::from_raw_unchecked(w, h, pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_may_match_either_way_round() {
        assert!(may_match((3, 4), (3, 4)));
        assert!(may_match((3, 4), (4, 3)));
        assert!(!may_match((3, 4), (3, 5)));
        assert!(!may_match((3, 4), (5, 3)));
    }

    #[test]
    fn image_files_are_read_no_further_than_the_limits_need() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DecodeLimits { max_pixels: 100 };
        // A real image: its bytes, all of them.
        let png = dir.path().join("small.png");
        image::RgbImage::new(10, 10).save(&png).unwrap();
        assert_eq!(
            read_image_file(&png, &limits).unwrap(),
            std::fs::read(&png).unwrap()
        );
        // A PNG's signature, then more than any 100-pixel image takes (a sparse file, refused
        // from its length before it is read).
        let long = dir.path().join("long.png");
        std::fs::write(&long, b"\x89PNG\r\n\x1a\n").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&long)
            .unwrap()
            .set_len(limits.max_file_bytes() + 1)
            .unwrap();
        let err = read_image_file(&long, &limits).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
        // Not an image: refused from its first bytes, whatever follows (an endless device).
        #[cfg(unix)]
        {
            let err = read_image_file(Path::new("/dev/zero"), &limits)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a JPEG, PNG"), "{err}");
        }
        assert!(matches!(
            read_image_file(&dir.path().join("missing.png"), &limits),
            Err(Error::Io { .. })
        ));
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        assert!(read_image_file(&empty, &limits)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn orientations_match_their_definitions() {
        // 3 x 2, pixel value = index.
        let img = RgbImage::new(3, 2, (0..18).collect()).unwrap();
        let ids = |o: u8| -> (usize, usize, Vec<u8>) {
            let r = orient(img.clone(), o);
            (
                r.width(),
                r.height(),
                r.pixels().chunks(3).map(|p| p[0] / 3).collect(),
            )
        };
        // Input:  0 1 2
        //         3 4 5
        assert_eq!(ids(1), (3, 2, vec![0, 1, 2, 3, 4, 5]));
        assert_eq!(ids(2), (3, 2, vec![2, 1, 0, 5, 4, 3]));
        assert_eq!(ids(3), (3, 2, vec![5, 4, 3, 2, 1, 0]));
        assert_eq!(ids(4), (3, 2, vec![3, 4, 5, 0, 1, 2]));
        assert_eq!(ids(5), (2, 3, vec![0, 3, 1, 4, 2, 5]));
        assert_eq!(ids(6), (2, 3, vec![3, 0, 4, 1, 5, 2]));
        assert_eq!(ids(7), (2, 3, vec![5, 2, 4, 1, 3, 0]));
        assert_eq!(ids(8), (2, 3, vec![2, 5, 1, 4, 0, 3]));
        assert_eq!(ids(9), ids(1));
    }

    #[test]
    fn xmp_orientation_follows_pillows_pattern() {
        assert_eq!(xmp_orientation(br#"<x tiff:Orientation="6"/>"#), Some(6));
        assert_eq!(
            xmp_orientation(b"<tiff:Orientation>3</tiff:Orientation>"),
            Some(3)
        );
        assert_eq!(
            xmp_orientation(br#"tiff:Orientation="x" tiff:Orientation="8""#),
            Some(8)
        );
        assert_eq!(xmp_orientation(b"tiff:Orientation"), None);
        assert_eq!(xmp_orientation(b""), None);
    }

    /// A GIF whose logical screen is `screen` and whose one frame, at `at`, is `frame` large
    /// (its pixel data holds a clear code and the end code only: enough for its headers).
    fn gif(screen: (u16, u16), at: (u16, u16), frame: (u16, u16)) -> Vec<u8> {
        let mut gif = b"GIF89a".to_vec();
        for v in [screen.0, screen.1] {
            gif.extend_from_slice(&v.to_le_bytes());
        }
        gif.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]); // a 2-colour global palette
        gif.push(0x2c);
        for v in [at.0, at.1, frame.0, frame.1] {
            gif.extend_from_slice(&v.to_le_bytes());
        }
        gif.extend_from_slice(&[0, 2, 2, 0x44, 0x01, 0, 0x3b]);
        gif
    }

    #[test]
    fn a_gifs_size_is_its_canvas_grown_to_hold_its_frame() {
        let limits = DecodeLimits::default();
        // A 1 x 1 screen holding a 13000 x 13000 frame decodes to 13000 x 13000, not 1 x 1.
        let bomb = gif((1, 1), (0, 0), (13_000, 13_000));
        assert_eq!(decoded_size(&bomb, &limits).unwrap(), (13_000, 13_000));
        assert_eq!(
            decoded_size(&gif((4, 3), (2, 2), (5, 1)), &limits).unwrap(),
            (7, 3)
        );
        let small = DecodeLimits { max_pixels: 1000 };
        for e in [
            decoded_size(&bomb, &small).unwrap_err(),
            decode_image_with_limits(&bomb, &small).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    Error::ImageTooLarge {
                        width: 13_000,
                        height: 13_000,
                        ..
                    }
                ),
                "{e}"
            );
        }
        assert!(decoded_size(b"not an image", &limits).is_err());
    }

    #[test]
    fn the_image_extensions_are_those_of_the_formats_read() {
        use ImageFormat::*;
        let mut of_formats: Vec<&str> = [Jpeg, Png, WebP, Bmp, Gif, Tiff]
            .iter()
            .flat_map(|f| f.extensions_str().iter().copied())
            .collect();
        of_formats.sort_unstable();
        let mut listed = IMAGE_EXTENSIONS.to_vec();
        listed.sort_unstable();
        assert_eq!(listed, of_formats);
    }

    #[test]
    fn non_images_are_described() {
        let e = decode_image(b"hello, world\n").unwrap_err().to_string();
        assert!(e.contains("not a JPEG, PNG") && e.contains("hello, world"), "{e}");
        let e = decode_image(&[0, 159, 146, 150]).unwrap_err().to_string();
        assert!(e.contains("00 9f 92 96"), "{e}");
    }
}
