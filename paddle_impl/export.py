"""`python -m paddle_impl.export -c CONFIG --weights W --output_dir DIR [-o key=value ...]`: the deploy program
(models/deploy.py) in PaddleDetection's deploy format, what its deploy/python/infer.py reads:

    DIR/model.json (Paddle 3's PIR program; model.pdmodel under the old IR), DIR/model.pdiparams,
    DIR/infer_cfg.yml (common/deploy/infer_cfg.py)

Inputs image [B, 3, H, W], im_shape [B, 2], scale_factor [B, 2] (float32, B, H, W free); outputs bbox [N, 6]
and bbox_num int32 [B], in that order. Converted by paddle.jit.to_static (AST, full graph), deformable attention
on its grid_sample path.
"""
import argparse
import os
import sys
from typing import List, Optional

import paddle

from common.config import ConfigError
from common.deploy.infer_cfg import DRAW_THRESHOLD, build_infer_cfg, write_infer_cfg
from common.errors import UserError
from paddle_impl.predictor import INPUTS, MODEL_PREFIX, load_deploy_model

INPUT_SPEC = [paddle.static.InputSpec([None, 3, None, None], "float32", INPUTS[0]),
              paddle.static.InputSpec([None, 2], "float32", INPUTS[1]),
              paddle.static.InputSpec([None, 2], "float32", INPUTS[2])]


def export(deploy_model, infer_cfg, output_dir: str) -> None:
    """Writes the program, its parameters and infer_cfg.yml into output_dir."""
    os.makedirs(output_dir, exist_ok=True)
    static = paddle.jit.to_static(deploy_model, full_graph=True)
    paddle.jit.save(static, os.path.join(output_dir, MODEL_PREFIX), input_spec=INPUT_SPEC)
    write_infer_cfg(infer_cfg, output_dir)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paddle_impl.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="config YAML of the model")
    p.add_argument("--weights", required=True, help="checkpoint (.pdparams) of the config's model")
    p.add_argument("--output_dir", required=True, help="folder to write the export into")
    p.add_argument("--threshold", type=float, default=DRAW_THRESHOLD, help="infer_cfg draw_threshold")
    p.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides")
    args = p.parse_args(argv)
    try:
        model, cfg, names = load_deploy_model(args.config, args.weights, args.opt, export=True)
        export(model, build_infer_cfg(cfg, names, args.threshold), args.output_dir)
    except (UserError, ConfigError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
