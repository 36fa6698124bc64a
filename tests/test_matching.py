"""Hungarian matcher against brute force; one-to-many assigner on hand-made cases and a loop reference."""
import itertools
import math
import warnings

import numpy as np
import pytest

from common.matching import HungarianMatcher, OneToManyAssigner
from common.matching.hungarian import focal_class_cost
from common.matching.one_to_many import quality_matrix


def random_cxcywh(rng, n):
    return np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], axis=1)


def random_batch(rng, num_queries, num_gts, num_classes=5, scale=3.0):
    """num_gts: one GT count per image -> (pred_logits [B,Q,C], pred_boxes [B,Q,4], targets)."""
    batch = len(num_gts)
    logits = rng.normal(0, scale, (batch, num_queries, num_classes))
    boxes = np.stack([random_cxcywh(rng, num_queries) for _ in range(batch)])
    targets = [{"labels": rng.integers(0, num_classes, n).astype(np.int64),
                "boxes": random_cxcywh(rng, n).astype(np.float32)} for n in num_gts]
    return logits, boxes, targets


def scalar_giou_cxcywh(a, b):
    a = [a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2]
    b = [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (enclosing - union) / enclosing


def scalar_focal(logit, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8)
    return pos - neg


def brute_force_min_cost(cost):
    """Minimum total cost over every injection of the smaller side into the larger, cost [Q, n]."""
    num_queries, num_gt = cost.shape
    if num_queries >= num_gt:
        return min(sum(cost[q, g] for g, q in enumerate(qs))
                   for qs in itertools.permutations(range(num_queries), num_gt))
    return min(sum(cost[q, g] for q, g in enumerate(gs)) for gs in itertools.permutations(range(num_gt), num_queries))


# ---------------------------------------------------------------- Hungarian


def test_focal_cost_matches_scalar_formula():
    logits = np.array([[-60.0, -5.0, -0.3, 0.0], [0.7, 2.0, 9.0, 60.0]])
    labels = np.array([3, 0, 2, 2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings, even at |logit| = 60
        cost = focal_class_cost(logits, labels, alpha=0.3, gamma=1.5)
    assert cost.shape == (2, 5)
    for q in range(2):
        for j, label in enumerate(labels):
            want = scalar_focal(float(logits[q, label]), alpha=0.3, gamma=1.5)
            assert abs(cost[q, j] - want) < 1e-9 * max(1.0, abs(want))


def test_cost_matrix_matches_scalar_formula():
    rng = np.random.default_rng(0)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    logits, boxes = rng.normal(0, 2, (6, 4)), random_cxcywh(rng, 6)
    labels, gt_boxes = np.array([1, 3, 1]), random_cxcywh(rng, 3)
    cost = matcher.cost_matrix(logits, boxes, labels, gt_boxes)
    assert cost.shape == (6, 3) and cost.dtype == np.float64
    for q in range(6):
        for g in range(3):
            l1 = sum(abs(boxes[q, i] - gt_boxes[g, i]) for i in range(4))
            want = 2.0 * scalar_focal(logits[q, labels[g]]) + 5.0 * l1 - 2.0 * scalar_giou_cxcywh(boxes[q], gt_boxes[g])[1]
            assert abs(cost[q, g] - want) < 1e-12


def test_reparam_cost_compares_deltas_in_pixels():
    """Box reparameterization (Plain-DETR): the L1 term is |pred_delta - delta(ref -> GT)| with the GT scaled to
    pixels by the image size and delta = ((x - xr) / (wr + 0.1), (y - yr) / (hr + 0.1), log(w / (wr + 0.1)),
    log(h / (hr + 0.1))); the class and GIoU terms are the usual ones. Used by the batch call, image by image."""
    rng = np.random.default_rng(1)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=1.0, cost_giou=2.0)
    logits, boxes = rng.normal(0, 2, (2, 6, 4)), np.stack([random_cxcywh(rng, 6) for _ in range(2)])
    deltas = rng.normal(0, 0.5, (2, 6, 4))
    refs = np.concatenate([rng.uniform(20, 100, (2, 6, 2)), rng.uniform(10, 60, (2, 6, 2))], -1)
    size = np.array([[160.0, 120.0], [90.0, 200.0]])
    targets = [{"labels": np.array([1, 3, 1]), "boxes": random_cxcywh(rng, 3)},
               {"labels": np.array([0, 2]), "boxes": random_cxcywh(rng, 2)}]
    for b, t in enumerate(targets):
        cost = matcher.cost_matrix(logits[b], boxes[b], t["labels"], t["boxes"], (deltas[b], refs[b], size[b]))
        for q in range(6):
            for g in range(len(t["labels"])):
                (x, y, w, h), (xr, yr, wr, hr) = t["boxes"][g] * np.tile(size[b], 2), refs[b, q]
                target = [(x - xr) / (wr + 0.1), (y - yr) / (hr + 0.1), math.log(w / (wr + 0.1)),
                          math.log(h / (hr + 0.1))]
                l1 = sum(abs(deltas[b, q, i] - target[i]) for i in range(4))
                want = (2.0 * scalar_focal(logits[b, q, t["labels"][g]]) + l1
                        - 2.0 * scalar_giou_cxcywh(boxes[b, q], t["boxes"][g])[1])
                assert abs(cost[q, g] - want) < 1e-12
        got = matcher(logits, boxes, targets, reparam=(deltas, refs, size))[b]
        assert abs(cost[got].sum() - brute_force_min_cost(cost)) < 1e-9


def test_sap_cost_objectness_point_constraint_and_corner_l1():
    """SAP-DETR's matcher: the focal cost of p = sigmoid(class logit) * sigmoid(objectness logit), L1 on
    x1y1x2y2, cost_inner added when the query's point is outside the GT box (its border counts as inside); a point
    outside every GT of a query keeps that query unmatched when others are free."""
    rng = np.random.default_rng(2)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, cost_inner=9999.0, l1_xyxy=True)
    logits, boxes, objs = rng.normal(0, 2, (6, 4)), random_cxcywh(rng, 6), rng.normal(0, 2, (6, 1))
    labels, gt_boxes = np.array([1, 3, 1]), random_cxcywh(rng, 3)
    points = rng.uniform(0.1, 0.9, (6, 2))
    points[0] = gt_boxes[0, :2] - gt_boxes[0, 2:] / 2  # exactly on GT 0's top-left corner: inside
    points[4:] = gt_boxes[1:, :2]  # GTs 1 and 2 have a point inside too
    cost = matcher.cost_matrix(logits, boxes, labels, gt_boxes, objectness=objs, points=points)
    corners = lambda b: [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]  # noqa: E731
    for q in range(6):
        for g in range(3):
            p = 1 / (1 + math.exp(-logits[q, labels[g]])) / (1 + math.exp(-objs[q, 0]))
            focal = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p ** 2 * -math.log(1 - p + 1e-8)
            l1 = sum(abs(a - b) for a, b in zip(corners(boxes[q]), corners(gt_boxes[g])))
            x1, y1, x2, y2 = corners(gt_boxes[g])
            inside = x1 <= points[q, 0] <= x2 and y1 <= points[q, 1] <= y2
            want = 2.0 * focal + 5.0 * l1 - 2.0 * scalar_giou_cxcywh(boxes[q], gt_boxes[g])[1] + 9999.0 * (not inside)
            assert abs(cost[q, g] - want) < 1e-9 * max(1.0, abs(want)), (q, g)
    assert cost[0, 0] < 9999.0
    targets = [{"labels": labels, "boxes": gt_boxes}]
    query_idx, gt_idx = matcher(logits[None], boxes[None], targets, objectness=objs[None], points=points[None])[0]
    inside = cost < 9999.0
    assert inside.any(0).all() and inside[query_idx, gt_idx].all() and not inside.all()
    plain = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    assert np.abs(plain.cost_matrix(logits, boxes, labels, gt_boxes, objectness=objs, points=points)
                  - plain.cost_matrix(logits, boxes, labels, gt_boxes, objectness=objs)).max() == 0  # cost_inner 0


@pytest.mark.parametrize("seed", range(40))
def test_hungarian_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_queries = int(rng.integers(1, 7))
    num_gts = [int(rng.integers(1, 5)), int(rng.integers(1, 5))]
    logits, boxes, targets = random_batch(rng, num_queries, num_gts)
    matcher = HungarianMatcher()
    result = matcher(logits, boxes, targets)
    assert len(result) == 2
    for b, (query_idx, gt_idx) in enumerate(result):
        k = min(num_queries, num_gts[b])
        assert query_idx.dtype == gt_idx.dtype == np.int64
        assert len(query_idx) == len(gt_idx) == k
        assert np.all(np.diff(query_idx) > 0)  # sorted and one-to-one on queries
        assert len(set(gt_idx.tolist())) == k  # one-to-one on GTs
        cost = matcher.cost_matrix(logits[b], boxes[b], targets[b]["labels"], targets[b]["boxes"])
        assert abs(cost[query_idx, gt_idx].sum() - brute_force_min_cost(cost)) < 1e-9


def test_fewer_queries_than_gts():
    rng = np.random.default_rng(1)
    logits, boxes, targets = random_batch(rng, 2, [5])
    matcher = HungarianMatcher()
    (query_idx, gt_idx), = matcher(logits, boxes, targets)
    np.testing.assert_array_equal(query_idx, [0, 1])  # every query is used
    assert len(set(gt_idx.tolist())) == 2
    cost = matcher.cost_matrix(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"])
    assert abs(cost[query_idx, gt_idx].sum() - brute_force_min_cost(cost)) < 1e-9


def test_obvious_match_and_float32_input():
    # each GT has one query sitting exactly on it with a confident, correct class
    gt_boxes = np.array([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.1]], np.float32)
    boxes = np.array([[[0.5, 0.5, 0.1, 0.1], [0.7, 0.6, 0.3, 0.1], [0.1, 0.9, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]],
                     np.float32)
    logits = np.full((1, 4, 3), -4.0, np.float32)
    logits[0, 1, 2] = logits[0, 3, 0] = 4.0
    targets = [{"labels": np.array([0, 2]), "boxes": gt_boxes}]
    (query_idx, gt_idx), = HungarianMatcher()(logits, boxes, targets)
    np.testing.assert_array_equal(query_idx, [1, 3])
    np.testing.assert_array_equal(gt_idx, [1, 0])


def test_empty_gt_and_determinism():
    rng = np.random.default_rng(2)
    logits, boxes, targets = random_batch(rng, 5, [0, 3, 0])
    targets[2]["boxes"] = np.zeros((0,), np.float32)  # a flat empty array is accepted too
    matcher = HungarianMatcher()
    first, second = matcher(logits, boxes, targets), matcher(logits, boxes, targets)
    for b in (0, 2):
        for idx in first[b]:
            assert idx.dtype == np.int64 and idx.shape == (0,)
    assert len(first[1][0]) == 3
    for (q1, g1), (q2, g2) in zip(first, second):
        np.testing.assert_array_equal(q1, q2)
        np.testing.assert_array_equal(g1, g2)


def test_hungarian_bad_inputs():
    rng = np.random.default_rng(3)
    logits, boxes, targets = random_batch(rng, 4, [2, 2])
    matcher = HungarianMatcher()
    bad = logits.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="pred_logits of image 1 contains NaN or inf"):
        matcher(bad, boxes, targets)
    bad = boxes.copy()
    bad[0, 0, 3] = np.inf
    with pytest.raises(ValueError, match="pred_boxes of image 0 contains NaN or inf"):
        matcher(logits, bad, targets)
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] has label 5 outside 0..4"):
        matcher(logits, boxes, [targets[0], {"labels": np.array([0, 5]), "boxes": targets[1]["boxes"]}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] has label -1"):
        matcher(logits, boxes, [{"labels": np.array([-1, 0]), "boxes": targets[0]["boxes"]}, targets[1]])
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'boxes' entry"):
        matcher(logits, boxes, [{"labels": np.array([0])}, targets[1]])
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2 images"):
        matcher(logits, boxes, targets[:1])
    # a zero-area prediction exactly on a zero-area GT: GIoU is 0/0
    point = np.array([[0.5, 0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match="image 0 has a non-finite matching cost"):
        with np.errstate(invalid="ignore"):
            matcher(logits[:1, :1], point[None], [{"labels": np.array([0]), "boxes": point}])


# ---------------------------------------------------------------- one-to-many


def assign(quality, **kwargs):
    kwargs.setdefault("positive_fraction", 1.0)
    query_idx, gt_idx = OneToManyAssigner(**kwargs).assign(np.array(quality, float), np.random.default_rng(0))
    assert query_idx.dtype == gt_idx.dtype == np.int64
    return query_idx.tolist(), gt_idx.tolist()


def reference_one_to_many(quality, k, threshold):
    """Plain-loop version of the assigner for cases where the positive cap does not trigger."""
    num_queries, num_gt = len(quality), len(quality[0])
    best_gt, positive = [], []
    for q in range(num_queries):
        g_best = 0
        for g in range(1, num_gt):
            if quality[q][g] > quality[q][g_best]:
                g_best = g
        best_gt.append(g_best)
        positive.append(quality[q][g_best] >= threshold)
    for g in range(num_gt):
        q_best = 0
        for q in range(1, num_queries):
            if quality[q][g] > quality[q_best][g]:
                q_best = q
        positive[q_best] = True
    pairs = []
    for g in range(num_gt):
        count = sum(1 for q in range(num_queries) if positive[q] and best_gt[q] == g)
        order = sorted(range(num_queries), key=lambda q: (-quality[q][g], q))
        pairs += [(q, g) for q in order[:min(count, k)]]
    return [q for q, _ in pairs], [g for _, g in pairs]


def test_quality_matrix_by_hand():
    # GT: xyxy [0.25, 0.25, 0.75, 0.75], area 1/4. Query 0 sits inside it with area 1/16 -> IoU 1/4;
    # query 1 is the GT itself -> IoU 1; query 2 is far away -> IoU 0.
    gt_boxes = np.array([[0.5, 0.5, 0.5, 0.5]])
    boxes = np.array([[0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5], [0.05, 0.05, 0.1, 0.1]])
    logits = np.array([[0.0, 9.0], [math.log(3.0), -9.0], [-math.log(3.0), 0.0]])  # p = 1/2, 3/4, 1/4 at class 0
    quality = quality_matrix(logits, boxes, np.array([0]), gt_boxes, iou_weight=0.7)
    np.testing.assert_allclose(quality[:, 0], [0.7 * 0.25 + 0.3 * 0.5, 0.7 + 0.3 * 0.75, 0.3 * 0.25], atol=1e-12)


def test_threshold_is_inclusive():
    # q0 is the GT's best query; q1 sits exactly on the threshold; q2 just below it
    assert assign([[0.9], [0.4], [0.3999999]]) == ([0, 1], [0, 0])
    assert assign([[0.9], [0.4], [0.3999999]], threshold=0.41) == ([0], [0])


def test_threshold_is_inclusive_end_to_end():
    # exact binary fractions: IoU 1/4 (query inside the GT, see above) and p = sigmoid(0) = 1/2,
    # so with iou_weight 1/2 the quality is exactly 0.375
    gt = {"labels": np.array([0]), "boxes": np.array([[0.5, 0.5, 0.5, 0.5]])}
    boxes = np.array([[[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.25, 0.25], [0.1, 0.1, 0.1, 0.1]]])
    logits = np.zeros((1, 3, 2))
    for threshold, want in ((0.375, [0, 1]), (0.37500001, [0])):
        assigner = OneToManyAssigner(threshold=threshold, iou_weight=0.5, positive_fraction=1.0)
        (query_idx, gt_idx), = assigner(logits, boxes, [gt])
        assert query_idx.tolist() == want and gt_idx.tolist() == [0] * len(want)


def test_best_query_rule_forces_a_low_quality_match():
    # nothing reaches 0.4; each GT's best query is still made positive
    quality = [[0.30, 0.01], [0.10, 0.02], [0.02, 0.35]]
    assert assign(quality) == ([0, 2], [0, 1])


def test_best_query_rule_keeps_the_query_on_its_own_best_gt():
    # q0 is GT 0's best query (0.30), but q0 prefers GT 1 (0.35): detectron2 marks q0 positive for
    # GT 1, so GT 1 counts 2 positives (q0, q2) and GT 0 ends with none.
    quality = [[0.30, 0.35], [0.10, 0.20], [0.05, 0.50], [0.00, 0.10]]
    assert assign(quality) == ([2, 0], [1, 1])
    assert reference_one_to_many(quality, 6, 0.4) == ([2, 0], [1, 1])


def test_k_caps_queries_per_gt():
    # 10 queries above threshold for one GT, 2 below: the GT gets its 6 best, best first
    values = [0.41, 0.95, 0.1, 0.6, 0.83, 0.47, 0.9, 0.2, 0.55, 0.71, 0.66, 0.5]
    query_idx, gt_idx = assign([[v] for v in values])
    assert query_idx == [1, 6, 4, 9, 10, 3] and gt_idx == [0] * 6
    assert assign([[v] for v in values], k=3)[0] == [1, 6, 4]


def test_query_shared_by_two_gts():
    # q0 is positive for GT 0, q1 for GT 1; GT 1's top-1 query over all queries is q0 (0.8 > 0.45)
    assert assign([[0.9, 0.8], [0.1, 0.45], [0.0, 0.0]]) == ([0, 0], [0, 1])


def test_final_positives_come_from_the_quality_ranking():
    # q1 and q2 prefer GT 0 and pass the threshold, but GT 0's ranking puts q0 (assigned to GT 1) first
    quality = [[0.8, 0.9], [0.7, 0.1], [0.6, 0.2], [0.1, 0.3]]
    assert assign(quality) == ([0, 1, 0], [0, 0, 1])


def test_zero_gt_and_zero_positive_budget():
    assert assign(np.zeros((5, 0))) == ([], [])
    rng = np.random.default_rng(0)
    logits, boxes, targets = random_batch(rng, 8, [0, 2])
    (q0, g0), (q1, g1) = OneToManyAssigner(seed=0)(logits, boxes, targets)
    assert q0.shape == g0.shape == (0,) and q0.dtype == g0.dtype == np.int64
    assert 1 <= len(q1) <= 2  # cap int(0.25 * 8) = 2, and the best-query rule gives at least one
    # with Q = 3 the budget int(0.25 * 3) is 0: no positives at all, as upstream
    assert assign([[0.9], [0.8], [0.7]], positive_fraction=0.25) == ([], [])


def test_positive_cap_is_random_but_seeded():
    # 20 positives, 10 per GT; the cap keeps int(0.25 * 20) = 5 at random, k = 6 never binds
    quality = np.full((20, 2), 0.1)
    quality[:10, 0] = np.linspace(0.9, 0.5, 10)
    quality[10:, 1] = np.linspace(0.9, 0.5, 10)
    assigner = OneToManyAssigner(positive_fraction=0.25)
    splits = set()
    for seed in range(30):
        query_idx, gt_idx = assigner.assign(quality, np.random.default_rng(seed))
        assert len(query_idx) == 5
        again = assigner.assign(quality, np.random.default_rng(seed))
        np.testing.assert_array_equal(query_idx, again[0])
        np.testing.assert_array_equal(gt_idx, again[1])
        count0 = int((gt_idx == 0).sum())
        # each GT's final queries are its best-ranked ones, in order
        np.testing.assert_array_equal(query_idx, list(range(count0)) + list(range(10, 10 + 5 - count0)))
        splits.add(count0)
    assert len(splits) >= 3  # the subset really is random


def test_seeded_calls_replay_and_rng_argument():
    rng = np.random.default_rng(5)
    logits, boxes, targets = random_batch(rng, 16, [6, 3], scale=0.1)
    boxes[:] = np.tile(targets[0]["boxes"], (3, 1))[:16]  # every query is on a GT of image 0: 16 positives
    first, second = OneToManyAssigner(seed=7), OneToManyAssigner(seed=7)
    runs_a = [first(logits, boxes, targets) for _ in range(5)]
    runs_b = [second(logits, boxes, targets) for _ in range(5)]
    for out_a, out_b in zip(runs_a, runs_b):
        for (qa, ga), (qb, gb) in zip(out_a, out_b):
            np.testing.assert_array_equal(qa, qb)
            np.testing.assert_array_equal(ga, gb)
        assert len(out_a[0][0]) == 4 and len(out_a[1][0]) <= 4  # cap int(0.25 * 16) = 4
    assert len({tuple(out[0][1].tolist()) for out in runs_a}) > 1  # successive calls draw differently
    explicit = [OneToManyAssigner()(logits, boxes, targets, rng=np.random.default_rng(3)) for _ in range(2)]
    for (qa, ga), (qb, gb) in zip(*explicit):
        np.testing.assert_array_equal(qa, qb)
        np.testing.assert_array_equal(ga, gb)


@pytest.mark.parametrize("seed", range(60))
def test_one_to_many_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    num_queries = int(rng.integers(1, 15))
    num_gts = [int(rng.integers(0, 5)), int(rng.integers(1, 5))]
    logits, boxes, targets = random_batch(rng, num_queries, num_gts, scale=2.0)
    k, threshold = int(rng.integers(1, 5)), float(rng.uniform(0.2, 0.6))
    assigner = OneToManyAssigner(k=k, threshold=threshold, positive_fraction=1.0)  # cap never triggers
    for b, (query_idx, gt_idx) in enumerate(assigner(logits, boxes, targets)):
        labels, gt_boxes = targets[b]["labels"], targets[b]["boxes"].astype(np.float64)
        quality = [[0.7 * scalar_giou_cxcywh(boxes[b, q], gt_boxes[g])[0]
                    + 0.3 / (1 + math.exp(-logits[b, q, labels[g]])) for g in range(num_gts[b])]
                   for q in range(num_queries)]
        if num_gts[b] == 0:
            assert len(query_idx) == len(gt_idx) == 0
            continue
        assert (query_idx.tolist(), gt_idx.tolist()) == reference_one_to_many(quality, k, threshold)


def test_one_to_many_bad_inputs():
    rng = np.random.default_rng(6)
    logits, boxes, targets = random_batch(rng, 4, [2])
    logits[0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="OneToManyAssigner: pred_logits of image 0 contains NaN or inf"):
        OneToManyAssigner()(logits, boxes, targets)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        OneToManyAssigner(k=0)
