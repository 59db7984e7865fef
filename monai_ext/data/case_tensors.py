"""A data set's cases stacked into tensors, for estimators that need the whole training set at once."""

from __future__ import annotations

import torch

__all__ = ["case_tensors"]


def case_tensors(dataset, image_key: str = "reference", projections_key: str = "projections") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (n, 1, *grid), projections (n, 1, *scan))`` of every case of ``dataset`` (a MONAI ``Dataset``
    whose transforms read and simulate the cases), as float32 on the CPU.

    The linear MMSE reconstruction (``monai_ext.networks.LinearMMSE.estimate``) is fitted to the covariances of
    the whole training set, so it needs them all; nothing else in training stacks a data set.

    Raises:
        ValueError: an empty data set.
    """
    images, projections = [], []
    for case in dataset:
        images.append(torch.as_tensor(case[image_key]).float())
        projections.append(torch.as_tensor(case[projections_key]).float())
    if not images:
        raise ValueError("the training set is empty; the linear MMSE estimate needs cases.")
    return torch.stack(images), torch.stack(projections)
