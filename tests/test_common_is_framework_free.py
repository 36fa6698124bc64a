"""common/ must stay numpy-only: importing every module of it loads neither torch nor paddle."""
import os
import pkgutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def common_modules():
    import common
    names = ["common"]
    for info in pkgutil.walk_packages(common.__path__, prefix="common."):
        names.append(info.name)
    return names


def test_common_has_modules():
    mods = common_modules()
    for expected in ("common.config", "common.data", "common.matching", "common.evaluation", "common.box_ops"):
        assert expected in mods


def test_importing_all_of_common_loads_no_framework():
    code = (
        "import importlib, sys\n"
        f"for name in {common_modules()!r}:\n"
        "    if name.endswith('__main__'): continue\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'paddle'))\n"
        "print(' '.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"common/ imported: {out.stdout.strip()[:200]}"


def test_no_framework_import_statements_in_common():
    offenders = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "common")):
        for fn in files:
            if fn.endswith(".py"):
                path = os.path.join(dirpath, fn)
                for i, line in enumerate(open(path), 1):
                    words = line.split()
                    if len(words) >= 2 and words[0] in ("import", "from") and \
                            words[1].split(".")[0].rstrip(",") in ("torch", "paddle"):
                        offenders.append(f"{path}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
