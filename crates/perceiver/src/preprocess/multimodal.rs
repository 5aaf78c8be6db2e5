//! The multimodal autoencoder's input part (transformers' `PerceiverMultimodalPreprocessor` with
//! its audio, image and one-hot preprocessors as `PerceiverForMultimodalAutoencoding` builds them;
//! DeepMind's `MultimodalPreprocessor` in the video-autoencoding Colab): a video and its audio →
//! one array of rows, in transformers' sorted modality order.
//!
//! - Audio: patches of `samples_per_patch` samples, then the patch's Fourier features (192 bands
//!   over the audio's length, the patches on `linspace(-1, 1)`).
//! - Video: each frame cut into 4 × 4 patches (`space_to_depth`: 48 values, row, column, colour),
//!   then the patch's Fourier features over (frame, patch row, patch column) (32 bands each, top
//!   frequencies from `(num_frames, image_size, image_size)`). transformers takes frames of any
//!   size; this takes those of the reconstruction's size (`output_shape`), as the Colab does.
//! - Label: one row, always replaced by the trainable mask token: the model's `mask_probs` give
//!   the label probability 1 (the audio and video 0), in evaluation too, so no label value ever
//!   reaches the model and none is taken here.
//!
//! Every modality's rows are padded to the common width with the modality's trainable row.

use std::ops::Range;

use super::{fill_rows, whole_array, InputArray, RowSource};
use crate::checkpoint::names::{Modality, MultimodalNames};
use crate::checkpoint::Param;
use crate::config::{MultimodalSpec, IMAGE_CHANNELS, VIDEO_PATCH};
use crate::error::{Error, Result};
use crate::image::processor::check_finite;
use crate::image::Pixels;
use crate::position::FourierGrid;

/// A video and its audio, the multimodal autoencoder's input: frames channels first
/// (`[3, height, width]` each, as transformers' `[batch, frames, 3, height, width]`; DeepMind's
/// Colab scales 8-bit frames to [0, 1]) and mono samples (in [-1, 1] in the Colab).
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalInput {
    frames: Vec<Pixels>,
    audio: Vec<f32>,
}

impl MultimodalInput {
    /// The frames (at least one, all of one size, each [checked](Pixels::check)) and the audio
    /// samples (finite); the model checks their counts against its config.
    pub fn new(frames: Vec<Pixels>, audio: Vec<f32>) -> Result<Self> {
        let Some(first) = frames.first() else {
            return Err(Error::InvalidInput("a video needs at least one frame".into()));
        };
        let (h, w) = (first.height, first.width);
        for (i, frame) in frames.iter().enumerate() {
            if (frame.height, frame.width) != (h, w) {
                return Err(Error::InvalidInput(format!(
                    "frame {i} is {}x{}, frame 0 {h}x{w} (height x width): the frames of a video share one size",
                    frame.height, frame.width
                )));
            }
            frame
                .check()
                .map_err(|e| Error::InvalidInput(format!("frame {i}: {e}")))?;
        }
        check_finite(&audio, "audio sample")?;
        Ok(Self { frames, audio })
    }

    /// The frames.
    pub fn frames(&self) -> &[Pixels] {
        &self.frames
    }

    /// The audio samples.
    pub fn audio(&self) -> &[f32] {
        &self.audio
    }
}

/// Video + audio → the encoder's input: audio rows, video rows, the masked label row.
#[derive(Debug, Clone)]
pub struct MultimodalPreprocessor {
    spec: MultimodalSpec,
    /// Per modality (audio, image, label): the row appended to each of its rows.
    padding: [Param; 3],
    /// The label's mask token, which is the label's whole row.
    label_mask: Param,
    /// The audio patches' Fourier features, a row at a time.
    audio_positions: FourierGrid<1>,
    /// The video patches' Fourier features over (frame, patch row, patch column), a row at a
    /// time.
    video_positions: FourierGrid<3>,
}

impl MultimodalPreprocessor {
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        spec: MultimodalSpec,
        names: &MultimodalNames,
    ) -> Result<Self> {
        let [audio, image, label] = &names.input_padding;
        // The audio's and video's mask tokens are in the checkpoint, but their masking
        // probability is 0: they are checked by the loader and never read.
        Ok(Self {
            spec,
            padding: [get(&audio.name)?, get(&image.name)?, get(&label.name)?],
            label_mask: get(&names.mask[Modality::Label as usize].name)?,
            audio_positions: FourierGrid::new(&spec.audio_fourier(), [spec.audio_patches()]),
            video_positions: FourierGrid::new(&spec.video_fourier(), spec.patch_grid()),
        })
    }

    /// Channels of each row it makes.
    pub fn channels(&self) -> usize {
        self.spec.input_channels()
    }

    /// The sizes it reads.
    pub fn spec(&self) -> &MultimodalSpec {
        &self.spec
    }

    /// Checks one input against the model's sizes.
    pub fn check(&self, input: &MultimodalInput) -> Result<()> {
        let s = &self.spec;
        if input.frames.len() != s.num_frames {
            return Err(Error::InvalidInput(format!(
                "the model takes {} frames (num_frames), not {}",
                s.num_frames,
                input.frames.len()
            )));
        }
        let frame = &input.frames[0];
        let (h, w) = s.frame_size();
        if (frame.height, frame.width) != (h, w) {
            return Err(Error::InvalidInput(format!(
                "the model takes {h}x{w} frames (output_shape), not {}x{} (height x width)",
                frame.height, frame.width
            )));
        }
        if input.audio.len() != s.audio_samples() {
            return Err(Error::InvalidInput(format!(
                "the model takes {} audio samples (num_frames {} x audio_samples_per_frame {}, one channel), not {}",
                s.audio_samples(),
                s.num_frames,
                s.audio_samples_per_frame,
                input.audio.len()
            )));
        }
        Ok(())
    }

    /// One video's rows of the encoder's input, made as they are filled: the encoder streams
    /// them a block at a time, so that the 52,097 rows of a released-size clip (with their
    /// normed copy, keys and values) are never whole.
    pub(crate) fn rows<'a>(&'a self, input: &'a MultimodalInput) -> Result<MultimodalRows<'a>> {
        self.check(input)?;
        Ok(MultimodalRows {
            preprocessor: self,
            input,
        })
    }

    /// The encoder's input for each video, whole: `[audio patches + video patches + 1,
    /// channels]` each, the rows the model's own pass makes a block at a time.
    pub fn forward(&self, inputs: &[&MultimodalInput]) -> Result<InputArray> {
        inputs.iter().try_for_each(|input| self.check(input))?;
        whole_array(inputs.iter().map(|input| self.rows(input)))
    }
}

/// One video's rows of the multimodal encoder's input ([`MultimodalPreprocessor::rows`]): its
/// audio patches, its video patches, then the label's mask token, each with its Fourier
/// features and its modality's padding.
pub(crate) struct MultimodalRows<'a> {
    preprocessor: &'a MultimodalPreprocessor,
    input: &'a MultimodalInput,
}

impl MultimodalRows<'_> {
    /// Row `r` into `out`.
    fn row_into(&self, r: usize, out: &mut [f32]) {
        let p = self.preprocessor;
        let s = &p.spec;
        let [audio_padding, image_padding, _] = &p.padding;
        let audio_patches = s.audio_patches();
        if r < audio_patches {
            let (samples, rest) = out.split_at_mut(s.samples_per_patch);
            samples.copy_from_slice(&self.input.audio[r * s.samples_per_patch..][..s.samples_per_patch]);
            let (positions, padding) = rest.split_at_mut(p.audio_positions.channels());
            p.audio_positions.row_into(r, positions);
            padding.copy_from_slice(audio_padding.data());
            return;
        }
        let patch = r - audio_patches;
        if patch == s.video_rows() {
            out.copy_from_slice(p.label_mask.data());
            return;
        }
        let [_, rows, columns] = s.patch_grid();
        let frame = &self.input.frames[patch / (rows * columns)];
        let (py, px) = (patch / columns % rows, patch % columns);
        let (height, width) = s.frame_size();
        let plane = height * width;
        let (pixels, rest) = out.split_at_mut(VIDEO_PATCH * VIDEO_PATCH * IMAGE_CHANNELS);
        // space_to_depth: the patch's rows, its columns, then the colours.
        let mut values = pixels.iter_mut();
        for dy in 0..VIDEO_PATCH {
            let y = py * VIDEO_PATCH + dy;
            for dx in 0..VIDEO_PATCH {
                let x = px * VIDEO_PATCH + dx;
                for (c, value) in values.by_ref().take(IMAGE_CHANNELS).enumerate() {
                    *value = frame.values[c * plane + y * width + x];
                }
            }
        }
        let (positions, padding) = rest.split_at_mut(p.video_positions.channels());
        p.video_positions.row_into(patch, positions);
        padding.copy_from_slice(image_padding.data());
    }
}

impl RowSource for MultimodalRows<'_> {
    fn len(&self) -> usize {
        self.preprocessor.spec.input_rows()
    }

    fn channels(&self) -> usize {
        self.preprocessor.channels()
    }

    fn fill(&self, rows: Range<usize>, out: &mut [f32]) {
        assert!(rows.end <= self.len());
        fill_rows(rows, self.channels(), out, |r, row| self.row_into(r, row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::fourier_features;
    use crate::preprocess::Preprocessor;
    use crate::{Loader, PerceiverModel, Precision};

    const TINY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/multimodal/tiny_multimodal"
    );

    /// The tiny fixture (16 × 16 frames), and its weights under `variant.json`'s sizes (16 × 12
    /// frames: rows and columns of patches that a swap would mix up).
    fn tiny_models() -> [PerceiverModel; 2] {
        let checkpoint = Loader::new(TINY).checkpoint().unwrap();
        let read = |name: &str| std::fs::read_to_string(std::path::Path::new(TINY).join(name)).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&read("config.json")).unwrap();
        let variant: serde_json::Value = serde_json::from_str(&read("variant.json")).unwrap();
        for (key, value) in variant.as_object().unwrap() {
            config[key] = value.clone();
        }
        let config = crate::PerceiverConfig::from_json_str(&config.to_string()).unwrap();
        let variant = PerceiverModel::from_params(&config, &mut |name| checkpoint.get(name), Precision::F32);
        [Loader::new(TINY).load().unwrap(), variant.unwrap()]
    }

    /// A clip of the model's sizes whose values name their place: frame f's value i is
    /// `f·10⁶ + i`, audio sample i is `-1 - i`.
    fn numbered(spec: &MultimodalSpec) -> MultimodalInput {
        let (h, w) = spec.frame_size();
        let frames = (0..spec.num_frames)
            .map(|f| Pixels::new(h, w, (0..3 * h * w).map(|i| (f * 1_000_000 + i) as f32).collect()).unwrap())
            .collect();
        let audio = (0..spec.audio_samples()).map(|i| -1.0 - i as f32).collect();
        MultimodalInput::new(frames, audio).unwrap()
    }

    /// The rows as transformers lays them out, spelled out over whole arrays: audio patches with
    /// the features of `fourier_features` over the patches, then every frame's 4 × 4 patches
    /// (`space_to_depth`) with those over (frame, patch row, patch column), then the label's
    /// mask token; each modality padded with its row.
    fn layout(p: &MultimodalPreprocessor, input: &MultimodalInput) -> Vec<f32> {
        let s = p.spec();
        let [audio_padding, image_padding, _] = &p.padding;
        let mut out = Vec::new();
        let audio_positions = fourier_features(&s.audio_fourier(), [s.audio_patches()]);
        let audio_width = audio_positions.len() / s.audio_patches();
        for (i, samples) in input.audio().chunks_exact(s.samples_per_patch).enumerate() {
            out.extend_from_slice(samples);
            out.extend_from_slice(&audio_positions[i * audio_width..][..audio_width]);
            out.extend_from_slice(audio_padding.data());
        }
        let grid = s.patch_grid();
        let video_positions = fourier_features(&s.video_fourier(), grid);
        let video_width = video_positions.len() / s.video_rows();
        let (h, w) = s.frame_size();
        for (f, frame) in input.frames().iter().enumerate() {
            for py in 0..grid[1] {
                for px in 0..grid[2] {
                    for dy in 0..VIDEO_PATCH {
                        for dx in 0..VIDEO_PATCH {
                            let (y, x) = (py * VIDEO_PATCH + dy, px * VIDEO_PATCH + dx);
                            out.extend((0..3).map(|c| frame.values[c * h * w + y * w + x]));
                        }
                    }
                    let patch = (f * grid[1] + py) * grid[2] + px;
                    out.extend_from_slice(&video_positions[patch * video_width..][..video_width]);
                    out.extend_from_slice(image_padding.data());
                }
            }
        }
        out.extend_from_slice(p.label_mask.data());
        out
    }

    #[test]
    fn rows_in_blocks_of_any_size_are_the_whole_layout() {
        for model in tiny_models() {
            let Preprocessor::Multimodal(p) = model.preprocessor() else {
                panic!("the tiny multimodal fixture has a multimodal preprocessor")
            };
            check_rows(p);
        }
    }

    fn check_rows(p: &MultimodalPreprocessor) {
        let input = numbered(p.spec());
        let expected = layout(p, &input);
        let rows = p.rows(&input).unwrap();
        let (n, c) = (rows.len(), rows.channels());
        assert_eq!((n, c), (p.spec().input_rows(), p.spec().input_channels()));
        assert_eq!(expected.len(), n * c);
        for block in [1, 7, 100, n] {
            let mut got = vec![f32::NAN; n * c];
            for start in (0..n).step_by(block) {
                let end = (start + block).min(n);
                rows.fill(start..end, &mut got[start * c..end * c]);
            }
            assert!(
                got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
                "blocks of {block} rows"
            );
        }
        let array = p.forward(&[&input, &input]).unwrap();
        assert_eq!(array.items, [0..n, n..2 * n]);
        assert_eq!(array.values, [&expected[..], &expected[..]].concat());
    }
}
