"""Dynamic PET reconstruction with learned regularisation weights (Chazottes et al., MIC 2024).

Built on the PET physics of :mod:`monai_ext.pet` and the fixed-point layers of :mod:`monai_ext.deq`:

- ``regularised_mm``: the regularised dynamic objective (Poisson + temporal + smoothed TV) and its monotone MM map.
- ``noise_realisations``: Poisson realisations of one slice at one dose, the data of hyperparameter learning.
- ``hyperparameter_learning``: DEQ learning of the regularisation weights; grid search and TPE baselines.
- ``learning_engine``: that learning as MONAI engines, for one or several groups of realisations.
- ``dose_model``: parametric fits of the weights against the dose and the dose model file.
- ``dose_adaptive_reconstruction``: reconstruction with the weights of a dose model.
"""

from .dose_adaptive_reconstruction import DoseAdaptiveReconstruction
from .dose_model import DOSE_MODELS, DoseFit, DoseModel, fit_dose_model, fit_dose_models
from .hyperparameter_learning import (
    FixedPointProblem,
    RegularisationWeights,
    SearchResult,
    grid_search,
    hypergradient_step,
    learn_hyperparameters_deq,
    tpe_search,
)
from .learning_engine import GroupBatches, GroupWeights, HypergradientStep, ValidationStep
from .noise_realisations import NoiseRealisations, exam_realisations, simulate_realisations
from .regularised_mm import (
    RegularisedMMMap,
    dynamic_pet_objective,
    kkt_residuals,
    mm_reconstruct,
    regularised_mm_step,
    smoothed_total_variation,
    temporal_difference_penalty,
)

__all__ = [
    "dynamic_pet_objective",
    "temporal_difference_penalty",
    "smoothed_total_variation",
    "regularised_mm_step",
    "RegularisedMMMap",
    "kkt_residuals",
    "mm_reconstruct",
    "NoiseRealisations",
    "simulate_realisations",
    "exam_realisations",
    "RegularisationWeights",
    "FixedPointProblem",
    "SearchResult",
    "learn_hyperparameters_deq",
    "hypergradient_step",
    "GroupWeights",
    "GroupBatches",
    "HypergradientStep",
    "ValidationStep",
    "grid_search",
    "tpe_search",
    "DOSE_MODELS",
    "DoseFit",
    "DoseModel",
    "fit_dose_model",
    "fit_dose_models",
    "DoseAdaptiveReconstruction",
]
