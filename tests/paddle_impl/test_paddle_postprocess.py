"""Paddle post-processing: top-k over (query, class), boxes to original pixels, class-wise NMS, the deploy program's
batched NMS (models/deploy.py) against the same definition (mirror of test_torch_postprocess.py), and parity with
the torch PostProcess."""
import numpy as np
import paddle
import pytest
import torch

from paddle_impl.models.deploy import nms_detections, nms_keep
from paddle_impl.models.postprocess import PostProcess, batched_nms, nms
from tests.nms_case import NUM_SELECT, PRE_NMS_TOPK, check_against_definition, greedy_nms, rows_of
from torch_impl.models.postprocess import PostProcess as TorchPostProcess
from torch_impl.models.postprocess import nms as torch_nms


def _logit(p):
    return float(np.log(p / (1 - p)))


def test_topk_and_pixel_boxes_hand_made():
    # 2 queries x 3 classes; scores 0.9 (q1, c2), 0.8 (q0, c0), 0.7 (q1, c0), the rest lower
    probs = [[0.8, 0.1, 0.2], [0.7, 0.05, 0.9]]
    logits = paddle.to_tensor([[[_logit(p) for p in row] for row in probs]], dtype="float32")
    boxes = paddle.to_tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    out = PostProcess(num_select=3)({"pred_logits": logits, "pred_boxes": boxes}, paddle.to_tensor([[100, 200]]))
    assert len(out) == 1
    res = out[0]
    np.testing.assert_allclose(res["scores"].numpy(), [0.9, 0.8, 0.7], atol=1e-6)
    np.testing.assert_array_equal(res["labels"].numpy(), [2, 0, 0])
    q1 = [0.0, 50.0, 100.0, 100.0]  # (0.25 +- 0.25) * 200, (0.75 +- 0.25) * 100
    q0 = [80.0, 30.0, 120.0, 70.0]
    np.testing.assert_allclose(res["boxes"].numpy(), [q1, q0, q1], atol=1e-4)
    assert res["labels"].dtype == paddle.int64


def test_orig_sizes_shape_is_checked():
    post = PostProcess(num_select=3)
    outputs = {"pred_logits": paddle.zeros([2, 4, 3]), "pred_boxes": paddle.full([2, 4, 4], 0.5)}
    with pytest.raises(ValueError, match=r"orig_sizes must be \[B, 2\]"):
        post(outputs, [[10, 20]])
    assert len(post(outputs, np.array([[10, 20], [30, 40]]))) == 2  # numpy sizes are accepted


def test_nms_matches_greedy_reference():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (60, 2))], 1)
    scores = rng.permutation(60) / 60.0
    for thr in (0.3, 0.5, 0.8):
        ref = greedy_nms(boxes, scores, thr)
        assert nms(paddle.to_tensor(boxes), paddle.to_tensor(scores), thr).tolist() == ref
        # max_keep: the kernel first sees only the top 4 * max_keep boxes, then more; the kept prefix must not change
        for max_keep in (1, 2, 4, 7, len(ref), 100):
            got = nms(paddle.to_tensor(boxes), paddle.to_tensor(scores), thr, max_keep=max_keep).tolist()
            assert got == ref[:max_keep], (thr, max_keep)
    assert len(nms(paddle.to_tensor(boxes), paddle.to_tensor(scores), 0.5, max_keep=4)) == 4


def test_nms_edge_cases():
    empty = nms(paddle.zeros([0, 4]), paddle.zeros([0]), 0.5)
    assert empty.shape == [0] and empty.dtype == paddle.int64
    # zero-area duplicates: IoU 0/0 is NaN, which never exceeds the threshold, so both stay (as in torch_impl)
    boxes = paddle.to_tensor([[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    assert nms(boxes, paddle.to_tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 1, 2]


def test_batched_nms_is_class_wise():
    boxes = paddle.to_tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = paddle.to_tensor([0.9, 0.8, 0.7])
    labels = paddle.to_tensor([0, 0, 1])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2]  # box 1 overlaps box 0 (IoU 9/11)
    assert batched_nms(boxes, scores, labels, 0.9).tolist() == [0, 1, 2]
    assert len(batched_nms(paddle.zeros([0, 4]), paddle.zeros([0]), paddle.zeros([0], dtype="int64"), 0.5)) == 0


def test_postprocess_with_nms_keeps_num_select():
    paddle.seed(0)
    logits = paddle.randn([2, 50, 5])
    boxes = paddle.concat([paddle.rand([2, 50, 2]) * 0.6 + 0.2, paddle.rand([2, 50, 2]) * 0.2 + 0.05], -1)
    post = PostProcess(num_select=20, nms_iou=0.5, pre_nms_topk=100)
    out = post({"pred_logits": logits, "pred_boxes": boxes}, paddle.to_tensor([[64, 64], [32, 48]]))
    for res in out:
        assert len(res["scores"]) == 20 and bool((res["scores"][:-1] >= res["scores"][1:]).all())
        for c in res["labels"].unique().tolist():
            sel = res["boxes"][res["labels"] == c]
            assert len(nms(sel, paddle.arange(len(sel), 0, -1).astype("float32"), 0.5)) == len(sel)  # no overlaps


def test_nms_keep_matches_greedy_reference():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (3, 80, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (3, 80, 2))], -1).astype(np.float32)
    scores = -np.sort(-rng.random((3, 80)), 1).astype(np.float32)  # sorted, as the deploy program passes them
    for thr, max_keep in ((0.3, 100), (0.5, 10), (0.8, 1)):
        keep = nms_keep(paddle.to_tensor(boxes), paddle.to_tensor(scores), thr, max_keep).numpy()
        for b in range(3):
            assert np.flatnonzero(keep[b]).tolist() == sorted(greedy_nms(boxes[b], scores[b], thr, max_keep))


def test_postprocess_and_deploy_nms_match_the_definition():
    def deploy(logits, boxes, sizes, nms_iou):
        bbox, num = nms_detections(paddle.to_tensor(logits), paddle.to_tensor(boxes), paddle.to_tensor(sizes),
                                   NUM_SELECT, nms_iou, PRE_NMS_TOPK)
        return bbox.numpy(), num.numpy()

    def postprocess(logits, boxes, sizes, nms_iou):
        outputs = {"pred_logits": paddle.to_tensor(logits), "pred_boxes": paddle.to_tensor(boxes)}
        return rows_of(PostProcess(NUM_SELECT, nms_iou, PRE_NMS_TOPK)(outputs, paddle.to_tensor(sizes)))

    check_against_definition(deploy)
    check_against_definition(postprocess)


# ---- parity with torch_impl ----

def test_nms_matches_torch_on_crowded_boxes():
    # many near-duplicates so that most candidates are suppressed and the kernel's window has to grow
    rng = np.random.default_rng(1)
    centers = rng.uniform(50, 450, (40, 2))[rng.integers(0, 40, 3000)] + rng.normal(0, 2, (3000, 2))
    wh = rng.uniform(20, 60, (3000, 2))
    boxes = np.concatenate([centers - wh / 2, centers + wh / 2], 1).astype(np.float32)
    scores = rng.random(3000).astype(np.float32)
    # windows the kernel sees: (0.3, 60) 240 -> 1920 boxes; (0.3, 66) all 3000 and only 65 survive; (0.5, 30) 120
    for thr, max_keep in ((0.3, 60), (0.3, 66), (0.5, 200), (0.5, 30), (0.8, 300), (0.3, None)):
        ref = torch_nms(torch.tensor(boxes), torch.tensor(scores), thr, max_keep).numpy()
        got = nms(paddle.to_tensor(boxes), paddle.to_tensor(scores), thr, max_keep).numpy()
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("nms_iou", [None, 0.5, 0.8])
def test_postprocess_matches_torch(nms_iou):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 40, 6)).astype(np.float32) * 2
    boxes = np.concatenate([rng.uniform(0.1, 0.9, (3, 40, 2)), rng.uniform(0.02, 0.5, (3, 40, 2))], -1)
    boxes[:, 20:] = boxes[:, :20] + rng.normal(0, 0.01, (3, 20, 4))  # duplicates for the NMS to remove
    boxes = boxes.astype(np.float32)
    sizes = np.array([[480, 640], [333, 500], [1, 1]])
    kw = dict(num_select=50, nms_iou=nms_iou, pre_nms_topk=150)
    ref = TorchPostProcess(**kw)({"pred_logits": torch.tensor(logits), "pred_boxes": torch.tensor(boxes)},
                                 torch.tensor(sizes))
    got = PostProcess(**kw)({"pred_logits": paddle.to_tensor(logits), "pred_boxes": paddle.to_tensor(boxes)},
                            paddle.to_tensor(sizes))
    for r, g in zip(ref, got):
        if nms_iou is not None:
            assert len(r["scores"]) == 50  # NMS removed some of the 150 candidates, and 50 survived
        np.testing.assert_array_equal(g["labels"].numpy(), r["labels"].numpy())
        np.testing.assert_allclose(g["scores"].numpy(), r["scores"].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(g["boxes"].numpy(), r["boxes"].numpy(), rtol=0, atol=1e-4)
