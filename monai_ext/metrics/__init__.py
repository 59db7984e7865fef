"""Image quality metrics: full-reference (PSNR, SSIM), no-reference (BRISQUE), deconvolution (recovery, kernels)."""

from .brisque import brisque_features, brisque_score, load_brisque_model
from .deconvolution import kernel_shape, kernel_similarity, kernel_similarity_matrix, recovery_coefficients
from .image_quality import psnr, relative_error, ssim

__all__ = [
    "psnr",
    "ssim",
    "relative_error",
    "recovery_coefficients",
    "kernel_similarity",
    "kernel_similarity_matrix",
    "kernel_shape",
    "brisque_features",
    "brisque_score",
    "load_brisque_model",
]
