"""``multi_gpu_train.json`` of every trainable bundle: ``torchrun --nproc_per_node 2`` on CPU with gloo; and the
data-parallel custom loops (neural-field backbone, DEQ hyperparameters) on 2 gloo ranks against one process.

Each torchrun test trains a tiny run; every rank then saves its trained parameters, and the test checks that both
ranks hold the same parameters, that they moved away from the initial ones (a step was taken) and that rank 0 wrote
the bundle's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
# cbct_learned_primal_dual's multi_gpu_train.json has its own torchrun test (tests/test_cbct_lpd.py)
OWN_TEST = {"cbct_learned_primal_dual"}
TRAINABLE = sorted(
    p for p in (ROOT / "bundles").iterdir() if (p / "configs" / "multi_gpu_train.json").is_file() and p.name not in OWN_TEST
)
RANK_FILE = "'{out}/rank' + str(torch.distributed.get_rank())"


def _trainer_overrides(out: Path) -> dict:
    """MONAI trainer bundles: each rank saves the bare network's weights before and after ``trainer.run()``."""
    rank_file = RANK_FILE.format(out=out.as_posix())
    return {
        "ckpt_dir": str(out / "models"),
        "run": [
            f"$torch.save(@network.module.state_dict(), {rank_file} + '_initial.pt')",
            "$@train#trainer.run()",
            f"$torch.save(@network.module.state_dict(), {rank_file} + '_final.pt')",
        ],
    }


def _neural_field_overrides(out: Path) -> dict:
    """The backbone trainer's backbone, saved by each rank before and after ``trainer.run()`` (its gradients are
    averaged explicitly, so the network is not wrapped in ``DistributedDataParallel``)."""
    rank_file = RANK_FILE.format(out=out.as_posix())
    return {
        "ckpt_dir": str(out / "models"),
        "output_dir": str(out / "outputs"),
        "run": [
            f"$torch.save(@network.backbone.state_dict(), {rank_file} + '_initial.pt')",
            "$@train#trainer.run()",
            f"$torch.save(@network.backbone.state_dict(), {rank_file} + '_final.pt')",
        ],
    }


def _deq_overrides(out: Path) -> dict:
    """The bundle's trainer (``train.json``'s run: resumption attached, trainer run, learned weights written); each
    rank saves the initial and the learned log-weights of its group."""
    rank_file = RANK_FILE.format(out=out.as_posix())
    initial = "{'log_eta': torch.tensor(@learning#eta_init, dtype=torch.float64).log(), 'log_lambda': torch.tensor(@learning#lambda_init, dtype=torch.float64).log()}"
    final = "{'log_eta': @network.groups[0].log_eta.detach(), 'log_lambda': @network.groups[0].log_lambda.detach()}"
    run = json.loads((ROOT / "bundles" / "dynamic_pet_deq_reconstruction" / "configs" / "train.json").read_text())["run"]
    return {
        "output_dir": str(out / "outputs"),
        "run": [f"$torch.save({initial}, {rank_file} + '_initial.pt')", *run, f"$torch.save({final}, {rank_file} + '_final.pt')"],
    }


# per bundle: overrides that make training tiny, the snapshot overrides, and the file rank 0 must write
BUNDLES = {
    "ct_learned_reconstruction": {
        "tiny": {"method": "unrolled_shared", "n_train": 8, "n_val": 4, "max_epochs": 1, "batch_size": 2},
        "snapshot": _trainer_overrides,
        "output": "models/*.pt",
    },
    "cbct_neural_field": {
        "tiny": {
            "volume_shape": [16, 16, 16], "voxel_size": 16.0, "det_shape": [16, 16], "n_views": 12, "n_train": 3, "n_val": 1, "progress": False,
            "backbone_args#modulation_resolution": 4, "backbone_args#hidden": 16,
            "backbone_args#encoding_args": {"n_levels": 2, "features_per_level": 2, "base_resolution": 4, "finest_resolution": 8},
            "max_epochs": 2, "steps_per_epoch": 2, "rays_per_step": 64, "n_samples": 8, "scans_per_step": 2, "val_fit#n_steps": 2,
        },
        "snapshot": _neural_field_overrides,
        "output": "models/model.pt",
    },
    "dynamic_pet_deq_reconstruction": {
        "tiny": {
            "image_shape": [32, 32], "view_mashing": 8,
            "learning#n_realisations": 6, "learning#n_train": 4, "learning#epochs": 2, "learning#batch_size": 3,
            "solver#max_iter": 60, "solver#backward_max_iter": 10, "solver#validation_restarts": 0,
        },
        "snapshot": _deq_overrides,
        "output": "outputs/learned_hyperparameters.json",
    },
}


def test_every_trainable_bundle_has_a_torchrun_setup():
    assert {p.name for p in TRAINABLE} <= set(BUNDLES), "add the new bundle's tiny overrides and snapshot to BUNDLES"


@pytest.mark.slow
@pytest.mark.parametrize("bundle", TRAINABLE, ids=lambda p: p.name)
def test_torchrun_two_ranks_train_and_agree(bundle, tmp_path):
    spec = BUNDLES[bundle.name]
    overrides = {**spec["tiny"], **spec["snapshot"](tmp_path)}
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
    moved = [k for k, v in ranks[0]["final"].items() if v.is_floating_point() and not torch.allclose(v, ranks[0]["initial"][k])]
    assert moved, "no parameter changed: no training step was taken"
    assert list(tmp_path.glob(spec["output"])), f"rank 0 wrote no {spec['output']}"


# -- the custom loops on 2 gloo ranks (torch.multiprocessing) against one process ------------------------------------
DEQ_BATCH = [0, 1, 2]
DEQ_LEARNING = {"epochs": 2, "batch_size": 3, "lr": 0.2, "lr_final": 0.1}  # 4 training realisations: a last batch of 1


def _deq_problem():
    """A tiny problem whose solves run a fixed number of iterations (unreachable tolerances), so that a realisation's
    fixed point and implicit gradient do not depend on which other realisations share its batch."""
    from monai_ext.pet import BIOGRAPH_6_TRUEPOINT_TRUEV, DynamicPETSimulator
    from monai_ext.dynamic_pet.hyperparameter_learning import FixedPointProblem, RegularisationWeights
    from monai_ext.dynamic_pet.noise_realisations import simulate_realisations

    data = simulate_realisations(DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(16, 16), view_mashing=8), 300e6, 4,
                                 subject_seed=2, noise_seed=10)
    problem = FixedPointProblem(data, tol=1e-30, max_iter=20, backward_tol=1e-30, backward_max_iter=8, dtype=torch.float64)
    return problem, RegularisationWeights(data.n_frames, eta=1.0, lambdas=0.2)


def _deq_gradient_and_learning(problem, weights) -> dict:
    """The gradient of the loss of ``DEQ_BATCH`` (this rank's share, averaged across ranks) and a short learning run."""
    from monai_ext.distributed import average_gradients, shard
    from monai_ext.dynamic_pet.hyperparameter_learning import learn_hyperparameters_deq

    share = shard(DEQ_BATCH)
    loss = problem.loss(problem.reconstruct(share, weights.eta, weights.lambdas, warm_start=False))
    loss.backward()
    (loss,) = average_gradients(weights.parameters(), len(share), [loss.detach()])
    out = {"loss": float(loss), "grad": torch.cat([p.grad.reshape(-1) for p in weights.parameters()]).clone()}
    weights.zero_grad()
    problem.warm = problem.start.clone()
    result = learn_hyperparameters_deq(problem, [0, 1, 2, 3], weights, **DEQ_LEARNING)
    out.update(history=[h["loss"] for h in result.history], log_weights=torch.cat([p.detach().reshape(-1) for p in weights.parameters()]))
    return out


def _neural_field_training() -> dict:
    """A few steps of backbone training on 3 tiny scans (rank 0 owns scans 0 and 2, rank 1 scan 1)."""
    import monai_ext.data
    from monai_ext.fields import ConeBeamRays, ModulatedAttenuationField, box_half_widths, train_conditioned_field

    geometry = monai_ext.data.cbct_geometry(8, (16, 16, 16), 16.0, (16, 16), "short")
    scans = monai_ext.data.cbct_scans("train", 3, geometry, None)
    encoding = {"n_levels": 2, "features_per_level": 2, "base_resolution": 4, "finest_resolution": 8}
    backbone = ModulatedAttenuationField(box_half_widths(geometry.image_shape, geometry.pixel_size), 4, 4,
                                         encoding_args=encoding, hidden=16, n_hidden=1)
    initial = {k: v.clone() for k, v in backbone.state_dict().items()}
    modulations, info = train_conditioned_field(backbone, scans.projections, ConeBeamRays(geometry), n_steps=3, scans_per_step=2,
                                                rays_per_step=32, n_samples=8, progress=False)
    return {"initial": initial, "final": backbone.state_dict(), "scan_indices": info["scan_indices"], "n_modulations": len(modulations)}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the solves run out of iterations on purpose
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {"deq": _deq_gradient_and_learning(*_deq_problem()), "field": _neural_field_training()}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single_process():
    """The same computations in this process, without a process group."""
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _deq_gradient_and_learning(*_deq_problem())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, single_process):
    """What each of 2 gloo ranks computed (processes forked on CPU after ``single_process`` has imported everything,
    so that they start in a fraction of a second)."""
    out = tmp_path_factory.mktemp("two_ranks")
    context = mp.start_processes(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 ranks did not finish within 300 s")
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


def test_deq_gradient_on_two_ranks_equals_the_single_process_gradient(two_ranks, single_process):
    single = single_process
    for rank in two_ranks:
        assert torch.equal(rank["deq"]["grad"], two_ranks[0]["deq"]["grad"]), "ranks hold different gradients"
        torch.testing.assert_close(rank["deq"]["grad"], single["grad"], rtol=1e-5, atol=0)
        assert rank["deq"]["loss"] == pytest.approx(single["loss"], rel=1e-9)


def test_deq_learning_on_two_ranks_follows_the_single_process_learning(two_ranks, single_process):
    # the same weights on both ranks, and the single-process run's losses and weights: the warm starts of the
    # realisations a rank did not solve come from the other rank, and the last batch of 1 leaves rank 1 idle
    single = single_process
    assert torch.equal(two_ranks[0]["deq"]["log_weights"], two_ranks[1]["deq"]["log_weights"])
    assert two_ranks[0]["deq"]["history"] == two_ranks[1]["deq"]["history"]
    assert two_ranks[0]["deq"]["history"] == pytest.approx(single["history"], rel=1e-6)
    torch.testing.assert_close(two_ranks[0]["deq"]["log_weights"], single["log_weights"], rtol=1e-6, atol=1e-9)


def test_backbone_training_on_two_ranks_keeps_one_backbone(two_ranks):
    assert [r["field"]["scan_indices"] for r in two_ranks] == [[0, 2], [1]]
    assert [r["field"]["n_modulations"] for r in two_ranks] == [2, 1]
    final = [r["field"]["final"] for r in two_ranks]
    for key, value in final[0].items():
        assert torch.equal(value, final[1][key]), f"ranks disagree on {key}"
    assert any(not torch.equal(v, two_ranks[0]["field"]["initial"][k]) for k, v in final[0].items() if v.is_floating_point())
