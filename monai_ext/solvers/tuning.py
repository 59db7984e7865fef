"""Choosing a regularisation weight on validation data: a log-spaced grid, then bisection around the best."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from monai_ext.metrics import psnr

__all__ = ["tune_weight", "variational_solution"]


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


def variational_solution(
    y: torch.Tensor,
    weight: float,
    *,
    operator,
    method: str = "tv",
    n_iter: int = 100,
    regulariser: str = "identity",
    norm: float | None = None,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    """The Tikhonov or TV reconstruction of ``y`` at ``weight``: the ``reconstruct(y, weight)`` that
    :func:`tune_weight` scores, written once so that configs build it (``"_mode_": "callable"`` with the keyword
    arguments) instead of a lambda.

    Args:
        y: measurements ``(B, C, *out_shape)``.
        weight: the regularisation weight.
        operator: the linear operator.
        method: ``"tikhonov"`` (:func:`~monai_ext.solvers.tikhonov_cg`) or ``"tv"`` (:func:`~monai_ext.solvers.tv_pdhg`).
        n_iter: iterations of the solver.
        regulariser: Tikhonov's ``R`` (``"identity"`` or ``"gradient"``).
        norm: a known ``||A||`` for TV (estimated otherwise).
        dtype: cast ``y`` to this dtype first (e.g. ``torch.float64``).
        device: solve on this device; the result returns to ``y``'s.

    Raises:
        ValueError: an unknown ``method``.

    Example:
        >>> from functools import partial
        >>> from monai_ext.operators import MatrixOperator
        >>> solve = partial(variational_solution, operator=MatrixOperator(torch.eye(2), (2,)), method="tikhonov")
        >>> solve(torch.ones(1, 1, 2), 1.0).flatten().tolist()
        [0.5, 0.5]
    """
    from .variational import tikhonov_cg, tv_pdhg

    if method not in ("tikhonov", "tv"):
        raise ValueError(f"method must be 'tikhonov' or 'tv', got {method!r}.")
    home = y.device
    y = y.to(device=device if device is not None else home, dtype=dtype or y.dtype)
    if method == "tikhonov":
        x, _ = tikhonov_cg(operator, y, weight, regulariser, n_iter=n_iter)
    else:
        x, _ = tv_pdhg(operator, y, weight, n_iter=n_iter, norm=norm)
    return x.to(home)
