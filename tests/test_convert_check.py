"""python -m convert.check: the same weights in both trees agree; a corrupted weight makes it exit non-zero."""
import os

import numpy as np
import paddle
import pytest
import torch

from convert.check import main, paddle_topk_control
from convert.models import build_paddle, build_torch, resolve_config
from tests.conftest import TINY_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yml")
# TINY_MODEL without its data overrides (the check reads images itself); 6 classes as the demo data.
MODEL = [o for o in TINY_MODEL if o.startswith("model.")] + ["model.num_classes=6"]


def _weights(tmp_path, name="tiny.pth", edit=None):
    cfg = resolve_config(DEMO, MODEL)
    model = build_torch(cfg, seed=0)
    with torch.no_grad():
        for head in model.bbox_embed:  # non-zero box deltas, so boxes depend on the decoder
            head.layers[-1].weight.normal_(0, 0.05)
        if edit:
            edit(model)
    path = tmp_path / name
    torch.save({"model": model.state_dict()}, path)
    return path


def check(*argv):
    return main([str(a) for a in argv] + ["-o"] + MODEL)


def test_agreement_on_synthetic_images_both_paths(tmp_path, capsys):
    weights = _weights(tmp_path)
    assert check("-c", DEMO, "--weights", weights, "--images", 3, "--size", 96) == 0
    out = capsys.readouterr().out
    assert "precision float32; two-stage top-k order: natural in" in out
    for backend in ("reference", "kernel"):
        for row in ("enc logits", "dec0 boxes", "dec1 logits", "dec1 boxes"):
            assert any(line.startswith(f"{backend:<10} {row}") and line.endswith("yes") for line in out.splitlines())
        assert f"{backend:<10} top-100 detections agreeing: 300/300 (100.00%)" in out
    assert "result: PASS (0 above tolerance)" in out


def test_corrupted_weight_fails(tmp_path, capsys):
    weights = _weights(tmp_path)
    code = check("-c", DEMO, "--weights", weights, "--images", 2, "--size", 96, "--backends", "reference",
                 "--corrupt", "transformer.decoder.layers.1.linear2.weight")
    out = capsys.readouterr().out
    assert code == 1
    assert "self-test: transformer.decoder.layers.1.linear2.weight perturbed" in out and "result: FAIL" in out
    dec0 = [line for line in out.splitlines() if line.startswith("reference  dec0 ")]
    dec1 = [line for line in out.splitlines() if line.startswith("reference  dec1 ")]
    assert all(line.endswith("yes") for line in dec0) and any(line.endswith("NO") for line in dec1)


def test_ap_on_coco_folder_and_float64(tiny_data, tmp_path, capsys):
    """--data: the val split of a demo-layout folder, AP of both frameworks on the same images."""
    root = os.path.dirname(next(o for o in tiny_data if o.startswith("data.val.ann_file=")).split("=", 1)[1])
    weights = _weights(tmp_path)
    assert check("-c", DEMO, "--weights", weights, "--data", root, "--backends", "kernel",
                 "--precision", "float64") == 0
    out = capsys.readouterr().out
    assert f"3 images of {root} (val)" in out and "(float64: stable)" in out
    ap = [line for line in out.splitlines() if "bbox AP" in line]
    assert len(ap) == 1 and "torch" in ap[0] and "paddle" in ap[0] and ap[0].endswith("yes")


def test_differing_selection_order_is_replayed(tmp_path, capsys, monkeypatch):
    """When the frameworks' two-stage top-k orders differ (here: torch made to take its top-k reversed), the
    Paddle batch is re-run with torch's order and the outputs compared like with like; the header counts it."""
    from convert import check as check_module
    from torch_impl.models import deformable_transformer as tr

    def reversed_torch_order(record):
        def topk(x, k, *args, **kwargs):
            index = torch.topk(x, k, *args, **kwargs)[1].flip(1)
            record.append(index.numpy().copy())
            return torch.gather(x, 1, index), index
        return check_module._patched_topk(tr, "torch", topk)

    monkeypatch.setattr(check_module, "torch_topk_recorder", reversed_torch_order)
    weights = _weights(tmp_path)
    assert check("-c", DEMO, "--weights", weights, "--images", 4, "--batch-size", 2, "--size", 96,
                 "--backends", "reference") == 0
    out = capsys.readouterr().out
    assert "natural in 0/2 batches, torch's order replayed in Paddle (forced) in 2" in out
    assert "result: PASS" in out


def test_forced_order_is_replayed():
    """paddle_topk_control(forced=...) makes the Paddle model use the given selection order."""
    cfg = resolve_config(DEMO, MODEL)
    pd = build_paddle(cfg)
    images = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32))
    masks = paddle.zeros([1, 96, 96], dtype="bool")
    seen = []
    with paddle.no_grad(), paddle_topk_control(seen):
        natural = pd(images, masks)["pred_boxes"].numpy()
    order = seen[0]
    replayed = []
    with paddle.no_grad(), paddle_topk_control(replayed, forced=[order[:, ::-1].copy()]):
        reversed_ = pd(images, masks)["pred_boxes"].numpy()
    with paddle.no_grad(), paddle_topk_control([], forced=[order]):
        same = pd(images, masks)["pred_boxes"].numpy()
    assert np.array_equal(same, natural) and not np.allclose(reversed_, natural)
    assert np.array_equal(replayed[0], order)  # the natural order is still recorded


@pytest.mark.parametrize("argv, message", [
    (["--weights", "missing.pth"], "weight file not found: missing.pth"),
    (["--weights", "w.pth", "--data", "/nonexistent"], "no val split found"),
])
def test_usage_errors(argv, message, tmp_path, capsys, monkeypatch):
    _weights(tmp_path, "w.pth")
    monkeypatch.chdir(tmp_path)
    assert check("-c", DEMO, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
