"""Tests for the synthetic demo dataset (common/data/demo.py)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import demo

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_train=12, num_val=6, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 12 / 6 image dataset rendered in one process."""
    out = tmp_path_factory.mktemp("demo") / "w1"
    demo.generate(out, workers=1, progress=False, **SMALL)
    return out


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _shoelace(p):
    """Signed area and centroid of a polygon float [k, 2]."""
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    return area, np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)


def _visible_masks(sample):
    """Brute force, on the whole canvas: full mask size and visible mask [H, W] of every shape."""
    h, w = sample.image.shape[:2]
    pad = 4 * demo.SIDE_RANGE[1]
    canvas = []
    for shape in sample.shapes:
        alpha, x0, y0 = demo.shape_alpha(shape)
        big = np.zeros((h + 2 * pad, w + 2 * pad), bool)
        big[pad + y0:pad + y0 + alpha.shape[0], pad + x0:pad + x0 + alpha.shape[1]] = alpha >= 0.5
        canvas.append(big)
    full = [int(m.sum()) for m in canvas]
    visible = []
    for i, m in enumerate(canvas):
        later = np.any(canvas[i + 1:], axis=0) if i + 1 < len(canvas) else np.zeros_like(m)
        visible.append((m & ~later)[pad:pad + h, pad:pad + w])
    return full, visible


def test_same_bytes_for_one_or_two_workers_and_seed_matters(small, tmp_path):
    demo.generate(tmp_path / "w2", workers=2, progress=False, **SMALL)
    a, b = _files(small), _files(tmp_path / "w2")
    assert len(a) == 12 + 6 + 3 and a == b
    demo.generate(tmp_path / "again", workers=1, progress=False, **SMALL)
    assert _files(tmp_path / "again") == a
    demo.generate(tmp_path / "other", workers=1, progress=False, **{**SMALL, "seed": 4})
    other = _files(tmp_path / "other")
    assert all(other[k] != a[k] for k in a if k.endswith(".jpg"))


def test_coco_files_are_valid_and_consistent(small):
    cats = None
    sizes = set()
    for split, n in (("train", 12), ("val", 6)):
        d = json.loads((small / f"instances_{split}.json").read_text())
        assert [c["id"] for c in d["categories"]] == [1, 2, 3, 4, 5, 6]
        assert [c["name"] for c in d["categories"]] == list(demo.CLASSES)
        assert all(set(c) == {"id", "name", "supercategory"} for c in d["categories"])
        cats = cats or d["categories"]
        assert d["categories"] == cats  # both splits share one category list
        images = {im["id"]: im for im in d["images"]}
        assert sorted(images) == list(range(1, n + 1))
        for im in d["images"]:
            with Image.open(small / split / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"]) and f.mode == "RGB"
            assert demo.SIDE_RANGE[0] <= min(f.size) <= max(f.size) <= demo.SIDE_RANGE[1]
            sizes.add(f.size)
        anns = d["annotations"]
        assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        for a in anns:
            assert set(a) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0
            assert x + w <= im["width"] and y + h <= im["height"]
            assert 1 <= a["category_id"] <= 6 and a["iscrowd"] == 0
            assert 0 < a["area"] <= w * h
        per_image = np.bincount([a["image_id"] for a in anns], minlength=n + 1)[1:]
        # every image keeps 1..10 boxes: at most MAX_OBJECTS are drawn, the last one is never hidden
        assert per_image.min() >= 1 and per_image.max() <= demo.MAX_OBJECTS
    assert any(w != h for w, h in sizes) and len(sizes) > 10  # variable, not all square


def test_object_counts_cover_1_to_10(small):
    rng = np.random.default_rng(0)
    counts = np.array([len(demo.sample_layout(rng, 200, 180)) for _ in range(300)])
    assert counts.min() == 1 and counts.max() == demo.MAX_OBJECTS
    assert len(np.unique(counts)) == demo.MAX_OBJECTS
    d = json.loads((small / "instances_train.json").read_text())
    per_image = np.bincount([a["image_id"] for a in d["annotations"]], minlength=13)[1:]
    for i, n in enumerate(per_image):
        sample = demo.render_sample(SMALL["seed"], 0, i)
        assert n == sample.keep.sum() <= len(sample.shapes) <= demo.MAX_OBJECTS


def test_axis_aligned_square_is_exact():
    square = demo.Shape(demo.CLASSES.index("rectangle"), 50.0, 40.0, 20.0, 1.0, 0.0, 0.0)
    alpha, x0, y0 = demo.shape_alpha(square)
    ys, xs = np.nonzero(alpha >= 0.5)
    assert (xs.min() + x0, ys.min() + y0, xs.max() + 1 + x0, ys.max() + 1 + y0) == (40, 30, 60, 50)
    assert alpha.sum() == pytest.approx(400.0, abs=1e-4)


@pytest.mark.parametrize("label", range(len(demo.CLASSES)))
def test_rasterised_area_and_centroid_match_geometry(label):
    """Coverage sums to the polygon area (PIL's outline adds < 1/4 px per unit of perimeter) at the right place."""
    rng = np.random.default_rng(label)
    name = demo.CLASSES[label]
    for _ in range(40):
        shape = demo.Shape(label, rng.uniform(30, 40), rng.uniform(30, 40), rng.uniform(12, 60),
                           rng.uniform(*demo._ASPECT[name]), rng.uniform(0, 2 * np.pi), rng.uniform(*demo._PARAM[name]))
        alpha, x0, y0 = demo.shape_alpha(shape)
        area, moment, perimeter = 0.0, np.zeros(2), 0.0
        for pts, fill in demo.shape_polygons(shape):
            a, c = _shoelace(pts)
            sign = 1 if fill else -1
            area += sign * abs(a)
            moment += sign * abs(a) * c
            perimeter += np.linalg.norm(pts - np.roll(pts, 1, 0), axis=1).sum()
        assert abs(alpha.sum() - area) <= 0.25 * perimeter
        yy, xx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
        centroid = np.array([(alpha * (xx + 0.5 + x0)).sum(), (alpha * (yy + 0.5 + y0)).sum()]) / alpha.sum()
        np.testing.assert_allclose(centroid, moment / area, atol=0.2)


def test_boxes_areas_and_drops_match_brute_force_masks():
    dropped = occluded = 0
    for index in range(200):
        sample = demo.render_sample(7, 0, index)
        assert sample.keep[-1]
        if index >= 30 and sample.keep.all():  # brute force on 30 images and on every image with a drop
            continue
        h, w = sample.image.shape[:2]
        full, visible = _visible_masks(sample)
        for k, v in enumerate(visible):
            assert sample.areas[k] == v.sum()
            assert sample.keep[k] == (v.sum() >= demo.MIN_VISIBLE * full[k])
            dropped += not sample.keep[k]
            occluded += v.sum() < 0.9 * full[k]
            if not v.any():
                continue
            ys, xs = np.nonzero(v)
            x, y, bw, bh = sample.boxes[k]
            assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= x and x + bw <= w and 0 <= y and y + bh <= h
    assert dropped > 0 and occluded > 20  # occlusion really happens


def test_objects_stand_out_from_the_background_inside_their_boxes():
    """Visible object pixels differ from the ring of pixels just outside the box (image level tightness)."""
    diffs = []
    for index in range(10):
        sample = demo.render_sample(1, 1, index)
        img = sample.image.astype(np.float32)
        _, visible = _visible_masks(sample)
        for k in np.flatnonzero(sample.keep):
            x, y, w, h = sample.boxes[k].astype(int)
            inside = img[visible[k]].mean(0)
            x0, y0 = max(x - 2, 0), max(y - 2, 0)
            ring = np.zeros(visible[k].shape, bool)
            ring[y0:y + h + 2, x0:x + w + 2] = True
            ring[y:y + h, x:x + w] = False
            if ring.sum() >= 20:
                diffs.append(np.linalg.norm(inside - img[ring].mean(0)))
    assert np.median(diffs) > 40


def test_classes_are_balanced():
    rng = np.random.default_rng(11)
    labels = [s.label for _ in range(400) for s in demo.sample_layout(rng, 224, 192)]
    counts = np.bincount(labels, minlength=len(demo.CLASSES))
    expected = len(labels) / len(demo.CLASSES)
    assert len(labels) > 1500
    assert np.abs(counts / expected - 1).max() < 0.12


def test_colour_does_not_give_the_class_away():
    labels, colors = [], []
    for index in range(120):
        sample = demo.render_sample(5, 0, index)
        labels += [s.label for s in sample.shapes]
        colors.append(sample.colors)
    labels, colors = np.array(labels), np.concatenate(colors)
    half = len(labels) // 2
    means = np.stack([colors[:half][labels[:half] == c].mean(0) for c in range(len(demo.CLASSES))])
    # nearest class-mean colour on held-out objects is at chance level (1/6), nowhere near a usable cue
    pred = np.argmin(np.linalg.norm(colors[half:, None] - means[None], axis=2), 1)
    assert (pred == labels[half:]).mean() < 0.3
    all_means = np.stack([colors[labels == c].mean(0) for c in range(len(demo.CLASSES))])
    assert np.ptp(all_means, axis=0).max() < 35  # per-channel spread of class means, 0..255 scale


def test_ensure_demo_regenerates_only_when_needed(tmp_path):
    out = tmp_path / "d"
    params = dict(num_train=3, num_val=2, seed=0, workers=1, progress=False)
    assert demo.ensure_demo(out, **params) == out
    assert json.loads((out / demo.MARKER).read_text())["num_train"] == 3
    (out / "train" / "000001.jpg").unlink()
    demo.ensure_demo(out, **params)  # marker present, same parameters: left alone
    assert not (out / "train" / "000001.jpg").exists()
    (out / demo.MARKER).unlink()
    demo.ensure_demo(out, **params)  # marker gone: regenerated
    assert (out / "train" / "000001.jpg").exists()
    demo.ensure_demo(out, **{**params, "num_train": 2})  # other parameters: regenerated, stale image removed
    assert sorted(p.name for p in (out / "train").iterdir()) == ["000000.jpg", "000001.jpg"]
    assert len(json.loads((out / "instances_train.json").read_text())["images"]) == 2


def test_interrupted_generation_leaves_no_marker(tmp_path, monkeypatch):
    out = tmp_path / "d"
    demo.generate(out, num_train=2, num_val=1, workers=1, progress=False)
    assert demo.is_complete(out, 2, 1, 0)

    def crash(job):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "_write_image", crash)
    with pytest.raises(KeyboardInterrupt):
        demo.generate(out, num_train=2, num_val=1, workers=1, progress=False)
    assert not (out / demo.MARKER).exists() and not demo.is_complete(out, 2, 1, 0)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "common.data.demo", "--out", str(out), "--num-train", "4", "--num-val", "2"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train: 4 images" in r.stdout and "val: 2 images" in r.stdout
    assert demo.is_complete(out, 4, 2, 0)
    bad = subprocess.run(cmd[:5] + ["--num-train", "-1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--num-train and --num-val must be >= 0" in bad.stderr
    (tmp_path / "file").write_text("")
    blocked = subprocess.run(cmd[:4] + [str(tmp_path / "file" / "sub")], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert blocked.returncode == 1 and "cannot write the dataset" in blocked.stderr
