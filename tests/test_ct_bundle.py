"""The ``ct_learned_reconstruction`` bundle: committed weights, PSNR ordering of the methods, bad input.

The ordering checks load the committed weights and reconstruct a small fixed-seed ellipse test set (and the real
CT slices) at the bundle's default setting; nothing is retrained here except in the slow-marked check of
``train.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_config import bundle_parser

from monai_ext.data import ellipse_ct_scans, real_ct_scans
from monai_ext.workflows import evaluate_methods, load_method_weights

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "ct_learned_reconstruction"
LEARNED = ["fbpconvnet", "mmse_cnn", "unrolled_shared", "unrolled", "lpd"]
ITERATIVE = ["unrolled_shared", "unrolled", "lpd"]
N_TEST = 16

torch.set_num_threads(2)


def _parser(config: str = "inference.json", **overrides):
    return bundle_parser(BUNDLE, config, **overrides)


@pytest.fixture(scope="module")
def bundle():
    parser = _parser()
    networks = parser.get_parsed_content("networks")
    load_method_weights(networks, LEARNED, str(BUNDLE / "models"), model_method="lpd")
    return parser, networks


@pytest.fixture(scope="module")
def scores(bundle):
    parser, networks = bundle
    geometry = parser.get_parsed_content("geometry")
    i0 = parser.get_parsed_content("i0")
    ellipses, _ = evaluate_methods(networks, ellipse_ct_scans("test", N_TEST, geometry, i0))
    real, _ = evaluate_methods(networks, real_ct_scans(geometry, i0))
    return {"ellipses": ellipses, "real_ct": real}


def parser_model_method() -> str:
    return _parser()["model_method"]


def test_committed_weights_are_small_and_load(bundle):
    from monai_ext.workflows import weights_name

    assert weights_name("lpd", parser_model_method()) == "model.pt"  # the default network is models/model.pt
    for name in LEARNED:
        path = BUNDLE / "models" / weights_name(name, "lpd")
        assert path.is_file(), f"missing trained weights {path}"
        assert path.stat().st_size < 3_000_000, f"{path.name} is {path.stat().st_size} bytes"
    weights = json.loads((BUNDLE / "models" / "variational_weights.json").read_text())
    assert weights["tv"]["weight"] > 0 and weights["tikhonov"]["weight"] > 0


def test_psnr_ordering_on_ellipse_test_set(scores):
    psnr = {m: s["psnr_db"] for m, s in scores["ellipses"].items()}
    assert psnr["tv"] > psnr["fbp"], psnr
    for name in LEARNED:
        assert psnr[name] > psnr["tv"], (name, psnr)
    # LPD beats the post-processing U-Net; the unrolled networks, trained for 4 (shared) and 3 epochs on CPU,
    # come within a few tenths of a dB of it (see the bundle's docs: 27.0 vs 27.1 dB on the 100-case test set)
    assert psnr["lpd"] > psnr["fbpconvnet"], psnr
    for name in ITERATIVE:
        assert psnr[name] > psnr["fbpconvnet"] - 0.5, (name, psnr)


def test_learned_methods_beat_fbp_on_real_ct_slices(scores):
    psnr = {m: s["psnr_db"] for m, s in scores["real_ct"].items()}
    for name in LEARNED:
        assert psnr[name] > psnr["fbp"], (name, psnr)


def test_unrolled_networks_need_fewer_parameters_for_equal_quality(scores):
    """4 to 40 times fewer parameters than the U-Net, PSNR within 0.5 dB of it and a higher SSIM."""
    ellipses = scores["ellipses"]
    post = ellipses["fbpconvnet"]
    for name in ITERATIVE:
        assert 4 * ellipses[name]["parameters"]["trainable"] < post["parameters"]["trainable"], name
        assert ellipses[name]["psnr_db"] > post["psnr_db"] - 0.5, name
        assert ellipses[name]["ssim"] > post["ssim"], name


def test_every_method_rejects_bad_sinograms(bundle):
    _, networks = bundle
    nan = torch.zeros(1, 1, 5, 64)
    nan[0, 0, 2, 10] = float("nan")
    for name, net in networks.items():
        with pytest.raises(ValueError, match=r"shape \(B, C, 5, 64\)"):
            net(torch.zeros(1, 1, 6, 64))
        with pytest.raises(ValueError, match="non-finite"):
            net(nan)


def test_unknown_method_is_a_value_error():
    for config in ("inference.json", "train.json"):
        parser = _parser(config, method="fbpconvnett")
        with pytest.raises(Exception) as err:
            parser.get_parsed_content("network_def")
        cause = err.value if isinstance(err.value, ValueError) else err.value.__cause__
        assert isinstance(cause, ValueError) and "unknown method 'fbpconvnett'" in str(cause), repr(err.value)


def test_inference_reconstructs_a_measured_sinogram_and_refuses_another_geometry(bundle, tmp_path):
    from monai_ext.io import save_projections, tomography_cases

    parser, networks = bundle
    geometry = parser.get_parsed_content("geometry")
    scans = ellipse_ct_scans("test", 1, geometry, 1e4)
    save_projections(scans.projections[0, 0], geometry, tmp_path / "good" / "scan.npz")
    cases = tomography_cases(str(tmp_path / "good"), geometry)
    with torch.no_grad():
        image = networks["lpd"](cases[0]["projections"][None])
    assert image.shape == (1, 1, 64, 64) and torch.isfinite(image).all()
    import dataclasses

    other = dataclasses.replace(geometry, angles=geometry.angles[:4])
    save_projections(scans.projections[0, 0, :4], other, tmp_path / "bad" / "scan.npz")
    with pytest.raises(ValueError, match="geometry different"):
        tomography_cases(str(tmp_path / "bad"), geometry)


@pytest.mark.slow
def test_train_config_runs_a_short_training_that_inference_loads(tmp_path):
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "train.json"),
        "--bundle_root", str(BUNDLE),
        "--ckpt_dir", str(tmp_path),
        "--method", "unrolled_shared",
        "--n_train", "16", "--n_val", "4", "--max_epochs", "1", "--batch_size", "8",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "unrolled_shared.pt").is_file()
    parser = _parser(method="unrolled_shared", weights_dir=str(tmp_path))
    network = parser.get_parsed_content("networks#unrolled_shared")
    load_method_weights({"unrolled_shared": network}, ["unrolled_shared"], str(tmp_path))
    with torch.no_grad():
        assert torch.isfinite(network(torch.zeros(1, 1, 5, 64))).all()


def test_own_data_blank_image_reports_null_metrics(tmp_path):
    """An all-zero attenuation image (an air scan) is reconstructed and written; its PSNR/SSIM, undefined for a
    reference without range, are null in summary.json, and the run exits 0 (it used to crash after writing)."""
    from monai_ext.io import save_nifti

    data = tmp_path / "data"
    save_nifti(np.zeros((64, 64), np.float32), data / "air.nii.gz", affine=np.diag([4.0, 4.0, 1.0, 1.0]))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
         "--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--output_dir", str(out), "--method", "fbp"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    case = summary["cases"][0]
    assert case["psnr_db"] is None and case["ssim"] is None and case["relative_error"] is None
    assert "mean_psnr_db" not in summary
    assert (out / "air_fbp.nii.gz").is_file() or any(out.glob("air*.nii.gz"))


def test_own_data_output_dir_that_is_a_file_fails_before_any_computation(tmp_path):
    """``output_dir`` is created and probed in ``initialize``: a file in its place stops the run at once, with the
    path in the message, and the file is left as it was."""
    target = tmp_path / "results"
    target.write_text("the user's notes")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
         "--bundle_root", str(BUNDLE), "--output_dir", str(target)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0
    assert f"output_dir {target} is a file, not a folder" in result.stderr
    assert "Epoch" not in result.stderr  # nothing was reconstructed
    assert target.read_text() == "the user's notes"


def test_unet_weights_are_stored_in_float16_and_train_json_writes_them_so(tmp_path):
    """The shipped U-Net weights are float16 (under the Zoo's 1 MB), load into the float32 network, and the save
    handler of ``train.json`` writes that dtype (with its record); a non-float dtype is refused, named."""
    from types import SimpleNamespace

    from monai_ext.workflows import SaveBestModel, read_record

    for path in (BUNDLE / "models" / "fbpconvnet.pt", BUNDLE / "models" / "noise_free" / "fbpconvnet.pt"):
        state = torch.load(path, weights_only=True)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
        assert path.stat().st_size < 1024 * 1024
    parser = _parser("train.json", method="fbpconvnet")
    network = parser.get_parsed_content("networks#fbpconvnet")
    network.load_state_dict(torch.load(BUNDLE / "models" / "fbpconvnet.pt", weights_only=True))
    assert next(network.parameters()).dtype == torch.float32
    assert parser.get_parsed_content("weights_storage_dtype")["fbpconvnet"] == "float16"

    handler = SaveBestModel(network, str(tmp_path / "net.pt"), parser.get_parsed_content("geometry"), 1e4, {"source": "test"},
                            storage_dtype="float16")
    handler(SimpleNamespace(state=SimpleNamespace(best_metric_epoch=1, epoch=1, key_metric_name="val_psnr", best_metric=27.0)))
    saved = torch.load(tmp_path / "net.pt", weights_only=True)
    reference = network.state_dict()
    assert all(saved[k].dtype == torch.float16 and torch.equal(saved[k], reference[k].half()) for k in reference if reference[k].is_floating_point())
    assert read_record(str(tmp_path / "net.pt"))["training"]["storage_dtype"] == "float16"
    with pytest.raises(ValueError, match="storage_dtype must name a floating-point torch dtype"):
        SaveBestModel(network, str(tmp_path / "x.pt"), None, None, {}, storage_dtype="int8")
