"""Building blocks shared by the reconstruction networks: small CNNs and operator bookkeeping."""

from __future__ import annotations

from torch import nn

__all__ = ["ConvBlock", "operator_spatial_dims"]


class ConvBlock(nn.Sequential):
    """``n_layers`` convolutions ("same" padding) with PReLU between them, in 1D, 2D or 3D.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        features: channels of the hidden layers, one value for all or one per hidden layer.
        n_layers: number of convolutions, at least 1.
        kernel_size: odd kernel size, one value for all layers or one per layer.
        zero_last: start the last convolution at zero (weights and bias), so that a residual block ``x + block(x)``
            is the identity before training.

    Raises:
        ValueError: ``spatial_dims`` not 1-3, ``n_layers`` < 1, an even kernel size, or per-layer lists of the wrong
            length.

    Example:
        >>> block = ConvBlock(2, 6, 5, features=32)
        >>> block(torch.zeros(1, 6, 16, 16)).shape
        torch.Size([1, 5, 16, 16])
        >>> srcnn = ConvBlock(2, 1, 1, features=(64, 32), kernel_size=(9, 1, 5))  # compNET's image-domain CNN
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, features=32, n_layers: int = 3, kernel_size=3, zero_last: bool = False
    ) -> None:
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if int(n_layers) < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}.")
        n = int(n_layers)
        hidden = [int(features)] * (n - 1) if isinstance(features, int) else [int(f) for f in features]
        kernels = [int(kernel_size)] * n if isinstance(kernel_size, int) else [int(k) for k in kernel_size]
        if len(hidden) != n - 1 or len(kernels) != n:
            raise ValueError(f"{n} layers need {n - 1} hidden widths and {n} kernel sizes, got features={features}, kernel_size={kernel_size}.")
        if any(k % 2 != 1 for k in kernels):
            raise ValueError(f"kernel sizes must be odd, got {kernels}.")
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1]
        widths = [int(in_channels), *hidden, int(out_channels)]
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(conv(widths[i], widths[i + 1], kernels[i], padding=kernels[i] // 2))
            if i < n - 1:
                layers.append(nn.PReLU(widths[i + 1]))
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        super().__init__(*layers)


def operator_spatial_dims(operator, spatial_dims: int | None, attribute: str) -> int:
    """Spatial dimensionality of an operator's domain (``attribute="image_shape"``, a ``LinearOperator``'s
    ``in_shape``) or range (``"projection_shape"``, its ``out_shape``).

    Raises:
        ValueError: ``spatial_dims`` not given and the operator has no such attribute, or not 1-3.
    """
    if spatial_dims is None:
        shape = getattr(operator, attribute, None)
        if shape is None:
            raise ValueError(f"the operator has no {attribute}; pass the number of spatial dimensions explicitly.")
        spatial_dims = len(shape)
    if int(spatial_dims) not in (1, 2, 3):
        raise ValueError(f"spatial dimensions must be 1, 2 or 3, got {spatial_dims}.")
    return int(spatial_dims)
