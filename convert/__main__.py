"""Weight conversion between the torch and Paddle trees, the neutral safetensors format and released checkpoints.

    python -m convert torch2paddle     -c CONFIG IN.pth OUT.pdparams
    python -m convert paddle2torch     -c CONFIG IN.pdparams OUT.pth
    python -m convert to-safetensors   -c CONFIG IN.pth|IN.pdparams OUT.safetensors
    python -m convert from-safetensors -c CONFIG IN.safetensors OUT.pth|OUT.pdparams
    python -m convert import           -c CONFIG RELEASE.pth OUT.pth|.pdparams|.safetensors [--skip-keys PATTERN ...]
    python -m convert backbone         -c CONFIG resnet50-19c8e357.pth OUT.pdparams|.safetensors|.pth

Each takes `-o key=value ...` config overrides (put them last); model.num_classes, when the config leaves it
unset, is read from the weights. Conversion is strict: a missing, unexpected or shape-mismatched key stops it
with their names (-v lists all of them). Only weights are converted (buffers and BatchNorm statistics
included); optimizer, scheduler and RNG state are not: outputs are for `-t` and test.sh, not `--resume`.
`import` reads the official DAC-DETR / DINO / Deformable-DETR releases (convert/official.py); keys of the
release that this model lacks, or the reverse, are refused unless `--skip-keys` matches them.
Exit status: 0 done, 2 a problem with the arguments or files (one line on stderr), 1 anything else.
"""
import argparse
import os
import sys
import warnings
from typing import List, Optional

import paddle_impl  # first: records the user's thread count before paddle is imported

from common.config import ConfigError
from common.errors import UserError
from convert.rules import ConversionError

EXIT_USAGE = 2
COMMANDS = {
    "torch2paddle": "torch .pth (checkpoint or state dict) -> Paddle .pdparams",
    "paddle2torch": "Paddle .pdparams -> torch .pth ({'model': state dict})",
    "to-safetensors": "torch .pth or Paddle .pdparams -> neutral .safetensors (torch names and layout)",
    "from-safetensors": "neutral .safetensors -> torch .pth or Paddle .pdparams",
    "import": "released DAC-DETR / DINO / Deformable-DETR .pth -> this project's model (.pth/.pdparams/.safetensors)",
    "backbone": "torchvision ResNet ImageNet .pth -> model.backbone.pretrained file (.pdparams/.safetensors/.pth)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("-c", "--config", required=True, help="config YAML of the model (configs/*.yml)")
        s.add_argument("input", help="weights to read")
        s.add_argument("output", help="file to write (its suffix picks the format)")
        s.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="config overrides, e.g. -o model.num_classes=91 (put them last)")
        s.add_argument("--trust-pickle", action="store_true",
                       help="read .pth files with full unpickling (only for files you trust)")
        s.add_argument("-v", "--verbose", action="store_true", help="on a mismatch, list every key")
        if name == "import":
            s.add_argument("--skip-keys", nargs="+", action="extend", default=[], metavar="PATTERN",
                           help="shell-style patterns of keys to skip (file keys dropped, model keys keep "
                                "their fresh init), e.g. 'class_embed.*' 'label_enc.*'")
            s.add_argument("--seed", type=int, default=0, help="seed of the init of skipped model keys")
    return p


def set_threads() -> None:
    """torch and Paddle both use the thread count the user asked for (OMP_NUM_THREADS, else every core)."""
    import torch

    torch.set_num_threads(paddle_impl.CPU_THREADS)
    paddle_impl.use_cpu_threads()


def _mismatch_report(e: ConversionError, verbose: bool, source: str) -> List[str]:
    lines = []
    if verbose:
        for title, names in (("missing", e.missing), ("unexpected", e.unexpected), ("shape mismatch", e.mismatched)):
            lines += [f"  {title}: {n}" for n in names]
    if e.mismatched or e.missing:
        try:
            from convert.core import read_source
            from convert.models import guess_overrides

            arrays, layout, _ = read_source(source)
            guess = guess_overrides(arrays, layout)
            if guess:
                lines.append("  the weights look like: -o " + " ".join(guess))
        except (UserError, OSError):
            pass
    return lines


def run(args) -> List[str]:
    from convert import core

    set_threads()
    if args.command == "import":
        return core.import_release(args.config, args.opt, args.input, args.output, args.skip_keys,
                                   args.trust_pickle, args.seed)
    if args.command == "backbone":
        return core.import_backbone(args.config, args.opt, args.input, args.output, args.trust_pickle)
    return core.convert_file(args.command, args.config, args.opt, args.input, args.output, args.trust_pickle)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's extension loader, not actionable
    prog = f"convert {args.command}"
    try:
        notes = run(args)
    except ConversionError as e:
        print(f"{prog}: {args.input} does not fit the model of {args.config}: {e}", file=sys.stderr)
        for line in _mismatch_report(e, args.verbose, args.input):
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, UserError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:
        if os.environ.get("DETR_TRACEBACK"):
            raise
        print(f"{prog}: {type(e).__name__}: {e} (DETR_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(f"{prog}: wrote {args.output}")
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
