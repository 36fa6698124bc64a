"""Running the deploy program (models/deploy.py): as a dynamic graph from a config + checkpoint, or exported
(paddle.inference on a paddle_impl.export folder). Both take make_batch()'s numpy inputs and return numpy
(bbox [N, 6], bbox_num [B]).

paddle.inference on CPU, Paddle 3.2 PIR programs: memory optimization is left off (`enable_memory_optim()` fails on
PIR programs in some 3.x releases), oneDNN is optional (on by default; it changes results at the 1e-3 level, so
parity checks turn it off).
"""
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import paddle

from common.deploy.infer_cfg import build_infer_cfg, load_model_config, read_infer_cfg
from common.errors import UserError
from common.model_args import postprocess_args
from paddle_impl import CPU_THREADS
from paddle_impl.checkpoint import load_weights
from paddle_impl.models.build import build_model
from paddle_impl.models.deploy import DeployModel

INPUTS = ("image", "im_shape", "scale_factor")
MODEL_PREFIX = "model"  # paddle.jit.save writes model.json (PIR) or model.pdmodel, and model.pdiparams


def load_deploy_model(config: str, weights: str, overrides: Sequence[str] = (), export: bool = False):
    """(DeployModel in eval mode with the checkpoint's weights, config, class names); export=True: deformable
    attention on the grid_sample path."""
    cfg, names = load_model_config(config, overrides, export=export)
    model = build_model(cfg)[0]
    load_weights(model, weights)
    deploy_model = DeployModel(model, **postprocess_args(cfg.model))
    deploy_model.eval()
    return deploy_model, cfg, names


class EagerPredictor:
    """The deploy program as a dynamic graph (the config's deformable-attention backend, the kernel by default)."""

    def __init__(self, deploy_model: DeployModel):
        self.model = deploy_model

    @paddle.no_grad()
    def __call__(self, inputs: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        bbox, bbox_num = self.model(*(paddle.to_tensor(inputs[k]) for k in INPUTS))
        return bbox.numpy(), bbox_num.numpy()


def program_files(model_dir: str) -> Tuple[str, str]:
    """(program file, parameters file) of an export folder."""
    params = os.path.join(model_dir, MODEL_PREFIX + ".pdiparams")
    for name in (".json", ".pdmodel"):
        program = os.path.join(model_dir, MODEL_PREFIX + name)
        if os.path.isfile(program) and os.path.isfile(params):
            return program, params
    raise UserError(f"{model_dir}: no {MODEL_PREFIX}.json / {MODEL_PREFIX}.pdmodel with {MODEL_PREFIX}.pdiparams; "
                    "write it with python -m paddle_impl.export")


class Predictor:
    """An exported program run by paddle.inference on CPU; `infer_cfg` from the folder's infer_cfg.yml."""

    def __init__(self, model_dir: str, onednn: bool = True, threads: int = CPU_THREADS):
        self.infer_cfg = read_infer_cfg(model_dir)
        config = paddle.inference.Config(*program_files(model_dir))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads)
        if onednn:
            config.enable_onednn()
        else:
            config.disable_onednn()
        config.disable_glog_info()
        self.predictor = paddle.inference.create_predictor(config)
        names = self.predictor.get_input_names()
        if sorted(names) != sorted(INPUTS):
            raise UserError(f"{model_dir}: the program's inputs are {names}, expected {list(INPUTS)}")

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        for name in INPUTS:
            self.predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(inputs[name]))
        self.predictor.run()
        bbox, bbox_num = (self.predictor.get_output_handle(n).copy_to_cpu() for n in self.predictor.get_output_names())
        return bbox, bbox_num


def eager_predictor(config: str, weights: str, overrides: Sequence[str] = ()):
    """(EagerPredictor, infer_cfg) of a config + checkpoint, on CPU with training's CPU settings."""
    from paddle_impl.main import select_device

    select_device("cpu")
    model, cfg, names = load_deploy_model(config, weights, overrides)
    return EagerPredictor(model), build_infer_cfg(cfg, names)
