#!/usr/bin/env python
"""The numba cone-beam projector of this checkout against the one of an earlier git revision, in one process.

On a shared machine timings drift by tens of percent between runs, so a speed-up is measured as a ratio of calls
interleaved in one process: each round times the earlier revision's kernels (``monai_ext/tomo/joseph_cpu.py`` as
it was at ``--base``, loaded from git, called with the whole-scan ray table it used to hold) and this checkout's
``ConeBeamProjector`` on the same volume and projections. Prints the median time per operation, samples per
second and the ratio, and writes JSON.

Usage: python scripts/bench_joseph_revisions.py [--base 3c7e612] [--size 128] [--views 180] [--rounds 7]
       [--out bench_results/bench_joseph_revisions.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see scripts/setup_env.sh

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_tomo import _cone_geometry  # noqa: E402  (scripts/ is this script's folder)
from monai_ext.tomo import ConeBeamProjector  # noqa: E402
from monai_ext.tomo.rays import geometry_rays  # noqa: E402


def load_revision_kernels(base: str):
    """``joseph_cpu.py`` of revision ``base`` as a module (it imports only numpy and numba)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:monai_ext/tomo/joseph_cpu.py"],
                            check=True, capture_output=True, text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="joseph_base_"))
    path = folder / "joseph_cpu_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("joseph_cpu_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="3c7e612", help="git revision to compare with")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="bench_results/bench_joseph_revisions.json")
    args = parser.parse_args()

    size, n_views = args.size, args.views
    geometry = _cone_geometry(size, n_views, size)  # the geometry of bench_tomo.py's cone-beam rows
    samples = n_views * size**3
    base = load_revision_kernels(args.base)
    origins, directions = (t.reshape(-1, 3).contiguous().numpy() for t in geometry_rays(geometry, torch.float64))
    op = ConeBeamProjector(geometry, backend="numba")
    x = torch.rand(1, 1, *geometry.image_shape, generator=torch.Generator().manual_seed(0))
    y = op(x)
    image, proj = x.reshape(1, *geometry.image_shape).numpy(), y.reshape(1, -1).numpy()
    calls = {
        ("forward", args.base): lambda: base.joseph_forward_cpu(image, origins, directions, geometry.pixel_size),
        ("forward", "checkout"): lambda: op(x),
        ("adjoint", args.base): lambda: base.joseph_adjoint_cpu(proj, origins, directions, geometry.image_shape, geometry.pixel_size),
        ("adjoint", "checkout"): lambda: op.adjoint(y),
    }
    for fn in calls.values():
        fn()  # compile
    times = {key: [] for key in calls}
    for _ in range(args.rounds):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    rows = []
    print(f"cone beam {size}^3, {n_views} views, {size}^2 panel, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"{'op':<8} {'revision':<10} {'median (s)':>11} {'samples/s':>11}")
    for (name, rev), ts in times.items():
        med = statistics.median(ts)
        rows.append({"op": name, "revision": rev, "median_seconds": med, "samples_per_s": samples / med, "seconds": ts})
        print(f"{name:<8} {rev:<10} {med:>11.3f} {samples / med:>11.2e}")
    speedups = {name: statistics.median(times[(name, args.base)]) / statistics.median(times[(name, "checkout")]) for name in ("forward", "adjoint")}
    for name, value in speedups.items():
        print(f"speed-up {name}: {value:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"base": args.base, "size": size, "views": n_views, "rows": rows, "speedup": speedups}, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
