"""The command line behind `train.sh` and `test.sh`: parses the shared flags, picks the framework tree.

    python -m common.launch train [--framework torch|paddle] [-c CONFIG] [-o key=value ...]
                                  [-r CKPT | --resume auto] [-t WEIGHTS]
    python -m common.launch test  [--framework torch|paddle] -c CONFIG --resume CKPT [-o key=value ...]

Each tree provides `<framework>_impl/main.py` with `train(args)` and `test(args)`. Anything the user has to
fix ends the run with one line on stderr naming it, and a non-zero exit code (2 for configs, flags and
checkpoints, 1 for data and other errors; set DETR_TRACEBACK=1 to see the traceback of the latter).
"""
import argparse
import os
import importlib
import importlib.util
import sys
from typing import List, Optional

from common.config import ConfigError
from common.errors import TrainingStopped, UserError

FRAMEWORKS = {"torch": "torch", "paddle": "paddle"}  # --framework -> the package that must be installed
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.sh / test.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train", "test"])
    p.add_argument("--framework", default="torch", choices=sorted(FRAMEWORKS),
                   help="model tree to run (default: torch)")
    p.add_argument("-c", "--config", default=None, help="config YAML (default: configs/demo.yml)")
    p.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. -o train.epochs=1 data.num_workers=0")
    p.add_argument("-r", "--resume", default=None,
                   help="train: checkpoint to resume from, or 'auto' (latest valid in output_dir); "
                        "test: checkpoint to evaluate")
    p.add_argument("-t", "--tune", default=None, help="train: initial weights (fine-tuning; weights only)")
    p.add_argument("--draw", type=int, default=0, help="test: also write N validation images with boxes drawn")
    return p


def load_tree(framework: str):
    """The `<framework>_impl.main` module, or a UserError saying what is missing."""
    package = FRAMEWORKS[framework]
    if importlib.util.find_spec(package) is None:
        raise UserError(f"--framework {framework}: the '{package}' package is not installed in this "
                        f"environment; run `sh env_run.sh`")
    name = f"{framework}_impl.main"
    if importlib.util.find_spec(f"{framework}_impl") is None or importlib.util.find_spec(name) is None:
        raise UserError(f"--framework {framework}: the {framework} model tree has no entry point yet "
                        f"({framework}_impl/main.py is missing)")
    return importlib.import_module(name)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "test" and not args.resume:
        print("test.sh: --resume CKPT is required (the checkpoint to evaluate)", file=sys.stderr)
        return EXIT_USAGE
    try:
        tree = load_tree(args.framework)
        getattr(tree, args.command)(args)
    except TrainingStopped as e:  # a checkpoint was saved; the message says where and how to go on
        print(f"{args.command}.sh: {e}", file=sys.stderr)
        return e.exit_code
    except (ConfigError, UserError) as e:
        print(f"{args.command}.sh: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:  # bad data or settings found deep inside: the message names the thing
        if os.environ.get("DETR_TRACEBACK"):
            raise
        print(f"{args.command}.sh: {type(e).__name__}: {e} (DETR_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{args.command}.sh: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
