"""Time to quality of a per-scan neural field (NAF-style) against a conditioned one (CondCBNT-style, modulation only).

Each setting fits every scan of a split (``cbct_neural_field``'s quick scale: 32^3 voxels of 8 mm, 32 x 32 panel,
noisy at ``I0 = 1e5``) with ``monai_ext.fields.NeuralFieldReconstruction`` and records the PSNR against the phantom
and the CPU seconds of the fit (``time.process_time``, one torch thread: the work done, not the wall time, so the
figures hold on a shared machine). The baseline is the per-scan field's best setting in the same run; the table
gives each conditioned setting's PSNR gain over it and its CPU time as a ratio of the baseline's.

``--split validation`` is what chose the bundle's ``rays_per_step``; ``--split test`` gives the held-out curve.

Usage:
    OMP_NUM_THREADS=1 python scripts/bench_neural_field_fits.py [--views 8] [--split test] [--n 3]
        [--per-scan-steps 150 300 600] [--conditioned-steps 50 100 150] [--conditioned-rays 256 512 1024]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "cbct_neural_field"


def _settings(args) -> list[tuple[str, int, int, float]]:
    per_scan = [("per_scan", s, 1024, 0.01) for s in args.per_scan_steps]
    conditioned = [("conditioned", s, r, 0.1) for s in args.conditioned_steps for r in args.conditioned_rays]
    return per_scan + conditioned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--n", type=int, default=3, help="scans of the split")
    parser.add_argument("--per-scan-steps", type=int, nargs="+", default=[150, 300, 600])
    parser.add_argument("--conditioned-steps", type=int, nargs="+", default=[50, 100, 150])
    parser.add_argument("--conditioned-rays", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--backbone", default=str(BUNDLE / "models" / "model.pt"))
    parser.add_argument("--output", default=None, help="JSON path (default bench_results/neural_field_fits_<views>_<split>.json)")
    args = parser.parse_args()

    import torch

    from monai_ext.data import cbct_geometry, cbct_scans
    from monai_ext.fields import NeuralFieldReconstruction
    from monai_ext.io import save_json
    from monai_ext.metrics import psnr

    torch.set_num_threads(1)
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    geometry = cbct_geometry(args.views, (32, 32, 32), 8.0, (32, 32), "short")
    scans = cbct_scans(args.split, args.n, geometry, 1e5)
    rows = []
    for method, steps, rays, lr in _settings(args):
        fit = NeuralFieldReconstruction(
            geometry, method, field_args=inference["field_args"] if method == "per_scan" else None,
            backbone_file=args.backbone if method == "conditioned" else None,
            n_steps=steps, rays_per_step=rays, n_samples=32, lr=lr, seed=0, progress=False,
        )
        psnrs, cpu = [], []
        for i in range(len(scans.names)):
            start = time.process_time()
            with torch.no_grad():
                volume = fit(scans.projections[i : i + 1]).float()
            cpu.append(time.process_time() - start)
            psnrs.append(float(psnr(volume[0], scans.volumes[i])))
        rows.append({"method": method, "steps": steps, "rays_per_step": rays, "lr": lr, "psnr_per_case": psnrs,
                     "mean_psnr_db": sum(psnrs) / len(psnrs), "cpu_seconds_per_volume": sum(cpu) / len(cpu)})
        print(f"{method:12s} {steps:4d} steps x {rays:4d} rays: {rows[-1]['mean_psnr_db']:.2f} dB, "
              f"{rows[-1]['cpu_seconds_per_volume']:.1f} CPU s/vol", flush=True)
    baseline = max((r for r in rows if r["method"] == "per_scan"), key=lambda r: r["mean_psnr_db"])
    print(f"\nbaseline: per-scan field, {baseline['steps']} steps ({baseline['mean_psnr_db']:.2f} dB, "
          f"{baseline['cpu_seconds_per_volume']:.1f} CPU s/vol); {args.n} {args.split} scans, {args.views} views")
    print("| method | steps | rays/step | PSNR (dB) | gain over baseline (dB) | CPU s/vol | CPU time / baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["gain_db"] = r["mean_psnr_db"] - baseline["mean_psnr_db"]
        r["cpu_ratio"] = r["cpu_seconds_per_volume"] / baseline["cpu_seconds_per_volume"]
        print(f"| {r['method']} | {r['steps']} | {r['rays_per_step']} | {r['mean_psnr_db']:.2f} | {r['gain_db']:+.2f} | "
              f"{r['cpu_seconds_per_volume']:.1f} | {r['cpu_ratio']:.2f} |")
    output = Path(args.output or ROOT / "bench_results" / f"neural_field_fits_{args.views}_{args.split}.json")
    save_json({"views": args.views, "split": args.split, "cases": list(scans.names), "hardware": f"{platform.machine()} CPU, 1 torch thread",
               "baseline": {k: baseline[k] for k in ("method", "steps", "rays_per_step")}, "rows": rows}, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
