"""Post-processing: top-k over (query, class), boxes to original pixels, class-wise NMS; the deploy program's
batched NMS (models/deploy.py) against the same definition."""
import numpy as np
import torch

from tests.nms_case import NUM_SELECT, PRE_NMS_TOPK, check_against_definition, greedy_nms, rows_of
from torch_impl.models.deploy import nms_detections, nms_keep
from torch_impl.models.postprocess import PostProcess, batched_nms, nms


def _logit(p):
    return float(np.log(p / (1 - p)))


def test_topk_and_pixel_boxes_hand_made():
    # 2 queries x 3 classes; scores 0.9 (q1, c2), 0.8 (q0, c0), 0.7 (q1, c0), the rest lower
    probs = [[0.8, 0.1, 0.2], [0.7, 0.05, 0.9]]
    logits = torch.tensor([[[_logit(p) for p in row] for row in probs]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    out = PostProcess(num_select=3)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))
    assert len(out) == 1
    res = out[0]
    np.testing.assert_allclose(res["scores"].numpy(), [0.9, 0.8, 0.7], atol=1e-6)
    np.testing.assert_array_equal(res["labels"].numpy(), [2, 0, 0])
    q1 = [0.0, 50.0, 100.0, 100.0]  # (0.25 +- 0.25) * 200, (0.75 +- 0.25) * 100
    q0 = [80.0, 30.0, 120.0, 70.0]
    np.testing.assert_allclose(res["boxes"].numpy(), [q1, q0, q1], atol=1e-4)
    assert res["labels"].dtype == torch.int64


def test_nms_matches_greedy_reference():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (60, 2))], 1)
    scores = rng.permutation(60) / 60.0
    for thr in (0.3, 0.5, 0.8):
        kept = nms(torch.tensor(boxes), torch.tensor(scores), thr).tolist()
        assert kept == greedy_nms(boxes, scores, thr)
    assert len(nms(torch.tensor(boxes), torch.tensor(scores), 0.5, max_keep=4)) == 4


def test_batched_nms_is_class_wise():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 1])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2]  # box 1 overlaps box 0 (IoU 9/11)
    assert batched_nms(boxes, scores, labels, 0.9).tolist() == [0, 1, 2]
    assert len(batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)) == 0


def test_postprocess_with_nms_keeps_num_select():
    torch.manual_seed(0)
    logits = torch.randn(2, 50, 5)
    boxes = torch.cat([torch.rand(2, 50, 2) * 0.6 + 0.2, torch.rand(2, 50, 2) * 0.2 + 0.05], -1)
    post = PostProcess(num_select=20, nms_iou=0.5, pre_nms_topk=100)
    out = post({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[64, 64], [32, 48]]))
    for res in out:
        assert len(res["scores"]) == 20 and (res["scores"][:-1] >= res["scores"][1:]).all()
        for c in res["labels"].unique():
            sel = res["boxes"][res["labels"] == c]
            assert len(nms(sel, torch.arange(len(sel), 0, -1).float(), 0.5)) == len(sel)  # no overlaps left


def test_nms_keep_matches_greedy_reference():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (3, 80, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (3, 80, 2))], -1).astype(np.float32)
    scores = -np.sort(-rng.random((3, 80)), 1).astype(np.float32)  # sorted, as the deploy program passes them
    for thr, max_keep in ((0.3, 100), (0.5, 10), (0.8, 1)):
        keep = nms_keep(torch.tensor(boxes), torch.tensor(scores), thr, max_keep).numpy()
        for b in range(3):
            assert np.flatnonzero(keep[b]).tolist() == sorted(greedy_nms(boxes[b], scores[b], thr, max_keep))


def test_postprocess_and_deploy_nms_match_the_definition():
    def deploy(logits, boxes, sizes, nms_iou):
        bbox, num = nms_detections(torch.tensor(logits), torch.tensor(boxes), torch.tensor(sizes), NUM_SELECT,
                                   nms_iou, PRE_NMS_TOPK)
        return bbox.numpy(), num.numpy()

    def postprocess(logits, boxes, sizes, nms_iou):
        outputs = {"pred_logits": torch.tensor(logits), "pred_boxes": torch.tensor(boxes)}
        return rows_of(PostProcess(NUM_SELECT, nms_iou, PRE_NMS_TOPK)(outputs, torch.tensor(sizes)))

    check_against_definition(deploy)
    check_against_definition(postprocess)
