//! The optical-flow output side: the Middlebury colour coding (Baker et al.) and the `.flo`
//! file. Expected colours come from a wheel and a colour formula written here from the paper's
//! description, not from the library's output.

use std::path::PathBuf;

use perceiver::flow::color::{color_wheel, flow_to_rgb, write_flow_png, WHEEL, WHEEL_LEN};
use perceiver::flow::flo::{load_flo, read_flo, save_flo, write_flo, MAX_FLO_PIXELS};
use perceiver::image::RgbImage;
use perceiver::{Error, FlowField};
use proptest::prelude::*;

/// One picture's pixels, row after row, each `Px([r, g, b])`.
#[derive(Clone, Copy, Debug)]
struct Px([u8; 3]);

fn pixels_of(image: &RgbImage) -> impl Iterator<Item = Px> + '_ {
    image.pixels().chunks_exact(3).map(|c| Px([c[0], c[1], c[2]]))
}

/// The wheel from its description: six ramps between the primary and secondary colours, with
/// 15, 6, 4, 11, 13 and 6 colours, the `i`-th of `n` at `floor(255 * i / n)` of the way.
fn reference_wheel() -> Vec<[u8; 3]> {
    let corners: [[u8; 3]; 7] = [
        [255, 0, 0],
        [255, 255, 0],
        [0, 255, 0],
        [0, 255, 255],
        [0, 0, 255],
        [255, 0, 255],
        [255, 0, 0],
    ];
    let lengths = [15u32, 6, 4, 11, 13, 6];
    let mut wheel = Vec::new();
    for (s, &n) in lengths.iter().enumerate() {
        for i in 0..n {
            let step = (255 * i / n) as u8;
            let colour = std::array::from_fn(|c| {
                let (from, to) = (corners[s][c], corners[s + 1][c]);
                match from.cmp(&to) {
                    std::cmp::Ordering::Less => step,
                    std::cmp::Ordering::Greater => 255 - step,
                    std::cmp::Ordering::Equal => from,
                }
            });
            wheel.push(colour);
        }
    }
    wheel
}

/// The colour of flow `(u, v)` at normalised radius `rad`, from the description: the angle
/// `atan2(-v, -u) / π` in [-1, 1] maps linearly onto wheel positions 0..=54, interpolated;
/// inside the unit circle `1 - rad (1 - c)`, outside `0.75 c`; channels floored.
fn expected_colour(u: f64, v: f64, rad: f64) -> [f64; 3] {
    let wheel = reference_wheel();
    let n = wheel.len();
    let angle = (-v).atan2(-u) / std::f64::consts::PI;
    let pos = (angle + 1.0) / 2.0 * (n - 1) as f64;
    let k = (pos.floor() as usize).min(n - 1);
    let f = pos - k as f64;
    std::array::from_fn(|c| {
        let a = wheel[k][c] as f64 / 255.0;
        let b = wheel[(k + 1) % n][c] as f64 / 255.0;
        let col = (1.0 - f) * a + f * b;
        let col = if rad <= 1.0 {
            1.0 - rad * (1.0 - col)
        } else {
            0.75 * col
        };
        (255.0 * col).floor()
    })
}

/// Within one step of the expected colour (the floor can tip either way on rounding).
fn assert_close(got: [u8; 3], want: [f64; 3], what: &str) {
    for c in 0..3 {
        assert!(
            (got[c] as f64 - want[c]).abs() <= 1.0,
            "{what}: got {got:?}, expected {want:?}"
        );
    }
}

/// Hue in degrees [0, 360) of an RGB colour (HSV's), None for greys.
fn hue([r, g, b]: [u8; 3]) -> Option<f64> {
    let (r, g, b) = (r as f64, g as f64, b as f64);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let d = max - min;
    if d == 0.0 {
        return None;
    }
    let h = if max == r {
        60.0 * ((g - b) / d)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    Some(h.rem_euclid(360.0))
}

fn circular_distance(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}

#[test]
fn the_wheel_is_the_papers() {
    let wheel = reference_wheel();
    assert_eq!(wheel.len(), 55);
    assert_eq!(WHEEL_LEN, 55);
    assert_eq!(WHEEL.to_vec(), wheel);
}

#[test]
fn a_uniform_shift_is_one_colour_everywhere() {
    for (u, v) in [(2.5f32, -1.0f32), (-3.0, 4.0), (0.0, 7.0), (-0.5, -0.25)] {
        let field = FlowField::from_fn(7, 9, |_, _| [u, v]).unwrap();
        for max_flow in [None, Some(2.0 * field.stats().max_magnitude), Some(0.5)] {
            let image = flow_to_rgb(&field, max_flow).unwrap();
            assert_eq!((image.width(), image.height()), (9, 7));
            let first = image.pixel(0, 0);
            assert!(pixels_of(&image).all(|p| p.0 == first), "({u}, {v}) {max_flow:?}");
            let mag = (u as f64).hypot(v as f64);
            let rad = max_flow.map_or(1.0, |m| mag / m as f64);
            assert_close(
                first,
                expected_colour(u as f64, v as f64, rad),
                &format!("({u}, {v}) {max_flow:?}"),
            );
        }
    }
}

#[test]
fn right_is_the_wheels_colour_at_angle_pi_and_left_its_middle() {
    let wheel = reference_wheel();
    // Right: atan2(-0, -u) = ±π, the ends of the wheel: colour 0 (red); the library takes both
    // zeros of v to colour 0.
    for v in [0.0f32, -0.0] {
        let field = FlowField::new(1, 1, vec![3.0, v]).unwrap();
        assert_eq!(
            flow_to_rgb(&field, None).unwrap().pixel(0, 0),
            wheel[0],
            "v = {v:?}"
        );
    }
    assert_eq!(wheel[0], [255, 0, 0]);
    // Left: angle 0, the middle of the wheel, (0 + 1) / 2 * 54 = 27.
    let field = FlowField::new(1, 1, vec![-3.0, 0.0]).unwrap();
    assert_eq!(flow_to_rgb(&field, None).unwrap().pixel(0, 0), wheel[27]);
}

#[test]
fn a_rotation_at_constant_radius_shows_the_whole_wheel() {
    let (n, radius) = (201usize, 7.0f64);
    let c = (n / 2) as f64;
    let field = FlowField::from_fn(n, n, |y, x| {
        // u = -(y - c), v = x - c, rescaled to one length (the centre: any direction).
        let (u, v) = (-(y as f64 - c), x as f64 - c);
        let d = u.hypot(v);
        if d == 0.0 {
            [radius as f32, 0.0]
        } else {
            [(u / d * radius) as f32, (v / d * radius) as f32]
        }
    })
    .unwrap();
    let image = flow_to_rgb(&field, None).unwrap();
    let mut hues = Vec::new();
    for p in pixels_of(&image) {
        // On the unit circle every colour is a pure wheel colour: a full channel and an empty one.
        let [r, g, b] = p.0;
        assert!(r.max(g).max(b) >= 254 && r.min(g).min(b) <= 1, "{:?}", p.0);
        hues.push(hue(p.0).unwrap());
    }
    let wheel = reference_wheel();
    let wheel_hues: Vec<f64> = wheel.iter().map(|&w| hue(w).unwrap()).collect();
    for (k, &h) in wheel_hues.iter().enumerate() {
        let nearest = hues
            .iter()
            .map(|&p| circular_distance(p, h))
            .fold(f64::INFINITY, f64::min);
        assert!(
            nearest <= 1.5,
            "wheel colour {k} {:?} (hue {h:.1}): nearest pixel hue {nearest:.2} away",
            wheel[k]
        );
    }
    // No hue sector is missing: the only gap is the wheel's own, from colour 54 back to 0,
    // which Middlebury's coding never interpolates, widened by the spacing of the pixels'
    // directions (about 0.01 rad at radius 100, under 1 degree of hue) on either side.
    hues.sort_by(f64::total_cmp);
    let mut largest_gap = 360.0 - hues[hues.len() - 1] + hues[0];
    for pair in hues.windows(2) {
        largest_gap = f64::max(largest_gap, pair[1] - pair[0]);
    }
    let wheel_jump = circular_distance(wheel_hues[54], wheel_hues[0]);
    assert!(wheel_jump > 5.0);
    assert!(
        largest_gap <= wheel_jump + 1.5,
        "largest hue gap {largest_gap:.2} (the wheel's jump: {wheel_jump:.2})"
    );
}

#[test]
fn beyond_max_flow_is_darkened_zero_is_white() {
    let wheel = reference_wheel();
    let field = FlowField::new(1, 5, vec![20.0, 0.0, 0.0, 0.0, 10.0, 0.0, 5.0, 0.0, -20.0, 0.0]).unwrap();
    let image = flow_to_rgb(&field, Some(10.0)).unwrap();
    let px = |x| image.pixel(x, 0);
    let dark = |w: [u8; 3]| w.map(|c| (255.0 * 0.75 * c as f64 / 255.0).floor());
    assert_close(px(0), dark(wheel[0]), "right, twice max_flow");
    assert_eq!(px(1), [255, 255, 255], "no motion");
    assert_eq!(px(2), wheel[0], "right, at max_flow");
    assert_close(px(3), expected_colour(5.0, 0.0, 0.5), "right, half max_flow");
    assert_close(px(4), dark(wheel[27]), "left, twice max_flow");

    // Over a spread of vectors: a full channel inside the circle, none above 0.75 outside.
    let mut state = 12345u32;
    let mut next = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1u32 << 24) as f32 * 20.0 - 10.0
    };
    let field = FlowField::from_fn(30, 30, |_, _| [next(), next()]).unwrap();
    let max_flow = 6.0;
    let image = flow_to_rgb(&field, Some(max_flow)).unwrap();
    let (mut inside, mut outside) = (0, 0);
    for (p, flow) in pixels_of(&image).zip(field.pixels()) {
        let top = *p.0.iter().max().unwrap();
        let mag = (flow[0] as f64).hypot(flow[1] as f64);
        if mag > max_flow as f64 {
            assert!(top <= 191, "{flow:?} beyond max_flow: {:?}", p.0);
            outside += 1;
        } else {
            assert_eq!(top, 255, "{flow:?} within max_flow: {:?}", p.0);
            inside += 1;
        }
        assert_close(
            p.0,
            expected_colour(flow[0] as f64, flow[1] as f64, mag / max_flow as f64),
            "random",
        );
    }
    assert!(inside > 100 && outside > 100);
}

#[test]
fn a_zero_field_is_white_and_unknown_pixels_black() {
    let field = FlowField::new(3, 4, vec![0.0; 24]).unwrap();
    let image = flow_to_rgb(&field, None).unwrap();
    assert!(pixels_of(&image).all(|p| p.0 == [255, 255, 255]));

    let mut values = vec![0.0; 24];
    values[2] = f32::NAN;
    values[5] = f32::INFINITY;
    values[8] = 1e10;
    let image = flow_to_rgb(&FlowField::new(3, 4, values).unwrap(), None).unwrap();
    let black: Vec<usize> = pixels_of(&image)
        .enumerate()
        .filter(|(_, p)| p.0 == [0, 0, 0])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(black, [1, 2, 4]);
    assert_eq!(
        pixels_of(&image).filter(|p| p.0 == [255, 255, 255]).count(),
        12 - 3
    );

    // Unknown pixels do not set the scale: (1, 0) is the longest known vector, pure red.
    let field = FlowField::new(1, 2, vec![1.0, 0.0, 1e10, 0.0]).unwrap();
    let image = flow_to_rgb(&field, None).unwrap();
    assert_eq!(image.pixels(), &[255, 0, 0, 0, 0, 0]);
    let stats = field.stats();
    assert_eq!((stats.max_magnitude, stats.unknown_pixels), (1.0, 1));
}

#[test]
fn max_flow_must_be_positive_and_finite() {
    let field = FlowField::new(1, 1, vec![1.0, 1.0]).unwrap();
    for m in [0.0, -0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(
            matches!(flow_to_rgb(&field, Some(m)), Err(Error::InvalidInput(_))),
            "{m}"
        );
    }
}

#[test]
fn the_legend_is_the_coding_of_its_own_flow() {
    let size = 65u32;
    let legend = color_wheel(size as usize).unwrap();
    let c = 32.0f32;
    let field = FlowField::from_fn(65, 65, |y, x| [x as f32 - c, y as f32 - c]).unwrap();
    assert_eq!(legend, flow_to_rgb(&field, Some(c)).unwrap());
    let wheel = reference_wheel();
    assert_eq!(legend.pixel(32, 32), [255, 255, 255]);
    assert_eq!(legend.pixel(64, 32), wheel[0]);
    assert_eq!(legend.pixel(0, 32), wheel[27]);
    // A corner is outside the circle: darkened.
    assert!(*legend.pixel(0, 0).iter().max().unwrap() <= 191);
}

#[test]
fn the_png_decodes_to_the_same_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.png");
    let field = FlowField::from_fn(13, 17, |y, x| [x as f32 - 8.0, (y as f32 - 6.0) * 0.5]).unwrap();
    write_flow_png(&field, None, &path).unwrap();
    let decoded = image::open(&path).unwrap();
    assert!(matches!(decoded, image::DynamicImage::ImageRgb8(_)));
    assert_eq!(
        decoded.to_rgb8().as_raw(),
        flow_to_rgb(&field, None).unwrap().pixels()
    );

    let missing = dir.path().join("no/such/dir/flow.png");
    match write_flow_png(&field, None, &missing) {
        Err(Error::Write { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        write_flow_png(&field, Some(-1.0), dir.path().join("x.png")),
        Err(Error::InvalidInput(_))
    ));
}

/// Values whose bits must survive the file: both zeros, subnormals, infinities, NaNs with
/// payloads (quiet and signalling), Middlebury's unknown `1e10`, extremes.
fn special_values() -> Vec<f32> {
    [
        0x0000_0000u32,
        0x8000_0000,
        0x0000_0001,
        0x807f_ffff,
        0x0080_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7fc0_1234,
        0xffc0_0001,
        0x7f80_0001,
        0x7f7f_ffff,
        1e10f32.to_bits(),
        (-1.5f32).to_bits(),
        0.1f32.to_bits(),
        3.25f32.to_bits(),
    ]
    .into_iter()
    .map(f32::from_bits)
    .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn flo_round_trips_bit_for_bit() {
    // 2 rows x 4 columns: 16 values.
    let field = FlowField::new(2, 4, special_values()).unwrap();
    let mut bytes = Vec::new();
    write_flo(&field, &mut bytes).unwrap();
    assert_eq!(bytes.len(), 12 + 8 * 4 * 2);
    assert_eq!(&bytes[..4], b"PIEH");
    assert_eq!(f32::from_le_bytes(bytes[..4].try_into().unwrap()), 202021.25);
    assert_eq!(
        i32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        4,
        "width first"
    );
    assert_eq!(i32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    // Payload: u, v of each pixel, row by row, little-endian.
    let payload: Vec<u32> = bytes[12..]
        .chunks(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(payload, bits(&special_values()));

    let back = read_flo(bytes.as_slice()).unwrap();
    assert_eq!((back.height(), back.width()), (2, 4));
    assert_eq!(bits(back.values()), bits(field.values()));
    assert_eq!(back.at(1, 3), [field.values()[14], field.values()[15]]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.flo");
    save_flo(&field, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(bits(load_flo(&path).unwrap().values()), bits(field.values()));
}

#[test]
fn flo_of_a_sintel_sized_field_round_trips() {
    let field = FlowField::from_fn(436, 1024, |y, x| [x as f32 * 0.25 - 3.0, -(y as f32) / 7.0]).unwrap();
    let mut bytes = Vec::new();
    write_flo(&field, &mut bytes).unwrap();
    assert_eq!(bytes.len(), 12 + 8 * 436 * 1024);
    assert_eq!(read_flo(bytes.as_slice()).unwrap(), field);
}

fn header(tag: &[u8; 4], width: i32, height: i32) -> Vec<u8> {
    let mut h = tag.to_vec();
    h.extend(width.to_le_bytes());
    h.extend(height.to_le_bytes());
    h
}

fn flo_error(bytes: &[u8]) -> String {
    match read_flo(bytes) {
        Err(e @ Error::InvalidFlo { .. }) => e.to_string(),
        other => panic!("expected an InvalidFlo error, got {other:?}"),
    }
}

#[test]
fn hostile_flo_headers_are_errors() {
    let payload = |n: usize| vec![0u8; n];
    let ok = [header(b"PIEH", 2, 3), payload(48)].concat();
    assert!(read_flo(ok.as_slice()).is_ok());

    assert!(flo_error(&[header(b"PIEX", 2, 3), payload(48)].concat()).contains("PIEH"));
    assert!(flo_error(&[header(b"HEIP", 2, 3), payload(48)].concat()).contains("PIEH"));
    assert!(flo_error(b"").contains("PIEH"));
    assert!(flo_error(b"PIEH\x02\0").contains("header"));
    for (w, h) in [(-1, 3), (2, -3), (0, 3), (2, 0), (i32::MIN, i32::MIN)] {
        assert!(
            flo_error(&[header(b"PIEH", w, h), payload(48)].concat()).contains("not positive"),
            "{w} x {h}"
        );
    }
    for (w, h) in [
        (100_000, 100_000),
        (i32::MAX, i32::MAX),
        (MAX_FLO_PIXELS as i32 + 1, 1),
        (1 << 14, 1 << 14),
    ] {
        assert!(
            flo_error(&header(b"PIEH", w, h)).contains("more than"),
            "{w} x {h}"
        );
    }
    // At the bound the header is accepted, and the missing payload is reported, not allocated.
    assert!(flo_error(&header(b"PIEH", 1 << 14, 1 << 13)).contains("truncated"));
    let truncated = flo_error(&[header(b"PIEH", 2, 3), payload(47)].concat());
    assert!(
        truncated.contains("truncated") && truncated.contains("48") && truncated.contains("47"),
        "{truncated}"
    );
    assert!(flo_error(&header(b"PIEH", 2, 3)).contains("truncated"));
    assert!(flo_error(&[header(b"PIEH", 2, 3), payload(49)].concat()).contains("follow"));
    assert!(flo_error(&[header(b"PIEH", 3, 2), payload(96)].concat()).contains("follow"));
}

#[test]
fn load_flo_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.flo");
    match load_flo(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    let bad = dir.path().join("bad.flo");
    std::fs::write(&bad, [header(b"PIEH", 2, 2), vec![0; 5]].concat()).unwrap();
    match load_flo(&bad) {
        Err(e @ Error::InvalidFlo { .. }) => {
            assert!(matches!(&e, Error::InvalidFlo { path: Some(p), .. } if *p == bad));
            assert!(e.to_string().contains(&*bad.to_string_lossy()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let unwritable: PathBuf = dir.path().join("no/dir/x.flo");
    let field = FlowField::new(1, 1, vec![0.0, 0.0]).unwrap();
    assert!(matches!(save_flo(&field, &unwritable), Err(Error::Write { path, .. }) if path == unwritable));
}

proptest! {
    #[test]
    fn flo_round_trips_any_bits(
        (h, w, raw) in (1usize..6, 1usize..6).prop_flat_map(|(h, w)| {
            (Just(h), Just(w), proptest::collection::vec(any::<u32>(), 2 * h * w))
        })
    ) {
        let field = FlowField::new(h, w, raw.iter().map(|&b| f32::from_bits(b)).collect()).unwrap();
        let mut bytes = Vec::new();
        write_flo(&field, &mut bytes).unwrap();
        prop_assert_eq!(bytes.len(), 12 + 8 * h * w);
        let back = read_flo(bytes.as_slice()).unwrap();
        prop_assert_eq!((back.height(), back.width()), (h, w));
        prop_assert_eq!(bits(back.values()), raw);
    }

    #[test]
    fn flo_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = read_flo(bytes.as_slice());
    }
}
