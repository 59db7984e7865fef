"""Variational solvers of ``monai_ext.solvers``: closed-form cases, convergence, operator helpers, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.operators import MatrixOperator, Scaled, divergence, gradient, gradient_norm_sq_bound, normalise_operator, operator_norm
from monai_ext.solvers import (
    TikhonovReconstruction,
    TVReconstruction,
    tikhonov_cg,
    total_variation,
    tune_weight,
    tv_pdhg,
)
from monai_ext.tomo import ParallelBeamGeometry, ParallelBeamProjector, uniform_angles

torch.set_num_threads(2)
DT = torch.float64


def _rand(*shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _ct_operator(n=24, views=6):
    return ParallelBeamProjector(ParallelBeamGeometry((n, n), 2.0, uniform_angles(views), n_det=n, det_spacing=2.0))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradient_norm_below_bound(dims):
    x = _rand(1, 1, *([12] * dims), seed=3)
    for _ in range(100):
        x = -divergence(gradient(x))
        x = x / x.norm()
    value = float((-divergence(gradient(x)) * x).sum())
    assert value <= gradient_norm_sq_bound(dims) + 1e-9


def test_operator_norm_matrix_and_scaled():
    matrix = torch.diag(torch.tensor([3.0, 2.0, 0.5], dtype=DT))
    op = MatrixOperator(matrix, (3,))
    assert math.isclose(operator_norm(op, n_iter=200), 3.0, rel_tol=1e-6)
    assert math.isclose(normalise_operator(op, 3.0).norm(n_iter=200), 1.0, rel_tol=1e-6)
    assert math.isclose(Scaled(op, -2.0).norm(n_iter=200), 6.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        Scaled(op, 0.0)
    with pytest.raises(TypeError, match="adjoint"):
        operator_norm(object(), (3,))


def test_old_names_stay_importable_for_one_release():
    from monai_ext.solvers import ScaledOperator, normalize_operator
    from monai_ext.solvers.finite_differences import gradient as old_gradient

    op = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0], dtype=DT)), (2,))
    assert ScaledOperator is Scaled and old_gradient is gradient
    with pytest.warns(DeprecationWarning, match="normalise_operator"):
        assert math.isclose(normalize_operator(op, 3.0).norm(n_iter=50), 1.0, rel_tol=1e-6)
    y = torch.ones(1, 1, 2, dtype=DT)
    with pytest.warns(DeprecationWarning, match="regulariser"):
        old, _ = tikhonov_cg(op, y, 1.0, regularizer="gradient")
    torch.testing.assert_close(old, tikhonov_cg(op, y, 1.0, "gradient")[0])


@pytest.mark.parametrize("regulariser", ["identity", "gradient"])
def test_tikhonov_cg_matches_closed_form(regulariser):
    gen = torch.Generator().manual_seed(4)
    n, m, w = (5, 6), 12, 0.7
    matrix = torch.randn((m, 30), generator=gen, dtype=DT)
    op = MatrixOperator(matrix, n)
    y = torch.randn((2, 1, m), generator=gen, dtype=DT)
    x, info = tikhonov_cg(op, y, w, regulariser, n_iter=200, tol=1e-12)
    if regulariser == "identity":
        reg = torch.eye(30, dtype=DT)
    else:
        basis = torch.eye(30, dtype=DT).reshape(30, 1, 1, *n)
        grads = gradient(basis).reshape(30, -1)  # row j: grad of unit image j
        reg = grads @ grads.T
    expected = torch.linalg.solve(matrix.T @ matrix + w * reg, matrix.T @ y.reshape(2, m).T).T
    assert torch.allclose(x.reshape(2, 30), expected, atol=1e-8)
    assert info["converged"] and info["residual_trace"][-1] <= 1e-12


def _step_image(shape, n1, a=1.0, b=3.0):
    x = torch.full(shape, a, dtype=DT)
    x[..., n1:] = b
    return x


@pytest.mark.parametrize("spatial", [(16,), (6, 16), (3, 4, 16)])
def test_tv_pdhg_denoising_a_step_matches_closed_form(spatial):
    # A = I: the minimiser of 1/2 ||x - y||^2 + w TV(x) for a step (constant across the other axes) moves each
    # side towards the other by w / (its length)
    n1, w = 6, 2.0
    y = _step_image((1, 1, *spatial), n1)
    op = MatrixOperator(torch.eye(math.prod(spatial), dtype=DT), spatial, spatial)
    x, info = tv_pdhg(op, y, w, n_iter=3000, step_ratio=1.0, tol=1e-12)
    n2 = spatial[-1] - n1
    expected = _step_image((1, 1, *spatial), n1, 1.0 + w / n1, 3.0 - w / n2)
    assert torch.allclose(x, expected, atol=1e-6), (x.flatten()[:n1 + 2], expected.flatten()[:n1 + 2])


def test_tv_pdhg_objective_decreases_and_converges_on_ct():
    op = _ct_operator()
    truth = torch.zeros(2, 1, 24, 24, dtype=DT)
    truth[:, :, 6:18, 8:16] = 0.02
    truth[1, :, 10:14, 4:20] += 0.01
    y = op(truth)
    y = y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=DT)
    w = 0.02
    x, info = tv_pdhg(op, y, w, n_iter=250, record_objective=True)
    obj = info["objective"]
    reference, ref_info = tv_pdhg(op, y, w, n_iter=1000)
    best = sum(ref_info["final_objective"])
    assert obj[-1] < 0.05 * obj[0]
    # after the transient, the objective keeps decreasing and reaches the long run's value
    assert obj[-1] <= min(obj[: len(obj) // 4]) + 1e-12
    assert (obj[-1] - best) / best < 5e-3
    assert float((x - reference).norm() / reference.norm()) < 0.05
    assert float(x.min()) >= 0.0


def test_tv_pdhg_weight_zero_nonnegative_is_projection_for_identity():
    y = torch.tensor([[[-1.0, 0.5, 2.0, -0.2]]], dtype=DT)
    op = MatrixOperator(torch.eye(4, dtype=DT), (4,))
    x, _ = tv_pdhg(op, y, 0.0, n_iter=2000, step_ratio=1.0)
    assert torch.allclose(x, y.clamp_min(0.0), atol=1e-6)


def test_total_variation_of_a_step():
    x = _step_image((1, 1, 4, 10), 3, 0.0, 2.0)
    assert math.isclose(float(total_variation(x)), 4 * 2.0)


def test_modules_wrap_the_solvers():
    op = _ct_operator(16, 4)
    y = op(torch.ones(1, 1, 16, 16, dtype=torch.float32) * 0.02)
    assert TVReconstruction(op, 0.01, n_iter=20)(y).shape == (1, 1, 16, 16)
    assert TikhonovReconstruction(op, 1.0, n_iter=20)(y).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="regulariser"):
        TikhonovReconstruction(op, 1.0, regulariser="laplacian")
    with pytest.raises(ValueError, match="weight"):
        TVReconstruction(op, -1.0)


def test_solvers_reject_bad_measurements():
    op = _ct_operator(16, 4)
    with pytest.raises(ValueError, match=r"shape \(B, C, 4, 16\)"):
        tv_pdhg(op, torch.zeros(1, 1, 5, 16), 0.1)
    bad = torch.zeros(1, 1, 4, 16)
    bad[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        tikhonov_cg(op, bad, 0.1)
    with pytest.raises(ValueError, match="weight"):
        tikhonov_cg(op, torch.zeros(1, 1, 4, 16), -0.1)


def test_tune_weight_finds_the_best_scalar():
    y = torch.arange(1.0, 9.0).reshape(2, 1, 4)
    best, table = tune_weight(lambda v, w: v / (1.0 + w), y, y / 2.0, [0.1, 0.3, 3.0, 10.0], refine=6)
    assert abs(best - 1.0) < 0.1
    assert [row["weight"] for row in table] == sorted(row["weight"] for row in table)
    with pytest.raises(ValueError, match="positive"):
        tune_weight(lambda v, w: v, y, y, [0.0, 1.0])


def test_metrics_of_a_uniform_reference_are_undefined_not_an_error():
    import math

    from monai_ext.metrics import psnr, relative_error, ssim

    blank, image = torch.zeros(16, 16), torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    assert math.isnan(psnr(image, blank)) and math.isnan(ssim(image, blank)) and math.isnan(relative_error(image, blank))
    assert math.isnan(psnr(image, torch.full((16, 16), 0.3)))
    assert psnr(image, image) == math.inf
    assert math.isfinite(psnr(image, blank, data_range=1.0))
