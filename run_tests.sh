#!/bin/sh
# The whole test suite (what CI runs). Sets up .venv on first use. Extra arguments go to pytest.
set -e
ROOT=$(cd "$(dirname "$0")" && pwd)
sh "$ROOT/env_run.sh"
cd "$ROOT"
# pytest exits 5 when it collects no test: that is a failure here, never a green run.
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
[ "$rc" -eq 5 ] && echo "run_tests.sh: no tests were collected" >&2
exit "$rc"
