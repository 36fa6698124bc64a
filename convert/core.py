"""The conversions behind `python -m convert`: any weight file of a config's model -> any other format.

Every conversion goes through the torch layout (torch names, [out, in] Linear weights), which is also the
neutral safetensors layout: read the source into it, checked strictly against the config's torch model, then
write it in the destination's layout (Paddle: through convert/rules.py, checked against the Paddle model). So
torch -> Paddle -> torch returns the very same bytes (BatchNorm `num_batches_tracked` counters, which Paddle
has no place for, come back as 0; no config here uses trainable BatchNorm). Optimizer, scheduler and RNG
state are never converted: the outputs are weights for `-t` (fine-tuning) and test.sh, not for `--resume`.
"""
import logging
import os
from typing import Dict, Iterable, List, Tuple

import numpy as np

from common.config import load_config
from common.errors import UserError
from convert import files, models
from convert.official import fit_to_model, release_to_torch_names, torchvision_resnet
from convert.rules import check_state, paddle_to_torch, torch_to_paddle

logger = logging.getLogger("convert")

Arrays = Dict[str, np.ndarray]


def read_source(path: str, trust_pickle: bool = False) -> Tuple[Arrays, str, Dict]:
    """-> (arrays in the file's own layout, that layout: 'torch' or 'paddle', extra info about the file)."""
    kind = files.kind_of(path)
    if kind == "torch":
        arrays, extra = files.read_torch(path, trust_pickle)
        return arrays, "torch", extra
    if kind == "paddle":
        if os.path.isfile(path[:-len(files.PADDLE_SUFFIX)] + ".pdopt"):
            logger.info("%s: the .pdopt training state next to it is not converted", path)
        return files.read_paddle(path), "paddle", {}
    arrays, meta = files.read_safetensors(path)
    return arrays, "torch", {"meta": meta}


def to_torch_layout(arrays: Arrays, layout: str, cfg) -> Arrays:
    """Weights in `layout` -> torch layout, checked strictly against the config's torch model."""
    spec = models.torch_spec(cfg)
    if layout == "paddle":
        _, linear = models.paddle_spec(cfg)
        return paddle_to_torch(arrays, spec, linear)
    if any(k.startswith(("backbone.0.body.", "module.backbone.")) for k in arrays):
        raise UserError("these are a released checkpoint's weights (backbone.0.body.*): bring them into this "
                        "project's layout first with `python -m convert import -c CONFIG RELEASE.pth OUT.pth`")
    check_state(arrays, spec, "the file")
    return arrays


def write_dest(path: str, arrays: Arrays, cfg, meta: Dict) -> str:
    """Writes torch-layout `arrays` in the format of `path`'s suffix; -> the format written."""
    kind = files.kind_of(path)
    if kind == "paddle":
        shapes, linear = models.paddle_spec(cfg)
        files.write_paddle(path, torch_to_paddle(arrays, shapes, linear))
    elif kind == "torch":
        files.write_torch(path, arrays, meta)
    else:
        files.write_safetensors(path, arrays, meta)
    return kind


def _meta(cfg, source: str, **extra) -> Dict[str, str]:
    return dict(config=os.path.basename(cfg["_config_file"]), converted_from=os.path.basename(source),
                num_classes=str(cfg["model"]["num_classes"]), **extra)


def _check_kinds(src: str, dst: str, want_src: Iterable[str], want_dst: Iterable[str], command: str) -> None:
    want_src, want_dst = tuple(want_src), tuple(want_dst)
    if files.kind_of(src) not in want_src:
        raise UserError(f"{command}: the input must be a {' or '.join(want_src)} file, got {src}")
    if files.kind_of(dst) not in want_dst:
        raise UserError(f"{command}: the output must be a {' or '.join(want_dst)} file, got {dst}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UserError(f"{command}: input and output are the same file ({src})")


def convert_file(command: str, config: str, overrides: List[str], src: str, dst: str,
                 trust_pickle: bool = False) -> List[str]:
    """torch2paddle, paddle2torch, to-safetensors, from-safetensors (see convert/__main__.py). -> notes."""
    kinds = {"torch2paddle": (["torch"], ["paddle"]), "paddle2torch": (["paddle"], ["torch"]),
             "to-safetensors": (["torch", "paddle"], ["safetensors"]),
             "from-safetensors": (["safetensors"], ["torch", "paddle"])}[command]
    _check_kinds(src, dst, *kinds, command)
    models.check_config_file(config)
    arrays, layout, extra = read_source(src, trust_pickle)
    cfg = models.resolve_config(config, overrides, arrays, layout)
    arrays = to_torch_layout(arrays, layout, cfg)
    write_dest(dst, arrays, cfg, _meta(cfg, src, source_framework=extra.get("meta", {}).get(
        "source_framework", layout)))
    notes = [f"{len(arrays)} tensors, {sum(int(np.prod(v.shape)) for v in arrays.values()):,} values"]
    if any(k in extra for k in ("optimizer", "lr_scheduler")):
        notes.append("the input's optimizer / scheduler state is not converted (weights only)")
    elif layout == "paddle":
        notes.append("weights only: a .pdopt training state is never converted")
    if files.kind_of(dst) == "paddle":
        notes.append("no .pdopt written: use the output with -t (fine-tuning) or test.sh, not --resume")
    return notes


def import_release(config: str, overrides: List[str], src: str, dst: str, skip: Iterable[str] = (),
                   trust_pickle: bool = False, seed: int = 0) -> List[str]:
    """A released DAC-DETR / DINO / Deformable-DETR checkpoint -> this project's model of `config`, written as
    `dst` (.pth, .pdparams or .safetensors). -> notes. See convert/official.py."""
    if files.kind_of(src) != "torch":
        raise UserError(f"import: released checkpoints are PyTorch files (.pth), got {src}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UserError(f"import: input and output are the same file ({src})")
    files.kind_of(dst)
    models.check_config_file(config)
    raw, _, extra = read_source(src, trust_pickle)
    cfg0 = load_config(config, list(overrides) + [models.NO_PRETRAINED])
    arrays, notes = release_to_torch_names(raw, cfg0["model"]["dec_layers"])
    cfg = models.resolve_config(config, overrides, arrays, "torch")
    spec = models.torch_spec(cfg)
    init = {}
    if any(k not in arrays or tuple(arrays[k].shape) != tuple(v) for k, v in spec.items()):
        # model keys the file lacks or has in another shape keep a fresh init (if skipped)
        init = {k: v.detach().numpy() for k, v in models.build_torch(cfg, seed).state_dict().items()}
    arrays, fit_notes = fit_to_model(arrays, spec, init, skip)
    notes += fit_notes
    if not any("transformer.decoder.bbox_embed." in k for k in raw):
        notes.append("warning: the file has no transformer.decoder.bbox_embed, i.e. was trained without box "
                     "refinement, which this project's model always uses: its outputs will differ")
    if "args" in extra:
        notes.append("the release's training arguments (args) and optimizer state are not converted")
    write_dest(dst, arrays, cfg, _meta(cfg, src, source_framework="release"))
    return notes


def import_backbone(config: str, overrides: List[str], src: str, dst: str, trust_pickle: bool = False) -> List[str]:
    """A torchvision ResNet ImageNet state dict -> a backbone file for `model.backbone.pretrained` of either tree:
    .pdparams (Paddle names; no torch needed to read it), .safetensors (neutral) or .pth. -> notes."""
    if files.kind_of(src) != "torch":
        raise UserError(f"backbone: torchvision checkpoints are PyTorch files (.pth), got {src}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UserError(f"backbone: input and output are the same file ({src})")
    kind = files.kind_of(dst)
    models.check_config_file(config)
    raw, _, _ = read_source(src, trust_pickle)
    cfg = models.resolve_config(config, list(overrides) + ["model.num_classes=1"])
    if cfg["model"]["backbone"]["norm"] == "gn":
        raise UserError(f"backbone: {config} uses GroupNorm (model.backbone.norm=gn), which ImageNet BatchNorm "
                        "weights do not fit; add -o model.backbone.norm=frozen_bn (or bn)")
    prefix = "backbone.body."
    body = {k[len(prefix):]: v for k, v in models.torch_spec(cfg).items() if k.startswith(prefix)}
    arrays, notes = torchvision_resnet(raw, body)
    if kind == "paddle":
        from convert.rules import torch_name_to_paddle

        files.write_paddle(dst, {torch_name_to_paddle(k): v for k, v in arrays.items()
                                 if not k.endswith("num_batches_tracked")})
    elif kind == "torch":
        import torch

        from common.checkpoint import atomic_save
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        atomic_save(lambda tmp: torch.save(state, tmp), dst, keep_previous=False)
    else:
        files.write_safetensors(dst, arrays, {"content": "backbone.body", "backbone": cfg["model"]["backbone"]["name"],
                                              "converted_from": os.path.basename(src)})
    notes.append(f"use it with -o model.backbone.pretrained={dst}")
    return notes


def load_for_check(path: str, cfg_path: str, overrides: List[str], trust_pickle: bool = False):
    """(resolved config, torch-layout weights) of any weight file for the config's model (used by convert.check)."""
    models.check_config_file(cfg_path)
    arrays, layout, _ = read_source(path, trust_pickle)
    cfg = models.resolve_config(cfg_path, overrides, arrays, layout)
    return cfg, to_torch_layout(arrays, layout, cfg)
