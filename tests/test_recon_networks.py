"""Reconstruction networks of ``monai_ext.networks``: operator-agnostic LPD/unrolled, MMSE layer, post-processing."""

from __future__ import annotations

import pytest
import torch

from monai_ext.data import ellipse_ct_scans
from monai_ext.networks import ConvBlock, LearnedPrimalDual, LinearMMSE, PostProcessingNet, UnrolledProximalGradient
from monai_ext.solvers import MatrixOperator, operator_norm
from monai_ext.tomo import FBP, ConeBeamGeometry, ConeBeamProjector, ParallelBeamGeometry, ParallelBeamProjector, uniform_angles

torch.set_num_threads(2)


def _parallel(n=16, views=4):
    return ParallelBeamProjector(ParallelBeamGeometry((n, n), 4.0, uniform_angles(views), n_det=n, det_spacing=4.0))


def _n_params(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_lpd_2d_shapes_gradients_and_layers():
    op = _parallel()
    net = LearnedPrimalDual(op, n_iter=3, features=8, zero_init=False)
    y = torch.rand(2, 1, 4, 16)
    out = net(y)
    assert out.shape == (2, 1, 16, 16)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert isinstance(net.primal_blocks[0][0], torch.nn.Conv2d) and isinstance(net.dual_blocks[0][0], torch.nn.Conv2d)
    assert len(net.primal_blocks) == 3


def test_lpd_3d_cone_beam_uses_3d_convolutions():
    geometry = ConeBeamGeometry((8, 8, 8), 4.0, uniform_angles(3, 6.283185307179586), (6, 10), 6.0, source_to_center=200.0, source_to_detector=300.0)
    op = ConeBeamProjector(geometry)
    net = LearnedPrimalDual(op, n_iter=2, features=4)
    assert isinstance(net.primal_blocks[0][0], torch.nn.Conv3d) and isinstance(net.dual_blocks[0][0], torch.nn.Conv3d)
    assert net(torch.rand(1, 1, 3, 6, 10)).shape == (1, 1, 8, 8, 8)


class _Blur1D(torch.nn.Module):
    """A generic operator that is not a projector: a 1D circular blur, with its adjoint."""

    image_shape = (12,)
    projection_shape = (12,)

    def forward(self, x):
        return 0.5 * x + 0.25 * (torch.roll(x, 1, -1) + torch.roll(x, -1, -1))

    def adjoint(self, y):
        return self.forward(y)  # symmetric kernel


def test_networks_accept_any_operator_with_forward_and_adjoint():
    op = _Blur1D()
    for net in (LearnedPrimalDual(op, n_iter=2, features=4), UnrolledProximalGradient(op, n_iter=2, features=4)):
        assert isinstance(net.operator.operator, _Blur1D)
        assert net(torch.rand(3, 1, 12)).shape == (3, 1, 12)


def test_operator_is_normalised_inside():
    op = _parallel()
    net = UnrolledProximalGradient(op, n_iter=1)
    assert abs(net.operator.norm(n_iter=50) - 1.0) < 1e-3
    assert abs(1.0 / net.operator.scale - operator_norm(op)) < 1e-3


def test_untrained_unrolled_network_is_landweber():
    op = _parallel()
    net = UnrolledProximalGradient(op, n_iter=4, shared=True, step=1.0, image_scale=1.0)
    y = op(torch.rand(1, 1, 16, 16))
    s = operator_norm(op)
    x = torch.zeros(1, 1, 16, 16)
    for _ in range(4):
        x = x - op.adjoint(op(x) - y) / s**2
    with torch.no_grad():
        assert torch.allclose(net(y), x, atol=1e-5)


def test_shared_unrolled_has_k_times_fewer_parameters():
    op = _parallel()
    shared, unshared = UnrolledProximalGradient(op, 10, shared=True), UnrolledProximalGradient(op, 10, shared=False)
    assert _n_params(unshared.proximals) == 10 * _n_params(shared.proximals)
    assert shared.steps.numel() == unshared.steps.numel() == 10


@pytest.mark.parametrize("make", [lambda op: LearnedPrimalDual(op, n_iter=1, features=4), lambda op: UnrolledProximalGradient(op, n_iter=1, features=4)])
def test_bad_sinograms_raise_value_errors(make):
    net = make(_parallel())
    with pytest.raises(ValueError, match=r"shape \(B, C, 4, 16\)"):
        net(torch.zeros(1, 1, 5, 16))
    bad = torch.zeros(1, 1, 4, 16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        net(bad)


def test_linear_mmse_matches_the_wiener_formula():
    gen = torch.Generator().manual_seed(0)
    n, m, samples, sigma = 6, 4, 200_000, 0.1
    matrix = torch.randn((m, n), generator=gen, dtype=torch.float64)
    op = MatrixOperator(matrix, (n,))
    mix = torch.randn((n, n), generator=gen, dtype=torch.float64)
    cov = mix @ mix.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    mean = torch.linspace(-1, 1, n, dtype=torch.float64)
    x = mean + torch.randn((samples, n), generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    y = x @ matrix.T + sigma * torch.randn((samples, m), generator=gen, dtype=torch.float64)
    est = LinearMMSE.estimate(op, x[:, None], y[:, None], ridge=0.0, storage_dtype=torch.float64)
    expected = cov @ matrix.T @ torch.linalg.inv(matrix @ cov @ matrix.T + sigma**2 * torch.eye(m, dtype=torch.float64))
    assert torch.allclose(est.weight, expected, atol=0.02)
    assert torch.allclose(est.bias, mean - expected @ matrix @ mean, atol=0.02)


def test_linear_mmse_state_dict_round_trip_and_checks():
    op = MatrixOperator(torch.eye(4), (2, 2))
    images = torch.randn(50, 1, 2, 2)
    est = LinearMMSE.estimate(op, images, op(images))
    empty = LinearMMSE((2, 2), (4,))
    empty.load_state_dict(est.state_dict())
    assert est.weight.dtype == torch.float16
    y = op(images[:2])
    assert torch.equal(empty(y), est(y))
    with pytest.raises(ValueError, match=r"shape \(B, C, 4\)"):
        empty(torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="paired"):
        LinearMMSE.estimate(op, images, op(images)[:10])


def test_linear_mmse_from_built_in_phantoms_stores_its_recipe_and_rebuilds_w_bit_for_bit(caplog):
    geometry = ParallelBeamGeometry((16, 16), 4.0, uniform_angles(4), n_det=16, det_spacing=4.0)
    built = LinearMMSE.from_builtin_phantoms(geometry, 40, 1e4)
    scans = ellipse_ct_scans("train", 40, geometry, 1e4)
    direct = LinearMMSE.estimate(ParallelBeamProjector(geometry), scans.images, scans.projections)
    assert torch.equal(built.weight, direct.weight) and built.weight.abs().sum() > 0
    assert built.recipe["n_ellipses"] == 10 and built.recipe["upsample"] == 2  # the defaults are written out
    state = built.state_dict()
    assert set(state) == {"recipe_json"} and state["recipe_json"].dtype == torch.uint8  # no W in the file
    loaded = LinearMMSE((16, 16), (4, 16))
    with caplog.at_level("WARNING"):
        loaded.load_state_dict(state)
    assert "differs" not in caplog.text  # the rebuilt W has the recorded checksum
    assert torch.equal(loaded.weight, built.weight) and torch.equal(loaded.bias, built.bias)
    assert loaded.recipe == built.recipe and set(loaded.state_dict()) == {"recipe_json"}
    assert set(direct.state_dict()) == {"weight", "bias"}  # estimated from the user's data: W is stored
    with pytest.raises(RuntimeError, match=r"recipe is for images \(16, 16\) from measurements \(4, 16\)"):
        LinearMMSE((8, 8), (4, 16)).load_state_dict(state)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        LinearMMSE((16, 16), (4, 16)).load_state_dict({**state, "weight": built.weight})
    with pytest.raises(RuntimeError, match="lacks"):
        LinearMMSE((16, 16), (4, 16)).load_state_dict({"recipe_json": torch.tensor(list(b'{"source": "monai_ext.data.ellipse_ct_scans", "split": "train"}'), dtype=torch.uint8)})
    # a partial load that leaves W alone keeps the recipe; a W changed in place is stored itself, not the stale recipe
    loaded.load_state_dict({}, strict=False)
    assert set(loaded.state_dict()) == {"recipe_json"}
    with torch.no_grad():
        loaded.weight[0, 0] += 1.0
    assert set(loaded.state_dict()) == {"weight", "bias"}


def test_linear_mmse_without_an_estimator_refuses_to_reconstruct():
    from monai.networks.utils import copy_model_state

    geometry = ParallelBeamGeometry((16, 16), 4.0, uniform_angles(4), n_det=16, det_spacing=4.0)
    built = LinearMMSE.from_builtin_phantoms(geometry, 40, 1e4)
    empty = LinearMMSE((16, 16), (4, 16))
    copy_model_state(empty, built)  # matches keys only: the recipe is skipped
    with pytest.raises(ValueError, match="holds no estimator"):
        empty(torch.rand(1, 1, 4, 16))


def test_post_processing_is_residual_and_freezes_the_initial_reconstruction():
    geometry = ParallelBeamGeometry((16, 16), 4.0, uniform_angles(4), n_det=16, det_spacing=4.0)
    denoiser = ConvBlock(2, 1, 1, features=4, zero_last=True)
    images = torch.rand(40, 1, 16, 16)
    projector = ParallelBeamProjector(geometry)
    mmse = LinearMMSE.estimate(projector, images, projector(images), storage_dtype=torch.float32)
    for initial in (FBP(geometry, "hann"), mmse):
        net = PostProcessingNet(initial, denoiser)
        y = torch.rand(2, 1, 4, 16)
        assert torch.allclose(net(y), initial(y), atol=1e-7)  # zero residual at init
    net = PostProcessingNet(torch.nn.Linear(3, 3), denoiser)
    assert not any(p.requires_grad for p in net.initial.parameters())


def test_conv_block_checks():
    assert ConvBlock(2, 1, 1, features=(64, 32), kernel_size=(9, 1, 5))(torch.rand(1, 1, 20, 20)).shape == (1, 1, 20, 20)
    with pytest.raises(ValueError, match="odd"):
        ConvBlock(2, 1, 1, kernel_size=4)
    with pytest.raises(ValueError, match="hidden widths"):
        ConvBlock(2, 1, 1, features=(8,), n_layers=3)
