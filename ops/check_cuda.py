"""Compile-check the CUDA sources with `nvcc -c` (no GPU needed): `python -m ops.build --check-cuda`.

Each binding's .cu (which includes the shared core ms_deform_attn_cuda.cuh) is compiled to an object file for
a real GPU architecture, against the installed framework's own headers: host code is type-checked and the
device code goes through ptxas. Nothing is linked or run.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ops.build import BINDINGS, CSRC

ARCH = "sm_80"  # double-precision atomicAdd needs sm_60+; any modern architecture exercises the same code


def find_nvcc():
    """Path of nvcc from $CUDA_HOME, /usr/local/cuda or PATH, or None."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def framework_flags(framework, stub_dir):
    """nvcc include paths and defines that the framework's CUDA extension build would use."""
    python_include = ["-I", sysconfig.get_paths()["include"]]
    if framework == "torch":
        import torch
        from torch.utils.cpp_extension import include_paths
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        # CPU wheels lack this one CMake-generated header of c10/cuda; CUDA wheels define exactly this macro
        stub = Path(stub_dir) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        return [*(f"-I{p}" for p in include_paths()), f"-I{stub_dir}", *python_include,
                f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                "-DTORCH_EXTENSION_NAME=ms_deform_attn_check", "-DWITH_CUDA"]
    import paddle
    include = Path(paddle.__file__).parent / "include"
    compat = include / "paddle" / "phi" / "api" / "include" / "compat"
    return [f"-I{include}", f"-I{include / 'third_party'}", f"-I{compat}",
            f"-I{compat / 'torch' / 'csrc' / 'api' / 'include'}", *python_include, "-D_GLIBCXX_USE_CXX11_ABI=1",
            "-DPADDLE_WITH_CUDA", "-DEIGEN_USE_GPU", "-DNVCC", "-DWITH_CUDA"]


def check_cuda(framework="all", verbose=False):
    """nvcc -c every CUDA source of `framework` ('torch', 'paddle' or 'all'); returns 0 if all compile."""
    nvcc = find_nvcc()
    if nvcc is None:
        print("ops.build --check-cuda: nvcc not found (set CUDA_HOME)", file=sys.stderr)
        return 1
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for fw in ("torch", "paddle") if framework == "all" else (framework,):
            source = CSRC / BINDINGS[fw][1]
            cmd = [nvcc, "-c", str(source), "-o", str(Path(tmp) / f"{fw}.o"), "-std=c++17", f"-arch={ARCH}",
                   "-O3", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", f"-I{CSRC}", *framework_flags(fw, tmp)]
            if verbose:
                print(" ".join(cmd))
            result = subprocess.run(cmd, capture_output=True, text=True)
            status = "ok" if result.returncode == 0 else "FAILED"
            print(f"nvcc -c {source.name} ({fw} headers, {ARCH}): {status}")
            if result.returncode != 0:
                failures += 1
                print(result.stderr[:4000], file=sys.stderr)
    return 1 if failures else 0
