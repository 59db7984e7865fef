"""``multi_gpu_train.json`` of every trainable bundle: ``torchrun --nproc_per_node 2`` on CPU with gloo.

Each run trains one short epoch on a tiny split; every rank then saves its weights, and the test checks that both
ranks hold the same weights and that they moved away from the initial ones (a step was taken).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# cbct_learned_primal_dual's multi_gpu_train.json has its own torchrun test (tests/test_cbct_lpd.py)
OWN_TEST = {"cbct_learned_primal_dual"}
TRAINABLE = sorted(
    p for p in (ROOT / "bundles").iterdir() if (p / "configs" / "multi_gpu_train.json").is_file() and p.name not in OWN_TEST
)

# per bundle: overrides that make one epoch tiny, and the expression of the bare network (under DDP)
TINY = {
    "ct_learned_reconstruction": {
        "method": "unrolled_shared", "n_train": 8, "n_val": 4, "max_epochs": 1, "batch_size": 2,
    },
}


def _snapshot_overrides(out: Path) -> dict:
    rank_file = f"'{out.as_posix()}/rank' + str(dist.get_rank())"
    return {
        "run": [
            f"$torch.save(@network.module.state_dict(), {rank_file} + '_initial.pt')",
            "$@train#trainer.run()",
            f"$torch.save(@network.module.state_dict(), {rank_file} + '_final.pt')",
        ],
    }


@pytest.mark.slow
@pytest.mark.parametrize("bundle", TRAINABLE, ids=lambda p: p.name)
def test_torchrun_two_ranks_train_one_epoch_and_agree(bundle, tmp_path):
    overrides = {**TINY.get(bundle.name, {}), **_snapshot_overrides(tmp_path), "ckpt_dir": str(tmp_path / "models")}
    override_file = tmp_path / "test_overrides.json"
    override_file.write_text(json.dumps(overrides))
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json"), str(override_file)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--bundle_root", str(bundle),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1200, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    ranks = [{when: torch.load(tmp_path / f"rank{r}_{when}.pt") for when in ("initial", "final")} for r in (0, 1)]
    for key, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][key]), f"ranks disagree on {key} after training"
        assert torch.equal(ranks[0]["initial"][key], ranks[1]["initial"][key]), f"ranks started apart on {key}"
    moved = [k for k, v in ranks[0]["final"].items() if v.is_floating_point() and not torch.equal(v, ranks[0]["initial"][k])]
    assert moved, "no parameter changed: no training step was taken"
    assert (tmp_path / "models").is_dir() and list((tmp_path / "models").glob("*.pt")), "rank 0 saved no checkpoint"
