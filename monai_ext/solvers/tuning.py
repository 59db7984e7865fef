"""Choosing a regularisation weight on validation data: a log-spaced grid, then bisection around the best."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from monai_ext.metrics import psnr

__all__ = ["tune_weight"]


def tune_weight(
    reconstruct: Callable[[torch.Tensor, float], torch.Tensor],
    projections: torch.Tensor,
    references: torch.Tensor,
    weights: Sequence[float],
    refine: int = 3,
    batch_size: int = 32,
) -> tuple[float, list[dict]]:
    """The weight that maximises the mean PSNR of ``reconstruct(y, weight)`` over validation cases.

    Every weight of ``weights`` (positive, best log-spaced) is scored; then, ``refine`` times, the geometric means
    of the best weight and its two neighbours are scored too, halving the log-spacing around the best each time.

    Args:
        reconstruct: ``(projections batch, weight) -> images batch``.
        projections: validation measurements ``(n, C, *projection_shape)``.
        references: ground truth ``(n, C, *image_shape)``.
        weights: the initial grid.
        refine: bisection rounds.
        batch_size: cases reconstructed per call.

    Returns:
        ``(best weight, table)``; ``table`` lists ``{"weight", "mean_psnr_db"}`` for every weight scored, sorted by
        weight.

    Raises:
        ValueError: an empty or non-positive grid, or ``projections``/``references`` of different lengths.

    Example:
        >>> y = torch.arange(1.0, 9.0).reshape(2, 1, 4)
        >>> best, table = tune_weight(lambda y, w: y / (1 + w), y, y / 2, [0.1, 1, 10])
        >>> round(best, 3)
        1.0
    """
    grid = sorted(float(w) for w in weights)
    if not grid or min(grid) <= 0:
        raise ValueError(f"weights must be a non-empty list of positive numbers, got {list(weights)}.")
    if len(projections) != len(references):
        raise ValueError(f"projections and references differ in length: {len(projections)} vs {len(references)}.")
    scores: dict[float, float] = {}

    def score(weight: float) -> float:
        if weight not in scores:
            values = []
            for y, ref in zip(projections.split(batch_size), references.split(batch_size)):
                x = reconstruct(y, weight)
                values += [psnr(x[i], ref[i]) for i in range(len(ref))]
            scores[weight] = float(np.mean(values))
        return scores[weight]

    for w in grid:
        score(w)
    for _ in range(int(refine)):
        ordered = sorted(scores)
        best = max(ordered, key=scores.get)
        i = ordered.index(best)
        for j in (i - 1, i + 1):
            if 0 <= j < len(ordered):
                score(math.sqrt(best * ordered[j]))
    best = max(scores, key=scores.get)
    return best, [{"weight": w, "mean_psnr_db": round(scores[w], 4)} for w in sorted(scores)]
