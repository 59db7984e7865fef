"""The talk's comparison table for CBCT: PSNR, SSIM, time per volume and memory, per method and scan setting.

Methods are modules ``projections (B, 1, V, rows, cols) -> volume (B, 1, nz, ny, nx)``, run one scan at a time
(fitting a field is per scan). Memory is what the method holds for one volume: for a neural field its parameters
(``NeuralFieldReconstruction.last_fits``: the per-scan field, or backbone + modulation grid), for FDK and TV the
voxel volume they produce (float32), so the column compares representations, not process peaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from monai_ext.io import save_figure
from monai_ext.metrics import psnr
from monai_ext.workflows import evaluate_methods, hardware_name, write_comparison

__all__ = ["PUBLISHED_CBCT_TABLE", "cbct_markdown_table", "compare_cbct_methods"]

# S. Papa, "Deep learning methods for image reconstruction", DLinRT 2024, results table (256^3 thorax CBCT):
# per projection count and method: (PSNR noisy, SSIM noisy, s/vol noisy, PSNR noise-free, SSIM noise-free,
# s/vol noise-free, memory MiB); None where the talk gives "-".
PUBLISHED_CBCT_TABLE = {
    50: {
        "FDK": (14.54, 0.20, 0.8, 16.09, 0.43, 0.8, 100),
        "Iterative": (26.36, 0.70, 7.7, 27.13, 0.71, 30.8, 300),
        "LIRE-L": (29.48, 0.83, 3.9, None, None, None, 2100),
        "NAF": (22.83, 0.58, 161, 24.26, 0.72, 582, 18),
        "CondCBNT": (28.31, 0.80, 124, 30.21, 0.86, 647, 96),
    },
    400: {
        "FDK": (16.43, 0.45, 7, 16.71, 0.65, 7, 100),
        "Iterative": (28.38, 0.78, 87.4, 31.40, 0.91, 174, 600),
        "LIRE-L": (30.70, 0.88, 12.8, None, None, None, 4000),
        "NAF": (25.93, 0.75, 275, 25.04, 0.77, 580, 205),
        "CondCBNT": (29.89, 0.86, 763, 30.63, 0.88, 595, 96),
    },
}


def _memory_mib(method: torch.nn.Module, volume: torch.Tensor) -> float:
    fits = getattr(method, "last_fits", None)
    if fits:
        return float(fits[-1]["field_parameters_mib"])
    return volume[0].numel() * 4 / 2**20


def cbct_markdown_table(results: Mapping[str, Mapping[str, dict]]) -> str:
    """The talk's layout: one row per method, PSNR / SSIM / s per volume for each data set, then memory (MiB).

    Where the scores carry CPU time, each data set also gets a "CPU s/vol" column.
    """
    datasets = list(results)
    methods = list(next(iter(results.values()))) if results else []
    with_cpu = all("cpu_seconds_per_volume" in s for d in datasets for s in results[d].values())
    cpu_header = lambda d: f" | {d}: CPU (s/vol)" if with_cpu else ""  # noqa: E731
    header = "| method | " + " | ".join(f"{d}: PSNR (dB) | {d}: SSIM | {d}: time (s/vol){cpu_header(d)}" for d in datasets) + " | memory (MiB) |"
    rows = [header, "|---|" + ("---|---|---|---|" if with_cpu else "---|---|---|") * len(datasets) + "---|"]
    for m in methods:
        cells = []
        for d in datasets:
            s = results[d][m]
            cells += [f"{s['psnr_db']:.2f} ± {s['psnr_std_db']:.2f}", f"{s['ssim']:.3f} ± {s['ssim_std']:.3f}", f"{s['seconds_per_volume']:.1f}"]
            if with_cpu:
                cells.append(f"{s['cpu_seconds_per_volume']:.1f}")
        rows.append(f"| {m} | " + " | ".join(cells) + f" | {results[datasets[0]][m]['memory_mib']:.3g} |")
    return "\n".join(rows) + "\n"


def _published_table(n_views: int) -> str:
    table = PUBLISHED_CBCT_TABLE.get(int(n_views))
    if table is None:
        return ""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [
        f"| method (published, P={n_views}) | noisy: PSNR (dB) | noisy: SSIM | noisy: time (s/vol) | noise-free: PSNR (dB) | noise-free: SSIM | noise-free: time (s/vol) | memory (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, v in table.items():
        rows.append(f"| {m} | {fmt(v[0], '.2f')} | {fmt(v[1], '.2f')} | {fmt(v[2], 'g')} | {fmt(v[3], '.2f')} | {fmt(v[4], '.2f')} | {fmt(v[5], 'g')} | {fmt(v[6], 'g')} |")
    return "\n".join(rows) + "\n"


def _save_slices(references: torch.Tensor, first: Mapping[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = references[0, 0]
    mid = ref.shape[0] // 2
    panels = [("reference", ref[mid])] + [(f"{m}\n{psnr(v[0], references[0]):.1f} dB", v[0, 0, mid]) for m, v in first.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 2.5), squeeze=False)
    for ax, (title, image) in zip(axes[0], panels):
        ax.imshow(image.numpy(), cmap="gray", vmin=float(ref.min()), vmax=float(ref.max()))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def compare_cbct_methods(
    methods: Mapping[str, torch.nn.Module],
    datasets: Mapping[str, object],
    output_dir: str,
    device=None,
    n_views: int = 50,
    hardware: str | None = None,
    method_names: list[str] | None = None,
    published_views: int | None = None,
) -> dict:
    """Evaluate every method on every data set; write ``comparison.json``, ``comparison.md`` and ``examples_<set>.png``.

    ``comparison.md`` holds the measured table and the published one for ``published_views`` projections.

    Args:
        methods: modules by name.
        datasets: data sets (``names``, ``volumes``, ``projections``, ``i0``) by name.
        output_dir: destination folder.
        device: where the methods run.
        n_views: projection count of the data sets (recorded in ``comparison.json``).
        published_views: the talk's projection count whose rows are shown beside the measured ones (default
            ``n_views``). At a reduced scale the equivalent of the talk's setting is the one with the same angular
            undersampling (views per detector column), not the same number of views.
        hardware: description stored with the timings (default: the device's).
        method_names: evaluate only these methods (default: all).

    Raises:
        ValueError: no method or no data set, or a name of ``method_names`` not in ``methods``.
    """
    if method_names:
        unknown = [m for m in method_names if m not in methods]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(methods)}.")
        methods = {m: methods[m] for m in method_names}
    if not methods or not datasets:
        raise ValueError(f"need at least one method and one data set, got {list(methods)} and {list(datasets)}.")
    out = Path(output_dir)
    results = {}
    for dname, scans in datasets.items():
        results[dname], first = evaluate_methods(methods, scans, device, batch_size=1, keep=1, per="volume", memory=_memory_mib)
        _save_slices(scans.volumes[:1], first, out / f"examples_{dname}.png")
    table = cbct_markdown_table(results)
    published_views = int(n_views if published_views is None else published_views)
    published = _published_table(published_views)
    dev = torch.device(device or "cpu")
    summary = {
        "datasets": {d: {"cases": list(s.names), "i0": s.i0} for d, s in datasets.items()},
        "n_views": int(n_views),
        "published_views": published_views,
        "device": str(dev),
        "hardware": hardware or hardware_name(dev),
        "results": results,
        "markdown": table,
        "published_markdown": published,
    }
    return write_comparison(summary, out, extra_markdown=published)
