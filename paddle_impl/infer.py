"""`python -m paddle_impl.infer (--model_dir DIR | -c CONFIG --weights W) --image PATH [PATH ...] [--draw]`:
detections of images, folders or globs, with an export (paddle.inference, oneDNN off: the dynamic graph's numbers)
or the dynamic graph; see common/deploy/cli.py."""
import sys

from common.deploy.cli import main
from paddle_impl.predictor import Predictor, eager_predictor


def load_exported(path):
    predictor = Predictor(path, onednn=False)
    return predictor, predictor.infer_cfg


if __name__ == "__main__":
    sys.exit(main(None, "python -m paddle_impl.infer", "--model_dir", "folder written by paddle_impl.export",
                  load_exported, eager_predictor))
