"""DN-DETR (dab_detr + model.dn) in the torch tree: the denoising queries the decoder gets (content, anchors, mask),
matching queries blind to them, the denoising losses of every layer, batches without GT, label_enc's gradients,
no denoising at inference."""
import numpy as np
import pytest
import torch

from tests.dn_dab_detr_case import (IMAGES, MASKS, NO_GT, NUM_CLASSES, NUM_QUERIES, ONE_EMPTY, TARGETS, check_queries,
                                    dn_cfg, expected_dn)
from torch_impl.models import build_model


def tiny(double=False):
    torch.manual_seed(0)
    model, criterion, _ = build_model({"model": dn_cfg()})
    with torch.no_grad():  # moving anchors: the box head's last layer starts at 0 (release init)
        model.bbox_embed.layers[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    model.train()
    return (model.double() if double else model), criterion


def _run(model, targets, seed=0, dtype=np.float32):
    return model(torch.from_numpy(IMAGES.astype(dtype)), torch.from_numpy(MASKS), targets,
                 dn_rng=np.random.default_rng(seed))


def _record_inputs(model):
    """Hooks recording the transformer's inputs and every decoder layer's self-attention mask."""
    seen = {"transformer": [], "layers": []}
    hooks = [model.transformer.register_forward_pre_hook(lambda m, args: seen["transformer"].append(args))]
    hooks += [layer.register_forward_pre_hook(lambda m, args: seen["layers"].append(args[6]))
              for layer in model.transformer.decoder.layers]
    return seen, hooks


@pytest.mark.parametrize("targets, pad", [(TARGETS, 6), (ONE_EMPTY, 6)], ids=["two_images", "one_empty"])
def test_dn_queries_and_mask_reach_the_decoder(targets, pad):
    """3 groups x max 2 GT = 6 denoising queries before the 12 matching ones: anchors = logits of prepare_dn's
    noised boxes then refpoint_embed, content = label_enc(noised label) ++ 1 (empty slots 0) then the unknown
    class ++ 0, and the group mask in every decoder layer; outputs split 6 / 12."""
    model, _ = tiny()
    seen, hooks = _record_inputs(model)
    out = _run(model, targets)
    for hook in hooks:
        hook.remove()
    dn = expected_dn(targets, 0)
    assert (dn["pad_size"], dn["num_groups"], dn["group_size"]) == (pad, 3, 2)
    _, _, anchors, _, _, content, attn_mask = seen["transformer"][0]
    check_queries(anchors.detach().numpy(), content.detach().numpy(), attn_mask.numpy(), dn,
                  model.label_enc.weight.detach().numpy(), model.refpoint_embed.weight.detach().numpy())
    assert len(seen["layers"]) == 3 and all(m is attn_mask for m in seen["layers"])
    assert out["dn_meta"]["pad_size"] == pad and out["dn_meta"]["num_groups"] == 3
    for key, n in (("dn_outputs", pad), (None, NUM_QUERIES)):
        stream = out[key] if key else out
        assert [tuple(s["pred_logits"].shape) for s in stream["aux_outputs"] + [stream]] == [(2, n, NUM_CLASSES)] * 3
        assert [tuple(s["pred_boxes"].shape) for s in stream["aux_outputs"] + [stream]] == [(2, n, 4)] * 3
    np.testing.assert_array_equal(out["dn_meta"]["positive_idx"][0][0], dn["positive_idx"][0][0])


def test_matching_outputs_do_not_see_the_dn_queries():
    """float64: every layer's matching outputs with 6 denoising queries in front equal those of a training forward
    without any (a batch without GT) and of inference, to 1e-12; the control, the same queries without the mask,
    changes them."""
    model, _ = tiny(double=True)
    seen, hooks = _record_inputs(model)
    with_dn = _run(model, TARGETS, dtype=np.float64)
    without = _run(model, NO_GT, dtype=np.float64)
    for hook in hooks:
        hook.remove()
    assert with_dn["dn_meta"]["pad_size"] == 6 and without["dn_meta"]["pad_size"] == 0
    assert "dn_outputs" not in without and seen["layers"][3:] == [None] * 3
    model.eval()
    with torch.no_grad():
        inference = model(torch.from_numpy(IMAGES.astype(np.float64)), torch.from_numpy(MASKS))
    for other in (without, inference):
        for a, b in zip(with_dn["aux_outputs"] + [with_dn], other["aux_outputs"] + [other]):
            for k in ("pred_logits", "pred_boxes"):
                assert (a[k] - b[k]).abs().max() <= 1e-12, k
    args = seen["transformer"][0]
    with torch.no_grad():
        unmasked, _ = model.transformer(*args[:6], None)
        masked, _ = model.transformer(*args)
    assert (unmasked[-1][:, 6:] - masked[-1][:, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize("targets", [TARGETS, ONE_EMPTY, NO_GT], ids=["two_images", "one_empty", "no_gt"])
def test_dn_losses_on_every_layer(targets):
    """Focal class, L1 and GIoU reconstruction terms *_dn on each of the 3 layers with the release's weights;
    positive with GT, zero (but present, and differentiable) without any GT in the batch."""
    model, criterion = tiny()
    out = _run(model, targets)
    losses = criterion(out, targets, max(float(sum(len(t["labels"]) for t in targets)), 1.0))
    dn_terms = {f"{k}_dn{s}" for k in ("loss_ce", "loss_bbox", "loss_giou") for s in ("_0", "_1", "")}
    assert set(losses) == set(criterion.weight_dict) and dn_terms < set(losses) and len(losses) == 18
    assert all(criterion.weight_dict[f"{k}_dn{s}"] == w for k, w in (("loss_ce", 1.0), ("loss_bbox", 5.0),
                                                                    ("loss_giou", 2.0)) for s in ("_0", "_1", ""))
    assert all(torch.isfinite(v) for v in losses.values())
    has_gt = any(len(t["labels"]) for t in targets)
    assert all((losses[k].item() > 0) == has_gt for k in dn_terms), {k: losses[k].item() for k in dn_terms}
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_label_enc_gradients():
    """The denoising losses train label_enc's rows of the noised labels and the unknown class's row (the denoising
    queries see the matching ones), the matching losses only the unknown class's row, nothing else."""
    model, criterion = tiny()
    out = _run(model, TARGETS)
    losses = criterion(out, TARGETS, 3.0)
    dn = expected_dn(TARGETS, 0)
    for part, rows in ((lambda k: "_dn" in k, set(dn["labels"][dn["valid"]]) | {NUM_CLASSES}),
                       (lambda k: "_dn" not in k, {NUM_CLASSES})):
        grad, = torch.autograd.grad(sum(v for k, v in losses.items() if part(k)), model.label_enc.weight,
                                    retain_graph=True)
        assert set(np.flatnonzero(grad.abs().sum(1).numpy() > 0)) == rows


def test_inference_and_targets():
    """No denoising at inference (targets ignored); training with dn needs the targets; dab_detr has no
    contrastive denoising."""
    model, _ = tiny()
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS), TARGETS)
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs"} and out["pred_logits"].shape == (2, 12, 4)
    model.train()
    with pytest.raises(ValueError, match="needs the targets"):
        model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS))
    from torch_impl.models.dab_detr import DABDETR
    with pytest.raises(ValueError, match="model.dn.contrastive"):
        DABDETR(model.backbone, model.transformer, 4, 12, dn=dict(contrastive=True))
