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

use super::InputArray;
use crate::checkpoint::names::{Modality, MultimodalNames};
use crate::checkpoint::Param;
use crate::config::{MultimodalSpec, IMAGE_CHANNELS, VIDEO_PATCH};
use crate::error::{Error, Result};
use crate::image::processor::check_finite;
use crate::image::Pixels;
use crate::position::FourierCache;
use crate::runtime::item_ranges;

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
    audio_fourier: FourierCache<1>,
    video_fourier: FourierCache<3>,
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
            audio_fourier: FourierCache::new(spec.audio_fourier()),
            video_fourier: FourierCache::new(spec.video_fourier()),
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

    /// The encoder's input for each video, `[audio patches + video patches + 1, channels]` each.
    pub fn forward(&self, inputs: &[&MultimodalInput]) -> Result<InputArray> {
        for input in inputs {
            self.check(input)?;
        }
        let s = &self.spec;
        let channels = self.channels();
        let rows = s.input_rows();
        let mut values = Vec::with_capacity(inputs.len() * rows * channels);
        let audio_positions = self.audio_fourier.get([s.audio_patches()]);
        let grid = s.patch_grid();
        let video_positions = self.video_fourier.get(grid);
        let (height, width) = s.frame_size();
        let [audio_padding, image_padding, _] = &self.padding;
        for input in inputs {
            let audio_width = s.audio_fourier().channels();
            for (samples, position) in input
                .audio
                .chunks_exact(s.samples_per_patch)
                .zip(audio_positions.chunks_exact(audio_width))
            {
                values.extend_from_slice(samples);
                values.extend_from_slice(position);
                values.extend_from_slice(audio_padding.data());
            }
            let video_width = s.video_fourier().channels();
            let mut positions = video_positions.chunks_exact(video_width);
            let plane = height * width;
            for frame in &input.frames {
                for py in 0..grid[1] {
                    for px in 0..grid[2] {
                        // space_to_depth: the patch's rows, its columns, then the colours.
                        for dy in 0..VIDEO_PATCH {
                            let y = py * VIDEO_PATCH + dy;
                            for dx in 0..VIDEO_PATCH {
                                let x = px * VIDEO_PATCH + dx;
                                for c in 0..IMAGE_CHANNELS {
                                    values.push(frame.values[c * plane + y * width + x]);
                                }
                            }
                        }
                        values.extend_from_slice(positions.next().unwrap_or_default());
                        values.extend_from_slice(image_padding.data());
                    }
                }
            }
            values.extend_from_slice(self.label_mask.data());
        }
        debug_assert_eq!(values.len(), inputs.len() * rows * channels);
        Ok(InputArray {
            values,
            items: item_ranges(std::iter::repeat_n(rows, inputs.len())),
        })
    }
}
