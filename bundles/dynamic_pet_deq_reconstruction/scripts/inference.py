"""Glue of the ``dynamic_pet_deq_reconstruction`` bundle's ``inference.json``: cases, batch preparation, outputs.

- :func:`dynamic_pet_cases`: the exams of ``dataset_dir`` (folders written by :func:`monai_ext.pet.save_exam`:
  ``sinograms.npz`` + ``sinograms.json`` with the frame timing and counts, ``activity.nii.gz`` optional), or the
  built-in simulated example when there is none; each case holds what the reconstruction needs, checked.
- :class:`DynamicPETPrepareBatch`: gives the network the counts and, as keyword arguments, the exam's system-model
  factors, frame durations and dose.
- :class:`SaveDynamicSeriesd`: writes the 2D+t reconstruction as NIfTI (time on the 4th axis), a BIDS-like JSON
  sidecar (frame timing, dose, weights) and a PNG montage of the frames.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from monai.transforms import MapTransform

from monai_ext.io import save_figure, save_json, save_nifti
from monai_ext.pet import DynamicPETSimulator, load_exam
from monai_ext.dynamic_pet.noise_realisations import DEFAULT_SLICE_FRACTION

__all__ = ["dynamic_pet_cases", "DynamicPETPrepareBatch", "SaveDynamicSeriesd", "save_frame_montage"]

SYSTEM_KEYS = ("attenuation_factors", "normalisation", "background", "frame_durations", "sensitivity", "dose")


def _check_dose(dose, where: str) -> float:
    try:
        valid = math.isfinite(float(dose)) and float(dose) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"the dose D ({where}) must be a positive, finite number of counts, got {dose!r}.")
    return float(dose)


def _read_exam(directory: Path) -> dict:
    """Arrays and timing of a saved exam; the phantom (``activity.nii.gz``) only if present."""
    meta_path = directory / "sinograms.json"
    if (directory / "activity.nii.gz").is_file():
        exam = load_exam(directory)
        return {
            "counts": exam.counts, "attenuation_factors": exam.attenuation_factors, "normalisation": exam.normalisation,
            "background": exam.background, "durations": list(exam.schedule.durations), "starts": list(exam.schedule.starts),
            "sensitivity": exam.sensitivity, "total_counts": exam.total_counts, "geometry": exam.geometry,
            "reference": exam.activity,
        }
    from monai_ext.io import geometry_from_dict
    from monai_ext.pet.exam_io import exam_field, read_exam_arrays, read_exam_json

    meta = read_exam_json(directory)
    names = ("counts", "background", "attenuation_factors", "normalisation")
    arrays = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in read_exam_arrays(directory, names).items()}
    frames = {}
    for key in ("FrameDuration", "FrameTimesStart"):
        values = exam_field(meta, directory, "schedule", key)
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{meta_path}: field 'schedule/{key}' must be a list of numbers (seconds), got {values!r}.")
        frames[key] = list(values)
    return {
        **arrays,
        "durations": frames["FrameDuration"], "starts": frames["FrameTimesStart"],
        "sensitivity": exam_field(meta, directory, "sensitivity_counts_per_kBq_mL_mm_s", number=True),
        "total_counts": exam_field(meta, directory, "total_counts", number=True),
        "geometry": geometry_from_dict(exam_field(meta, directory, "geometry")), "reference": None,
    }


def _case(name: str, exam: dict, dose: float, simulator: DynamicPETSimulator, source: str) -> dict:
    counts, durations = exam["counts"], exam["durations"]
    if counts.ndim != 3:
        raise ValueError(f"{source}: counts must be (T, n_views, n_bins), got shape {tuple(counts.shape)}.")
    if counts.shape[0] != len(durations):
        raise ValueError(
            f"{source}: the sinogram series has {counts.shape[0]} frames but the frame schedule has {len(durations)} "
            f"(FrameDuration in sinograms.json); each frame needs its sinogram."
        )
    if exam["background"].shape != counts.shape:
        raise ValueError(f"{source}: background {tuple(exam['background'].shape)} does not match counts {tuple(counts.shape)}.")
    geometry = exam["geometry"]
    if tuple(geometry.sinogram_shape) != tuple(simulator.geometry.sinogram_shape) or tuple(geometry.image_shape) != tuple(simulator.image_shape):
        raise ValueError(
            f"{source}: the exam has image shape {tuple(geometry.image_shape)} and sinogram shape {tuple(geometry.sinogram_shape)}, "
            f"the bundle is set up for {tuple(simulator.image_shape)} and {tuple(simulator.geometry.sinogram_shape)} "
            f"(image_shape, view_mashing in the config)."
        )
    if (counts < 0).any() or not torch.isfinite(counts).all():
        raise ValueError(f"{source}: counts must be finite and non-negative.")
    case = {
        "name": name,
        "counts": counts.float(),
        "attenuation_factors": exam["attenuation_factors"].float(),
        "normalisation": exam["normalisation"].float(),
        "background": exam["background"].float(),
        "frame_durations": torch.as_tensor(durations, dtype=torch.float64),
        "frame_starts": torch.as_tensor(exam["starts"], dtype=torch.float64),
        "sensitivity": torch.tensor(float(exam["sensitivity"]), dtype=torch.float64),
        "dose": torch.tensor(dose, dtype=torch.float64),
        "spacing": torch.as_tensor(geometry.pixel_size, dtype=torch.float64),
    }
    if exam.get("reference") is not None:
        case["reference"] = exam["reference"].float()
    return case


def dynamic_pet_cases(
    dataset_dir: str | None,
    simulator: DynamicPETSimulator,
    *,
    dose: float | None = None,
    slice_fraction: float = DEFAULT_SLICE_FRACTION,
    example_dose: float = 300e6,
    example_subject_seed: int = 5,
    example_noise_seed: int = 0,
) -> list[dict]:
    """The cases to reconstruct.

    Args:
        dataset_dir: a folder of exams (each a sub-folder with ``sinograms.json`` / ``sinograms.npz``, or the folder
            itself); empty or ``None`` for the built-in example.
        simulator: the bundle's simulator: its grid and sinogram geometry are the bundle's, and it simulates the
            example.
        dose: ``D`` (counts of the whole exam) for every case; default: each exam's ``total_counts`` (the counts of
            the slice) divided by ``slice_fraction``.
        slice_fraction: share of ``D`` in a 2D slice (as in the dose model's learning).
        example_dose: ``D`` of the built-in example.
        example_subject_seed: phantom of the built-in example (not one the dose model was learned on).
        example_noise_seed: noise seed of the built-in example.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist or holds no exam.
        ValueError: a non-positive dose, sinograms whose frames do not match the frame schedule, or exams on another
            grid or sinogram geometry than the bundle's.
    """
    if dose is not None:
        dose = _check_dose(dose, "config 'dose'")
    if not dataset_dir:
        d = _check_dose(example_dose if dose is None else dose, "example_dose")
        exam = simulator.simulate(d * slice_fraction, subject_seed=example_subject_seed, noise_seed=example_noise_seed)
        fields = {
            "counts": exam.counts, "attenuation_factors": exam.attenuation_factors, "normalisation": exam.normalisation,
            "background": exam.background, "durations": list(exam.schedule.durations), "starts": list(exam.schedule.starts),
            "sensitivity": exam.sensitivity, "geometry": exam.geometry, "reference": exam.activity,
        }
        return [_case(f"example_subject{example_subject_seed}_dose{d / 1e6:g}M", fields, d, simulator, "built-in example")]
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir {str(root)!r} is not a directory.")
    folders = [root] if (root / "sinograms.json").is_file() else sorted(p for p in root.iterdir() if (p / "sinograms.json").is_file())
    if not folders:
        raise FileNotFoundError(f"no exam (a folder with sinograms.json and sinograms.npz) in {root}.")
    cases = []
    for folder in folders:
        exam = _read_exam(folder)
        d = dose if dose is not None else _check_dose(exam["total_counts"] / slice_fraction, f"total_counts / slice_fraction of {folder}")
        cases.append(_case(folder.name, exam, d, simulator, str(folder)))
    return cases


class DynamicPETPrepareBatch(PrepareBatch):
    """``prepare_batch`` for ``DoseAdaptiveReconstruction``: inputs ``batch["counts"]``, target ``batch["reference"]``
    (or ``None``), and the system-model factors, frame durations and dose as keyword arguments of the network."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        missing = [k for k in ("counts", *SYSTEM_KEYS) if k not in batchdata]
        if missing:
            raise KeyError(f"batch lacks {missing}; it has {sorted(batchdata)}.")
        move = lambda t: t.to(device=device, non_blocking=non_blocking, **kwargs)  # noqa: E731
        target = batchdata.get("reference")
        network_kwargs = {k: move(batchdata[k]) for k in SYSTEM_KEYS}
        return move(batchdata["counts"]), None if target is None else move(target), (), network_kwargs


def save_frame_montage(series, path: str | Path, titles: list[str] | None = None, n_cols: int = 5, suptitle: str = "") -> Path:
    """A PNG montage of the frames of ``series`` ``(T, H, W)`` on one colour scale, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = series.detach().cpu().float().numpy() if isinstance(series, torch.Tensor) else np.asarray(series, np.float32)
    n = arr.shape[0]
    n_cols = min(n_cols, n)
    n_rows = -(-n // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.3 * n_rows), squeeze=False)
    vmax = float(arr.max()) if arr.size else 1.0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            shown = ax.imshow(arr[i], cmap="gray_r", vmin=0.0, vmax=vmax)
            ax.set_title(titles[i] if titles else f"frame {i + 1}", fontsize=8)
    fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    save_figure(fig, path, dpi=90)
    return Path(path)


def _as_list(value) -> list[float]:
    if value is None:
        return []
    return [float(v) for v in (value.reshape(-1) if isinstance(value, torch.Tensor) else np.asarray(value).reshape(-1))]


class SaveDynamicSeriesd(MapTransform):
    """Write ``data[key]`` ``(T, H, W)`` as ``<name>_<suffix>.nii.gz`` (2D+t), a JSON sidecar and a PNG montage.

    The NIfTI stores ``(x, y, 1, t)`` with the pixel spacing and the mean frame duration as time step; the exact,
    uneven frame timing is in the sidecar (BIDS-PET ``FrameTimesStart`` / ``FrameDuration``), with the dose and the
    weights used.

    Args:
        keys: the reconstruction key (``"pred"``).
        output_dir: destination folder.
        dose_model: the :class:`~monai_ext.dynamic_pet.dose_model.DoseModel` used (its weights for the case's dose go in the
            sidecar); optional.
        name_key: key of the case name.
        suffix: file name suffix.
        units: value units written to the sidecar.
    """

    def __init__(self, keys, output_dir: str, dose_model=None, name_key: str = "name", suffix: str = "recon",
                 units: str = "kBq/mL", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.dose_model = Path(output_dir), dose_model
        self.name_key, self.suffix, self.units = name_key, suffix, units
        self._count = 0

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        name = str(d.get(self.name_key, f"case{self._count}"))
        self._count += 1
        durations, starts = _as_list(d.get("frame_durations")), _as_list(d.get("frame_starts"))
        spacing = _as_list(d.get("spacing")) or None
        dose = _as_list(d.get("dose"))
        for key in self.key_iterator(d):
            series = d[key].detach().cpu().float()
            if series.ndim == 4 and series.shape[0] == 1:
                series = series[0]
            if series.ndim != 3:
                raise ValueError(f"{key} must be a (T, H, W) series, got shape {tuple(series.shape)}.")
            stem = self.output_dir / f"{name}_{self.suffix}"
            time_step = float(np.mean(durations)) if durations else 1.0
            nifti = save_nifti(series, stem.with_name(stem.name + ".nii.gz"), spacing=spacing, time_step=time_step)
            sidecar = {"Units": self.units, "FrameTimesStart": starts, "FrameDuration": durations,
                       "ImageDecayCorrected": False, "dose_counts": dose[0] if dose else None}
            if self.dose_model is not None and dose:
                eta, lambdas = self.dose_model.hyperparameters(dose[0])
                sidecar.update(eta=eta, lambdas=lambdas, eps=self.dose_model.setting.get("eps"))
            save_json(sidecar, stem.with_name(stem.name + ".json"))
            titles = [f"{s / 60:.1f}-{(s + t) / 60:.1f} min" for s, t in zip(starts, durations)] if len(starts) == series.shape[0] else None
            save_frame_montage(series, stem.with_name(stem.name + ".png"), titles,
                               suptitle=f"{name}: {self.suffix} ({self.units})")
            d[f"{key}_file"] = str(nifti)
        return d

