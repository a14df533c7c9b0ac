#!/usr/bin/env python3
"""Writes tests/fixtures/data/formats: a small ImageFolder tree with one image
in each lossless format of torchvision's IMG_EXTENSIONS besides PNG (JPEG and
PNG are covered by images the tests write themselves), and expected.json: each
file's pixels as torchvision's loader gives them (PIL's `.convert("RGB")`), as
hex of the HWC bytes, with its height and width.

    python3 scripts/image_fixtures.py tests/fixtures/data/formats
"""
import json
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/data/formats"
rng = np.random.default_rng(15)


def rgb(h, w):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def gray(h, w):
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")


def rgba(h, w):
    return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")


def palette(h, w):
    return rgb(h, w).quantize(colors=16)


# (path, image, save options): every file a different size, so that a swapped
# height and width shows.
files = [
    ("train/cat/rgb.bmp", rgb(5, 7), {}),
    ("train/cat/palette.bmp", palette(6, 4), {}),
    ("train/cat/rgb.ppm", rgb(3, 8), {}),
    ("train/dog/gray.pgm", gray(7, 5), {}),
    ("train/dog/rgb.tif", rgb(4, 6), {}),
    ("train/dog/lzw.TIFF", rgb(6, 9), {"compression": "tiff_lzw"}),
    ("test/cat/gray.tiff", gray(5, 5), {}),
    ("test/cat/lossless.webp", rgb(8, 6), {"lossless": True}),
    ("test/dog/alpha.webp", rgba(4, 4), {"lossless": True, "exact": True}),
    ("test/dog/rgba.tiff", rgba(3, 5), {}),
]
expected = {}
for path, img, opts in files:
    p = os.path.join(out, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    img.save(p, **opts)
    with Image.open(p) as back:
        px = np.asarray(back.convert("RGB"))
    expected[path] = {"height": px.shape[0], "width": px.shape[1], "hwc": px.tobytes().hex()}
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")
print("ok")
