"""DAC-DETR and its family in PaddlePaddle: the mirror of torch_impl/ (same files, classes and parameter names).

The differences between the two frameworks that the trees handle are listed in docs/paddle_vs_torch.md.
"""
import os

# Importing paddle sets OMP_NUM_THREADS=1 when it is unset, and Paddle's CPU kernels then run on one core while
# torch's use all of them. This is what the user asked for, read before paddle is imported: an explicit
# OMP_NUM_THREADS (paddle.distributed.launch sets 1 per worker, as torchrun does), else every usable core.
CPU_THREADS = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def _is_amd_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "AuthenticAMD" in f.read(4096)
    except OSError:
        return False


# Paddle's CPU wheels do GEMM and convolution with a bundled MKL-ML that, on AMD processors, picks its slowest code
# path unless told otherwise (measured on an AMD EPYC: GEMM 2.6x, a 3x3 convolution 1.8x faster with it). The
# variable must be set before the library loads, i.e. before paddle is imported. A user's own value is kept.
if _is_amd_cpu():
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")

# A Paddle process runs two OpenMP runtimes: Intel's (Paddle's MKL and oneDNN) and GNU's (the project's C++ ops).
# Idle threads of one spin while the other works, so with every core busy, 2 threads were slower than 1 (0.65 vs
# 0.52 s per demo training step on 2 cores); passive waiting gives 0.36 s. A user's own value is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def use_cpu_threads(n: int = CPU_THREADS) -> None:
    """Lets Paddle's CPU kernels (GEMM, convolution) use `n` threads."""
    import paddle

    paddle.base.core.set_num_threads(n)
