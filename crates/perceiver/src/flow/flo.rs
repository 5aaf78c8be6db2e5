//! The Middlebury `.flo` file, the common exchange format of optical flow (Middlebury, Sintel,
//! FlyingChairs, and the tools of most flow papers).
//!
//! Layout, all little-endian:
//!
//! | bytes | contents |
//! |---|---|
//! | 0..4 | the tag: the f32 `202021.25`, whose bytes read `PIEH` |
//! | 4..8 | the width, i32 |
//! | 8..12 | the height, i32 |
//! | 12.. | `u, v` as f32 for each pixel, rows top to bottom, pixels left to right (`8 * width * height` bytes) |
//!
//! Values go through unchanged, bit for bit: `-0.0`, subnormals, infinities and NaN with its
//! payload (Middlebury's unknown-flow `1e10` included) are written and read back as the same 32
//! bits; nothing is computed on them.
//!
//! The reader checks what a hostile or broken file could get wrong, and answers each with
//! [`Error::InvalidFlo`], never a panic: a wrong tag, a width or height that is not positive,
//! more than [`MAX_FLO_PIXELS`] pixels, a payload shorter than the header promises, and bytes
//! after it. It allocates as the payload arrives, not as the header announces.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::FlowField;
use crate::error::{Error, Result};

/// The tag at the start of a `.flo` file: the f32 `202021.25`, whose little-endian bytes are
/// `PIEH`.
pub const FLO_TAG: f32 = 202021.25;

/// The most pixels (`width * height`) [`read_flo`] accepts: 2^27, i.e. 2^28 values and 1 GiB
/// of f32, so that a 12-byte header cannot make the reader hold more than that. Sintel's frames
/// are 436 x 1024 = 446,464 pixels; the bound allows about 11585 x 11585. A [`FlowField`]
/// holds no more ([`super::MAX_PIXELS`]), so every field is written and reads back.
pub const MAX_FLO_PIXELS: usize = 1 << 27;

/// Bytes read or converted at a time.
const CHUNK_BYTES: usize = 1 << 16;

/// Writes `field` in `.flo` format to `writer`.
///
/// # Errors
/// [`Error::Write`] (with the path `<writer>`) when writing fails.
pub fn write_flo(field: &FlowField, writer: impl Write) -> Result<()> {
    write_to(field, writer, None)
}

/// Writes `field` as a `.flo` file at `path`.
///
/// # Errors
/// As [`write_flo`]; [`Error::Write`] names `path`.
pub fn save_flo(field: &FlowField, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let file = File::create(path).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })?;
    write_to(field, BufWriter::new(file), Some(path))
}

/// Reads a `.flo` file's contents from `reader`, to its end.
///
/// # Errors
/// [`Error::InvalidFlo`] for bytes that are not a valid `.flo` file (see the
/// [module](self) documentation); [`Error::Io`] (with the path `<reader>`) when reading fails.
pub fn read_flo(reader: impl Read) -> Result<FlowField> {
    read_from(reader, None)
}

/// Reads the `.flo` file at `path`.
///
/// # Errors
/// As [`read_flo`]; both errors name `path`.
pub fn load_flo(path: impl AsRef<Path>) -> Result<FlowField> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_from(BufReader::new(file), Some(path))
}

fn io_error(path: Option<&Path>, stream: &str, source: std::io::Error) -> Error {
    Error::Io {
        path: path.map_or_else(|| PathBuf::from(stream), Path::to_path_buf),
        source,
    }
}

fn write_to(field: &FlowField, mut writer: impl Write, path: Option<&Path>) -> Result<()> {
    // A FlowField holds at most MAX_FLO_PIXELS pixels (flow::MAX_PIXELS): every one fits.
    debug_assert!(field.height() * field.width() <= MAX_FLO_PIXELS);
    let io = |source| Error::Write {
        path: path.map_or_else(|| PathBuf::from("<writer>"), Path::to_path_buf),
        source,
    };
    // FlowField's sides are at most i32::MAX.
    let (width, height) = (field.width() as i32, field.height() as i32);
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&FLO_TAG.to_le_bytes());
    header[4..8].copy_from_slice(&width.to_le_bytes());
    header[8..].copy_from_slice(&height.to_le_bytes());
    writer.write_all(&header).map_err(io)?;
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    for chunk in field.values().chunks(CHUNK_BYTES / 4) {
        buf.clear();
        // to_le_bytes is the bits as they are: NaN payloads and -0.0 survive.
        buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        writer.write_all(&buf).map_err(io)?;
    }
    writer.flush().map_err(io)
}

/// Reads until `buf` is full or the stream ends; the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_from(mut reader: impl Read, path: Option<&Path>) -> Result<FlowField> {
    let invalid = |reason: String| Error::InvalidFlo {
        path: path.map(Path::to_path_buf),
        reason,
    };
    let io = |source| io_error(path, "<reader>", source);

    let mut header = [0u8; 12];
    let got = read_full(&mut reader, &mut header).map_err(io)?;
    if got < 4 || header[..4] != FLO_TAG.to_le_bytes() {
        // Compared as bytes: a NaN-free exact match, and the message can show them.
        return Err(invalid(format!(
            "the file does not start with the tag PIEH (the f32 202021.25), it starts with {:?}",
            String::from_utf8_lossy(&header[..got.min(4)])
        )));
    }
    if got < 12 {
        return Err(invalid(format!(
            "the file ends inside the 12-byte header ({got} bytes): no width and height"
        )));
    }
    let width = i32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let height = i32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if width <= 0 || height <= 0 {
        return Err(invalid(format!(
            "the header's size {width} x {height} (width x height) is not positive"
        )));
    }
    // Both are below 2^31: the product fits u64, and usize once below the bound.
    let pixels = width as u64 * height as u64;
    if pixels > MAX_FLO_PIXELS as u64 {
        return Err(invalid(format!(
            "the header's size {width} x {height} (width x height) is {pixels} pixels, more than the \
             {MAX_FLO_PIXELS} this reader accepts"
        )));
    }
    let total = 2 * pixels as usize;

    // Grown as bytes arrive, so a header that lies about the size costs nothing.
    let mut values = Vec::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    while values.len() < total {
        let want = (4 * (total - values.len())).min(CHUNK_BYTES);
        let got = read_full(&mut reader, &mut buf[..want]).map_err(io)?;
        values.extend(
            buf[..got - got % 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        );
        if got < want {
            let bytes = 4 * values.len() + got % 4;
            return Err(invalid(format!(
                "the payload is truncated: a {width} x {height} field needs {} bytes after the header, \
                 the file has {bytes}",
                4 * total
            )));
        }
    }
    let trailing = read_full(&mut reader, &mut buf[..1]).map_err(io)?;
    if trailing != 0 {
        return Err(invalid(format!(
            "bytes follow the {} payload bytes of a {width} x {height} field: the header's size and the \
             file's length disagree",
            4 * total
        )));
    }
    FlowField::new(height as usize, width as usize, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_bytes_are_pieh() {
        assert_eq!(&FLO_TAG.to_le_bytes(), b"PIEH");
    }

    #[test]
    fn empty_and_short_inputs_are_errors() {
        for bytes in [&b""[..], b"PI", b"PIEH", b"PIEH\x01\0\0\0\x01\0"] {
            assert!(
                matches!(read_flo(bytes), Err(Error::InvalidFlo { path: None, .. })),
                "{bytes:?}"
            );
        }
    }

    /// A reader that fails after its bytes: the error is I/O, not a format error.
    struct Failing<'a>(&'a [u8]);

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn reader_errors_are_io_errors() {
        let header = b"PIEH\x01\0\0\0\x01\0\0\0";
        match read_flo(Failing(header)) {
            Err(Error::Io { path, .. }) => assert_eq!(path, PathBuf::from("<reader>")),
            other => panic!("{other:?}"),
        }
    }
}
