"""Box conversions, IoU and GIoU against hand-computed values and a scalar reference."""
import numpy as np
import pytest

from common.box_ops import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                            generalized_box_iou)

TOL = 1e-6


def random_xyxy(rng, n, dtype=np.float64):
    xy = rng.uniform(0, 1, size=(n, 2))
    wh = rng.uniform(0, 0.5, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def scalar_iou_giou(a, b):
    """Plain-Python IoU and GIoU of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (enclosing - union) / enclosing


def test_conversions_by_hand():
    cxcywh = np.array([[0.5, 0.5, 1.0, 1.0], [3.0, 2.0, 2.0, 4.0]])
    xyxy = np.array([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 4.0, 4.0]])
    np.testing.assert_allclose(box_cxcywh_to_xyxy(cxcywh), xyxy, atol=TOL)
    np.testing.assert_allclose(box_xyxy_to_cxcywh(xyxy), cxcywh, atol=TOL)
    np.testing.assert_allclose(box_area(xyxy), [1.0, 8.0], atol=TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved_and_round_trip(dtype):
    boxes = random_xyxy(np.random.default_rng(0), 7, dtype)
    cxcywh = box_xyxy_to_cxcywh(boxes)
    assert cxcywh.dtype == dtype
    assert box_cxcywh_to_xyxy(cxcywh).dtype == dtype
    np.testing.assert_allclose(box_cxcywh_to_xyxy(cxcywh), boxes, atol=TOL)
    assert box_area(boxes).dtype == dtype
    iou, union = box_iou(boxes, boxes[:3])
    assert iou.dtype == dtype and union.dtype == dtype
    assert generalized_box_iou(boxes, boxes[:3]).dtype == dtype


def test_conversions_keep_leading_dims():
    boxes = np.random.default_rng(1).uniform(size=(2, 3, 4))
    assert box_cxcywh_to_xyxy(boxes).shape == (2, 3, 4)
    np.testing.assert_allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-12)


# (box a, box b, IoU, union, GIoU), all worked out by hand
HAND_CASES = {
    "identical": ([0, 0, 2, 3], [0, 0, 2, 3], 1.0, 6.0, 1.0),
    # disjoint: union 1 + 1 = 2, enclosing [0,0,3,3] = 9
    "disjoint": ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, 2.0, 0.0 - (9 - 2) / 9),
    # nested: inner 2x2 inside outer 4x4, enclosing = outer
    "nested": ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16, 16.0, 4 / 16),
    # touching along x = 1: no overlap, enclosing [0,0,2,1] equals the union
    "touching": ([0, 0, 1, 1], [1, 0, 2, 1], 0.0, 2.0, 0.0),
    # partial: overlap [1,1,2,2] = 1, union 4 + 4 - 1 = 7, enclosing [0,0,3,3] = 9
    "partial": ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 7.0, 1 / 7 - 2 / 9),
    # partial, unequal sizes: overlap [1,0,2,1] = 1, union 2 + 3 - 1 = 4, enclosing [0,0,4,1] = 4
    "partial_strip": ([0, 0, 2, 1], [1, 0, 4, 1], 1 / 4, 4.0, 1 / 4),
}


@pytest.mark.parametrize("name", sorted(HAND_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_cases(name, dtype):
    a, b, want_iou, want_union, want_giou = HAND_CASES[name]
    a, b = np.array([a], dtype), np.array([b], dtype)
    iou, union = box_iou(a, b)
    assert iou.shape == union.shape == (1, 1)
    assert abs(iou[0, 0] - want_iou) < TOL
    assert abs(union[0, 0] - want_union) < TOL
    assert abs(generalized_box_iou(a, b)[0, 0] - want_giou) < TOL
    # both functions are symmetric in their arguments
    assert abs(box_iou(b, a)[0][0, 0] - want_iou) < TOL
    assert abs(generalized_box_iou(b, a)[0, 0] - want_giou) < TOL


def test_pairwise_layout_matches_scalar_reference():
    rng = np.random.default_rng(2)
    a, b = random_xyxy(rng, 9), random_xyxy(rng, 5)
    iou, _ = box_iou(a, b)
    giou = generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (9, 5)
    for i in range(9):
        for j in range(5):
            want_iou, want_giou = scalar_iou_giou(a[i].tolist(), b[j].tolist())
            assert abs(iou[i, j] - want_iou) < 1e-12
            assert abs(giou[i, j] - want_giou) < 1e-12


def test_giou_range_on_random_boxes():
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        a, b = random_xyxy(rng, 200, dtype), random_xyxy(rng, 150, dtype)
        giou = generalized_box_iou(a, b)
        iou, _ = box_iou(a, b)
        assert np.all(giou >= -1 - TOL) and np.all(giou <= 1 + TOL)
        assert np.all(giou <= iou + TOL)  # the enclosing-box penalty is never negative
        assert (giou < 0).any()  # the sample does reach the negative range
        np.testing.assert_allclose(np.diag(generalized_box_iou(a, a)), 1.0, atol=TOL)


@pytest.mark.parametrize("n,m", [(0, 3), (4, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_inputs(n, m, dtype):
    rng = np.random.default_rng(4)
    a, b = random_xyxy(rng, n, dtype), random_xyxy(rng, m, dtype)
    iou, union = box_iou(a, b)
    giou = generalized_box_iou(a, b)
    for out in (iou, union, giou):
        assert out.shape == (n, m) and out.dtype == dtype
    assert box_area(a).shape == (n,)
    assert box_cxcywh_to_xyxy(a).shape == (n, 4)
    assert box_xyxy_to_cxcywh(b).shape == (m, 4)


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"boxes1 row 1 .* not a valid xyxy box"):
        generalized_box_iou(np.array([[0, 0, 1, 1], [2, 0, 1, 1]], float), np.array([[0, 0, 1, 1]], float))
    with pytest.raises(ValueError, match=r"boxes2 row 0 .* not a valid xyxy box"):
        generalized_box_iou(np.array([[0, 0, 1, 1]], float), np.array([[0, 0, np.nan, 1]]))
    with pytest.raises(ValueError, match=r"box_iou: boxes1: expected boxes of shape \[N, 4\]"):
        box_iou(np.zeros(4), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"expected boxes of shape \[\.\.\., 4\], got shape \(2, 3\)"):
        box_cxcywh_to_xyxy(np.zeros((2, 3)))
