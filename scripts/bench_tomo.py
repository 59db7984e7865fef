#!/usr/bin/env python
"""Benchmark of the monai_ext.tomo projectors against skimage and ASTRA's CPU projectors, in the same run.

(a) 2D parallel beam, 256 x 256 image, 180 views over 180 degrees, 367 detector bins: forward, adjoint and FBP
    time and peak memory for ours, ``skimage.transform.radon/iradon`` and, when ``astra-toolbox`` is installed,
    ASTRA's CPU ``line`` and ``linear`` projectors (and its CPU FBP); ratios ours / ASTRA.
(b) 3D circular cone beam, 128^3 volume, 180 views, 128 x 128 panel: forward, adjoint and FDK time, and
    interpolated samples per second (rays x Joseph planes per ray); on CUDA too when a GPU is present.

Peak memory is the growth of the process's resident set during the call (``VmHWM`` after resetting it), so it
covers torch, numpy and ASTRA's C++ allocations alike; on CUDA, ``torch.cuda.max_memory_allocated``.

Usage: python scripts/bench_tomo.py [--out bench_results/bench_tomo.json] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see scripts/setup_env.sh

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai_ext.phantoms import random_ellipsoids, shepp_logan  # noqa: E402
from monai_ext.tomo import ConeBeamGeometry, ConeBeamProjector, ParallelBeamGeometry, ParallelBeamProjector, fbp, fdk, uniform_angles  # noqa: E402


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def measure(fn, repeats: int, device: str = "cpu") -> dict:
    """Median wall time over ``repeats`` calls after one warm-up, and the peak memory growth of one call."""
    fn()  # warm-up: JIT compilation, caches
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak()
        base = _status("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _status("VmHWM")) - base
    return {"seconds": statistics.median(times), "peak_mib": max(peak, 0) / 2**20}


def bench_2d(repeats: int) -> list[dict]:
    rows = []
    geom = ParallelBeamGeometry((256, 256), 1.0, uniform_angles(180), n_det=367, det_spacing=1.0)
    image = shepp_logan(2, 256.0).rasterize((256, 256), 1.0).numpy().astype(np.float32)
    x = torch.from_numpy(image)[None, None]
    op = ParallelBeamProjector(geom)
    sino = op(x)
    rows.append({"case": "2D parallel", "method": "monai_ext (numba CPU)", "op": "forward", **measure(lambda: op(x), repeats)})
    rows.append({"case": "2D parallel", "method": "monai_ext (numba CPU)", "op": "adjoint", **measure(lambda: op.adjoint(sino), repeats)})
    rows.append({"case": "2D parallel", "method": "monai_ext (numba CPU)", "op": "fbp", **measure(lambda: fbp(sino, geom), repeats)})

    from skimage.transform import iradon, radon

    theta = -np.degrees(geom.angles)  # skimage turns the other way
    sk_sino = radon(image, theta=theta, circle=False)
    rows.append({"case": "2D parallel", "method": "skimage", "op": "forward", **measure(lambda: radon(image, theta=theta, circle=False), repeats)})
    rows.append({"case": "2D parallel", "method": "skimage", "op": "fbp", **measure(lambda: iradon(sk_sino, theta=theta, output_size=256, circle=False), repeats)})

    try:
        import astra
    except ImportError:
        print("astra-toolbox not installed: ASTRA rows skipped (pip install astra-toolbox to compare)")
        return rows
    vol_geom = astra.create_vol_geom(256, 256)
    proj_geom = astra.create_proj_geom("parallel", 1.0, 367, np.asarray(geom.angles))
    astra_sino = sino[0, 0].numpy()
    for kind in ("line", "linear"):
        pid = astra.create_projector(kind, proj_geom, vol_geom)

        def fp(pid=pid):
            sid, _ = astra.create_sino(image, pid)
            astra.data2d.delete(sid)

        def bp(pid=pid):
            bid, _ = astra.create_backprojection(astra_sino, pid)
            astra.data2d.delete(bid)

        def astra_fbp(pid=pid):
            sid = astra.data2d.create("-sino", proj_geom, astra_sino)
            rid = astra.data2d.create("-vol", vol_geom)
            cfg = astra.astra_dict("FBP")
            cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid)
            aid = astra.algorithm.create(cfg)
            astra.algorithm.run(aid)
            astra.algorithm.delete(aid)
            astra.data2d.delete([sid, rid])

        method = f"ASTRA CPU ({kind})"
        rows.append({"case": "2D parallel", "method": method, "op": "forward", **measure(fp, repeats)})
        rows.append({"case": "2D parallel", "method": method, "op": "adjoint", **measure(bp, repeats)})
        rows.append({"case": "2D parallel", "method": method, "op": "fbp", **measure(astra_fbp, repeats)})
        astra.projector.delete(pid)
    return rows


def bench_3d(repeats: int, device: str, size: int) -> list[dict]:
    n_views = 180
    geom = ConeBeamGeometry((size,) * 3, 256.0 / size, uniform_angles(n_views, 2 * math.pi), (size, size), 1.5 * 256.0 / size * 1.1,
                            source_to_center=1000.0, source_to_detector=1500.0)
    op = ConeBeamProjector(geom).to(device)
    x = random_ellipsoids(3, 256.0, seed=0).rasterize(geom.image_shape, geom.pixel_size, supersample=1)[None, None].to(device)
    proj = op(x)
    samples = n_views * size * size * size  # rays x planes of the driving axis (cubic volume)
    label = "monai_ext (numba CPU)" if device == "cpu" else f"monai_ext ({torch.cuda.get_device_name()})"
    rows = []
    for name, fn in (("forward", lambda: op(x)), ("adjoint", lambda: op.adjoint(proj)), ("fdk", lambda: fdk(proj, geom))):
        row = {"case": f"3D cone {size}^3", "method": label, "op": name, **measure(fn, repeats, device)}
        if name != "fdk":
            row["samples_per_s"] = samples / row["seconds"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/bench_tomo.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64^3 instead of 128^3 for the cone-beam case")
    args = parser.parse_args()

    rows = bench_2d(args.repeats)
    size = 64 if args.quick else 128
    rows += bench_3d(max(1, args.repeats - 1), "cpu", size)
    if torch.cuda.is_available():
        rows += bench_3d(args.repeats, "cuda", size)

    ratios = {}
    ours = {r["op"]: r["seconds"] for r in rows if r["case"] == "2D parallel" and r["method"].startswith("monai_ext")}
    for r in rows:
        if r["case"] == "2D parallel" and r["method"].startswith("ASTRA"):
            ratios[f"{r['op']} ours/{r['method']}"] = ours[r["op"]] / r["seconds"]

    print(f"\n{'case':<16} {'method':<34} {'op':<8} {'time (s)':>10} {'peak (MiB)':>11} {'samples/s':>11}")
    for r in rows:
        sps = f"{r['samples_per_s']:.2e}" if "samples_per_s" in r else ""
        print(f"{r['case']:<16} {r['method']:<34} {r['op']:<8} {r['seconds']:>10.4f} {r['peak_mib']:>11.1f} {sps:>11}")
    if ratios:
        print("\nratio ours / ASTRA CPU (<= 1.0 means ours is at least as fast):")
        for key, value in ratios.items():
            print(f"  {key:<40} {value:.2f}")

    info = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"info": info, "rows": rows, "ratios": ratios}, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
