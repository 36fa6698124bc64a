"""Build and load the compiled ms_deform_attn ops: just in time on first use, or ahead of time.

    python -m ops.build [--framework torch|paddle|all] [--verbose]   build (or reuse) the ops
    python -m ops.build --check-cuda                                  compile-check the .cu files with nvcc -c

A build lives in $DETR_OPS_BUILD_DIR (default ~/.cache/dac_detr_ops) under <framework>-<version>-<hash>, the
hash covering sources, flags, Python ABI and CPU, so a changed source or upgrade never reuses a stale library.
A file lock next to it serializes processes that build or load at the same time.
"""
import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
CORE = ("ms_deform_attn_common.h", "ms_deform_attn_cpu.h", "ms_deform_attn_cuda.cuh")
BINDINGS = {"torch": ("torch_ms_deform_attn.cpp", "torch_ms_deform_attn_cuda.cu"),
            "paddle": ("paddle_ms_deform_attn.cpp", "paddle_ms_deform_attn_cuda.cu")}
MODULE_NAMES = {"torch": "dac_detr_msda_torch", "paddle": "dac_detr_msda_paddle"}
# tuples: torch's load() appends to the flag lists it is given
CXX_FLAGS = ("-O3", "-march=native", "-fopenmp")
CUDA_FLAGS = ("-O3",)
LD_FLAGS = ("-fopenmp",)

logger = logging.getLogger("ops")


def framework_version(framework):
    """Installed version string of 'torch' or 'paddle'."""
    if framework == "torch":
        import torch
        return torch.__version__
    import paddle
    return paddle.__version__


def cuda_available(framework):
    """True when the framework is a CUDA build that sees a GPU: only then are the .cu files compiled."""
    if framework == "torch":
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
        return torch.cuda.is_available() and CUDA_HOME is not None
    import paddle
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def _cpu_identity():
    # -march=native ties the library to this CPU model, so a cache shared between machines keys on it
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().split("\n\n")[0].splitlines()  # the first core
        return [line for line in lines if line.startswith(("model name", "flags"))]
    except OSError:
        return platform.processor()


def build_dir(framework, cuda=None):
    """Directory holding the build of `framework` for the current sources, flags and environment."""
    cuda = cuda_available(framework) if cuda is None else cuda
    digest = hashlib.sha256()
    for name in CORE + BINDINGS[framework]:
        digest.update(name.encode() + b"\0" + (CSRC / name).read_bytes())
    for part in (CXX_FLAGS, CUDA_FLAGS, LD_FLAGS, sys.implementation.cache_tag, platform.machine(),
                 _cpu_identity(), cuda):
        digest.update(repr(part).encode())
    root = Path(os.environ.get("DETR_OPS_BUILD_DIR") or Path.home() / ".cache" / "dac_detr_ops")
    return root / f"{framework}-{framework_version(framework)}-{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _file_lock(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel even if this process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _captured_output(verbose):
    """Send this process's stdout/stderr (compiler subprocesses included) to a log unless verbose."""
    if verbose:
        yield lambda: ""
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield lambda: (log.seek(0), log.read())[1]
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _load_torch(out, cuda, verbose):
    from torch.utils import cpp_extension
    cpp, cu = BINDINGS["torch"]
    sources = [str(CSRC / cpp)] + ([str(CSRC / cu)] if cuda else [])
    defines = ["-DWITH_CUDA"] if cuda else []
    return cpp_extension.load(name=MODULE_NAMES["torch"], sources=sources, extra_cflags=[*CXX_FLAGS, *defines],
                              extra_cuda_cflags=[*CUDA_FLAGS, *defines], extra_ldflags=list(LD_FLAGS),
                              extra_include_paths=[str(CSRC)], build_directory=str(out), verbose=verbose)


def _load_paddle(out, cuda, verbose):
    cpp, cu = BINDINGS["paddle"]
    sources = [str(CSRC / cpp)] + ([str(CSRC / cu)] if cuda else [])
    defines = ["-DWITH_CUDA"] if cuda else []
    paddle_logger = logging.getLogger("utils.cpp_extension")  # logs every load at INFO
    level = paddle_logger.level
    paddle_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # paddle's own "No ccache found" and deprecation warnings
            from paddle.utils import cpp_extension
            return cpp_extension.load(name=MODULE_NAMES["paddle"], sources=sources,
                                      extra_cxx_cflags=[*CXX_FLAGS, *defines],
                                      extra_cuda_cflags=[*CUDA_FLAGS, *defines], extra_ldflags=list(LD_FLAGS),
                                      extra_include_paths=[str(CSRC)], build_directory=str(out), verbose=verbose)
    finally:
        paddle_logger.setLevel(level)


def load(framework, verbose=False):
    """Build `framework`'s op on first use (cached) and return its module; RuntimeError if that fails."""
    if framework not in BINDINGS:
        raise ValueError(f"framework must be 'torch' or 'paddle', got {framework!r}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (install g++ or set CXX)")
    out, log = None, ""
    try:
        cuda = cuda_available(framework)
        out = build_dir(framework, cuda)
        with _file_lock(out.with_name(out.name + ".lock")), _captured_output(verbose) as output:
            out.mkdir(parents=True, exist_ok=True)
            try:
                return (_load_torch if framework == "torch" else _load_paddle)(out, cuda, verbose)
            finally:
                log = output()
    except Exception as exc:
        # compiler logs are long: the first line goes in the message, the whole log to debug level
        logger.debug("building the %s op failed: %s\n%s", framework, exc, log)
        first_line = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RuntimeError(f"building the {framework} op in {out} failed: {first_line}") from exc


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ops.build", description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "paddle", "all"), default="all")
    parser.add_argument("--check-cuda", action="store_true", help="only compile-check the CUDA sources")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    if args.check_cuda:
        from ops.check_cuda import check_cuda
        return check_cuda(args.framework, args.verbose)
    for framework in ("torch", "paddle") if args.framework == "all" else (args.framework,):
        try:
            load(framework, args.verbose)
        except RuntimeError as exc:
            print(f"ops.build: {exc}", file=sys.stderr)
            return 1
        print(f"ops.build: {framework} op ready in {build_dir(framework)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
