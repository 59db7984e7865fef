"""The regularised dynamic PET MM map: monotone, positive, KKT at its fixed point, accelerated by Anderson."""

from __future__ import annotations

import numba
import pytest
import torch

from monai_ext.pet import BIOGRAPH_6_TRUEPOINT_TRUEV, DynamicPETSimulator, mlem
from monai_ext.dynamic_pet.noise_realisations import system_model_of
from monai_ext.dynamic_pet.regularised_mm import (
    RegularisedMMMap,
    dynamic_pet_objective,
    kkt_residuals,
    mm_reconstruct,
    objective_gradient,
    regularised_mm_step,
    smoothed_total_variation,
    temporal_difference_penalty,
    uniform_initial_image,
)
from monai_ext.tomo import ParallelBeamProjector
from monai_ext.tomo.sparse_projector import SparseMatrixProjector

torch.set_num_threads(1)  # small tensors: one thread avoids OpenMP contention on the shared 2-core machine
numba.set_num_threads(1)

ETA, LAMBDA = 1.0, 0.05


@pytest.fixture(scope="module")
def problem():
    """A 32 x 32, 20-frame exam (Biograph geometry, 8 views mashed), float64."""
    sim = DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(32, 32), view_mashing=8)
    exam = sim.simulate(2e6, subject_seed=3, noise_seed=1)
    model = system_model_of(exam)
    return exam, model, exam.counts[None]


def test_sparse_matrix_projector_is_the_joseph_operator(problem):
    exam, _, _ = problem
    sparse, ray = SparseMatrixProjector(exam.geometry), ParallelBeamProjector(exam.geometry)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *exam.geometry.image_shape, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 3, *exam.geometry.sinogram_shape, generator=gen, dtype=torch.float64)
    assert torch.allclose(sparse(x), ray(x), rtol=1e-10, atol=1e-10)
    assert torch.allclose(sparse.adjoint(y), ray.adjoint(y), rtol=1e-10, atol=1e-10)
    assert abs(float((sparse(x) * y).sum() / (x * sparse.adjoint(y)).sum()) - 1) < 1e-12
    xg = x.clone().requires_grad_()
    (sparse(xg) * y).sum().backward()  # autograd: the gradient of A x is A^T
    assert torch.allclose(xg.grad, sparse.adjoint(y))


def test_penalties_match_their_formulas():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, 1] = 1.0  # frame 2 differs from frames 1 and 3 by 1 in 4 pixels
    assert float(temporal_difference_penalty(x)) == pytest.approx(0.5 * (4 + 4))
    img = torch.tensor([[[[0.0, 3.0], [4.0, 0.0]]]], dtype=torch.float64)
    # forward differences, zero across the last column / row: pixel (0,0) has (3, 4); (0,1) has (0, -3); (1,0) (-4, 0)
    expected = (25 + 0.01) ** 0.5 + (9 + 0.01) ** 0.5 + (16 + 0.01) ** 0.5 + 0.1
    assert float(smoothed_total_variation(img, 0.1)) == pytest.approx(expected)


def test_without_regularisation_the_step_is_mlem(problem):
    exam, model, y = problem
    x0 = uniform_initial_image(y, model)
    step = regularised_mm_step(x0, y, model, model.sensitivity(), 0.0, 0.0)
    em, _ = mlem(y, model, 1, x0=x0, compute_likelihood=False)
    assert torch.allclose(step, em, rtol=1e-10)


def test_objective_decreases_monotonically_and_iterates_stay_positive(problem):
    exam, model, y = problem
    lambdas = torch.linspace(0.02, 0.2, exam.schedule.n_frames, dtype=torch.float64)
    mm, sens = RegularisedMMMap(model), model.sensitivity()
    x = uniform_initial_image(y, model)
    values = [float(dynamic_pet_objective(x, y, model, ETA, lambdas))]
    for _ in range(40):
        x = mm(x, y, sens, ETA, lambdas)
        assert bool((x > 0).all()), "an MM iterate left the positive orthant"
        values.append(float(dynamic_pet_objective(x, y, model, ETA, lambdas)))
    steps = torch.diff(torch.tensor(values, dtype=torch.float64))
    assert bool((steps <= 1e-10 * abs(values[0])).all()), steps.max()
    assert values[-1] < values[0]


def test_map_tolerates_extrapolations_outside_the_positive_orthant(problem):
    exam, model, y = problem
    z = uniform_initial_image(y, model) * (torch.rand(y.shape[0], exam.schedule.n_frames, 32, 32, dtype=torch.float64) - 0.5)
    out = RegularisedMMMap(model)(z, y, model.sensitivity(), ETA, LAMBDA)
    assert torch.isfinite(out).all() and bool((out >= 0).all())


def test_fixed_point_satisfies_kkt_and_anderson_needs_fewer_iterations(problem):
    exam, model, y = problem
    anderson, info_a = mm_reconstruct(y, model, ETA, LAMBDA, solver="anderson", tol=1e-5, max_iter=3000)
    picard, info_p = mm_reconstruct(y, model, ETA, LAMBDA, solver="picard", tol=1e-5, max_iter=3000)
    assert info_a.converged and info_p.converged
    assert info_a.nstep * 3 < info_p.nstep, (info_a.nstep, info_p.nstep)  # measured: 101 against 692
    assert float((anderson - picard).norm() / picard.norm()) < 1e-2
    x, info = mm_reconstruct(y, model, ETA, LAMBDA, solver="anderson", tol=1e-8, max_iter=3000, x0=anderson)
    assert info.converged
    stationarity, sign = kkt_residuals(x, y, model, ETA, LAMBDA, zero_threshold=1e-3)
    assert float(stationarity.max()) < 1e-3, float(stationarity.max())  # |grad f| / (A^T 1) where x > 0
    assert float(sign.max()) < 1e-3, float(sign.max())  # grad f >= 0 where x ~ 0
    # and the objective there is below that of the plain iterate at a looser tolerance
    assert float(dynamic_pet_objective(x, y, model, ETA, LAMBDA)) <= float(dynamic_pet_objective(picard, y, model, ETA, LAMBDA)) + 1e-6


def test_restarts_continue_a_solve_that_ran_out_of_iterations(problem):
    exam, model, y = problem
    _, short = mm_reconstruct(y, model, ETA, LAMBDA, solver="anderson", tol=1e-5, max_iter=30)
    x, restarted = mm_reconstruct(y, model, ETA, LAMBDA, solver="anderson", tol=1e-5, max_iter=30, restarts=20)
    assert not short.converged and restarted.converged
    assert restarted.nstep > 30  # the total over the solves
    reference, _ = mm_reconstruct(y, model, ETA, LAMBDA, solver="anderson", tol=1e-5, max_iter=3000)
    assert float((x - reference).norm() / reference.norm()) < 1e-2


def test_objective_gradient_matches_finite_differences(problem):
    exam, model, y = problem
    x = uniform_initial_image(y, model) * (1 + 0.1 * torch.rand(1, exam.schedule.n_frames, 32, 32, dtype=torch.float64))
    lambdas = torch.full((exam.schedule.n_frames,), LAMBDA, dtype=torch.float64)
    grad = objective_gradient(x, y, model, ETA, lambdas)
    direction = torch.randn_like(x)
    h = 1e-6
    fd = (dynamic_pet_objective(x + h * direction, y, model, ETA, lambdas) - dynamic_pet_objective(x - h * direction, y, model, ETA, lambdas)) / (2 * h)
    assert float(fd) == pytest.approx(float((grad * direction).sum()), rel=1e-5)


@pytest.mark.parametrize(
    "eta,lambdas",
    [(-1.0, 0.1), (0.1, -0.5), (0.1, torch.ones(7)), (float("nan"), 0.1), (torch.ones(3), 0.1)],
)
def test_bad_hyperparameters_are_refused(problem, eta, lambdas):
    exam, model, y = problem
    with pytest.raises(ValueError, match="eta|lambdas"):
        regularised_mm_step(uniform_initial_image(y, model), y, model, model.sensitivity(), eta, lambdas)
