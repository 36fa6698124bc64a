"""CocoDetection and CategoryMap on small COCO datasets written on the fly."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from common.data.coco import CategoryMap, CocoDetection, read_image
from common.data.loader import SkippedImage

CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 11, "name": "bird"}]


def write_dataset(tmp_path, images, annotations, categories=CATEGORIES, sizes=None):
    """Write black PNGs for `images` (records) and the annotation json; return (img_dir, ann_file)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for rec in images:
        if isinstance(rec, dict) and "file_name" in rec and "width" in rec and "height" in rec:
            Image.new("RGB", (rec["width"], rec["height"])).save(img_dir / rec["file_name"])
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return img_dir, ann_file


def image(image_id, width=64, height=48):
    return {"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height}


def ann(ann_id, image_id, bbox, category_id=7, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def test_category_map_round_trip():
    cmap = CategoryMap([{"id": 17, "name": "c"}, {"id": 3, "name": "a"}, {"id": 90, "name": "d"},
                        {"id": 5, "name": "b"}])
    assert cmap.num_classes == 4 and cmap.names == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(cmap.label_to_cat_id(np.arange(4)), [3, 5, 17, 90])
    labels = np.random.default_rng(0).integers(0, 4, size=(5, 7))
    cat_ids = cmap.label_to_cat_id(labels)
    assert cat_ids.shape == (5, 7) and cat_ids.dtype == np.int64
    np.testing.assert_array_equal(cmap.cat_id_to_label(cat_ids), labels)
    with pytest.raises(ValueError, match=r"unknown category ids \[4, 91\]"):
        cmap.cat_id_to_label([3, 4, 91])
    with pytest.raises(ValueError, match="labels must be integers"):
        cmap.label_to_cat_id([4])
    with pytest.raises(ValueError, match="duplicate category id 3"):
        CategoryMap([{"id": 3}, {"id": 3}])


def test_targets_are_clipped_xyxy_with_contiguous_labels(tmp_path):
    images = [image(5), image(9, width=30, height=20)]
    annotations = [ann(1, 5, [10, 4, 20, 8], category_id=11, area=123.0),
                   ann(2, 5, [-5, 40, 30, 20], category_id=2),  # clipped to x >= 0, y <= 48
                   ann(3, 5, [1.5, 2.5, 3, 4], category_id=7)]
    ds = CocoDetection(*write_dataset(tmp_path, images, annotations))
    assert len(ds) == 2 and ds.image_ids == [5, 9]
    img, target = ds[0]
    assert img.mode == "RGB" and img.size == (64, 48)
    np.testing.assert_array_equal(target["boxes"], [[10, 4, 30, 12], [0, 40, 25, 48], [1.5, 2.5, 4.5, 6.5]])
    assert target["boxes"].dtype == np.float32
    np.testing.assert_array_equal(target["labels"], [2, 0, 1])  # ids sorted: 2 -> 0, 7 -> 1, 11 -> 2
    np.testing.assert_array_equal(target["area"], [123, 25 * 8, 12])  # given area, else clipped box area
    assert target["image_id"] == 5 and target["image_id"].dtype == np.int64
    assert target["orig_size"].tolist() == [48, 64] and target["size"].tolist() == [48, 64]
    assert ds.coco_gt == json.loads((tmp_path / "ann.json").read_text())
    _, empty = ds[1]  # an image without annotations is kept, with empty arrays
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["iscrowd"].shape == (0,)


def test_crowd_boxes_dropped_for_training_and_flagged_for_eval(tmp_path):
    annotations = [ann(1, 1, [1, 1, 10, 10]), ann(2, 1, [20, 20, 10, 10], iscrowd=1), ann(3, 1, [5, 5, 5, 5])]
    paths = write_dataset(tmp_path, [image(1)], annotations)
    _, train = CocoDetection(*paths, train=True)[0]
    np.testing.assert_array_equal(train["boxes"], [[1, 1, 11, 11], [5, 5, 10, 10]])
    np.testing.assert_array_equal(train["iscrowd"], [0, 0])
    _, evaluation = CocoDetection(*paths, train=False)[0]
    np.testing.assert_array_equal(evaluation["boxes"], [[1, 1, 11, 11], [20, 20, 30, 30], [5, 5, 10, 10]])
    np.testing.assert_array_equal(evaluation["iscrowd"], [0, 1, 0])


def test_degenerate_boxes_are_dropped_counted_and_logged_once(tmp_path, caplog):
    annotations = [ann(1, 1, [10, 10, 0, 5]),     # zero width
                   ann(2, 1, [10, 10, 5, -2]),    # negative height
                   ann(3, 1, [70, 10, 5, 5]),     # right of the 64 px wide image: zero width once clipped
                   ann(4, 1, [60, 10, 10, 5]),    # partly outside: clipped, kept
                   ann(5, 2, [0, -9, 5, 9])]      # above the image
    with caplog.at_level(logging.WARNING, logger="common.data"):
        ds = CocoDetection(*write_dataset(tmp_path, [image(1), image(2)], annotations))
    assert ds.num_degenerate == 4
    np.testing.assert_array_equal(ds[0][1]["boxes"], [[60, 10, 64, 15]])
    assert ds[1][1]["boxes"].shape == (0, 4)
    warnings = [r for r in caplog.records if r.name == "common.data"]
    assert len(warnings) == 1 and "dropped 4 degenerate boxes" in warnings[0].getMessage()


BAD_RECORDS = [  # (images, bad annotations, skip reason, strict message pattern)
    ([image(1)], [{"id": 8, "image_id": 1, "category_id": 7}], "annotation missing key 'bbox'",
     r"annotations\[1\] \(id=8, image_id=1\): annotation missing key 'bbox'"),
    ([image(1)], [{"id": 8, "category_id": 7, "bbox": [1, 1, 2, 2]}], "annotation missing key 'image_id'",
     r"annotations\[1\] \(id=8, image_id=None\)"),
    ([image(1)], [{"id": 8, "image_id": 1, "bbox": [1, 1, 2, 2]}], "annotation missing key 'category_id'",
     r"id=8, image_id=1\): annotation missing key 'category_id'"),
    ([image(1)], [ann(8, 1, [1, float("nan"), 2, 2])], "non-finite bbox coordinates", r"id=8, image_id=1"),
    ([image(1)], [ann(8, 1, [1, 1, float("inf"), 2])], "non-finite bbox coordinates", r"id=8"),
    ([image(1)], [ann(8, 1, [1, 1, 2])], "bbox is not a list of 4 numbers", r"id=8"),
    ([image(1)], [ann(8, 1, [1, 1, 2, 2], category_id=99)], "unknown category id",
     r"id=8, image_id=1\): unknown category id 99"),
    ([image(1)], [ann(8, 4, [1, 1, 2, 2])], "annotation refers to a missing image", r"id=8, image_id=4"),
    ([image(1), dict(image(1), file_name="other.png")], [], "duplicate image id", r"images\[1\] \(id=1\)"),
    ([image(1), {"id": 3, "width": 5, "height": 5}], [], "image missing key 'file_name'", r"images\[1\] \(id=3\)"),
]


@pytest.mark.parametrize("images,bad_annotations,reason,message", BAD_RECORDS)
def test_bad_records_raise_in_strict_mode_and_are_counted_in_skip_mode(tmp_path, caplog, images,
                                                                       bad_annotations, reason, message):
    annotations = [ann(100, 1, [1, 2, 3, 4])] + bad_annotations
    paths = write_dataset(tmp_path, images, annotations)
    with pytest.raises(ValueError, match=message) as error:
        CocoDetection(*paths, invalid="strict")
    assert str(paths[1]) in str(error.value) and "data.invalid: skip" in str(error.value)
    with caplog.at_level(logging.WARNING, logger="common.data"):
        ds = CocoDetection(*paths, invalid="skip")
    assert ds.skipped == {reason: 1}
    assert any("skipped 1 bad records" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(ds[0][1]["boxes"], [[1, 2, 4, 6]])  # the good record survives
    assert ds.image_ids == [1]
    assert len(ds.coco_gt["annotations"]) == 1 and len(ds.coco_gt["images"]) == 1  # evaluable json


def test_file_level_errors_name_the_file(tmp_path):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON"):
        CocoDetection(tmp_path, ann_file)
    with pytest.raises(FileNotFoundError, match=r"absent\.json"):
        CocoDetection(tmp_path, tmp_path / "absent.json")
    ann_file.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match=r"broken\.json: 'categories' must be a non-empty list"):
        CocoDetection(tmp_path, ann_file)
    with pytest.raises(ValueError, match="data.invalid"):
        CocoDetection(tmp_path, ann_file, invalid="ignore")


@pytest.mark.parametrize("invalid", ["strict", "skip"])
def test_missing_or_unreadable_image_raises_with_its_path(tmp_path, invalid):
    img_dir, ann_file = write_dataset(tmp_path, [image(1), image(2), image(3)], [])
    (img_dir / "2.png").unlink()
    (img_dir / "3.png").write_bytes(b"not an image at all")
    ds = CocoDetection(img_dir, ann_file, invalid=invalid)
    assert ds[0][0].size == (64, 48)
    # skip: the loader replaces the sample (tests/test_bad_images.py)
    missing, unreadable = (FileNotFoundError, OSError) if invalid == "strict" else (SkippedImage, SkippedImage)
    with pytest.raises(missing, match=r"image file not found: .*images/2\.png"):
        ds[1]
    with pytest.raises(unreadable, match=r"cannot read image .*images/3\.png"):
        ds[2]


def test_image_size_must_match_the_annotation_file(tmp_path):
    img_dir, ann_file = write_dataset(tmp_path, [image(1)], [])
    Image.new("RGB", (40, 48)).save(img_dir / "1.png")
    with pytest.raises(ValueError, match=r"1\.png: decoded image is 40x48 .* gives 64x48 for image id 1"):
        CocoDetection(img_dir, ann_file)[0]


def red_extent(pixels):
    """xyxy extent of the pixels that are mostly red (see tests/test_transforms.py for the rule)."""
    mask = (np.abs(pixels.astype(np.int64) - [255, 0, 0]) <= 127).all(axis=-1)
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_exif_orientation_is_applied_so_boxes_stay_right(tmp_path):
    # Upright 60 x 40 scene with a red box at xyxy (5, 10, 25, 30); stored as a 40 x 60 bitmap turned a
    # quarter to the left, with EXIF orientation 6 ("turn 90 degrees clockwise to view").
    upright = np.zeros((40, 60, 3), dtype=np.uint8)
    upright[10:30, 5:25] = [255, 0, 0]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    stored.save(img_dir / "1.jpg", quality=98, exif=exif.tobytes())
    assert Image.open(img_dir / "1.jpg").size == (40, 60)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg", "width": 60, "height": 40}],
                                    "annotations": [ann(1, 1, [5, 10, 20, 20])], "categories": CATEGORIES}))
    img, target = CocoDetection(img_dir, ann_file)[0]
    assert img.size == (60, 40) and target["orig_size"].tolist() == [40, 60]
    np.testing.assert_allclose(red_extent(np.asarray(img)), target["boxes"][0], atol=1)  # JPEG: 1 px


def test_any_image_mode_becomes_rgb(tmp_path):
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    cases = {
        "grey.png": (Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=-1)),
        "rgba.png": (Image.fromarray(np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]] * 2, dtype=np.uint8)),
                     np.array([[[10, 20, 30], [255, 255, 255]]] * 2)),  # transparent -> white
        "palette.png": (Image.fromarray(np.array([[[200, 0, 0], [0, 0, 90]]] * 2, dtype=np.uint8)).convert(
            "P", palette=Image.Palette.ADAPTIVE, colors=2), np.array([[[200, 0, 0], [0, 0, 90]]] * 2)),
        "cmyk.tif": (Image.new("CMYK", (2, 2), (0, 255, 255, 0)), np.full((2, 2, 3), [255, 0, 0])),
        "deep.png": (Image.fromarray(np.array([[0, 257 * 100], [65535, 257 * 3]], dtype=np.uint16)),
                     np.repeat(np.array([[0, 100], [255, 3]])[..., None], 3, axis=-1)),
    }
    for name, (img, expected) in cases.items():
        img.save(tmp_path / name)
        decoded = read_image(tmp_path / name)
        assert decoded.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(decoded), expected, err_msg=name)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really a 16-bit file


def test_getitem_uses_epoch_zero_rng_and_transforms(tmp_path):
    def jitter(img, target, rng):
        return img, dict(target, draw=rng.random())

    ds = CocoDetection(*write_dataset(tmp_path, [image(1), image(2)], []), transforms=jitter)
    assert ds[1][1]["draw"] == np.random.default_rng([0, 0, 1]).random()
    assert ds[-1][1]["draw"] == ds[1][1]["draw"]
    assert ds.load(1, np.random.default_rng(5))[1]["draw"] == np.random.default_rng(5).random()
    with pytest.raises(IndexError):
        ds[2]
