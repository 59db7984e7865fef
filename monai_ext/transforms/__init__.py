"""MONAI transforms for measurement physics (array and dictionary forms)."""

from .grids import ResampleToGridd, resample_to_grid
from .tomography import SimulateProjectionsd
from .transmission import BeerLambertCounts, BeerLambertCountsd, NegLogTransmission, NegLogTransmissiond

__all__ = ["ResampleToGridd", "resample_to_grid", "SimulateProjectionsd", "BeerLambertCounts", "BeerLambertCountsd", "NegLogTransmission", "NegLogTransmissiond"]
