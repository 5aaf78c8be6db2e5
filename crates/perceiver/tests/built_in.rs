//! The model built into the library loads by name and fills a mask.

use perceiver::{FillMask, Loader, Result};

#[test]
fn the_built_in_model_loads_and_fills_a_mask() -> Result<()> {
    let fill = FillMask::new(Loader::new("default").load()?)?;
    let input = fill.prepare("Hello, w[MASK]rld!", false)?;
    let out = &fill.predict(&[input], 3)?[0];
    assert_eq!(out.masks.len(), 1);
    assert_eq!(out.masks[0].candidates.len(), 3);
    Ok(())
}
