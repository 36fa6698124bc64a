"""ResNet backbone: FrozenBatchNorm, torchvision layout, strides, freezing, pretrained loading."""
import pytest
import torch
from torch import nn

from torch_impl.models.backbone import Backbone, FrozenBatchNorm2d, ResNet, load_pretrained


def test_frozen_bn_equals_eval_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, eps=1e-5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
    bn.eval()
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted and dropped
    x = torch.randn(2, 6, 5, 7)
    assert torch.allclose(frozen(x), bn(x), atol=1e-6, rtol=1e-6)
    assert set(dict(frozen.named_buffers())) == {"weight", "bias", "running_mean", "running_var"}
    assert list(frozen.parameters()) == []


def test_resnet18_torchvision_layout():
    sd = ResNet("resnet18").state_dict()
    # torchvision's resnet18 has 122 entries: these 100 plus 20 num_batches_tracked and fc.weight / fc.bias
    assert len(sd) == 100
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer2.0.downsample.1.running_var"].shape == (128,)
    assert sd["layer4.1.bn2.bias"].shape == (512,)
    assert "layer1.0.downsample.0.weight" not in sd


def test_resnet50_bottleneck_layout():
    sd = ResNet("resnet50").state_dict()
    assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)
    assert "layer3.6.conv1.weight" not in sd
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "bn" not in k
               and "downsample.1" not in k) == 23454912  # conv weights of torchvision resnet50


@pytest.mark.parametrize("name, channels", [("resnet18", [128, 256, 512]), ("resnet50", [512, 1024, 2048])])
def test_backbone_levels_strides_and_masks(name, channels):
    bb = Backbone(name, frozen_stages=1, num_levels=3)
    assert bb.num_channels == channels and bb.strides == [8, 16, 32]
    images = torch.randn(2, 3, 64, 96)
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[1, :, 64:] = True  # right third of image 1 is padding
    out = bb(images, masks)
    for (x, m), c, s in zip(out, channels, [8, 16, 32]):
        assert x.shape == (2, c, 64 // s, 96 // s) and m.shape == (2, 64 // s, 96 // s)
        assert not m[0].any()
        assert m[1, :, (64 // s):].all() and not m[1, :, :(64 // s)].any()


def test_dilation_keeps_c5_at_stride_16():
    bb = Backbone("resnet50", dilation=True, num_levels=1)
    assert bb.strides == [16] and bb.num_channels == [2048]
    x, _ = bb(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))[0]
    assert x.shape == (1, 2048, 4, 4)
    assert bb.body.layer4[0].conv2.dilation == (1, 1) and bb.body.layer4[1].conv2.dilation == (2, 2)
    with pytest.raises(ValueError, match="resnet50 or resnet101"):
        Backbone("resnet18", dilation=True)


@pytest.mark.parametrize("stages, frozen", [(-1, []), (0, ["conv1"]), (1, ["conv1", "layer1"]),
                                             (4, ["conv1", "layer1", "layer2", "layer3", "layer4"])])
def test_frozen_stages(stages, frozen):
    bb = Backbone("resnet18", frozen_stages=stages)
    for name, p in bb.body.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen), name


def test_random_init_resnet50_is_finite():
    torch.manual_seed(0)
    out = Backbone("resnet50")(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert all(torch.isfinite(x).all() for x, _ in out)


def _torchvision_style_state_dict(name):
    torch.manual_seed(1)
    sd = {k: torch.randn_like(v) for k, v in ResNet(name).state_dict().items()}
    for k in [k for k in sd if k.endswith("running_var")]:
        sd[k] = sd[k].abs() + 0.1
        sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return sd


def test_load_pretrained_reports_ignored_keys(tmp_path):
    sd = _torchvision_style_state_dict("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    body = ResNet("resnet18")
    ignored = load_pretrained(body, str(path))
    assert "fc.weight" in ignored and "fc.bias" in ignored
    assert len(ignored) == 22 and sum(k.endswith("num_batches_tracked") for k in ignored) == 20
    for k, v in body.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_load_pretrained_from_a_detector_checkpoint(tmp_path):
    """The ResNet inside a detector checkpoint (this project's backbone.body.*, the release's backbone.0.body.*)
    starts a backbone that builds fewer stages; the detector's other keys are left out; another norm is refused."""
    torch.manual_seed(2)
    body = {k: torch.randn_like(v) for k, v in ResNet("resnet18", norm="gn").state_dict().items()}
    others = {"transformer.level_embed": torch.randn(3, 8), "class_embed.0.weight": torch.randn(6, 8)}
    for prefix in ("backbone.body.", "backbone.0.body."):
        path = tmp_path / f"{prefix[:-1]}.pth"
        torch.save({"model": {**{prefix + k: v for k, v in body.items()}, **others}, "epoch": 3}, path)
        target = ResNet("resnet18", norm="gn", last_stage=3)
        assert load_pretrained(target, str(path)) == sorted(k for k in body if k.startswith("layer4."))
        for k, v in target.state_dict().items():
            assert torch.equal(v, body[k]), k
    with pytest.raises(ValueError, match="missing.*running_mean.*depth and norm"):
        load_pretrained(ResNet("resnet18"), str(path))  # a GroupNorm backbone for a FrozenBatchNorm one


def test_load_pretrained_errors_name_the_problem(tmp_path):
    sd = _torchvision_style_state_dict("resnet18")
    del sd["layer3.1.conv2.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing.*layer3.1.conv2.weight"):
        load_pretrained(ResNet("resnet18"), str(tmp_path / "missing.pth"))
    torch.save(_torchvision_style_state_dict("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="does not fit"):  # a resnet18 file for a resnet34
        load_pretrained(ResNet("resnet34"), str(tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match="cannot read"):
        load_pretrained(ResNet("resnet18"), str(tmp_path / "nope.pth"))
