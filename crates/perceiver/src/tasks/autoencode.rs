//! Video autoencoding, as DeepMind's video-autoencoding Colab runs `PerceiverForMultimodalAutoencoding`:
//! the model's number of frames (image files or a `.y4m` video, 8-bit RGB scaled to [0, 1]) and the audio of those
//! frames (a WAV file, its first channel, in [-1, 1]) in; the reconstructed frames, the
//! reconstructed audio and the best labels out. The model encodes once and decodes its queries in
//! chunks (the Colab's 128), so memory beyond the reconstruction stays bounded.
//!
//! The Colab's video (UCF101) runs at 25 frames a second with 48 kHz audio: 1920 samples a frame,
//! the released `audio_samples_per_frame`. A WAV file must have `audio_samples_per_frame × 25`
//! samples a second.

use std::cmp::Ordering;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::config::{Architecture, MultimodalSpec, IMAGE_CHANNELS};
use crate::decoder::MultimodalQueries;
use crate::error::{Error, Result};
use crate::image::y4m::{read_y4m_with_header, Y4mHeader};
use crate::image::{
    decode_image_with_limits, decoded_size, has_image_extension, may_match, read_image_file, DecodeLimits,
    RgbImage,
};
pub use crate::model::MAX_CHUNKS;
use crate::model::{check_chunks, DecodedQueries, EncodedClip, MultimodalOutput, PerceiverModel};
use crate::preprocess::{MultimodalInput, Pixels};
use crate::tasks::classify::{probabilities, top_labels, LabelScore};
use crate::tasks::fill_mask::top_k_zero;

/// Frames a second of the Colab's video; with `audio_samples_per_frame` it gives the audio's rate.
pub const FRAMES_PER_SECOND: u32 = 25;

/// DeepMind's Colab: queries decoded in 128 chunks.
pub const DEFAULT_CHUNKS: usize = 128;

/// The file extensions read as frames (compared without case).
pub const FRAME_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn has_frame_extension(path: &Path) -> bool {
    crate::image::decode::has_extension(path, &FRAME_EXTENSIONS)
}

/// Whether a WAV reader's I/O error is the file ending before what its header announces:
/// `UnexpectedEof`, or hound's own spelling of it (3.5 reports `Other`, "Failed to read enough
/// bytes.").
fn ended_early(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::UnexpectedEof
        || (e.kind() == std::io::ErrorKind::Other
            && e.get_ref()
                .is_some_and(|inner| inner.to_string().starts_with("Failed to read enough bytes")))
}

/// A reconstruction and the best labels.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencodeOutput {
    /// The frames, audio and label logits.
    pub reconstruction: MultimodalOutput,
    /// The best labels, best first, with their softmax probabilities.
    pub labels: Vec<LabelScore>,
}

/// Video autoencoding on `PerceiverForMultimodalAutoencoding`.
#[derive(Debug, Clone)]
pub struct Autoencoder {
    model: PerceiverModel,
    spec: MultimodalSpec,
    labels: Vec<String>,
    chunks: usize,
}

impl Autoencoder {
    /// An error unless the task runs on models of this architecture: what [`new`](Self::new)
    /// checks first, for checking a config before its weights load.
    pub fn check_architecture(architecture: Architecture) -> Result<()> {
        if architecture != Architecture::MultimodalAutoencoding {
            return Err(Error::InvalidInput(format!(
                "autoencoding needs a PerceiverForMultimodalAutoencoding model, not a {}",
                architecture.name()
            )));
        }
        Ok(())
    }

    /// The task on a multimodal autoencoder; an error for a model of another architecture.
    pub fn new(model: PerceiverModel) -> Result<Self> {
        Self::check_architecture(model.architecture())?;
        let spec = *model.multimodal_spec()?;
        let labels = model.config().labels(spec.num_labels)?;
        Ok(Self {
            model,
            spec,
            labels,
            chunks: DEFAULT_CHUNKS,
        })
    }

    /// Decodes the queries in `chunks` chunks (1 to [`MAX_CHUNKS`]; the Colab's 128 by default),
    /// or in as many as a modality has queries when `chunks` is more: further chunks would be
    /// empty.
    pub fn with_chunks(mut self, chunks: usize) -> Result<Self> {
        check_chunks(chunks)?;
        self.chunks = chunks.min(self.spec.most_chunks());
        Ok(self)
    }

    /// The chunks the queries are decoded in.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The model.
    pub fn model(&self) -> &PerceiverModel {
        &self.model
    }

    /// The model's labels (`id2label`), in id order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The model's sizes.
    pub fn spec(&self) -> &MultimodalSpec {
        &self.spec
    }

    /// The audio's sample rate: `audio_samples_per_frame` × [`FRAMES_PER_SECOND`] (48 kHz for the
    /// released model).
    pub fn sample_rate(&self) -> u32 {
        self.reader().sample_rate()
    }

    /// The reader of this model's inputs.
    pub fn reader(&self) -> InputReader {
        InputReader::new(self.spec)
    }

    /// [`InputReader::frames_from`].
    pub fn frames_from(&self, path: &Path) -> Result<Vec<Pixels>> {
        self.reader().frames_from(path)
    }

    /// [`InputReader::frames_from_dir`].
    pub fn frames_from_dir(&self, dir: &Path) -> Result<Vec<Pixels>> {
        self.reader().frames_from_dir(dir)
    }

    /// [`InputReader::frames_from_y4m`].
    pub fn frames_from_y4m(&self, path: &Path) -> Result<Vec<Pixels>> {
        self.reader().frames_from_y4m(path)
    }

    /// [`InputReader::frame_from_file`].
    pub fn frame_from_file(&self, path: &Path) -> Result<Pixels> {
        self.reader().frame_from_file(path)
    }

    /// [`InputReader::audio_from_wav`].
    pub fn audio_from_wav(&self, path: &Path) -> Result<Vec<f32>> {
        self.reader().audio_from_wav(path)
    }
}

/// The autoencoder's inputs read from files and checked against a model's sizes, without the
/// model: so that a bad input is found before its weights load (with
/// [`Loader::config`](crate::Loader::config)).
#[derive(Debug, Clone, Copy)]
pub struct InputReader {
    spec: MultimodalSpec,
}

impl InputReader {
    /// A reader for a model of `spec` ([`PerceiverConfig::multimodal`](crate::PerceiverConfig::multimodal)).
    pub fn new(spec: MultimodalSpec) -> Self {
        Self { spec }
    }

    /// The audio's sample rate: `audio_samples_per_frame` × [`FRAMES_PER_SECOND`].
    pub fn sample_rate(&self) -> u32 {
        (self.spec.audio_samples_per_frame as u64 * FRAMES_PER_SECOND as u64).min(u32::MAX as u64) as u32
    }

    /// The model's frames from `path`: a directory of exactly `num_frames` image files (PNG or
    /// JPEG, in natural name order), or a `.y4m` video (its first `num_frames` frames); each of the
    /// model's frame size, scaled to [0, 1] (`v / 255` in f64, then f32, as the Colab).
    pub fn frames_from(&self, path: &Path) -> Result<Vec<Pixels>> {
        if path.is_dir() {
            return self.frames_from_dir(path);
        }
        // An image file given as the video is one frame, not a malformed .y4m.
        if has_image_extension(path) {
            return Err(Error::InvalidInput(format!(
                "{}: one image; the model takes {} frames: give a directory of them (PNG or JPEG, in name order) or a .y4m video",
                path.display(),
                self.spec.num_frames
            )));
        }
        self.frames_from_y4m(path)
    }

    /// The `num_frames` image files of `dir` (PNG or JPEG, in natural name order: digits compare
    /// as numbers, so `2.png` comes before `10.png`): exactly that many. Hidden files (named
    /// from a dot, such as macOS's `._0001.png`) are not frames.
    pub fn frames_from_dir(&self, dir: &Path) -> Result<Vec<Pixels>> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|entry| entry.map(|e| e.path()).map_err(io))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| p.is_file() && has_frame_extension(p) && !super::is_hidden(p))
            .collect();
        files.sort_by(|a, b| {
            natural_order(a.as_os_str().as_encoded_bytes(), b.as_os_str().as_encoded_bytes())
        });
        let wanted = self.spec.num_frames;
        if files.len() != wanted {
            return Err(Error::InvalidInput(format!(
                "{}: the model takes {wanted} frames (num_frames), found {} PNG/JPEG files",
                dir.display(),
                files.len()
            )));
        }
        files.iter().map(|path| self.frame_from_file(path)).collect()
    }

    /// The first `num_frames` frames of a `.y4m` video (see [`crate::image::y4m`]) at
    /// [`FRAMES_PER_SECOND`]: a header whose `F` states another rate is an error (one with no
    /// rate is taken to be at that rate, as ffmpeg takes it).
    pub fn frames_from_y4m(&self, path: &Path) -> Result<Vec<Pixels>> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.y4m_frames(std::io::BufReader::new(file), &path.display())
    }

    /// [`frames_from_y4m`](Self::frames_from_y4m) of a `.y4m` video already in memory (an
    /// upload); errors begin with `name`.
    pub fn frames_from_y4m_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<Pixels>> {
        self.y4m_frames(bytes, &name)
    }

    /// Checks a `.y4m` video already in memory against the model from its header alone (the
    /// frame size and rate), before any frame is read; errors begin with `name`.
    pub fn check_y4m_header(&self, bytes: &[u8], name: &str) -> Result<()> {
        let (header, _) = self.read_y4m(bytes, 0, &name)?;
        self.check_y4m(&header, &name)
    }

    fn y4m_frames(&self, reader: impl std::io::BufRead, name: &dyn Display) -> Result<Vec<Pixels>> {
        let wanted = self.spec.num_frames;
        let (header, frames) = self.read_y4m(reader, wanted, name)?;
        self.check_y4m(&header, name)?;
        if frames.len() < wanted {
            return Err(Error::InvalidInput(format!(
                "{name}: the model takes {wanted} frames (num_frames), the video has {}",
                frames.len()
            )));
        }
        frames
            .iter()
            .map(|image| self.frame_pixels(image, name))
            .collect()
    }

    fn read_y4m(
        &self,
        reader: impl std::io::BufRead,
        frames: usize,
        name: &dyn Display,
    ) -> Result<(Y4mHeader, Vec<RgbImage>)> {
        // Frames larger than the model's are refused from the header, before any is read.
        read_y4m_with_header(reader, frames, &self.frame_limits()).map_err(|e| match e {
            Error::ImageTooLarge { width, height, .. } => self.wrong_frame_size(name, height, width),
            e => Error::InvalidInput(format!("{name}: {e}")),
        })
    }

    /// The video's frames are the model's size, at [`FRAMES_PER_SECOND`].
    fn check_y4m(&self, header: &Y4mHeader, name: &dyn Display) -> Result<()> {
        if (header.height, header.width) != self.spec.frame_size() {
            return Err(self.wrong_frame_size(name, header.height as u64, header.width as u64));
        }
        // The audio's rate is audio_samples_per_frame × 25: frames at another rate would not
        // line up with it. No rate (or 0:0, "unknown") is 25, as ffmpeg reads it.
        if let Some((n, d)) = header.frame_rate {
            if u64::from(FRAMES_PER_SECOND).checked_mul(d) != Some(n) {
                return Err(Error::InvalidInput(format!(
                    "{name}: the video's frame rate is F{n}:{d}, the model takes {FRAMES_PER_SECOND} \
                     frames a second: convert it with ffmpeg -r {FRAMES_PER_SECOND}"
                )));
            }
        }
        Ok(())
    }

    /// One frame from an image file: of the model's frame size, scaled to [0, 1].
    pub fn frame_from_file(&self, path: &Path) -> Result<Pixels> {
        // A frame can be no larger than the model's: the file is read no further than such an
        // image needs.
        let bytes = read_image_file(path, &self.frame_limits()).map_err(|e| match e {
            e @ Error::Io { .. } => e,
            e => Error::InvalidInput(format!("{}: {e}", path.display())),
        })?;
        self.frame_of(&bytes, &path.display())
    }

    /// [`frame_from_file`](Self::frame_from_file) of an image file already in memory (an
    /// upload); errors begin with `name`.
    pub fn frame_from_bytes(&self, bytes: &[u8], name: &str) -> Result<Pixels> {
        self.frame_of(bytes, &name)
    }

    /// No frame larger than the model's is decoded.
    fn frame_limits(&self) -> DecodeLimits {
        let (h, w) = self.spec.frame_size();
        DecodeLimits {
            max_pixels: (h as u64).saturating_mul(w as u64),
        }
    }

    /// Checks an image file already in memory against the model's frame size from its header
    /// alone, before a pixel is decoded; errors begin with `name`.
    pub fn check_frame_header(&self, bytes: &[u8], name: &str) -> Result<()> {
        self.frame_header(bytes, &name)
    }

    fn frame_header(&self, bytes: &[u8], name: &dyn Display) -> Result<()> {
        let (h, w) = self.spec.frame_size();
        let (width, height) = decoded_size(bytes, &DecodeLimits::default())
            .map_err(|e| Error::InvalidInput(format!("{name}: {e}")))?;
        if !may_match((width, height), (w as u64, h as u64)) {
            return Err(self.wrong_frame_size(name, height, width));
        }
        Ok(())
    }

    fn frame_of(&self, bytes: &[u8], name: &dyn Display) -> Result<Pixels> {
        self.frame_header(bytes, name)?;
        let image = decode_image_with_limits(bytes, &self.frame_limits())
            .map_err(|e| Error::InvalidInput(format!("{name}: {e}")))?;
        self.frame_pixels(&image, name)
    }

    fn wrong_frame_size(&self, source: &dyn Display, height: u64, width: u64) -> Error {
        let (h, w) = self.spec.frame_size();
        Error::InvalidInput(format!(
            "{source}: the model takes {h}x{w} frames (output_shape), not {height}x{width} (height x width)"
        ))
    }

    fn frame_pixels(&self, image: &RgbImage, source: &dyn Display) -> Result<Pixels> {
        let (h, w) = self.spec.frame_size();
        if (image.height(), image.width()) != (h, w) {
            return Err(self.wrong_frame_size(source, image.height() as u64, image.width() as u64));
        }
        let plane = h * w;
        let mut values = vec![0f32; IMAGE_CHANNELS * plane];
        for (i, rgb) in image.pixels().chunks_exact(IMAGE_CHANNELS).enumerate() {
            for (c, &v) in rgb.iter().enumerate() {
                values[c * plane + i] = (v as f64 / 255.0) as f32;
            }
        }
        Pixels::new(h, w, values)
    }

    /// The model's length of audio from a WAV file: its first channel (as the Colab), the first
    /// `num_frames × audio_samples_per_frame` samples, at [`sample_rate`](Self::sample_rate);
    /// integer samples scaled to [-1, 1] (16-bit ÷ 2¹⁵, as the Colab), float samples as they are
    /// (NaN or infinity is an error).
    pub fn audio_from_wav(&self, path: &Path) -> Result<Vec<f32>> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        self.wav_samples(std::io::BufReader::new(file), &path.display(), &io)
    }

    /// [`audio_from_wav`](Self::audio_from_wav) of a WAV file already in memory (an upload);
    /// errors begin with `name`.
    pub fn audio_from_wav_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let io = |source: std::io::Error| Error::InvalidInput(format!("{name}: {source}"));
        self.wav_samples(bytes, &name, &io)
    }

    fn wav_samples(
        &self,
        reader: impl std::io::Read,
        name: &dyn Display,
        io: &dyn Fn(std::io::Error) -> Error,
    ) -> Result<Vec<f32>> {
        // hound reports a file cut short as an I/O error; it is the file that is wrong.
        let wav_error = |e: hound::Error| match e {
            hound::Error::IoError(source) if ended_early(&source) => Error::InvalidInput(format!(
                "{name}: the WAV file ends inside its header (truncated, or not a WAV file)"
            )),
            hound::Error::IoError(source) => io(source),
            other => Error::InvalidInput(format!("{name}: not a WAV file we read: {other}")),
        };
        let mut reader = hound::WavReader::new(reader).map_err(wav_error)?;
        let spec = reader.spec();
        let rate = self.sample_rate();
        if spec.sample_rate != rate {
            return Err(Error::InvalidInput(format!(
                "{name}: the model takes audio at {rate} Hz (audio_samples_per_frame {} x {FRAMES_PER_SECOND} frames a second), not {} Hz: resample it",
                self.spec.audio_samples_per_frame,
                spec.sample_rate
            )));
        }
        let wanted = self.spec.audio_samples();
        let have = reader.duration() as usize;
        if have < wanted {
            return Err(Error::InvalidInput(format!(
                "{name}: the model takes {wanted} samples a channel (num_frames {} x audio_samples_per_frame {}), the file has {have}",
                self.spec.num_frames,
                self.spec.audio_samples_per_frame
            )));
        }
        let channels = spec.channels.max(1) as usize;
        // Only what the model takes is read, whatever the header claims, and only the first
        // channel is kept: memory is the model's samples however many channels are stated.
        let take = wanted.saturating_mul(channels);
        let sample_error = |e: hound::Error, read: usize| match e {
            hound::Error::IoError(source) if ended_early(&source) => Error::InvalidInput(format!(
                "{name}: the file ends after {} of the {have} samples a channel its header announces \
                     (truncated)",
                read / channels
            )),
            e => wav_error(e),
        };
        let mut samples = Vec::with_capacity(wanted);
        let mut read = 0;
        match spec.sample_format {
            hound::SampleFormat::Float => {
                for sample in reader.samples::<f32>().take(take) {
                    let sample = sample.map_err(|e| sample_error(e, read))?;
                    if read % channels == 0 {
                        samples.push(sample);
                    }
                    read += 1;
                }
            }
            hound::SampleFormat::Int => {
                let scale = (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f64;
                for sample in reader.samples::<i32>().take(take) {
                    let sample = sample.map_err(|e| sample_error(e, read))?;
                    if read % channels == 0 {
                        samples.push((sample as f64 / scale) as f32);
                    }
                    read += 1;
                }
            }
        }
        if read != take {
            return Err(sample_error(
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
                read,
            ));
        }
        // A float WAV can hold NaN or infinity, which would make every output NaN.
        if let Some(i) = crate::runtime::first_non_finite(&samples) {
            return Err(Error::InvalidInput(format!(
                "{name}: sample {i} is {}, not a finite number",
                samples[i]
            )));
        }
        Ok(samples)
    }
}

impl Autoencoder {
    /// Autoencodes the frames and audio; the `top_k` best labels (at least 1).
    pub fn autoencode(&self, frames: Vec<Pixels>, audio: Vec<f32>, top_k: usize) -> Result<AutoencodeOutput> {
        if top_k == 0 {
            return Err(top_k_zero());
        }
        let input = MultimodalInput::new(frames, audio)?;
        let reconstruction = self.model.autoencode(&input, self.chunks)?;
        let labels = top_labels(&self.labels, &probabilities(&reconstruction.label), top_k);
        Ok(AutoencodeOutput {
            reconstruction,
            labels,
        })
    }

    /// [`autoencode`](Self::autoencode) in pieces, as a service runs it so that other work can
    /// come between them: [`encode`](Self::encode) once, [`decode`](Self::decode) each of
    /// [`chunk`](Self::chunk) `0 .. chunks`, then [`assemble`](Self::assemble) the chunks'
    /// outputs: the same numbers as [`autoencode`](Self::autoencode). The clip's latents, with
    /// the decoder's keys and values projected once for all of its decodings.
    pub fn encode(&self, frames: Vec<Pixels>, audio: Vec<f32>) -> Result<EncodedClip> {
        let input = MultimodalInput::new(frames, audio)?;
        self.model.encode_clip(&input)
    }

    /// The queries of chunk `index` of [`chunks`](Self::chunks) (the label's in the last); none
    /// past the last.
    pub fn chunk(&self, index: usize) -> MultimodalQueries {
        MultimodalQueries::chunk(&self.spec, index, self.chunks)
    }

    /// Only the label's query: what naming a clip's labels needs, without reconstructing it
    /// (a small part of a whole clip's decoding).
    pub fn label_query(&self) -> MultimodalQueries {
        MultimodalQueries {
            label: true,
            ..MultimodalQueries::default()
        }
    }

    /// Decodes `queries` from [`encode`](Self::encode)'s clip ([`PerceiverModel::decode_clip`]).
    pub fn decode(&self, clip: &EncodedClip, queries: &MultimodalQueries) -> Result<DecodedQueries> {
        self.model.decode_clip(clip, queries)
    }

    /// The `top_k` best labels (at least 1) of the label's logits, with their softmax
    /// probabilities; an error unless there is a logit for each of the model's labels.
    pub fn top_labels(&self, logits: &[f32], top_k: usize) -> Result<Vec<LabelScore>> {
        if top_k == 0 {
            return Err(top_k_zero());
        }
        if logits.len() != self.labels.len() {
            return Err(Error::InvalidInput(format!(
                "{} label logits for a model of {} labels",
                logits.len(),
                self.labels.len()
            )));
        }
        Ok(top_labels(&self.labels, &probabilities(logits), top_k))
    }

    /// The reconstruction from each [`chunk`](Self::chunk)'s decoding, in chunk order, and the
    /// `top_k` best labels: what [`autoencode`](Self::autoencode) returns. An error when there
    /// are not [`chunks`](Self::chunks) of them or one's sizes are not its chunk's (the label
    /// in another place, say); chunks of equal sizes given in another order cannot be told
    /// apart.
    pub fn assemble(&self, chunks: Vec<DecodedQueries>, top_k: usize) -> Result<AutoencodeOutput> {
        if chunks.len() != self.chunks {
            return Err(Error::InvalidInput(format!(
                "{} decoded chunks for an autoencoder that decodes in {}",
                chunks.len(),
                self.chunks
            )));
        }
        let [frames, height, width] = self.spec.output_dims;
        let mut reconstruction = MultimodalOutput {
            frames,
            height,
            width,
            image: Vec::with_capacity(self.spec.image_queries() * IMAGE_CHANNELS),
            audio: Vec::with_capacity(self.spec.audio_samples()),
            label: Vec::new(),
        };
        let mut label = None;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let (audio, image, has_label) = MultimodalQueries::chunk_ranges(&self.spec, index, self.chunks);
            let sizes = (chunk.image.len(), chunk.audio.len(), chunk.label.is_some());
            let expected = (
                image.len() * IMAGE_CHANNELS,
                audio.len() * self.spec.samples_per_patch,
                has_label,
            );
            if sizes != expected {
                return Err(Error::InvalidInput(format!(
                    "decoded chunk {index} has {} image and {} audio values{}, not chunk {index}'s {} and {}{}",
                    sizes.0,
                    sizes.1,
                    if sizes.2 { " and the label" } else { "" },
                    expected.0,
                    expected.1,
                    if expected.2 { " and the label" } else { "" },
                )));
            }
            reconstruction.image.extend(chunk.image);
            reconstruction.audio.extend(chunk.audio);
            label = label.or(chunk.label);
        }
        reconstruction.label = label.unwrap_or_default();
        let labels = self.top_labels(&reconstruction.label, top_k)?;
        Ok(AutoencodeOutput {
            reconstruction,
            labels,
        })
    }

    /// The reconstructed frames as images, values clamped to [0, 1] and rounded to 8 bits.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `output`'s fields disagree: a size of zero, sides beyond a
    /// PNG's, or image values that are not `frames × height × width × 3`.
    pub fn frame_images(&self, output: &MultimodalOutput) -> Result<Vec<RgbImage>> {
        // The fields are public: check them before they size anything.
        let plane = output
            .height
            .checked_mul(output.width)
            .and_then(|n| n.checked_mul(IMAGE_CHANNELS));
        let whole = plane.and_then(|p| p.checked_mul(output.frames));
        let fits_png = |side: usize| side > 0 && u32::try_from(side).is_ok();
        let (Some(plane), Some(whole)) = (plane, whole) else {
            return Err(frames_mismatch(output));
        };
        if output.frames == 0
            || !fits_png(output.height)
            || !fits_png(output.width)
            || whole != output.image.len()
        {
            return Err(frames_mismatch(output));
        }
        Ok(output
            .image
            .chunks_exact(plane)
            .map(|frame| {
                let bytes = frame
                    .iter()
                    .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect();
                // The sizes were checked above: whole frames whose sides fit a PNG.
                RgbImage::from_raw_unchecked(output.width, output.height, bytes)
            })
            .collect())
    }

    /// Writes the reconstructed frames ([`frame_images`](Self::frame_images)) as PNG files
    /// `frame_000.png`, … into `dir` (created if missing); their paths.
    ///
    /// # Errors
    /// As [`frame_images`](Self::frame_images), before anything is written; [`Error::Write`]
    /// when a file cannot be written.
    pub fn write_frames(&self, output: &MultimodalOutput, dir: &Path) -> Result<Vec<PathBuf>> {
        let images = self.frame_images(output)?;
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths = Vec::with_capacity(images.len());
        for (t, image) in images.iter().enumerate() {
            let path = dir.join(format!("frame_{t:03}.png"));
            image.save_png(&path)?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// The reconstructed audio as a mono 32-bit float WAV file at
    /// [`sample_rate`](Self::sample_rate) (as the Colab's `scipy.io.wavfile.write` of float32).
    pub fn wav_bytes(&self, output: &MultimodalOutput) -> Result<Vec<u8>> {
        let failed =
            |e: hound::Error| Error::InvalidInput(format!("the audio could not be encoded as WAV: {e}"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: self.sample_rate(),
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut bytes = Vec::with_capacity(64 + output.audio.len() * 4);
        let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).map_err(failed)?;
        for &sample in &output.audio {
            writer.write_sample(sample).map_err(failed)?;
        }
        writer.finalize().map_err(failed)?;
        Ok(bytes)
    }

    /// Writes [`wav_bytes`](Self::wav_bytes) to `path`.
    pub fn write_wav(&self, output: &MultimodalOutput, path: &Path) -> Result<()> {
        let bytes = self.wav_bytes(output)?;
        std::fs::write(path, bytes).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Natural order: runs of ASCII digits compare as numbers, so ffmpeg's `%d.png` frames come in
/// frame order (`2.png` before `10.png`); other bytes compare as bytes, and names equal as numbers
/// (`01`, `1`) by their bytes.
fn natural_order(a: &[u8], b: &[u8]) -> Ordering {
    fn digit_run(s: &[u8]) -> usize {
        s.iter().take_while(|c| c.is_ascii_digit()).count()
    }
    fn without_zeros(run: &[u8]) -> &[u8] {
        &run[run.iter().take_while(|&&c| c == b'0').count()..]
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let order = if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (end_a, end_b) = (i + digit_run(&a[i..]), j + digit_run(&b[j..]));
            let (x, y) = (without_zeros(&a[i..end_a]), without_zeros(&b[j..end_b]));
            (i, j) = (end_a, end_b);
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            (i, j) = (i + 1, j + 1);
            a[i - 1].cmp(&b[j - 1])
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn frames_mismatch(output: &MultimodalOutput) -> Error {
    Error::InvalidInput(format!(
        "{} image values are not {} frames of {}x{} RGB pixels",
        output.image.len(),
        output.frames,
        output.height,
        output.width
    ))
}

#[cfg(test)]
mod tests {
    use super::natural_order;

    #[test]
    fn frames_sort_in_natural_order() {
        let mut names = [
            "10.png",
            "9.png",
            "frame_2.png",
            "frame_10.png",
            "01.png",
            "1.png",
            "b.png",
            "a.png",
        ];
        names.sort_by(|a, b| natural_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(
            names,
            [
                "01.png",
                "1.png",
                "9.png",
                "10.png",
                "a.png",
                "b.png",
                "frame_2.png",
                "frame_10.png"
            ]
        );
    }
}
