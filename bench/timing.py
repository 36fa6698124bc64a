"""What the benchmarks share: medians after warm-up, a timer around calls, the machine's description."""
import datetime
import importlib.metadata
import os
import platform
import time

import numpy as np

PACKAGES = ("torch", "paddlepaddle", "numpy", "scipy", "onnxruntime", "faster-coco-eval", "pycocotools")


def median_time(fn, warmup, repeats):
    """Median wall time of fn() in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class CallTimer:
    """Stands in for the callable `fn`: adds the wall time of every call to `seconds` and counts it in `calls`
    (the caller reads and resets both)."""

    def __init__(self, fn):
        self.fn = fn
        self.reset()

    def reset(self):
        self.seconds, self.calls = 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def cpu_model():
    """The processor's name from /proc/cpuinfo (else what platform says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info():
    """CPU, cores, load, package versions and date of this run (imports no framework)."""
    return {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "python": platform.python_version(),
            "versions": {p: version(p) for p in PACKAGES},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
