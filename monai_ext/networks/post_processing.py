"""Direct reconstruction followed by a learned residual correction (FBPConvNet, compNET)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PostProcessingNet"]


class PostProcessingNet(nn.Module):
    """``x = x0 + c D(x0 / c)`` with ``x0 = initial(y)``: a fixed reconstruction, then a residual CNN.

    ``initial`` is any module from measurements to images (FBP for FBPConvNet, the linear MMSE estimator for
    compNET); ``D`` is any image-to-image network (e.g. MONAI ``UNet``); ``c = image_scale`` brings images to values
    of order one for the CNN. ``initial`` is kept fixed (its parameters, if any, are frozen) unless
    ``train_initial``.

    Args:
        initial: module ``y -> x0`` (``(B, C, *projection_shape) -> (B, C, *image_shape)``).
        denoiser: module on ``(B, C, *image_shape)`` images with as many output channels as input.
        image_scale: typical image value (e.g. 0.02 /mm).
        train_initial: let the training update ``initial`` too.

    Raises:
        ValueError: non-positive ``image_scale``.

    Example:
        >>> from monai.networks.nets import UNet
        >>> from monai_ext.tomo import FBP, ParallelBeamGeometry, uniform_angles
        >>> geometry = ParallelBeamGeometry((32, 32), 4.0, uniform_angles(5), n_det=32, det_spacing=4.0)
        >>> net = PostProcessingNet(FBP(geometry, "hann"), UNet(2, 1, 1, (8, 16), (2,)))
        >>> net(torch.zeros(1, 1, 5, 32)).shape
        torch.Size([1, 1, 32, 32])

    References:
        K. H. Jin, M. T. McCann, E. Froustey and M. Unser, "Deep Convolutional Neural Network for Inverse Problems
        in Imaging", IEEE TIP 26(9), 2017 (FBPConvNet).
        N. Ducros, A. Lorente Mur and F. Peyrin, "A completion network for reconstruction from compressed
        acquisition", IEEE ISBI 2020 (compNET: MMSE layer + CNN).
    """

    def __init__(self, initial: nn.Module, denoiser: nn.Module, image_scale: float = 0.02, train_initial: bool = False) -> None:
        super().__init__()
        if not image_scale > 0:
            raise ValueError(f"image_scale must be positive, got {image_scale}.")
        self.initial, self.denoiser, self.image_scale = initial, denoiser, float(image_scale)
        if not train_initial:
            for p in self.initial.parameters():
                p.requires_grad_(False)

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        """Reconstruct images from measurements (the initial reconstruction's shape checks apply)."""
        x0 = self.initial(projections) / self.image_scale
        return (x0 + self.denoiser(x0)) * self.image_scale
