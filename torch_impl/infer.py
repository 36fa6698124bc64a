"""`python -m torch_impl.infer (--onnx F.onnx | -c CONFIG --weights W) --image PATH [PATH ...] [--draw]`: detections
of images, folders or globs, with an ONNX export (onnxruntime) or the dynamic graph; see common/deploy/cli.py."""
import sys

from common.deploy.cli import main
from torch_impl.predictor import Predictor, eager_predictor


def load_exported(path):
    predictor = Predictor(path)
    return predictor, predictor.infer_cfg


if __name__ == "__main__":
    sys.exit(main(None, "python -m torch_impl.infer", "--onnx", "ONNX file written by torch_impl.export_onnx",
                  load_exported, eager_predictor))
