"""Transforms keep boxes on their pixels: solid rectangles of distinct colours are drawn at known boxes,
transformed, and each rectangle's extent is recovered from the pixels and compared with its box.

Recovery: a pixel belongs to a colour when every channel is within 127 of it, i.e. when the colour covers
more than half of the pixel, so the recovered extent is the box rounded to whole pixels. Tolerances:
0 px where only integer pixel moves happen (flip, crop), 1 px after bilinear resampling.
"""
import numpy as np
import pytest
from PIL import Image

from common.data.transforms import (Compose, Normalize, RandomHorizontalFlip, RandomResize, RandomSelect,
                                    RandomSizeCrop, build_transforms, crop, hflip, resize, resized_hw)

# Corners of the RGB cube: any two differ by 255 in some channel, so they never get confused.
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255],
                   [255, 255, 255]], dtype=np.int64)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RESAMPLE_TOL = 1.0


def scene(width, height, boxes):
    """Black image with box k (xyxy, integers) filled with COLORS[k], and its target."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        pixels[y0:y1, x0:x1] = COLORS[k]
    n = len(boxes)
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    target = {"boxes": boxes, "labels": np.arange(n, dtype=np.int64), "iscrowd": np.zeros(n, dtype=np.int64),
              "area": ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32),
              "image_id": np.int64(1), "orig_size": np.array([height, width]), "size": np.array([height, width])}
    return Image.fromarray(pixels), target


def extent(pixels, color):
    """xyxy extent (pixel edges) of the pixels more than half covered by `color`, or None."""
    mask = (np.abs(pixels.astype(np.int64) - color) <= 127).all(axis=-1)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def assert_aligned(pixels, boxes, labels, tol, min_side=0.0):
    """Every listed box matches its colour's pixel extent within `tol` px (boxes thinner than min_side
    are not checked: they may cover no pixel by half); colours of removed boxes left no pixel."""
    for box, label in zip(boxes, labels):
        if min(box[2] - box[0], box[3] - box[1]) < min_side:
            continue
        found = extent(pixels, COLORS[label])
        assert found is not None, f"label {label} box {box} has no pixels"
        np.testing.assert_allclose(found, box, atol=tol, err_msg=f"label {label}")
    for label in set(range(len(COLORS))) - set(np.asarray(labels).tolist()):
        assert extent(pixels, COLORS[label]) is None, f"label {label} was removed but its pixels remain"


BOXES = [(5, 8, 40, 30), (50, 4, 90, 60), (10, 40, 30, 75), (60, 66, 95, 78), (100, 10, 118, 70)]


def test_resized_hw_follows_detr_rounding():
    assert resized_hw(480, 640, 800, 1333) == (800, 1066)  # int(800 * 640 / 480) = 1066
    assert resized_hw(640, 480, 800, 1333) == (1066, 800)
    # long side too long: short side -> round(1333 * 200 / 1000) = 267, long = int(267 * 5) = 1335
    assert resized_hw(200, 1000, 800, 1333) == (267, 1335)
    assert resized_hw(800, 1000, 800, 1333) == (800, 1000)  # already there: unchanged
    assert resized_hw(300, 300, 128, None) == (128, 128)
    assert resized_hw(100, 3000, 800, None) == (800, 24000)


def test_hflip_is_exact():
    image, target = scene(120, 80, BOXES)
    flipped, out = hflip(image, target)
    expected = np.array([[120 - x1, y0, 120 - x0, y1] for x0, y0, x1, y1 in BOXES], dtype=np.float32)
    np.testing.assert_array_equal(out["boxes"], expected)
    assert_aligned(np.asarray(flipped), out["boxes"], out["labels"], tol=0)
    np.testing.assert_array_equal(target["boxes"], np.array(BOXES, dtype=np.float32))  # input untouched


@pytest.mark.parametrize("size,max_size", [(48, None), (57, None), (200, None), (160, 170), (333, 250)])
def test_resize_keeps_boxes_on_pixels(size, max_size):
    image, target = scene(120, 80, BOXES)
    resized, out = resize(image, target, size, max_size)
    height, width = resized_hw(80, 120, size, max_size)
    assert resized.size == (width, height) and out["size"].tolist() == [height, width]
    scale = np.array([width / 120, height / 80] * 2)
    np.testing.assert_allclose(out["boxes"], np.array(BOXES) * scale, rtol=1e-6)
    np.testing.assert_allclose(out["area"], target["area"] * scale[0] * scale[1], rtol=1e-5)
    assert_aligned(np.asarray(resized), out["boxes"], out["labels"], tol=RESAMPLE_TOL)


def test_crop_clips_and_removes_boxes_with_their_fields():
    image, target = scene(120, 80, BOXES)
    target["iscrowd"] = np.array([0, 1, 0, 1, 0])
    cropped, out = crop(image, target, top=20, left=30, height=50, width=60)
    # box 0 -> [0, 0, 10, 10]; box 1 -> [20, 0, 60, 40]; box 2 -> x in [-20, 0]: removed;
    # box 3 -> [30, 46, 60, 50]; box 4 -> starts at x=70 > 60: removed
    np.testing.assert_array_equal(out["boxes"], [[0, 0, 10, 10], [20, 0, 60, 40], [30, 46, 60, 50]])
    np.testing.assert_array_equal(out["labels"], [0, 1, 3])
    np.testing.assert_array_equal(out["iscrowd"], [0, 1, 1])
    np.testing.assert_array_equal(out["area"], [100, 1600, 120])
    assert out["size"].tolist() == [50, 60] and cropped.size == (60, 50)
    assert_aligned(np.asarray(cropped), out["boxes"], out["labels"], tol=0)


def test_random_size_crop_draws_sizes_in_range():
    image, target = scene(120, 80, BOXES)
    heights, widths = set(), set()
    for seed in range(300):
        cropped, out = RandomSizeCrop(30, 100)(image, target, np.random.default_rng(seed))
        height, width = out["size"].tolist()
        assert cropped.size == (width, height) and 30 <= height <= 80 and 30 <= width <= 100
        heights.add(height)
        widths.add(width)
        assert_aligned(np.asarray(cropped), out["boxes"], out["labels"], tol=0)
    assert min(heights) <= 33 and max(heights) >= 77 and min(widths) <= 33 and max(widths) >= 97
    # the window position is uniform too: pixels encode (x, y), so the crop's first pixel gives (left, top)
    ys, xs = np.mgrid[:80, :120]
    coords = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8))
    slack = []
    for seed in range(300):
        cropped, out = RandomSizeCrop(30, 100)(coords, target, np.random.default_rng(seed))
        left, top, _ = np.asarray(cropped)[0, 0]
        height, width = out["size"].tolist()
        assert 0 <= top <= 80 - height and 0 <= left <= 120 - width
        slack.append((top / max(80 - height, 1), left / max(120 - width, 1)))
    assert np.min(slack) == 0 and np.max(slack) == 1 and 0.4 < np.mean(slack) < 0.6
    # a side shorter than min_size is kept whole
    _, out = RandomSizeCrop(100, 200)(image, target, np.random.default_rng(0))
    assert out["size"].tolist()[0] == 80 and 100 <= out["size"][1] <= 120


def test_normalize_pixels_and_boxes():
    image, target = scene(120, 80, BOXES)
    pixels, out = Normalize(MEAN, STD)(image, target, np.random.default_rng(0))
    assert pixels.dtype == np.float32 and pixels.shape == (3, 80, 120)
    x0, y0, x1, y1 = BOXES[1]  # green rectangle
    np.testing.assert_allclose(pixels[:, y0, x0], (np.array([0, 1, 0]) - MEAN) / np.array(STD), rtol=1e-6)
    np.testing.assert_allclose(pixels[:, 0, 0], -np.array(MEAN) / np.array(STD), rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][1], [(x0 + x1) / 240, (y0 + y1) / 160, (x1 - x0) / 120, (y1 - y0) / 80],
                               rtol=1e-6)
    assert out["size"].tolist() == [80, 120]


def test_random_select_and_flip_use_their_probabilities():
    first = lambda image, target, rng: ("first", target)  # noqa: E731
    second = lambda image, target, rng: ("second", target)  # noqa: E731
    select = RandomSelect(first, second, p=0.3)
    picks = [select(None, {}, np.random.default_rng(s))[0] for s in range(4000)]
    # binomial(4000, 0.3): sd = 29; allow 5 sd
    assert abs(picks.count("first") - 1200) < 145
    image, target = scene(120, 80, BOXES)
    assert RandomHorizontalFlip(1.0)(image, target, np.random.default_rng(0))[1]["boxes"][0, 0] == 80
    assert RandomHorizontalFlip(0.0)(image, target, np.random.default_rng(0))[1] is target


def data_cfg(**train):
    train = {"hflip_prob": 0.5, "scales": [64, 80, 96], "max_size": 160, "crop_prob": 0.5,
             "crop_scales": [60, 80], "crop_size": [40, 70], **train}
    return {"mean": MEAN, "std": STD, "train": train, "val": {"size": 72, "max_size": 100}}


def denormalize(pixels):
    """float32 [3, H, W] normalized -> uint8 [H, W, 3]."""
    rgb = pixels.transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def to_xyxy_pixels(boxes, size):
    """cxcywh normalized [n, 4] -> xyxy pixels [n, 4] for size (h, w)."""
    height, width = size
    cx, cy, w, h = (boxes * np.array([width, height, width, height])).T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def test_full_train_pipeline_keeps_boxes_on_pixels():
    transforms = build_transforms(data_cfg(), "train", train=True)
    image, target = scene(120, 80, BOXES)
    sizes, counts = set(), set()
    for seed in range(60):
        pixels, out = transforms(image, target, np.random.default_rng(seed))
        assert pixels.shape[1:] == tuple(out["size"])
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 1 + 1e-6)).all()
        boxes = to_xyxy_pixels(out["boxes"], out["size"])
        # resampling twice (crop branch) blurs edges a little more; 1.5 px and sides >= 3 px checked
        assert_aligned(denormalize(pixels), boxes, out["labels"], tol=1.5, min_side=3.0)
        assert len(out["labels"]) == len(out["iscrowd"]) == len(out["area"]) == len(boxes)
        sizes.add(tuple(out["size"]))
        counts.add(len(boxes))
    assert len(sizes) > 5 and min(counts) < len(BOXES)  # several scales, and crops removed boxes


def test_eval_transforms_are_deterministic():
    transforms = build_transforms(data_cfg(), "val", train=False)
    image, target = scene(120, 80, BOXES)
    a, ta = transforms(image, target, np.random.default_rng(1))
    b, tb = transforms(image, target, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
    # 120 / 80 * 72 = 108 > max_size 100: short side round(100 * 80 / 120) = 67, long int(67 * 1.5) = 100
    assert ta["size"].tolist() == [67, 100]
    assert_aligned(denormalize(a), to_xyxy_pixels(ta["boxes"], ta["size"]), ta["labels"], tol=RESAMPLE_TOL)


def test_build_transforms_structure_and_errors():
    transforms = build_transforms(data_cfg(crop_prob=0.2), "train", train=True)
    flip, select, normalize = transforms.transforms
    assert isinstance(flip, RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(select, RandomSelect) and select.p == pytest.approx(0.8)
    assert isinstance(select.t1, RandomResize) and select.t1.max_size == 160
    assert isinstance(select.t2, Compose) and isinstance(normalize, Normalize)
    resize_a, cropper, resize_b = select.t2.transforms
    assert resize_a.scales == [60, 80] and resize_a.max_size is None
    assert (cropper.min_size, cropper.max_size) == (40, 70) and resize_b.scales == [64, 80, 96]
    cfg = data_cfg()
    del cfg["train"]["scales"]
    with pytest.raises(KeyError, match=r"data\.train\.scales"):
        build_transforms(cfg, "train", train=True)
    with pytest.raises(ValueError, match="crop_size"):
        build_transforms(data_cfg(crop_size=[40]), "train", train=True)
