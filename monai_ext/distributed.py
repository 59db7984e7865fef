"""Data parallelism for the training loops that are not MONAI trainers, under ``torch.distributed``.

The SupervisedTrainer bundles get data parallelism from their configs (``DistributedDataParallel`` and
``DistributedSampler``). The conditioned neural-field backbone (``monai_ext.fields``) and the DEQ hyperparameters
(``monai_ext.dynamic_pet.hyperparameter_learning``) train in loops of their own; these helpers make such a loop data
parallel in the same way: each rank works on a disjoint share of the items (``items[rank::world_size]``, the
interleaving of ``DistributedSampler`` without shuffling), the gradients of the shared parameters are averaged across
ranks after every backward pass, so that every rank takes the same optimiser step and the parameters stay identical,
and only rank 0 writes files and logs.

Gradients are averaged by one explicit all-reduce of a flat buffer rather than by wrapping the model in
``DistributedDataParallel``: the loops call the model several times per step (once per scan) or have no module
forward at all (the DEQ's hyperparameters), the shares can differ in size (weighted mean, and an empty share must
still take part in the collective), and the step's loss travels in the same buffer.

Without an initialised process group every helper is the identity of the single-process loop: rank 0 of 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "rank_and_world_size",
    "is_main_process",
    "shard",
    "average_gradients",
    "weighted_mean",
    "gather_shards",
    "broadcast_parameters",
    "barrier",
]


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (the one that writes files and logs); true without a process group."""
    return rank_and_world_size()[0] == 0


def shard(items: Sequence) -> list:
    """This rank's share ``items[rank::world_size]`` (all of ``items`` without a process group)."""
    rank, world = rank_and_world_size()
    return list(items)[rank::world]


def _collective_device() -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL (which takes CUDA tensors only), else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_gradients(parameters: Iterable[torch.nn.Parameter], weight: float, extras: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
    """Replace each parameter's gradient by the weighted mean over ranks, ``sum_r w_r g_r / sum_r w_r``.

    With ``w_r`` the number of items (realisations, scans) behind rank ``r``'s mean loss, the result is the gradient
    of the mean loss over all ranks' items, i.e. the single-process gradient of the whole batch. A rank with an empty
    share passes ``weight=0`` (its gradients, possibly ``None``, count as zeros). One all-reduce of a flat buffer in
    the widest dtype involved; every rank receives the same sums, so the gradients are identical on all ranks.

    Args:
        parameters: the shared parameters (their ``.grad`` are overwritten; ``None`` becomes the mean).
        weight: ``w_r`` of this rank, ``>= 0``.
        extras: scalar tensors averaged with the same weights (e.g. the step's loss).

    Returns:
        the weighted means of ``extras`` (as given without a process group).

    Raises:
        ValueError: a negative weight, or all weights zero.
    """
    params = [p for p in parameters if p.requires_grad]
    if float(weight) < 0:
        raise ValueError(f"weight must be non-negative, got {weight}.")
    if rank_and_world_size()[1] == 1:
        return list(extras)
    ref = params[0] if params else (extras[0] if extras else torch.zeros(()))
    dtype = ref.dtype
    for t in [*params, *extras]:
        dtype = torch.promote_types(dtype, t.dtype)
    device = _collective_device()
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    parts += [torch.as_tensor(e).detach().reshape(1) for e in extras]
    flat = torch.cat([t.to(device=device, dtype=dtype) for t in parts] + [torch.ones(1, device=device, dtype=dtype)])
    flat *= float(weight)
    dist.all_reduce(flat)
    total = flat[-1]
    if not float(total) > 0:
        raise ValueError("every rank passed weight 0: there is no gradient to average.")
    flat = flat[:-1] / total
    offset = 0
    for p in params:
        n = p.numel()
        mean = flat[offset : offset + n].view_as(p).to(device=p.device, dtype=p.dtype)
        if p.grad is None:
            p.grad = mean
        else:
            p.grad.copy_(mean)
        offset += n
    return [flat[offset + i].to(device=torch.as_tensor(e).device, dtype=torch.as_tensor(e).dtype) for i, e in enumerate(extras)]


def weighted_mean(value: float, weight: float) -> float:
    """``sum_r w_r v_r / sum_r w_r`` over ranks (``value`` itself without a process group), in float64.

    Raises:
        ValueError: a negative weight, or all weights zero.
    """
    if float(weight) < 0:
        raise ValueError(f"weight must be non-negative, got {weight}.")
    if rank_and_world_size()[1] == 1:
        return value
    device = _collective_device()
    pair = torch.tensor([float(value) * float(weight) if weight else 0.0, float(weight)], dtype=torch.float64, device=device)
    dist.all_reduce(pair)
    if not float(pair[1]) > 0:
        raise ValueError("every rank passed weight 0: there is nothing to average.")
    return float(pair[0] / pair[1])


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of :func:`shard` for tensors: every rank gets the ``(n, ...)`` tensor whose rows
    ``rank::world_size`` are rank's ``local`` rows (``local`` itself without a process group).

    An all-reduce of zero-padded buffers: each row is non-zero on one rank only, so the sum is exact.

    Raises:
        ValueError: ``local`` has not ``len(range(rank, n, world_size))`` rows.
    """
    rank, world = rank_and_world_size()
    expected = len(range(rank, int(n), world))
    if local.shape[0] != expected:
        raise ValueError(f"rank {rank} of {world} holds rows {rank}::{world} of {n}, i.e. {expected}, got {local.shape[0]}.")
    if world == 1:
        return local
    device = _collective_device()
    full = torch.zeros((int(n), *local.shape[1:]), dtype=local.dtype, device=device)
    full[rank::world] = local.to(device)
    dist.all_reduce(full)
    return full.to(local.device)


def broadcast_parameters(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Copy rank 0's parameter values to every rank (as ``DistributedDataParallel`` does when it wraps a model)."""
    if rank_and_world_size()[1] == 1:
        return
    with torch.no_grad():
        for p in parameters:
            device = _collective_device()
            buffer = p.detach().to(device)
            dist.broadcast(buffer, src=0)
            p.copy_(buffer.to(p.device))


def barrier() -> None:
    """Wait for every rank (no-op without a process group), e.g. until rank 0 has written its files."""
    if rank_and_world_size()[1] > 1:
        dist.barrier()
