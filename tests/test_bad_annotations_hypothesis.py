"""Property-based: random malformed COCO records fed to CocoDetection under data.invalid strict and skip.

strict either stops with a ValueError naming the annotation file and the first bad record, or gives a valid
dataset; skip never raises, counts exactly the bad records injected (by reason), and every box it keeps is finite,
of positive size and inside its image. Examples are derandomized (the same every run) and no database is kept.
"""
import json
import math
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data.coco import CocoDetection

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
WIDTH, HEIGHT = 64, 48
GOOD_IMAGES = [{"id": i, "file_name": f"{i}.png", "width": WIDTH, "height": HEIGHT} for i in (1, 2, 3)]
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]

finite = st.floats(-1e4, 1e4, allow_nan=False)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
not_an_object = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
not_an_int = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(0.1, 0.9).map(lambda f: 7 + f),
                       st.lists(st.integers(), min_size=1, max_size=2))


@st.composite
def box(draw, kind):
    """xywh inside the 64x48 image ("inside"), sticking out of it ("partly outside", clipped and kept), with zero
    or negative size ("degenerate") or wholly outside ("outside", degenerate once clipped)."""
    x, y = draw(st.floats(0, WIDTH - 2)), draw(st.floats(0, HEIGHT - 2))
    w, h = draw(st.floats(1, WIDTH - x)), draw(st.floats(1, HEIGHT - y))
    if kind == "partly outside":
        return [x - 50, y, w + 50, h + draw(st.floats(0, 100))]
    if kind == "degenerate":
        return draw(st.sampled_from([[x, y, 0.0, h], [x, y, w, -h], [x + w, y, -w, h]]))
    if kind == "outside":
        return draw(st.sampled_from([[WIDTH + x, y, w, h], [x, -h - 1, w, h], [-w - x - 1, y, w, h]]))
    return [x, y, w, h]


@st.composite
def good_annotation(draw, kind="inside"):
    return {"id": draw(st.integers(1, 10**6)), "image_id": draw(st.sampled_from([1, 2, 3])),
            "category_id": draw(st.sampled_from([1, 5])), "bbox": draw(box(kind)),
            "iscrowd": draw(st.sampled_from([0, 1])), **draw(st.sampled_from([{}, {"area": 12.5}]))}


def without(key):
    return lambda draw, rec: {k: v for k, v in rec.items() if k != key}


def with_value(key, values):
    return lambda draw, rec: dict(rec, **{key: draw(values)})


def bbox_coordinate(values):
    def change(draw, rec):
        bbox = list(rec["bbox"])
        bbox[draw(st.integers(0, 3))] = draw(values)
        return dict(rec, bbox=bbox)
    return change


# reason -> one defect applied to a good annotation record (exactly one, so the reason is known)
ANNOTATION_DEFECTS = {
    "annotation record is not an object": lambda draw, rec: draw(not_an_object),
    "annotation missing key 'image_id'": without("image_id"),
    "annotation missing key 'category_id'": without("category_id"),
    "annotation missing key 'bbox'": without("bbox"),
    "bbox is not a list of 4 numbers": lambda draw, rec: draw(st.one_of(
        st.just(dict(rec, bbox=rec["bbox"][:3])), st.just(dict(rec, bbox=rec["bbox"] + [1.0])),
        st.just(dict(rec, bbox={"x": 1})), st.just(dict(rec, bbox="1,2,3,4")), st.just(dict(rec, bbox=None)),
        st.builds(lambda f: bbox_coordinate(st.just(f))(draw, rec), st.sampled_from(["1", None, True, [1]])))),
    "non-finite bbox coordinates": bbox_coordinate(non_finite),
    "area is not a finite number": with_value("area", st.one_of(non_finite, st.just("12"), st.just([1.0]))),
    "iscrowd is not 0 or 1": with_value("iscrowd", st.sampled_from([2, -1, "1", None, 0.5])),
    "unknown category id": with_value("category_id", st.one_of(st.integers(6, 99), st.sampled_from(
        [0, 2, "1", 1.5, None, True]))),
    "annotation refers to a missing image": with_value("image_id", st.one_of(st.integers(4, 99), st.sampled_from(
        ["1", 2.5, None, False]))),
}


def fresh_image(draw):
    """A valid image record no annotation refers to."""
    image_id = draw(st.integers(100, 10**6))
    return {"id": image_id, "file_name": f"{image_id}.png", "width": WIDTH, "height": HEIGHT}


# reason -> one defect applied to a fresh image record
IMAGE_DEFECTS = {
    "image record is not an object": lambda draw, rec: draw(not_an_object),
    "image missing key 'id'": without("id"),
    "image missing key 'file_name'": without("file_name"),
    "image missing key 'width'": without("width"),
    "image missing key 'height'": without("height"),
    "image id is not an integer": with_value("id", not_an_int),
    "image width/height are not positive integers": lambda draw, rec: dict(rec, **{
        draw(st.sampled_from(["width", "height"])): draw(st.one_of(st.integers(-5, 0), not_an_int))}),
    "duplicate image id": with_value("id", st.sampled_from([1, 2, 3])),
}


@st.composite
def malformed_coco(draw):
    """(coco dict, Counter of injected reasons, number of good annotations, of which degenerate, index of the first
    bad record in "images[k]" / "annotations[k]" form or None). Annotations are shuffled; bad image records follow
    the good ones (a duplicate id before its original would make the original the one skipped)."""
    bad_images = [(IMAGE_DEFECTS[reason](draw, fresh_image(draw)), reason)
                  for reason in draw(st.lists(st.sampled_from(sorted(IMAGE_DEFECTS)), max_size=3))]
    kinds = draw(st.lists(st.sampled_from(["inside", "partly outside", "degenerate", "outside"]), max_size=6))
    annotations = [(draw(good_annotation(kind)), None) for kind in kinds]
    annotations += [(ANNOTATION_DEFECTS[reason](draw, draw(good_annotation())), reason)
                    for reason in draw(st.lists(st.sampled_from(sorted(ANNOTATION_DEFECTS)), max_size=5))]
    annotations = draw(st.permutations(annotations))
    injected = Counter(reason for _, reason in bad_images + annotations if reason)
    first = (f"images[{len(GOOD_IMAGES)}]" if bad_images else
             next((f"annotations[{k}]" for k, (_, reason) in enumerate(annotations) if reason), None))
    coco = {"images": GOOD_IMAGES + [rec for rec, _ in bad_images], "annotations": [rec for rec, _ in annotations],
            "categories": CATEGORIES}
    return coco, injected, len(kinds), sum(kind in ("degenerate", "outside") for kind in kinds), first


def write(tmp_path, coco):
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(coco))  # NaN / Infinity as Python's json writes and reads them
    return ann_file


def assert_valid_boxes(ds):
    for k in range(len(ds)):
        boxes = ds.target(k)["boxes"]
        assert np.isfinite(boxes).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= WIDTH).all() and (boxes[:, [1, 3]] <= HEIGHT).all()


@SETTINGS
@given(case=malformed_coco())
def test_injected_bad_records(tmp_path, case):
    coco, injected, good, degenerate, first = case
    ann_file = write(tmp_path, coco)
    ds = CocoDetection(tmp_path, ann_file, train=False, invalid="skip")
    assert ds.skipped == dict(injected)
    assert ds.image_ids == [1, 2, 3]
    assert len(ds.coco_gt["images"]) == 3 and len(ds.coco_gt["annotations"]) == good
    assert ds.num_degenerate == degenerate
    assert sum(len(ds.target(k)["boxes"]) for k in range(len(ds))) == good - degenerate
    assert_valid_boxes(ds)

    if first is None:
        strict = CocoDetection(tmp_path, ann_file, train=False)
        assert strict.image_ids == ds.image_ids and strict.num_degenerate == degenerate
        return
    with pytest.raises(ValueError) as error:
        CocoDetection(tmp_path, ann_file, train=False)
    message = str(error.value)
    assert message.startswith(f"{ann_file}: {first}"), message
    assert message.endswith("Fix the record, or set data.invalid: skip to skip bad records."), message


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 200), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=4)),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8)
record_keys = st.sampled_from(["id", "image_id", "category_id", "bbox", "area", "iscrowd", "file_name", "width",
                               "height"])
fuzz_records = st.lists(st.one_of(json_values, st.dictionaries(record_keys, json_values | st.lists(
    st.floats(-100, 100) | st.integers(-100, 100), min_size=4, max_size=4), max_size=9)), max_size=8)


@SETTINGS
@given(extra_images=fuzz_records, annotations=fuzz_records)
def test_arbitrary_records(tmp_path, extra_images, annotations):
    """Anything JSON can hold as a record: skip never raises and accounts for every record; strict raises a
    ValueError naming the file and the record, or agrees with skip."""
    coco = {"images": GOOD_IMAGES + extra_images, "annotations": annotations, "categories": CATEGORIES}
    ann_file = write(tmp_path, coco)
    ds = CocoDetection(tmp_path, ann_file, train=False, invalid="skip")
    assert_valid_boxes(ds)
    skipped = sum(ds.skipped.values())
    assert len(ds.coco_gt["images"]) + len(ds.coco_gt["annotations"]) + skipped == len(coco["images"]) + len(
        annotations)
    try:
        strict = CocoDetection(tmp_path, ann_file, train=False)
    except ValueError as e:
        assert skipped and re.match(rf"{re.escape(str(ann_file))}: (images|annotations)\[\d+\]", str(e)), str(e)
    else:
        assert not skipped and strict.image_ids == ds.image_ids


@pytest.mark.parametrize("invalid", ["strict", "skip"])
def test_no_images_is_an_error_in_both_modes(tmp_path, invalid):
    with pytest.raises(ValueError, match=r"ann\.json: no images \('images' is empty\)"):
        CocoDetection(tmp_path, write(tmp_path, {"images": [], "annotations": [], "categories": CATEGORIES}),
                      invalid=invalid)
    ann_file = write(tmp_path, {"images": [{"id": "x"}], "annotations": [], "categories": CATEGORIES})
    with pytest.raises(ValueError, match=r"no images left after skipping bad records \{\"image missing key 'file_name'"
                       if invalid == "skip" else r"images\[0\] \(id=x\): image missing key 'file_name'"):
        CocoDetection(tmp_path, ann_file, invalid=invalid)
