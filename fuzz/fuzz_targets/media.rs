//! The readers of pictures, video and flow fields on arbitrary bytes, under small limits: no
//! panic, and what they return holds the pixels its size says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perceiver::flow::color::flow_to_rgb;
use perceiver::flow::flo::read_flo;
use perceiver::image::{
    decode_image_with_limits, read_y4m, DecodeLimits, ImageProcessor, ImageProcessorConfig, RgbImage,
};

/// Small enough that a header cannot make a run slow; the real bound is checked the same way.
const MAX_PIXELS: u64 = 1 << 16;

fn check_image(image: &RgbImage) {
    assert!(image.width() > 0 && image.height() > 0);
    assert!((image.width() * image.height()) as u64 <= MAX_PIXELS);
    assert_eq!(image.pixels().len(), 3 * image.width() * image.height());
}

fuzz_target!(|data: &[u8]| {
    // First byte: which reader; the rest: the file.
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let limits = DecodeLimits {
        max_pixels: MAX_PIXELS,
    };
    match kind % 3 {
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
