"""`python -m torch_impl.export_onnx -c CONFIG --weights W --output F.onnx [-o key=value ...]`: the deploy program
(models/deploy.py) as ONNX, inputs image / im_shape / scale_factor, outputs bbox / bbox_num, batch and image size
dynamic; infer_cfg.yml's content goes into the file's metadata (key `infer_cfg`) for torch_impl.infer.

torch.onnx's dynamo exporter (torch.export, then onnxscript): the TorchScript exporter traces with concrete
sizes, which would freeze every feature-map size of the traced image into the graph. The deploy program's one
custom op, NMS (models/deploy.nms_keep), is written as ONNX NonMaxSuppression (nms_keep_onnx).
"""
import argparse
import logging
import sys
from typing import List, Optional

import torch

from common.config import ConfigError
from common.deploy.infer_cfg import DRAW_THRESHOLD, build_infer_cfg, dump_infer_cfg
from common.errors import UserError
from torch_impl.models.deploy import nms_keep
from torch_impl.predictor import INFER_CFG_KEY, INPUTS, load_deploy_model

OPSET = 18


def nms_keep_onnx(boxes, scores, iou_threshold: float, max_keep: int):
    """models/deploy.nms_keep in ONNX: NonMaxSuppression with each image a batch entry and one class
    (onnxruntime's rule is the same: IoU > threshold suppresses, zero-area boxes never do)."""
    from onnx import TensorProto, helper
    from onnxscript import opset18 as op

    # selected [N, 3] rows (image, class 0, box index), at most max_keep per image, best first
    selected = op.NonMaxSuppression(boxes, op.Unsqueeze(scores, [1]), op.Constant(value_int=max_keep),
                                    op.Constant(value_float=iou_threshold))
    none = op.ConstantOfShape(op.Shape(scores), value=helper.make_tensor("false", TensorProto.BOOL, [1], [False]))
    kept = op.ConstantOfShape(op.Shape(selected, end=1), value=helper.make_tensor("true", TensorProto.BOOL, [1],
                                                                                  [True]))
    return op.ScatterND(none, op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1), kept)


TRANSLATIONS = {nms_keep._opoverload: nms_keep_onnx}


def example_inputs(size: int = 256):
    """A batch of two differently sized images, padded (the traced sizes matter only as examples)."""
    image = torch.zeros(2, 3, size, size + 32)
    im_shape = torch.tensor([[size, size + 32], [size - 32, size]], dtype=torch.float32)
    return image, im_shape, torch.ones(2, 2)


def export_onnx(deploy_model, infer_cfg, output: str, opset: int = OPSET) -> None:
    """Writes `deploy_model` (DeployModel on the grid_sample path) to `output`, checked by onnx.checker."""
    import onnx

    dyn = torch.export.Dim.DYNAMIC
    batch_only = {0: dyn}
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # constant-folding notes, one per Split
    program = torch.onnx.export(
        deploy_model, example_inputs(), dynamo=True, verbose=False, opset_version=opset, input_names=list(INPUTS),
        output_names=["bbox", "bbox_num"], dynamic_shapes={"image": {0: dyn, 2: dyn, 3: dyn},
                                                           "im_shape": batch_only, "scale_factor": batch_only},
        custom_translation_table=TRANSLATIONS)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {INFER_CFG_KEY: dump_infer_cfg(infer_cfg)})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, output)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m torch_impl.export_onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="config YAML of the model")
    p.add_argument("--weights", required=True, help="checkpoint (.pth) of the config's model")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (>= 16; default {OPSET})")
    p.add_argument("--threshold", type=float, default=DRAW_THRESHOLD, help="infer_cfg draw_threshold")
    p.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides")
    args = p.parse_args(argv)
    try:
        if args.opset < 16:
            raise UserError(f"--opset must be >= 16 (grid_sample), got {args.opset}")
        model, cfg, names = load_deploy_model(args.config, args.weights, args.opt, export=True)
        export_onnx(model, build_infer_cfg(cfg, names, args.threshold), args.output, args.opset)
    except (UserError, ConfigError) as e:
        print(f"export_onnx: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
