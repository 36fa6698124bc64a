"""Denoising queries (common/denoising.py): layout, attention mask, noise, empty images."""
import numpy as np
import pytest

from common.denoising import dn_attn_mask, dn_layout, noise_boxes, prepare_dn


def _targets(counts, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in counts:
        centres = rng.uniform(0.3, 0.7, (n, 2))
        sizes = rng.uniform(0.05, 0.2, (n, 2))
        out.append({"labels": rng.integers(0, 7, n), "boxes": np.concatenate([centres, sizes], 1).astype(np.float32)})
    return out


@pytest.mark.parametrize("counts, number, contrastive, expected", [
    ([2, 3], 100, True, (33, 6, 198)),   # DINO: 100 // 3 groups of 2 * 3 slots
    ([2, 3], 5, False, (5, 3, 15)),      # DN-DETR: fixed groups, positives only
    ([0, 4], 2, True, (1, 8, 8)),        # at least one group
    ([0, 0], 100, True, (0, 0, 0)),      # nothing to denoise
])
def test_layout(counts, number, contrastive, expected):
    assert dn_layout(counts, number, contrastive) == expected


def test_attention_mask_hand_checked():
    # 2 groups of 2 denoising queries, then 2 matching queries; 1 = blocked
    expected = np.array([[0, 0, 1, 1, 0, 0],
                         [0, 0, 1, 1, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(dn_attn_mask(4, 2, 2), expected)
    np.testing.assert_array_equal(dn_attn_mask(0, 0, 3), np.zeros((3, 3), dtype=bool))


def test_prepare_dn_layout_without_noise():
    targets = _targets([2, 1])
    dn = prepare_dn(targets, num_classes=7, num_queries=3, number=4, label_noise_ratio=0.0, box_noise_scale=0.0,
                    contrastive=True, rng=np.random.default_rng(0))
    assert (dn["num_groups"], dn["group_size"], dn["pad_size"]) == (2, 4, 8)
    # group g: positives at 4g + j, negatives at 4g + 2 + j
    for b, t in enumerate(targets):
        n = len(t["labels"])
        for g in range(2):
            for j in range(2):
                for slot in (4 * g + j, 4 * g + 2 + j):
                    assert dn["valid"][b, slot] == (j < n)
                    if j < n:
                        assert dn["labels"][b, slot] == t["labels"][j]
                        np.testing.assert_allclose(dn["boxes"][b, slot], t["boxes"][j], atol=1e-6)
                    else:
                        assert dn["labels"][b, slot] == 0 and (dn["boxes"][b, slot] == 0.5).all()
    np.testing.assert_array_equal(dn["positive_idx"][0][0], [0, 1, 4, 5])
    np.testing.assert_array_equal(dn["positive_idx"][0][1], [0, 1, 0, 1])
    np.testing.assert_array_equal(dn["positive_idx"][1][0], [0, 4])
    np.testing.assert_array_equal(dn["positive_idx"][1][1], [0, 0])
    assert dn["attn_mask"].shape == (11, 11)


def test_box_noise_ranges():
    rng = np.random.default_rng(0)
    n = 4000
    boxes = np.concatenate([rng.uniform(0.4, 0.6, (n, 2)), rng.uniform(0.05, 0.1, (n, 2))], 1)
    negative = np.arange(n) % 2 == 1
    noisy = noise_boxes(boxes, 1.0, negative, rng)
    to_xyxy = lambda b: np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
    half = np.concatenate([boxes[:, 2:], boxes[:, 2:]], 1) / 2
    moved = np.abs(to_xyxy(noisy) - to_xyxy(boxes)) / half  # no clipping: boxes are far from the border
    assert moved[~negative].max() < 1 + 1e-6 and moved[negative].min() > 1 - 1e-6 and moved[negative].max() < 2 + 1e-6
    # u is uniform: half of the positives move less than half a half-size
    assert abs((moved[~negative] < 0.5).mean() - 0.5) < 0.02


def test_label_noise_rate():
    targets = [{"labels": np.full(5000, 3), "boxes": np.tile([[0.5, 0.5, 0.2, 0.2]], (5000, 1))}]
    dn = prepare_dn(targets, num_classes=10, num_queries=1, number=1, label_noise_ratio=0.5, box_noise_scale=0.0,
                    contrastive=False, rng=np.random.default_rng(0))
    changed = (dn["labels"][0] != 3).mean()
    # flipped with probability 0.5 / 2, to a uniform class that is a new one 9 times in 10
    assert abs(changed - 0.25 * 0.9) < 0.02
    assert dn["labels"].min() >= 0 and dn["labels"].max() < 10


def test_plain_dn_has_no_negatives():
    dn = prepare_dn(_targets([3, 2]), 7, 4, number=3, label_noise_ratio=0.2, box_noise_scale=0.4, contrastive=False,
                    rng=np.random.default_rng(0))
    assert (dn["num_groups"], dn["group_size"], dn["pad_size"]) == (3, 3, 9)
    assert dn["valid"][0].all() and dn["valid"][1].sum() == 6
    np.testing.assert_array_equal(dn["positive_idx"][1][0], [0, 1, 3, 4, 6, 7])


def test_empty_images():
    dn = prepare_dn(_targets([0, 2]), 7, 5, number=10, label_noise_ratio=0.5, box_noise_scale=1.0, contrastive=True,
                    rng=np.random.default_rng(0))
    assert dn["pad_size"] == 5 * 4 and not dn["valid"][0].any() and len(dn["positive_idx"][0][0]) == 0
    none = prepare_dn(_targets([0, 0]), 7, 5, 10, 0.5, 1.0, True, np.random.default_rng(0))
    assert none["pad_size"] == 0 and none["labels"].shape == (2, 0) and none["attn_mask"].shape == (5, 5)
