"""Glue between MONAI engines and reconstruction tasks, shared by every bundle's ``inference.json``.

- :class:`KeyedPrepareBatch`: feeds ``batch[input_key]`` to the network (a sinogram, projections, ...), with
  ``batch[target_key]`` as the optional reference.
- :class:`SaveReconstructiond`: writes each reconstruction as NIfTI plus a PNG preview, atomically.
- :class:`ReconstructionSummary`: a handler that scores each case (PSNR, SSIM, relative error when a reference
  exists), logs one line per run and writes ``summary.json`` (and ``summary_<method>.json``, see
  ``monai_ext.io.save_run_summary``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from monai.transforms import MapTransform

from monai_ext.io import save_nifti, save_png, save_run_summary
from monai_ext.metrics import psnr, relative_error, ssim

__all__ = ["KeyedPrepareBatch", "SaveReconstructiond", "ReconstructionSummary", "orthogonal_slices"]


class KeyedPrepareBatch(PrepareBatch):
    """``prepare_batch`` for MONAI engines that reads the network input and target from named keys.

    Args:
        input_key: batch key of the network input.
        target_key: batch key of the reference (``None``: no target, as for inference on measured data).
        keyword_keys: network keyword arguments taken from the batch, ``{keyword: batch key}`` (e.g.
            ``{"geometry": "geometry"}`` for :class:`CaseGeometryNetwork`); absent keys are left out.
    """

    def __init__(self, input_key: str, target_key: str | None = None, keyword_keys: dict | None = None) -> None:
        self.input_key, self.target_key = input_key, target_key
        self.keyword_keys = dict(keyword_keys or {})

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        if self.input_key not in batchdata:
            raise KeyError(f"batch lacks the network input key {self.input_key!r}; it has {sorted(batchdata)}.")
        inputs = batchdata[self.input_key].to(device=device, non_blocking=non_blocking, **kwargs)
        target = batchdata.get(self.target_key) if self.target_key else None
        if isinstance(target, torch.Tensor):
            target = target.to(device=device, non_blocking=non_blocking, **kwargs)
        if not self.keyword_keys:
            return inputs, target
        keywords = {name: batchdata[key] for name, key in self.keyword_keys.items() if key in batchdata}
        return inputs, target, (), keywords


def _spatial(t) -> np.ndarray:
    arr = t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float32)
    return arr[0] if arr.ndim in (3, 4) and arr.shape[0] == 1 else arr


def _preview(volume: np.ndarray, orthogonal: bool = False) -> np.ndarray:
    if volume.ndim != 3:
        return volume
    return orthogonal_slices(volume) if orthogonal else volume[volume.shape[0] // 2]


def _pixel_aspect(spacing, ndim: int, orthogonal: bool) -> float | None:
    """``dy / dx`` of the previewed slice's pixels (the axial slice of a volume); None when unknown or mixed."""
    if spacing is None or len(spacing) != ndim or (ndim == 3 and orthogonal):
        return None
    dy, dx = float(spacing[-2]), float(spacing[-1])
    return dy / dx if dy > 0 and dx > 0 else None


def orthogonal_slices(volume) -> np.ndarray:
    """The central axial, coronal and sagittal slices of a ``(nz, ny, nx)`` volume side by side (zero-padded)."""
    v = volume.detach().cpu().float().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume, np.float32)
    v = v.reshape(v.shape[-3:])
    nz, ny, nx = v.shape
    panels = [v[nz // 2], v[:, ny // 2, :][::-1], v[:, :, nx // 2][::-1]]  # axial; coronal and sagittal head up
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 1))) for p in panels]
    return np.concatenate(padded, axis=1)[:, :-1]


class SaveReconstructiond(MapTransform):
    """Write ``data[key]`` (``(1, *spatial)``) to ``output_dir/<name>_<suffix>.nii.gz`` and a PNG preview.

    The PNG shows the reference (if ``reference_key`` is present), the reconstruction and the absolute error;
    for a volume, its central axial slice, or with ``orthogonal`` the central axial, coronal and sagittal slices.

    Args:
        keys: the reconstruction key (usually ``"pred"``).
        output_dir: destination folder (created).
        name_key: key holding the case name (``"name"``); falls back to ``case<i>``.
        reference_key: key of the reference image, if any.
        spacing_key: key of the voxel size in mm (array order), written to the NIfTI header.
        affine_key: key of the input's NIfTI affine (4x4): when the case has it, the output is written with it, on
            the user's grid and orientation (``spacing_key`` is then only a record).
        suffix: file name suffix.
        orthogonal: preview a volume by its three central orthogonal slices instead of the axial one.
    """

    def __init__(
        self,
        keys,
        output_dir: str,
        name_key: str = "name",
        reference_key: str | None = "reference",
        spacing_key: str = "spacing",
        suffix: str = "recon",
        allow_missing_keys: bool = False,
        orthogonal: bool = False,
        affine_key: str = "affine",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orthogonal = bool(orthogonal)
        self.output_dir = Path(output_dir)
        self.name_key, self.reference_key, self.spacing_key, self.suffix = name_key, reference_key, spacing_key, suffix
        self.affine_key = affine_key
        self._count = 0

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        name = str(d.get(self.name_key, f"case{self._count}"))
        self._count += 1
        spacing = d.get(self.spacing_key)
        if spacing is not None:
            spacing = [float(v) for v in (spacing.reshape(-1) if isinstance(spacing, torch.Tensor) else spacing)]
        affine = d.get(self.affine_key)
        if affine is not None:
            affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, np.float64).reshape(4, 4)
        for key in self.key_iterator(d):
            recon = _spatial(d[key])
            nifti = save_nifti(recon, self.output_dir / f"{name}_{self.suffix}.nii.gz", spacing=spacing, affine=affine)
            shown = _preview(recon, self.orthogonal)
            panels = [(f"{self.suffix}", shown)]
            ref = d.get(self.reference_key) if self.reference_key else None
            if ref is not None:
                ref = _preview(_spatial(ref), self.orthogonal)
                panels = [("reference", ref), *panels, ("|error|", np.abs(shown - ref))]
            save_png(panels, self.output_dir / f"{name}_{self.suffix}.png", aspect=_pixel_aspect(spacing, recon.ndim, self.orthogonal))
            d[f"{key}_file"] = str(nifti)
        return d


_INPUTS = {"image": "a scan simulated from the image", "projections": "measured projections"}


def _provenance(item: Mapping) -> dict:
    """What a case's reconstruction came from (simulated scan or measured data), its grid, and any resampling."""
    record = {}
    if item.get("input") in _INPUTS:
        record["reconstructed_from"] = _INPUTS[item["input"]]
    pred = item.get("pred")
    if isinstance(pred, torch.Tensor):
        record["shape"] = [int(n) for n in _spatial(pred).shape]
    spacing = item.get("spacing")
    if spacing is not None:
        record["spacing_mm"] = [round(float(v), 6) for v in (spacing.reshape(-1) if isinstance(spacing, torch.Tensor) else spacing)]
    if item.get("resample_to"):
        import json

        record["resampled_from_training_grid"] = json.loads(item["geometry"])["image_shape"]
    return record


def _finite(value: float, digits: int) -> float | None:
    """``value`` rounded, or ``None`` (JSON null) when it is not finite (an undefined metric)."""
    return round(value, digits) if math.isfinite(value) else None


class ReconstructionSummary:
    """Handler: per-case PSNR/SSIM/relative error against the reference, one log line, ``summary.json``.

    Args:
        output_dir: where ``summary.json`` is written.
        bundle: bundle name shown in the log line.
        method: method name shown in the log line.
        pred_key: reconstruction key in ``engine.state.output``.
        reference_key: reference key (MONAI evaluators put the target under ``"label"``); cases without it are
            reported without metrics.
        name_key: case name key.
        data_range: PSNR/SSIM range (default: each reference's range).
    """

    def __init__(
        self,
        output_dir: str,
        bundle: str,
        method: str,
        pred_key: str = "pred",
        reference_key: str = "label",
        name_key: str = "name",
        data_range: float | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.bundle, self.method = bundle, method
        self.pred_key, self.reference_key, self.name_key, self.data_range = pred_key, reference_key, name_key, data_range
        self.cases: list[dict] = []
        self.logger = logging.getLogger(bundle)
        self._start = time.perf_counter()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self.cases, self._start = [], time.perf_counter()

    def _iteration(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batches = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for batch, output in zip(batches, outputs):
            item = {**batch, **output}
            case = {"name": str(item.get(self.name_key, f"case{len(self.cases)}"))}
            if f"{self.pred_key}_file" in item:
                case["file"] = str(item[f"{self.pred_key}_file"])
            case.update(_provenance(item))
            ref = item.get(self.reference_key)
            if ref is not None:
                pred = item[self.pred_key]
                case.update(
                    psnr_db=_finite(psnr(pred, ref, self.data_range), 3),
                    ssim=_finite(ssim(pred, ref, self.data_range), 4),
                    relative_error=_finite(relative_error(pred, ref), 5),
                )
                if case["psnr_db"] is None:
                    self.logger.warning(f"{case['name']}: the reference is uniform (no dynamic range): its PSNR/SSIM are undefined, reported as null.")
            self.cases.append(case)

    def _completed(self, engine) -> None:
        seconds = time.perf_counter() - self._start
        summary = {"bundle": self.bundle, "method": self.method, "seconds": round(seconds, 2), "cases": self.cases}
        scored = [c for c in self.cases if c.get("psnr_db") is not None]
        if scored:
            summary["mean_psnr_db"] = round(float(np.mean([c["psnr_db"] for c in scored])), 3)
            summary["mean_ssim"] = round(float(np.mean([c["ssim"] for c in scored])), 4)
        save_run_summary(summary, self.output_dir)
        scores = f"PSNR {summary['mean_psnr_db']:.2f} dB, SSIM {summary['mean_ssim']:.3f}" if scored else "no reference"
        self.logger.info(f"{self.bundle}: {self.method} on {len(self.cases)} case(s): {scores}, {seconds:.1f} s -> {self.output_dir}")
