"""Noise realisations of one simulated dynamic PET slice at one dose: the training data of hyperparameter learning.

Chazottes et al. (MIC 2024) learn the regularisation hyperparameters for one subject, one axial slice and one dose
``D`` from 96 Poisson realisations of the same noise-free exam (80 for training, 16 for validation), the reference
being the noise-free phantom. :func:`simulate_realisations` builds such a set with
:class:`~monai_ext.pet.DynamicPETSimulator`.

**Dose and slice.** ``D`` is the number of counts of the whole (3D) exam, 150 to 750 million in the paper. A 2D
slice records only a share of them; the simulated slice gets ``slice_fraction * D`` expected trues (default 1 %,
about one of the ~100 direct and cross planes of a Biograph TrueV), and its background (randoms + scatter) is the
simulator's ``background_fraction`` of the trues, so it scales with ``D`` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..tomo.sparse_projector import SparseMatrixProjector
from ..pet.simulator import DynamicPETExam, DynamicPETSimulator
from ..pet.system_model import PETSystemModel

__all__ = ["DEFAULT_SLICE_FRACTION", "NoiseRealisations", "simulate_realisations", "exam_realisations", "system_model_of"]

DEFAULT_SLICE_FRACTION = 0.01
"""Share of an exam's counts ``D`` recorded in the simulated 2D slice."""

PROJECTORS = ("sparse_matrix", "ray")


def system_model_of(exam: DynamicPETExam, projector: str = "sparse_matrix") -> PETSystemModel:
    """The exam's ``PETSystemModel`` (factors ``(1, T, ...)``, broadcast over a batch of realisations).

    Args:
        exam: a simulated or loaded exam.
        projector: ``"sparse_matrix"`` (the Joseph matrix stored once, fast for 2D slices solved many times) or
            ``"ray"`` (the ray-driven projector, numba on CPU / ``grid_sample`` on CUDA).

    Raises:
        ValueError: an unknown ``projector``.
    """
    if projector not in PROJECTORS:
        raise ValueError(f"projector must be one of {PROJECTORS}, got {projector!r}.")
    return exam.system_model(projector=SparseMatrixProjector(exam.geometry) if projector == "sparse_matrix" else None)


@dataclass(eq=False)
class NoiseRealisations:
    """Poisson realisations of one noise-free dynamic exam.

    Args:
        exam: the exam (noise-free phantom ``activity``, expected ``trues`` and ``background``, geometry, timing);
            its own ``counts`` are not used.
        counts: ``(N, T, n_views, n_bins)`` realisations of ``Poisson(trues + background)``.
        noise_seeds: seed of each realisation.
        dose: ``D``, counts of the whole exam.
        slice_fraction: share of ``D`` in this slice (``exam.total_counts = slice_fraction * D``).
        model: the system model of the exam, for ``(B, T, H, W)`` batches of any ``B``.
    """

    exam: DynamicPETExam
    counts: torch.Tensor
    noise_seeds: list[int]
    dose: float
    slice_fraction: float
    model: PETSystemModel = field(repr=False)

    @property
    def reference(self) -> torch.Tensor:
        """The noise-free phantom ``(T, H, W)`` (kBq/mL)."""
        return self.exam.activity

    @property
    def n_realisations(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.counts.shape[1])

    def frame_counts(self) -> torch.Tensor:
        """Expected counts (trues + background) per frame, ``(T,)``."""
        return self.exam.expected_counts.flatten(1).sum(-1)

    def split(self, n_train: int) -> tuple[list[int], list[int]]:
        """Indices of the first ``n_train`` realisations (training) and of the rest (validation).

        Raises:
            ValueError: ``n_train`` outside ``[1, N - 1]``.
        """
        if not 1 <= int(n_train) < self.n_realisations:
            raise ValueError(f"n_train must be in [1, {self.n_realisations - 1}] for {self.n_realisations} realisations, got {n_train}.")
        return list(range(int(n_train))), list(range(int(n_train), self.n_realisations))


def simulate_realisations(
    simulator: DynamicPETSimulator,
    dose: float,
    n_realisations: int,
    *,
    subject_seed: int = 0,
    slice_fraction: float = DEFAULT_SLICE_FRACTION,
    noise_seed: int = 0,
    projector: str = "sparse_matrix",
) -> NoiseRealisations:
    """Simulate one subject's slice at dose ``D`` and draw ``n_realisations`` Poisson realisations of it.

    Args:
        simulator: the dynamic PET simulator (scanner, grid, frame schedule, background model).
        dose: ``D``, counts of the whole exam (e.g. ``300e6``); positive and finite.
        n_realisations: number of noise draws (96 in the paper).
        subject_seed: the phantom ("patient").
        slice_fraction: share of ``D`` in the slice, in ``(0, 1]``.
        noise_seed: realisation ``i`` uses seed ``noise_seed + i``.
        projector: see :func:`system_model_of`.

    Raises:
        ValueError: a non-positive or non-finite ``dose``, ``n_realisations`` < 1, or ``slice_fraction`` outside
            ``(0, 1]``.

    Example:
        >>> sim = DynamicPETSimulator(image_shape=(64, 64), view_mashing=4)
        >>> data = simulate_realisations(sim, 300e6, 24, subject_seed=1)
        >>> data.counts.shape
        torch.Size([24, 20, 78, 171])
    """
    try:
        valid = math.isfinite(float(dose)) and float(dose) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"dose must be a positive, finite number of counts (D), got {dose!r}.")
    if int(n_realisations) < 1:
        raise ValueError(f"n_realisations must be a positive integer, got {n_realisations}.")
    if not 0 < slice_fraction <= 1:
        raise ValueError(f"slice_fraction must be in (0, 1], got {slice_fraction}.")
    exam = simulator.simulate(float(dose) * slice_fraction, subject_seed=subject_seed, noise_seed=noise_seed)
    seeds = [int(noise_seed) + i for i in range(int(n_realisations))]
    mean = exam.expected_counts
    counts = torch.stack([torch.poisson(mean, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return NoiseRealisations(exam, counts, seeds, float(dose), float(slice_fraction), system_model_of(exam, projector))


_SHARED_ARRAYS = ("activity", "attenuation_factors", "normalisation", "background")


def exam_realisations(
    folders,
    *,
    dose: float | None = None,
    slice_fraction: float = DEFAULT_SLICE_FRACTION,
    projector: str = "sparse_matrix",
) -> NoiseRealisations:
    """Realisations of one exam read from a user's exam folders (the format ``monai_ext.pet.save_exam`` writes and
    the bundle's inference reads): each folder is one realisation (its ``counts``) of the same subject, slice and
    dose, with the reference image ``activity.nii.gz``. Repeat acquisitions, or bootstrap resamples of one
    list-mode acquisition, give such realisations of a real exam.

    Args:
        folders: the exam folders (at least 2: one to learn from, one to validate).
        dose: ``D`` of the exam; default: ``total_counts / slice_fraction`` of the first exam.
        slice_fraction: share of ``D`` in the slice.
        projector: see :func:`system_model_of`.

    Raises:
        FileNotFoundError: an exam without its reference ``activity.nii.gz`` or its sinogram files.
        ValueError: fewer than 2 exams, or exams that are not realisations of one exam (a different reference,
            attenuation, normalisation, background, geometry, frame timing, sensitivity or dose; named).
    """
    from ..io.files import geometry_to_dict
    from ..pet.exam_io import load_exam

    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ValueError(f"hyperparameter learning needs at least 2 realisations of an exam (one to learn from, one to validate); got {len(folders)}: "
                         f"{', '.join(map(str, folders)) or 'none'}.")
    exams = []
    for folder in folders:
        if not (folder / "activity.nii.gz").is_file():
            raise FileNotFoundError(f"exam {folder} has no reference image activity.nii.gz: learning needs the image each exam should reconstruct to.")
        exams.append(load_exam(folder))
    first = exams[0]
    for folder, exam in zip(folders[1:], exams[1:]):
        for name in _SHARED_ARRAYS:
            a, b = getattr(first, name), getattr(exam, name)
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
                raise ValueError(f"exams {folders[0]} and {folder} differ in {name}: the realisations pooled for one learning run must be of one "
                                 "subject, slice and dose (put other subjects or doses in their own group folder).")
        same = {"geometry": geometry_to_dict(first.geometry) == geometry_to_dict(exam.geometry),
                "frame timing": first.schedule == exam.schedule,
                "sensitivity": math.isclose(first.sensitivity, exam.sensitivity, rel_tol=1e-6),
                "total_counts": math.isclose(first.total_counts, exam.total_counts, rel_tol=1e-6)}
        for name, ok in same.items():
            if not ok:
                raise ValueError(f"exams {folders[0]} and {folder} differ in {name}: the realisations pooled for one learning run must be of one "
                                 "subject, slice and dose.")
    d = float(dose) if dose is not None else first.total_counts / float(slice_fraction)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"the dose D of {folders[0]} must be positive and finite, got {d!r}.")
    counts = torch.stack([exam.counts for exam in exams])
    return NoiseRealisations(first, counts, [int(exam.noise_seed) for exam in exams], d, float(slice_fraction), system_model_of(first, projector))
