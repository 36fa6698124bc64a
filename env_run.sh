#!/bin/sh
# Creates .venv and installs the pinned dependencies. Idempotent: does nothing when
# requirements.txt has not changed since the last successful install.
#   sh env_run.sh              CPU builds (torch 2.13.0 CPU, paddlepaddle 3.2.2)
#   DEVICE=gpu sh env_run.sh   paddlepaddle-gpu and a CUDA torch instead (untested here: no GPU)
set -eu
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
DEVICE=${DEVICE:-cpu}
PY=${PYTHON:-python3}

stamp="$VENV/.installed-$DEVICE"
want=$(cat requirements.txt "$0" | cksum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "env_run.sh: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
req=requirements.txt
if [ "$DEVICE" = gpu ]; then
    # paddlepaddle-gpu comes from Paddle's own package index (CUDA 12.6 build); torch from PyPI
    # is the CUDA build on Linux x86_64.
    req="$VENV/requirements-gpu.txt"
    sed -e 's/^paddlepaddle==/paddlepaddle-gpu==/' requirements.txt > "$req"
    set -- --extra-index-url https://www.paddlepaddle.org.cn/packages/stable/cu126/
elif [ "$DEVICE" != cpu ]; then
    echo "env_run.sh: DEVICE must be cpu or gpu, not '$DEVICE'" >&2
    exit 2
else
    set --
fi
echo "env_run.sh: installing $req into $VENV (DEVICE=$DEVICE)" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" -r "$req"
echo "$want" > "$stamp"
echo "env_run.sh: done" >&2
