"""Benchmark of multi-scale deformable attention: compiled kernel vs grid_sample reference, both frameworks.

    python -m bench.ms_deform_attn [--quick] [--framework torch|paddle|all]

Shapes are DAC-DETR R50 at 800x1333 (--quick: 192x288 and fewer repetitions), batch 1, 8 heads, 4 levels
(strides 8-64, ~22k tokens at 800x1333), 4 points, 256 channels: the encoder (queries = tokens) and the decoder
(900 queries). Sampling points sit where a trained-from-init model puts them: around each query's reference point
(its own pixel in the encoder, a random point in the decoder), 1-4 pixels out along one direction per head. Each
framework runs in its own process (bench/child.py). Prints a markdown table of median times after warm-up, the
reference/kernel ratio from the same run, and the kernel's throughput against the machine's copy bandwidth (a
large numpy copy, measured in the same process) on two byte counts: compulsory (every input read once, every
output written once: the floor for any implementation) and touched (plus four value rows read per sample, and in
the backward four gradient rows read and written: what the gathers move through the caches).
"""
import argparse

import numpy as np

from bench.child import call
from bench.timing import median_time
from ops.testing import encoder_shapes, random_inputs

HEADS, HEAD_DIM, POINTS, DECODER_QUERIES = 8, 32, 4, 900
FULL, QUICK = {"size": [800, 1333], "warmup": 2, "repeats": 7}, {"size": [192, 288], "warmup": 1, "repeats": 3}


def copy_bandwidth(nbytes=256 << 20, repeats=5):
    """Bytes/s of a large numpy copy (read + write counted)."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    return 2 * nbytes / median_time(lambda: np.copyto(dst, src), 1, repeats)


def detr_like_locations(rng, spatial_shapes, queries, heads, points, encoder):
    """[1, Q, M, L, P, 2] float32: reference point + (p + 1) pixels along head m's direction + N(0, 0.5) px,
    as Deformable DETR initializes its sampling offsets."""
    shapes = np.asarray(spatial_shapes)
    if encoder:  # every token queries from its own pixel centre
        refs = np.concatenate([np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1)
                               .reshape(-1, 2) for h, w in shapes])
    else:
        refs = rng.random((queries, 2))
    angle = 2 * np.pi * np.arange(heads) / heads
    direction = np.stack([np.cos(angle), np.sin(angle)], -1)
    direction /= np.abs(direction).max(-1, keepdims=True)
    pixels = direction[:, None, None] * (np.arange(points) + 1)[:, None] \
        + rng.normal(0, 0.5, (heads, len(shapes), points, 2))  # [M, L, P, 2]
    loc = refs[:, None, None, None] + pixels[None] / shapes[None, None, :, None, ::-1]  # (x, y) / (W, H)
    return loc[None].astype(np.float32)


def byte_counts(arrays, out_elems, backward):
    """(compulsory, touched) bytes of a forward, or of a forward plus backward; see the module docstring."""
    value, _, _, loc, attn = arrays
    out, rows = out_elems * value.itemsize, attn.size * value.shape[3] * value.itemsize  # rows: one per sample
    compulsory = value.nbytes + loc.nbytes + attn.nbytes + out
    touched = compulsory + 4 * rows
    if backward:  # reads value, loc, attn, grad_out; writes their three gradients; 4 rows read, 4 updated
        grads = 2 * (value.nbytes + loc.nbytes + attn.nbytes) + out
        compulsory, touched = compulsory + grads, touched + grads + 12 * rows
    return compulsory, touched


def torch_runner(arrays, backend):
    """(forward(), forward_backward()) closures for the torch op on `arrays`."""
    import torch
    from ops.torch_ms_deform_attn import ms_deform_attn
    value, shapes, starts, loc, attn = (torch.from_numpy(a) for a in arrays)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]

    def forward():
        with torch.no_grad():
            ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)

    def forward_backward():
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        torch.autograd.grad(out, leaves, torch.ones_like(out))

    return forward, forward_backward


def paddle_runner(arrays, backend):
    """(forward(), forward_backward()) closures for the paddle op on `arrays`."""
    import paddle
    from ops.paddle_ms_deform_attn import ms_deform_attn
    value, shapes, starts, loc, attn = (paddle.to_tensor(a) for a in arrays)
    leaves = [paddle.to_tensor(a, stop_gradient=False) for a in (arrays[0], arrays[3], arrays[4])]

    def forward():
        with paddle.no_grad():
            ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)

    def forward_backward():
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        paddle.grad(out, leaves, paddle.ones_like(out))

    return forward, forward_backward


RUNNERS = {"torch": torch_runner, "paddle": paddle_runner}


def measure(framework, size, warmup, repeats):
    """Times every (shapes, pass, backend) of `framework` in this process, for the encoder of a size = [H, W] input
    and the decoder -> {"copy_gbps", "levels", "tokens", "rows": [dict per (case, pass)]}."""
    bandwidth = copy_bandwidth(repeats=max(3, repeats))
    shapes = encoder_shapes(*size)
    tokens = int(shapes.prod(1).sum())
    rng = np.random.default_rng(0)
    rows = []
    for case, queries in (("encoder", tokens), ("decoder", DECODER_QUERIES)):
        arrays = list(random_inputs(rng, 1, HEADS, HEAD_DIM, queries, shapes, POINTS, "float32"))
        arrays[3] = detr_like_locations(rng, shapes, queries, HEADS, POINTS, encoder=case == "encoder")
        timings = {}
        for backend in ("reference", "kernel"):
            forward, forward_backward = RUNNERS[framework](arrays, backend)
            timings[backend] = (median_time(forward, warmup, repeats), median_time(forward_backward, warmup, repeats))
        for i, name in enumerate(("forward", "forward+backward")):
            ref, ker = timings["reference"][i], timings["kernel"][i]
            compulsory, touched = (b / ker / 1e9 for b in byte_counts(arrays, queries * HEADS * HEAD_DIM, i == 1))
            rows.append({"framework": framework, "case": case, "queries": queries, "pass": name,
                         "reference_s": ref, "kernel_s": ker, "reference_over_kernel": ref / ker,
                         "kernel_gbps_compulsory": compulsory, "kernel_gbps_touched": touched})
    return {"copy_gbps": bandwidth / 1e9, "levels": shapes.tolist(), "tokens": tokens, "rows": rows}


def run(frameworks=("torch", "paddle"), quick=False):
    """{"size", "warmup", "repeats", "frameworks": {framework: measure(...)}}, each framework in its own process."""
    params = QUICK if quick else FULL
    return {**params, "frameworks": {fw: call("bench.ms_deform_attn:measure", f"ms_deform_attn ({fw})",
                                              framework=fw, **params) for fw in frameworks}}


def table(result):
    """Markdown report of run()'s result."""
    first = next(iter(result["frameworks"].values()))
    copy = {fw: r["copy_gbps"] for fw, r in result["frameworks"].items()}
    lines = [f"ms_deform_attn, batch 1, {HEADS} heads x {HEAD_DIM} channels, {len(first['levels'])} levels "
             f"{first['levels']} (a {result['size'][0]}x{result['size'][1]} input, {first['tokens']} tokens), "
             f"{POINTS} points, float32; numpy copy bandwidth "
             + ", ".join(f"{c:.1f} GB/s ({fw} process)" for fw, c in copy.items())
             + f"; medians of {result['repeats']} after {result['warmup']} warm-up", "",
             "| framework | shapes | queries | pass | reference ms | kernel ms | reference/kernel "
             "| kernel GB/s compulsory (% of copy) | kernel GB/s touched (% of copy) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for fw, r in result["frameworks"].items():
        for row in r["rows"]:
            rates = " | ".join(f"{row[k]:.1f} ({100 * row[k] / copy[fw]:.0f}%)"
                               for k in ("kernel_gbps_compulsory", "kernel_gbps_touched"))
            lines.append(f"| {fw} | {row['case']} | {row['queries']} | {row['pass']} | {row['reference_s'] * 1e3:.1f} "
                         f"| {row['kernel_s'] * 1e3:.1f} | {row['reference_over_kernel']:.1f}x | {rates} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.ms_deform_attn", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repetitions")
    parser.add_argument("--framework", choices=("torch", "paddle", "all"), default="all")
    args = parser.parse_args(argv)
    frameworks = ("torch", "paddle") if args.framework == "all" else (args.framework,)
    print(table(run(frameworks, args.quick)))


if __name__ == "__main__":
    main()
