"""MONAI transforms for measurement physics (array and dictionary forms)."""

from .tomography import SimulateProjectionsd
from .transmission import BeerLambertCounts, BeerLambertCountsd, NegLogTransmission, NegLogTransmissiond

__all__ = ["SimulateProjectionsd", "BeerLambertCounts", "BeerLambertCountsd", "NegLogTransmission", "NegLogTransmissiond"]
