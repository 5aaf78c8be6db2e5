#!/usr/bin/env python3
"""Generate the image-processor parity fixtures from transformers' PerceiverImageProcessorPil.

The Rust image module (crates/perceiver/src/image/) decodes a file the way
``transformers.image_utils.load_image`` does (``PIL.Image.open``, then
``ImageOps.exif_transpose``, then ``convert("RGB")``; this is what the
``image-classification`` pipeline does with a path) and preprocesses it the way
``PerceiverImageProcessorPil`` does (the backend transformers picks when torchvision
is not installed: numpy centre crop, PIL resize, rescale, normalise). This script
writes, from local data only (no hub access):

    tests/fixtures/images/
        <name>.<ext>                     small images of odd sizes and many modes (see IMAGES)
        configs/<config>/preprocessor_config.json
                                         preprocessor configs with non-default sizes (see CONFIGS)
        expected.safetensors             for each image i and config c:
                                           "<i>.rgb"      uint8 [H, W, 3]  np.array(load_image(path))
                                           "<i>.<c>"      float32 [3, h, w] processor(load_image(path),
                                                          return_tensors="np").pixel_values[0]
                                         and for the resampler alone (PIL ``Image.resize`` on an RGB image):
                                           "resize.<r>.input"            uint8 [H, W, 3]
                                           "resize.<r>.<filter>.<h>x<w>" uint8 [h, w, 3], filter = PIL's
                                                                         Resampling value 0..5
        README.md                        what each file covers

Everything is deterministic (seeded numpy generators, fixed encoder settings).

How to run (from the repository root, with the environment of scripts/requirements-reference.txt;
torchvision must be absent so that transformers uses the PIL backend)::

    .venv-ref/bin/python scripts/make_image_fixtures.py        # writes tests/fixtures/images/
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

# Never touch the network / hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent
import reference_env  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "images"

PINNED_TRANSFORMERS = "5.24.0"
PINNED_PILLOW = "12.0.0"


def check_pins() -> None:
    """The pinned environment, and without torchvision: with it, transformers would pick the
    torchvision backend (other resampling), and the PIL backend is the reference."""
    reference_env.check_pins(transformers=PINNED_TRANSFORMERS, pillow=PINNED_PILLOW)
    assert importlib.util.find_spec("torchvision") is None, "uninstall torchvision: the PIL backend is the reference"

check_pins()

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import transformers  # noqa: E402
from PIL import Image, features  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import AutoImageProcessor  # noqa: E402
from transformers.image_utils import load_image  # noqa: E402
from transformers.models.perceiver.image_processing_pil_perceiver import PerceiverImageProcessorPil  # noqa: E402

assert transformers.__version__ == PINNED_TRANSFORMERS, transformers.__version__
assert PIL.__version__ == PINNED_PILLOW, PIL.__version__
transformers.logging.set_verbosity_error()

ORIENTATION = 0x0112  # the EXIF Orientation tag


def pattern(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: smooth colour gradients and a ripple plus noise, so that codecs and resampling
    filters see both flat and busy areas."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack(
        [
            255 * x / max(w - 1, 1),
            255 * y / max(h - 1, 1),
            127.5 + 127.5 * np.sin((x + 2 * y) / 3.0),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 24, size=base.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = value
    return exif.tobytes()


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb16(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one: it opens them as 8-bit "RGB")."""
    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows, 9)) + png_chunk(b"IEND", b"")


def gif_partial_frame() -> bytes:
    """A GIF89a whose only frame (11x9 at (3, 2)) is smaller than its 20x16 screen, with a transparent
    index: PIL fills the rest of the first frame with the transparent index (black elsewhere would be
    index 0), which a decoder that composites onto transparent black does not reproduce. Written by
    hand (PIL always writes full-screen first frames); LZW data with a clear code every 4 pixels, so
    the code width never grows."""
    sw, sh, left, top, fw, fh = 20, 16, 3, 2, 11, 9
    palette = [
        (12, 34, 56), (200, 10, 20), (30, 220, 40), (250, 250, 5),
        (5, 60, 250), (128, 128, 128), (255, 255, 255), (90, 0, 160),
    ]
    transparent = 6
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 8, size=(fh, fw))
    min_code = 3
    clear, eoi, width = 1 << min_code, (1 << min_code) + 1, min_code + 1
    codes = []
    flat = idx.flatten().tolist()
    for i in range(0, len(flat), 4):
        codes.append(clear)
        codes.extend(flat[i : i + 4])
    codes.append(eoi)
    bits, nbits, data = 0, 0, bytearray()
    for c in codes:
        bits |= c << nbits
        nbits += width
        while nbits >= 8:
            data.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        data.append(bits & 0xFF)
    blocks = b"".join(bytes([len(data[i : i + 255])]) + bytes(data[i : i + 255]) for i in range(0, len(data), 255))
    out = b"GIF89a" + struct.pack("<HHBBB", sw, sh, 0xF0 | 2, 0, 0)
    out += b"".join(bytes(c) for c in palette)
    out += b"\x21\xf9\x04" + bytes([0x01]) + struct.pack("<H", 0) + bytes([transparent]) + b"\x00"
    out += b"\x2c" + struct.pack("<HHHHB", left, top, fw, fh, 0)
    out += bytes([min_code]) + blocks + b"\x00" + b"\x3b"
    return out


def build_images() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, what it covers)."""
    out = []

    rgb = Image.fromarray(pattern(29, 37, 1))
    out.append(("rgb.png", encode(rgb, "PNG"), "RGB PNG, 37x29"))

    grey = Image.fromarray(pattern(41, 23, 2)[..., 0])
    out.append(("grey.png", encode(grey, "PNG"), "L (greyscale) PNG, 23x41: grey is replicated to R, G, B"))

    la = Image.fromarray(np.dstack([pattern(26, 31, 3)[..., 1], pattern(26, 31, 4)[..., 2]]), mode="LA")
    out.append(("grey_alpha.png", encode(la, "PNG"), "LA PNG, 31x26: alpha dropped, not composited"))

    rgba_arr = np.dstack([pattern(33, 27, 5), pattern(33, 27, 6)[..., 0]])
    rgba_arr[:4, :, 3] = 0  # fully transparent rows whose colour must survive convert("RGB")
    out.append(("rgba.png", encode(Image.fromarray(rgba_arr, mode="RGBA"), "PNG"), "RGBA PNG, 27x33, alpha 0..255"))

    rng = np.random.default_rng(8)
    pal = Image.fromarray(rng.integers(0, 16, size=(21, 35)).astype(np.uint8), mode="P")
    pal.putpalette(rng.integers(0, 256, size=16 * 3).astype(np.uint8).tolist())
    out.append(("palette.png", encode(pal, "PNG", transparency=3), "P PNG with a tRNS entry, 35x21"))

    rgb16 = (pattern(13, 19, 9).astype(np.uint32) * 257 + np.random.default_rng(10).integers(0, 257, size=(13, 19, 3)))
    out.append(("rgb16.png", png_rgb16(rgb16.astype(np.uint16)), "16-bit RGB PNG, 19x13: PIL keeps the high byte"))

    g16 = np.random.default_rng(11).integers(0, 65536, size=(22, 15)).astype(np.uint16)
    g16[::3] = np.random.default_rng(12).integers(0, 300, size=g16[::3].shape)
    out.append(("grey16.png", encode(Image.fromarray(g16), "PNG"), "16-bit greyscale PNG (PIL I;16), 15x22: PIL clamps to 255"))

    out.append(("orient5.png", encode(Image.fromarray(pattern(14, 21, 13)), "PNG", exif=exif_with_orientation(5)),
                "RGB PNG, 21x14, eXIf orientation 5 (transpose)"))

    jpg = Image.fromarray(pattern(31, 43, 14))
    out.append(("rgb.jpg", encode(jpg, "JPEG", quality=90), "RGB JPEG, 43x31, 4:2:0, quality 90"))

    gjpg = Image.fromarray(pattern(38, 29, 15)[..., 2])
    out.append(("grey.jpg", encode(gjpg, "JPEG", quality=85), "greyscale JPEG, 29x38"))

    o6 = Image.fromarray(pattern(24, 40, 16))
    out.append(("orient6.jpg", encode(o6, "JPEG", quality=95, subsampling=0, exif=exif_with_orientation(6)),
                "RGB JPEG, 40x24, 4:4:4, EXIF orientation 6 (rotate 90 clockwise)"))

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="3"/></rdf:RDF></x:xmpmeta>')
    out.append(("xmp3.jpg", encode(Image.fromarray(pattern(15, 22, 25)), "JPEG", quality=90, xmp=xmp),
                "RGB JPEG, 22x15, no EXIF, XMP tiff:Orientation 3 (Pillow falls back to XMP)"))

    wl = Image.fromarray(pattern(27, 18, 17))
    out.append(("orient8.webp", encode(wl, "WEBP", lossless=True, exif=exif_with_orientation(8)),
                "lossless WebP, 18x27, EXIF orientation 8 (rotate 90 counter-clockwise)"))

    wy = Image.fromarray(pattern(25, 33, 18))
    out.append(("lossy.webp", encode(wy, "WEBP", quality=80, method=4), "lossy WebP, 33x25, quality 80"))

    out.append(("rgb.bmp", encode(Image.fromarray(pattern(13, 21, 19)), "BMP"), "24-bit BMP, 21x13 (padded rows)"))

    pbmp = Image.fromarray(np.random.default_rng(20).integers(0, 256, size=(9, 17)).astype(np.uint8), mode="P")
    pbmp.putpalette(np.random.default_rng(21).integers(0, 256, size=256 * 3).astype(np.uint8).tolist())
    out.append(("palette.bmp", encode(pbmp, "BMP"), "8-bit palette BMP, 17x9"))

    tif = Image.fromarray(pattern(23, 19, 22))
    out.append(("orient7.tif", encode(tif, "TIFF", compression="tiff_lzw", tiffinfo={ORIENTATION: 7}),
                "LZW RGB TIFF, 19x23, Orientation tag 7 (transverse)"))

    gif = Image.fromarray(np.random.default_rng(23).integers(0, 32, size=(22, 26)).astype(np.uint8), mode="P")
    gif.putpalette(np.random.default_rng(24).integers(0, 256, size=32 * 3).astype(np.uint8).tolist())
    frame2 = Image.fromarray(np.zeros((22, 26), dtype=np.uint8), mode="P")
    frame2.putpalette(gif.getpalette())
    out.append(("palette.gif", encode(gif, "GIF", transparency=5, save_all=True, append_images=[frame2]),
                "2-frame GIF, 26x22, transparent index: the first frame is read"))

    out.append(("partial.gif", gif_partial_frame(),
                "GIF whose first frame (11x9 at 3,2) is smaller than the 20x16 screen, transparent index 6"))
    return out


# Field names and values as preprocessor_config.json spells them (transformers PerceiverImageProcessor).
CONFIGS = {
    "deepmind_style": {
        "covers": "the layout of deepmind/vision-perceiver-*'s file (int sizes, feature_extractor_type) "
        "with size 12, crop_size 15: centre crop 0.8 x min side, bicubic",
        "config": {
            "crop_size": 15, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "PerceiverFeatureExtractor",
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "resample": 3, "size": 12,
        },
    },
    "nonsquare_pad": {
        "covers": "size 14x10 (h x w), crop_size 12x11: crop height 14/12 x min side exceeds the image, so "
        "numpy's centre crop pads with zeros; rescale_factor 1/256; scalar image_mean; defaults for the rest",
        "config": {
            "image_processor_type": "PerceiverImageProcessor",
            "size": {"height": 14, "width": 10}, "crop_size": {"height": 12, "width": 11},
            "rescale_factor": 0.00390625, "image_mean": 0.5, "image_std": [0.25, 0.5, 0.75],
        },
    },
    "no_crop_bilinear": {
        "covers": "no centre crop; size 24x7 (upscale in height, downscale in width); bilinear (resample 2); "
        "no rescale, so normalisation runs on 0..255 with mean 127.5",
        "config": {
            "do_center_crop": False, "size": {"height": 24, "width": 7}, "resample": 2,
            "do_rescale": False, "image_mean": [127.5, 127.5, 127.5], "image_std": [63.75, 70.0, 80.0],
        },
    },
    "crop_only": {
        "covers": "centre crop to 8/16 of the min side, no resize, no normalisation: the output size "
        "follows the image",
        "config": {"size": 8, "crop_size": 16, "do_resize": False, "do_normalize": False},
    },
}

# Resampler cases: input name -> (uint8 [H, W, 3], target (height, width) list).
def resize_cases() -> dict[str, tuple[np.ndarray, list[tuple[int, int]]]]:
    rng = np.random.default_rng(30)
    noise = rng.integers(0, 256, size=(17, 23, 3)).astype(np.uint8)
    return {
        "noise": (noise, [(7, 5), (23, 29), (1, 1), (17, 9), (4, 23), (1, 29)]),
        "smooth": (pattern(47, 61, 31), [(13, 11), (47, 19), (90, 5)]),
        "row": (pattern(1, 29, 32), [(1, 5), (3, 40), (6, 1)]),
        "column": (pattern(31, 1, 33), [(5, 1), (40, 3)]),
        "pixel": (np.array([[[200, 17, 99]]], dtype=np.uint8), [(1, 1), (3, 2)]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = ap.parse_args()
    out: Path = args.out
    libs = {k: features.version(k) for k in ("jpg", "webp", "zlib", "libtiff")}
    print(f"transformers {transformers.__version__}, Pillow {PIL.__version__} {libs}, python {sys.version.split()[0]}")

    if out.exists():
        shutil.rmtree(out)
    (out / "configs").mkdir(parents=True)

    processors = {}
    for name, spec in CONFIGS.items():
        d = out / "configs" / name
        d.mkdir()
        (d / "preprocessor_config.json").write_text(json.dumps(spec["config"], indent=2) + "\n")
        proc = PerceiverImageProcessorPil.from_pretrained(d)
        processors[name] = proc
    # This environment has no torchvision, so the Auto class picks the PIL backend: the pipeline's processor.
    auto = AutoImageProcessor.from_pretrained(out / "configs" / "nonsquare_pad")
    assert type(auto) is PerceiverImageProcessorPil, type(auto)

    tensors: dict[str, np.ndarray] = {}
    readme_images = []
    for fname, data, covers in build_images():
        path = out / fname
        path.write_bytes(data)
        stem = fname.replace(".", "_")
        raw = Image.open(path)
        img = load_image(str(path))  # exif_transpose + convert("RGB"), as the pipelines read a path
        rgb = np.array(img)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (fname, rgb.shape)
        tensors[f"{stem}.rgb"] = np.ascontiguousarray(rgb)
        for cname, proc in processors.items():
            pv = proc(img, return_tensors="np")["pixel_values"]
            assert pv.dtype == np.float32 and pv.shape[0] == 1 and pv.shape[1] == 3, (fname, cname, pv.dtype, pv.shape)
            tensors[f"{stem}.{cname}"] = np.ascontiguousarray(pv[0])
        readme_images.append(f"| `{fname}` | {len(data)} | {raw.mode} {raw.size[0]}x{raw.size[1]} | "
                             f"{rgb.shape[1]}x{rgb.shape[0]} | {covers} |")
        print(f"{fname:16} {len(data):6} B  PIL mode {raw.mode:5} -> RGB {rgb.shape[1]}x{rgb.shape[0]}")

    # Checks that the fixtures exercise what they claim.
    def rgb_of(stem):
        return tensors[f"{stem}.rgb"]
    assert rgb_of("orient6_jpg").shape[:2] == (40, 24)
    assert rgb_of("orient5_png").shape[:2] == (21, 14)
    assert rgb_of("orient8_webp").shape[:2] == (18, 27)
    assert rgb_of("orient7_tif").shape[:2] == (19, 23)
    assert (rgb_of("xmp3_jpg") != np.array(Image.open(out / "xmp3.jpg").convert("RGB"))).any()
    assert rgb_of("grey16_png").max() == 255 and (rgb_of("grey16_png") < 255).any()
    partial = rgb_of("partial_gif")
    assert partial.shape[:2] == (16, 20) and tuple(partial[0, 0]) == (255, 255, 255), partial[0, 0]

    readme_resize = []
    for rname, (arr, targets) in resize_cases().items():
        tensors[f"resize.{rname}.input"] = arr
        im = Image.fromarray(arr)
        for (h, w) in targets:
            for f in range(6):
                tensors[f"resize.{rname}.{f}.{h}x{w}"] = np.array(im.resize((w, h), resample=f))
        readme_resize.append(f"| `{rname}` | {arr.shape[1]}x{arr.shape[0]} | "
                             + ", ".join(f"{w}x{h}" for h, w in targets) + " |")

    save_file(tensors, str(out / "expected.safetensors"))

    lines = [
        "# Image-processor parity fixtures",
        "",
        "Written by `scripts/make_image_fixtures.py` (do not edit by hand) with "
        f"transformers {transformers.__version__}, Pillow {PIL.__version__} "
        f"(libjpeg-turbo {libs['jpg']}, libwebp {libs['webp']}, zlib {libs['zlib']}, libtiff {libs['libtiff']}), "
        "no torchvision: `PerceiverImageProcessorPil` is the processor.",
        "",
        "`expected.safetensors`: `<image>.rgb` = `np.array(load_image(path))` (uint8 [H, W, 3]: EXIF orientation "
        "applied, `convert(\"RGB\")`), `<image>.<config>` = `processor(load_image(path), "
        "return_tensors=\"np\").pixel_values[0]` (float32 [3, h, w]), `<image>` being the file name with `.` "
        "replaced by `_`; `resize.<input>.<filter>.<h>x<w>` = `np.array(Image.fromarray(input).resize((w, h), "
        "resample=filter))` for PIL filters 0 (nearest) to 5 (hamming).",
        "",
        "## Images",
        "",
        "| file | bytes | PIL opens as | RGB (W x H) | covers |",
        "|---|---|---|---|---|",
        *readme_images,
        "",
        "## Configs (`configs/<name>/preprocessor_config.json`)",
        "",
        "| config | covers |",
        "|---|---|",
        *[f"| `{n}` | {s['covers']} |" for n, s in CONFIGS.items()],
        "",
        "## Resampler inputs",
        "",
        "| input | W x H | targets (W x H), each with filters 0..5 |",
        "|---|---|---|",
        *readme_resize,
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    main()
