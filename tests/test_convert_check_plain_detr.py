"""python -m convert.check on the Plain-DETR demo config: the two-stage selection is observed (its top-k goes through
deformable_transformer.top_proposals), both trees agree on the proposals and every decoder layer, and a corrupted
weight makes it exit non-zero."""
import os

from tests.test_convert_check_one_stage import ROOT, _weights, check

DEMO = os.path.join(ROOT, "configs", "demo_plain_detr.yml")


def test_demo_model_agrees_and_a_corrupted_weight_fails(tmp_path, capsys):
    weights = _weights(tmp_path, DEMO)
    assert check("-c", DEMO, "--weights", weights, "--images", 3, "--size", 128, "--backends", "reference") == 0
    out = capsys.readouterr().out
    assert "two-stage top-k order: natural in" in out
    rows = [line for line in out.splitlines() if line.startswith(("reference  dec", "reference  enc"))]
    assert len(rows) == 8 and all(line.endswith("yes") for line in rows)  # (enc + 3 layers) x (logits, boxes)
    assert "reference  top-100 detections agreeing: 300/300 (100.00%)" in out
    assert "result: PASS (0 above tolerance)" in out

    code = check("-c", DEMO, "--weights", weights, "--images", 2, "--size", 128, "--backends", "reference",
                 "--corrupt", "transformer.decoder.layers.1.cross_attn.cpb_mlp2.2.weight")
    out = capsys.readouterr().out
    assert code == 1 and "result: FAIL" in out
    dec0 = [line for line in out.splitlines() if line.startswith("reference  dec0 ")]
    dec1 = [line for line in out.splitlines() if line.startswith("reference  dec1 ")]
    assert all(line.endswith("yes") for line in dec0) and any(line.endswith("NO") for line in dec1)
