"""Running the deploy program (models/deploy.py): as a dynamic graph from a config + checkpoint, or exported
(ONNX, through onnxruntime). Both take make_batch()'s numpy inputs and return numpy (bbox [N, 6], bbox_num [B]).

An ONNX file written by torch_impl.export_onnx carries its infer_cfg.yml in its metadata (key `infer_cfg`).
"""
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from common.deploy.infer_cfg import build_infer_cfg, load_model_config, parse_infer_cfg
from common.errors import UserError
from common.model_args import postprocess_args
from torch_impl.checkpoint import load_weights
from torch_impl.models.build import build_model
from torch_impl.models.deploy import DeployModel

INPUTS = ("image", "im_shape", "scale_factor")
INFER_CFG_KEY = "infer_cfg"


def load_deploy_model(config: str, weights: str, overrides: Sequence[str] = (), export: bool = False):
    """(DeployModel in eval mode with the checkpoint's weights, config, class names); export=True: deformable
    attention on the grid_sample path."""
    cfg, names = load_model_config(config, overrides, export=export)
    model = build_model(cfg)[0]
    load_weights(model, weights)
    return DeployModel(model, **postprocess_args(cfg.model)).eval(), cfg, names


class EagerPredictor:
    """The deploy program as a dynamic graph (the config's deformable-attention backend, the kernel by default)."""

    def __init__(self, deploy_model: DeployModel):
        self.model = deploy_model

    @torch.no_grad()
    def __call__(self, inputs: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        bbox, bbox_num = self.model(*(torch.from_numpy(inputs[k]) for k in INPUTS))
        return bbox.numpy(), bbox_num.numpy()


class Predictor:
    """An exported ONNX program run by onnxruntime on CPU; `infer_cfg` from the file's metadata."""

    def __init__(self, onnx_path: str, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for missing / invalid files
            raise UserError(f"cannot load {onnx_path}: {str(e).splitlines()[0][:300]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if INFER_CFG_KEY not in meta:
            raise UserError(f"{onnx_path} has no '{INFER_CFG_KEY}' metadata: export it with torch_impl.export_onnx")
        self.infer_cfg = parse_infer_cfg(meta[INFER_CFG_KEY], onnx_path)

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        bbox, bbox_num = self.session.run(["bbox", "bbox_num"], {k: inputs[k] for k in INPUTS})
        return bbox, bbox_num


def eager_predictor(config: str, weights: str, overrides: Sequence[str] = ()):
    """(EagerPredictor, infer_cfg) of a config + checkpoint."""
    model, cfg, names = load_deploy_model(config, weights, overrides)
    return EagerPredictor(model), build_infer_cfg(cfg, names)
