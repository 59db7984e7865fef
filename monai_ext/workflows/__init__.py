"""Glue between MONAI engines and reconstruction tasks, shared by the bundles' configs."""

from .dynamic_pet_inference import DynamicPETPrepareBatch, SaveDynamicSeriesd, dynamic_pet_cases
from .reconstruction import KeyedPrepareBatch, ReconstructionSummary, SaveReconstructiond

__all__ = [
    "KeyedPrepareBatch",
    "SaveReconstructiond",
    "ReconstructionSummary",
    "dynamic_pet_cases",
    "DynamicPETPrepareBatch",
    "SaveDynamicSeriesd",
]
