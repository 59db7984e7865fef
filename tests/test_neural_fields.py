"""Neural fields: rendering consistent with the Joseph projector, exact gradients, conditioned-field fitting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from monai_ext.data.cbct_datasets import cbct_geometry
from monai_ext.fields import (
    AttenuationField,
    ConeBeamRays,
    FourierFeatures,
    ModulatedAttenuationField,
    MultiResolutionGrid,
    NeuralFieldReconstruction,
    VoxelField,
    box_half_widths,
    fit_field,
    fit_field_to_volume,
    fit_modulation,
    load_backbone,
    ray_box_intersection,
    render_line_integrals,
    render_projections,
    train_backbone,
    train_conditioned_field,
)
from monai_ext.phantoms import thorax_phantom
from monai_ext.tomo import ConeBeamProjector


@pytest.fixture(scope="module")
def small_case():
    """A smoothed thorax inside a 16^3 box at 8 mm (zero outer layer), 20 views of a 16 x 16 panel, its projections.

    The outer layer is zero because the zero-padded trilinear image reaches half a voxel beyond the box, which the
    Joseph projector integrates and a field clipped to the box does not. The [1/4, 1/2, 1/4] smoothing keeps the
    volume resolved by its grid: Joseph's sum and the exact integral of the trilinear interpolant differ by a term
    in (voxel size)^2 times the second derivative, about 1 % for the raw 14^3 rasterisation and 0.4 % once smoothed.
    """
    geometry = cbct_geometry(20, (16, 16, 16), 8.0, (16, 16))
    inner = thorax_phantom(112.0, seed=3).rasterize((14, 14, 14), 8.0, supersample=2)
    kernel = torch.tensor([0.25, 0.5, 0.25]).view(1, 1, 3)
    for dim in range(3):
        moved = inner.movedim(dim, -1)
        inner = torch.nn.functional.conv1d(moved.reshape(-1, 1, 14), kernel, padding=1).reshape(moved.shape).movedim(-1, dim)
    volume = torch.nn.functional.pad(inner, (1, 1) * 3)
    projections = ConeBeamProjector(geometry)(volume[None, None].double()).float()
    return geometry, volume, projections


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_ray_box_intersection_central_ray():
    origins = torch.tensor([[-1000.0, 0.0, 0.0], [-1000.0, 500.0, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t0, t1 = ray_box_intersection(origins, directions, (64.0, 32.0, 16.0))
    assert torch.allclose(t0, torch.tensor([936.0, 936.0])) and float(t1[0] - t0[0]) == pytest.approx(128.0)
    assert float(t1[1] - t0[1]) == 0.0  # misses the box


def test_voxel_field_rendering_matches_projector(small_case):
    geometry, volume, projections = small_case
    rendered = render_projections(VoxelField(volume, 8.0), ConeBeamRays(geometry), n_samples=48)
    assert _relative(rendered, projections) < 0.01


def test_voxel_field_samples_voxel_values():
    volume = torch.rand(6, 5, 4)
    field = VoxelField(volume, (2.0, 3.0, 4.0))
    assert torch.allclose(field.sample_volume((6, 5, 4), (2.0, 3.0, 4.0))[0, 0], volume, atol=1e-6)


def test_fitted_field_rendering_matches_projector(small_case):
    geometry, volume, projections = small_case
    field = AttenuationField(box_half_widths(geometry.image_shape, geometry.pixel_size), encoding_args={"n_levels": 1, "features_per_level": 8, "finest_resolution": 16}, hidden=32)
    fit_field_to_volume(field, volume, 8.0, n_steps=800, points_per_step=2048, lr=3e-2, seed=0)
    rendered = render_projections(field, ConeBeamRays(geometry), n_samples=48)
    assert _relative(rendered, projections) < 0.01


def test_rendering_gradients_match_finite_differences():
    torch.manual_seed(0)
    field = AttenuationField((16.0, 16.0, 16.0), encoding_args={"n_levels": 2, "features_per_level": 2, "base_resolution": 2, "finest_resolution": 4, "init_scale": 0.5}, hidden=4, n_hidden=1, scale=1.0).double()
    origins = torch.tensor([[-100.0, 1.0, 2.0], [3.0, -100.0, -2.0], [2.0, 1.0, -100.0]], dtype=torch.float64)
    directions = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05, 0.02], [0.03, 1.0, 0.01], [0.02, -0.04, 1.0]], dtype=torch.float64), dim=-1)
    t0, t1 = ray_box_intersection(origins, directions, (16.0, 16.0, 16.0))
    names = [n for n, _ in field.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in field.parameters())
    offsets_gen = torch.Generator().manual_seed(1)
    state = offsets_gen.get_state()

    def render(*values):
        offsets_gen.set_state(state)  # the same stratified samples at every evaluation
        f = lambda pts: functional_call(field, dict(zip(names, values)), (pts,))  # noqa: E731
        return render_line_integrals(f, origins, directions, t0, t1, 7, generator=offsets_gen)

    assert torch.autograd.gradcheck(render, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_encodings_shapes_and_errors():
    assert MultiResolutionGrid(3, 2, 4, 16)(torch.zeros(5, 3)).shape == (5, 6)
    assert FourierFeatures(4)(torch.zeros(5, 3)).shape == (5, 27)
    field = AttenuationField((8.0, 8.0, 8.0), encoding="fourier", encoding_args={"n_frequencies": 3})
    assert field.sample_volume((3, 4, 5), 2.0).shape == (1, 1, 3, 4, 5)
    with pytest.raises(ValueError, match="encoding"):
        AttenuationField((8.0, 8.0, 8.0), encoding="hash")
    with pytest.raises(ValueError, match="points"):
        field(torch.zeros(4, 2))


def test_fit_field_reduces_loss_and_is_deterministic(small_case):
    geometry, _, projections = small_case
    rays = ConeBeamRays(geometry)
    half = box_half_widths(geometry.image_shape, geometry.pixel_size)
    args = {"n_levels": 2, "features_per_level": 2, "base_resolution": 4, "finest_resolution": 8}
    fields = [AttenuationField(half, encoding_args=args, hidden=16, seed=0) for _ in range(2)]
    infos = [fit_field(f, projections, rays, n_steps=40, rays_per_step=256, n_samples=16, seed=5, progress=False) for f in fields]
    assert infos[0]["loss_trace"][-1] < 0.5 * infos[0]["loss_trace"][0]
    assert infos[0]["loss_trace"] == infos[1]["loss_trace"]
    for a, b in zip(fields[0].parameters(), fields[1].parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="projections"):
        fit_field(fields[0], projections[..., :-1], rays, n_steps=1)


def test_modulation_only_fit_leaves_backbone_unchanged(small_case):
    geometry, _, projections = small_case
    rays = ConeBeamRays(geometry)
    backbone = ModulatedAttenuationField(box_half_widths(geometry.image_shape, geometry.pixel_size), latent_channels=4, modulation_resolution=4, encoding_args={"n_levels": 2, "features_per_level": 2, "base_resolution": 4, "finest_resolution": 8}, hidden=16)
    train_conditioned_field(backbone, projections.expand(2, -1, -1, -1, -1), rays, n_steps=10, scans_per_step=2, rays_per_step=128, n_samples=16, progress=False)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    scan, info = fit_modulation(backbone, projections, rays, n_steps=30, rays_per_step=256, n_samples=16, progress=False)
    assert info["loss_trace"][-1] < info["loss_trace"][0]
    assert float(scan.modulation.detach().abs().sum()) > 0
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="modulation"):
        backbone(torch.zeros(3, 3), torch.zeros(1, 4, 5, 5, 5))


def test_backbone_training_round_trip_and_reconstruction_module(small_case, tmp_path):
    geometry, _, projections = small_case
    path = tmp_path / "backbone.pt"
    backbone_args = {"latent_channels": 2, "modulation_resolution": 4, "encoding_args": {"n_levels": 2, "features_per_level": 2, "base_resolution": 4, "finest_resolution": 8}, "hidden": 8}
    record = train_backbone(geometry, projections.expand(2, -1, -1, -1, -1), str(path), backbone_args, {"n_steps": 3, "scans_per_step": 2, "rays_per_step": 64, "n_samples": 8}, progress=False)
    assert record["n_scans"] == 2 and (tmp_path / "backbone.training.json").is_file()
    backbone = load_backbone(str(path))
    assert backbone.config["latent_channels"] == 2 and not any(p.requires_grad for p in backbone.parameters())
    recon = NeuralFieldReconstruction(geometry, "conditioned", backbone_file=str(path), n_steps=2, rays_per_step=64, n_samples=8, output_shape=(8, 12, 10), progress=False)
    with torch.no_grad():  # fitting enables gradients itself, as under a MONAI evaluator
        volume = recon(projections)
    assert volume.shape == (1, 1, 8, 12, 10) and recon.output_spacing == (16.0, 128 / 12, 12.8)
    assert recon.last_fits[0]["fitted_parameters_mib"] < recon.last_fits[0]["field_parameters_mib"]
    per_scan = NeuralFieldReconstruction(geometry, "per_scan", field_args={"encoding": "fourier", "encoding_args": {"n_frequencies": 2}, "hidden": 8}, n_steps=2, rays_per_step=64, n_samples=8, progress=False)
    assert per_scan(projections).shape == (1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="method"):
        NeuralFieldReconstruction(geometry, "hash")
    with pytest.raises(ValueError, match="backbone_file"):
        NeuralFieldReconstruction(geometry, "conditioned")
    with pytest.raises(ValueError, match="projections"):
        per_scan(projections[:, :, :10])


def test_cbct_comparison_table(small_case, tmp_path):
    from monai_ext.data import CBCTScans
    from bundle_config import bundle_scripts

    compare_cbct_methods = bundle_scripts(Path(__file__).resolve().parents[1] / "bundles" / "cbct_neural_field", "evaluation").compare_cbct_methods
    from monai_ext.tomo import FBP

    geometry, volume, projections = small_case
    scans = CBCTScans(("case0",), volume[None, None], projections, geometry, None)
    per_scan = NeuralFieldReconstruction(geometry, "per_scan", field_args={"hidden": 8, "encoding_args": {"n_levels": 1, "finest_resolution": 8}}, n_steps=2, rays_per_step=64, n_samples=8, progress=False)
    summary = compare_cbct_methods({"FDK": FBP(geometry), "NAF": per_scan}, {"noise_free": scans}, str(tmp_path), n_views=50, method_names=["FDK", "NAF"])
    row = summary["results"]["noise_free"]["NAF"]
    assert row["memory_mib"] == pytest.approx(per_scan.last_fits[0]["field_parameters_mib"], abs=1e-4)
    assert summary["results"]["noise_free"]["FDK"]["memory_mib"] == pytest.approx(16**3 * 4 / 2**20, abs=1e-4)
    assert "CondCBNT | 28.31" in summary["published_markdown"]
    assert row["cpu_seconds_per_volume"] > 0 and "noise_free: CPU (s/vol)" in summary["markdown"]
    # the published rows follow published_views (the talk's setting of equal angular undersampling), not n_views
    other = compare_cbct_methods({"FDK": FBP(geometry)}, {"noise_free": scans}, str(tmp_path / "p400"), n_views=50, published_views=400)
    assert "CondCBNT | 29.89" in other["published_markdown"] and other["published_views"] == 400
    assert (tmp_path / "comparison.md").is_file() and (tmp_path / "examples_noise_free.png").is_file()
    with pytest.raises(ValueError, match="unknown method"):
        compare_cbct_methods({"FDK": FBP(geometry)}, {"noise_free": scans}, str(tmp_path), method_names=["TV"])
