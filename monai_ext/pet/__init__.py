"""PET physics: scanner geometry, system model, Poisson likelihood, MLEM/OSEM, tracer kinetics and a dynamic PET simulator.

The methods built on it have their own packages: the DEQ hyperparameter learning of dynamic PET in
:mod:`monai_ext.dynamic_pet`, the neural blind deconvolution of PSMA PET in :mod:`monai_ext.deconvolution`.

- ``scanner``: ``PETScanner`` (frozen dataclass) with the ``BIOGRAPH_6_TRUEPOINT_TRUEV`` and ``DEMO_SCANNER`` presets,
  and the 2D sinogram geometry (a ``monai_ext.tomo.ParallelBeamGeometry``) for an image grid.
- ``system_model``: ``PETSystemModel`` ``A x = s a n P G x`` with an explicit background, and ``GaussianPSF``.
- ``likelihood``: ``poisson_nll`` and its gradients.
- ``expectation_maximisation``: ``mlem`` and ``osem`` (optionally post-filtered), returning the image and a ``ReconInfo``.
- ``kinetics``: ``FrameSchedule``, the Feng input, the two-tissue compartment model, decay and frame averaging.
- ``phantom``: a seeded 2D brain phantom of about 100 regions with its attenuation map.
- ``simulator``: ``DynamicPETSimulator`` producing ``DynamicPETExam``s at a chosen total number of counts.
- ``exam_io``: writing exams as NIfTI + NPZ + JSON (atomically, with ``monai_ext.io``) and reading them back.
"""

from ..deprecation import alias_modules
from .exam_io import load_exam, save_exam
from .kinetics import (
    C11_HALF_LIFE_MIN,
    PE2I_LIKE_INPUT,
    FengInput,
    FrameSchedule,
    TwoTissueParameters,
    convolve_exponential,
    decay_factor,
    frame_average,
    frame_decay_factors,
    frame_tacs,
    two_tissue_tac,
)
from .likelihood import poisson_nll, poisson_nll_gradient, poisson_nll_image_gradient
from .phantom import MU_BONE, MU_WATER, TISSUE_CLASSES, BrainPhantom, brain_phantom
from .expectation_maximisation import ReconInfo, mlem, osem
from .scanner import BIOGRAPH_6_TRUEPOINT_TRUEV, DEMO_SCANNER, PETScanner
from .simulator import (
    PE2I_LIKE_KINETICS,
    DynamicPETExam,
    DynamicPETSimulator,
    batch_system_model,
    crystal_pair_normalisation,
    region_parameters,
)
from .system_model import GaussianPSF, PETSystemModel

__all__ = [
    "PETScanner",
    "BIOGRAPH_6_TRUEPOINT_TRUEV",
    "DEMO_SCANNER",
    "GaussianPSF",
    "PETSystemModel",
    "poisson_nll",
    "poisson_nll_gradient",
    "poisson_nll_image_gradient",
    "ReconInfo",
    "mlem",
    "osem",
    "C11_HALF_LIFE_MIN",
    "FrameSchedule",
    "FengInput",
    "PE2I_LIKE_INPUT",
    "TwoTissueParameters",
    "convolve_exponential",
    "two_tissue_tac",
    "decay_factor",
    "frame_average",
    "frame_decay_factors",
    "frame_tacs",
    "TISSUE_CLASSES",
    "MU_WATER",
    "MU_BONE",
    "BrainPhantom",
    "brain_phantom",
    "PE2I_LIKE_KINETICS",
    "DynamicPETExam",
    "DynamicPETSimulator",
    "batch_system_model",
    "crystal_pair_normalisation",
    "region_parameters",
    "save_exam",
    "load_exam",
]

# Moved modules and names (kept importable from here, with a DeprecationWarning, for one release).
alias_modules(
    {
        **{f"monai_ext.pet.{m}": f"monai_ext.dynamic_pet.{m}" for m in (
            "regularised_mm", "noise_realisations", "hyperparameter_learning", "dose_model", "dose_adaptive_reconstruction")},
        "monai_ext.pet.blind_deconvolution": "monai_ext.deconvolution.blind_deconvolution",
        "monai_ext.pet.blur_likelihood": "monai_ext.deconvolution.blur_likelihood",
        "monai_ext.pet.recon": "monai_ext.pet.expectation_maximisation",
    }
)
_MOVED = {name: "monai_ext.dynamic_pet" for name in (
    "DoseAdaptiveReconstruction",
    "DOSE_MODELS",
    "DoseFit",
    "DoseModel",
    "fit_dose_model",
    "fit_dose_models",
    "FixedPointProblem",
    "RegularisationWeights",
    "SearchResult",
    "grid_search",
    "learn_hyperparameters_deq",
    "tpe_search",
    "NoiseRealisations",
    "simulate_realisations",
    "RegularisedMMMap",
    "dynamic_pet_objective",
    "kkt_residuals",
    "mm_reconstruct",
    "regularised_mm_step",
    "smoothed_total_variation",
    "temporal_difference_penalty",

)}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"monai_ext.pet.{name} moved to {_MOVED[name]}.{name}; the old name goes in the next release.", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'monai_ext.pet' has no attribute {name!r}")
