"""Loss functions and the criterion's bookkeeping, against element-by-element formulas."""
import math

import numpy as np
import pytest
import torch

from common.matching import HungarianMatcher, OneToManyAssigner
from common.matching.one_to_many import assigner_fraction
from common.matching.ranking import keep_best_duplicates, rank_in_groups
from torch_impl.models.criterion import SetCriterion, ice_loss, sigmoid_focal_loss
from torch_impl.models.utils import numpy_rng, targets_to_tensors


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _iou_cxcywh(a, b):
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union, inter / union - (hull - union) / hull


def test_ice_loss_matches_elementwise_formula():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.3], [-0.7, 1.5]]], requires_grad=True)
    pos = (torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([1, 0]))
    t = torch.tensor([0.6, 0.3])
    loss = ice_loss(logits, pos, t, normalizer=2.0, gamma=2.0)
    expected = 0.0
    targets = {(0, 1): 0.6, (2, 0): 0.3}
    for q in range(3):
        for c in range(2):
            p = _sig(logits[0, q, c].item())
            if (q, c) in targets:
                tt = targets[(q, c)]
                expected += -tt * math.log(p) - (1 - tt) * math.log(1 - p)
            else:
                expected += -p ** 2 * math.log(1 - p)
    assert loss.item() == pytest.approx(expected / 2.0, rel=1e-6)
    loss.backward()
    # the negative weight p^2 is not detached (release): d/dx of -p^2 log(1-p) at an unmatched entry
    x = logits[0, 0, 0].item()
    p = _sig(x)
    grad = -(2 * p * p * (1 - p)) * math.log(1 - p) + p ** 2 * p
    assert logits.grad[0, 0, 0].item() == pytest.approx(grad / 2.0, rel=1e-5)


def test_focal_loss_matches_elementwise_formula():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.3]]])
    loss = sigmoid_focal_loss(logits, (torch.tensor([0]), torch.tensor([1]), torch.tensor([0])), 3.0, 0.25, 2.0)
    expected = 0.0
    for q in range(2):
        for c in range(2):
            p = _sig(logits[0, q, c].item())
            if (q, c) == (1, 0):
                expected += -0.25 * (1 - p) ** 2 * math.log(p)
            else:
                expected += -0.75 * p ** 2 * math.log(1 - p)
    assert loss.item() == pytest.approx(expected / 3.0, rel=1e-6)


def test_rank_and_duplicate_helpers():
    groups = np.array([3, 1, 3, 3, 1])
    scores = np.array([0.2, 0.5, 0.9, 0.2, 0.7])
    np.testing.assert_array_equal(rank_in_groups(groups, scores), [1, 1, 0, 2, 0])  # tie: earlier first
    keys = np.array([[0, 4, 1], [0, 4, 1], [0, 5, 1], [1, 4, 1]])
    np.testing.assert_array_equal(np.sort(keep_best_duplicates(keys, np.array([0.1, 0.4, 0.3, 0.2]))), [1, 2, 3])
    assert len(rank_in_groups(np.zeros(0, int), np.zeros(0))) == 0
    assert len(keep_best_duplicates(np.zeros((0, 3), int), np.zeros(0))) == 0


def _criterion(loss_type="ice", assigner=True, dn=True):
    return SetCriterion(3, HungarianMatcher(), OneToManyAssigner(k=2, threshold=0.1) if assigner else None,
                        num_layers=2, two_stage=True, dn=dn, loss_type=loss_type)


def _layer(seed, n=6, c=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n, c, generator=g).requires_grad_()
    boxes = torch.cat([torch.rand(2, n, 2, generator=g) * 0.5 + 0.25, torch.rand(2, n, 2, generator=g) * 0.3 + 0.1],
                      -1).requires_grad_()
    return {"pred_logits": logits, "pred_boxes": boxes}


TARGETS = [{"labels": np.array([1, 2, 1]),
            "boxes": np.array([[0.4, 0.5, 0.2, 0.3], [0.6, 0.6, 0.2, 0.2], [0.45, 0.5, 0.25, 0.3]], np.float32)},
           {"labels": np.array([0]), "boxes": np.array([[0.5, 0.4, 0.3, 0.3]], np.float32)}]


def _direct_terms(layer, pairs, normalizer, ice, rank_tau=None):
    """Element-by-element reference of (ce, l1, giou) for pairs [(b, q, gt)]."""
    logits = layer["pred_logits"].detach().numpy().astype(np.float64)
    boxes = layer["pred_boxes"].detach().numpy().astype(np.float64)
    entries = []  # (b, q, class, t, box weight)
    for b, q, g in pairs:
        c = int(TARGETS[b]["labels"][g])
        iou, _ = _iou_cxcywh(boxes[b, q], TARGETS[b]["boxes"][g].astype(np.float64))
        entries.append([b, q, c, max(_sig(logits[b, q, c]) ** 0.25 * iou ** 0.75, 0.01), 1.0])
    if rank_tau is not None:
        for b, _, g in set((b, 0, g) for b, _, g in pairs):
            mine = [e for e, (bb, _, gg) in zip(entries, pairs) if (bb, gg) == (b, g)]
            for r, e in enumerate(sorted(mine, key=lambda e: -e[3])):
                e[4] = math.exp(-r / rank_tau)
                e[3] *= e[4]
    ce = 0.0
    pos = {}
    for b, q, c, t, _ in entries:
        pos[(b, q, c)] = max(pos.get((b, q, c), 0), t)
    for idx in np.ndindex(*logits.shape):
        p = _sig(logits[idx])
        if ice:
            t = pos.get(idx)
            ce += -t * math.log(p) - (1 - t) * math.log(1 - p) if t is not None else -p ** 2 * math.log(1 - p)
        else:
            ce += -0.25 * (1 - p) ** 2 * math.log(p) if idx in pos else -0.75 * p ** 2 * math.log(1 - p)
    l1 = giou = 0.0
    for (b, q, g), e in zip(pairs, entries):
        tb = TARGETS[b]["boxes"][g].astype(np.float64)
        l1 += e[4] * np.abs(boxes[b, q] - tb).sum()
        giou += e[4] * (1 - _iou_cxcywh(boxes[b, q], tb)[1])
    return ce / normalizer, l1 / normalizer, giou / normalizer


@pytest.mark.parametrize("ice, one_to_many", [(True, False), (True, True), (False, False)])
def test_layer_terms_match_direct_computation(ice, one_to_many):
    crit = _criterion("ice" if ice else "focal")
    layer = _layer(0)
    # query 4 of image 0 is positive for GT 0 and GT 2, both class 1: one (query, class) entry, the larger t
    indices = [(np.array([4, 1, 4, 0, 4]), np.array([0, 0, 1, 1, 2])), (np.array([2, 5]), np.array([0, 0]))]
    pairs = [(b, int(q), int(g)) for b, (qs, gs) in enumerate(indices) for q, g in zip(qs, gs)]
    tgt = [{"labels": torch.as_tensor(t["labels"]), "boxes": torch.as_tensor(t["boxes"])} for t in TARGETS]
    terms = crit._terms(layer, tgt, indices, 2.5, one_to_many=one_to_many)
    ce, l1, giou = _direct_terms(layer, pairs, 2.5, ice, rank_tau=1.5 if (ice and one_to_many) else None)
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss_bbox"].item() == pytest.approx(l1, rel=1e-5)
    assert terms["loss_giou"].item() == pytest.approx(giou, rel=1e-5)


def _outputs(pad=True):
    def stream(seed, n=6):
        last = _layer(seed + 1, n)
        return dict(last, aux_outputs=[_layer(seed, n)])
    out = stream(0)
    out["enc_outputs"] = _layer(10, n=20)
    out["c_outputs"] = stream(20)
    if pad:  # 2 groups of 4 slots (2 positives, 2 negatives): image 0 has GT 0, 1; image 1 has GT 0
        out["dn_meta"] = {"pad_size": 8, "num_groups": 2, "group_size": 4,
                          "positive_idx": [(np.array([0, 1, 4, 5]), np.array([0, 1, 0, 1])),
                                           (np.array([0, 4]), np.array([0, 0]))]}
        out["dn_outputs"] = stream(30, 8)
        out["c_dn_outputs"] = stream(40, 8)
    else:
        out["dn_meta"] = {"pad_size": 0, "num_groups": 0, "group_size": 0, "positive_idx": [None, None]}
    return out


def test_criterion_terms_weights_and_normalizers():
    crit = _criterion()
    out = _outputs()
    losses = crit(out, TARGETS, num_boxes=3)
    assert set(losses) == set(crit.weight_dict)
    assert len(losses) == 3 * (2 * 4 + 1)  # 3 terms x (2 layers x 4 streams + encoder)
    assert crit.weight_dict["loss_bbox_c_0"] == 5 and crit.weight_dict["loss_ce_enc"] == 2
    tgt = [{"labels": torch.as_tensor(t["labels"]), "boxes": torch.as_tensor(t["boxes"])} for t in TARGETS]
    dn = crit._terms(out["dn_outputs"], tgt, out["dn_meta"]["positive_idx"], 3 * 2)  # num_boxes x groups
    assert losses["loss_bbox_dn"].item() == pytest.approx(5 * dn["loss_bbox"].item(), rel=1e-6)
    assert losses["loss_ce_dn"].item() == pytest.approx(dn["loss_ce"].item(), rel=1e-6)
    # encoder: class-agnostic focal loss, matched on class 0
    enc = out["enc_outputs"]
    binary = [{"labels": np.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in TARGETS]
    idx = HungarianMatcher()(enc["pred_logits"].detach().numpy(), enc["pred_boxes"].detach().numpy(), binary)
    bt = [{"labels": torch.zeros(len(t["labels"]), dtype=torch.long), "boxes": t["boxes"]} for t in tgt]
    ref = crit._terms(enc, bt, idx, 3, focal=True)
    assert losses["loss_ce_enc"].item() == pytest.approx(2 * ref["loss_ce"].item(), rel=1e-6)
    assert losses["loss_giou_enc"].item() == pytest.approx(2 * ref["loss_giou"].item(), rel=1e-6)


def test_c_decoder_normalized_by_three_times_num_boxes():
    crit = _criterion()
    out = _outputs()
    torch.manual_seed(5)
    losses = crit(out, TARGETS, num_boxes=3)
    # same assignment again: the assigner draws from a numpy rng seeded by torch's global RNG
    torch.manual_seed(5)
    layer = out["c_outputs"]
    tgt = [{"labels": torch.as_tensor(t["labels"]), "boxes": torch.as_tensor(t["boxes"])} for t in TARGETS]
    rng = numpy_rng()
    crit.assigner(out["c_outputs"]["aux_outputs"][0]["pred_logits"].detach().numpy(),
                  out["aux_outputs"][0]["pred_boxes"].detach().numpy(), TARGETS, rng=rng)  # layer 0 first
    idx = crit.assigner(layer["pred_logits"].detach().numpy(), out["pred_boxes"].detach().numpy(), TARGETS, rng=rng)
    assert sum(len(q) for q, _ in idx) > 0
    ref = crit._terms(layer, tgt, idx, 9.0, one_to_many=True)
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        assert losses[k + "_c"].item() == pytest.approx(ref[k].item() * crit.weight_dict[k], rel=1e-6)


def test_criterion_without_gt_and_without_dn_queries():
    crit = _criterion()
    empty = [{"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4), np.float32)}] * 2
    losses = crit(_outputs(pad=False), empty, num_boxes=0)
    assert set(losses) == set(crit.weight_dict)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ce_dn"].item() == 0 and losses["loss_bbox"].item() == 0
    assert losses["loss_ce"].item() > 0  # every query is a negative
    sum(losses.values()).backward()


def test_criterion_without_dac_and_dn_keys():
    crit = _criterion("focal", assigner=False, dn=False)
    out = _outputs()
    for k in ("c_outputs", "dn_meta", "dn_outputs", "c_dn_outputs"):
        out.pop(k)
    losses = crit(out, TARGETS, 3)
    assert set(losses) == {f"loss_{t}{s}" for t in ("ce", "bbox", "giou") for s in ("", "_0", "_enc")}


@pytest.mark.parametrize("num_queries", [50, 75, 100, 300, 900, 1000, 4000])
def test_assigner_fraction_reproduces_the_release_cap(num_queries):
    # the release caps one-to-many positives at int(0.25 * 300) = 75 per image whatever the query count
    fraction = assigner_fraction(0.25, 300, num_queries)
    assert int(fraction * num_queries) == min(75, num_queries)
    assert assigner_fraction(0.25, None, num_queries) == 0.25


def test_targets_to_tensors():
    out = targets_to_tensors([{"labels": np.array([3]), "boxes": np.array([[0.5, 0.5, 0.1, 0.2]]), "image_id": 7},
                              {"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4))}], torch.device("cpu"))
    assert out[0]["labels"].dtype == torch.int64 and out[0]["boxes"].dtype == torch.float32
    assert set(out[0]) == {"labels", "boxes"} and out[1]["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'boxes'"):
        targets_to_tensors([{"labels": np.array([1])}], torch.device("cpu"))


def test_rng_makes_the_one_to_many_sampling_reproducible():
    crit = SetCriterion(3, HungarianMatcher(), OneToManyAssigner(k=2, threshold=0.0, positive_fraction=0.5),
                        num_layers=2)
    out = _outputs()
    runs = [crit(out, TARGETS, 3, rng=np.random.default_rng(7)) for _ in range(2)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
