"""MONAI transforms for measurement physics (array and dictionary forms)."""

from .grids import ResampleToGridd, resample_to_grid
from .tomography import SimulateProjectionsd
from .training_cases import LoadTrainingCased, SeededTransmissionNoised, SimulateLineIntegralsd, TransmissionNoised
from .transmission import BeerLambertCounts, BeerLambertCountsd, NegLogTransmission, NegLogTransmissiond

__all__ = [
    "ResampleToGridd",
    "resample_to_grid",
    "SimulateProjectionsd",
    "LoadTrainingCased",
    "SimulateLineIntegralsd",
    "TransmissionNoised",
    "SeededTransmissionNoised",
    "BeerLambertCounts",
    "BeerLambertCountsd",
    "NegLogTransmission",
    "NegLogTransmissiond",
]
