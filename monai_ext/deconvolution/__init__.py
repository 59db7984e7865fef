"""Image-space blind deconvolution with 2x supersampling of PET volumes (Sample et al., PSMA PET).

- ``blind_deconvolution``: the blur-and-downsample operator (a ``monai_ext.operators.LinearOperator``), the neural
  blind deconvolution (image and kernel generators fitted to one volume) with its losses, schedule and kernel model,
  and the 2x grid helpers (affines, spline interpolation).
- ``kernel_estimation``: blind estimation of the kernel alone, with an L0 gradient prior on the image (a study tool:
  it recovers a 4 mm PSF, not wider ones; see the PSMA bundle's docs).
- ``blur_likelihood``: the marginal (Whittle) likelihood of a blur kernel under a Gaussian image model, for blur
  identification.
"""

from .blind_deconvolution import (
    BlindDeconvolution,
    BlindDeconvolutionConfig,
    BlindDeconvolutionResult,
    BlurDownsample,
    DeconvolutionLoss,
    KernelModel,
    blur_and_downsample,
    convolve_same,
    crop_affine,
    embed_kernel,
    fit_kernel_to_image,
    interpolate_2x,
    kernel_model,
    neural_blind_deconvolution,
    scale_steps,
    supersampled_affine,
)
from .blur_likelihood import ImageSpectrum, WhittleBlurLikelihood
from .kernel_estimation import KernelEstimate, KernelEstimationConfig, estimate_kernel

__all__ = [
    "BlurDownsample",
    "supersampled_affine",
    "crop_affine",
    "interpolate_2x",
    "blur_and_downsample",
    "convolve_same",
    "embed_kernel",
    "DeconvolutionLoss",
    "BlindDeconvolutionConfig",
    "BlindDeconvolutionResult",
    "BlindDeconvolution",
    "KernelModel",
    "kernel_model",
    "neural_blind_deconvolution",
    "scale_steps",
    "fit_kernel_to_image",
    "WhittleBlurLikelihood",
    "ImageSpectrum",
    "KernelEstimationConfig",
    "KernelEstimate",
    "estimate_kernel",
]
