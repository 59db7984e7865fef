#!/usr/bin/env python
"""Benchmark of the monai_ext.tomo projectors against skimage, ASTRA and diffct, in the same run.

(a) 2D parallel beam, 256 x 256 image, 180 views over 180 degrees, 367 detector bins: forward, adjoint and FBP
    time and peak memory for ours, ``skimage.transform.radon/iradon`` and, when ``astra-toolbox`` is installed,
    ASTRA's CPU ``line`` and ``linear`` projectors (and its CPU FBP); ratios ours / ASTRA.
(b) 3D circular cone beam, 128^3 volume, 180 views, 128 x 128 panel: forward, adjoint and FDK time, peak memory
    and interpolated samples per second (rays x Joseph planes per ray) for both our backends (numba and
    ``grid_sample``) and, when ``diffct`` is installed, diffct's CPU (PyTorch) projector on the same geometry;
    on CUDA too when a GPU is present (ours against diffct's CUDA path).
(c) Clinical size (``--clinical``): 256^3, 360 views, 256 x 256 panel, the numba backend and FDK once, with peak
    memory against the projectors' memory budget (on a GPU, the ``grid_sample`` backend and diffct's CUDA path
    too); ``--size512`` adds 512^3 (360 views, 512 x 512 panel).

Peak memory is the growth of the process's resident set during the call (``VmHWM`` after resetting it), so it
covers torch, numpy, numba and ASTRA's C++ allocations alike; it is taken in a call of its own, with a 1 MiB glibc
mmap threshold, so that blocks freed by earlier calls cannot hide a call's peak (the timed calls run with 32 MiB);
on CUDA, ``torch.cuda.max_memory_allocated``.

The peers are optional and not dependencies of the project; to include them (CPU use; the wheels carry CUDA
libraries they load at import):
    pip install --no-deps --target /tmp/peers diffct astra-toolbox nvidia-cuda-runtime-cu12 nvidia-cufft-cu12
    LD_LIBRARY_PATH=/tmp/peers/nvidia/cuda_runtime/lib:/tmp/peers/nvidia/cufft/lib PYTHONPATH=/tmp/peers \
        python scripts/bench_tomo.py --clinical

Usage: python scripts/bench_tomo.py [--out bench_results/bench_tomo.json] [--repeats 3] [--quick]
       [--clinical] [--size512] [--markdown docs/tomo_benchmark.md]
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
from monai_ext.workflows.memory import peak_resident_growth  # noqa: E402


def _processor() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def measure(fn, repeats: int, device: str = "cpu", warmup: bool = True) -> dict:
    """Median wall time over ``repeats`` calls after one warm-up, and the peak memory growth of one more call.

    The peak call runs with a 1 MiB glibc mmap threshold, so that large blocks freed by earlier calls are returned
    to the system and cannot hide this call's own peak in the resident set; the timed calls run with 32 MiB (the
    top of glibc's adaptive threshold on 64-bit), so that they do not pay a page fault for every large buffer.
    """
    if warmup:
        fn()  # warm-up: JIT compilation, caches
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        _, peak = peak_resident_growth(fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mib": max(peak, 0) / 2**20}


def bench_2d(repeats: int) -> list[dict]:
    rows = []
    geometry = ParallelBeamGeometry((256, 256), 1.0, uniform_angles(180), n_det=367, det_spacing=1.0)
    image = shepp_logan(2, 256.0).rasterize((256, 256), 1.0).numpy().astype(np.float32)
    x = torch.from_numpy(image)[None, None]
    op = ParallelBeamProjector(geometry)
    sino = op(x)
    rows.append({"case": "2D parallel", "method": "monai_ext (numba CPU)", "op": "forward", **measure(lambda: op(x), repeats)})
    rows.append({"case": "2D parallel", "method": "monai_ext (numba CPU)", "op": "adjoint", **measure(lambda: op.adjoint(sino), repeats)})
    rows.append({"case": "2D parallel", "method": "monai_ext (numba CPU)", "op": "fbp", **measure(lambda: fbp(sino, geometry), repeats)})

    from skimage.transform import iradon, radon

    theta = -np.degrees(geometry.angles)  # skimage turns the other way
    sk_sino = radon(image, theta=theta, circle=False)
    rows.append({"case": "2D parallel", "method": "skimage", "op": "forward", **measure(lambda: radon(image, theta=theta, circle=False), repeats)})
    rows.append({"case": "2D parallel", "method": "skimage", "op": "fbp", **measure(lambda: iradon(sk_sino, theta=theta, output_size=256, circle=False), repeats)})

    try:
        import astra
    except ImportError:
        print("astra-toolbox not installed: ASTRA rows skipped (pip install astra-toolbox to compare)")
        return rows
    vol_geom = astra.create_vol_geom(256, 256)
    proj_geom = astra.create_proj_geom("parallel", 1.0, 367, np.asarray(geometry.angles))
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


def _cone_geometry(size: int, n_views: int, panel: int) -> ConeBeamGeometry:
    return ConeBeamGeometry((size,) * 3, 256.0 / size, uniform_angles(n_views, 2 * math.pi), (panel, panel),
                            1.5 * 256.0 / panel * 1.1, source_to_center=1000.0, source_to_detector=1500.0)


def _diffct_projector(geometry: ConeBeamGeometry, device: str):
    """diffct's projector on our geometry (its own trajectory convention; the same sizes and sample counts)."""
    import diffct

    trajectory = diffct.circular_trajectory_3d(geometry.n_angles, geometry.source_to_center, geometry.source_to_detector,
                                                device=device, dtype=torch.float32)
    rows, cols = geometry.det_shape
    backend = "torch" if device == "cpu" else "auto"
    return diffct.Projector(trajectory, tuple(geometry.image_shape), (cols, rows), beam="cone",
                            detector_spacing=tuple(reversed(geometry.det_spacing)), voxel_spacing=geometry.pixel_size[0],
                            backend=backend)


def bench_3d(repeats: int, device: str, size: int, n_views: int = 180, panel: int | None = None,
             backends=("numba", "torch"), peers: bool = True, warmup: bool = True) -> list[dict]:
    panel = panel or size
    geometry = _cone_geometry(size, n_views, panel)
    x = random_ellipsoids(3, 256.0, seed=0).rasterize(geometry.image_shape, geometry.pixel_size, supersample=1)[None, None].to(device)
    samples = n_views * panel * panel * size  # rays x planes of the driving axis (cubic volume)
    case = f"3D cone {size}^3, {n_views} views, {panel}^2 panel"
    rows = []
    proj = None
    for backend in backends if device == "cpu" else ("torch",):
        op = ConeBeamProjector(geometry, backend=backend)
        label = f"monai_ext ({'numba CPU' if backend == 'numba' else 'grid_sample CPU'})" if device == "cpu" else f"monai_ext ({torch.cuda.get_device_name()})"
        proj = op(x) if proj is None else proj
        for name, fn in (("forward", lambda: op(x)), ("adjoint", lambda: op.adjoint(proj))):
            row = {"case": case, "method": label, "op": name, **measure(fn, repeats, device, warmup),
                   "budget_mib": op.memory_budget / 2**20}
            row["samples_per_s"] = samples / row["seconds"]
            rows.append(row)
            print(f"  {case} {label} {name}: {row['seconds']:.3f} s, {row['peak_mib']:.0f} MiB", flush=True)
    label = "monai_ext FDK" if device == "cpu" else f"monai_ext FDK ({torch.cuda.get_device_name()})"
    rows.append({"case": case, "method": label, "op": "fdk", **measure(lambda: fdk(proj, geometry), repeats, device, warmup)})
    print(f"  {case} FDK: {rows[-1]['seconds']:.3f} s, {rows[-1]['peak_mib']:.0f} MiB", flush=True)
    if not peers:
        return rows
    try:
        dp = _diffct_projector(geometry, device)
    except ImportError:
        print("diffct not installed: diffct rows skipped (see the docstring to compare)")
        return rows
    volume = x[0, 0].contiguous()
    sino = dp(volume)
    label = "diffct (torch CPU)" if device == "cpu" else f"diffct ({torch.cuda.get_device_name()})"
    for name, fn in (("forward", lambda: dp(volume)), ("adjoint", lambda: dp.backproject(sino))):
        row = {"case": case, "method": label, "op": name, **measure(fn, repeats, device, warmup)}
        row["samples_per_s"] = samples / row["seconds"]
        rows.append(row)
        print(f"  {case} {label} {name}: {row['seconds']:.3f} s, {row['peak_mib']:.0f} MiB", flush=True)
    return rows


def _ratios(rows: list[dict]) -> dict:
    """ours / peer time for every (case, op) that both measured (<= 1.0: ours at least as fast)."""
    ratios = {}
    for r in rows:
        if r["method"].startswith(("ASTRA", "diffct")):
            for o in rows:
                if o["case"] == r["case"] and o["op"] == r["op"] and o["method"].startswith("monai_ext"):
                    ratios[f"{r['case']}; {r['op']}; {o['method']} / {r['method']}"] = o["seconds"] / r["seconds"]
    return ratios


def _table(rows: list[dict]) -> str:
    lines = ["| case | method | op | time (s) | peak memory (MiB) | samples/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        sps = f"{r['samples_per_s']:.2e}" if "samples_per_s" in r else ""
        lines.append(f"| {r['case']} | {r['method']} | {r['op']} | {r['seconds']:.4f} | {r['peak_mib']:.1f} | {sps} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/bench_tomo.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64^3 instead of 128^3 for the cone-beam case")
    parser.add_argument("--clinical", action="store_true", help="add 256^3, 360 views, 256^2 panel (each op once)")
    parser.add_argument("--size512", action="store_true", help="add 512^3, 360 views, 512^2 panel (numba and FDK, once)")
    parser.add_argument("--markdown", default=None, help="also write the table and ratios as Markdown to this file")
    args = parser.parse_args()

    rows = bench_2d(args.repeats)
    size = 64 if args.quick else 128
    rows += bench_3d(max(1, args.repeats - 1), "cpu", size)
    if args.clinical:
        rows += bench_3d(1, "cpu", 256, 360, 256, backends=("numba",), peers=False, warmup=False)
    if args.size512:
        rows += bench_3d(1, "cpu", 512, 360, 512, backends=("numba",), peers=False, warmup=False)
    if torch.cuda.is_available():
        rows += bench_3d(args.repeats, "cuda", size)
        if args.clinical:
            rows += bench_3d(1, "cuda", 256, 360, 256)
        if args.size512:
            rows += bench_3d(1, "cuda", 512, 360, 512)

    ratios = _ratios(rows)
    print(f"\n{'case':<40} {'method':<28} {'op':<8} {'time (s)':>10} {'peak (MiB)':>11} {'samples/s':>11}")
    for r in rows:
        sps = f"{r['samples_per_s']:.2e}" if "samples_per_s" in r else ""
        print(f"{r['case']:<40} {r['method']:<28} {r['op']:<8} {r['seconds']:>10.4f} {r['peak_mib']:>11.1f} {sps:>11}")
    if ratios:
        print("\nratio ours / peer (<= 1.0 means ours is at least as fast):")
        for key, value in ratios.items():
            print(f"  {key:<100} {value:.3f}")

    info = {
        "machine": platform.machine(),
        "processor": _processor(),
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
    if args.markdown:
        md = Path(args.markdown)
        md.parent.mkdir(parents=True, exist_ok=True)
        text = f"Hardware: {info['processor']}, {info['cpu_count']} cores, torch {info['torch']}" + (
            f", {info['cuda']}" if info["cuda"] else ", no GPU") + "\n\n" + _table(rows) + "\n"
        if ratios:
            text += "\n| ratio (ours / peer, same run) | value |\n|---|---|\n" + "".join(
                f"| {k} | {v:.3f} |\n" for k, v in ratios.items())
        tmp = md.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, md)
        print(f"wrote {md}")


if __name__ == "__main__":
    main()
