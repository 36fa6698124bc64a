"""DN-DETR (dab_detr + model.dn) in the Paddle tree: the torch tests' mirror (denoising queries and mask reaching the
decoder, matching queries blind to them, denoising losses of every layer, batches without GT, label_enc's
gradients); parity with torch is tests/test_dn_dab_detr_parity.py."""
import numpy as np
import paddle
import pytest

from paddle_impl.models import build_model
from tests.dn_dab_detr_case import (IMAGES, MASKS, NO_GT, NUM_CLASSES, NUM_QUERIES, ONE_EMPTY, TARGETS, check_queries,
                                    dn_cfg, expected_dn)


def tiny(double=False):
    paddle.seed(0)
    model, criterion, _ = build_model({"model": dn_cfg()})
    last = model.bbox_embed.layers[-1].weight  # moving anchors (the release starts this layer at 0)
    last.set_value(np.random.default_rng(1).normal(0, 0.1, last.shape).astype(np.float32))
    if double:
        model.to(dtype="float64")
    model.train()
    return model, criterion


def _run(model, targets, seed=0, dtype=np.float32):
    return model(paddle.to_tensor(IMAGES.astype(dtype)), paddle.to_tensor(MASKS), targets,
                 dn_rng=np.random.default_rng(seed))


def _record_inputs(model):
    seen = {"transformer": [], "layers": []}
    hooks = [model.transformer.register_forward_pre_hook(lambda m, args: seen["transformer"].append(args))]
    hooks += [layer.register_forward_pre_hook(lambda m, args: seen["layers"].append(args[6]))
              for layer in model.transformer.decoder.layers]
    return seen, hooks


@pytest.mark.parametrize("targets, pad", [(TARGETS, 6), (ONE_EMPTY, 6)], ids=["two_images", "one_empty"])
def test_dn_queries_and_mask_reach_the_decoder(targets, pad):
    model, _ = tiny()
    seen, hooks = _record_inputs(model)
    out = _run(model, targets)
    for hook in hooks:
        hook.remove()
    dn = expected_dn(targets, 0)
    _, _, anchors, _, _, content, attn_mask = seen["transformer"][0]
    check_queries(anchors.numpy(), content.numpy(), attn_mask.numpy(), dn, model.label_enc.weight.numpy(),
                  model.refpoint_embed.weight.numpy())
    assert len(seen["layers"]) == 3 and all(m is attn_mask for m in seen["layers"])
    assert out["dn_meta"]["pad_size"] == pad and out["dn_meta"]["num_groups"] == 3
    for key, n in (("dn_outputs", pad), (None, NUM_QUERIES)):
        stream = out[key] if key else out
        assert [s["pred_logits"].shape for s in stream["aux_outputs"] + [stream]] == [[2, n, NUM_CLASSES]] * 3
        assert [s["pred_boxes"].shape for s in stream["aux_outputs"] + [stream]] == [[2, n, 4]] * 3


def test_matching_outputs_do_not_see_the_dn_queries():
    """float64, as in torch: equal to the forward without denoising queries and to inference to 1e-12; the same
    queries without the mask change them."""
    model, _ = tiny(double=True)
    seen, hooks = _record_inputs(model)
    with_dn = _run(model, TARGETS, dtype=np.float64)
    without = _run(model, NO_GT, dtype=np.float64)
    for hook in hooks:
        hook.remove()
    assert with_dn["dn_meta"]["pad_size"] == 6 and "dn_outputs" not in without
    model.eval()
    with paddle.no_grad():
        inference = model(paddle.to_tensor(IMAGES.astype(np.float64)), paddle.to_tensor(MASKS))
    for other in (without, inference):
        for a, b in zip(with_dn["aux_outputs"] + [with_dn], other["aux_outputs"] + [other]):
            for k in ("pred_logits", "pred_boxes"):
                assert np.abs(a[k].numpy() - b[k].numpy()).max() <= 1e-12, k
    args = seen["transformer"][0]
    with paddle.no_grad():
        unmasked, _ = model.transformer(*args[:6], None)
        masked, _ = model.transformer(*args)
    assert np.abs(unmasked[-1].numpy()[:, 6:] - masked[-1].numpy()[:, 6:]).max() > 1e-3


@pytest.mark.parametrize("targets", [TARGETS, NO_GT], ids=["two_images", "no_gt"])
def test_dn_losses_on_every_layer(targets):
    model, criterion = tiny()
    out = _run(model, targets)
    losses = criterion(out, targets, max(float(sum(len(t["labels"]) for t in targets)), 1.0))
    dn_terms = {f"{k}_dn{s}" for k in ("loss_ce", "loss_bbox", "loss_giou") for s in ("_0", "_1", "")}
    assert set(losses) == set(criterion.weight_dict) and dn_terms < set(losses) and len(losses) == 18
    has_gt = any(len(t["labels"]) for t in targets)
    assert all((losses[k].item() > 0) == has_gt for k in dn_terms), {k: losses[k].item() for k in dn_terms}
    paddle.add_n(list(losses.values())).backward()
    assert all(p.grad is None or np.isfinite(p.grad.numpy()).all() for p in model.parameters())


def test_label_enc_gradients():
    """As in torch: the denoising losses reach the rows of the noised labels and the unknown class, the matching
    losses only the unknown class's row (backward of each part from its own forward: paddle.grad does not go
    through the frozen backbone's PyLayer). A row counts above 1e-12 of the largest: Paddle's float32 CPU softmax
    gives a masked (-inf) key a weight of ~1e-28, not 0, so ~1e-29 of the matching losses' gradient reaches the
    denoising rows (measured; torch's kernel gives exact zeros)."""
    model, criterion = tiny()
    dn = expected_dn(TARGETS, 0)
    for part, rows in ((lambda k: "_dn" in k, set(dn["labels"][dn["valid"]]) | {NUM_CLASSES}),
                       (lambda k: "_dn" not in k, {NUM_CLASSES})):
        model.clear_gradients()
        losses = criterion(_run(model, TARGETS), TARGETS, 3.0)
        paddle.add_n([v for k, v in losses.items() if part(k)]).backward()
        row_norms = np.abs(model.label_enc.weight.grad.numpy()).sum(1)
        assert set(np.flatnonzero(row_norms > 1e-12 * row_norms.max())) == rows
