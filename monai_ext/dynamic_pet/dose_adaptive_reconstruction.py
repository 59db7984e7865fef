"""Regularised dynamic PET reconstruction whose hyperparameters come from a dose model.

For an exam of dose ``D`` (counts), :class:`DoseAdaptiveReconstruction` reads ``eta(D)`` and ``lambda_t(D)`` from a
:class:`~monai_ext.dynamic_pet.dose_model.DoseModel` and solves the regularised problem of
:mod:`monai_ext.dynamic_pet.regularised_mm` with Anderson-accelerated MM, all frames of all exams of a batch at once.
The system model of each exam (attenuation, normalisation, frame scale, background) is passed with its counts, so
one module serves every exam of the same scanner geometry.
"""

from __future__ import annotations

import math
import os

import torch

from ..tomo import ParallelBeamGeometry
from ..tomo.sparse_projector import SparseMatrixProjector
from .dose_model import DoseModel
from .regularised_mm import mm_reconstruct
from ..pet.system_model import PETSystemModel

__all__ = ["DoseAdaptiveReconstruction"]


class DoseAdaptiveReconstruction(torch.nn.Module):
    """MM reconstruction of dynamic PET sinograms with dose-dependent regularisation weights.

    .. math::

        \\hat x = \\arg\\min_{x \\ge 0} L(x, y) + \\eta(D)\\,\\Phi(x) + \\sum_t \\lambda_t(D)\\,\\Psi(x_t, \\epsilon)

    Args:
        geometry: the sinogram geometry of one plane (must match the exams').
        dose_model_file: JSON written by the dose sweep (:meth:`DoseModel.save`).
        psf_fwhm: PSF FWHM of the system model, mm.
        eps: TV smoothing; default: the one the dose model was learned with.
        solver: ``"anderson"`` or ``"picard"``.
        tol: relative-residual tolerance of the fixed point.
        max_iter: MM iteration budget.
        projector: ``"sparse_matrix"`` (stored Joseph matrix) or ``"ray"`` (ray-driven kernels).
        restarts: fresh solves from the last iterate while ``tol`` is not reached (see ``mm_reconstruct``).

    Raises:
        FileNotFoundError: no dose model at ``dose_model_file``.
        ValueError: a dose model learned for another image grid or sinogram shape than ``geometry``.

    Example:
        >>> recon = DoseAdaptiveReconstruction(sim.geometry, "models/dose_model.json", psf_fwhm=4.5)
        >>> x = recon(counts[None], attenuation_factors=att[None], normalisation=norm[None], background=bg[None],
        ...           frame_durations=durations[None], sensitivity=torch.tensor([sigma]), dose=torch.tensor([300e6]))
    """

    def __init__(
        self,
        geometry: ParallelBeamGeometry,
        dose_model_file: str | os.PathLike,
        psf_fwhm: float = 0.0,
        eps: float | None = None,
        solver: str = "anderson",
        tol: float = 1e-5,
        max_iter: int = 500,
        projector: str = "sparse_matrix",
        restarts: int = 5,
    ) -> None:
        super().__init__()
        self.dose_model = DoseModel.load(dose_model_file)
        setting = self.dose_model.setting
        for key, value in (("image_shape", list(geometry.image_shape)), ("sinogram_shape", list(geometry.sinogram_shape))):
            if key in setting and list(setting[key]) != value:
                raise ValueError(
                    f"the dose model {dose_model_file} was learned for {key}={setting[key]}, but the reconstruction geometry "
                    f"has {key}={value}: the weights depend on the grid and sampling; learn a dose model for this setting."
                )
        if projector not in ("sparse_matrix", "ray"):
            raise ValueError(f"projector must be 'sparse_matrix' or 'ray', got {projector!r}.")
        self.geometry, self.psf_fwhm = geometry, float(psf_fwhm)
        self.eps = float(setting.get("eps", 0.1) if eps is None else eps)
        self.solver, self.tol, self.max_iter, self.restarts = solver, float(tol), int(max_iter), int(restarts)
        self.projector = SparseMatrixProjector(geometry) if projector == "sparse_matrix" else None
        self.last_info = None
        self.last_hyperparameters: list[dict] = []

    def check_frames(self, frame_durations: torch.Tensor) -> None:
        """Raise ``ValueError`` unless each exam's frame durations are those the dose model was learned for."""
        expected = self.dose_model.setting.get("frame_durations_s")
        if expected is None:
            if frame_durations.shape[-1] != self.dose_model.n_frames:
                raise ValueError(f"the exam has {frame_durations.shape[-1]} frames; the dose model has {self.dose_model.n_frames}.")
            return
        for b, durations in enumerate(frame_durations.detach().cpu().tolist()):
            if len(durations) != len(expected) or any(abs(a - e) > 1e-6 * max(1.0, e) for a, e in zip(durations, expected)):
                raise ValueError(
                    f"exam {b} has frame durations {durations} s, but the dose model was learned for the schedule {expected} s: "
                    f"the weights are per frame of that schedule."
                )

    def hyperparameters(self, dose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``eta`` ``(B,)`` and ``lambdas`` ``(B, T)`` (float64) for the doses ``(B,)``.

        Raises:
            ValueError: a non-positive or non-finite dose.
        """
        etas, lambdas = [], []
        for d in dose.detach().reshape(-1).cpu().tolist():
            if not (math.isfinite(d) and d > 0):
                raise ValueError(f"the dose D must be a positive, finite number of counts, got {d}.")
            eta, lam = self.dose_model.hyperparameters(d)
            etas.append(eta)
            lambdas.append(lam)
        return torch.tensor(etas, dtype=torch.float64), torch.tensor(lambdas, dtype=torch.float64)

    def system_model(self, attenuation_factors, normalisation, background, frame_durations, sensitivity) -> PETSystemModel:
        """The batch's ``PETSystemModel``: factors ``(B, 1, V, R)``, scale ``(B, T, 1, 1)``, background ``(B, T, V, R)``."""
        scale = sensitivity.reshape(-1, 1, 1, 1) * frame_durations[..., None, None]
        model = PETSystemModel(
            self.geometry, psf_fwhm=self.psf_fwhm, attenuation_factors=attenuation_factors[:, None],
            normalisation=normalisation[:, None], scale=scale, background=background, projector=self.projector,
        )
        return model

    def forward(
        self,
        counts: torch.Tensor,
        *,
        attenuation_factors: torch.Tensor,
        normalisation: torch.Tensor,
        background: torch.Tensor,
        frame_durations: torch.Tensor,
        sensitivity: torch.Tensor,
        dose: torch.Tensor,
    ) -> torch.Tensor:
        """Reconstruct ``(B, T, H, W)`` from counts ``(B, T, V, R)``.

        Args:
            counts: sinograms, non-negative.
            attenuation_factors: ``(B, V, R)``.
            normalisation: ``(B, V, R)``.
            background: expected randoms + scatter ``(B, T, V, R)``.
            frame_durations: ``(B, T)`` seconds.
            sensitivity: ``(B,)`` counts per (kBq/mL x mm x s).
            dose: ``(B,)`` ``D`` of each exam, counts.

        Raises:
            ValueError: counts not ``(B, T, V, R)`` with ``T`` matching ``frame_durations``, negative counts, a frame
                schedule other than the dose model's, or a non-positive dose.
        """
        if counts.ndim != 4 or counts.shape[:2] != frame_durations.shape:
            raise ValueError(
                f"counts must be (B, T, n_views, n_bins) with T = the number of frames of the schedule; got counts "
                f"{tuple(counts.shape)} and frame durations {tuple(frame_durations.shape)}."
            )
        if (counts < 0).any():
            raise ValueError("counts must be non-negative.")
        self.check_frames(frame_durations)
        eta, lambdas = self.hyperparameters(dose)
        dtype = torch.float32 if counts.dtype == torch.float32 else torch.float64
        counts = counts.to(dtype)
        model = self.system_model(
            *(t.to(device=counts.device, dtype=dtype) for t in (attenuation_factors, normalisation, background, frame_durations, sensitivity))
        )
        x, info = mm_reconstruct(counts, model, eta.to(counts), lambdas.to(counts), self.eps, solver=self.solver, tol=self.tol,
                                 max_iter=self.max_iter, restarts=self.restarts)
        self.last_info = info
        self.last_hyperparameters = [{"eta": float(e), "lambdas": [float(v) for v in lam]} for e, lam in zip(eta, lambdas)]
        return x

    def extra_repr(self) -> str:
        return f"image_shape={tuple(self.geometry.image_shape)}, eps={self.eps}, solver={self.solver!r}, tol={self.tol}"
