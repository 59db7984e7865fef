"""Glue of the ``psma_pet_neural_blind_deconvolution`` bundle: load cases, deblur each, write files and summary.json.

``inference.json`` runs a MONAI ``SupervisedEvaluator`` over the cases with the deconvolution as its network
(``monai_ext.deconvolution.BlindDeconvolution``): :class:`CasePrepareBatch` hands each case's volume and spacing to
it, :class:`DeblurredCaseWriter` writes each case's files and, at the end, ``summary.json``. :func:`deblur_cases` does
the same in a loop, for scripts and tests.

A case is a PET volume from a NIfTI file, a DICOM series (converted to SUV) or the built-in simulated sphere phantom
(which has a 2x reference, so it is scored: PSNR and recovery coefficients against the four interpolations).
Every input is loaded and checked before anything is written, and every file is written atomically.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from ignite.engine import Events

from monai_ext.flags import as_flag
from monai_ext.io import load_nifti, save_nifti, save_png, save_run_summary
from monai_ext.metrics import psnr, ssim
from monai_ext.metrics.deconvolution import recovery_coefficients
from monai_ext.deconvolution.blind_deconvolution import (
    BlindDeconvolutionConfig,
    BlindDeconvolutionResult,
    convolve_same,
    crop_affine,
    interpolate_2x,
    neural_blind_deconvolution,
    supersampled_affine,
)

__all__ = [
    "INTERPOLATIONS",
    "load_pet_volume",
    "crop_volume",
    "pet_cases",
    "deblur_case",
    "deblur_cases",
    "write_case_outputs",
    "write_summary",
    "CasePrepareBatch",
    "DeblurredCaseWriter",
]

logger = logging.getLogger("psma_pet_neural_blind_deconvolution")
INTERPOLATIONS = {"nearest": 0, "linear": 1, "quadratic": 2, "cubic": 3}


def load_pet_volume(path: str | os.PathLike, suv: str | None = "lbm") -> dict:
    """Load a PET volume from a NIfTI file (values used as they are) or a DICOM series folder (converted to SUV).

    Args:
        path: ``.nii``/``.nii.gz`` file or a folder with one PET DICOM series.
        suv: for DICOM, ``"lbm"`` (SUV by lean body mass, Hume), ``"bw"`` (body weight) or ``None`` (Bq/mL).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a bad series (``monai_ext.io.pet_dicom``), missing header fields for the SUV, an unknown ``suv``.
    """
    from monai_ext.io.pet_dicom import read_pet_series
    from monai_ext.pet.suv import suv_factors

    path = Path(path)
    if isinstance(suv, str) and suv.strip().lower() in ("null", "none", ""):
        suv = None  # "--suv null" arrives as a string from the command line
    if suv not in ("lbm", "bw", None):
        raise ValueError(f"suv must be 'lbm', 'bw' or None, got {suv!r}.")
    if path.is_dir():
        series = read_pet_series(path)
        units = str(getattr(series.header, "Units", "") or "").upper()
        if suv is None and units != "BQML":  # raw values in the unit the header gives, or says none: never assumed Bq/mL
            logger.warning(f"{path.name}: the series' Units are {units or 'missing'}; its values are deblurred as they are.")
            return {"name": path.name, "volume": series.volume, "affine": series.affine, "spacing": series.spacing,
                    "unit": units or "unknown (no Units in the header)", "dicom_header": series.header}
        volume, unit, factor = series.volume, "Bq/mL", 1.0
        if suv is not None:
            factors = suv_factors(series.header)
            factor = factors.body_weight if suv == "bw" else factors.lean_body_mass
            if factor is None:
                raise ValueError("SUVlbm needs PatientSize (height) and PatientSex in the header; use suv='bw' otherwise.")
            volume, unit = volume * np.float32(factor), f"SUV{suv}"
        return {"name": path.name, "volume": volume, "affine": series.affine, "spacing": series.spacing, "unit": unit,
                "dicom_header": series.header, "bqml_per_unit": 1.0 / factor}
    if not path.is_file():
        raise FileNotFoundError(f"PET input not found: {path}")
    volume, affine = load_nifti(path)
    if volume.ndim != 3:
        raise ValueError(f"{path} holds a {volume.ndim}D image; a 3D PET volume is expected.")
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)[::-1])
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    return {"name": name, "volume": volume, "affine": affine, "spacing": spacing, "unit": "as stored"}


def crop_volume(case: dict, crop) -> dict:
    """Crop ``case["volume"]`` to ``crop = [[z0, z1], [y0, y1], [x0, x1]]`` (voxel indices, end exclusive).

    Raises:
        ValueError: a box outside the volume, or fewer than 4 voxels on an axis.
    """
    if crop is None:
        return case
    box = np.asarray(crop, int)
    shape = case["volume"].shape
    if box.shape != (3, 2) or np.any(box[:, 0] < 0) or np.any(box[:, 1] > shape) or np.any(box[:, 1] - box[:, 0] < 4):
        raise ValueError(f"crop box {crop} must be [[z0, z1], [y0, y1], [x0, x1]] inside {shape}, at least 4 voxels wide.")
    out = dict(case)
    out["volume"] = case["volume"][box[0, 0] : box[0, 1], box[1, 0] : box[1, 1], box[2, 0] : box[2, 1]]
    out["affine"] = crop_affine(case["affine"], box[:, 0])
    for key in ("reference_2x",):
        if key in case:
            out[key] = case[key][2 * box[0, 0] : 2 * box[0, 1], 2 * box[1, 0] : 2 * box[1, 1], 2 * box[2, 0] : 2 * box[2, 1]]
    if "sphere_masks_2x" in case:
        out["sphere_masks_2x"] = case["sphere_masks_2x"][:, 2 * box[0, 0] : 2 * box[0, 1], 2 * box[1, 0] : 2 * box[1, 1], 2 * box[2, 0] : 2 * box[2, 1]]
    return out


def pet_inputs(input_path: str | os.PathLike) -> list[Path]:
    """The PET inputs ``input_path`` names: itself (a NIfTI file, or a folder holding one DICOM series), each
    ``.nii``/``.nii.gz`` of a folder that holds NIfTI files, each sub-folder of a folder that holds only folders
    (DICOM series), or the ``image`` entries of a MONAI datalist JSON (``{"test": [{"image": "pet.nii.gz"}]}``).

    Raises:
        FileNotFoundError: ``input_path`` (or a file a datalist names) does not exist.
        ValueError: a datalist naming something else than NIfTI files, two NIfTI files with one name.
    """
    from monai_ext.io import input_files

    path = Path(input_path)
    if path.is_file() and path.suffix == ".json":
        files = input_files(str(path))
        if any(f.name.endswith(".npz") for f in files):
            raise ValueError(f"datalist {path} names .npz files; PET inputs are NIfTI files (or DICOM folders given directly).")
        return files
    if path.is_dir():
        entries = sorted(path.iterdir())
        if any(f.name.endswith((".nii", ".nii.gz")) for f in entries):
            return [f for f in input_files(str(path)) if f.name.endswith((".nii", ".nii.gz"))]
        if entries and all(f.is_dir() for f in entries if not f.name.startswith(".")):
            return [f for f in entries if not f.name.startswith(".")]  # a folder of DICOM series folders
    if not path.exists():
        raise FileNotFoundError(f"PET input not found: {path} (give a NIfTI file, a DICOM series folder, a folder of NIfTI files or a datalist JSON).")
    return [path]


def pet_cases(input_path: str | None, example=None, suv: str | None = "lbm", crop=None) -> list[dict]:
    """The cases to deblur: the volumes at ``input_path`` (see :func:`pet_inputs`), or the built-in phantom
    ``example`` when it is empty. Every input is read (and cropped) before any is deblurred.

    Args:
        input_path: NIfTI file, DICOM series folder, folder of NIfTI files or MONAI datalist JSON; empty or
            ``None`` for the built-in example.
        example: a ``monai_ext.phantoms.spheres.SpherePhantom`` (the built-in example).
        suv: SUV type for DICOM input (``load_pet_volume``).
        crop: optional crop box (``crop_volume``).

    Raises:
        ValueError: neither an input nor an example, or the errors of ``load_pet_volume``/``crop_volume``.
    """
    if input_path:
        return [crop_volume(load_pet_volume(path, suv), crop) for path in pet_inputs(input_path)]
    if example is not None:
        case = {
            "name": "sphere_phantom",
            "volume": example.measured,
            "affine": example.affine,
            "spacing": example.spacing,
            "unit": "kBq/mL",
            "reference_2x": example.reference_2x,
            "sphere_masks_2x": example.sphere_masks_2x,
            "sphere_activity": example.sphere_activity,
            "diameters": example.diameters,
        }
    else:
        raise ValueError("no input: set input_path (NIfTI file or DICOM folder) or give the built-in example.")
    return [crop_volume(case, crop)]


def _mip(volume: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.asarray(volume).max(axis=axis)


def _dicom_values(case: dict, image: np.ndarray) -> tuple[np.ndarray, str]:
    """The deblurred image in the unit of a DICOM output and its DICOM ``Units``.

    A DICOM input converted to SUV is written back in Bq/mL (``bqml_per_unit``) with the input's header, so that the
    SUV conversion of the output series gives the SUV of the NIfTI; the phantom's kBq/mL become Bq/mL; other NIfTI
    values are written as they are with ``Units`` NONE.
    """
    if "bqml_per_unit" in case:
        return image * case["bqml_per_unit"], "BQML"
    if case.get("unit") == "kBq/mL":
        return image * 1000.0, "BQML"
    return image, "NONE"


def deblur_case(case: dict, config: BlindDeconvolutionConfig, output_dir: str | os.PathLike, device="cpu", dicom: bool = False) -> dict:
    """Deblur one case and write ``<name>_deblurred.nii.gz`` (+ PNG of MIPs of y, x, k, x*k), the kernel and y.

    Args:
        case: an entry of :func:`pet_cases`.
        config: deconvolution settings.
        output_dir: destination.
        device: where to fit.
        dicom: also write the 2x volume as a PET DICOM series in ``<name>_deblurred_dicom/``
            (``monai_ext.io.pet_dicom.write_pet_series``; new series in the input's study when the input is DICOM).

    Returns the case's summary entry (files, seconds, and scores when the case has a reference).
    """
    result = neural_blind_deconvolution(case["volume"], case["spacing"], config, device)
    return write_case_outputs(case, result, output_dir, dicom)


def write_case_outputs(case: dict, result: BlindDeconvolutionResult, output_dir: str | os.PathLike, dicom: bool = False) -> dict:
    """Write the files of one deblurred case (:func:`deblur_case`) and return its summary entry."""
    output_dir = Path(output_dir)
    name = case["name"]
    affine_2x = supersampled_affine(case["affine"])
    deblurred = save_nifti(result.image, output_dir / f"{name}_deblurred.nii.gz", affine=affine_2x)
    kernel_affine = np.diag([*np.asarray(case["spacing"])[::-1] / 2.0, 1.0])
    kernel_affine[:3, 3] = -(np.asarray(result.kernel.shape)[::-1] // 2) * np.asarray(case["spacing"])[::-1] / 2.0
    dicom_folder = None
    if dicom:
        from monai_ext.io.pet_dicom import write_pet_series

        values, units = _dicom_values(case, result.image)
        dicom_folder = write_pet_series(values, affine_2x, output_dir / f"{name}_deblurred_dicom", template=case.get("dicom_header"), units=units)
    kernel_file = save_nifti(result.kernel, output_dir / f"{name}_kernel.nii.gz", affine=kernel_affine)
    blurred_x = convolve_same(torch.as_tensor(result.image)[None, None], torch.as_tensor(result.kernel)[None, None])[0, 0].numpy()
    y_2x = interpolate_2x(case["volume"], 0)
    vmax = float(max(result.image.max(), case["volume"].max()))
    panels = [("y (MIP)", _mip(y_2x)), ("x (MIP)", _mip(result.image)), ("k (MIP)", _mip(result.kernel)), ("x * k (MIP)", _mip(blurred_x))]
    save_png(panels, output_dir / f"{name}_deblurred.png", cmap="gray_r")
    coronal = [("y coronal MIP", _mip(y_2x, 1)), ("x coronal MIP", _mip(result.image, 1)), ("k coronal MIP", _mip(result.kernel, 1))]
    save_png(coronal, output_dir / f"{name}_mips_coronal.png", cmap="gray_r")
    entry = {
        "name": name,
        "file": str(deblurred),
        "kernel_file": str(kernel_file),
        **({"dicom_folder": str(dicom_folder)} if dicom_folder else {}),
        "unit": case.get("unit", ""),
        "input_shape": list(case["volume"].shape),
        "output_shape": list(result.image.shape),
        "output_spacing_mm": [s / 2.0 for s in case["spacing"]],
        "seconds": round(result.seconds, 2),
        "final_loss": round(result.loss_history[-1], 6),
        "kernel_fwhm_2x_voxels": [round(v, 3) for v in kernel_fwhm(result.kernel)],
        "display_max": vmax,
    }
    if "reference_2x" in case:
        ref = case["reference_2x"]
        entry.update(psnr_db=round(psnr(result.image, ref), 3), ssim=round(ssim(result.image, ref), 4))
        rc = {"deblurred": recovery_coefficients(result.image, case["sphere_masks_2x"], case["sphere_activity"])}
        for method, order in INTERPOLATIONS.items():
            upsampled = interpolate_2x(case["volume"], order)
            rc[method] = recovery_coefficients(upsampled, case["sphere_masks_2x"], case["sphere_activity"])
            entry[f"psnr_db_{method}"] = round(psnr(upsampled, ref), 3)
        entry["sphere_diameters_mm"] = list(case["diameters"])
        entry["recovery_coefficients"] = {k: [round(v, 4) for v in vals] for k, vals in rc.items()}
    return entry


def kernel_fwhm(kernel: np.ndarray) -> list[float]:
    """FWHM per axis ``(z, y, x)`` (in kernel voxels) of a Gaussian with the kernel's second moments."""
    k = np.asarray(kernel, float) / np.sum(kernel)
    out = []
    for axis in range(3):
        profile = k.sum(axis=tuple(a for a in range(3) if a != axis))
        pos = np.arange(profile.size)
        mean = (profile * pos).sum()
        out.append(float(2.0 * np.sqrt(2.0 * np.log(2.0)) * np.sqrt((profile * (pos - mean) ** 2).sum())))
    return out


def deblur_cases(cases: list[dict], config: BlindDeconvolutionConfig, output_dir: str | os.PathLike, device="cpu", dicom: bool = False) -> dict:
    """Deblur every case, write ``output_dir/summary.json`` and return the summary (``mean_psnr_db`` when scored).

    ``dicom``: also write each 2x volume as a PET DICOM series (:func:`deblur_case`).
    """
    dicom = as_flag(dicom, "dicom_output")
    start = time.perf_counter()
    entries = [deblur_case(case, config, output_dir, device, dicom) for case in cases]
    return write_summary(entries, config, time.perf_counter() - start, output_dir)


def write_summary(entries: list[dict], config: BlindDeconvolutionConfig, seconds: float, output_dir: str | os.PathLike) -> dict:
    """Write ``output_dir/summary.json`` for the cases' entries and return it (``mean_psnr_db`` when scored)."""
    summary = {
        "bundle": "psma_pet_neural_blind_deconvolution",
        "method": "neural_blind_deconvolution_2x",
        "seconds": round(seconds, 2),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
        "cases": entries,
    }
    scored = [e for e in entries if "psnr_db" in e]
    if scored:
        summary["mean_psnr_db"] = round(float(np.mean([e["psnr_db"] for e in scored])), 3)
    save_run_summary(summary, output_dir)
    scores = f", PSNR {summary['mean_psnr_db']:.2f} dB" if scored else ""
    logger.info(f"deblurred {len(entries)} case(s) in {summary['seconds']:.1f} s{scores} -> {output_dir}")
    return summary


class CasePrepareBatch(PrepareBatch):
    """``prepare_batch`` of the evaluator: a case (the loader's batch is the list of one case, ``no_collation``)
    becomes the volume ``(1, 1, z, y, x)`` on the device and the keyword ``spacing`` of the network."""

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        if len(batchdata) != 1:
            raise ValueError(f"the deconvolution takes one case per batch, got {len(batchdata)}; set the loader's batch_size to 1.")
        case = batchdata[0]
        volume = torch.as_tensor(case["volume"])[None, None].to(device=device, non_blocking=non_blocking)
        return volume, None, (), {"spacing": tuple(float(v) for v in case["spacing"])}


class DeblurredCaseWriter:
    """Evaluator handler: after each case, its files (:func:`write_case_outputs`, from the network's ``last_result``);
    at the end of the run, ``summary.json`` (:func:`write_summary`).

    Args:
        output_dir: destination folder.
        dicom: also write each 2x volume as a PET DICOM series.
    """

    def __init__(self, output_dir: str | os.PathLike, dicom: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.dicom = as_flag(dicom, "dicom_output")
        self.entries: list[dict] = []
        self.summary: dict | None = None
        self._start = 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._case_done)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self.entries, self._start = [], time.perf_counter()

    def _case_done(self, engine) -> None:
        network = getattr(engine.network, "module", engine.network)
        self.entries.append(write_case_outputs(engine.state.batch[0], network.last_result, self.output_dir, self.dicom))

    def _completed(self, engine) -> None:
        network = getattr(engine.network, "module", engine.network)
        self.summary = write_summary(self.entries, network.config, time.perf_counter() - self._start, self.output_dir)
