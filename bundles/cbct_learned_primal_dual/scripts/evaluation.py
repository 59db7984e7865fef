"""Side-by-side evaluation of volume (CBCT) reconstruction methods in the form of Papa's DLinRT 2024 table.

For every projection count and noise setting: PSNR and SSIM (mean and standard deviation over the test volumes,
each against its reference's range), reconstruction time per volume and peak memory of the reconstruction
(:func:`monai_ext.workflows.memory.measure_peak_memory`), for every method, scored by
:func:`monai_ext.workflows.evaluate_methods`. Data sets are any objects with
``names``, ``volumes`` ``(n, 1, nz, ny, nx)`` and ``projections`` (e.g. :class:`monai_ext.data.CBCTScans`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from monai_ext.io import save_figure
from monai_ext.metrics import psnr
from monai_ext.workflows import config_content, evaluate_methods, hardware_name, orthogonal_slices, write_comparison

__all__ = ["compare_volume_methods", "volume_table", "trained_methods"]
SETTINGS = ("noisy", "noise_free")


def trained_methods(views, setting: str, *, inference_config: str, bundle_root: str, device, method_names, volume_shape, voxel_size: float,
                    det_shape, scan: str, i0: float) -> dict:
    """The methods ``method_names`` of ``inference.json`` at ``views`` projections for ``setting`` (``"noisy"`` or
    ``"noise_free"``), with their trained weights: what :func:`compare_volume_methods` evaluates."""
    learned = [m for m in ("lpd", "invertible_lpd") if m in method_names]
    networks = config_content(
        inference_config, "trained_networks", bundle_root=bundle_root, device=device, n_views=int(views), noise_free=setting == "noise_free",
        volume_shape=volume_shape, voxel_size=voxel_size, det_shape=det_shape, scan=scan, i0=i0, learned_methods=learned,
    )
    return {name: networks[name] for name in method_names}


def volume_table(results: Mapping[str, Mapping[str, Mapping[str, dict]]]) -> str:
    """A markdown table in the talk's form: rows (projections, method), columns noisy / noise-free, memory.

    Args:
        results: ``results[projections][setting][method]`` scores, ``setting`` in ``("noisy", "noise_free")``.
    """
    header = "| P. | method | noisy PSNR (dB) | noisy SSIM | time (s/vol) | noise-free PSNR (dB) | noise-free SSIM | time (s/vol) | mem. (MiB) |"
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    for views, settings in results.items():
        methods = list(dict.fromkeys(m for s in settings.values() for m in s))
        for m in methods:
            cells = []
            for setting in SETTINGS:
                s = settings.get(setting, {}).get(m)
                cells += ["-", "-", "-"] if s is None else [f"{s['psnr_db']:.2f} ± {s['psnr_std_db']:.2f}", f"{s['ssim']:.3f} ± {s['ssim_std']:.3f}", f"{s['seconds_per_volume']:.2f}"]
            memory = max(s[m]["peak_memory_mib"] for s in settings.values() if m in s)
            rows.append(f"| {views} | {m} | " + " | ".join(cells) + f" | {memory:.0f} |")
    return "\n".join(rows) + "\n"


def _save_examples(reference: torch.Tensor, kept: Mapping[str, torch.Tensor], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = orthogonal_slices(reference)
    panels = [("reference", ref)] + [(f"{m}: {psnr(r[0], reference):.1f} dB", orthogonal_slices(r[0])) for m, r in kept.items()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.0, 2.1 * len(panels)), squeeze=False)
    for ax, (title, image) in zip(axes[:, 0], panels):
        ax.imshow(image, cmap="gray", vmin=float(ref.min()), vmax=float(ref.max()))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{name}: axial | coronal | sagittal", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def compare_volume_methods(
    methods: Callable[[str, str], Mapping[str, torch.nn.Module]],
    datasets: Mapping[str, Mapping[str, object]],
    output_dir: str,
    device=None,
    n_examples: int = 1,
    hardware: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> dict:
    """Evaluate the methods of every projection count on its data sets; write ``comparison.json``/``.md`` and PNGs.

    Args:
        methods: ``methods(projections, setting)``: modules ``projections -> volumes`` by name for that projection
            count and setting (geometry and tuned weights differ between them).
        datasets: ``datasets[projections][setting]``, ``setting`` ``"noisy"`` or ``"noise_free"``.
        output_dir: destination folder.
        device: where the methods run.
        n_examples: leading cases shown in ``examples_<projections>_<setting>.png`` (orthogonal slices).
        hardware: description stored with the timings (default: the device's name).
        notes: free-text remarks stored in ``comparison.json`` (e.g. which weights served which setting).

    Returns:
        ``{"results": {projections: {setting: {method: scores}}}, "markdown": str, ...}``.

    Raises:
        ValueError: an unknown setting.
    """
    out = Path(output_dir)
    results: dict = {}
    for views, settings in datasets.items():
        results[views] = {}
        for setting, scans in settings.items():
            if setting not in SETTINGS:
                raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}.")
            scores, kept = evaluate_methods(methods(views, setting), scans, device, batch_size=1, keep=n_examples, per="volume", memory="peak")
            results[views][setting] = scores
            for i in range(min(n_examples, len(scans.names))):
                _save_examples(scans.volumes[i], {m: r[i : i + 1] for m, r in kept.items()}, scans.names[i], out / f"examples_{views}_{setting}_{i}.png")
    table = volume_table(results)
    summary = {
        "datasets": {v: {s: len(d.names) for s, d in sets.items()} for v, sets in datasets.items()},
        "device": str(device or "cpu"),
        "hardware": hardware or hardware_name(device),
        "notes": dict(notes or {}),
        "results": results,
        "markdown": table,
    }
    return write_comparison(summary, out)
