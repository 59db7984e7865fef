"""Benchmark: time per MLEM iteration of the PET system model on the Biograph-like geometry.

A 128 x 128 image (2 mm pixels) of a simulated 11C-PE2I exam, 312 views x 171 radial bins, with PSF (4.5 mm FWHM),
attenuation, normalisation and background on, reconstructed as a single frame and as the 20 frames at once (one
``(1, 20, 128, 128)`` batch, not a loop), on the CPU and, when available, on CUDA. The time of an iteration
(forward, ratio, adjoint, update and the log-likelihood) is the median gap between consecutive MLEM callbacks.

Usage:
    python scripts/bench_pet.py [--out bench_results/bench_pet.json] [--iters 5] [--size 128] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from monai_ext.io import save_json
from monai_ext.pet import BIOGRAPH_6_TRUEPOINT_TRUEV, DynamicPETSimulator, mlem


def time_mlem(counts: torch.Tensor, model, n_iter: int) -> tuple[float, float]:
    """Median and minimum seconds per MLEM iteration (after one warm-up run)."""
    sync = torch.cuda.synchronize if counts.is_cuda else (lambda: None)
    mlem(counts, model, n_iter=1)
    stamps: list[float] = []

    def stamp(k, x):
        sync()
        stamps.append(time.perf_counter())

    sync()
    stamps.append(time.perf_counter())
    mlem(counts, model, n_iter=n_iter, callback=stamp)
    gaps = [b - a for a, b in zip(stamps[1:-1], stamps[2:])] or [stamps[-1] - stamps[0]]
    return statistics.median(gaps), min(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/bench_pet.json", help="JSON file to write")
    parser.add_argument("--iters", type=int, default=5, help="timed MLEM iterations per case")
    parser.add_argument("--size", type=int, default=128, help="image size (pixels per side, 256 mm field of view)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    sim = DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, (args.size, args.size))
    exam = sim.simulate(300e6, subject_seed=0, noise_seed=0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        model = exam.system_model().to(device=device, dtype=dtype)
        counts = exam.counts[None].to(device=device, dtype=dtype)
        single = exam.system_model().to(device=device, dtype=dtype)
        single.set_scale(single.scale[:, :1])
        single.set_background(single.background[:, :1])
        for name, m, y in (("1 frame", single, counts[:, :1]), (f"{counts.shape[1]} frames batch", model, counts)):
            median, best = time_mlem(y, m, args.iters)
            rows.append(
                {
                    "device": device,
                    "case": name,
                    "batch_shape": list(y.shape),
                    "s_per_iteration_median": median,
                    "s_per_iteration_min": best,
                    "s_per_frame_iteration": median / y.shape[1],
                }
            )
    hardware = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    setup = {
        "scanner": BIOGRAPH_6_TRUEPOINT_TRUEV.name,
        "image_shape": [args.size, args.size],
        "pixel_size_mm": sim.pixel_size,
        "sinogram_shape": list(sim.geometry.sinogram_shape),
        "psf_fwhm_mm": sim.psf_fwhm,
        "dtype": args.dtype,
        "timed_iterations": args.iters,
    }
    print(f"MLEM on {setup['scanner']}: image {args.size}x{args.size}, sinogram {sim.geometry.sinogram_shape}, {args.dtype}")
    print(f"{'device':<8}{'case':<20}{'s/iteration':>14}{'min':>10}{'s/frame/iter':>15}")
    for r in rows:
        times = f"{r['s_per_iteration_median']:>14.4f}{r['s_per_iteration_min']:>10.4f}{r['s_per_frame_iteration']:>15.4f}"
        print(f"{r['device']:<8}{r['case']:<20}{times}")
    out = Path(args.out)
    save_json({"setup": setup, "hardware": hardware, "results": rows}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
