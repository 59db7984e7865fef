"""Checkpoints of a step loop (the backbone training of the conditioned field), to resume it where it stopped.

A checkpoint holds what the next step depends on: the trained tensors (backbone parameters, modulation grids), the
optimiser and learning-rate schedule, the random generator that draws scans and rays, the step reached and the loss
trace so far. A run resumed from it takes the same steps with the same losses as one never interrupted.
Under ``torch.distributed`` each rank writes its own file (its modulation grids and generator are its own).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..distributed import rank_and_world_size

__all__ = ["StepCheckpoints"]

_NAME = re.compile(r"^backbone_step=(\d+)_rank(\d+)\.pt$")


class StepCheckpoints:
    """Write a checkpoint every ``every`` steps into ``directory`` (keeping the newest), and find the one to resume.

    Args:
        directory: where checkpoints go.
        every: steps between checkpoints (the last step is always saved).
        resume: ``False``/``""`` (start afresh), ``True`` (the newest checkpoint of ``directory``, which must exist)
            or a checkpoint path.
        tensors: the trained tensors by name (modules' state dicts are taken with ``state_dict``).
        generator: the loop's random generator.
    """

    def __init__(self, directory: str, every: int = 100, resume=False, tensors: dict | None = None, generator: torch.Generator | None = None) -> None:
        from monai_ext.flags import as_flag_or_file

        if int(every) < 1:
            raise ValueError(f"checkpoint_every must be a positive number of steps, got {every}.")
        self.directory, self.every = Path(directory), int(every)
        self.rank = rank_and_world_size()[0]
        self.tensors, self.generator = dict(tensors or {}), generator
        chosen = as_flag_or_file(resume, "resume", "a backbone checkpoint (backbone_step=N_rankR.pt)")
        self.resume_from = self._newest() if chosen is True else (chosen or None)

    def _files(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("backbone_step=*_rank*.pt") if self.directory.is_dir() else []:
            match = _NAME.match(path.name)
            if match and int(match.group(2)) == self.rank:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _newest(self) -> Path:
        files = self._files()
        if not files:
            raise FileNotFoundError(f"--resume true, but {self.directory} holds no backbone checkpoint of rank {self.rank} "
                                    "(backbone_step=N_rankR.pt): start without --resume, or give the checkpoint's path.")
        return files[-1][1]

    def _state(self, obj):
        return obj.state_dict() if hasattr(obj, "state_dict") else obj.detach().clone()

    def restore(self, optimiser, scheduler) -> tuple[int, list[float]]:
        """Load the checkpoint to resume into the tensors, optimiser, scheduler and generator; returns ``(step,
        loss trace)``, or ``(0, [])`` when not resuming."""
        if self.resume_from is None:
            return 0, []
        state = torch.load(self.resume_from, map_location="cpu", weights_only=True)
        for name, obj in self.tensors.items():
            if name not in state["tensors"]:
                raise ValueError(f"checkpoint {self.resume_from} lacks {name!r}: resume with the configuration that wrote it.")
            if hasattr(obj, "load_state_dict"):
                obj.load_state_dict(state["tensors"][name])
            else:
                with torch.no_grad():
                    obj.copy_(state["tensors"][name])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        return int(state["step"]), [float(v) for v in state["trace"]]

    def due(self, step: int, n_steps: int) -> bool:
        return step % self.every == 0 or step == n_steps

    def save(self, step: int, optimiser, scheduler, trace: list[float]) -> Path:
        """Write the checkpoint of ``step`` (atomically) and remove this rank's older ones."""
        from monai_ext.io.files import atomic_path

        state = {
            "step": int(step),
            "trace": torch.tensor(trace, dtype=torch.float64),
            "tensors": {name: self._state(obj) for name, obj in self.tensors.items()},
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": self.generator.get_state() if self.generator is not None else torch.empty(0, dtype=torch.uint8),
        }
        path = self.directory / f"backbone_step={int(step)}_rank{self.rank}.pt"
        older = [p for s, p in self._files() if s != int(step)]
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(state, tmp)
        for old in older:
            old.unlink(missing_ok=True)
        return path
