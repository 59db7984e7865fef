"""Peak training memory of Learned Primal-Dual vs its invertible (LIRE-style) variant at 4, 8 and 16 iterations.

Each configuration runs in a fresh process (so no allocator cache is shared between them): build the network on
the CBCT bundle's cone-beam projector, run the projector once (JIT compilation), then measure one training step
(forward, MSE loss, backward; after one warm-up step) with ``monai_ext.workflows.measure_peak_memory`` (CUDA allocator peak on a GPU,
sampled RSS above the pre-step level on CPU). Three networks per depth:

- ``lpd``: ``monai_ext.networks.LearnedPrimalDual`` (autograd stores every iteration);
- ``invertible``: ``InvertiblePrimalDual(memory_efficient=True)`` (activations recomputed in the backward pass);
- ``invertible_stored``: the same invertible network trained with ordinary backprop (``memory_efficient=False``).

Prints a table and writes JSON (``--output``). Target: ``invertible`` at most 1/3 of ``lpd`` at 16 iterations,
and flat in depth.

Usage:
    OMP_NUM_THREADS=1 python scripts/bench_cbct_lpd_memory.py [--size 32] [--views 50] [--iters 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("lpd", "invertible", "invertible_stored")


def _worker(args) -> dict:
    from monai_ext.workflows.memory import measure_peak_memory, release_freed_memory

    release_freed_memory()  # before any tensor exists, so that no freed block stays in the heap
    import torch

    from monai_ext.data import cbct_geometry
    from monai_ext.networks import InvertiblePrimalDual, LearnedPrimalDual
    from monai_ext.tomo import ConeBeamProjector
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    geometry = cbct_geometry(args.views, (args.size,) * 3, 256.0 / args.size, (args.size, args.size))
    op = ConeBeamProjector(geometry)
    if args.network == "lpd":
        net = LearnedPrimalDual(op, n_iter=args.n_iter, n_primal=5, n_dual=5, features=args.features)
    else:
        net = InvertiblePrimalDual(op, n_iter=args.n_iter, n_primal=6, n_dual=6, features=args.features, memory_efficient=args.network == "invertible")
    net = net.to(device)
    y = torch.rand(1, 1, *geometry.projection_shape, device=device)
    ref = torch.rand(1, 1, *geometry.image_shape, device=device) * 0.02
    with torch.no_grad():
        op.adjoint(op(ref))  # compile the projector outside the measurement

    def step():
        loss = torch.nn.functional.mse_loss(net(y), ref)
        loss.backward()
        return float(loss)

    step()  # warm-up: lazy initialisation of autograd and kernels stays out of the figure
    net.zero_grad(set_to_none=False)
    start = time.perf_counter()
    _, peak = measure_peak_memory(step, device)
    seconds = time.perf_counter() - start
    return {
        "network": args.network,
        "n_iter": args.n_iter,
        "peak_mib": round(peak / 2**20, 1),
        "step_seconds": round(seconds, 2),
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def _hardware(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="volume edge in voxels (FOV 256 mm), panel size x size")
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--iters", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=str(ROOT / "bench_results" / "cbct_lpd_memory.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--network", choices=NETWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--n-iter", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    rows = []
    common = ["--size", str(args.size), "--views", str(args.views), "--features", str(args.features), "--threads", str(args.threads), "--device", args.device]
    for n_iter in args.iters:
        for network in NETWORKS:
            cmd = [sys.executable, __file__, "--worker", "--network", network, "--n-iter", str(n_iter), *common]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: mmap (and unmap) every block > 64 KiB
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {network:18s} {n_iter:3d} it: {rows[-1]['peak_mib']:8.1f} MiB, {rows[-1]['step_seconds']:.1f} s", flush=True)
    by = {(r["network"], r["n_iter"]): r for r in rows}
    lines = [
        f"Peak training memory, one step (batch 1, {args.size}^3 volume, {args.views} x {args.size} x {args.size} projections, {args.features} features), {_hardware(args.device)}",
        "| iterations | LPD (MiB) | invertible (MiB) | invertible, stored activations (MiB) | invertible / LPD | LPD step (s) | invertible step (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n_iter in args.iters:
        lpd, inv, stored = by[("lpd", n_iter)], by[("invertible", n_iter)], by[("invertible_stored", n_iter)]
        ratio = inv["peak_mib"] / max(lpd["peak_mib"], 1e-9)
        lines.append(f"| {n_iter} | {lpd['peak_mib']:.1f} | {inv['peak_mib']:.1f} | {stored['peak_mib']:.1f} | {ratio:.3f} | {lpd['step_seconds']:.1f} | {inv['step_seconds']:.1f} |")
    deepest = max(args.iters)
    ratio = by[("invertible", deepest)]["peak_mib"] / max(by[("lpd", deepest)]["peak_mib"], 1e-9)
    inv_values = [by[("invertible", n)]["peak_mib"] for n in args.iters]
    table = "\n".join(lines)
    print(table)
    print(f"invertible / LPD at {deepest} iterations: {ratio:.3f} (target <= 1/3); invertible from {min(args.iters)} to {deepest} iterations: {inv_values[0]:.1f} -> {inv_values[-1]:.1f} MiB")
    result = {
        "settings": {k: getattr(args, k) for k in ("size", "views", "features", "iters", "threads", "device")},
        "hardware": _hardware(args.device),
        "method": "one training step per fresh process; CUDA: max_memory_allocated; CPU: sampled RSS above the pre-step level",
        "rows": rows,
        "ratio_invertible_to_lpd_at_deepest": round(ratio, 4),
        "markdown": table,
    }
    sys.path.insert(0, str(ROOT))
    from monai_ext.io import save_json

    save_json(result, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
