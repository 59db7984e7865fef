"""Reconstruction networks: post-processing, MMSE + CNN, unrolled proximal gradient, Learned Primal-Dual.

The physics-aware networks take any linear operator with ``forward``/``adjoint`` (``monai_ext.tomo`` projectors in
2D or 3D, dense matrices, compositions) and normalise it by its norm inside.
"""

from .blind_deconvolution import ImageGenerator, KernelGenerator
from .blocks import ConvBlock, operator_spatial_dims
from .invertible_primal_dual import InvertiblePrimalDual
from .learned_primal_dual import LearnedPrimalDual
from .mmse import LinearMMSE
from .post_processing import PostProcessingNet
from .unrolled import UnrolledProximalGradient

__all__ = ["ConvBlock", "operator_spatial_dims", "LearnedPrimalDual", "InvertiblePrimalDual", "LinearMMSE", "PostProcessingNet", "UnrolledProximalGradient", "ImageGenerator", "KernelGenerator"]
