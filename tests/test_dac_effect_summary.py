"""tools/dac_effect's summary: per-variant mean and spread over seeds of AP from the runs' metrics.jsonl, and the
NMS column from RUN/nms/eval.json, on hand-written run folders (no training)."""
import argparse
import json
import os

import numpy as np
import pytest

from tools import dac_effect


def _write_run(directory, aps, losses, nms_ap=None):
    os.makedirs(directory)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({"kind": "train", "iteration": 100 * (i + 1), "loss_bbox": loss, "loss_giou": 1.0})
                    + "\n")
        for ap in aps:
            f.write(json.dumps({"kind": "eval", "bbox_AP": ap, "bbox_AP50": 2 * ap}) + "\n")
    if nms_ap is not None:
        os.makedirs(os.path.join(directory, "nms"))
        with open(os.path.join(directory, "nms", "eval.json"), "w") as f:
            json.dump({"bbox_AP": nms_ap, "bbox_AP50": 2 * nms_ap}, f)


@pytest.mark.parametrize("nms", [None, 0.8])
def test_summary_table(tmp_path, nms):
    args = argparse.Namespace(out=str(tmp_path), seeds=[0, 1, 2], epochs=2, framework="torch", nms_iou=nms)
    for k, variant in enumerate(dac_effect.VARIANTS):
        for seed in args.seeds:
            _write_run(dac_effect.run_dir(args.out, variant, seed), [0.1 * k + 0.01 * seed, 0.2 * k + 0.01 * seed],
                       [3.0 - seed, 2.0, 1.0 + seed], nms_ap=0.3 + 0.01 * seed)
    result = dac_effect.summarize(args)
    dino = result["dino"]  # k = 1
    assert np.allclose(dino["ap"], [[0.1, 0.2], [0.11, 0.21], [0.12, 0.22]])
    assert np.array_equal(dino["iters"], [100, 200, 300])
    assert np.allclose(dino["loss"].mean(0), [3.0, 3.0, 3.0])  # loss_bbox + loss_giou, per iteration over seeds
    dac_effect.write_table(result, args)
    table = (tmp_path / "summary.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| dino |"))
    std = np.std([0.1, 0.11, 0.12])
    assert f"0.110 +- {std:.3f} (0.100, 0.110, 0.120) | 0.220" in row
    assert ("with NMS" in table) == (nms is not None)
    if nms is not None:
        assert row.endswith(f"| 0.310 +- {std:.3f} (0.300, 0.310, 0.320) | 0.620 |")
        assert np.allclose(dino["ap_nms"], [0.3, 0.31, 0.32])
