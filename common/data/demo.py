"""Synthetic COCO-format shape-detection dataset: the default data `sh train.sh` trains on.

    python -m common.data.demo --out DIR [--num-train 2000] [--num-val 200] [--seed 0] [--workers W]

writes ``DIR/train/NNNNNN.jpg``, ``DIR/val/NNNNNN.jpg``, ``DIR/instances_{train,val}.json`` and, last,
``DIR/.complete`` holding the generation parameters. ``ensure_demo(DIR)`` regenerates only when that marker
is missing or records other parameters, so an interrupted run is redone on next use.

Defaults: 2000 train / 200 val images (~11k / ~1.1k boxes), seed 0; generating it takes well under a minute on
2 cores. Sized for a small DETR-family model trained from scratch on a 2-core CPU in about 15 minutes: the demo
config (`configs/demo.yml`) reaches a bbox AP of 0.43-0.47 in about 20-27 minutes, as it evaluates (class-wise
NMS, short side 288; README, "The demo"), short of the 0.5 in 15 minutes the dataset was meant to allow.

Content of each image (width and height drawn independently from [160, 256]):
- background: a two-colour linear gradient plus smooth low-frequency colour noise, then 0-5 distractors
  (irregular semi-transparent blobs filled with stripes / checkers / noise texture, thin scribbled polylines)
  that are none of the classes;
- 1-10 shapes of 6 classes, uniformly: circle, ring, triangle, rectangle, star, cross. Confusable pairs
  are deliberate: circle / ring (thick rings), rectangle / cross (wide arms), star / triangle when small.
  Size (longer side of the unrotated shape) is uniform in [12 px, half the shorter image side]; every shape
  gets a class-specific aspect distortion, a uniform rotation and up to ~20% truncation at the image border.
  Fill colour is uniform in HSV, independent of the class, re-drawn (up to a few times) only to contrast
  with what lies underneath, plus a random linear shading;
- shapes are drawn in order and later ones occlude earlier ones. Most are placed so as not to bury an
  earlier one, 20% anywhere: ~24% of objects end up partly hidden, ~1.5% dropped (see below).
  Per-pixel Gaussian noise (sigma 2-8) comes last.

Annotations use the *visible* mask (COCO convention): an object's mask is its 4x-supersampled coverage
>= 0.5, minus the masks of every later shape, clipped to the image. ``bbox`` is the tight pixel box of
that visible mask and ``area`` its pixel count. An object whose visible mask is under 30% of its full mask
(occluded or truncated by more than ~70%) is dropped; it stays drawn, as unlabeled clutter. The last shape
drawn is never occluded, so every image has at least one box. Category ids are 1..6 in the order above.

Images are JPEG (quality 95, no chroma subsampling): the per-pixel noise makes PNGs ~4x larger for no
visible gain, and real COCO images are JPEGs too. Output is byte-identical for a given seed and parameters,
whatever the number of workers: image ``i`` of split ``s`` draws only from
``np.random.default_rng([seed, s, i])`` (train s=0, val s=1).
"""
import argparse
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

CLASSES = ("circle", "ring", "triangle", "rectangle", "star", "cross")
SPLITS = {"train": 0, "val": 1}
NUM_TRAIN, NUM_VAL, SEED = 2000, 200, 0
SIDE_RANGE = (160, 256)        # image width and height, inclusive
MIN_SIZE = 12                  # smallest shape size, pixels
MAX_OBJECTS = 10
FREE_PLACEMENT = 0.2           # fraction of objects placed anywhere, ignoring what they hide
MIN_VISIBLE = 0.3              # keep an object when at least this fraction of its mask is visible
SUPERSAMPLE = 4                # shapes are rasterised at 4x and box-filtered down (anti-aliasing)
JPEG_QUALITY = 95
MARKER = ".complete"
VERSION = 2                    # bump when the generator's output changes, so cached datasets regenerate

# Class-specific ranges: aspect = height / width of the unrotated shape, and one shape parameter
# (ring: hole radius; triangle: apex x offset; star: inner radius; cross: arm half-width; all in unit box).
_ASPECT = {"circle": (0.75, 1.0), "ring": (0.75, 1.0), "triangle": (0.6, 1.0),
           "rectangle": (0.45, 1.0), "star": (0.8, 1.0), "cross": (0.7, 1.0)}
_PARAM = {"circle": (0.0, 0.0), "ring": (0.45, 0.7), "triangle": (-0.7, 0.7),
          "rectangle": (0.0, 0.0), "star": (0.38, 0.55), "cross": (0.2, 0.34)}


@dataclass(frozen=True)
class Shape:
    """One object's geometry; colour and occlusion are decided when it is drawn."""
    label: int        # index into CLASSES (COCO category id is label + 1)
    cx: float         # centre, pixels
    cy: float
    size: float       # width of the unrotated shape, pixels
    aspect: float     # unrotated height / width, <= 1
    angle: float      # rotation, radians
    param: float      # class-specific, see _PARAM


@dataclass
class Sample:
    """A rendered image and its objects in drawing order (dropped ones included)."""
    image: np.ndarray      # uint8 [H, W, 3]
    shapes: list           # [Shape] * n
    colors: np.ndarray     # float32 [n, 3], fill colour (before shading), 0..255
    boxes: np.ndarray      # float64 [n, 4], xywh tight box of the visible mask (zeros if none visible)
    areas: np.ndarray      # int64 [n], visible mask pixels
    keep: np.ndarray       # bool [n], visible fraction >= MIN_VISIBLE


def _regular(n, radius=1.0, start=-np.pi / 2):
    """Vertices of a regular n-gon on a circle of `radius`: float64 [n, 2]."""
    t = start + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], 1)


def outline(label, param):
    """Unit outline of a class in [-1, 1]^2 (y down): [(vertices float64 [k, 2], fill 255 or 0)].

    Fill 0 polygons are holes, drawn after the filled ones.
    """
    name = CLASSES[label]
    if name == "circle":
        return [(_regular(64), 255)]
    if name == "ring":
        return [(_regular(64), 255), (_regular(64, param), 0)]
    if name == "triangle":
        return [(np.array([[-1.0, 1.0], [1.0, 1.0], [param, -1.0]]), 255)]
    if name == "rectangle":
        return [(np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 255)]
    if name == "star":
        pts = _regular(10)
        pts[1::2] *= param
        return [(pts, 255)]
    t = param  # cross: plus sign with arms of half-width t
    return [(np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t],
                       [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]], float), 255)]


def shape_polygons(shape):
    """Outline of `shape` in image pixels (pixel (x, y) spans [x, x+1) x [y, y+1)): [(float64 [k, 2], fill)]."""
    half = 0.5 * shape.size * np.array([1.0, shape.aspect])
    c, s = np.cos(shape.angle), np.sin(shape.angle)
    rot = np.array([[c, s], [-s, c]])  # row-vector form of a rotation by `angle`
    return [((pts * half) @ rot + (shape.cx, shape.cy), fill) for pts, fill in outline(shape.label, shape.param)]


def shape_alpha(shape):
    """Anti-aliased coverage of one shape, possibly extending past the image.

    Returns (alpha float32 [h, w] in [0, 1], x0, y0): alpha[r, c] is the coverage of image pixel (x0 + c, y0 + r).
    """
    polys = shape_polygons(shape)
    pts = np.concatenate([p for p, _ in polys])
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    w, h, s = x1 - x0, y1 - y0, SUPERSAMPLE
    canvas = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(canvas)
    for p, fill in polys:
        # PIL fills (and outlines, dilating by < 1 sub-pixel) with pixel i spanning [i, i+1): no offset needed
        draw.polygon(((p - (x0, y0)) * s).ravel().tolist(), fill=fill)
    alpha = np.asarray(canvas, np.float32).reshape(h, s, w, s).mean((1, 3)) / 255.0
    return alpha, int(x0), int(y0)


def _lens_area(r1, r2, d):
    """Intersection area of two discs with radii r1, r2 whose centres are d apart (scalars)."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return np.pi * min(r1, r2) ** 2
    a1 = r1 * r1 * np.arccos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    a2 = r2 * r2 * np.arccos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    tri = 0.5 * np.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
    return a1 + a2 - tri


def sample_layout(rng, width, height):
    """Draw the objects of one image (geometry only, nothing rendered): [Shape] * n, 1 <= n <= MAX_OBJECTS.

    Centres are re-drawn up to 8 times to keep any earlier object's disc from being more than 35% covered
    by the new one (the least-covering try wins otherwise), so clutter stays fair; a FREE_PLACEMENT
    fraction of objects skips this, so heavy occlusion (and dropped boxes) still happen.
    """
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    max_size = max(MIN_SIZE, 0.5 * min(width, height))
    shapes, discs = [], []
    for _ in range(n):
        label = int(rng.integers(len(CLASSES)))
        name = CLASSES[label]
        size = rng.uniform(MIN_SIZE, max_size)
        aspect = rng.uniform(*_ASPECT[name])
        angle = rng.uniform(0, 2 * np.pi)
        param = rng.uniform(*_PARAM[name])
        r = 0.5 * size * np.sqrt(aspect)  # radius of a disc of roughly the shape's area
        margin = 0.3 * size               # lets up to ~20% of the shape leave the image
        best, tries = None, 1 if rng.uniform() < FREE_PLACEMENT else 8
        for _ in range(tries):
            cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            cover = max([_lens_area(r0, r, np.hypot(cx - x, cy - y)) / (np.pi * r0 * r0) for x, y, r0 in discs],
                        default=0.0)
            if best is None or cover < best[0]:
                best = (cover, cx, cy)
            if cover <= 0.35:
                break
        _, cx, cy = best
        discs.append((cx, cy, r))
        shapes.append(Shape(label, float(cx), float(cy), float(size), float(aspect), float(angle), float(param)))
    return shapes


def _hsv_to_rgb(h, s, v):
    """HSV in [0, 1] (float64 [k] each) -> RGB float64 [k, 3] in 0..255."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([np.stack(c, 1) for c in
                      [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]])  # [6, k, 3]
    return 255.0 * table[i, np.arange(len(h))]


def random_colors(rng, k):
    """k colours uniform in HSV (s in [0.2, 1], v in [0.25, 1]): float64 [k, 3] in 0..255."""
    return _hsv_to_rgb(rng.uniform(0, 1, k), rng.uniform(0.2, 1, k), rng.uniform(0.25, 1, k))


def _pick_color(rng, under):
    """A random colour that stands out from `under` (float [3], e.g. the mean colour beneath a shape): float64 [3].

    Up to 6 draws; the first at distance >= 80 wins, else the farthest. Never depends on an object's class.
    """
    best, best_d = None, -1.0
    for color in random_colors(rng, 6):
        d = float(np.linalg.norm(color - under))
        if d > best_d:
            best, best_d = color, d
        if d >= 80:
            break
    return best


def _smooth_noise(rng, height, width, cells, channels):
    """Bicubically upsampled Gaussian noise on a cells x cells grid: float32 [height, width, channels]."""
    low = rng.standard_normal((channels, cells, cells)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(c, "F").resize((width, height), Image.BICUBIC)) for c in low], -1)


def _blob(rng, width, height):
    """Irregular closed outline somewhere in the image: float64 [32, 2].

    Radial harmonics 2-4 of amplitude >= 0.1 each keep it clearly non-circular (it must not pass for a class).
    """
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    k = np.arange(2, 5)[:, None]
    radius = 1 + (rng.uniform(0.1, 0.3, (3, 1)) * np.cos(k * t + rng.uniform(0, 2 * np.pi, (3, 1)))).sum(0)
    radius *= rng.uniform(0.1, 0.3) * min(width, height)
    centre = rng.uniform(0, 1, 2) * (width, height)
    return centre + radius[:, None] * np.stack([np.cos(t), np.sin(t)], 1)


def _texture(rng, height, width):
    """A non-shape texture in [0, 1]: stripes, checkers or fine noise: float32 [height, width]."""
    kind = rng.integers(3)
    if kind == 2:
        return rng.uniform(0, 1, (height, width)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period, a = rng.uniform(3, 9), rng.uniform(0, np.pi)
    u = (xx * np.cos(a) + yy * np.sin(a)) / period
    if kind == 0:
        return (np.floor(u) % 2).astype(np.float32)
    v = (-xx * np.sin(a) + yy * np.cos(a)) / period
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)


def background(rng, height, width):
    """Gradient + smooth colour noise + 0-5 distractors (textured blobs, scribbles): float32 [height, width, 3]."""
    c0, c1 = random_colors(rng, 2)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx * np.cos(a) + yy * np.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0 + t[..., None] * (c1 - c0)
    img += rng.uniform(8, 35) * _smooth_noise(rng, height, width, int(rng.integers(3, 9)), 3)
    for _ in range(int(rng.integers(0, 6))):
        layer = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(layer)
        if rng.uniform() < 0.6:
            draw.polygon(_blob(rng, width, height).ravel().tolist(), fill=255)
            pattern = _texture(rng, height, width)
        else:
            pts = rng.uniform(0, 1, (int(rng.integers(2, 6)), 2)) * (width, height)
            draw.line(pts.ravel().tolist(), fill=255, width=int(rng.integers(1, 4)), joint="curve")
            pattern = np.ones((height, width), np.float32)
        alpha = np.asarray(layer, np.float32)[..., None] / 255.0 * rng.uniform(0.3, 0.9)
        ca = random_colors(rng, 1)[0]
        cb = _pick_color(rng, ca)  # a visible texture, never a flat patch
        fill = cb + pattern[..., None] * (ca - cb)
        img = img * (1 - alpha) + fill * alpha
    return img.astype(np.float32)


def _crop(x0, y0, h, w, height, width):
    """Slices of a patch at (x0, y0) of size h x w and of the image where they overlap (may be empty)."""
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    xb, yb = max(xa, xb), max(ya, yb)
    return (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)), (slice(ya, yb), slice(xa, xb))


def render_sample(seed, split_id, index):
    """Render image `index` of split `split_id` from rng([seed, split_id, index]) -> Sample."""
    rng = np.random.default_rng([seed, split_id, index])
    width, height = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, 2))
    shapes = sample_layout(rng, width, height)
    img = background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)  # index of the topmost shape whose mask covers each pixel
    full, colors = [], []
    for k, shape in enumerate(shapes):
        alpha, x0, y0 = shape_alpha(shape)
        mask = alpha >= 0.5
        full.append(int(mask.sum()))
        ps, ims = _crop(x0, y0, *alpha.shape, height, width)
        a, m = alpha[ps], mask[ps]
        region = img[ims]
        color = _pick_color(rng, region[m].mean(0) if m.any() else region.reshape(-1, 3).mean(0))
        colors.append(color)
        # linear shading across the shape, up to +-40 levels, so fills are not flat
        yy, xx = np.mgrid[ims[0], ims[1]].astype(np.float32)
        gx, gy = rng.uniform(-40, 40, 2) / max(shape.size, 1.0)
        fill = color + ((xx - shape.cx) * gx + (yy - shape.cy) * gy)[..., None]
        img[ims] = region * (1 - a[..., None]) + fill * a[..., None]
        owner[ims][m] = k
    img += rng.uniform(2, 8) * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    n = len(shapes)
    boxes, areas = np.zeros((n, 4)), np.bincount(owner[owner >= 0], minlength=n).astype(np.int64)
    for k in np.flatnonzero(areas):
        ys, xs = np.nonzero(owner == k)
        boxes[k] = xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    keep = areas >= MIN_VISIBLE * np.array(full)
    return Sample(image, shapes, np.array(colors, np.float32).reshape(n, 3), boxes, areas, keep)


def _write_image(job):
    """Worker: render one image, save it, return its COCO image record and annotations (ids filled later)."""
    out_dir, seed, split, index = job
    sample = render_sample(seed, SPLITS[split], index)
    name = f"{index:06d}.jpg"
    Image.fromarray(sample.image).save(os.path.join(out_dir, split, name), quality=JPEG_QUALITY, subsampling=0)
    height, width = sample.image.shape[:2]
    anns = [{"category_id": sample.shapes[k].label + 1, "bbox": [float(v) for v in sample.boxes[k]],
             "area": float(sample.areas[k]), "iscrowd": 0} for k in np.flatnonzero(sample.keep)]
    return {"id": index + 1, "file_name": name, "width": width, "height": height}, anns


def _coco(images, anns_per_image, split, seed):
    """COCO detection dict from image records and per-image annotation lists (ids assigned in order)."""
    anns = []
    for img, img_anns in zip(images, anns_per_image):
        for a in img_anns:
            anns.append({"id": len(anns) + 1, "image_id": img["id"], **a})
    return {"info": {"description": f"common.data.demo synthetic shapes, {split} split, seed {seed}",
                     "version": str(VERSION)},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]}


def _write_json(path, obj):
    """Write json atomically (temp file + rename), so a reader never sees half a file."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _params(num_train, num_val, seed):
    return {"version": VERSION, "num_train": int(num_train), "num_val": int(num_val), "seed": int(seed)}


def generate(out_dir, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, workers=None, progress=True):
    """Write the demo dataset into `out_dir` (overwriting it), the marker last. Returns {split: COCO dict}.

    `workers`: processes to render with (default: all CPUs; 1 renders in this process). The output does not
    depend on it.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"demo dataset: num_train and num_val must be >= 0, got {num_train} and {num_val}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)  # from here on the directory counts as incomplete
    workers = max(1, int(workers or os.cpu_count() or 1))
    counts = {"train": int(num_train), "val": int(num_val)}
    jobs = []
    for split, n in counts.items():
        (out / split).mkdir(exist_ok=True)
        jobs += [(str(out), int(seed), split, i) for i in range(n)]
    bar = dict(total=len(jobs), desc="demo dataset", unit="img", disable=not progress)
    if workers == 1 or len(jobs) < 2:
        results = [_write_image(j) for j in tqdm(jobs, **bar)]
    else:
        # spawn, not fork: callers (training scripts) may hold framework threads that fork does not survive
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = list(tqdm(pool.imap(_write_image, jobs, chunksize=8), **bar))
    datasets, start = {}, 0
    for split, n in counts.items():
        part = results[start:start + n]
        start += n
        datasets[split] = _coco([r[0] for r in part], [r[1] for r in part], split, seed)
        _write_json(out / f"instances_{split}.json", datasets[split])
        for f in (out / split).iterdir():  # images left over from an earlier, larger generation
            if re.fullmatch(r"\d{6}\.jpg", f.name) and int(f.name[:6]) >= n:
                f.unlink()
    _write_json(out / MARKER, _params(num_train, num_val, seed))
    return datasets


def is_complete(out_dir, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED):
    """True when `out_dir` holds a finished generation with exactly these parameters."""
    out = Path(out_dir)
    try:
        params = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return params == _params(num_train, num_val, seed) and all(
        (out / f"instances_{s}.json").is_file() for s in SPLITS)


def ensure_demo(out_dir, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, workers=None, progress=True):
    """Generate the demo dataset into `out_dir` unless a complete one with these parameters is there -> Path."""
    if not is_complete(out_dir, num_train, num_val, seed):
        generate(out_dir, num_train, num_val, seed, workers, progress)
    return Path(out_dir)


def summary(datasets):
    """One line per split: images, boxes, boxes per class."""
    lines = []
    for split, d in datasets.items():
        per_class = np.bincount([a["category_id"] for a in d["annotations"]], minlength=len(CLASSES) + 1)[1:]
        classes = ", ".join(f"{n} {c}" for n, c in zip(CLASSES, per_class))
        lines.append(f"{split}: {len(d['images'])} images, {len(d['annotations'])} boxes ({classes})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m common.data.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN, help=f"training images (default {NUM_TRAIN})")
    parser.add_argument("--num-val", type=int, default=NUM_VAL, help=f"validation images (default {NUM_VAL})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    args = parser.parse_args(argv)
    if args.num_train < 0 or args.num_val < 0:
        parser.error("--num-train and --num-val must be >= 0")
    start = time.time()
    try:
        datasets = generate(args.out, args.num_train, args.num_val, args.seed, args.workers)
    except OSError as e:
        print(f"python -m common.data.demo: cannot write the dataset to {args.out}: {e}", file=sys.stderr)
        return 1
    print(summary(datasets))
    print(f"wrote {args.out} in {time.time() - start:.1f}s (classes: {', '.join(CLASSES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
