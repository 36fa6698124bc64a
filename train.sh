#!/bin/sh
# sh train.sh [--framework torch|paddle] [-c CONFIG] [-o key=value ...] [-r CKPT|--resume auto] [-t WEIGHTS]
# Sets up .venv on first use (env_run.sh), then runs common/launch.py. See README.md.
set -e
ROOT=$(cd "$(dirname "$0")" && pwd)
sh "$ROOT/env_run.sh"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$ROOT/.venv/bin/python" -m common.launch train "$@"
