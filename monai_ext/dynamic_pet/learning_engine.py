"""DEQ learning of the regularisation weights by MONAI engines (``train#trainer`` and ``validate#evaluator`` of the
dynamic PET bundle's ``train.json``), for one or several groups of realisations (one subject, slice and dose each).

- :class:`GroupWeights`: the trained "network", one :class:`RegularisationWeights` per group.
- :class:`GroupBatches`: the trainer's data: per epoch, each group's training realisations in a seeded random order
  (a generator per group), cut into mini-batches; a batch is ``(group, realisation indices)``.
- :class:`HypergradientStep`: the trainer's iteration: the fixed points of the batch, the MSE against the phantom,
  its implicit hypergradient and one Adam step (:func:`~monai_ext.dynamic_pet.hypergradient_step`, the step of
  :func:`~monai_ext.dynamic_pet.learn_hyperparameters_deq`). It keeps each group's warm starts, compute seconds
  and per-step history, and is checkpointed with them.
- :class:`ValidationStep`: the evaluator's iteration: a group's validation MSE from the uniform start, and its gain
  over the initial weights in dB (the key metric, higher is better).

Groups are learned independently (their parameters, Adam moments and warm starts are their own): a group's steps
are bitwise those of :func:`~monai_ext.dynamic_pet.learn_hyperparameters_deq` on it alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from ..distributed import shard, weighted_mean
from .hyperparameter_learning import FixedPointProblem, RegularisationWeights, hypergradient_step

__all__ = ["GroupWeights", "GroupBatches", "HypergradientStep", "ValidationStep"]


class GroupWeights(torch.nn.Module):
    """The learned weights of each group (``groups[k]`` is group ``k``'s :class:`RegularisationWeights`)."""

    def __init__(self, weights: Sequence[RegularisationWeights]) -> None:
        super().__init__()
        if not weights:
            raise ValueError("GroupWeights needs the weights of one group at least.")
        self.groups = torch.nn.ModuleList(weights)

    def values(self) -> list[dict]:
        """``[{"eta", "lambdas"}]`` per group."""
        return [w.values() for w in self.groups]


class GroupBatches:
    """Per epoch, each group's training realisations in a random order (drawn as ``torch.randperm`` from the group's
    generator, seeded with ``seed``), cut into mini-batches of the group's size; groups follow one another.

    Args:
        train_indices: each group's training realisations.
        batch_sizes: each group's mini-batch size (one number for all).
        seed: seed of every group's generator.
    """

    def __init__(self, train_indices: Sequence[Sequence[int]], batch_sizes: int | Sequence[int], seed: int = 0) -> None:
        self.train_indices = [list(map(int, idx)) for idx in train_indices]
        sizes = [int(batch_sizes)] * len(self.train_indices) if isinstance(batch_sizes, int) else [int(b) for b in batch_sizes]
        if len(sizes) != len(self.train_indices) or min(sizes, default=0) < 1 or not all(self.train_indices):
            raise ValueError(f"every group needs training realisations and a batch size of at least 1, got {len(self.train_indices)} "
                             f"group(s) with {[len(i) for i in self.train_indices]} realisations and batch sizes {sizes}.")
        self.batch_sizes = sizes
        self.generators = [torch.Generator().manual_seed(int(seed)) for _ in self.train_indices]

    def __iter__(self):
        for group, (idx, size, generator) in enumerate(zip(self.train_indices, self.batch_sizes, self.generators)):
            order = [idx[i] for i in torch.randperm(len(idx), generator=generator).tolist()]
            for b in range(0, len(order), size):
                yield group, order[b : b + size]

    def __len__(self) -> int:
        return sum(math.ceil(len(idx) / size) for idx, size in zip(self.train_indices, self.batch_sizes))


class HypergradientStep:
    """A trainer's ``iteration_update`` for :class:`GroupWeights` on :class:`GroupBatches`: one
    :func:`hypergradient_step` of the batch's group.

    ``state_dict`` holds what a resumed run needs beyond the weights and the optimiser: every group's warm starts,
    compute seconds (:class:`~monai_ext.dynamic_pet.ComputeClock` time of its steps) and history (one entry per step:
    epoch, loss, seconds, MM and backward steps, ``eta``), as :func:`~monai_ext.dynamic_pet.learn_hyperparameters_deq`
    records it.

    Args:
        problems: each group's :class:`FixedPointProblem`.
    """

    def __init__(self, problems: Sequence[FixedPointProblem]) -> None:
        self.problems = list(problems)
        self.seconds = [0.0] * len(self.problems)
        self.wall_seconds = [0.0] * len(self.problems)
        self.history: list[list[dict]] = [[] for _ in self.problems]

    def __call__(self, engine, batch) -> dict:
        group, idx = batch
        problem = self.problems[int(group)]
        weights = getattr(engine.network, "module", engine.network).groups[int(group)]
        clock, wall = problem.clock(), time.perf_counter()
        loss = hypergradient_step(problem, weights, engine.optimizer, idx)
        self.seconds[group] += clock.elapsed()
        self.wall_seconds[group] += time.perf_counter() - wall
        backward = problem.deq.backward_info
        entry = {
            "epoch": int(engine.state.epoch) - 1,
            "loss": loss,
            "seconds": self.seconds[group],
            "forward_steps": problem.forward_steps[-1] if problem.forward_steps else None,
            "backward_steps": None if backward is None else backward.nstep,
            "eta": float(weights.eta.detach()),
        }
        self.history[group].append(entry)
        return {"loss": loss, "group": int(group)}

    def epoch_loss(self, group: int) -> float:
        """Mean loss of the group's last epoch (``nan`` before its first step)."""
        steps = self.history[group]
        if not steps:
            return float("nan")
        last = [s["loss"] for s in steps if s["epoch"] == steps[-1]["epoch"]]
        return float(sum(last) / len(last))

    def state_dict(self) -> dict:
        return {"warm": [p.warm for p in self.problems], "seconds": list(self.seconds), "wall_seconds": list(self.wall_seconds),
                "history": [[dict(s) for s in h] for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["warm"]) != len(self.problems):
            raise ValueError(f"the checkpoint holds {len(state['warm'])} group(s); this run has {len(self.problems)}: "
                             "resume with the configuration and data set that wrote it.")
        for problem, warm in zip(self.problems, state["warm"]):
            problem.warm.copy_(warm.to(problem.warm))
        self.seconds, self.wall_seconds = [float(s) for s in state["seconds"]], [float(s) for s in state["wall_seconds"]]
        self.history = [[dict(s) for s in h] for h in state["history"]]


class ValidationStep:
    """An evaluator's ``iteration_update``: group ``k``'s validation MSE from the uniform start with the trainer's
    weights, and with its initial weights (computed once); returns ``{"val_mse", "initial_val_mse", "gain_db"}``,
    ``gain_db = 10 log10(initial / learned)``.

    Args:
        problems: each group's :class:`FixedPointProblem`.
        val_indices: each group's validation realisations.
        network: the trainer's :class:`GroupWeights`.
        initial: the initial weights ``{"eta": float, "lambdas": float or [T]}``.
        batch_size: realisations per solve.
        restarts: fresh solves from the last iterate while one misses its tolerance.
    """

    def __init__(self, problems: Sequence[FixedPointProblem], val_indices: Sequence[Sequence[int]], network: GroupWeights, initial: dict,
                 batch_size: int = 8, restarts: int = 5) -> None:
        if len(problems) != len(val_indices) or not all(val_indices):
            raise ValueError(f"every group needs validation realisations, got {[len(v) for v in val_indices]} for {len(problems)} group(s).")
        self.problems, self.val_indices, self.network = list(problems), [list(map(int, v)) for v in val_indices], network
        self.initial, self.batch_size, self.restarts = dict(initial), int(batch_size), int(restarts)
        self.initial_mse: list[float | None] = [None] * len(self.problems)
        self.last: list[dict | None] = [None] * len(self.problems)

    def _mse(self, group: int, eta, lambdas) -> float:
        share = shard(self.val_indices[group])
        problem = self.problems[group]
        local = problem.mse(share, eta, lambdas, self.batch_size, warm_start=False, restarts=self.restarts) if share else 0.0
        return weighted_mean(local, len(share))

    def __call__(self, engine, batch) -> dict:
        group = int(batch)
        if self.initial_mse[group] is None:
            self.initial_mse[group] = self._mse(group, float(self.initial["eta"]), self.initial["lambdas"])
        # the weights as numbers, as a search result hands them over: the validation of a learning run alone scores
        # the same solves bit for bit (a solve stopped by its budget is sensitive to the last bit of its inputs)
        values = getattr(self.network, "module", self.network).groups[group].values()
        mse = self._mse(group, values["eta"], values["lambdas"])
        self.last[group] = {"val_mse": mse, "initial_val_mse": self.initial_mse[group], "epoch": int(engine.state.epoch)}
        return {**self.last[group], "gain_db": 10.0 * math.log10(self.initial_mse[group] / mse)}

    def state_dict(self) -> dict:
        return {"initial_mse": [float("nan") if v is None else v for v in self.initial_mse]}

    def load_state_dict(self, state: dict) -> None:
        self.initial_mse = [None if math.isnan(v) else float(v) for v in state["initial_mse"]]
