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

import torch

from ..tomo.sparse_projector import SparseMatrixProjector
from ..pet.simulator import DynamicPETExam, DynamicPETSimulator
from ..pet.system_model import PETSystemModel

__all__ = ["DEFAULT_SLICE_FRACTION", "NoiseRealisations", "simulate_realisations", "system_model_of"]

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
