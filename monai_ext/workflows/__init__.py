"""Glue between MONAI engines and reconstruction tasks, shared by the bundles' configs."""

from .reconstruction import KeyedPrepareBatch, ReconstructionSummary, SaveReconstructiond

__all__ = ["KeyedPrepareBatch", "SaveReconstructiond", "ReconstructionSummary"]
