"""Scoring reconstruction methods on a data set: PSNR/SSIM per case, time, memory, parameters.

One function, :func:`evaluate_methods`, for slices and volumes alike. A data set is any object with ``names``, the
references ``images`` ``(n, 1, *image_shape)`` (2D data sets) or ``volumes`` (3D), and ``projections``
``(n, 1, *projection_shape)`` (e.g. :class:`monai_ext.data.CTScans`, :class:`monai_ext.data.CBCTScans`); a method is
a module ``projections -> images``. The bundles build their comparison tables and figures on it (in their
``scripts/``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from monai_ext.io import atomic_path, save_json
from monai_ext.metrics import psnr, ssim

from .memory import measure_peak_memory
from .methods import count_parameters

__all__ = ["reconstruct_all", "evaluate_methods", "references_of", "write_comparison", "hardware_name"]

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


def references_of(scans) -> torch.Tensor:
    """The reference images of a data set: its ``images`` (2D) or ``volumes`` (3D).

    Raises:
        TypeError: the data set has neither.
    """
    for name in ("images", "volumes"):
        value = getattr(scans, name, None)
        if value is not None:
            return value
    raise TypeError(f"a data set needs references as .images or .volumes; {type(scans).__name__} has neither.")


def evaluate_methods(
    methods: Mapping[str, torch.nn.Module],
    scans,
    device=None,
    batch_size: int = 16,
    keep: int = 0,
    per: str = "slice",
    memory: str | Callable[[torch.nn.Module, torch.Tensor], float] | None = None,
) -> tuple[dict, dict]:
    """Score every method on one data set.

    Args:
        methods: modules ``projections -> images`` by name.
        scans: the data set (``names``, ``images`` or ``volumes``, ``projections``).
        device: where the methods run.
        batch_size: cases per call (1 for methods that fit each scan, or for volumes).
        keep: number of leading reconstructions to return per method (for figures).
        per: what a case is called in the timing keys, ``"slice"`` or ``"volume"``.
        memory: ``None``; ``"peak"``, the peak memory of the whole reconstruction
            (:func:`monai_ext.workflows.memory.measure_peak_memory`, ``peak_memory_mib``); or a function
            ``(method, last_output) -> MiB`` of what the method holds (``memory_mib``).

    Returns:
        ``(scores, kept)``: ``scores[name]`` has ``psnr_db`` and ``psnr_std_db``, ``ssim`` and ``ssim_std`` (mean and
        standard deviation over the cases), ``seconds_per_<per>`` (wall) and ``cpu_seconds_per_<per>``
        (``time.process_time``: the work done, fairer on a shared machine), ``parameters``, ``psnr_per_case`` and the
        memory figure asked for; ``kept[name]`` the first ``keep`` reconstructions (CPU).

    Raises:
        ValueError: an unknown ``per`` or ``memory``.
    """
    if per not in ("slice", "volume"):
        raise ValueError(f"per must be 'slice' or 'volume', got {per!r}.")
    if not (memory is None or memory == "peak" or callable(memory)):
        raise ValueError(f"memory must be None, 'peak' or a function (method, output) -> MiB, got {memory!r}.")
    references = references_of(scans)
    scores, kept = {}, {}
    for name, method in methods.items():
        cpu_start = time.process_time()
        if memory == "peak":
            (recon, seconds), peak = measure_peak_memory(lambda: reconstruct_all(method, scans.projections, device, batch_size), device)
        else:
            recon, seconds = reconstruct_all(method, scans.projections, device, batch_size)
        cpu_seconds = (time.process_time() - cpu_start) / max(1, len(references))
        values = [psnr(recon[i], references[i]) for i in range(len(references))]
        similarities = [ssim(recon[i], references[i]) for i in range(len(references))]
        scores[name] = {
            "psnr_db": round(float(np.mean(values)), 3),
            "psnr_std_db": round(float(np.std(values)), 3),
            "ssim": round(float(np.mean(similarities)), 4),
            "ssim_std": round(float(np.std(similarities)), 4),
            f"seconds_per_{per}": round(seconds, 5),
            f"cpu_seconds_per_{per}": round(cpu_seconds, 5),
            "parameters": count_parameters(method),
            "psnr_per_case": [round(float(v), 3) for v in values],
        }
        if memory == "peak":
            scores[name]["peak_memory_mib"] = round(peak / 2**20, 1)
        elif memory is not None:
            scores[name]["memory_mib"] = round(float(memory(method, recon[-1:])), 4)
        _logger.info("%s: PSNR %.2f dB, SSIM %.3f, %.3g s/%s", name, scores[name]["psnr_db"], scores[name]["ssim"], seconds, per)
        if keep:
            kept[name] = recon[:keep]
    return scores, kept


def write_comparison(summary: dict, output_dir: str | Path, extra_markdown: str = "") -> dict:
    """Write ``summary`` as ``comparison.json`` and its ``markdown`` table (and ``extra_markdown`` after it) as
    ``comparison.md``, atomically; log the table."""
    out = Path(output_dir)
    save_json(summary, out / "comparison.json")
    with atomic_path(out / "comparison.md", suffix=".md") as tmp:
        tmp.write_text(summary["markdown"] + ("\n" + extra_markdown if extra_markdown else ""))
    _logger.info("method comparison (%s):\n%s", summary.get("hardware", ""), summary["markdown"])
    return summary


def hardware_name(device) -> str:
    """What timings were measured on: the GPU's name, or the CPU architecture and torch's thread count."""
    import platform

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"
