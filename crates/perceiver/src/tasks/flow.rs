//! Optical flow between two frames of any size at least the model's tile size, as DeepMind's
//! optical-flow Colab computes it: the frames scaled to [-1, 1], cut into overlapping tiles of
//! the training size (`compute_grid_indices`: at least 20 pixels of overlap, the last tile flush
//! with the border), each tile's flow weighted by its distance to the tile's edge, the weighted
//! sum divided by the summed weights.
//!
//! Flow is in pixels: the model's output × 20 (the Colab's `FLOW_SCALE_FACTOR`; transformers'
//! logits are the model's output before it). u is the motion to the right, v downwards.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::Architecture;
use crate::error::{Error, Result};
use crate::flow::{FlowField, MAX_PIXELS};
use crate::image::RgbImage;
use crate::model::PerceiverModel;
use crate::preprocess::FramePair;

/// The Colab's `FLOW_SCALE_FACTOR`: the model's output × this is flow in pixels.
pub const FLOW_SCALE_FACTOR: f32 = 20.0;

/// The Colab's `min_overlap`: neighbouring tiles share at least this many rows or columns.
pub const MIN_OVERLAP: usize = 20;

/// One tile of a flow computation: its top-left pixel (its size is the model's tile size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Tile {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
}

/// A flow field and the tiles it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowOutput {
    /// Flow in pixels, `[height, width, 2]`.
    pub field: FlowField,
    /// The distinct tiles of the [grid](OpticalFlow::grid), in the order they ran (rows of
    /// tiles top to bottom, each left to right): one model pass each.
    pub tiles: Vec<Tile>,
    /// Each tile's height and width.
    pub tile_size: (usize, usize),
}

/// Optical flow on `PerceiverForOpticalFlow`.
#[derive(Debug, Clone)]
pub struct OpticalFlow {
    model: PerceiverModel,
    min_overlap: usize,
}

impl OpticalFlow {
    /// An error unless the task runs on models of this architecture: what [`new`](Self::new)
    /// checks first, for checking a config before its weights load.
    pub fn check_architecture(architecture: Architecture) -> Result<()> {
        if architecture != Architecture::OpticalFlow {
            return Err(Error::InvalidInput(format!(
                "optical flow needs a PerceiverForOpticalFlow model, not a {}",
                architecture.name()
            )));
        }
        Ok(())
    }

    /// The task on an optical-flow model; an error for a model of another architecture, or one
    /// whose tile is too small for the Colab's 20-pixel overlap.
    pub fn new(model: PerceiverModel) -> Result<Self> {
        Self::check_architecture(model.architecture())?;
        Self {
            model,
            min_overlap: 0,
        }
        .with_min_overlap(MIN_OVERLAP)
    }

    /// Sets the least overlap of neighbouring tiles (the Colab's 20 by default); it must be
    /// smaller than both sides of the tile.
    pub fn with_min_overlap(mut self, min_overlap: usize) -> Result<Self> {
        let (h, w) = self.tile_size();
        if min_overlap >= h || min_overlap >= w {
            return Err(Error::InvalidInput(format!(
                "the tiles must overlap by less than their size: overlap {min_overlap}, tile {h}x{w}"
            )));
        }
        self.min_overlap = min_overlap;
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &PerceiverModel {
        &self.model
    }

    /// The tile (height, width): the model's `train_size`.
    pub fn tile_size(&self) -> (usize, usize) {
        self.model
            .image_size()
            .expect("an optical-flow model has a frame size")
    }

    /// The tiles covering a `height × width` frame: the Colab's `compute_grid_indices` (starts
    /// every `tile − min_overlap` pixels, the last moved flush with the border), with every
    /// start clamped to the border where the Colab's would run off the frame (for a few sizes
    /// its second-to-last start lies past the last); equal to the Colab's wherever it works.
    /// Frames smaller than a tile, or of more than [`MAX_PIXELS`] pixels, are an error.
    pub fn grid(&self, height: usize, width: usize) -> Result<Vec<Tile>> {
        let (th, tw) = self.tile_size();
        if height < th || width < tw {
            return Err(Error::InvalidInput(format!(
                "the frames are {height}x{width}, smaller than the model's {th}x{tw} tile \
                 (height x width): resize or pad them to at least that size"
            )));
        }
        // Refused before any tile runs: the answer could not be held as a FlowField.
        if height.checked_mul(width).is_none_or(|pixels| pixels > MAX_PIXELS) {
            return Err(Error::InvalidInput(format!(
                "the frames are {height}x{width}, more than the {MAX_PIXELS} pixels a flow field holds"
            )));
        }
        let starts = |size: usize, tile: usize| {
            let mut starts: Vec<usize> = (0..size).step_by(tile - self.min_overlap).collect();
            let last = size - tile;
            *starts.last_mut().expect("size > 0") = last;
            starts.into_iter().map(|s| s.min(last)).collect::<Vec<_>>()
        };
        let (ys, xs) = (starts(height, th), starts(width, tw));
        Ok(ys
            .iter()
            .flat_map(|&top| xs.iter().map(move |&left| Tile { top, left }))
            .collect())
    }

    /// The flow from `first` to `second` (decoded images of one size).
    pub fn flow_images(&self, first: &RgbImage, second: &RgbImage) -> Result<FlowOutput> {
        self.flow(&FramePair::from_images(first, second)?)
    }

    /// [`flow_images`](Self::flow_images), with `progress` told as each tile is done (see
    /// [`flow_with_progress`](Self::flow_with_progress)).
    pub fn flow_images_with_progress(
        &self,
        first: &RgbImage,
        second: &RgbImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<FlowOutput> {
        self.flow_with_progress(&FramePair::from_images(first, second)?, progress)
    }

    /// The flow of a pair of prepared frames (scaled to [-1, 1]), tile by tile.
    pub fn flow(&self, frames: &FramePair) -> Result<FlowOutput> {
        self.flow_with_progress(frames, &mut |_, _| {})
    }

    /// [`flow`](Self::flow), calling `progress(done, total)` each time a tile has run (`done`
    /// from 1 to `total`, the [distinct tiles](Self::distinct_tiles)): a large frame's tiles
    /// take minutes, and a caller can show how far they have gone.
    pub fn flow_with_progress(
        &self,
        frames: &FramePair,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<FlowOutput> {
        let (height, width) = (frames.height(), frames.width());
        let grid = self.grid(height, width)?;
        // The grid repeats a tile where clamped starts coincide (a frame of one tile is 4 times
        // the same tile), and the Colab's weighted sum counts every repeat: the repeats stay in
        // the sum, in grid order, so the flow is unchanged, but each distinct tile runs once and
        // its flow is kept until its last repeat (repeats are neighbours in a row or in a column of
        // tiles, so at most about a row of tiles is kept).
        let mut uses: HashMap<Tile, usize> = HashMap::new();
        for tile in &grid {
            *uses.entry(*tile).or_default() += 1;
        }
        let mut kept: HashMap<Tile, Vec<f32>> = HashMap::new();
        let mut tiles = Vec::with_capacity(uses.len());
        let mut blend = FlowBlend::new(height, width, self.tile_size());
        for tile in &grid {
            let flow = match kept.remove(tile) {
                Some(flow) => flow,
                None => {
                    let flow = self.tile_flow(frames, *tile)?;
                    tiles.push(*tile);
                    progress(tiles.len(), uses.len());
                    flow
                }
            };
            blend.add(*tile, &flow)?;
            if let Some(left) = uses.get_mut(tile) {
                *left -= 1;
                if *left > 0 {
                    kept.insert(*tile, flow);
                }
            }
        }
        Ok(FlowOutput {
            field: blend.finish()?,
            tiles,
            tile_size: self.tile_size(),
        })
    }

    /// The tiles of the [grid](Self::grid) of a `height × width` frame that run, each once, in
    /// the order [`flow`](Self::flow) runs them.
    pub fn distinct_tiles(&self, height: usize, width: usize) -> Result<Vec<Tile>> {
        let mut seen = std::collections::HashSet::new();
        Ok(self
            .grid(height, width)?
            .into_iter()
            .filter(|tile| seen.insert(*tile))
            .collect())
    }

    /// One tile's flow, as the model gives it (`[tile height, tile width, 2]`, before the
    /// Colab's scale and blend): one forward pass. For running the tiles of a frame elsewhere
    /// (the HTTP service queues them one by one) and [`assemble`](Self::assemble) them after.
    pub fn tile_flow(&self, frames: &FramePair, tile: Tile) -> Result<Vec<f32>> {
        let (th, tw) = self.tile_size();
        let pair = frames.crop(tile.top, tile.left, th, tw)?;
        self.model.optical_flow(&[&pair])
    }

    /// The flow of a `height × width` frame from its [distinct tiles'](Self::distinct_tiles)
    /// [flows](Self::tile_flow), given in any order and blended as [`flow`](Self::flow) blends
    /// them (the same values, bit for bit; [`FlowOutput::tiles`] in the order `flow` runs them).
    /// An error if a tile of the grid is missing, a tile is not of the grid or a flow has the
    /// wrong length.
    pub fn assemble(&self, height: usize, width: usize, flows: Vec<(Tile, Vec<f32>)>) -> Result<FlowOutput> {
        let grid = self.grid(height, width)?;
        let tiles = self.distinct_tiles(height, width)?;
        let flows: HashMap<Tile, Vec<f32>> = flows.into_iter().collect();
        if let Some(stray) = flows.keys().find(|tile| !tiles.contains(tile)) {
            return Err(Error::InvalidInput(format!(
                "the tile at ({}, {}) is not of the grid of a {height}x{width} frame",
                stray.top, stray.left
            )));
        }
        let mut blend = FlowBlend::new(height, width, self.tile_size());
        for tile in &grid {
            let flow = flows.get(tile).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "no flow for the tile at ({}, {}) of a {height}x{width} frame",
                    tile.top, tile.left
                ))
            })?;
            blend.add(*tile, flow)?;
        }
        Ok(FlowOutput {
            field: blend.finish()?,
            tiles,
            tile_size: self.tile_size(),
        })
    }
}

/// The Colab's blend of tiles' flows into one field: each tile's flow × [`FLOW_SCALE_FACTOR`],
/// weighted per pixel by the distance (from 1) to the tile's nearest edge, summed in the order
/// the tiles are added, and divided by the summed weights.
struct FlowBlend {
    width: usize,
    height: usize,
    tile_size: (usize, usize),
    sum: Vec<f32>,
    weights: Vec<u32>,
}

impl FlowBlend {
    fn new(height: usize, width: usize, tile_size: (usize, usize)) -> Self {
        Self {
            width,
            height,
            tile_size,
            sum: vec![0f32; height * width * 2],
            weights: vec![0u32; height * width],
        }
    }

    fn add(&mut self, tile: Tile, flow: &[f32]) -> Result<()> {
        let (th, tw) = self.tile_size;
        if flow.len() != th * tw * 2 {
            return Err(Error::InvalidInput(format!(
                "a tile's flow has {} values, not {th}x{tw}x2",
                flow.len()
            )));
        }
        if tile.top + th > self.height || tile.left + tw > self.width {
            return Err(Error::InvalidInput(format!(
                "the tile at ({}, {}) does not fit a {}x{} frame",
                tile.top, tile.left, self.height, self.width
            )));
        }
        let width = self.width;
        for y in 0..th {
            for x in 0..tw {
                let weight = (x + 1).min(tw - x).min((y + 1).min(th - y));
                let pixel = (tile.top + y) * width + tile.left + x;
                for c in 0..2 {
                    let value = flow[(y * tw + x) * 2 + c] * FLOW_SCALE_FACTOR;
                    self.sum[pixel * 2 + c] += value * weight as f32;
                }
                self.weights[pixel] += weight as u32;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<FlowField> {
        for (pair, &weight) in self.sum.chunks_exact_mut(2).zip(&self.weights) {
            for value in pair {
                *value /= weight as f32;
            }
        }
        FlowField::new(self.height, self.width, self.sum)
    }
}
