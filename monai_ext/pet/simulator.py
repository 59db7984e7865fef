"""Dynamic PET simulator: brain phantom + 2TCM kinetics -> noise-free and Poisson sinograms at a set count level.

For a subject (``brain_phantom``) each region's 2TCM rates are drawn around an 11C-PE2I-like class value, its TAC
is computed with decay and averaged over the frames (``frame_tacs``), giving the noise-free phantom ``x_t``
(kBq/mL, frame-average, not decay corrected). With ``A`` the system model without scale (PSF, projection,
attenuation, normalisation) and ``d_t`` the frame durations (s):

.. math::

    \\bar y^{true}_t = \\sigma\\, d_t\\, A x_t, \\qquad
    \\sigma = \\frac{D}{\\sum_t d_t \\sum_i (A x_t)_i} \\;\\text{(counts per kBq/mL/mm/s)},

so the exam's expected trues sum to ``D`` exactly and split across frames by activity x duration x decay. The
background of frame ``t`` holds ``f = background_fraction`` times its trues, spread as randoms (proportional to the
detector normalisation) and scatter (the frame's trues blurred radially with FWHM ``scatter_fwhm`` mm), in the ratio
``1 - scatter_share : scatter_share``. With ``counts_include_background`` the trues are scaled by ``1 / (1 + f)``
so that trues + background sum to ``D``. Counts are a Poisson draw of ``trues + background`` from a seeded
generator. The same ``A`` serves simulation and reconstruction (``DynamicPETExam.system_model``), as in the
analytical simulation of Chazottes et al.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..tomo import ParallelBeamGeometry
from .kinetics import C11_HALF_LIFE_MIN, PE2I_LIKE_INPUT, FrameSchedule, TwoTissueParameters, frame_tacs
from .phantom import BrainPhantom, brain_phantom
from .scanner import BIOGRAPH_6_TRUEPOINT_TRUEV, PETScanner
from .system_model import FWHM_PER_SIGMA, PETSystemModel

__all__ = [
    "PE2I_LIKE_KINETICS",
    "DynamicPETExam",
    "DynamicPETSimulator",
    "batch_system_model",
    "crystal_pair_normalisation",
    "region_parameters",
]

PE2I_LIKE_KINETICS = {
    # class: (K1 mL/min/mL, k2 1/min, k3 1/min, k4 1/min, vB); BP_ND = k3 / k4
    "scalp": (0.08, 0.10, 0.0, 0.0, 0.03),
    "skull": (0.03, 0.08, 0.0, 0.0, 0.02),
    "white_matter": (0.20, 0.12, 0.003, 0.03, 0.03),  # BP ~ 0.1
    "cortex": (0.40, 0.15, 0.009, 0.03, 0.04),  # BP ~ 0.3
    "cerebellum": (0.45, 0.15, 0.0, 0.0, 0.04),  # reference region, BP = 0
    "thalamus": (0.45, 0.15, 0.018, 0.03, 0.04),  # BP ~ 0.6
    "putamen": (0.45, 0.15, 0.21, 0.03, 0.04),  # BP ~ 7
    "caudate": (0.45, 0.15, 0.18, 0.03, 0.04),  # BP ~ 6
    "ventricle": (0.02, 0.05, 0.0, 0.0, 0.0),  # CSF
}
"""2TCM rates per tissue class mimicking the dopamine transporter ligand 11C-PE2I: high specific binding in the
striatum, none in the cerebellum, low elsewhere. Illustrative values of the right order, not fitted to data."""


def region_parameters(phantom: BrainPhantom, kinetics: dict = PE2I_LIKE_KINETICS, jitter: float = 0.1, seed: int = 0) -> TwoTissueParameters:
    """Per-region 2TCM rates: the class value times a log-normal factor ``exp(jitter * N(0, 1))`` drawn per region and
    rate (``vB`` clipped to 1).

    Raises:
        ValueError: a region class missing from ``kinetics`` or a negative ``jitter``.
    """
    missing = sorted(set(phantom.region_classes) - set(kinetics))
    if missing:
        raise ValueError(f"kinetics has no rates for the region classes {missing}.")
    if not jitter >= 0:
        raise ValueError(f"jitter must be non-negative, got {jitter}.")
    base = np.array([kinetics[c] for c in phantom.region_classes], dtype=float)
    rates = base * np.exp(jitter * np.random.default_rng(seed).standard_normal(base.shape))
    rates[:, 4] = np.minimum(rates[:, 4], 1.0)
    return TwoTissueParameters(*rates.T)


def crystal_pair_normalisation(scanner: PETScanner, geometry: ParallelBeamGeometry, efficiency_sd: float, seed: int = 0) -> torch.Tensor:
    """Normalisation factors ``n = e_a e_b`` ``(n_views, n_bins)`` from seeded crystal efficiencies
    ``e ~ N(1, efficiency_sd)`` (clipped to ``[0.5, 1.5]``) of the two crystals of each line of response."""
    if not efficiency_sd >= 0:
        raise ValueError(f"efficiency_sd must be non-negative, got {efficiency_sd}.")
    efficiency = np.clip(1.0 + efficiency_sd * np.random.default_rng(seed).standard_normal(scanner.detectors_per_ring), 0.5, 1.5)
    pairs = scanner.lor_crystals(geometry)
    return torch.as_tensor(efficiency[pairs[..., 0]] * efficiency[pairs[..., 1]])


@dataclass(frozen=True, eq=False)
class DynamicPETExam:
    """One simulated dynamic exam: the noise-free reference, the expected and the noisy sinograms, and what is
    needed to reconstruct them. Tensors are float64 (``counts`` holds integers as floats).

    Args:
        scanner: the scanner simulated.
        geometry: the sinogram geometry of the plane.
        psf_fwhm: PSF FWHM in mm of the system model.
        schedule: frame timing.
        activity: ``(T, ny, nx)`` noise-free frame-average activity, kBq/mL, not decay corrected.
        mu_map: ``(ny, nx)`` attenuation map, 1/mm.
        attenuation_factors: ``(n_views, n_bins)`` ``exp(-P mu)``.
        normalisation: ``(n_views, n_bins)`` detector normalisation.
        sensitivity: ``sigma``, counts per (kBq/mL x mm x s).
        trues: ``(T, n_views, n_bins)`` expected true counts, ``sigma d_t A x_t`` (noise-free sinograms).
        background: ``(T, n_views, n_bins)`` expected randoms + scatter counts.
        counts: ``(T, n_views, n_bins)`` Poisson draw of ``trues + background``.
        total_counts: ``D``, the expected count total the exam was scaled to.
        counts_include_background: whether ``D`` counts the background too.
        noise_seed: seed of the Poisson draw.
        phantom: the brain phantom (``None`` for a user-supplied activity).
        parameters: the regions' 2TCM rates (``None`` for a user-supplied activity).
        region_tacs: ``(R, T)`` frame-average activity of each region (``None`` for a user-supplied activity).
        subject_seed: seed of the phantom and rates (``None`` for a user-supplied activity).
    """

    scanner: PETScanner
    geometry: ParallelBeamGeometry
    psf_fwhm: float
    schedule: FrameSchedule
    activity: torch.Tensor
    mu_map: torch.Tensor
    attenuation_factors: torch.Tensor
    normalisation: torch.Tensor
    sensitivity: float
    trues: torch.Tensor
    background: torch.Tensor
    counts: torch.Tensor
    total_counts: float
    counts_include_background: bool
    noise_seed: int
    phantom: BrainPhantom | None = None
    parameters: TwoTissueParameters | None = None
    region_tacs: np.ndarray | None = None
    subject_seed: int | None = None

    @property
    def frame_scale(self) -> torch.Tensor:
        """``sigma d_t``: counts per (kBq/mL x mm) in each frame, ``(T,)``."""
        return self.sensitivity * torch.as_tensor(self.schedule.durations, dtype=torch.float64)

    @property
    def expected_counts(self) -> torch.Tensor:
        """``trues + background``, ``(T, n_views, n_bins)``."""
        return self.trues + self.background

    def system_model(self, backend: str = "auto", projector=None) -> PETSystemModel:
        """The model that produced the data, for ``(1, T, ny, nx)`` images: ``expected_counts(activity[None])`` gives
        back ``expected_counts[None]`` (see ``batch_system_model`` for several exams, and for ``projector``)."""
        return batch_system_model([self], backend, projector)


def batch_system_model(exams: Sequence[DynamicPETExam], backend: str = "auto", projector=None) -> PETSystemModel:
    """One model for a batch of exams of the same scanner, geometry, PSF, normalisation and schedule, acting on
    ``(B, T, ny, nx)`` images: each exam keeps its attenuation ``(B, 1, V, R)``, frame scale ``(B, T, 1, 1)`` and
    background ``(B, T, V, R)``. ``projector``: the 2D projector to inject (e.g. a ``SparseMatrixProjector`` of the
    exams' geometry); default the ray-driven one with ``backend``.

    Raises:
        ValueError: an empty list, or exams that differ in geometry, PSF, schedule or normalisation.
    """
    if not exams:
        raise ValueError("exams must hold at least one DynamicPETExam.")
    first = exams[0]
    for i, exam in enumerate(exams[1:], start=1):
        same = (exam.geometry, exam.psf_fwhm, exam.schedule) == (first.geometry, first.psf_fwhm, first.schedule)
        if not same or not torch.equal(exam.normalisation, first.normalisation):
            raise ValueError(f"exams[{i}] differs from exams[0] in geometry, psf_fwhm, schedule or normalisation.")
    return PETSystemModel(
        first.geometry,
        psf_fwhm=first.psf_fwhm,
        attenuation_factors=torch.stack([e.attenuation_factors for e in exams])[:, None],
        normalisation=first.normalisation,
        scale=torch.stack([e.frame_scale for e in exams])[:, :, None, None],
        background=torch.stack([e.background for e in exams]),
        projector=projector,
        backend=backend,
    )


class DynamicPETSimulator:
    """Simulates dynamic 2D PET exams of seeded brain phantoms at a chosen total number of counts.

    Args:
        scanner: the scanner (default: the Biograph 6 TruePoint TrueV preset).
        image_shape: ``(ny, nx)``; 64 x 64 (4 mm pixels) for quick runs, 128 x 128 (2 mm) for the full scale.
        pixel_size: mm; default ``256 / nx`` (a 256 mm field of view).
        schedule: frame timing (default: the 20-frame 11C-PE2I protocol).
        psf_fwhm: PSF FWHM in mm (default ``scanner.resolution_fwhm``).
        view_mashing: views summed per sinogram view (see ``PETScanner.sinogram_geometry``).
        n_regions: regions of the phantom.
        input_function: plasma input, a callable of time in minutes.
        kinetics: 2TCM rates per tissue class.
        parameter_jitter: log-normal spread of the per-region rates.
        half_life_min: tracer half-life in minutes.
        background_fraction: expected background counts as a fraction of the trues, per frame.
        scatter_share: share of scatter in the background (the rest is randoms).
        scatter_fwhm: radial FWHM (mm) of the scatter blur.
        crystal_efficiency_sd: spread of the crystal efficiencies of the normalisation (0: no normalisation effect).
        normalisation_seed: seed of the crystal efficiencies (a scanner property, shared by all subjects).
        counts_include_background: whether ``total_counts`` counts the background as well as the trues.
        backend: projector backend.

    Raises:
        ValueError: on invalid settings, or at ``simulate`` on a non-positive ``total_counts`` or invalid activity.

    Example:
        >>> sim = DynamicPETSimulator(image_shape=(64, 64))
        >>> exam = sim.simulate(total_counts=300e6, subject_seed=1, noise_seed=7)
        >>> exam.counts.shape, float(exam.trues.sum())  # (20, 312, 171), 3e8
    """

    def __init__(
        self,
        scanner: PETScanner = BIOGRAPH_6_TRUEPOINT_TRUEV,
        image_shape: tuple[int, int] = (64, 64),
        pixel_size: float | tuple[float, float] | None = None,
        schedule: FrameSchedule | None = None,
        *,
        psf_fwhm: float | None = None,
        view_mashing: int = 1,
        n_regions: int = 100,
        input_function=PE2I_LIKE_INPUT,
        kinetics: dict = PE2I_LIKE_KINETICS,
        parameter_jitter: float = 0.1,
        half_life_min: float = C11_HALF_LIFE_MIN,
        background_fraction: float = 0.3,
        scatter_share: float = 0.5,
        scatter_fwhm: float = 100.0,
        crystal_efficiency_sd: float = 0.05,
        normalisation_seed: int = 0,
        counts_include_background: bool = False,
        backend: str = "auto",
    ) -> None:
        self.scanner = scanner
        self.image_shape = tuple(int(n) for n in image_shape)
        self.pixel_size = 256.0 / self.image_shape[1] if pixel_size is None else pixel_size
        self.schedule = FrameSchedule.pe2i_protocol() if schedule is None else schedule
        self.psf_fwhm = float(scanner.resolution_fwhm if psf_fwhm is None else psf_fwhm)
        self.n_regions = int(n_regions)
        self.input_function = input_function
        self.kinetics = kinetics
        self.parameter_jitter = float(parameter_jitter)
        self.half_life_min = float(half_life_min)
        if not background_fraction >= 0:
            raise ValueError(f"background_fraction must be non-negative, got {background_fraction}.")
        if not 0 <= scatter_share <= 1:
            raise ValueError(f"scatter_share must lie in [0, 1], got {scatter_share}.")
        self.background_fraction = float(background_fraction)
        self.scatter_share = float(scatter_share)
        self.counts_include_background = bool(counts_include_background)
        self.geometry = scanner.sinogram_geometry(self.image_shape, self.pixel_size, view_mashing=view_mashing)
        self.normalisation = crystal_pair_normalisation(scanner, self.geometry, crystal_efficiency_sd, normalisation_seed)
        self.model = PETSystemModel(self.geometry, psf_fwhm=self.psf_fwhm, normalisation=self.normalisation, backend=backend)
        if not scatter_fwhm > 0:
            raise ValueError(f"scatter_fwhm must be positive (mm), got {scatter_fwhm}.")
        # radial Gaussian blur of the scatter as an (n_bins, n_bins) matrix: the kernel spans most of the sinogram
        u = torch.arange(self.geometry.n_det, dtype=torch.float64) * self.geometry.det_spacing
        self.scatter_blur = torch.exp(-0.5 * ((u[:, None] - u[None, :]) / (scatter_fwhm / FWHM_PER_SIGMA)) ** 2)

    def phantom(self, subject_seed: int = 0) -> BrainPhantom:
        """The brain phantom of a subject on this simulator's grid."""
        return brain_phantom(self.image_shape, self.pixel_size, n_regions=self.n_regions, seed=subject_seed)

    def simulate(self, total_counts: float, *, subject_seed: int = 0, noise_seed: int = 0) -> DynamicPETExam:
        """A complete exam: the subject's phantom and kinetics, scaled to ``total_counts`` expected counts, one noise draw.

        Args:
            total_counts: ``D``, e.g. 150e6 to 750e6.
            subject_seed: seed of the anatomy, Voronoi regions and per-region rates.
            noise_seed: seed of the Poisson draw.
        """
        phantom = self.phantom(subject_seed)
        parameters = region_parameters(phantom, self.kinetics, self.parameter_jitter, seed=subject_seed)
        tacs = frame_tacs(parameters, self.input_function, self.schedule, half_life_min=self.half_life_min)
        activity = torch.as_tensor(phantom.image(tacs))
        exam = self.simulate_from_activity(activity, torch.as_tensor(phantom.mu_map), total_counts, noise_seed=noise_seed)
        return dataclasses.replace(exam, phantom=phantom, parameters=parameters, region_tacs=tacs, subject_seed=subject_seed)

    def simulate_from_activity(
        self, activity: torch.Tensor, mu_map: torch.Tensor, total_counts: float, *, noise_seed: int = 0
    ) -> DynamicPETExam:
        """An exam of a given noise-free dynamic image.

        Args:
            activity: ``(T, ny, nx)`` frame-average activity (kBq/mL, not decay corrected), non-negative.
            mu_map: ``(ny, nx)`` attenuation map, 1/mm.
            total_counts: ``D``, positive.
            noise_seed: seed of the Poisson draw.

        Raises:
            ValueError: a non-positive or non-finite ``total_counts``; ``activity`` of the wrong shape, negative,
                non-finite or all zero.
        """
        try:
            valid = math.isfinite(float(total_counts)) and float(total_counts) > 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"total_counts must be a positive finite number of counts, got {total_counts!r}.")
        total_counts = float(total_counts)
        activity = torch.as_tensor(activity, dtype=torch.float64)
        expected_shape = (self.schedule.n_frames, *self.image_shape)
        if tuple(activity.shape) != expected_shape:
            raise ValueError(f"activity must have shape (T, ny, nx) = {expected_shape}, got {tuple(activity.shape)}.")
        if not torch.isfinite(activity).all():
            raise ValueError("activity contains NaN or inf.")
        if (activity < 0).any():
            raise ValueError(f"activity must be non-negative (kBq/mL), got a minimum of {float(activity.min())}.")
        if not (activity > 0).any():
            raise ValueError("activity is zero everywhere: there is nothing to count.")
        mu_map = torch.as_tensor(mu_map, dtype=torch.float64)

        with torch.no_grad():
            self.model.set_mu_map(mu_map)
            unit = self.model(activity[None])[0]  # (T, V, R): a n P G x_t, counts per (kBq/mL mm)
            durations = torch.as_tensor(self.schedule.durations, dtype=torch.float64)
            per_frame = durations[:, None, None] * unit
            trues_total = total_counts / (1.0 + self.background_fraction) if self.counts_include_background else total_counts
            sensitivity = trues_total / float(per_frame.sum())
            trues = sensitivity * per_frame
            background = self._background(trues)
            generator = torch.Generator().manual_seed(int(noise_seed))
            counts = torch.poisson(trues + background, generator=generator)
        return DynamicPETExam(
            scanner=self.scanner,
            geometry=self.geometry,
            psf_fwhm=self.psf_fwhm,
            schedule=self.schedule,
            activity=activity,
            mu_map=mu_map,
            attenuation_factors=self.model.attenuation_factors[0, 0].clone(),
            normalisation=self.normalisation.clone(),
            sensitivity=sensitivity,
            trues=trues,
            background=background,
            counts=counts,
            total_counts=float(total_counts),
            counts_include_background=self.counts_include_background,
            noise_seed=int(noise_seed),
        )

    def _background(self, trues: torch.Tensor) -> torch.Tensor:
        """Randoms + scatter ``(T, V, R)`` with ``background_fraction`` of each frame's trues."""
        frame_trues = trues.sum(dim=(1, 2), keepdim=True)
        randoms = self.normalisation / self.normalisation.sum()
        scatter = trues @ self.scatter_blur
        scatter = scatter / scatter.sum(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(scatter.dtype).tiny)
        shape = (1.0 - self.scatter_share) * randoms + self.scatter_share * scatter
        return self.background_fraction * frame_trues * shape
