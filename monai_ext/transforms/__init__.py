"""MONAI transforms for measurement physics (array and dictionary forms)."""

from .transmission import BeerLambertCounts, BeerLambertCountsd, NegLogTransmission, NegLogTransmissiond

__all__ = ["BeerLambertCounts", "BeerLambertCountsd", "NegLogTransmission", "NegLogTransmissiond"]
