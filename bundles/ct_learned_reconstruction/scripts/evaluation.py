"""The bundle's comparison of methods (``evaluate.json``) and noise study (``noise_study.json``): tables, example
figures, PSNR against the test noise level. Scores come from :func:`monai_ext.workflows.evaluate_methods`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from monai_ext.io import atomic_path, save_figure, save_json
from monai_ext.metrics import psnr
from monai_ext.workflows import evaluate_methods, hardware_name, write_comparison

__all__ = ["compare_methods", "markdown_table", "noise_robustness", "plot_noise_robustness"]

_logger = logging.getLogger("ct_learned_reconstruction")


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
        scans_at: ``scans_at(i0=level)`` is the data set simulated at that level.
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
        scores, _ = evaluate_methods(methods, scans_at(i0=level), device, batch_size)
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
