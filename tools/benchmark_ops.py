#!/usr/bin/env python
"""Benchmark of the multi-scale deformable attention op: compiled kernels vs the reference
(and vs the public ``torch-ms-deform-attn`` package when it is importable).

Two workloads, batch 1, 8 heads x 32 channels, the four maps of a 512 x 512 input
(strides 8, 16, 32, 64 -> 64x64, 32x32, 16x16, 8x8), uniformly random locations:

* ``encoder``: encoder self-attention, 4 levels, 4 points, queries = all 5440 tokens;
* ``decoder``: clip decoder cross-attention, 300 queries x 15 points over 3 frames x 4 levels.

For each device (CPU; CUDA where a GPU and the CUDA kernels exist), implementation and mode
(forward, forward+backward) it reports the median time and the peak memory the call adds on
top of its inputs.

The peer is ``torch_ms_deform_attn.ms_deform_attn`` (PyPI ``torch-ms-deform-attn``, built
from source against the installed torch). It is not a dependency of vpose_d2: install it
anywhere, e.g. ``pip install --no-build-isolation --target DIR torch-ms-deform-attn``, and pass
``--peer-path DIR`` (or have it importable); without it the peer column is left out.
``--rounds N`` repeats the whole set of variants N times, one after the other, and reports the
median over rounds: on a shared machine that interleaves the implementations, so a busy
moment slows all of them rather than one. Every variant runs in a fresh subprocess so that no allocator state leaks
from one to the next. CPU peak memory is measured, not estimated: the child resets the
kernel's resident-set high-water mark (``/proc/self/clear_refs`` = 5, Linux >= 4.0) just
before the call and reads ``VmHWM`` right after, so the number is the true peak RSS growth.
CUDA peak memory is ``torch.cuda.max_memory_allocated`` growth.

Usage::

    python tools/benchmark_ops.py            # full run (a few minutes on 2 cores)
    python tools/benchmark_ops.py --quick    # smoke run: 1 repeat, all variants in-process
    python tools/benchmark_ops.py --json out.json
    python tools/benchmark_ops.py --cases encoder --devices cpu --threads 2 --rounds 5 \
        --peer-path /path/to/peer

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
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
# Benchmark the checkout this file is in (and its build of vpose_d2._C), not whichever
# vpose_d2 the environment has installed.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MAPS_512 = [(64, 64), (32, 32), (16, 16), (8, 8)]
CASES = {
    "encoder": dict(shapes=MAPS_512, queries=None, points=4, heads=8, dim=32),
    "decoder": dict(shapes=MAPS_512 * 3, queries=300, points=15, heads=8, dim=32),
}
IMPLS = ("compiled", "reference")
PEER = "peer"
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


def _import_peer(peer_path: Optional[str]):
    """The peer package's module, or None with the reason."""
    if peer_path and peer_path not in sys.path:
        sys.path.insert(0, peer_path)
    try:
        import torch_ms_deform_attn
    except ImportError as e:
        return None, f"{type(e).__name__}: {e}"
    return torch_ms_deform_attn, None


def _run_child(spec: Dict) -> Dict:
    import torch

    from vpose_d2.layers.ms_deform_attn import ms_deform_attn

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])

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

    if impl == PEER:
        peer, reason = _import_peer(spec.get("peer_path"))
        if peer is None:
            raise RuntimeError(f"the peer is not importable: {reason}")

        def attend(*args):
            return peer.ms_deform_attn(*args, 64)  # im2col_step: CUDA only, no effect on CPU

    else:

        def attend(*args):
            return ms_deform_attn(*args, impl=impl)

    def step():
        out = attend(value, shapes, starts, locations, weights)
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
    return {
        **spec,
        "ms": 1e3 * statistics.median(times),
        "peak_mib": peak_bytes / 2**20,
        "threads": torch.get_num_threads(),
    }


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
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat all variants this often (median reported)"
    )
    parser.add_argument(
        "--peer-path",
        default=os.environ.get("VPOSE_PEER_PATH"),
        help="directory holding the torch_ms_deform_attn package (env VPOSE_PEER_PATH)",
    )
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
    impls = list(IMPLS)
    peer, peer_reason = _import_peer(args.peer_path)
    if peer is not None:
        impls.append(PEER)
    run = _run_child if in_process else _spawn
    samples: Dict[tuple, List[Dict]] = {}
    for _ in range(args.rounds):
        for case in args.cases:
            for device in devices:
                for mode in MODES:
                    for impl in impls:
                        spec = dict(
                            case=case,
                            device=device,
                            impl=impl,
                            mode=mode,
                            repeats=repeats,
                            threads=args.threads,
                            peer_path=args.peer_path,
                        )
                        try:
                            result = run(spec)
                        except RuntimeError as e:
                            if impl != PEER:
                                raise
                            # e.g. a CPU-only build of the peer on a CUDA tensor
                            result = {**spec, "ms": float("nan"), "peak_mib": float("nan")}
                            print(f"peer failed on {case}/{device}/{mode}: {e}", file=sys.stderr)
                        samples.setdefault((case, device, mode, impl), []).append(result)
    results = []
    for rounds in samples.values():
        first = rounds[0]
        results.append(
            {
                **first,
                "ms": statistics.median(r["ms"] for r in rounds),
                "ms_rounds": [r["ms"] for r in rounds],
            }
        )
    by_key = {(r["case"], r["device"], r["mode"], r["impl"]): r for r in results}

    with_peer = PEER in impls
    header = f"{'case':<8} {'device':<6} {'mode':<8} | {'compiled ms':>11} {'reference ms':>12}"
    if with_peer:
        header += f" {'peer ms':>8}"
    header += f" | {'ref/comp':>8}"
    if with_peer:
        header += f" {'peer/comp':>9}"
    header += f" | {'compiled MiB':>12} {'reference MiB':>13}"
    if with_peer:
        header += f" {'peer MiB':>8}"
    lines = [header, "-" * len(header)]
    for case in args.cases:
        for device in devices:
            for mode in MODES:
                c = by_key[(case, device, mode, "compiled")]
                r = by_key[(case, device, mode, "reference")]
                line = f"{case:<8} {device:<6} {mode:<8} | {c['ms']:>11.1f} {r['ms']:>12.1f}"
                if with_peer:
                    p = by_key[(case, device, mode, PEER)]
                    line += f" {p['ms']:>8.1f}"
                line += f" | {r['ms'] / c['ms']:>7.2f}x"
                if with_peer:
                    line += f" {p['ms'] / c['ms']:>8.2f}x"
                line += f" | {c['peak_mib']:>12.1f} {r['peak_mib']:>13.1f}"
                if with_peer:
                    line += f" {p['peak_mib']:>8.1f}"
                lines.append(line)
    import torch

    threads = results[0]["threads"] if results else torch.get_num_threads()
    lines.append(
        f"torch {torch.__version__}, {threads} CPU threads, repeats={repeats}, rounds={args.rounds} "
        f"(median over rounds), "
        f"{'in-process' if in_process else 'one subprocess per variant'}; "
        "ratios = other / compiled time (> 1: compiled is faster); MiB = peak memory the call "
        "adds"
    )
    if not with_peer:
        lines.append(f"peer torch-ms-deform-attn not importable ({peer_reason}); see --peer-path")
    else:
        lines.append(f"peer: torch-ms-deform-attn {getattr(peer, '__version__', '?')}")
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
