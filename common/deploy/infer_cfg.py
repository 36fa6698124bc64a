"""infer_cfg.yml: what PaddleDetection's deploy/python/infer.py reads beside an exported model, built from the
project's config (model switches, eval transforms, class names), and read back by the project's own predictors.

Preprocess uses PaddleDetection's op names: `Resize` (target_size [short side, long-side cap], keep_ratio, interp
as an OpenCV code), `NormalizeImage` (mean, std, is_scale), `Permute`, and `PadStride` when the config pads
batches to a multiple (data.size_divisibility).
"""
import json
import os
from typing import Dict, List, Sequence, Tuple

import yaml

from common import model_args
from common.config import load_config
from common.data.coco import CategoryMap
from common.errors import UserError

INFER_CFG = "infer_cfg.yml"
INTERP_LINEAR = 1  # cv2.INTER_LINEAR: the eval transform's bilinear resize
DRAW_THRESHOLD = 0.5
# Export runs the grid_sample path of deformable attention; the weights come from the checkpoint.
REQUIRED = ("mode", "arch", "draw_threshold", "label_list", "Preprocess")


def class_names(cfg) -> List[str]:
    """The category names of the config's validation (else training) annotations, in label order."""
    for split in ("val", "train"):
        ann_file = cfg.data[split].ann_file
        if ann_file and os.path.isfile(ann_file):
            with open(ann_file, encoding="utf-8") as f:
                return CategoryMap(json.load(f).get("categories")).names
    raise UserError(f"{cfg._config_file}: the class names come from data.val.ann_file, which is not there "
                    f"({cfg.data.val.ann_file}); point it at the annotation json with -o data.val.ann_file=FILE")


def load_model_config(path: str, overrides: Sequence[str] = (), export: bool = False) -> Tuple[object, List[str]]:
    """(config, class names) of a model to run or export; model.num_classes from the names when unset.
    export=True puts deformable attention, in the archs that have it, on the grid_sample path (what export graphs
    can hold)."""
    if not path or not os.path.isfile(path):
        raise UserError(f"config not found: {path}")
    cfg = load_config(path, list(overrides) + ["model.backbone.pretrained=null"])
    if export and "deform_attn_backend" not in model_args.NOT_APPLICABLE[cfg.model.arch]:
        cfg.model["deform_attn_backend"] = "reference"
    names = class_names(cfg)
    if cfg.model.num_classes is None:
        cfg.model["num_classes"] = len(names)
    elif cfg.model.num_classes != len(names):
        raise UserError(f"model.num_classes is {cfg.model.num_classes} but {cfg.data.val.ann_file} has "
                        f"{len(names)} categories")
    return cfg, names


def build_infer_cfg(cfg, names: Sequence[str], draw_threshold: float = DRAW_THRESHOLD) -> Dict:
    """infer_cfg.yml's content for `cfg` (the eval transforms of data.val) and its class names."""
    val = cfg.data.val
    if val.max_size is None:
        raise UserError("export needs data.val.max_size: PaddleDetection's Resize caps the long side")
    preprocess = [
        {"type": "Resize", "target_size": [int(val.size), int(val.max_size)], "keep_ratio": True,
         "interp": INTERP_LINEAR},
        {"type": "NormalizeImage", "mean": [float(m) for m in cfg.data.mean], "std": [float(s) for s in cfg.data.std],
         "is_scale": True, "norm_type": "mean_std"},
        {"type": "Permute"},
    ]
    if cfg.data.size_divisibility > 0:
        preprocess.append({"type": "PadStride", "stride": int(cfg.data.size_divisibility)})
    return {"mode": "paddle", "arch": "DETR", "min_subgraph_size": 3, "use_dynamic_shape": True,
            "draw_threshold": float(draw_threshold), "metric": "COCO", "label_list": list(names),
            "Preprocess": preprocess}


def dump_infer_cfg(infer_cfg: Dict) -> str:
    return yaml.safe_dump(infer_cfg, sort_keys=False, default_flow_style=None)


def write_infer_cfg(infer_cfg: Dict, folder: str) -> str:
    """Writes folder/infer_cfg.yml; returns its path."""
    path = os.path.join(folder, INFER_CFG)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_infer_cfg(infer_cfg))
    return path


def parse_infer_cfg(text: str, where: str) -> Dict:
    """infer_cfg from YAML text; UserError naming `where` when a key the predictors need is missing."""
    try:
        infer_cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML: {e}") from None
    missing = [k for k in REQUIRED if not isinstance(infer_cfg, dict) or k not in infer_cfg]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}; is it an infer_cfg.yml written by an export?")
    return infer_cfg


def read_infer_cfg(folder: str) -> Dict:
    """folder/infer_cfg.yml, parsed and checked."""
    path = os.path.join(folder, INFER_CFG)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: --model_dir must be a folder written by paddle_impl.export")
    with open(path, encoding="utf-8") as f:
        return parse_infer_cfg(f.read(), path)
