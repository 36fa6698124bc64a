"""ResNet backbone with frozen BatchNorm, torchvision parameter names, and torchvision-weight loading.

`norm` chooses the normalization layers: "frozen_bn" (the DETR default, for ImageNet-pretrained weights),
"bn" (trainable BatchNorm2d) or "gn" (GroupNorm with 32 groups: batch-size independent, the choice when
training from random init, as the CPU demo does; the last norm of each residual branch then starts at 0).

Parameter names inside `body` are torchvision's (conv1, bn1, layer1.0.conv1, ..., layer4.2.downsample.1), so an
ImageNet state dict from torchvision loads by name (`load_pretrained`), as does the ResNet inside a detector
checkpoint (this project's `backbone.body.*`, the official release's `backbone.0.body.*`: one detector's backbone
can start another). There is no torchvision dependency.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from common.resnet_weights import split_pretrained

logger = logging.getLogger("torch_impl")

_DEPTHS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
           "resnet50": ("bottleneck", [3, 4, 6, 3]), "resnet101": ("bottleneck", [3, 4, 23, 3])}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers (never trained).

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias. x [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A trained BatchNorm's counter has no meaning here; accept such state dicts as they are.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


NORMS = ("frozen_bn", "bn", "gn")


def make_norm(kind, channels):
    """The normalization layer of the backbone for `channels` feature maps ([B, C, H, W] -> same)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"model.backbone.norm: unknown norm {kind!r}; choose one of {list(NORMS)}")


def _conv3x3(in_ch, out_ch, stride=1, dilation=1):
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_ch, out_ch, stride=1):
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34). x [B, inplanes, H, W] -> [B, planes, H/s, W/s]."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, norm="frozen_bn"):
        super().__init__()
        if dilation > 1:
            raise ValueError("backbone.dilation needs resnet50 or resnet101 (BasicBlock has no dilated form)")
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, torchvision v1.5) - 1x1 with a residual (ResNet-50/101).
    x [B, inplanes, H, W] -> [B, 4 planes, H/s, W/s]."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, norm="frozen_bn"):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = make_norm(norm, planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk without the classifier. images [B, 3, H, W] -> [C2, C3, C4, C5] (strides 4, 8, 16, 32);
    last_stage 3 builds no layer4 and stops at C4."""

    def __init__(self, name, dilation=False, norm="frozen_bn", last_stage=4):
        super().__init__()
        if name not in _DEPTHS:
            raise ValueError(f"model.backbone.name: unknown backbone {name!r}; choose one of {sorted(_DEPTHS)}")
        kind, depths = _DEPTHS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.norm = norm
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, 64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes, self._dilation = 64, 1
        self.layer1 = self._make_layer(block, 64, depths[0])
        self.layer2 = self._make_layer(block, 128, depths[1], stride=2)
        self.layer3 = self._make_layer(block, 256, depths[2], stride=2)
        if last_stage == 4:
            self.layer4 = self._make_layer(block, 512, depths[3], stride=2, dilate=dilation)
        elif last_stage != 3:
            raise ValueError(f"model.backbone.last_stage must be 3 or 4, got {last_stage}")
        self.last_stage = last_stage
        self.channels = [64 * block.expansion * 2 ** i for i in range(last_stage)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if norm != "frozen_bn":  # residual branches start as identities: stable training from scratch
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_((m.bn2 if isinstance(m, BasicBlock) else m.bn3).weight)

    @property
    def stages(self):
        """[layer1, ..., layer{last_stage}]"""
        return [getattr(self, f"layer{i}") for i in range(1, self.last_stage + 1)]

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        previous_dilation = self._dilation
        if dilate:  # DC5: keep the resolution, dilate the following 3x3 convs instead
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self._inplanes, planes * block.expansion, stride),
                                       make_norm(self.norm, planes * block.expansion))
        layers = [block(self._inplanes, planes, stride, downsample, previous_dilation, self.norm)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, dilation=self._dilation, norm=self.norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in self.stages:
            x = layer(x)
            feats.append(x)
        return feats


class Backbone(nn.Module):
    """ResNet body returning its last num_levels of C3-C5 (C3-C4 with last_stage 3) with downsampled padding masks.

    forward(images [B, 3, H, W], masks bool [B, H, W] True = padding) -> list of (feature [B, C_l, H_l, W_l],
    mask bool [B, H_l, W_l]); `num_channels` and `strides` describe the levels.
    """

    def __init__(self, name="resnet50", frozen_stages=1, dilation=False, num_levels=3, norm="frozen_bn",
                 last_stage=4):
        super().__init__()
        self.body = ResNet(name, dilation, norm, last_stage)
        if not 1 <= num_levels <= last_stage - 1:
            raise ValueError(f"the backbone gives 1 to {last_stage - 1} feature levels, not {num_levels}")
        first = last_stage - num_levels  # index into [C2, C3, C4(, C5)]
        self._first = first
        self.num_channels = self.body.channels[first:]
        self.strides = [4, 8, 16, 16 if dilation else 32][first:last_stage]
        self.freeze(frozen_stages)

    def freeze(self, frozen_stages):
        """Stops gradients for the stem (stage 0) and layer1..layer{frozen_stages}; -1 freezes nothing."""
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"model.backbone.frozen_stages must be in -1..4, got {frozen_stages}")
        for stage in ([self.body.conv1], *self.body.stages)[:frozen_stages + 1]:
            for module in stage:
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, images, masks):
        feats = self.body(images)[self._first:]
        out = []
        for x in feats:
            m = F.interpolate(masks[None].float(), size=x.shape[-2:])[0].bool()
            out.append((x, m))
        return out


def read_weights(path):
    """{name: tensor} from a .pth / .pt (its `model` or `state_dict` entry if there is one) or .safetensors."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"model.backbone.pretrained: cannot read {path!r}: {exc}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return state


def load_pretrained(body, path):
    """Loads a torchvision ResNet state dict, or the ResNet of a DETR-family detector checkpoint, into `body` (a
    ResNet); returns the ignored keys. Which keys are used, ignored or wrong: common/resnet_weights.py."""
    used, ignored, source = split_pretrained(read_weights(path), body.state_dict(), path, body.last_stage)
    body.load_state_dict(used, strict=True)
    logger.info("backbone: loaded %s (%s)", path, source)
    return ignored
