"""Generator networks of neural blind deconvolution: ``Gx`` (the sharp image) and ``Gk`` (the blur kernel).

Ren et al. (2020) model the latent sharp image by an asymmetric encoder-decoder with skip connections fed with a
fixed noise tensor (a deep image prior), and the blur kernel by a fully connected network whose softmax output is
non-negative and sums to one. Sample et al. (2024) use them in 3D with the image net producing the image at twice
the input resolution; here the decoder ends on the input grid and a sub-voxel convolution (8 output channels, one
per child of a 2 x 2 x 2 block, rearranged into the fine grid as in Shi et al. 2016) produces the supersampled image,
so that every layer runs on the coarse grid. A fixed ``[1, 2, 1] / 4`` smoothing per axis follows the rearrangement:
the measured data (block means of a blurred image) do not see the 2 x 2 x 2 alternating pattern, which the
sub-voxel convolution would otherwise fill with a checkerboard.

References:
    W. Shi et al., "Real-time single image and video super-resolution using an efficient sub-pixel convolutional
    neural network", CVPR 2016.
    D. Ren, K. Zhang, Q. Wang, Q. Hu, W. Zuo, "Neural blind deconvolution using deep priors", CVPR 2020.
    C. Sample et al., Phys. Med. Biol. 69, 085025 (2024), doi:10.1088/1361-6560/ad36a9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageGenerator", "KernelGenerator"]


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode="reflect"),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.2),
    )


class ImageGenerator(nn.Module):
    """``Gx``: asymmetric 3D encoder-decoder with skip connections, output on a 2x finer grid, values in ``(0, scale)``.

    Each encoder level halves the grid (strided convolution); each decoder level upsamples (trilinear), concatenates
    the narrower skip features of that level (the asymmetry of Ren et al.: ``skip_channels < channels``) and
    convolves. The input's spatial size need not be a power of two: it is padded (replicate) and the output cropped.

    Args:
        in_channels: channels of the fixed input (noise).
        channels: features of the encoder/decoder levels, coarse levels last, e.g. ``(16, 32, 32)``.
        skip_channels: features of each skip connection (0 for none).
        head_channels: features before the sub-voxel convolution.
        output_scale: the output is ``output_scale * sigmoid(.)``, so values lie in ``(0, output_scale)``.

    Raises:
        ValueError: empty ``channels`` or non-positive sizes.

    Example:
        >>> gx = ImageGenerator(channels=(8, 16))
        >>> gx(torch.rand(1, 1, 9, 12, 12)).shape
        torch.Size([1, 1, 18, 24, 24])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] = (16, 32, 32),
        skip_channels: int = 4,
        head_channels: int = 8,
        output_scale: float = 2.0,
    ) -> None:
        super().__init__()
        if not channels or min(channels) < 1 or in_channels < 1 or head_channels < 1 or skip_channels < 0:
            raise ValueError(f"invalid sizes: channels={channels}, skip={skip_channels}, head={head_channels}.")
        self.output_scale = float(output_scale)
        self.depth = len(channels)
        self.stem = _conv(in_channels, channels[0])
        self.down = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.up = nn.ModuleList()
        previous = channels[0]
        for level in range(self.depth):
            width = channels[level]
            self.skips.append(nn.Conv3d(previous, skip_channels, 1) if skip_channels else nn.Identity())
            self.down.append(nn.Sequential(_conv(previous, width, stride=2), _conv(width, width)))
            previous = width
        for level in reversed(range(self.depth)):
            width = channels[level - 1] if level > 0 else head_channels
            self.up.append(_conv(previous + skip_channels, width))
            previous = width
        self.head = nn.Conv3d(head_channels, 8, 3, padding=1, padding_mode="replicate")

    def forward(self, noise: torch.Tensor, base_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Map the fixed input ``(B, C, *size)`` to ``(B, 1, *2 size)``; ``base_logits`` (on the output grid) are added
        before the sigmoid, so that with a zero head the output is ``output_scale * sigmoid(base_logits)``."""
        size = noise.shape[2:]
        multiple = 2**self.depth
        pad = [(-s) % multiple for s in size]
        h = F.pad(noise, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate") if any(pad) else noise
        h = self.stem(h)
        skips = []
        for skip, down in zip(self.skips, self.down):
            skips.append(skip(h))
            h = down(h)
        for up, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, size=skip.shape[2:], mode="trilinear", align_corners=False)
            h = up(torch.cat([h, skip], dim=1))
        h = self.head(h)[:, :, : size[0], : size[1], : size[2]]
        b, _, d, hh, w = h.shape  # (b, 8 = 2*2*2, d, h, w) -> (b, 1, 2d, 2h, 2w)
        h = h.reshape(b, 2, 2, 2, d, hh, w).permute(0, 4, 1, 5, 2, 6, 3).reshape(b, 1, 2 * d, 2 * hh, 2 * w)
        h = _smooth_121(h)
        return self.output_scale * torch.sigmoid(h if base_logits is None else h + base_logits)

    def zero_head(self) -> None:
        """Start the last convolution at zero, so that the output is the sigmoid of ``base_logits`` alone."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()


def _smooth_121(x: torch.Tensor) -> torch.Tensor:
    """Separable ``[1, 2, 1] / 4`` filter along the three spatial axes, edges replicated."""
    for dim in (2, 3, 4):
        pad = [0] * 6
        pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = 1
        p = F.pad(x, pad, mode="replicate")
        n = x.shape[dim]
        x = 0.25 * p.narrow(dim, 0, n) + 0.5 * p.narrow(dim, 1, n) + 0.25 * p.narrow(dim, 2, n)
    return x


class KernelGenerator(nn.Module):
    """``Gk``: a fully connected network from a fixed input vector to a kernel, softmax output (``k >= 0``, sums to 1).

    Args:
        kernel_size: odd kernel size per axis ``(z, y, x)`` (one int for a cube).
        input_size: length of the fixed input vector.
        hidden: width of the hidden layer.

    Raises:
        ValueError: an even or non-positive kernel size.

    Example:
        >>> gk = KernelGenerator(5)
        >>> k = gk(torch.rand(gk.input_size))
        >>> k.shape, float(k.sum())  # doctest: +ELLIPSIS
        (torch.Size([1, 1, 5, 5, 5]), 1.0...)
    """

    def __init__(self, kernel_size: int | tuple[int, int, int], input_size: int = 200, hidden: int = 1000) -> None:
        super().__init__()
        size = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(int(s) for s in kernel_size)
        if len(size) != 3 or any(s < 1 or s % 2 == 0 for s in size):
            raise ValueError(f"kernel_size must be odd and positive on each of 3 axes, got {kernel_size}.")
        self.kernel_size = size
        self.input_size = int(input_size)
        self.net = nn.Sequential(nn.Linear(self.input_size, hidden), nn.ReLU6(), nn.Linear(hidden, size[0] * size[1] * size[2]))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(code.reshape(-1)), dim=0).reshape(1, 1, *self.kernel_size)
