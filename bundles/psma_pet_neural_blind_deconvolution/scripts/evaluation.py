"""Validation of neural blind deconvolution on the simulated sphere phantom (``configs/evaluate.json`` of the bundle).

1. Recovery coefficients per sphere: the deblurred 2x image against nearest, linear, quadratic and cubic upsampling
   of the measured image (``monai_ext.deconvolution.blind_deconvolution.interpolate_2x``).
2. Pseudokernel test (Sample et al. 2024): skewed anisotropic kernels ``k*`` are applied to the deblurred image
   (``y* = D(k* * x)``), the deconvolution is rerun on ``y*``, and the recovered kernel is compared with ``k*`` by
   the dot product of the normalised kernels.
3. No-reference quality: BRISQUE of the sphere-plane slice and of the axial MIP, deblurred vs the interpolations,
   all shown in the same window (0 to the deblurred image's maximum); the true 2x activity and the nearest upsampling
   of the noiseless scan are scored too, as controls of what the metric rewards on this phantom.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from math import erf, sqrt
from pathlib import Path

import numpy as np
import torch

from monai_ext.io import save_json, save_nifti, save_png
from monai_ext.metrics import psnr
from monai_ext.metrics.brisque import brisque_score, load_brisque_model
from monai_ext.metrics.deconvolution import kernel_shape, kernel_similarity_matrix, recovery_coefficients
from monai_ext.deconvolution.blind_deconvolution import BlindDeconvolutionConfig, blur_and_downsample, interpolate_2x, neural_blind_deconvolution
from monai_ext.phantoms.spheres import gaussian_kernel
from monai_ext.units import FWHM_PER_SIGMA
from .deconvolution import INTERPOLATIONS, kernel_fwhm

__all__ = ["PSEUDOKERNELS", "skewed_kernel", "pseudokernel_test", "evaluate_psma_deconvolution"]

logger = logging.getLogger("psma_pet_neural_blind_deconvolution")
_FWHM_TO_SIGMA = 1.0 / FWHM_PER_SIGMA

# FWHM (mm, z y x) and skew-normal shape per axis: four differently skewed anisotropic kernels
PSEUDOKERNELS = (
    {"fwhm_mm": (8.0, 5.0, 5.0), "skew": (0.0, 0.0, 4.0)},
    {"fwhm_mm": (5.0, 8.0, 5.5), "skew": (0.0, -4.0, 0.0)},
    {"fwhm_mm": (5.5, 5.0, 8.0), "skew": (3.0, 0.0, -2.0)},
    {"fwhm_mm": (7.0, 6.5, 5.0), "skew": (-3.0, 3.0, 3.0)},
)


def default_pseudokernels() -> tuple[dict, ...]:
    """The four skewed pseudokernels of the test (``PSEUDOKERNELS``), for configs."""
    return PSEUDOKERNELS


def skewed_kernel(fwhm_mm, skew, spacing_mm, size: int) -> np.ndarray:
    """A separable skew-normal kernel ``prod_a phi(t_a / s_a) (1 + erf(skew_a t_a / (s_a sqrt 2)))``, normalised.

    Args:
        fwhm_mm: FWHM of the underlying Gaussian per axis ``(z, y, x)``.
        skew: skew-normal shape per axis (0: symmetric; the sign sets the side of the tail).
        spacing_mm: voxel size of the kernel grid ``(z, y, x)``.
        size: odd kernel size.

    Raises:
        ValueError: an even size or a non-positive FWHM.
    """
    if size % 2 == 0 or min(fwhm_mm) <= 0:
        raise ValueError(f"size must be odd and FWHM positive, got {size} and {fwhm_mm}.")
    profiles = []
    for fwhm, shape, step in zip(fwhm_mm, skew, spacing_mm):
        t = (np.arange(size) - size // 2) * step
        s = fwhm * _FWHM_TO_SIGMA
        profile = np.exp(-0.5 * (t / s) ** 2) * np.array([1.0 + erf(shape * v / (s * sqrt(2.0))) for v in t])
        mean = (profile * t).sum() / profile.sum()  # centre the kernel's mass: a pure shift is not a blur
        t_c = t + mean
        profile = np.exp(-0.5 * (t_c / s) ** 2) * np.array([1.0 + erf(shape * v / (s * sqrt(2.0))) for v in t_c])
        profiles.append(profile)
    kernel = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return (kernel / kernel.sum()).astype(np.float32)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pseudokernel_test(image_2x, spacing, config: BlindDeconvolutionConfig, pseudokernels=PSEUDOKERNELS, device="cpu", output_dir=None) -> dict:
    """Apply each pseudokernel ``k*`` to a deblurred 2x image, rerun the deconvolution, compare the kernels.

    ``y* = D(k* * x)`` (``blur_and_downsample``, no noise added), then ``neural_blind_deconvolution(y*)``. Each
    recovered kernel is scored against its own ``k*`` (the similarity of Sample et al.) and against the other applied
    kernels (``kernel_similarity_matrix``): it is *identified* when its own is the highest. The shapes (FWHM per axis
    and along the principal axes, major axis, skewness; ``kernel_shape``) of applied and recovered kernels are kept.

    Args:
        image_2x: the deblurred image ``(2z, 2y, 2x)`` the pseudokernels are applied to.
        spacing: PET voxel size in mm ``(z, y, x)`` (the 2x grid has half of it).
        config: deconvolution settings of the reruns.
        pseudokernels: dicts of ``skewed_kernel`` arguments (``fwhm_mm``, ``skew``).
        device: where to fit.
        output_dir: where to write ``pseudokernel_<i>.png`` (applied above recovered) and both kernels as
            ``pseudokernel_<i>_applied.nii.gz`` / ``_recovered.nii.gz`` (2x voxels; ``None``: nothing written).

    Returns:
        ``{"rows": [...], "similarity_matrix": S}`` with ``S[i][j]`` = recovered ``i`` vs applied ``j``.
    """
    spacing_2x = tuple(s / 2 for s in spacing)
    size = config.kernel_sizes[-1]
    x = torch.as_tensor(np.asarray(image_2x, np.float32))[None, None]
    applied, recovered, rows = [], [], []
    for i, spec in enumerate(pseudokernels):
        k_star = skewed_kernel(spec["fwhm_mm"], spec["skew"], spacing_2x, size)
        measured = blur_and_downsample(x, torch.as_tensor(k_star)[None, None])[0, 0].numpy()
        rerun = neural_blind_deconvolution(measured, spacing, config, device)
        applied.append(k_star)
        recovered.append(rerun.kernel)
        rows.append({
            **spec,
            "applied_shape": kernel_shape(k_star, spacing_2x),
            "recovered_shape": kernel_shape(rerun.kernel, spacing_2x),
            "recovered_fwhm_mm": kernel_shape(rerun.kernel, spacing_2x)["fwhm_mm"],
            "final_loss": rerun.loss_history[-1],
            "kernel_history": rerun.kernel_history,
            "pretrain_loss": rerun.pretrain_loss,
            "seconds": rerun.seconds,
        })
        if output_dir is not None:
            panels = [(f"k*{i + 1} {name}", k_star.max(axis=a)) for a, name in ((0, "axial"), (1, "coronal"), (2, "sagittal"))]
            panels += [(f"k{i + 1} {name}", rerun.kernel.max(axis=a)) for a, name in ((0, "axial"), (1, "coronal"), (2, "sagittal"))]
            save_png(panels, Path(output_dir) / f"pseudokernel_{i + 1}.png", cmap="magma")
            save_nifti(k_star, Path(output_dir) / f"pseudokernel_{i + 1}_applied.nii.gz", spacing=spacing_2x)
            save_nifti(rerun.kernel, Path(output_dir) / f"pseudokernel_{i + 1}_recovered.nii.gz", spacing=spacing_2x)
    matrix = kernel_similarity_matrix(recovered, applied)
    # control: what a kernel that learnt nothing scores (the initial Gaussian, the resolution floor)
    controls = {"initial": config.initial_fwhm_mm} | ({"floor": config.min_fwhm_mm} if config.min_fwhm_mm is not None else {})
    null = {name: kernel_similarity_matrix([gaussian_kernel(np.asarray(f, float) / np.asarray(spacing_2x), size)], applied)[0] for name, f in controls.items()}
    for i, row in enumerate(rows):
        row["null_similarity"] = {name: float(values[i]) for name, values in null.items()}
        others = np.delete(matrix[i], i)
        row.update(similarity=float(matrix[i, i]), best_other_similarity=float(others.max()) if others.size else None,
                   identified=bool(others.size == 0 or matrix[i, i] > others.max()))
        logger.info(f"pseudokernel {i + 1}: similarity {row['similarity']:.3f} (best other {row['best_other_similarity']}), identified {row['identified']}")
    return {"rows": rows, "similarity_matrix": matrix.tolist()}


def evaluate_psma_deconvolution(
    example,
    config: BlindDeconvolutionConfig,
    output_dir: str | os.PathLike,
    brisque_svm: str,
    brisque_range: str,
    pseudokernels=PSEUDOKERNELS,
    pseudokernel_iterations: tuple[int, ...] | None = None,
    device="cpu",
) -> dict:
    """Run the three validations on ``example`` (a ``SpherePhantom``); write ``evaluation.json``/``.md`` and figures.

    Args:
        example: the simulated phantom scan.
        config: deconvolution settings.
        output_dir: destination.
        brisque_svm, brisque_range: the BRISQUE model files (``monai_ext.metrics.brisque``).
        pseudokernels: dicts of ``skewed_kernel`` arguments (``fwhm_mm``, ``skew``); empty: no pseudokernel test.
        pseudokernel_iterations: per-stage iterations of the pseudokernel reruns (default: ``config.iterations``).
        device: where to fit.
    """
    output_dir = Path(output_dir)
    result = neural_blind_deconvolution(example.measured, example.spacing, config, device)
    images = {"deblurred": result.image} | {m: interpolate_2x(example.measured, o) for m, o in INTERPOLATIONS.items()}
    rc = {m: recovery_coefficients(img, example.sphere_masks_2x, example.sphere_activity) for m, img in images.items()}
    psnrs = {m: psnr(img, example.reference_2x) for m, img in images.items()}
    report = {
        "diameters_mm": list(example.diameters),
        "recovery_coefficients": rc,
        "psnr_db": psnrs,
        "fit_seconds": result.seconds,
        "kernel_fwhm_mm": [f * s / 2 for f, s in zip(kernel_fwhm(result.kernel), example.spacing)],
        "true_psf_fwhm_mm": list(example.psf_fwhm),
    }

    # pseudokernel test (an empty list skips it: four more fits)
    pk_config = replace(config, iterations=tuple(pseudokernel_iterations)) if pseudokernel_iterations else config
    pseudo = pseudokernel_test(result.image, example.spacing, pk_config, pseudokernels, device, output_dir) if pseudokernels else {"rows": [], "similarity_matrix": []}
    report["pseudokernels"] = pseudo["rows"]
    report["pseudokernel_similarity_matrix"] = pseudo["similarity_matrix"]
    pseudo_rows = pseudo["rows"]

    # BRISQUE on the sphere plane and the axial MIP, one window for all
    model = load_brisque_model(brisque_svm, brisque_range)
    plane = int(np.argmax(example.sphere_masks_2x.sum(axis=(0, 2, 3))))
    window = (0.0, float(result.image.max()))
    # the true 2x activity and the nearest upsampling of the noiseless scan as controls: what BRISQUE rewards here
    controls = {"truth": example.reference_2x, "nearest (noiseless)": interpolate_2x(example.noiseless, 0)}
    report["brisque"] = {
        m: {"sphere_slice": brisque_score(img[plane], model, window), "axial_mip": brisque_score(img.max(axis=0), model, window)}
        for m, img in (images | controls).items()
    }
    save_png([(m, img[plane]) for m, img in images.items()] + [("reference", example.reference_2x[plane])], output_dir / "sphere_plane.png", vmin=0, vmax=window[1])

    methods = list(images)
    md = ["## Recovery coefficients (mean in the true sphere volume / true activity)", ""]
    md.append(_table(["sphere (mm)", *methods], [[f"{d:g}", *[rc[m][i] for m in methods]] for i, d in enumerate(example.diameters)]))
    md += ["", _table(["PSNR vs 2x truth (dB)", *methods], [["", *[psnrs[m] for m in methods]]])]
    md += ["", "## Pseudokernels (dot product of normalised kernels)", ""]
    md.append("not run (`pseudokernels` is empty)" if not pseudo_rows else _table(["#", "FWHM, skew (parameters, z y x)", "similarity to own k*", "best to another k*", "identified", "fixed initial Gaussian",
                      "applied FWHM (mm, z y x)", "recovered FWHM (mm, z y x)", "applied skewness", "recovered skewness"], [
        [i + 1, " ".join(f"{v:g}" for v in r["fwhm_mm"]) + ", " + " ".join(f"{v:g}" for v in r["skew"]), r["similarity"],
         r["best_other_similarity"], "yes" if r["identified"] else "no", r["null_similarity"]["initial"],
         " ".join(f"{v:.1f}" for v in r["applied_shape"]["fwhm_mm"]), " ".join(f"{v:.1f}" for v in r["recovered_shape"]["fwhm_mm"]),
         " ".join(f"{v:.2f}" for v in r["applied_shape"]["skewness"]), " ".join(f"{v:.2f}" for v in r["recovered_shape"]["skewness"])]
        for i, r in enumerate(pseudo_rows)
    ]))
    md += ["", "## BRISQUE (lower is better)", ""]
    shown = [*methods, *controls]
    md.append(_table(["image", *shown], [[view, *[report["brisque"][m][view] for m in shown]] for view in ("sphere_slice", "axial_mip")]))
    report["markdown"] = "\n".join(md)
    save_json(report, output_dir / "evaluation.json")
    from monai_ext.io import atomic_path

    with atomic_path(output_dir / "evaluation.md", suffix=".md") as tmp:
        tmp.write_text(report["markdown"] + "\n")
    logger.info("\n" + report["markdown"])
    return report
