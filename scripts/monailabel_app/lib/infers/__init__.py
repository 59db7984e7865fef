"""MONAI Label infer tasks of the app."""

from .bundle_reconstruction import BundleReconstructionTask

__all__ = ["BundleReconstructionTask"]
