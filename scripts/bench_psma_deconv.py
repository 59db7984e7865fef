"""Benchmark: time and peak memory of neural blind deconvolution per PET volume, against cubic upsampling.

Each case runs in its own process (so that the peak resident memory, ``ru_maxrss``, is that of the case alone): a
simulated sphere phantom of the given PET grid, a short fit (``--pretrain`` pretraining steps and ``--steps`` joint
steps split over the three kernel stages of the quick scale, kernel 11 at the end, or 15 with ``--paper``), the
median seconds per joint step, and the extrapolated time of the quick scale (190 steps) and of the authors' schedule
(300 pretraining + 7000 joint steps). The baseline is cubic spline upsampling of the same volume in the same process.
Sizes: the bundle's built-in example (12 x 32 x 32 PET voxels) and a head-and-neck crop (36 x 64 x 64 voxels, about
10 x 17.5 x 17.5 cm, the region from below the submandibular to above the parotid glands in Sample et al.).

Usage:
    python scripts/bench_psma_deconv.py [--out bench_results/bench_psma_deconv.json] [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {"quick example 12x32x32": (12, 32, 32), "head-and-neck crop 36x64x64": (36, 64, 64)}


def run_case(shape, steps: int, pretrain: int, device: str, paper: bool) -> dict:
    """One case, in this process: returns seconds per joint step, extrapolations and the peak memory."""
    import torch

    from monai_ext.deconvolution.blind_deconvolution import BlindDeconvolutionConfig, interpolate_2x, neural_blind_deconvolution
    from monai_ext.phantoms.spheres import sphere_phantom

    extent = min(shape[1:]) * 2.73
    phantom = sphere_phantom(shape=shape, ring_radius=0.3 * extent, cylinder_radius=0.46 * extent)
    start = time.perf_counter()
    interpolate_2x(phantom.measured, 3)
    cubic = time.perf_counter() - start
    sizes = (7, 11, 15) if paper else (5, 7, 11)
    per_stage = max(1, steps // 3)
    config = BlindDeconvolutionConfig(
        kernel_sizes=sizes, iterations=(per_stage,) * 3, pretrain_steps=pretrain, progress=False,
        channels=(16, 32, 64) if paper else (8, 16, 32),
    )
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    import monai_ext.deconvolution.blind_deconvolution as nbd

    original_step = torch.optim.Adam.step

    def timed_step(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        return out

    torch.optim.Adam.step = timed_step
    try:
        result = nbd.neural_blind_deconvolution(phantom.measured, phantom.spacing, config, device)
    finally:
        torch.optim.Adam.step = original_step
    joint = [b - a for a, b in zip(stamps[pretrain:-1], stamps[pretrain + 1 :])]
    per_step = statistics.median(joint)
    cpu_per_step = statistics.median([b - a for a, b in zip(cpu_stamps[pretrain:-1], cpu_stamps[pretrain + 1 :])])
    pretrain_step = statistics.median([b - a for a, b in zip(stamps[: pretrain - 1], stamps[1:pretrain])]) if pretrain > 2 else per_step
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
    out = {
        "pet_shape": list(shape),
        "output_shape": list(result.image.shape),
        "kernel_sizes": list(sizes),
        "seconds_per_joint_step": per_step,
        "seconds_per_pretrain_step": pretrain_step,
        "cpu_seconds_per_joint_step": cpu_per_step,
        "quick_scale_cpu_seconds": 190 * cpu_per_step,
        "quick_scale_seconds": 50 * pretrain_step + 140 * per_step,
        "paper_scale_seconds": 300 * pretrain_step + 7000 * per_step,
        "cubic_upsampling_seconds": cubic,
        "step_over_cubic": per_step / cubic,
        "peak_rss_mib": peak,
    }
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/bench_psma_deconv.json")
    parser.add_argument("--steps", type=int, default=12, help="joint steps timed per case (split over 3 stages)")
    parser.add_argument("--pretrain", type=int, default=4, help="pretraining steps timed per case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper", action="store_true", help="paper-scale networks and kernels (7, 11, 15)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case and print JSON
    args = parser.parse_args()

    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(tuple(json.loads(args.case)), args.steps, args.pretrain, args.device, args.paper)))
        return

    results = {}
    for name, shape in CASES.items():
        cmd = [sys.executable, __file__, "--case", json.dumps(shape), "--steps", str(args.steps), "--pretrain", str(args.pretrain),
               "--threads", str(args.threads), "--device", args.device] + (["--paper"] if args.paper else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    header = f"{'case':30s} {'s/step':>7s} {'CPU s/step':>10s} {'quick (s)':>9s} {'paper (min)':>11s} {'step/cubic':>10s} {'peak RSS (MiB)':>14s}"
    print(header)
    for name, r in results.items():
        print(f"{name:30s} {r['seconds_per_joint_step']:7.3f} {r['cpu_seconds_per_joint_step']:10.3f} {r['quick_scale_seconds']:9.1f} "
              f"{r['paper_scale_seconds'] / 60:11.1f} {r['step_over_cubic']:10.1f} {r['peak_rss_mib']:14.0f}")
    info = {"device": args.device, "threads": args.threads, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0], "paper_networks": args.paper}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from monai_ext.io import save_json

    save_json({"machine": info, "cases": results}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
