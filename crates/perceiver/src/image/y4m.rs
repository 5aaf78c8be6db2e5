//! YUV4MPEG2 (`.y4m`) video: the uncompressed format `ffmpeg -i clip.mp4 clip.y4m` writes, read
//! as 8-bit RGB frames for the video autoencoder.
//!
//! A file is a header line (`YUV4MPEG2 W<width> H<height> F<rate> … C<colour space>
//! X<extension>…`), then per frame a `FRAME` line and the Y, Cb and Cr planes. 8-bit 4:2:0 (every
//! chroma siting: `420jpeg`, the default, `420paldv`, `420mpeg2`, `420`), 4:2:2, 4:4:4 and
//! `mono` are read; others (10-bit, alpha) are refused by name. Chroma is upsampled by
//! repetition, and colours are BT.601, limited range (Y 16–235) unless the header says
//! `XCOLORRANGE=FULL`.

use std::io::{BufRead, Read};

use super::{DecodeLimits, RgbImage};
use crate::error::{Error, Result};

/// The longest header or frame line read: real ones are well under 100 bytes.
const MAX_LINE: usize = 4096;

/// How chroma is stored relative to luma.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chroma {
    /// One chroma sample per 2 × 2 pixels.
    Half,
    /// One per 2 × 1 pixels (horizontal halving only).
    HalfWidth,
    /// One per pixel.
    Full,
    /// No chroma planes: grey.
    Mono,
}

/// A `.y4m` stream's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Y4mHeader {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Frames a second as `F<numerator>:<denominator>` states it; `None` when the header has no
    /// `F`, or a zero in it (the format's "unknown", which ffmpeg reads as 25:1).
    pub frame_rate: Option<(u64, u64)>,
    chroma: Chroma,
    full_range: bool,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidImage {
        format: Some("y4m"),
        reason: reason.into(),
    }
}

/// One line (without its `\n`), at most [`MAX_LINE`] bytes; `None` at the end of the stream.
fn read_line(reader: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| invalid(format!("cannot read: {e}")))?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(invalid(if line.len() > MAX_LINE {
            format!("a line longer than {MAX_LINE} bytes")
        } else {
            "the stream ends inside a line".to_string()
        }));
    }
    line.pop();
    Ok(Some(line))
}

impl Y4mHeader {
    fn parse(line: &[u8], limits: &DecodeLimits) -> Result<Self> {
        // Else the hidden \r makes the last field's error name a field that looks right.
        if line.last() == Some(&b'\r') {
            return Err(invalid(
                "the header line ends with \\r\\n (a Windows line end); YUV4MPEG2 lines end with \\n alone",
            ));
        }
        let text = std::str::from_utf8(line).map_err(|_| invalid("the header is not text"))?;
        let mut fields = text.split(' ');
        if fields.next() != Some("YUV4MPEG2") {
            return Err(invalid("not a YUV4MPEG2 stream (no YUV4MPEG2 signature)"));
        }
        let (mut width, mut height, mut frame_rate) = (None, None, None);
        let mut chroma = Chroma::Half;
        let mut full_range = false;
        for field in fields.filter(|f| !f.is_empty()) {
            // Every tag is one ASCII letter; anything else is not a header field.
            if !field.as_bytes()[0].is_ascii() {
                return Err(invalid(format!(
                    "the header field {field:?} does not start with a one-letter tag"
                )));
            }
            let (tag, value) = field.split_at(1);
            match tag {
                "W" => width = value.parse::<u64>().ok(),
                "H" => height = value.parse::<u64>().ok(),
                "F" => {
                    let rate = value
                        .split_once(':')
                        .and_then(|(n, d)| Some((n.parse::<u64>().ok()?, d.parse::<u64>().ok()?)));
                    let Some((n, d)) = rate else {
                        return Err(invalid(format!(
                            "the frame rate F{value} is not F<numerator>:<denominator>"
                        )));
                    };
                    frame_rate = (n > 0 && d > 0).then_some((n, d));
                }
                "C" => {
                    chroma = match value {
                        "420jpeg" | "420paldv" | "420mpeg2" | "420" => Chroma::Half,
                        "422" => Chroma::HalfWidth,
                        "444" => Chroma::Full,
                        "mono" => Chroma::Mono,
                        other => {
                            return Err(invalid(format!(
                                "colour space C{other} is not read: use 8-bit 420, 422, 444 or mono \
                                 (e.g. ffmpeg -pix_fmt yuv420p)"
                            )))
                        }
                    }
                }
                "I" if !matches!(value, "p" | "?") => {
                    return Err(invalid(format!(
                        "interlaced video (I{value}) is not read: deinterlace it first"
                    )))
                }
                "X" => match value {
                    "COLORRANGE=FULL" => full_range = true,
                    "COLORRANGE=LIMITED" => full_range = false,
                    _ => {}
                },
                _ => {}
            }
        }
        let (Some(width), Some(height)) = (width, height) else {
            return Err(invalid("the header has no W<width> and H<height>"));
        };
        limits.check(width, height)?;
        Ok(Self {
            width: width as usize,
            height: height as usize,
            frame_rate,
            chroma,
            full_range,
        })
    }

    /// Size of each chroma plane (columns, rows).
    fn chroma_size(&self) -> (usize, usize) {
        let (w, h) = (self.width, self.height);
        match self.chroma {
            Chroma::Half => (w.div_ceil(2), h.div_ceil(2)),
            Chroma::HalfWidth => (w.div_ceil(2), h),
            Chroma::Full => (w, h),
            Chroma::Mono => (0, 0),
        }
    }

    fn frame_bytes(&self) -> usize {
        let (cw, ch) = self.chroma_size();
        self.width * self.height + 2 * cw * ch
    }

    /// One frame's planes as RGB.
    fn to_rgb(self, planes: &[u8]) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = self.chroma_size();
        let (luma, chroma) = planes.split_at(w * h);
        let (cb, cr) = chroma.split_at(cw * ch);
        let mut pixels = Vec::with_capacity(3 * w * h);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = match self.chroma {
                    Chroma::Mono => (128.0, 128.0),
                    _ => {
                        let cx = if cw < w { x / 2 } else { x };
                        let cy = if ch < h { y / 2 } else { y };
                        (cb[cy * cw + cx] as f32, cr[cy * cw + cx] as f32)
                    }
                };
                let luma = luma[y * w + x] as f32;
                let (l, pb, pr) = if self.full_range {
                    (luma, u - 128.0, v - 128.0)
                } else {
                    (
                        (luma - 16.0) * 255.0 / 219.0,
                        (u - 128.0) * 255.0 / 224.0,
                        (v - 128.0) * 255.0 / 224.0,
                    )
                };
                let rgb = [
                    l + 1.402 * pr,
                    l - 0.344_136 * pb - 0.714_136 * pr,
                    l + 1.772 * pb,
                ];
                pixels.extend(rgb.map(|c| c.round().clamp(0.0, 255.0) as u8));
            }
        }
        RgbImage::from_raw_unchecked(w, h, pixels)
    }
}

/// The first `max_frames` frames of a `.y4m` stream as RGB; fewer when the stream has fewer.
/// Only those frames are read, whatever follows them.
///
/// # Errors
/// [`Error::InvalidImage`] for a bad header, an unsupported colour space, interlacing, a
/// malformed `FRAME` line or a truncated frame; [`Error::ImageTooLarge`] for frames over
/// `limits`.
pub fn read_y4m(reader: impl BufRead, max_frames: usize, limits: &DecodeLimits) -> Result<Vec<RgbImage>> {
    read_y4m_with_header(reader, max_frames, limits).map(|(_, frames)| frames)
}

/// [`read_y4m`], and the stream's header (its size and frame rate).
///
/// # Errors
/// As [`read_y4m`].
pub fn read_y4m_with_header(
    mut reader: impl BufRead,
    max_frames: usize,
    limits: &DecodeLimits,
) -> Result<(Y4mHeader, Vec<RgbImage>)> {
    let header = read_line(&mut reader)?.ok_or_else(|| invalid("the stream is empty"))?;
    let header = Y4mHeader::parse(&header, limits)?;
    let mut frames = Vec::new();
    let mut planes = vec![0u8; header.frame_bytes()];
    while frames.len() < max_frames {
        let Some(line) = read_line(&mut reader)? else {
            break;
        };
        if !line.starts_with(b"FRAME") || line.get(5).is_some_and(|&b| b != b' ') {
            return Err(invalid(format!(
                "frame {} does not start with a FRAME line",
                frames.len()
            )));
        }
        reader
            .read_exact(&mut planes)
            .map_err(|_| invalid(format!("the stream ends inside frame {}", frames.len())))?;
        frames.push(header.to_rgb(&planes));
    }
    Ok((header, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(header: &str, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = format!("{header}\n").into_bytes();
        for frame in frames {
            bytes.extend_from_slice(b"FRAME\n");
            bytes.extend_from_slice(frame);
        }
        bytes
    }

    fn read(bytes: &[u8], max: usize) -> Result<Vec<RgbImage>> {
        read_y4m(bytes, max, &DecodeLimits::default())
    }

    #[test]
    fn grey_and_colours_convert_as_bt601() {
        // 2 x 2, 4:2:0: one chroma sample. Limited-range black, white and mid-grey luma.
        let frame = vec![16, 235, 126, 126, 128, 128];
        let frames = read(&stream("YUV4MPEG2 W2 H2 F25:1 Ip A1:1 C420jpeg", &[frame]), 5).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].pixel(0, 0), [0, 0, 0]);
        assert_eq!(frames[0].pixel(1, 0), [255, 255, 255]);
        assert_eq!(frames[0].pixel(0, 1), [128, 128, 128]);
        // Full range: luma as it is; pure red is Y 76, Cb 85, Cr 255 (BT.601).
        let red = vec![76, 85, 255];
        let frames = read(&stream("YUV4MPEG2 W1 H1 C444 XCOLORRANGE=FULL", &[red]), 1).unwrap();
        let [r, g, b] = frames[0].pixel(0, 0);
        assert!(r >= 253 && g <= 2 && b <= 2, "{:?}", [r, g, b]);
    }

    #[test]
    fn only_the_frames_asked_for_are_read() {
        let frame = |v: u8| vec![v; 4 + 2];
        let bytes = stream("YUV4MPEG2 W2 H2", &[frame(50), frame(100), frame(150)]);
        let frames = read(&bytes, 2).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(frames[1].pixel(0, 0)[0] > frames[0].pixel(0, 0)[0]);
        assert_eq!(read(&bytes, 10).unwrap().len(), 3);
        // Odd sizes round the chroma planes up; 4:2:2 halves the width only; mono has none.
        assert_eq!(
            read(&stream("YUV4MPEG2 W3 H3", &[vec![0; 9 + 2 * 4]]), 1)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            read(&stream("YUV4MPEG2 W4 H2 C422", &[vec![0; 8 + 2 * 4]]), 1)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            read(&stream("YUV4MPEG2 W2 H2 Cmono", &[vec![0; 4]]), 1)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_frame_rate_is_read_and_zero_or_absent_is_unknown() {
        let rate = |header: &str| {
            read_y4m_with_header(stream(header, &[]).as_slice(), 1, &DecodeLimits::default())
                .map(|(header, _)| header.frame_rate)
        };
        assert_eq!(rate("YUV4MPEG2 W2 H2 F30000:1001").unwrap(), Some((30000, 1001)));
        assert_eq!(rate("YUV4MPEG2 W2 H2").unwrap(), None);
        assert_eq!(rate("YUV4MPEG2 W2 H2 F0:0").unwrap(), None);
        let message = rate("YUV4MPEG2 W2 H2 F25").unwrap_err().to_string();
        assert!(
            message.contains("F25 is not F<numerator>:<denominator>"),
            "{message}"
        );
    }

    #[test]
    fn bad_streams_are_refused_by_what_is_wrong() {
        let cases: [(Vec<u8>, &str); 11] = [
            (Vec::new(), "empty"),
            (b"YUV4MPEG2 W2 H2 F25:1\r\n".to_vec(), "ends with \\r\\n"),
            (b"RIFF1234\n".to_vec(), "no YUV4MPEG2 signature"),
            (b"YUV4MPEG2 W2\n".to_vec(), "no W<width> and H<height>"),
            (stream("YUV4MPEG2 W2 H2 C420p10", &[]), "C420p10 is not read"),
            (stream("YUV4MPEG2 W2 H2 C444alpha", &[]), "C444alpha"),
            (stream("YUV4MPEG2 W2 H2 It", &[]), "interlaced"),
            (stream("YUV4MPEG2 W2 H2", &[vec![0; 3]]), "ends inside frame 0"),
            (b"YUV4MPEG2 W2 H2\nFRAMX\n".to_vec(), "FRAME line"),
            (vec![b'Y'; 10_000], "longer than"),
            // A tag is one byte; a field may start with a character of several.
            (
                stream("YUV4MPEG2 W2 H2 \u{e9}t\u{e9}", &[]),
                "field \"\u{e9}t\u{e9}\"",
            ),
        ];
        for (bytes, needle) in cases {
            let message = read(&bytes, 4).unwrap_err().to_string();
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
        let huge = stream("YUV4MPEG2 W100000 H100000", &[]);
        assert!(matches!(read(&huge, 1), Err(Error::ImageTooLarge { .. })));
    }
}
