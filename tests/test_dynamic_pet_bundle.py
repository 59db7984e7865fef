"""The dynamic PET DEQ bundle: hyperparameter learning, baselines, dose model, inference inputs and outputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

from monai_ext.pet import BIOGRAPH_6_TRUEPOINT_TRUEV, DynamicPETSimulator, save_exam
from monai_ext.dynamic_pet.dose_adaptive_reconstruction import DoseAdaptiveReconstruction
from monai_ext.dynamic_pet.dose_model import DoseModel, fit_dose_model
from monai_ext.dynamic_pet.hyperparameter_learning import (
    FixedPointProblem,
    RegularisationWeights,
    grid_search,
    learn_hyperparameters_deq,
    tpe_search,
)
from monai_ext.dynamic_pet.noise_realisations import simulate_realisations
from bundle_config import bundle_scripts

torch.set_num_threads(1)  # small tensors: one thread avoids OpenMP contention on the shared 2-core machine
numba.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "dynamic_pet_deq_reconstruction"
_inference = bundle_scripts(BUNDLE, "inference")
DynamicPETPrepareBatch, SaveDynamicSeriesd, dynamic_pet_cases = _inference.DynamicPETPrepareBatch, _inference.SaveDynamicSeriesd, _inference.dynamic_pet_cases
DOSES = np.array([150, 250, 300, 400, 500, 750]) * 1e6


@pytest.fixture(scope="module")
def simulator():
    return DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(32, 32), view_mashing=8)


@pytest.fixture(scope="module")
def data(simulator):
    return simulate_realisations(simulator, 300e6, 4, subject_seed=2, noise_seed=10)


@pytest.fixture()
def small_dose_model(simulator, tmp_path):
    """A dose model for the 32 x 32 test grid, fitted to smooth synthetic weights."""
    d = DOSES / 1e6
    etas = 0.2 + 2.0 * np.exp(-d / 200.0)
    lambdas = np.stack([0.05 * (1 + t / 10) * np.exp(-d / 400.0) + 0.01 for t in range(20)], axis=1)
    setting = {"image_shape": [32, 32], "sinogram_shape": list(simulator.geometry.sinogram_shape), "eps": 0.1,
               "frame_durations_s": list(simulator.schedule.durations)}
    path = tmp_path / "dose_model.json"
    DoseModel.fit(DOSES, etas, lambdas, setting=setting).save(path)
    return path


# -- dose model ------------------------------------------------------------------------------------------------------
def test_dose_model_fits_recover_known_parameters():
    d = DOSES / 1e6
    rng = np.random.default_rng(0)
    truth = (4.0, -0.01, 0.5, -0.001)
    values = (truth[0] * np.exp(truth[1] * d) + truth[2] * np.exp(truth[3] * d)) * (1 + 1e-4 * rng.standard_normal(6))
    fit = fit_dose_model("double_exponential", DOSES, values)
    assert fit.r2 > 0.9999
    np.testing.assert_allclose(fit.coefficients, truth, rtol=0.05, atol=2e-5)
    for model, coefficients, f in (
        ("power", (3.0, 0.5), lambda x: 3.0 * x**0.5),
        ("linear", (2.0, 0.01), lambda x: 2.0 + 0.01 * x),
        ("exponential", (5.0, -0.004), lambda x: 5.0 * np.exp(-0.004 * x)),
    ):
        fit = fit_dose_model(model, DOSES, f(d))
        np.testing.assert_allclose(fit.coefficients, coefficients, rtol=1e-4)
        assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_dose_model_round_trip_clamps_and_floors(tmp_path):
    d = DOSES / 1e6
    etas = 1.0 + 0.002 * d
    lambdas = np.stack([0.1 * np.ones(6), 0.01 * d], axis=1)
    model = DoseModel.fit(DOSES, etas, lambdas, setting={"eps": 0.1})
    assert set(model.learned["fits"]["eta"]) == {"linear", "power", "exponential", "double_exponential"}
    model.save(tmp_path / "m.json")
    again = DoseModel.load(tmp_path / "m.json")
    eta, lam = again.hyperparameters(300e6)
    assert eta == pytest.approx(1.6, rel=1e-6) and lam[1] == pytest.approx(3.0, rel=1e-6)
    assert again.hyperparameters(5e9) == again.hyperparameters(750e6)  # clamped into the learned range
    assert all(v > 0 for v in [eta, *lam])


@pytest.mark.parametrize("dose", [-300e6, 0.0, float("nan"), "many"])
def test_bad_dose_is_refused(small_dose_model, simulator, dose):
    with pytest.raises(ValueError, match="dose"):
        DoseModel.load(small_dose_model).hyperparameters(dose)
    with pytest.raises(ValueError, match="dose"):
        dynamic_pet_cases("", simulator, dose=dose)


def test_missing_dose_model_file_is_a_clear_error(simulator, tmp_path):
    with pytest.raises(FileNotFoundError, match="dose model file not found.*dose_sweep"):
        DoseAdaptiveReconstruction(simulator.geometry, tmp_path / "nope.json")


def test_dose_model_of_another_grid_is_refused(simulator):
    model_file = BUNDLE / "models" / "dose_model.json"
    if not model_file.is_file():
        pytest.skip("the bundle's dose model has not been generated")
    with pytest.raises(ValueError, match="image_shape"):
        DoseAdaptiveReconstruction(simulator.geometry, model_file)


# -- inference inputs --------------------------------------------------------------------------------------------------
def test_sinogram_frames_not_matching_the_schedule_are_refused(simulator, tmp_path):
    exam = simulator.simulate(3e6, subject_seed=1, noise_seed=0)
    save_exam(exam, tmp_path / "exam")
    npz = tmp_path / "exam" / "sinograms.npz"
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["counts"] = arrays["counts"][:18]
    np.savez_compressed(npz, **arrays)
    with pytest.raises(ValueError, match="18 frames but the frame schedule has 20"):
        dynamic_pet_cases(str(tmp_path), simulator)


def test_own_data_exam_with_missing_or_bad_fields_names_them(simulator, tmp_path):
    """An exam without activity.nii.gz (measured data) whose sinograms.json or .npz lack what the reader needs:
    ValueErrors naming the file and the field or array, not bare KeyErrors."""
    exam = simulator.simulate(3e6, subject_seed=1, noise_seed=0)
    folder = tmp_path / "exam"
    save_exam(exam, folder)
    (folder / "activity.nii.gz").unlink()
    meta_path, npz = folder / "sinograms.json", folder / "sinograms.npz"
    meta = json.loads(meta_path.read_text())
    broken = {k: v for k, v in meta.items() if k != "total_counts"}
    meta_path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"sinograms.json lacks the field 'total_counts'"):
        dynamic_pet_cases(str(tmp_path), simulator)
    meta_path.write_text(json.dumps({**meta, "schedule": {"FrameDuration": meta["schedule"]["FrameDuration"]}}))
    with pytest.raises(ValueError, match=r"lacks the field 'schedule/FrameTimesStart'"):
        dynamic_pet_cases(str(tmp_path), simulator)
    meta_path.write_text(json.dumps({**meta, "sensitivity_counts_per_kBq_mL_mm_s": "2.5"}))
    with pytest.raises(ValueError, match=r"'sensitivity_counts_per_kBq_mL_mm_s' must be a JSON number, got '2.5'"):
        dynamic_pet_cases(str(tmp_path), simulator)
    meta_path.write_text(json.dumps(meta))
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files if k != "background"}
    np.savez_compressed(npz, **arrays)
    with pytest.raises(ValueError, match=r"sinograms.npz lacks the array\(s\) background"):
        dynamic_pet_cases(str(tmp_path), simulator)
    npz.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"cannot read .*sinograms.npz \(truncated"):
        dynamic_pet_cases(str(tmp_path), simulator)


def test_frame_schedule_other_than_the_dose_model_is_refused(small_dose_model, simulator):
    recon = DoseAdaptiveReconstruction(simulator.geometry, small_dose_model, psf_fwhm=simulator.psf_fwhm)
    durations = torch.tensor([list(simulator.schedule.durations)[:-1] + [600.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="frame durations"):
        recon.check_frames(durations)


def test_exam_on_another_grid_is_refused(tmp_path):
    other = DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(32, 32), view_mashing=12)
    save_exam(other.simulate(3e6, subject_seed=1), tmp_path / "exam")
    with pytest.raises(ValueError, match="sinogram shape"):
        dynamic_pet_cases(str(tmp_path), DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(32, 32), view_mashing=8))


def test_reconstruction_from_saved_exam_writes_series_and_montage(small_dose_model, simulator, tmp_path):
    exam = simulator.simulate(3e6, subject_seed=4, noise_seed=3)
    save_exam(exam, tmp_path / "data" / "subject4")
    cases = dynamic_pet_cases(str(tmp_path / "data"), simulator)
    assert len(cases) == 1 and cases[0]["dose"] == pytest.approx(3e8)  # total_counts / slice_fraction
    batch = torch.utils.data.default_collate(cases)
    counts, reference, _, kwargs = DynamicPETPrepareBatch()(batch, device="cpu")
    recon = DoseAdaptiveReconstruction(simulator.geometry, small_dose_model, psf_fwhm=simulator.psf_fwhm)
    with torch.no_grad():
        x = recon(counts, **kwargs)
    assert x.shape == (1, 20, 32, 32) and bool((x >= 0).all()) and recon.last_info.converged
    mse_recon = float(((x[0] - reference[0]) ** 2).mean())
    assert mse_recon < float((reference[0] ** 2).mean())  # well below the signal power
    item = {**{k: v[0] if isinstance(v, torch.Tensor) else v[0] for k, v in batch.items()}, "pred": x[0]}
    out = SaveDynamicSeriesd("pred", str(tmp_path / "out"), dose_model=recon.dose_model)(item)
    nifti = Path(out["pred_file"])
    import nibabel as nib

    img = nib.load(str(nifti))
    assert img.shape == (32, 32, 1, 20) and img.header.get_xyzt_units() == ("mm", "sec")
    assert nifti.with_name(nifti.name.replace(".nii.gz", ".png")).is_file()
    sidecar = json.loads(nifti.with_name(nifti.name.replace(".nii.gz", ".json")).read_text())
    assert len(sidecar["FrameDuration"]) == 20 and len(sidecar["lambdas"]) == 20 and sidecar["eta"] > 0


# -- learning ------------------------------------------------------------------------------------------------------
def test_weights_are_positive_through_the_log_parameterisation():
    w = RegularisationWeights(20, eta=0.5, lambdas=0.1)
    assert w.n_parameters == 21
    with torch.no_grad():
        w.log_lambda[3] = -50.0
    assert bool((w.lambdas > 0).all()) and float(w.eta.detach()) == pytest.approx(0.5)
    assert RegularisationWeights(20, per_frame=False).n_parameters == 2
    with pytest.raises(ValueError, match="positive"):
        RegularisationWeights(20, eta=-1.0)


def test_tiny_deq_training_reduces_the_loss(data):
    problem = FixedPointProblem(data, tol=1e-5, backward_tol=5e-3, backward_max_iter=30, dtype=torch.float64)
    weights = RegularisationWeights(data.n_frames, eta=1.0, lambdas=0.5)
    train = [0, 1, 2]
    before = problem.mse(train, weights.eta.detach(), weights.lambdas.detach())
    x = problem.reconstruct(train, weights.eta, weights.lambdas)
    problem.loss(x).backward()
    assert torch.isfinite(weights.log_lambda.grad).all() and bool((weights.log_lambda.grad != 0).all())
    assert problem.deq.backward_info is not None
    weights.zero_grad()
    result = learn_hyperparameters_deq(problem, train, weights, epochs=3, batch_size=3, lr=0.2, lr_final=0.1)
    after = problem.mse(train, result.eta, result.lambdas)
    assert after < before, (before, after)
    assert result.n_evaluations == 3 and len(result.lambdas) == 20 and result.seconds > 0


@pytest.mark.slow
def test_implicit_gradient_matches_finite_differences(data):
    # the backward fixed point converges slowly (the MM map has Jacobian eigenvalues near 1 at pixels near zero), so
    # an exact gradient needs tight tolerances: ~40 s; training uses backward_tol = 5e-3
    problem = FixedPointProblem(data, tol=1e-10, max_iter=3000, backward_tol=1e-8, backward_max_iter=500, dtype=torch.float64)
    weights = RegularisationWeights(data.n_frames, eta=1.0, lambdas=0.2)
    problem.loss(problem.reconstruct([0], weights.eta, weights.lambdas)).backward()
    h = 1e-3
    mse = lambda eta: problem.mse([0], eta, weights.lambdas.detach())  # noqa: E731
    fd = (mse(math.exp(h)) - mse(math.exp(-h))) / (2 * h)  # d MSE / d log(eta) at eta = 1
    assert float(weights.log_eta.grad) == pytest.approx(fd, rel=0.05, abs=1e-6)


def test_searches_run_within_their_budget(data):
    problem = FixedPointProblem(data, tol=1e-4)
    box = {"eta_range": (0.1, 10.0), "lambda_range": (0.01, 1.0), "time_budget_s": 1.0, "batch_size": 4}
    grid = grid_search(problem, [0, 1], **box)
    tpe = tpe_search(problem, [0, 1], **box, seed=0)
    for result in (grid, tpe):
        assert result.n_evaluations >= 2 and result.train_mse == min(t["mse"] for t in result.history)
        assert box["eta_range"][0] <= result.eta <= box["eta_range"][1]
    again = tpe_search(FixedPointProblem(data, tol=1e-4), [0, 1], **box, seed=0)
    assert again.history[0]["eta"] == tpe.history[0]["eta"]  # seeded


def test_grid_search_does_not_start_at_the_deq_initial_point(data):
    """The DEQ starts at the box's geometric centre (eta 1, lambda 0.1): no probe and no grid point of the search is
    there, and its grid points are the centres of equal log-cells."""
    from monai_ext.dynamic_pet.hyperparameter_learning import _log_cell_centres

    box = {"eta_range": (0.1, 10.0), "lambda_range": (0.01, 1.0), "time_budget_s": 1.0, "batch_size": 4}
    grid = grid_search(FixedPointProblem(data, tol=1e-4), [0, 1], **box)
    for t in grid.history:
        assert not (t["eta"] == pytest.approx(1.0, rel=1e-3) and t["lambda"] == pytest.approx(0.1, rel=1e-3)), t
    assert _log_cell_centres(0.1, 10.0, 2) == pytest.approx([10 ** -0.5, 10 ** 0.5])


@pytest.fixture(scope="module")
def hypergradient_problem():
    """The 16 x 16, 3-frame test problem of the hypergradient check, and its true hypergradient at eta 1,
    lambda 0.2 (finite differences of fixed points converged to 1e-11; about 2.5 minutes)."""
    from monai_ext.dynamic_pet.hyperparameter_learning import finite_difference_hypergradient
    from monai_ext.pet.kinetics import FrameSchedule

    sim = DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(16, 16), view_mashing=8,
                              schedule=FrameSchedule((0.0, 60.0, 180.0), (60.0, 120.0, 300.0)))
    data = simulate_realisations(sim, 300e6, 2, subject_seed=2, noise_seed=10)
    return data, finite_difference_hypergradient(data, [0], 1.0, 0.2)


@pytest.mark.slow
def test_learning_hypergradients_within_5_percent(hypergradient_problem):
    """The hypergradient with the solver settings the bundle learns with (train.json's, SolverSettings' defaults)
    is within 5 % of the true one in every component; the settings used before were not (the check can fail)."""
    from monai_ext.dynamic_pet.hyperparameter_learning import hypergradient_error, implicit_hypergradient

    data, truth = hypergradient_problem
    hyper = bundle_scripts(BUNDLE, "hyperparameters")
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())["solver"]
    settings = hyper.SolverSettings(**train)
    assert settings == hyper.SolverSettings(validation_restarts=train["validation_restarts"])
    kwargs = {"eps": settings.eps, "solver": settings.solver, "tol": settings.tol, "max_iter": settings.max_iter,
              "solver_kwargs": settings.solver_kwargs(), "backward_solver": settings.backward_solver,
              "backward_tol": settings.backward_tol, "backward_max_iter": settings.backward_max_iter, "dtype": torch.float64,
              "backward_solver_kwargs": {"restart": settings.gmres_restart}}
    with pytest.warns(RuntimeWarning):  # the backward budget, not its tolerance, ends the GMRES solve
        gradient, _ = implicit_hypergradient(data, [0], 1.0, 0.2, settings=kwargs)
    error = hypergradient_error(gradient, truth)
    assert error["max_rel_error"] <= 0.05, error
    before = {"tol": 1e-5, "backward_tol": 5e-3, "backward_max_iter": 50, "dtype": torch.float32, "solver_kwargs": kwargs["solver_kwargs"]}
    old, _ = implicit_hypergradient(data, [0], 1.0, 0.2, settings=before)
    assert hypergradient_error(old, truth)["max_rel_error"] > 0.10


@pytest.mark.slow
def test_comparison_runs_end_to_end(simulator, tmp_path):
    compare_cases = bundle_scripts(BUNDLE, "hyperparameters").compare_cases

    learning = {"n_realisations": 4, "n_train": 3, "epochs": 2, "batch_size": 3}
    out = compare_cases(simulator, [{"subject_seed": 1, "dose": 300e6}], learning=learning, solver={"tol": 1e-4},
                        output_dir=str(tmp_path))
    rows = out["cases"][0]["rows"]
    assert [r["method"] for r in rows] == ["deq", "deq_2", "grid_search", "tpe"] and all(r["val_mse"] > 0 for r in rows)
    assert rows[1]["n_parameters"] == 2 and len(set(rows[1]["lambdas"])) == 1 and rows[0]["n_parameters"] == 21
    assert out["cases"][0]["solver_iterations"]["ratio"] > 1
    for name in ("comparison.json", "comparison.md", "subject1_dose300M_errors.png"):
        assert (tmp_path / name).is_file()


@pytest.mark.slow
def test_inference_config_on_a_dataset_dir(tmp_path):
    sim = DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(64, 64), view_mashing=4)
    save_exam(sim.simulate(4e6, subject_seed=6, noise_seed=1), tmp_path / "data" / "s6")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--bundle_root", str(BUNDLE), "--output_dir", str(tmp_path / "out"), "--dataset_dir", str(tmp_path / "data")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cases"][0]["name"] == "s6" and summary["mean_psnr_db"] > 20


def test_table_i_json_has_the_issue_shape_and_a_cross_subject_error(tmp_path):
    """``table_i`` from comparisons and per-subject dose sweeps (synthetic results in their saved shape): the keys of
    issue 23's JSON, and a cross-subject error that is zero for two subjects with the same learned weights and
    positive when they differ."""
    hyper = bundle_scripts(BUNDLE, "hyperparameters")
    d = DOSES / 1e6
    learning = {"epochs": 20, "n_realisations": 48, "n_train": 40}

    def sweep(subject, scale):
        etas = scale * (0.2 + 2.0 * np.exp(-d / 200.0))
        lambdas = np.stack([0.05 * (1 + t / 10) * np.exp(-d / 400.0) + 0.01 for t in range(3)], axis=1)
        model = DoseModel.fit(DOSES, etas, lambdas)
        return {"runs": [{"subject_seed": subject}], "dose_model": model.as_dict()}

    rows = [{"method": m, "val_mse": v, "seconds": 10.0} for m, v in (("deq", 0.20), ("deq_2", 0.22), ("grid_search", 0.25), ("tpe", 0.24))]
    rows[2]["best_trial_index"] = 5
    comparison = {"subject_seed": 0, "dose": 250e6, "learning": learning, "setting": {"image_shape": [64, 64]}, "rows": rows}
    same = hyper.table_i([comparison], [sweep(0, 1.0), sweep(1, 1.0)], 0.026, tmp_path / "table_i.json")
    assert set(same) == {"epochs", "realisations", "image", "hypergradient_rel_error", "cases", "dose_model"}
    assert same["realisations"] == {"train": 40, "validation": 8} and same["image"] == [64, 64]
    assert same["cases"][0]["mse"] == {"deq_21": 0.20, "deq_2": 0.22, "grid_search": 0.25, "tpe": 0.24}
    assert same["cases"][0]["grid_best_trial_index"] == 5
    assert same["dose_model"]["cross_subject_error"] == pytest.approx(0.0, abs=1e-6)
    differ = hyper.table_i([comparison], [sweep(0, 1.0), sweep(1, 1.3)], 0.026)
    assert differ["dose_model"]["cross_subject_error"] > 0.05
    assert json.loads((tmp_path / "table_i.json").read_text())["hypergradient_rel_error"] == 0.026
