#!/usr/bin/env python
"""Benchmark of the multi-scale deformable attention op: compiled kernels vs the reference.

Two workloads, batch 1, 8 heads x 32 channels, the four maps of a 512 x 512 input
(strides 8, 16, 32, 64 -> 64x64, 32x32, 16x16, 8x8):

* ``encoder``: encoder self-attention, 4 levels, 4 points, queries = all 5440 tokens;
* ``decoder``: clip decoder cross-attention, 300 queries x 15 points over 3 frames x 4 levels.

For each device (CPU; CUDA where a GPU and the CUDA kernels exist), implementation and mode
(forward, forward+backward) it reports the median time and the peak memory the call adds on
top of its inputs. Every variant runs in a fresh subprocess so that no allocator state leaks
from one to the next. CPU peak memory is measured, not estimated: the child resets the
kernel's resident-set high-water mark (``/proc/self/clear_refs`` = 5, Linux >= 4.0) just
before the call and reads ``VmHWM`` right after, so the number is the true peak RSS growth.
CUDA peak memory is ``torch.cuda.max_memory_allocated`` growth.

Usage::

    python tools/benchmark_ops.py            # full run (a few minutes on 2 cores)
    python tools/benchmark_ops.py --quick    # smoke run: 1 repeat, all variants in-process
    python tools/benchmark_ops.py --json out.json

``--in-process`` (implied by ``--quick``) runs every variant in this process: much faster to
start, but allocations freed by one variant may be reused by the next, so its memory column
is only indicative.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]

MAPS_512 = [(64, 64), (32, 32), (16, 16), (8, 8)]
CASES = {
    "encoder": dict(shapes=MAPS_512, queries=None, points=4, heads=8, dim=32),
    "decoder": dict(shapes=MAPS_512 * 3, queries=300, points=15, heads=8, dim=32),
}
IMPLS = ("compiled", "reference")
MODES = ("fwd", "fwd+bwd")


# ----------------------------------------------------------------------------------------------
# Child: one (case, device, impl, mode)
# ----------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _run_child(spec: Dict) -> Dict:
    import torch

    from vpose_d2.layers.ms_deform_attn import ms_deform_attn

    case = CASES[spec["case"]]
    device = torch.device(spec["device"])
    impl, mode = spec["impl"], spec["mode"]
    torch.manual_seed(0)
    shapes = torch.tensor(case["shapes"], dtype=torch.int64, device=device)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S = int(areas.sum())
    L, P, M, D = len(case["shapes"]), case["points"], case["heads"], case["dim"]
    Q = case["queries"] or S
    grad = mode == "fwd+bwd"
    value = torch.randn(1, S, M, D, device=device).requires_grad_(grad)
    locations = torch.rand(1, Q, M, L, P, 2, device=device).requires_grad_(grad)
    weights = torch.rand(1, Q, M, L, P, device=device).requires_grad_(grad)
    grad_out = torch.ones(1, Q, M * D, device=device)
    cuda = device.type == "cuda"

    def step():
        out = ms_deform_attn(value, shapes, starts, locations, weights, impl=impl)
        if grad:
            out.backward(grad_out)
        if cuda:
            torch.cuda.synchronize()

    def clear_grads():
        for t in (value, locations, weights):
            t.grad = None

    step()  # warm-up: lazy initialisation (thread pools, CUDA context and modules)
    clear_grads()

    # Peak memory of one call above what exists before it (inputs, grad_out).
    _release_freed_memory()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        peak_bytes = torch.cuda.max_memory_allocated(device) - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current VmRSS
        base_kib = _rss_kib("VmRSS")
        step()
        peak_bytes = (_rss_kib("VmHWM") - base_kib) * 1024
    clear_grads()

    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        clear_grads()
    return {**spec, "ms": 1e3 * statistics.median(times), "peak_mib": peak_bytes / 2**20}


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------
def _spawn(spec: Dict) -> Dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _devices() -> List[str]:
    import torch

    from vpose_d2 import _ops

    devices = ["cpu"]
    # Benchmarking CUDA needs a GPU; the op itself never asks torch.cuda.is_available().
    if torch.cuda.is_available() and _ops.has_kernel("cuda"):
        devices.append("cuda")
    return devices


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 timed repeat, --in-process"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="no subprocess per variant (memory indicative)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu (+cuda)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        print(json.dumps(_run_child(json.loads(args.child))))
        return 0

    from vpose_d2 import _ops

    if _ops.extension is None:
        raise SystemExit(f"the compiled op is unavailable: {_ops.load_error}")
    repeats = 1 if args.quick else args.repeats
    in_process = args.quick or args.in_process
    devices = args.devices or _devices()
    results = []
    for case in args.cases:
        for device in devices:
            for mode in MODES:
                for impl in IMPLS:
                    spec = dict(case=case, device=device, impl=impl, mode=mode, repeats=repeats)
                    results.append(_run_child(spec) if in_process else _spawn(spec))

    header = (
        f"{'case':<8} {'device':<6} {'mode':<8} | {'compiled ms':>11} {'reference ms':>12} "
        f"{'speedup':>7} | {'compiled MiB':>12} {'reference MiB':>13} {'mem ratio':>9}"
    )
    lines = [header, "-" * len(header)]
    by_key = {(r["case"], r["device"], r["mode"], r["impl"]): r for r in results}
    for case in args.cases:
        for device in devices:
            for mode in MODES:
                c = by_key[(case, device, mode, "compiled")]
                r = by_key[(case, device, mode, "reference")]
                mem_ratio = c["peak_mib"] / r["peak_mib"] if r["peak_mib"] > 0 else float("nan")
                lines.append(
                    f"{case:<8} {device:<6} {mode:<8} | {c['ms']:>11.1f} {r['ms']:>12.1f} "
                    f"{r['ms'] / c['ms']:>6.1f}x | {c['peak_mib']:>12.1f} {r['peak_mib']:>13.1f} "
                    f"{mem_ratio:>9.2f}"
                )
    import torch

    lines.append(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, repeats={repeats}, "
        f"{'in-process' if in_process else 'one subprocess per variant'}; "
        "speedup = reference / compiled time; mem ratio = compiled / reference peak"
    )
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
