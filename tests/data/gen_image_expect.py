#!/usr/bin/python3
"""gen_image_expect.py — builds the odd-image fixtures in tests/data/images/ and
writes tests/data/image_expect.txt, the decoding outcomes that OpenCV
(cv2.imread, the decoder Caffe's tools use) gives for them and for a selection
of real files from ../shared (golden/lmdb/images, datasets/hymenoptera).

Run it once with Debian's OpenCV (python3-opencv 4.6) from the repository
root:   /usr/bin/python3 tests/data/gen_image_expect.py
tests/unit/test_image.c reads image_expect.txt; nothing here runs at test
time. Outputs are deterministic (fixed seeds); rerunning rewrites identical
files.

image_expect.txt: one tab-separated line per (file, mode):
  path  mode  outcome
path is relative to the repository root, or starts with "shared:" for a file
under ../shared. mode is color (IMREAD_COLOR), gray (IMREAD_GRAYSCALE) or
native (IMREAD_UNCHANGED, what Caffe uses to decode encoded Datums); or
imencode_jpg95_<m> / imencode_png_<m>: the file decoded in mode m, then
encoded by cv2.imencode with its defaults (JPEG quality 95; PNG), outcome
"OK <length> <fnv1a64 of the encoded bytes>".
outcome is "OK h w c fnv1a64" (FNV-1a 64 of the decoded (H,W,C) bytes) or
"ERR <text the error message must contain>" (OpenCV returns no image there,
or — native mode — a pixel type Caffe's Data layer cannot use).
"""
import ctypes, os, struct, sys, zlib
import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMG = os.path.join(ROOT, "tests", "data", "images")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MODES = {"color": cv2.IMREAD_COLOR, "gray": cv2.IMREAD_GRAYSCALE, "native": cv2.IMREAD_UNCHANGED}


def fnv1a64(b):
    h = 0xcbf29ce484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001b3) & 0xffffffffffffffff
    return h


def fnv1a64_np(a):
    # vectorised enough for a few megapixels: fold bytes in order
    h = 0xcbf29ce484222325
    p = 0x100000001b3
    for x in a.tobytes():
        h = ((h ^ x) * p) & 0xffffffffffffffff
    return h


def textured(h, w, c, seed):
    """A smooth picture plus noise, so that JPEG keeps some detail."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = [(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(w + h - 2, 1))]
    img = np.stack([base[k % 3] for k in range(c)], axis=2).astype(np.int32)
    img += rng.integers(-30, 31, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_chunk(t, data):
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xffffffff)


def png_bytes(w, h, bit_depth, color_type, raw_rows, extra=b""):
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    data = b"".join(b"\x00" + r for r in raw_rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra +
            png_chunk(b"IDAT", zlib.compress(data, 9)) + png_chunk(b"IEND", b""))


def write(name, data):
    with open(os.path.join(IMG, name), "wb") as f:
        f.write(data)


def ycck_jpeg(cmyk):
    """A CMYK image compressed by TurboJPEG (it stores CMYK as YCCK, with an
    Adobe APP14 marker, as Photoshop does)."""
    tj = ctypes.CDLL("libturbojpeg.so.0")
    tj.tjInitCompress.restype = ctypes.c_void_p
    h = tj.tjInitCompress()
    buf = ctypes.POINTER(ctypes.c_ubyte)()
    size = ctypes.c_ulong(0)
    hh, ww, _ = cmyk.shape
    src = np.ascontiguousarray(cmyk)
    TJPF_CMYK, TJSAMP_420 = 11, 2
    rc = tj.tjCompress2(ctypes.c_void_p(h), src.ctypes.data_as(ctypes.c_void_p), ww, 0, hh, TJPF_CMYK,
                        ctypes.byref(buf), ctypes.byref(size), TJSAMP_420, 90, 0)
    assert rc == 0
    out = bytes(bytearray(buf[:size.value]))
    tj.tjFree(buf)
    tj.tjDestroy(ctypes.c_void_p(h))
    return out


def with_exif_orientation(jpeg, orientation):
    """Insert an APP1 Exif segment holding only the Orientation tag."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + \
        struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def make_fixtures():
    os.makedirs(IMG, exist_ok=True)
    col = textured(12, 16, 3, 1)
    ok, j = cv2.imencode(".jpg", col, [cv2.IMWRITE_JPEG_QUALITY, 90])
    j = j.tobytes()
    write("colour.jpg", j)
    write("with space.jpg", j)
    ok, g = cv2.imencode(".jpg", textured(12, 16, 1, 2)[:, :, 0])
    write("grey.jpg", g.tobytes())
    cmyk = textured(10, 14, 4, 3)
    write("cmyk_ycck.jpg", ycck_jpeg(cmyk))
    big = textured(48, 64, 3, 4)
    ok, b = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    b = b.tobytes()
    write("truncated.jpg", b[: len(b) * 6 // 10])
    write("exif_rot6.jpg", with_exif_orientation(j, 6))
    write("exif_rot3.jpg", with_exif_orientation(j, 3))
    ok, p = cv2.imencode(".png", col)
    write("png_named.jpg", p.tobytes())  # PNG content, .jpg name
    ok, p16 = cv2.imencode(".png", (textured(9, 11, 3, 5).astype(np.uint16) * 257 + 3))
    write("rgb16.png", p16.tobytes())
    rgba = np.concatenate([textured(9, 11, 3, 6), textured(9, 11, 1, 7)], axis=2)
    ok, pa = cv2.imencode(".png", rgba)
    write("rgba.png", pa.tobytes())
    # palette PNG with a transparent entry (tRNS), 4-bit indices
    rng = np.random.default_rng(8)
    pal = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (7, 10), dtype=np.uint8)
    rows = []
    for r in idx:
        packed = bytes((int(r[i]) << 4) | (int(r[i + 1]) if i + 1 < len(r) else 0) for i in range(0, len(r), 2))
        rows.append(packed)
    write("palette_trns.png", png_bytes(10, 7, 4, 3, rows, png_chunk(b"PLTE", pal.tobytes()) +
                                         png_chunk(b"tRNS", bytes([255, 0, 128]))))
    # grey + alpha, 8-bit
    ga = textured(6, 5, 2, 9)
    write("grey_alpha.png", png_bytes(5, 6, 8, 4, [ga[y].tobytes() for y in range(6)]))
    # 1-bit grey
    bits = rng.integers(0, 2, (5, 9), dtype=np.uint8)
    rows = [np.packbits(r).tobytes() for r in bits]
    write("grey1.png", png_bytes(9, 5, 1, 0, rows))
    # PNG cut inside its image data
    write("truncated.png", p.tobytes()[: len(p) // 2])
    write("empty.jpg", b"")
    # the smallest valid GIF (1x1), named .jpg
    write("gif_named.jpg", bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"))
    write("bmp_named.jpg", b"BM" + bytes(60))
    write("text_named.jpg", b"<html>not an image</html>\n")


def jpeg_info(path):
    """(progressive, sampling string, has DRI, has Adobe APP14, has ICC, has EXIF)."""
    d = open(path, "rb").read()
    pos, prog, samp, dri, adobe, icc, exif = 2, False, "", False, False, False, False
    while pos + 4 <= len(d) and d[pos] == 0xFF:
        m = d[pos + 1]
        if m == 0xFF:
            pos += 1
            continue
        n = struct.unpack(">H", d[pos + 2:pos + 4])[0]
        seg = d[pos + 4:pos + 2 + n]
        if m in (0xC0, 0xC1, 0xC2):
            prog = m == 0xC2
            nc = seg[5]
            samp = ",".join("%dx%d" % (seg[6 + 3 * i + 1] >> 4, seg[6 + 3 * i + 1] & 15) for i in range(nc))
        if m == 0xDD: dri = True
        if m == 0xEE and seg[:5] == b"Adobe": adobe = True
        if m == 0xE2 and seg[:11] == b"ICC_PROFILE": icc = True
        if m == 0xE1 and seg[:4] == b"Exif": exif = True
        if m == 0xDA: break
        pos += 2 + n
    return prog, samp, dri, adobe, icc, exif


def pick_hymenoptera():
    base = os.path.join(SHARED, "datasets", "hymenoptera")
    files = sorted(os.path.join(c, f) for c in ("ants", "bees") for f in os.listdir(os.path.join(base, c)))
    picked, seen = [], set()
    want = {"progressive": 2, "4:4:0": 1, "4:2:2": 1, "4:2:0": 1, "dri": 2, "adobe": 2, "icc": 1, "exif": 1}
    for f in files:
        p = os.path.join(base, f)
        if open(p, "rb").read(3) != b"\xff\xd8\xff":
            continue
        prog, samp, dri, adobe, icc, exif = jpeg_info(p)
        kinds = []
        if prog: kinds.append("progressive")
        if samp.startswith("1x2"): kinds.append("4:4:0")
        if samp.startswith("2x1"): kinds.append("4:2:2")
        if samp.startswith("2x2") and not prog: kinds.append("4:2:0")
        if dri: kinds.append("dri")
        if adobe: kinds.append("adobe")
        if icc: kinds.append("icc")
        if exif: kinds.append("exif")
        for k in kinds:
            if want.get(k, 0) > 0 and f not in seen:
                want[k] -= 1
                seen.add(f)
                picked.append(f)
    for f in ("ants/formica.jpeg", "ants/ant photos.jpg", "ants/F.pergan.28(f).jpg"):
        if f not in seen:
            picked.append(f)
    return ["datasets/hymenoptera/" + f for f in picked]


def outcome(path, mode, data):
    """What cv2.imread (the decoder of Caffe's convert_imageset) returns.
    cv2.imdecode (Caffe's decoder for encoded Datums) gives the same pixels,
    except for truncated JPEGs: OpenCV 4.6's memory source suspends at the end
    of the data and repeats the last decoded row, where the file reader (and
    libjpeg-turbo's own memory source, which moka uses) fill the rest with
    grey. moka follows imread there."""
    flag = MODES[mode]
    img = cv2.imread(path, flag) if data else None
    dec = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
    if img is not None and "truncated" not in path:
        assert dec is not None and dec.shape == img.shape and (dec == img).all(), path
    if img is None:
        return None
    if img.dtype != np.uint8:
        return "ERR 16-bit"
    if img.ndim == 3 and img.shape[2] == 4:
        return "ERR 4-channel"
    c = 1 if img.ndim == 2 else img.shape[2]
    return "OK %d %d %d %016x" % (img.shape[0], img.shape[1], c, fnv1a64_np(np.ascontiguousarray(img)))


ERRORS = {  # what our message must contain where OpenCV returns no image
    "empty.jpg": "empty file", "gif_named.jpg": "GIF image: not supported",
    "bmp_named.jpg": "BMP image: not supported", "text_named.jpg": "not a JPEG or PNG",
    "truncated.png": "PNG", "imageNotFound.gif": "GIF image: not supported",
}


def main():
    make_fixtures()
    lines = []
    entries = [("tests/data/images/" + f, os.path.join(IMG, f)) for f in sorted(os.listdir(IMG))]
    entries += [("shared:golden/lmdb/images/img%d.jpg" % k, os.path.join(SHARED, "golden/lmdb/images/img%d.jpg" % k))
                for k in range(8)]
    entries += [("shared:" + r, os.path.join(SHARED, r)) for r in pick_hymenoptera()]
    entries.append(("shared:datasets/hymenoptera/ants/imageNotFound.gif",
                    os.path.join(SHARED, "datasets/hymenoptera/ants/imageNotFound.gif")))
    for rel, path in entries:
        data = open(path, "rb").read()
        for mode in ("color", "gray", "native"):
            o = outcome(path, mode, data)
            if o is None:
                o = "ERR " + ERRORS[os.path.basename(path)]
            lines.append("%s\t%s\t%s" % (rel, mode, o))
    # cv2.imencode of decoded images: "OK <bytes> <fnv1a64 of the encoded bytes>"
    for rel, path in [("tests/data/images/colour.jpg", os.path.join(IMG, "colour.jpg")),
                      ("tests/data/images/grey.jpg", os.path.join(IMG, "grey.jpg")),
                      ("shared:golden/lmdb/images/img5.jpg", os.path.join(SHARED, "golden/lmdb/images/img5.jpg"))]:
        for mode, flag in (("color", cv2.IMREAD_COLOR), ("gray", cv2.IMREAD_GRAYSCALE)):
            img = cv2.imread(path, flag)
            for ext, tag in ((".jpg", "imencode_jpg95"), (".png", "imencode_png")):
                ok, enc = cv2.imencode(ext, img)
                lines.append("%s\t%s_%s\tOK %d %016x" % (rel, tag, mode, len(enc), fnv1a64(enc.tobytes())))
    with open(os.path.join(ROOT, "tests", "data", "image_expect.txt"), "w") as f:
        f.write("# generated by tests/data/gen_image_expect.py from cv2 %s: path<TAB>mode<TAB>outcome\n" % cv2.__version__)
        f.write("\n".join(lines) + "\n")
    print("%d lines" % len(lines))


if __name__ == "__main__":
    main()
