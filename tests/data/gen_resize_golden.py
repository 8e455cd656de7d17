#!/usr/bin/python3
"""gen_resize_golden.py — expected outputs of OpenCV's cv2.resize(INTER_LINEAR)
for small synthetic uint8 images, for tests/unit/test_image.c (which checks
image_resize_bilinear against them; nothing here runs at test time).

Run once with Debian's OpenCV (python3-opencv 4.6) from the repository root:
    /usr/bin/python3 tests/data/gen_resize_golden.py
It writes tests/data/resize_golden.bin (deterministic: fixed seed):
    "MKRZ", int32 case count, then per case
    int32 src_h, src_w, channels, dst_h, dst_w   (little-endian)
    src pixels (src_h, src_w, channels) uint8, then cv2.resize's output
    (dst_h, dst_w, channels) uint8.
The cases cover downscaling and upscaling, odd sizes, one axis only, 1 and 3
channels, the exact 2x downscale (which OpenCV turns into INTER_AREA) and the
exact 2x upscale. Inputs are noise on a gradient, so that the fixed-point
rounding matters.
"""
import os, struct
import cv2
import numpy as np

CASES = [  # (src_h, src_w, channels, dst_h, dst_w)
    (7, 9, 3, 4, 5),      # downscale, odd
    (7, 9, 3, 13, 17),    # upscale, odd
    (10, 6, 1, 3, 11),    # down in y, up in x
    (8, 8, 3, 4, 4),      # exact 2x down: INTER_AREA fast path
    (5, 4, 3, 10, 8),     # exact 2x up
    (12, 20, 1, 12, 7),   # x only
    (11, 13, 3, 16, 16),  # odd -> square, like convert_imageset --resize
    (31, 29, 3, 9, 8),    # strong downscale
    (3, 2, 1, 17, 19),    # tiny source
    (1, 7, 3, 5, 3),      # one row
]


def main():
    rng = np.random.default_rng(20240501)
    out = bytearray(b"MKRZ" + struct.pack("<i", len(CASES)))
    for sh, sw, c, dh, dw in CASES:
        y, x = np.mgrid[0:sh, 0:sw]
        base = (x * 200 // max(sw - 1, 1) + y * 40 // max(sh - 1, 1))[:, :, None]
        src = np.clip(base + rng.integers(-60, 61, (sh, sw, c)), 0, 255).astype(np.uint8)
        img = src if c == 3 else src[:, :, 0]
        dst = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
        out += struct.pack("<5i", sh, sw, c, dh, dw) + src.tobytes() + dst.reshape(dh, dw, c).tobytes()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resize_golden.bin")
    with open(path, "wb") as f:
        f.write(out)
    print("%s: %d cases, %d bytes (cv2 %s)" % (path, len(CASES), len(out), cv2.__version__))


if __name__ == "__main__":
    main()
