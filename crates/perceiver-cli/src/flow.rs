//! `perceiver flow`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::flow::{color_wheel, save_flo, write_flow_png, MAX_PIXELS};
use perceiver::image::{
    decode_image_with_limits, decoded_size, may_match, read_image_file, DecodeLimits, RgbImage,
};
use perceiver::tasks::flow::{FlowOutput, OpticalFlow};

use crate::model::{image_error, EngineArgs, ModelArgs};
use crate::numbers::whole;
use crate::outputs;
use crate::progress;

#[derive(Args)]
#[command(
    after_help = "Example:\n  perceiver flow --model deepmind/optical-flow-perceiver frame1.png frame2.png --out flow.png --flo flow.flo"
)]
pub struct FlowArgs {
    /// The earlier frame (PNG, JPEG, WebP, BMP, GIF or TIFF).
    frame1: PathBuf,

    /// The later frame, the same size as the first; at least the model's tile (368x496 for
    /// the released model).
    frame2: PathBuf,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    engine: EngineArgs,

    /// Write the flow as a picture (PNG): the Middlebury colour wheel, hue the direction,
    /// saturation the magnitude.
    #[arg(long, value_name = "PNG")]
    out: Option<PathBuf>,

    /// Write the flow as a Middlebury .flo file (u, v as float32 per pixel).
    #[arg(long, value_name = "FILE")]
    flo: Option<PathBuf>,

    /// Print one JSON line: the size, the mean and largest flow magnitude and the tiles run.
    #[arg(long)]
    json: bool,

    /// The magnitude (pixels) at which the picture's colours saturate; default the largest
    /// magnitude in the field.
    #[arg(long, value_name = "PIXELS")]
    max_flow: Option<f32>,

    /// Also write the colour key (PNG): the colour of each motion, saturating at the circle.
    #[arg(long, value_name = "PNG")]
    legend: Option<PathBuf>,

    /// Largest frame, in pixels (width × height, read from the file's header before decoding);
    /// larger ones are an error. A frame costs some 40 bytes a pixel and one model pass per
    /// tile. Default and most: 134,217,728 (2^27), the most a flow field holds (below Pillow's
    /// limit of 178,956,970, which transformers keeps).
    #[arg(long, default_value_t = MAX_FRAME_PIXELS, value_parser = whole::<u64>(1, MAX_FRAME_PIXELS))]
    max_image_pixels: u64,
}

/// The largest frame `--max-image-pixels` allows: the smaller of Pillow's limit and the flow
/// field's ([`perceiver::flow::MAX_PIXELS`]); a frame between the two would be refused only after
/// the model loaded.
const MAX_FRAME_PIXELS: u64 = if (MAX_PIXELS as u64) < DecodeLimits::PIL_MAX_PIXELS {
    MAX_PIXELS as u64
} else {
    DecodeLimits::PIL_MAX_PIXELS
};

/// Side of the colour key picture.
const LEGEND_SIZE: usize = 256;

pub fn run(args: FlowArgs) -> Result<()> {
    if args.out.is_none() && args.flo.is_none() && !args.json {
        let key = if args.legend.is_some() {
            " (--legend writes the colour key beside one of them)"
        } else {
            ""
        };
        bail!("nothing to write: give --out flow.png, --flo flow.flo or --json{key}");
    }
    for (flag, path) in [("--out", &args.out), ("--legend", &args.legend)] {
        if let Some(path) = path {
            let png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if !png {
                bail!("{flag} writes a PNG: name it *.png, not {}", path.display());
            }
        }
    }
    let outputs: Vec<(&str, &Path)> = [
        ("--out", &args.out),
        ("--flo", &args.flo),
        ("--legend", &args.legend),
    ]
    .into_iter()
    .filter_map(|(flag, path)| Some((flag, path.as_deref()?)))
    .collect();
    outputs::check_files(&[&args.frame1, &args.frame2], &outputs)?;
    // The summary goes to standard output, unless an output file is written there: then the
    // lines go to standard error, and a JSON summary (which would corrupt the file) is refused.
    let into_stdout = outputs.iter().find(|(_, path)| outputs::is_stdout(path));
    if let (Some((flag, path)), true) = (into_stdout, args.json) {
        bail!(
            "{flag} {} writes to standard output, where --json would print too: leave out --json, \
             or give {flag} a file",
            path.display()
        );
    }
    if let Some(max) = args.max_flow {
        if !(max.is_finite() && max > 0.0) {
            bail!("--max-flow must be a positive number of pixels, not {max}");
        }
    }
    let limits = DecodeLimits {
        max_pixels: args.max_image_pixels,
    };
    let first_file = read_frame_file(&args.frame1, &limits)?;
    let second_file = read_frame_file(&args.frame2, &limits)?;
    // Sizes from the headers first, so that a second frame of another size is refused before
    // it is decoded (the EXIF orientation, applied when decoding, may swap a side pair).
    let size = |bytes: &[u8], path: &Path| {
        decoded_size(bytes, &limits)
            .map_err(image_error)
            .with_context(|| format!("frame {}", path.display()))
    };
    let (w1, h1) = size(&first_file, &args.frame1)?;
    let (w2, h2) = size(&second_file, &args.frame2)?;
    if !may_match((w1, h1), (w2, h2)) {
        bail!(
            "the frames differ in size: {} is {h1}x{w1}, {} is {h2}x{w2} (height x width)",
            args.frame1.display(),
            args.frame2.display(),
        );
    }
    let first = decode_frame(&first_file, &args.frame1, &limits)?;
    drop(first_file);
    let second = decode_frame(&second_file, &args.frame2, &limits)?;
    drop(second_file);
    if (first.height(), first.width()) != (second.height(), second.width()) {
        bail!(
            "the frames differ in size: {} is {}x{}, {} is {}x{} (height x width)",
            args.frame1.display(),
            first.height(),
            first.width(),
            args.frame2.display(),
            second.height(),
            second.width()
        );
    }
    args.model.check_task(OpticalFlow::check_architecture)?;
    let model = args.model.load_engine(args.engine.precision)?;
    let task = OpticalFlow::new(model)?;
    // Checked before the model runs: a frame smaller than the tile is refused here.
    let tiles = task.distinct_tiles(first.height(), first.width())?;
    let bar = progress::bar(tiles.len(), "tiles");
    let output =
        task.flow_images_with_progress(&first, &second, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();

    let mut staged = outputs::Staged::default();
    if let Some(path) = &args.out {
        staged.write(path, |to| Ok(write_flow_png(&output.field, args.max_flow, to)?))?;
    }
    if let Some(path) = &args.flo {
        staged.write(path, |to| Ok(save_flo(&output.field, to)?))?;
    }
    if let Some(path) = &args.legend {
        staged.write(path, |to| Ok(color_wheel(LEGEND_SIZE)?.save_png(to)?))?;
    }
    staged.finish()?;
    let mut out: Box<dyn Write> = match into_stdout {
        Some(_) => Box::new(std::io::stderr().lock()),
        None => Box::new(std::io::stdout().lock()),
    };
    if args.json {
        serde_json::to_writer(&mut out, &summary(&output))?;
        writeln!(out)?;
    } else {
        let stats = output.field.stats();
        let (th, tw) = output.tile_size;
        writeln!(
            out,
            "flow {}x{}: mean {:.3} px, max {:.3} px, {} tile(s) of {th}x{tw}",
            output.field.height(),
            output.field.width(),
            stats.mean_magnitude,
            stats.max_magnitude,
            output.tiles.len()
        )?;
        for (what, path) in [
            ("picture", &args.out),
            ("flow", &args.flo),
            ("colour key", &args.legend),
        ] {
            if let Some(path) = path {
                writeln!(out, "wrote {what} {}", path.display())?;
            }
        }
    }
    Ok(())
}

/// A frame's file, read no further than an image within `limits` needs.
fn read_frame_file(path: &Path, limits: &DecodeLimits) -> Result<Vec<u8>> {
    read_image_file(path, limits).map_err(|e| match e {
        // It names the file already.
        e @ perceiver::Error::Io { .. } => e.into(),
        e => image_error(e).context(format!("frame {}", path.display())),
    })
}

fn decode_frame(bytes: &[u8], path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    decode_image_with_limits(bytes, limits)
        .map_err(image_error)
        .with_context(|| format!("frame {}", path.display()))
}

fn summary(output: &FlowOutput) -> serde_json::Value {
    let stats = output.field.stats();
    let (th, tw) = output.tile_size;
    serde_json::json!({
        "height": output.field.height(),
        "width": output.field.width(),
        "mean_magnitude": stats.mean_magnitude,
        "max_magnitude": stats.max_magnitude,
        "tile": {"height": th, "width": tw},
        "tiles": output.tiles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_limit_is_the_flow_fields() {
        // The flag's help and docs/CLI.md give this number.
        assert_eq!(MAX_FRAME_PIXELS, 134_217_728);
    }
}
