//! The readers of pictures, video, audio and flow fields on arbitrary bytes, under small limits:
//! no panic, and what they return holds the pixels (or samples) its size says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perceiver::config::MultimodalSpec;
use perceiver::flow::color::flow_to_rgb;
use perceiver::flow::flo::read_flo;
use perceiver::image::{
    decode_image_with_limits, read_y4m, DecodeLimits, ImageProcessor, ImageProcessorConfig, Pixels, RgbImage,
};
use perceiver::tasks::autoencode::InputReader;

/// Small enough that a header cannot make a run slow; the real bound is checked the same way.
const MAX_PIXELS: u64 = 1 << 16;

fn check_image(image: &RgbImage) {
    assert!(image.width() > 0 && image.height() > 0);
    assert!((image.width() * image.height()) as u64 <= MAX_PIXELS);
    assert_eq!(image.pixels().len(), 3 * image.width() * image.height());
}

/// A small autoencoder's reader: 2 frames of 16 × 16 and 96 samples at 1,200 Hz (the test
/// fixture's), so that a file can hold a whole clip.
fn clip_reader() -> InputReader {
    InputReader::new(MultimodalSpec {
        num_frames: 2,
        image_size: 4,
        audio_samples_per_frame: 48,
        samples_per_patch: 16,
        output_dims: [2, 16, 16],
        output_num_channels: 8,
        label_query_channels: 8,
        num_labels: 4,
    })
}

fn check_frames(frames: &[Pixels]) {
    assert_eq!(frames.len(), 2);
    for frame in frames {
        assert_eq!((frame.height, frame.width), (16, 16));
        assert_eq!(frame.values.len(), 3 * 16 * 16);
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: which reader; the rest: the file.
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let limits = DecodeLimits {
        max_pixels: MAX_PIXELS,
    };
    match kind % 5 {
        0 => {
            if let Ok(frames) = read_y4m(bytes, 3, &limits) {
                assert!(frames.len() <= 3);
                frames.iter().for_each(check_image);
            }
        }
        1 => {
            if let Ok(field) = read_flo(bytes) {
                assert_eq!(field.values().len(), 2 * field.width() * field.height());
                // The colour picture takes any value, NaN and infinities included.
                let picture = flow_to_rgb(&field, None).expect("a field read is drawn");
                let size = (picture.width(), picture.height());
                assert_eq!(size, (field.width(), field.height()));
            }
        }
        3 => {
            // A clip's audio, as `perceiver autoencode` and POST /autoencode read it.
            if let Ok(samples) = clip_reader().audio_from_wav_bytes(bytes, "audio") {
                assert_eq!(samples.len(), 96);
                assert!(samples.iter().all(|s| s.is_finite()));
            }
        }
        4 => {
            // A clip's frames: the header checks the service runs before decoding, then the
            // frames themselves, as a .y4m video or one image file.
            let reader = clip_reader();
            let _ = reader.check_y4m_header(bytes, "video");
            if let Ok(frames) = reader.frames_from_y4m_bytes(bytes, "video") {
                check_frames(&frames);
            }
            if reader.check_frame_header(bytes, "frame").is_ok() {
                if let Ok(frame) = reader.frame_from_bytes(bytes, "frame") {
                    check_frames(&[frame.clone(), frame]);
                }
            }
        }
        _ => {
            if let Ok(image) = decode_image_with_limits(bytes, &limits) {
                check_image(&image);
                // The ImageNet models' crop and resize: a picture too small to crop is refused,
                // never a panic.
                let processor = ImageProcessor::new(ImageProcessorConfig::default()).expect("default config");
                let _ = processor.preprocess(&image);
            }
        }
    }
});
