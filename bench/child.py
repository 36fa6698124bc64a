"""Runs one measurement in a fresh process: every framework-specific benchmark goes through here, because importing
paddle changes torch's threading and peak memory (ru_maxrss) is a whole process's.

    python -m bench.child MODULE:FUNCTION '{"keyword": "arguments"}'

calls the function and prints its (JSON-serializable) result as the last line of stdout.
"""
import importlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(RuntimeError):
    """A measurement's process failed; the message names it and ends with its stderr."""


def call(target, what, **kwargs):
    """The result of `target` ("module:function") called with `kwargs` in a new Python process; `what` names the
    measurement in the error raised when it fails."""
    cmd = [sys.executable, "-m", "bench.child", target, json.dumps(kwargs)]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        raise BenchError(f"{what} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def main():
    target, kwargs = sys.argv[1], json.loads(sys.argv[2])
    module, function = target.split(":")
    result = getattr(importlib.import_module(module), function)(**kwargs)
    print("\n" + json.dumps(result))


if __name__ == "__main__":
    main()
