"""Image quality metrics."""

from .image_quality import psnr, relative_error, ssim

__all__ = ["psnr", "ssim", "relative_error"]
