"""Paddle CPU convolution and Linear (oneDNN), GroupNorm and the optimizer step as custom C++ ops, for training
speed and a correct GroupNorm.

    conv2d(x, weight, bias, stride, padding, dilation)   x [N, C, H, W] float32 -> [N, O, H', W']
    linear(x, weight, bias)                               x [..., K], weight [K, N] float32 -> [..., N]
    group_norm(x, num_groups, weight, bias, epsilon)      x [N, C, ...] float32 / float64 -> same
    clip_by_global_norm(grads, max_norm)                  float32 gradients, scaled in place -> norm (0-D)
    adamw(params, grads, moments1, moments2, ...)         one AdamW step of every parameter, in place

The layers run forward and backward on CPU tensors in dynamic mode; paddle_impl/models/layers.py calls them from
its Conv2D, Linear and GroupNorm and keeps Paddle's own ops for GPU, other dtypes, static graphs and export.
paddle_impl/optim.py calls the last two on CPU float32 parameters. `available()` builds the ops on first use
(cached like ops/build.py's, in <root>/paddle-cpu-layers-<version>-<hash>) and, if that fails, logs one warning on
the "ops" logger and returns False from then on.

The convolution and the Linear link against the oneDNN library in the Paddle wheel (paddle/libs/libdnnl.so.3); the
wheel lacks oneDNN's headers, so csrc/onednn_c_api.h declares the part of the C API they use. Build ahead of time
with `python -m ops.paddle_cpu_layers`.
"""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

from ops import build

SOURCES = ("onednn_c_api.h", "paddle_conv2d_onednn.cpp", "paddle_linear_onednn.cpp", "group_norm_cpu.h",
           "paddle_group_norm.cpp", "paddle_adamw.cpp")
MODULE_NAME = "dac_detr_cpu_layers_paddle"
ONEDNN_LIBRARY = "libdnnl.so.3"

logger = logging.getLogger("ops")


def onednn_dir():
    """Directory of the oneDNN library shipped in the Paddle wheel."""
    import paddle
    return Path(paddle.__file__).resolve().parent / "libs"


def onednn_version():
    """(major, minor, patch) of the wheel's oneDNN library; RuntimeError if it is missing."""
    path = onednn_dir() / ONEDNN_LIBRARY
    if not path.exists():
        raise RuntimeError(f"this paddle wheel has no {ONEDNN_LIBRARY} in {path.parent}")

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

    fn = ctypes.CDLL(str(path)).dnnl_version
    fn.restype = ctypes.POINTER(Version)
    v = fn().contents
    return v.major, v.minor, v.patch


def _ld_flags():
    lib = onednn_dir()
    return (*build.LD_FLAGS, f"-L{lib}", f"-l:{ONEDNN_LIBRARY}", f"-Wl,-rpath,{lib}")


def build_dir():
    """Directory holding the build for the current sources, flags, Paddle and CPU (as ops.build.build_dir)."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (build.CSRC / name).read_bytes())
    for part in (build.CXX_FLAGS, _ld_flags(), sys.implementation.cache_tag, platform.machine(),
                 build._cpu_identity()):
        digest.update(repr(part).encode())
    root = Path(os.environ.get("DETR_OPS_BUILD_DIR") or Path.home() / ".cache" / "dac_detr_ops")
    return root / f"paddle-cpu-layers-{build.framework_version('paddle')}-{digest.hexdigest()[:16]}"


def load(verbose=False):
    """Build the ops on first use (cached) and return their module; RuntimeError (one line) if that fails."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (install g++ or set CXX)")
    major = onednn_version()[0]
    if major != 3:  # onednn_c_api.h is the v3 ABI
        raise RuntimeError(f"the paddle wheel's oneDNN is version {major}.x, the op is written for 3.x")
    out, log = build_dir(), ""
    try:
        with build._file_lock(out.with_name(out.name + ".lock")), build._captured_output(verbose) as output:
            out.mkdir(parents=True, exist_ok=True)
            paddle_logger = logging.getLogger("utils.cpp_extension")  # logs every load at INFO
            level = paddle_logger.level
            paddle_logger.setLevel(logging.INFO if verbose else logging.WARNING)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # paddle's own "No ccache found" and deprecation warnings
                    from paddle.utils import cpp_extension
                    return cpp_extension.load(
                        name=MODULE_NAME, sources=[str(build.CSRC / s) for s in SOURCES if s.endswith(".cpp")],
                        extra_cxx_cflags=list(build.CXX_FLAGS), extra_ldflags=list(_ld_flags()),
                        extra_include_paths=[str(build.CSRC)], build_directory=str(out), verbose=verbose)
            finally:
                paddle_logger.setLevel(level)
                log = output()
    except Exception as exc:
        logger.debug("building the paddle CPU layer ops failed: %s\n%s", exc, log)
        first_line = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RuntimeError(f"building the paddle CPU layer ops in {out} failed: {first_line}") from exc


class _Ops:
    """The compiled module, built on first use; a failure is remembered, warned about once and not retried."""

    def __init__(self):
        self.module = None
        self.error = None

    def get(self):
        """The module, or None when it cannot be built."""
        if self.module is None and self.error is None:
            try:
                self.module = load()
            except Exception as exc:  # any build, version or import failure means: use Paddle's own ops
                self.error = f"{type(exc).__name__}: {next(iter(str(exc).splitlines()), '')}"
                logger.warning("paddle CPU conv2d / linear / group_norm ops unavailable (%s); using paddle's own "
                               "kernels", self.error)
        return self.module


_ops = _Ops()


def available():
    """True when the compiled ops can be used (builds them on the first call)."""
    return _ops.get() is not None


def _pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """oneDNN convolution, groups = 1, zero padding. x [N, C, H, W], weight [O, C, KH, KW], bias [O] or None, all
    float32 CPU tensors; stride / dilation: int or (h, w); padding: int, (h, w) or (top, bottom, left, right)
    -> [N, O, (H + pt + pb - dh (KH - 1) - 1) // sh + 1, (W + ...) // sw + 1]. Call only when available()."""
    pad = _pair(padding)
    if len(pad) == 2:
        pad = [pad[0], pad[0], pad[1], pad[1]]
    need_x = not x.stop_gradient
    need_w = not weight.stop_gradient or (bias is not None and not bias.stop_gradient)
    return _ops.get().dac_conv2d(x, weight, bias, _pair(stride), pad, _pair(dilation), need_x, need_w)


def linear(x, weight, bias=None):
    """oneDNN matrix products: x [..., K] @ weight [K, N] + bias [N] (or None), float32 CPU tensors -> [..., N].
    Call only when available()."""
    need_w = not weight.stop_gradient or (bias is not None and not bias.stop_gradient)
    return _ops.get().dac_linear(x, weight, bias, not x.stop_gradient, need_w)


def group_norm(x, num_groups, weight, bias, epsilon=1e-5):
    """torch.nn.functional.group_norm on CPU with affine weight and bias [C]: x [N, C, ...] float32 / float64
    -> same. Call only when available()."""
    y, _, _ = _ops.get().dac_group_norm(x, weight, bias, int(num_groups), float(epsilon))
    return y


def clip_by_global_norm(grads, max_norm):
    """Scales the float32 CPU tensors `grads` in place so that their global L2 norm is at most max_norm, by
    min(1, max_norm / (norm + 1e-6)); returns the norm before clipping (0-D). Call only when available()."""
    # detach(): the same memory, without the autograd check that refuses in-place ops on trainable leaves
    return _ops.get().dac_clip_by_global_norm([g.detach() for g in grads], float(max_norm))[1]


def adamw(params, grads, moments1, moments2, beta1_pows, beta2_pows, lrs, beta1, beta2, epsilon, weight_decay):
    """One step of Paddle's AdamW for every parameter, in place: params, moments and beta powers ([1] each) are
    updated. lrs: each parameter's learning rate. Contiguous float32 CPU tensors. Call only when available()."""
    _ops.get().dac_adamw([p.detach() for p in params], grads, moments1, moments2, beta1_pows, beta2_pows,
                         [float(lr) for lr in lrs],
                         float(beta1), float(beta2), float(epsilon), float(weight_decay))


def main():
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        load(verbose="--verbose" in sys.argv[1:])
    except RuntimeError as exc:
        print(f"ops.paddle_cpu_layers: {exc}", file=sys.stderr)
        return 1
    print(f"ops.paddle_cpu_layers: ops ready in {build_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
