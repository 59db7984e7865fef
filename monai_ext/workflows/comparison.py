"""Side-by-side evaluation of reconstruction methods: PSNR/SSIM/time tables, example figures, noise-robustness curves.

Data sets are any objects with ``names``, ``images`` ``(n, 1, *image_shape)`` and ``projections``
``(n, 1, *projection_shape)`` (e.g. :class:`monai_ext.data.CTScans`); methods are modules ``projections -> images``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from monai_ext.io import atomic_path, save_figure, save_json
from monai_ext.metrics import psnr, ssim

from .methods import count_parameters

__all__ = ["reconstruct_all", "evaluate_methods", "compare_methods", "markdown_table", "noise_robustness", "plot_noise_robustness", "hardware_name"]

_logger = logging.getLogger(__name__)


def reconstruct_all(method: torch.nn.Module, projections: torch.Tensor, device=None, batch_size: int = 16) -> tuple[torch.Tensor, float]:
    """Reconstruct every case (no gradients, eval mode); returns ``(images on CPU, seconds per case)``."""
    device = torch.device(device or "cpu")
    method = method.to(device).eval()
    outputs, start = [], time.perf_counter()
    with torch.no_grad():
        for chunk in projections.split(int(batch_size)):
            outputs.append(method(chunk.to(device)).float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / max(1, len(projections))
    return torch.cat(outputs), seconds


def evaluate_methods(methods: Mapping[str, torch.nn.Module], scans, device=None, batch_size: int = 16, keep: int = 0) -> tuple[dict, dict]:
    """Score every method on one data set.

    Args:
        methods: modules by name.
        scans: data set (``names``, ``images``, ``projections``).
        device: where the methods run.
        batch_size: cases per call.
        keep: number of leading reconstructions to return per method (for figures).

    Returns:
        ``(scores, kept)``: ``scores[name]`` has ``psnr_db`` (mean), ``psnr_std_db``, ``ssim``, ``seconds_per_slice``,
        ``parameters`` and per-case ``psnr_per_case``; ``kept[name]`` the first ``keep`` reconstructions.
    """
    scores, kept = {}, {}
    references = scans.images
    for name, method in methods.items():
        recon, seconds = reconstruct_all(method, scans.projections, device, batch_size)
        values = [psnr(recon[i], references[i]) for i in range(len(references))]
        similarities = [ssim(recon[i], references[i]) for i in range(len(references))]
        scores[name] = {
            "psnr_db": round(float(np.mean(values)), 3),
            "psnr_std_db": round(float(np.std(values)), 3),
            "ssim": round(float(np.mean(similarities)), 4),
            "seconds_per_slice": round(seconds, 5),
            "parameters": count_parameters(method),
            "psnr_per_case": [round(float(v), 3) for v in values],
        }
        if keep:
            kept[name] = recon[:keep]
    return scores, kept


def markdown_table(results: Mapping[str, Mapping[str, dict]], time_unit: str = "ms") -> str:
    """A markdown table, one row per method and PSNR/SSIM/time columns per data set, plus parameter counts."""
    datasets = list(results)
    methods = list(next(iter(results.values()))) if results else []
    scale = {"ms": 1e3, "s": 1.0}[time_unit]
    header = "| method | " + " | ".join(f"{d}: PSNR (dB) | {d}: SSIM | {d}: time/slice ({time_unit})" for d in datasets) + " | learned parameters (trainable + fixed) |"
    rule = "|---|" + "---|---|---|" * len(datasets) + "---|"
    rows = [header, rule]
    for m in methods:
        cells = []
        for d in datasets:
            s = results[d][m]
            cells += [f"{s['psnr_db']:.2f} ± {s['psnr_std_db']:.2f}", f"{s['ssim']:.3f}", f"{s['seconds_per_slice'] * scale:.1f}"]
        p = results[datasets[0]][m]["parameters"]
        params = "0" if not (p["trainable"] or p["fixed"]) else f"{p['trainable']:,} + {p['fixed']:,}"
        rows.append(f"| {m} | " + " | ".join(cells) + f" | {params} |")
    return "\n".join(rows) + "\n"


def _save_examples(references: torch.Tensor, kept: Mapping[str, torch.Tensor], names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cases, columns = len(references), 1 + len(kept)
    fig, axes = plt.subplots(n_cases, columns, figsize=(1.9 * columns, 2.05 * n_cases), squeeze=False)
    for row in range(n_cases):
        ref = references[row, 0].numpy()
        vmin, vmax = float(ref.min()), float(ref.max())
        panels = [("ground truth", ref)] + [(f"{m}\n{psnr(kept[m][row], references[row]):.1f} dB", kept[m][row, 0].numpy()) for m in kept]
        for ax, (title, image) in zip(axes[row], panels):
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_title(title if row == 0 or title == "ground truth" else title.split("\n")[-1], fontsize=8)
            ax.axis("off")
        axes[row, 0].set_title(f"{names[row]}", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def compare_methods(
    methods: Mapping[str, torch.nn.Module],
    datasets: Mapping[str, object],
    output_dir: str,
    device=None,
    batch_size: int = 16,
    n_examples: int = 2,
    hardware: str | None = None,
) -> dict:
    """Evaluate every method on every data set; write ``comparison.json``, ``comparison.md`` and example PNGs.

    Args:
        methods: modules ``projections -> images`` by name.
        datasets: data sets by name.
        output_dir: destination folder.
        device: where the methods run.
        batch_size: cases per call.
        n_examples: leading cases of each data set shown in ``examples_<dataset>.png`` (0: none).
        hardware: description stored with the timings.

    Returns:
        ``{"results": {dataset: {method: scores}}, "markdown": str, ...}`` as written to ``comparison.json``.

    Raises:
        ValueError: no method or no data set.
    """
    if not methods or not datasets:
        raise ValueError(f"need at least one method and one data set, got {list(methods)} and {list(datasets)}.")
    out = Path(output_dir)
    results = {}
    for dname, scans in datasets.items():
        scores, kept = evaluate_methods(methods, scans, device, batch_size, keep=n_examples)
        results[dname] = scores
        if n_examples:
            _save_examples(scans.images[:n_examples], kept, list(scans.names[:n_examples]), out / f"examples_{dname}.png")
    table = markdown_table(results)
    summary = {
        "datasets": {d: {"cases": len(s.names)} for d, s in datasets.items()},
        "device": str(device or "cpu"),
        "hardware": hardware or hardware_name(device),
        "results": results,
        "markdown": table,
    }
    return write_comparison(summary, out)


def write_comparison(summary: dict, output_dir: str | Path) -> dict:
    """Write ``summary`` as ``comparison.json`` and its ``markdown`` table as ``comparison.md``; log the table."""
    out = Path(output_dir)
    save_json(summary, out / "comparison.json")
    with atomic_path(out / "comparison.md", suffix=".md") as tmp:
        tmp.write_text(summary["markdown"])
    _logger.info("method comparison (%s):\n%s", summary["hardware"], summary["markdown"])
    return summary


def hardware_name(device) -> str:
    """What timings were measured on: the GPU's name, or the CPU architecture and torch's thread count."""
    import platform

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"


def noise_robustness(
    methods: Mapping[str, torch.nn.Module],
    scans_at: Callable[[float | None], object],
    levels: Sequence[float | None],
    output_dir: str,
    device=None,
    batch_size: int = 16,
    training_level: float | None = None,
) -> dict:
    """Mean PSNR/SSIM of every method at every noise level (``i0``, photons per bin; ``None``: noise-free).

    Args:
        methods: modules by name (e.g. ``"lpd"`` and ``"lpd (trained noise-free)"``).
        scans_at: ``i0 -> data set`` simulated at that level.
        levels: the test levels.
        output_dir: where ``noise_robustness.json`` and ``noise_robustness.md`` go.
        device: where the methods run.
        batch_size: cases per call.
        training_level: the ``i0`` the models were trained at, stored with the results.

    Returns:
        ``{"levels": [...], "psnr_db": {method: [...]}, "ssim": {method: [...]}, ...}``.
    """
    if not levels:
        raise ValueError("levels must list at least one i0 (or None for noise-free).")
    psnrs: dict[str, list[float]] = {m: [] for m in methods}
    ssims: dict[str, list[float]] = {m: [] for m in methods}
    for level in levels:
        scores, _ = evaluate_methods(methods, scans_at(level), device, batch_size)
        for m in methods:
            psnrs[m].append(scores[m]["psnr_db"])
            ssims[m].append(scores[m]["ssim"])
        _logger.info("i0 = %s: %s", level, ", ".join(f"{m} {psnrs[m][-1]:.2f} dB" for m in methods))
    study = {"levels": list(levels), "training_level": training_level, "psnr_db": psnrs, "ssim": ssims}
    out = Path(output_dir)
    save_json(study, out / "noise_robustness.json")
    label = ["noise-free" if v is None else f"{v:.0e}" for v in levels]
    lines = ["| method | " + " | ".join(f"I0 {t}" for t in label) + " |", "|---|" + "---|" * len(levels)]
    lines += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in psnrs[m]) + " |" for m in methods]
    with atomic_path(out / "noise_robustness.md", suffix=".md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return study


def plot_noise_robustness(study: Mapping, path: str, title: str = "PSNR vs test noise level", metric: str = "psnr_db") -> Path:
    """Plot ``metric`` against the test ``i0`` (log axis; noise-free drawn one decade beyond the highest ``i0``).

    Methods whose name contains ``"noise-free"`` are drawn dashed in the colour of their namesake.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = study["levels"]
    finite = [v for v in levels if v is not None]
    top = max(finite) * 10 if finite else 1.0
    xs = [top if v is None else v for v in levels]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colours: dict[str, object] = {}
    for name, values in study[metric].items():
        base = name.split(" (")[0]
        dashed = "noise-free" in name
        if base not in colours:
            colours[base] = f"C{len(colours) % 10}"
        ax.plot(xs, values, "--" if dashed else "-", marker="o" if not dashed else "x", color=colours[base], label=name, lw=1.4, ms=4)
    ax.set_xscale("log")
    ticks = sorted(set(xs))
    ax.set_xticks(ticks)
    ax.set_xticklabels(["noise-free" if t == top and None in levels else f"{t:.0e}" for t in ticks], fontsize=8)
    if study.get("training_level") is not None:
        ax.axvline(study["training_level"], color="grey", lw=0.8, ls=":")
        ax.text(study["training_level"], ax.get_ylim()[0], " training I0", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("test I0 (photons per detector bin)")
    ax.set_ylabel("PSNR (dB)" if metric == "psnr_db" else metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)
