"""Image quality metrics: full-reference (PSNR, SSIM), no-reference (BRISQUE), deconvolution (recovery, kernels)."""

from .brisque import brisque_features, brisque_score, load_brisque_model
from .deconvolution import kernel_similarity, recovery_coefficients
from .image_quality import psnr, relative_error, ssim

__all__ = [
    "psnr",
    "ssim",
    "relative_error",
    "recovery_coefficients",
    "kernel_similarity",
    "brisque_features",
    "brisque_score",
    "load_brisque_model",
]
