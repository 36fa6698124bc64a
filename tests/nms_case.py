"""What the NMS tests of both trees share: a brute-force greedy NMS in numpy, crowded detector outputs (many
near-duplicate boxes, distinct scores), and the detections the post-processing must produce from them, computed
from the definition (top-k over (query, class), class-wise greedy NMS, at most num_select kept)."""
import numpy as np

NUM_SELECT, PRE_NMS_TOPK = 20, 100


def greedy_nms(boxes, scores, thr, max_keep=None):
    """boxes [N, 4] xyxy, scores [N] -> kept indices, best first: a box survives when its IoU with every kept,
    higher-scoring box is at most thr (0/0 counts as no overlap)."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(int(i))
        if max_keep is not None and len(keep) == max_keep:
            break
    return keep


def crowded_outputs(batch, seed=0, queries=50, classes=5):
    """(logits [B, Q, C], boxes [B, Q, 4] cxcywh in [0, 1], orig_sizes [B, 2] (h, w)) float32: 4 clusters of
    near-duplicate boxes per image, so NMS removes most candidates; all scores distinct, well apart."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.25, 0.75, (batch, 4, 2))[:, rng.integers(0, 4, queries)]
    centres += rng.normal(0, 0.01, centres.shape)
    sizes = rng.uniform(0.1, 0.3, (batch, queries, 2))
    probs = (rng.permuted(np.tile(np.arange(queries * classes), (batch, 1)), axis=1) + 0.5) / (queries * classes)
    logits = np.log(probs / (1 - probs)).reshape(batch, queries, classes)
    orig_sizes = rng.integers(32, 640, (batch, 2))
    return (logits.astype(np.float32), np.concatenate([centres, sizes], -1).astype(np.float32),
            orig_sizes.astype(np.float32))


def expected_rows(logits, boxes, orig_sizes, nms_iou, num_select=NUM_SELECT, pre_nms_topk=PRE_NMS_TOPK):
    """The deploy program's (bbox [N, 6] rows (label, score, x1, y1, x2, y2), bbox_num [B]) by the definition,
    in float64."""
    rows, counts = [], []
    for lg, bx, (h, w) in zip(logits.astype(np.float64), boxes.astype(np.float64), orig_sizes):
        scores = 1 / (1 + np.exp(-lg.ravel()))
        top = np.argsort(-scores, kind="stable")[:pre_nms_topk]
        query, label = top // lg.shape[1], top % lg.shape[1]
        cx, cy, bw, bh = bx[query].T
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1) * [w, h, w, h]
        keep = []
        for c in np.unique(label):  # class-wise: NMS within each label, then all kept pairs in score order
            idx = np.flatnonzero(label == c)
            keep += idx[greedy_nms(xyxy[idx], scores[top][idx], nms_iou)].tolist()
        keep = sorted(keep)[:num_select]  # `top` is in score order
        rows.append(np.concatenate([label[keep, None], scores[top][keep, None], xyxy[keep]], 1))
        counts.append(len(keep))
    return np.concatenate(rows), np.array(counts, dtype=np.int32)


def assert_rows_equal(got, expected):
    """Detections (bbox, bbox_num) against expected_rows: same counts and labels, scores to 1e-6, boxes to 1e-3 px
    (float32 against float64)."""
    (bbox, num), (ref, ref_num) = got, expected
    np.testing.assert_array_equal(num, ref_num)
    np.testing.assert_array_equal(bbox[:, 0], ref[:, 0])
    np.testing.assert_allclose(bbox[:, 1], ref[:, 1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(bbox[:, 2:], ref[:, 2:], rtol=0, atol=1e-3)


def check_against_definition(detect, cases=((1, 0.5), (3, 0.8), (2, 0.3))):
    """detect(logits, boxes, orig_sizes, nms_iou) -> (bbox [N, 6], bbox_num [B]) as numpy, from crowded_outputs
    of several batch sizes (seed = batch size), must give expected_rows; between them the cases cover images NMS
    leaves short of num_select and full ones."""
    counts = []
    for batch, nms_iou in cases:
        inputs = crowded_outputs(batch, seed=batch)
        expected = expected_rows(*inputs, nms_iou)
        bbox, num = detect(*inputs, nms_iou)
        assert num.dtype == np.int32
        assert_rows_equal((bbox, num), expected)
        counts += expected[1].tolist()
    assert min(counts) < NUM_SELECT == max(counts)  # NMS left some images short of num_select, not all


def rows_of(results):
    """PostProcess's per-image dicts (numpy-convertible values) -> (bbox [N, 6], bbox_num int32 [B])."""
    rows = [np.concatenate([np.asarray(r["labels"], np.float32)[:, None], np.asarray(r["scores"])[:, None],
                            np.asarray(r["boxes"])], 1) for r in results]
    return np.concatenate(rows), np.array([len(r) for r in rows], dtype=np.int32)
