"""Every linear operator of ``monai_ext`` through the same checks: adjointness, the norm against the explicit
matrix, gradcheck, batch/channel handling and dtypes (parallelproj's and deepinv's operator tests).

The cases are tiny so that the explicit matrix and ``gradcheck`` stay cheap; they cover each projector backend
(numba, ``grid_sample``, stored sparse matrix), the PET system model (2D, a stack of planes, per-frame factors,
both projectors injected), the PSF, the PSMA blur-and-downsample, the elementary operators and their algebra.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from monai_ext.operators import (
    Diagonal,
    FiniteDifferenceGradient,
    Identity,
    LinearOperator,
    MatrixOperator,
    PerPlane,
    Stacked,
    normalise_operator,
)
from monai_ext.pet import DEMO_SCANNER, GaussianPSF, PETSystemModel, mlem, osem
from monai_ext.deconvolution.blind_deconvolution import BlurDownsample
from monai_ext.tomo import (
    ConeBeamGeometry,
    FanBeamGeometry,
    ParallelBeamGeometry,
    SparseMatrixProjector,
    projector_for,
    uniform_angles,
)
from monai_ext.tomo.joseph_cpu import HAS_NUMBA

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GEOMETRIES = {
    "parallel": ParallelBeamGeometry((9, 11), (1.0, 0.8), uniform_angles(7), n_det=15, det_spacing=0.9, det_offset=1.3),
    "parallel-single-angle": ParallelBeamGeometry((8, 8), 1.0, (0.3,), n_det=11, det_spacing=1.0),
    "fan": FanBeamGeometry(
        (10, 9), 1.0, uniform_angles(8, 2 * math.pi), n_det=15, det_spacing=1.5, source_to_center=40, source_to_detector=70, det_offset=-1.0
    ),
    "cone": ConeBeamGeometry(
        (5, 7, 6), (1.2, 1.0, 1.0), uniform_angles(5, 2 * math.pi), (5, 9), (1.7, 1.6), source_to_center=30,
        source_to_detector=55, det_offset=(0.5, 1.0),
    ),
    "cone-short-scan": ConeBeamGeometry(
        (4, 6, 6), 1.0, tuple(np.radians(np.linspace(0, 205, 5))), (4, 8), 1.5, source_to_center=25, source_to_detector=45
    ),
}
PROJECTOR_BACKENDS = ["torch"] + (["numba"] if HAS_NUMBA else [])
PET_GEOMETRY = DEMO_SCANNER.sinogram_geometry((8, 8), 16.0, view_mashing=8)


def _rand(*shape, seed=0, dtype=F64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def _pet_model(projector: str, n_frames: int = 1, batch: int = 1, n_planes=None):
    """A PET model with every factor on (attenuation, normalisation, PSF, per-frame scale, background)."""
    planes = () if n_planes is None else (n_planes,)
    sino = (*planes, *PET_GEOMETRY.sinogram_shape)
    return PETSystemModel(
        PET_GEOMETRY,
        n_planes=n_planes,
        plane_spacing=None if n_planes is None else 8.0,
        psf_fwhm=20.0 if n_planes is None else (10.0, 20.0),
        mu_map=0.01 * _rand(batch, 1, *planes, *PET_GEOMETRY.image_shape, seed=1),
        normalisation=0.8 + 0.4 * _rand(*sino, seed=2),
        scale=1.0 + _rand(1, n_frames, *([1] * len(sino)), seed=3),
        background=_rand(1, n_frames, *sino, seed=4),
        projector=SparseMatrixProjector(PET_GEOMETRY) if projector == "sparse_matrix" else None,
        backend="auto" if projector == "sparse_matrix" else projector,
    )


def _cases():
    """``name -> (factory, batch, channels, channel_free, shape)``; ``channel_free``: every ``(b, c)`` slice maps
    alike (so the explicit matrix is one matrix); ``shape``: spatial input shape for shape-free operators."""
    cases = {}
    for name, geometry in GEOMETRIES.items():
        for backend in PROJECTOR_BACKENDS:
            cases[f"{name}-{backend}"] = (lambda g=geometry, b=backend: projector_for(g, b), 2, 3, True, None)
        if not isinstance(geometry, ConeBeamGeometry):
            cases[f"{name}-sparse_matrix"] = (lambda g=geometry: SparseMatrixProjector(g), 2, 3, True, None)
    for backend in PROJECTOR_BACKENDS + ["sparse_matrix"]:
        cases[f"pet-{backend}"] = (lambda b=backend: _pet_model(b), 2, 1, True, None)
        cases[f"pet-frames-{backend}"] = (lambda b=backend: _pet_model(b, n_frames=3, batch=2), 2, 3, False, None)
    cases["pet-planes"] = (lambda: _pet_model("auto", n_frames=2, n_planes=3), 1, 2, False, None)
    cases["pet-subset"] = (lambda: _pet_model("sparse_matrix").view_subset([0, 2]), 2, 1, True, None)
    cases["psf-2d"] = (lambda: GaussianPSF(3.0, (1.0, 1.5)), 2, 2, True, (9, 8))
    cases["psf-3d"] = (lambda: GaussianPSF((2.0, 3.0, 0.0), 1.0, spatial_dims=3), 1, 2, True, (5, 6, 4))
    cases["blur-downsample"] = (
        lambda: BlurDownsample(3, kernel=_rand(1, 1, 3, 3, 3, seed=5), measured_shape=(2, 3, 2)), 2, 2, True, None,
    )
    cases["matrix"] = (lambda: MatrixOperator(_rand(7, 12, seed=6) - 0.5, (3, 4), (7,)), 2, 3, True, None)
    cases["diagonal"] = (lambda: Diagonal(_rand(1, 1, 4, 5, seed=7) - 0.5), 2, 3, True, (4, 5))
    cases["identity"] = (lambda: Identity((6,)), 1, 2, True, None)
    for dims, shape in ((1, (7,)), (2, (5, 6)), (3, (3, 4, 5))):
        cases[f"gradient-{dims}d"] = (lambda s=shape: FiniteDifferenceGradient(s), 2, 2, True, None)
    cases["per-plane"] = (lambda: PerPlane(projector_for(GEOMETRIES["parallel"]), 3), 1, 2, True, None)
    cases["stacked"] = (
        lambda: Stacked([projector_for(GEOMETRIES["fan"]), FiniteDifferenceGradient(GEOMETRIES["fan"].image_shape)]), 2, 1, True, None,
    )
    cases["composition"] = (lambda: projector_for(GEOMETRIES["parallel"]) @ GaussianPSF(2.0, (1.0, 0.8)), 2, 2, True, None)
    cases["algebra"] = (
        lambda: (2.0 * FiniteDifferenceGradient((4, 5)).T @ FiniteDifferenceGradient((4, 5)) - Identity() / 3.0),
        2, 1, True, None,
    )
    cases["adjoint"] = (lambda: projector_for(GEOMETRIES["cone"]).T, 1, 2, True, None)
    cases["normalised"] = (lambda: normalise_operator(_pet_model("sparse_matrix")), 1, 1, True, None)
    return cases


CASES = _cases()


def _input_shape(op: LinearOperator, shape):
    return op.in_shape if op.in_shape is not None else shape


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (F64, 1e-13)])
def test_adjointness(name, dtype, tol):
    factory, batch, channels, _, shape = CASES[name]
    op = factory()
    assert isinstance(op, LinearOperator)
    assert op.adjointness_test(batch=batch, channels=channels, dtype=dtype, shape=shape) < tol


@pytest.mark.parametrize("name", list(CASES))
def test_matrix_norm_and_transpose(name):
    """The explicit matrix of ``A`` and of ``A^T`` are transposes, ``norm()`` is the matrix 2-norm."""
    factory, _, _, channel_free, shape = CASES[name]
    if not channel_free:
        pytest.skip("per-channel factors: one matrix per frame")
    op = factory()
    spatial = _input_shape(op, shape)
    matrix = op.to_matrix(shape=spatial)
    out_shape = op(torch.zeros(1, 1, *spatial, dtype=F64)).shape[2:]
    transpose = op.T.to_matrix(shape=out_shape)
    torch.testing.assert_close(transpose, matrix.T, rtol=1e-12, atol=1e-12)
    expected = float(torch.linalg.matrix_norm(matrix, ord=2))
    assert op.norm(n_iter=400, shape=shape) == pytest.approx(expected, rel=2e-3)
    assert op.norm(n_iter=400, shape=shape) <= expected * (1 + 1e-9)  # power iteration approaches from below


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_forward_and_adjoint(name):
    """First and second derivatives (the gradient of ``A`` is ``A^T``, and of ``A^T`` is ``A``), in gradcheck's fast
    mode (random directions)."""
    factory, batch, channels, _, shape = CASES[name]
    op = factory()
    x = _rand(batch, channels, *_input_shape(op, shape), seed=11).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-7, fast_mode=True)
    assert torch.autograd.gradgradcheck(op, (x,), eps=1e-6, atol=1e-7, fast_mode=True)
    y = _rand(*op(x).shape, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(op.adjoint, (y,), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("name", list(CASES))
def test_batch_channel_and_dtype(name):
    """Each ``(b, c)`` slice is mapped alone (for channel-free operators); float32 agrees with float64."""
    factory, batch, channels, channel_free, shape = CASES[name]
    op = factory()
    x = _rand(batch, channels, *_input_shape(op, shape), seed=13)
    y = op(x)
    assert y.shape[:2] == (batch, channels)
    if op.out_shape is not None:
        assert tuple(y.shape[2:]) == op.out_shape
    if channel_free:
        for b in range(batch):
            for c in range(channels):
                torch.testing.assert_close(op(x[b : b + 1, c : c + 1])[0, 0], y[b, c], rtol=1e-12, atol=1e-12)
    y32 = op(x.float())
    assert y32.dtype == torch.float32
    assert float((y32.double() - y).norm() / y.norm()) < 1e-5


@CUDA
@pytest.mark.parametrize("name", list(CASES))
def test_adjointness_on_cuda(name):
    factory, batch, channels, _, shape = CASES[name]
    op = factory().to("cuda")
    assert op.adjointness_test(batch=batch, channels=channels, device="cuda", shape=shape) < 1e-12
    x = _rand(batch, channels, *_input_shape(op, shape), seed=14)
    torch.testing.assert_close(op(x.cuda()).cpu(), op.cpu()(x), rtol=1e-10, atol=1e-12)


# -- algebra and errors ---------------------------------------------------------------------------------------------


def test_adjointness_test_finds_a_wrong_adjoint():
    class Flipped(LinearOperator):  # forward reverses and weights, the "adjoint" forgets to reverse
        def __init__(self):
            super().__init__((4,), (4,))

        def forward(self, x):
            return x.flip(-1) * torch.arange(1.0, 5.0, dtype=x.dtype)

        def adjoint(self, y):
            return y * torch.arange(1.0, 5.0, dtype=y.dtype)

    assert Flipped().adjointness_test() > 0.01


def test_algebra_matches_the_matrices():
    a = MatrixOperator(_rand(4, 6, seed=20), (2, 3), (4,))
    b = MatrixOperator(_rand(6, 6, seed=21), (2, 3), (2, 3))
    ma, mb = a.to_matrix(), b.to_matrix()
    torch.testing.assert_close((a @ b).to_matrix(), ma @ mb)
    torch.testing.assert_close((b + 2.0 * b).to_matrix(), 3 * mb)
    torch.testing.assert_close((b - b / 2.0).to_matrix(), mb / 2)
    torch.testing.assert_close((-a).to_matrix(), -ma)
    torch.testing.assert_close(a.T.to_matrix(shape=(4,)), ma.T)
    assert a.T.T is a
    assert (a @ b).in_shape == (2, 3) and (a @ b).out_shape == (4,)
    # a shape-preserving operator takes its shapes from its neighbour
    assert (a @ Diagonal(2.0)).in_shape == (2, 3) and (Diagonal(2.0) @ a).out_shape == (4,)


def test_composition_and_sum_refuse_mismatched_shapes():
    a = MatrixOperator(_rand(4, 6, seed=20), (6,))
    with pytest.raises(ValueError, match="cannot compose"):
        a @ a
    with pytest.raises(ValueError, match="cannot add"):
        a + MatrixOperator(_rand(4, 5, seed=20), (5,))
    with pytest.raises(ValueError, match="pass shape="):
        GaussianPSF(2.0, 1.0).norm()


def test_stacked_split_gives_each_operator_its_part():
    p, g = projector_for(GEOMETRIES["fan"]), FiniteDifferenceGradient(GEOMETRIES["fan"].image_shape)
    op = Stacked([p, g])
    x = _rand(1, 2, *GEOMETRIES["fan"].image_shape, seed=22)
    first, second = op.split(op(x))
    torch.testing.assert_close(first, p(x))
    torch.testing.assert_close(second, g(x))


def test_operator_inputs_are_checked_with_clear_errors():
    op = projector_for(GEOMETRIES["parallel"])
    with pytest.raises(ValueError, match=r"must have shape \(B, C, 9, 11\) for this geometry"):
        op(torch.zeros(1, 1, 9, 10))
    with pytest.raises(ValueError, match="non-finite"):
        op.adjoint(torch.full((1, 1, *op.out_shape), float("nan")))
    with pytest.raises(TypeError, match="floating-point"):
        op(torch.zeros(1, 1, 9, 11, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-finite"):
        Diagonal(torch.tensor([1.0, float("inf")]))


# -- the PET model: composition with an injected projector ----------------------------------------------------------


def test_pet_model_is_a_composition_with_the_injected_projector():
    sparse, ray = _pet_model("sparse_matrix", n_frames=2), _pet_model("auto", n_frames=2)
    assert sparse.projector.backend == "sparse_matrix" and sparse.operator.outer.inner is sparse.projector
    x = _rand(1, 2, *PET_GEOMETRY.image_shape, seed=30)
    torch.testing.assert_close(sparse(x), ray(x), rtol=1e-12, atol=1e-12)
    # A = diag(m) P G, written out
    m = sparse.multiplicative_factor()
    torch.testing.assert_close(sparse(x), sparse.projector(sparse.psf(x)) * m)
    with pytest.raises(ValueError, match="either projector or backend"):
        PETSystemModel(PET_GEOMETRY, projector=SparseMatrixProjector(PET_GEOMETRY), backend="torch")
    other = DEMO_SCANNER.sinogram_geometry((10, 10), 16.0, view_mashing=8)
    with pytest.raises(ValueError, match="projector must be a LinearOperator from"):
        PETSystemModel(PET_GEOMETRY, projector=SparseMatrixProjector(other))


def test_osem_on_a_sparse_matrix_model_equals_osem_on_the_ray_model():
    """``view_subset`` keeps the injected projector's kind (a sparse-matrix model used to fail here)."""
    sparse, ray = _pet_model("sparse_matrix", n_frames=2), _pet_model("auto", n_frames=2)
    subset = sparse.view_subset([1, 3])
    assert isinstance(subset.projector, SparseMatrixProjector)
    y = torch.poisson(sparse.expected_counts(10.0 * _rand(1, 2, *PET_GEOMETRY.image_shape, seed=31)), generator=torch.Generator().manual_seed(0))
    a, _ = osem(y, sparse, n_iter=3, n_subsets=2)
    b, _ = osem(y, ray, n_iter=3, n_subsets=2)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_em_reconstructs_on_any_operator():
    """MLEM on a CT projector and OSEM on a fan-beam projector (ordered subsets of its views), as on a PET model."""
    geometry = GEOMETRIES["fan"]
    op = projector_for(geometry)
    truth = 1.0 + _rand(1, 1, *geometry.image_shape, seed=40)
    y = op(truth)
    x, info = mlem(y, op, n_iter=30)
    assert info.log_likelihood[-1] > info.log_likelihood[0]
    xs, _ = osem(y, op, n_iter=10, n_subsets=4)
    for estimate in (x, xs):
        assert float((op(estimate) - y).norm() / y.norm()) < float((op(torch.ones_like(truth) * truth.mean()) - y).norm() / y.norm())
    with pytest.raises(TypeError, match="view_subset"):
        osem(torch.ones(1, 1, 6), MatrixOperator(torch.ones(6, 4, dtype=F64), (4,)), n_iter=1, n_subsets=2)
    with pytest.raises(ValueError, match="pixel size"):
        mlem(torch.ones(1, 1, 6, dtype=F64), MatrixOperator(torch.ones(6, 4, dtype=F64), (4,)), n_iter=1, post_filter_fwhm=2.0)


def test_pet_model_factors_follow_its_buffers():
    """``m = s a n`` is formed from the buffers at each call, so ``load_state_dict`` and the setters take effect."""
    a, b = _pet_model("sparse_matrix", n_frames=2), _pet_model("sparse_matrix", n_frames=2)
    b.set_scale(3.0 * b.scale)
    b.set_mu_map(0.02 * _rand(1, 1, *PET_GEOMETRY.image_shape, seed=8))
    x = _rand(1, 2, *PET_GEOMETRY.image_shape, seed=33)
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.sensitivity(), b.sensitivity(), rtol=1e-12, atol=1e-12)


def test_swapping_the_pet_projector_rebuilds_the_composition():
    model = _pet_model("auto")
    sparse = SparseMatrixProjector(PET_GEOMETRY)
    model.projector = sparse
    assert model.operator.outer.inner is sparse
    calls = []
    original = sparse._apply_forward
    sparse._apply_forward = lambda t: calls.append(1) or original(t)
    model(_rand(1, 1, *PET_GEOMETRY.image_shape, seed=34))
    assert calls == [1]
    assert isinstance(model.view_subset([0, 1]).projector, SparseMatrixProjector)
    shifted = dataclasses.replace(PET_GEOMETRY, det_offset=PET_GEOMETRY.det_offset + 1.0)
    with pytest.raises(ValueError, match="geometry differs"):
        model.projector = SparseMatrixProjector(shifted)


def test_sum_refuses_a_shape_preserving_term_beside_a_shape_changing_one():
    with pytest.raises(ValueError, match="keeps shapes"):
        Identity() + MatrixOperator(_rand(4, 3, seed=35), (3,))
