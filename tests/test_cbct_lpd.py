"""CBCT Learned Primal-Dual: the shared LPD on the cone-beam projector, the invertible variant, and the bundle.

The invertible network's gradients are checked against ordinary backprop on the same weights (double precision,
tiny cone-beam geometry); its memory is measured by ``scripts/bench_cbct_lpd_memory.py``, not here. The bundle
checks load the committed weights and reconstruct the built-in example and user files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_config import bundle_parser

from monai_ext.data import cbct_geometry, cbct_scans
from monai_ext.io import save_projections
from monai_ext.metrics import psnr
from monai_ext.networks import InvertiblePrimalDual, LearnedPrimalDual
from monai_ext.tomo import ConeBeamProjector, fdk

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "cbct_learned_primal_dual"

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    geometry = cbct_geometry(8, (8, 8, 8), 32.0, (8, 8))
    return geometry, ConeBeamProjector(geometry)


def _parameter_grads(net, y, ref) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(net(y), ref).backward()
    return [p.grad.clone() for p in net.parameters()]


def test_invertible_gradients_equal_ordinary_backprop(tiny):
    geometry, op = tiny
    torch.manual_seed(0)
    net = InvertiblePrimalDual(op, n_iter=3, features=4).double()
    y = torch.rand(2, 1, *geometry.projection_shape, dtype=torch.float64, requires_grad=True)
    ref = 0.02 * torch.rand(2, 1, *geometry.image_shape, dtype=torch.float64)
    net.memory_efficient = True
    recomputed = _parameter_grads(net, y, ref)
    net.memory_efficient = False
    stored = _parameter_grads(net, y, ref)
    assert len(recomputed) == len(stored) == len(list(net.parameters()))
    for a, b in zip(recomputed, stored):
        assert float((a - b).norm() / b.norm().clamp_min(1e-30)) < 1e-4
    # and in float32, the training precision
    net = net.float()
    net.memory_efficient = True
    a32 = _parameter_grads(net, y.detach().float(), ref.float())
    net.memory_efficient = False
    b32 = _parameter_grads(net, y.detach().float(), ref.float())
    worst = max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(a32, b32))
    assert worst < 1e-4


def test_invertible_iteration_is_inverted_exactly(tiny):
    geometry, op = tiny
    torch.manual_seed(1)
    net = InvertiblePrimalDual(op, n_iter=2, features=4).double()
    f = torch.rand(1, 6, *geometry.image_shape, dtype=torch.float64)
    h = torch.rand(1, 6, *geometry.projection_shape, dtype=torch.float64)
    g = torch.rand(1, 1, *geometry.projection_shape, dtype=torch.float64)
    with torch.no_grad():
        f1, h1 = net.iteration(1, f, h, g)
        f0, h0 = net.inverse_iteration(1, f1, h1, g)
    assert not torch.allclose(f1, f)
    torch.testing.assert_close(f0, f, rtol=0, atol=1e-12)
    torch.testing.assert_close(h0, h, rtol=0, atol=1e-12)


def test_invertible_network_rejects_bad_arguments(tiny):
    _, op = tiny
    with pytest.raises(ValueError, match="n_primal"):
        InvertiblePrimalDual(op, n_primal=5)
    with pytest.raises(ValueError, match="n_iter"):
        InvertiblePrimalDual(op, n_iter=0)
    net = InvertiblePrimalDual(op, n_iter=1, features=2)
    with pytest.raises(ValueError):
        net(torch.zeros(1, 1, 7, 8, 8))


def test_one_lpd_serves_2d_and_3d_operators(tiny):
    from monai_ext.tomo import ParallelBeamGeometry, ParallelBeamProjector, uniform_angles

    geometry, op = tiny
    net3 = LearnedPrimalDual(op, n_iter=2, features=4)
    assert isinstance(net3.dual_blocks[0][0], torch.nn.Conv3d) and isinstance(net3.primal_blocks[0][0], torch.nn.Conv3d)
    assert net3(torch.zeros(1, 1, *geometry.projection_shape)).shape == (1, 1, *geometry.image_shape)
    op2 = ParallelBeamProjector(ParallelBeamGeometry((16, 16), 4.0, uniform_angles(5), n_det=16, det_spacing=4.0))
    net2 = LearnedPrimalDual(op2, n_iter=2, features=4)
    assert isinstance(net2.dual_blocks[0][0], torch.nn.Conv2d)
    inv2 = InvertiblePrimalDual(op2, n_iter=2, features=4)
    assert inv2(torch.zeros(1, 1, 5, 16)).shape == (1, 1, 16, 16)


def _parser(config: str = "inference.json", **overrides):
    return bundle_parser(BUNDLE, config, **overrides)


@pytest.fixture(scope="module")
def trained():
    from monai_ext.workflows import load_method_weights

    parser = _parser()
    networks = parser.get_parsed_content("networks")
    load_method_weights(networks, ["lpd", "invertible_lpd"], str(BUNDLE / "models"), model_method="lpd")
    return parser, networks


def test_committed_weights_are_small_and_beat_fdk_on_held_out_phantoms(trained):
    parser, networks = trained
    for name in ("model", "invertible_lpd"):  # model.pt: the default network, LPD
        assert (BUNDLE / "models" / f"{name}.pt").stat().st_size < 2_000_000
    geometry = parser.get_parsed_content("geometry")
    scans = cbct_scans("test", 2, geometry, parser.get_parsed_content("i0"))
    with torch.no_grad():
        base = fdk(scans.projections, geometry, "hann")
        scores = {name: np.mean([psnr(r, v) for r, v in zip(net.eval()(scans.projections), scans.volumes)]) for name, net in networks.items() if name != "tv"}
    fdk_psnr = np.mean([psnr(r, v) for r, v in zip(base, scans.volumes)])
    assert scores["lpd"] > fdk_psnr + 1.0 and scores["invertible_lpd"] > fdk_psnr + 1.0


def test_inference_reads_projections_with_a_sidecar_and_rejects_bad_input(trained, tmp_path):
    from monai_ext.io import tomography_cases

    parser, networks = trained
    geometry = parser.get_parsed_content("geometry")
    scans = cbct_scans("test", 1, geometry, 1e5)
    data = tmp_path / "data"
    save_projections(scans.projections[0, 0], geometry, data / "scan.npz")
    cases = tomography_cases(str(data), geometry)
    assert cases[0]["projections"].shape == (1, *geometry.projection_shape)
    out = tmp_path / "out"
    run = _parser(dataset_dir=str(data), output_dir=str(out), method="lpd")
    run.get_parsed_content("run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"][0]["name"] == "scan" and Path(summary["cases"][0]["file"]).is_file()
    assert (out / "scan_lpd.png").is_file()
    # projections that do not match the geometry in their sidecar
    bad = tmp_path / "bad"
    save_projections(scans.projections[0, 0, :40], geometry, bad / "short.npz")
    with pytest.raises(ValueError, match="expects"):
        tomography_cases(str(bad), geometry)
    # a sidecar missing a field
    sidecar = data / "scan.json"
    meta = json.loads(sidecar.read_text())
    del meta["geometry"]["source_to_detector"]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="source_to_detector"):
        tomography_cases(str(data), geometry)
    # another geometry (100 views) than the bundle's
    other = cbct_geometry(100, geometry.image_shape, geometry.pixel_size[0], geometry.det_shape)
    save_projections(torch.zeros(other.projection_shape), other, tmp_path / "other" / "scan.npz")
    with pytest.raises(ValueError, match="geometry different"):
        tomography_cases(str(tmp_path / "other"), geometry)


def test_unknown_method_is_a_value_error():
    for config in ("inference.json", "train.json"):
        with pytest.raises(Exception) as err:
            _parser(config, method="unet").get_parsed_content("network_def")
        cause = err.value if isinstance(err.value, ValueError) else err.value.__cause__
        assert isinstance(cause, ValueError) and "unet" in str(cause), repr(err.value)


@pytest.mark.slow
def test_torchrun_two_ranks_train_a_step_and_hold_identical_weights(tmp_path):
    override = tmp_path / "ranks.json"
    weights = tmp_path / "ranks"
    override.write_text(json.dumps({
        "run": ["$@train#trainer.run()", "$print('trainer iterations:', @train#trainer.state.iteration)", f"$torch.save(@network.module.state_dict(), '{weights}' + f'_{{torch.distributed.get_rank()}}.pt')"]
    }))
    configs = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "multi_gpu_train.json"), str(override)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "monai.bundle", "run",
        "--config_file", json.dumps(configs), "--bundle_root", str(BUNDLE), "--ckpt_dir", str(tmp_path / "models"),
        "--device", "$torch.device('cpu')", "--volume_shape", "[16, 16, 16]", "--voxel_size", "16.0", "--det_shape", "[16, 16]",
        "--n_views", "10", "--n_iter", "1", "--n_train", "2", "--n_val", "2", "--max_epochs", "1", "--num_threads", "1",
        "--method", "invertible_lpd",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(f"{weights}_0.pt", weights_only=True)
    rank1 = torch.load(f"{weights}_1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
    # each rank ran one optimiser step on its half of the two training volumes
    assert result.stdout.count("trainer iterations: 1") == 2, result.stdout[-2000:]

    # warm start (init_checkpoint) under DDP: both ranks restore the saved weights into the wrapped module
    warm = subprocess.run(cmd + ["--init_checkpoint", f"{weights}_0.pt"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
    assert (warm.stdout + warm.stderr).count(f"Restored all variables from {weights}_0.pt") == 2, warm.stderr[-3000:]
